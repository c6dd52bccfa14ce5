"""The router program (``nanoclaw-router``): runs every configured channel's inbound half,
decides for each event who may talk to which agent, commits the rows to the session's
``inbound.db`` before the platform is acknowledged, and wakes the session's container.
``app.Router`` is the process; docs/internals.md, "Router", has the contract."""
