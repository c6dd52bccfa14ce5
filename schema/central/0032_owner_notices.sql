-- Delivery (issue 5): notices to the owner about failed and refused messages, kept until sent.
--
-- Delivery queues a notice here (id derived from its cause, so a re-run after a crash queues
-- nothing twice) before it settles the row the notice is about; its notice loop sends due
-- notices to the first reachable owner's DM, retrying with backoff. The rate limit (one
-- notice per agent group per owner_notice_interval_s, table notices) is claimed only when a
-- send succeeded: a failed send never silences the group. Notices that fall inside the window
-- of one already sent are marked 'suppressed' and counted in notices.suppressed.
CREATE TABLE owner_notices (
  id                  TEXT PRIMARY KEY,
  agent_group_id      TEXT NOT NULL,
  text                TEXT NOT NULL,
  status              TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'sent', 'suppressed', 'failed')),
  attempts            INTEGER NOT NULL DEFAULT 0,
  next_attempt_at_ms  INTEGER NOT NULL,
  last_error          TEXT,
  created_at_ms       INTEGER NOT NULL,
  updated_at_ms       INTEGER NOT NULL
);
CREATE INDEX idx_owner_notices_due ON owner_notices (status, next_attempt_at_ms);
