"""The sweeper program: liveness, retries, schedules and idle containers (DESIGN.md §6)."""
