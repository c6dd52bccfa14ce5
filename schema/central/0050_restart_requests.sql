-- Sweeper (issue 5): restarts other programs ask for, carried out by the sweeper, which holds
-- the sandbox. Delivery writes one for each running or starting session of a group whose image
-- or MCP config an approval changed (CentralStore.request_group_restart); delivery itself never
-- talks to Podman, which keeps podman-py out of its memory.
--
-- The sweeper stops a session's run when the run started before `requested_at_ms` (that run
-- still has the old image or config) and deletes the request; the session's due `on_wake` note
-- then makes the sweeper start a fresh run. A request whose session is not running, or whose
-- run started after it, is deleted with nothing to do. One row per session: a newer request
-- replaces an older one.
CREATE TABLE restart_requests (
  session_id       TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
  requested_at_ms  INTEGER NOT NULL,
  reason           TEXT NOT NULL
);
