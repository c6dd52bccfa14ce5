-- Who decided an approval and when (delivery tells the agent; the audit keeps it).
-- Written by CentralStore.decide_approval, which also checks the clicker is an approver.
ALTER TABLE pending_approvals ADD COLUMN decided_by TEXT;
ALTER TABLE pending_approvals ADD COLUMN decided_at_ms INTEGER;
