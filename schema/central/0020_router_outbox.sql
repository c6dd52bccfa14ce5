-- Router (issue 4): what the router itself must send to a chat, kept until it is sent.
--
-- The router never writes a session's outbound.db (the container owns it). Its own messages
-- (registration and sender-approval cards, command denials, "name your new agent" prompts)
-- go through the channel adapter directly, from this durable queue: an approver's DM that is
-- not reachable right now (a terminal chat not attached, a network error) is retried with
-- backoff instead of being lost, and a restart resumes where it stopped.
CREATE TABLE router_outbox (
  id                   TEXT PRIMARY KEY,           -- derived from the cause, so re-sends dedupe
  channel_type         TEXT NOT NULL,
  platform_id          TEXT NOT NULL,
  thread_id            TEXT,
  kind                 TEXT NOT NULL CHECK (kind IN ('text', 'question')),
  body                 TEXT NOT NULL,              -- JSON: {"text"} or an AskQuestion
  status               TEXT NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'sent', 'failed')),
  attempts             INTEGER NOT NULL DEFAULT 0,
  next_attempt_at_ms   INTEGER NOT NULL,
  platform_message_id  TEXT,
  last_error           TEXT,
  created_at_ms        INTEGER NOT NULL,
  updated_at_ms        INTEGER NOT NULL
);
CREATE INDEX idx_router_outbox_due ON router_outbox (status, next_attempt_at_ms);
