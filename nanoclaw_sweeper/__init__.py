"""The sweeper program (``nanoclaw-sweeper``): liveness, retries, schedules, idle containers,
restart requests and disk quotas, one pass about every second (``sweeper.Sweeper``)."""
