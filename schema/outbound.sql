-- outbound.db: one per session, in the session's agent/ folder. The container writes it;
-- the host reads it. Container rows take ODD seq numbers.

CREATE TABLE IF NOT EXISTS messages_out (
  id                TEXT PRIMARY KEY,
  seq               INTEGER NOT NULL UNIQUE,    -- odd
  in_reply_to       TEXT,                       -- messages_in.id this answers (a2a return path)
  timestamp_ms      INTEGER NOT NULL,
  deliver_after_ms  INTEGER,
  kind              TEXT NOT NULL CHECK (kind IN ('chat', 'system')),
  platform_id       TEXT,                       -- destination address
  channel_type      TEXT,
  thread_id         TEXT,
  content           TEXT NOT NULL,              -- JSON, a nanoclaw_common.messages outbound struct
  run_id            TEXT                        -- the container run that wrote it
);

-- The container's claim and acknowledgement of each inbound row. Claims are owned by a run,
-- so an old run's leftovers never count against a new run.
CREATE TABLE IF NOT EXISTS processing_ack (
  message_id         TEXT PRIMARY KEY,
  status             TEXT NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
  run_id             TEXT NOT NULL,
  status_changed_ms  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS session_state (
  key            TEXT PRIMARY KEY,
  value          TEXT NOT NULL,
  updated_at_ms  INTEGER NOT NULL
);

-- What the current run is doing: when it started (spawn grace) and the tool in flight
-- (a long declared bash timeout widens the sweeper's tolerance).
CREATE TABLE IF NOT EXISTS container_state (
  id                        INTEGER PRIMARY KEY CHECK (id = 1),
  run_id                    TEXT,
  started_at_ms             INTEGER,
  current_tool              TEXT,
  tool_declared_timeout_ms  INTEGER,
  tool_started_at_ms        INTEGER,
  turns                     INTEGER NOT NULL DEFAULT 0,
  updated_at_ms             INTEGER NOT NULL
);

-- Which inbound rows each outbound row answers: the whole batch of the turn that wrote it
-- (follow-ups pushed into the turn included). A retried batch is told exactly what was already
-- sent in reply to its rows; in_reply_to alone names one row. Version 2.
CREATE TABLE IF NOT EXISTS answers (
  message_out_id  TEXT NOT NULL,
  message_in_id   TEXT NOT NULL,
  PRIMARY KEY (message_in_id, message_out_id)
);

PRAGMA user_version = 2;
