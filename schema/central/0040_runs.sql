-- Sandbox (issue 3): the host's record of settled runs and of messages it gave up on.

-- A run whose leftover `processing` claims the host has settled (tries += 1 with backoff, or
-- failed). The container's claims stay in outbound.db (the host cannot write it) until the
-- next run drops them, so without this record a second wake or sweep would count them again.
CREATE TABLE settled_runs (
  session_id     TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  run_id         TEXT NOT NULL,
  claims         INTEGER NOT NULL,               -- how many claims were settled
  settled_at_ms  INTEGER NOT NULL,
  PRIMARY KEY (session_id, run_id)
);

-- A message marked failed after max tries: its run died every time it was claimed.
CREATE TABLE failed_messages (
  session_id     TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  message_id     TEXT NOT NULL,
  tries          INTEGER NOT NULL,
  reason         TEXT NOT NULL,
  failed_at_ms   INTEGER NOT NULL,
  PRIMARY KEY (session_id, message_id)
);
CREATE INDEX idx_failed_messages_time ON failed_messages (failed_at_ms);
