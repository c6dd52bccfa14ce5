-- Router (issue 4): attachments of a message that waits for an approver.
--
-- An unknown chat's first message (registration card) or an unknown sender's message
-- (sender-approval card) is kept and replayed once someone approves. Its text lives in the
-- pending row's `original_event`; its files live here, so listing pending approvals never
-- loads them, and deleting the approval (approved, denied, chat deleted) deletes them with it.
-- The router keeps at most a few MB per approval (nanoclaw_router.approvals.MAX_HELD_BYTES).
CREATE TABLE held_attachments (
  id                   INTEGER PRIMARY KEY,
  sender_approval_id   TEXT REFERENCES pending_sender_approvals(id) ON DELETE CASCADE,
  channel_approval_id  TEXT REFERENCES pending_channel_approvals(messaging_group_id)
                       ON DELETE CASCADE,
  position             INTEGER NOT NULL,        -- the order in the message
  name                 TEXT NOT NULL,
  kind                 TEXT NOT NULL,
  mime_type            TEXT,
  data                 BLOB NOT NULL,
  CHECK ((sender_approval_id IS NULL) <> (channel_approval_id IS NULL))
);
CREATE INDEX idx_held_sender ON held_attachments (sender_approval_id);
CREATE INDEX idx_held_channel ON held_attachments (channel_approval_id);
