-- Delivery (issue 8): owner notices are coalesced, so nothing a container does grows central.db
-- without bound. Before, every refused row queued a notice of its own: 5,000 refused rows while
-- the owner was unreachable left 5,000 rows here.
--
-- Now there is at most one pending notice per agent group and kind (the delivery status it is
-- about: failed, denied). A new cause updates it: `count` goes up, `text` becomes the latest
-- cause's, and the cause's id joins `causes` (a JSON list of the most recent ones), which is
-- how a re-run after a crash is recognised and not counted twice. A notice due inside the
-- group's rate-limit window waits for the window to end (it keeps counting) instead of being
-- dropped; settled notices are purged by age and by count (nanoclaw_common.store.owner_notices).
ALTER TABLE owner_notices ADD COLUMN kind TEXT NOT NULL DEFAULT 'delivery';
ALTER TABLE owner_notices ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE owner_notices ADD COLUMN causes TEXT NOT NULL DEFAULT '[]';

-- Notices queued before this migration: the oldest pending one of each group carries them all.
UPDATE owner_notices SET count = (
  SELECT count(*) FROM owner_notices AS other
  WHERE other.status = 'pending' AND other.agent_group_id = owner_notices.agent_group_id
)
WHERE status = 'pending' AND id = (
  SELECT other.id FROM owner_notices AS other
  WHERE other.status = 'pending' AND other.agent_group_id = owner_notices.agent_group_id
  ORDER BY other.created_at_ms, other.id LIMIT 1
);
UPDATE owner_notices SET status = 'suppressed'
WHERE status = 'pending' AND id != (
  SELECT other.id FROM owner_notices AS other
  WHERE other.status = 'pending' AND other.agent_group_id = owner_notices.agent_group_id
  ORDER BY other.created_at_ms, other.id LIMIT 1
);

CREATE UNIQUE INDEX idx_owner_notices_one_pending ON owner_notices (agent_group_id, kind)
  WHERE status = 'pending';
CREATE INDEX idx_owner_notices_settled ON owner_notices (status, updated_at_ms);
