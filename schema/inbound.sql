-- inbound.db: one per session. The host writes it; the container opens it read-only.
-- journal_mode=DELETE (set by the store): a read-only bind mount cannot host WAL's -shm file.
-- Host rows take EVEN seq numbers; container rows (outbound.db) take ODD ones.

CREATE TABLE IF NOT EXISTS messages_in (
  id                 TEXT PRIMARY KEY,          -- '<platform message id>:<agent group id>' for chat
  seq                INTEGER NOT NULL UNIQUE,   -- even; the agent-visible message number
  kind               TEXT NOT NULL CHECK (kind IN ('chat', 'task', 'webhook', 'system')),
  timestamp_ms       INTEGER NOT NULL,          -- when the event happened on the platform
  status             TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'completed', 'failed', 'paused')),
  process_after_ms   INTEGER,                   -- not before this time (schedules, retry backoff)
  recurrence         TEXT,                      -- cron expression for recurring tasks
  series_id          TEXT,                      -- recurring occurrences share it
  tries              INTEGER NOT NULL DEFAULT 0,
  trigger            INTEGER NOT NULL DEFAULT 1, -- 0 = context only, never wakes the agent
  platform_id        TEXT,                      -- reply address
  channel_type       TEXT,
  thread_id          TEXT,
  content            TEXT NOT NULL,             -- JSON, a nanoclaw_common.messages inbound struct
  source_session_id  TEXT,                      -- agent-to-agent return path
  on_wake            INTEGER NOT NULL DEFAULT 0, -- only a fresh run's first poll may take it
  created_at_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_messages_in_status ON messages_in (status, seq);
CREATE INDEX IF NOT EXISTS idx_messages_in_series ON messages_in (series_id);
CREATE INDEX IF NOT EXISTS idx_messages_in_routing ON messages_in (channel_type, platform_id, seq);

-- Durable delivery state of each messages_out row (the host cannot write outbound.db).
CREATE TABLE IF NOT EXISTS deliveries (
  message_out_id       TEXT PRIMARY KEY,
  seq                  INTEGER NOT NULL,        -- the outbound row's seq
  status               TEXT NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'sending', 'delivered', 'retry', 'failed', 'denied')),
  attempts             INTEGER NOT NULL DEFAULT 0,
  next_attempt_at_ms   INTEGER,
  last_error           TEXT,
  platform_message_id  TEXT,                    -- the first part's id (kept from the first part on)
  created_at_ms        INTEGER NOT NULL,
  updated_at_ms        INTEGER NOT NULL,
  -- Parts (text chunks, then files) the platform accepted, across attempts: a retry resumes
  -- at the next part instead of sending the accepted ones again (user_version 2).
  chunks_sent          INTEGER NOT NULL DEFAULT 0,
  -- Where the row is in outbound.db (its rowid: lookups never go through the container's
  -- text index on id) and how far messages_in went (max seq) when delivery first recorded
  -- it: the end of what can have prompted it, a host fact (user_version 3).
  out_rowid            INTEGER,
  inbound_seq          INTEGER
);
CREATE INDEX IF NOT EXISTS idx_deliveries_status ON deliveries (status, next_attempt_at_ms);
CREATE INDEX IF NOT EXISTS idx_deliveries_seq ON deliveries (seq);

-- Delivery's place in outbound.db (one row): the rowid and deliveries key of the last row
-- recorded, and the highest seq recorded. Rows are tailed by rowid, which SQLite assigns in
-- insertion order, so a row the container wrote with a seq at or below max_seq is still seen
-- (and refused); a row at out_rowid with another key means the file was rewritten (user_version 3).
CREATE TABLE IF NOT EXISTS outbound_cursor (
  id               INTEGER PRIMARY KEY CHECK (id = 1),
  out_rowid        INTEGER NOT NULL,
  message_out_id   TEXT NOT NULL,
  max_seq          INTEGER NOT NULL
);

-- Projection of the agent group's agent_destinations, rewritten before every wake.
CREATE TABLE IF NOT EXISTS destinations (
  name            TEXT PRIMARY KEY,
  display_name    TEXT,
  type            TEXT NOT NULL CHECK (type IN ('channel', 'agent')),
  channel_type    TEXT,
  platform_id     TEXT,
  agent_group_id  TEXT
);

-- The session's default reply address (one row).
CREATE TABLE IF NOT EXISTS session_routing (
  id            INTEGER PRIMARY KEY CHECK (id = 1),
  channel_type  TEXT,
  platform_id   TEXT,
  thread_id     TEXT
);

-- 1: the first version; 2: deliveries.chunks_sent; 3: deliveries.out_rowid and inbound_seq,
-- outbound_cursor (InboundStore upgrades an older file).
PRAGMA user_version = 3;
