-- Delivery (issue 5, security audit): card ids that a container can neither guess nor borrow.
--
-- An agent's ask_question card and a host card (an install approval, a chat registration)
-- used to share one namespace: the question id on the buttons. An agent could post a
-- look-alike card carrying a host card's id, and an admin's click on it counted for the host
-- card. Closed in three ways (docs/delivery.md, "Cards and clicks"):
-- * agent questions are keyed on the host, per session (pending_questions.question_id is
--   'aq-' + a hash of the session and the agent's id); the agent's own id is kept here so the
--   answer reaches it under the id it asked with;
-- * a registration card carries a random id of its own instead of the chat's messaging group
--   id. Registrations pending from before this migration keep the id their card went out
--   with (the chat's id), so those cards still answer;
-- * a click on a router card counts only on the message the router sent it as, found in
--   router_outbox by the card's question id (the index below).
ALTER TABLE pending_questions ADD COLUMN agent_question_id TEXT;

ALTER TABLE pending_channel_approvals ADD COLUMN card_id TEXT;
UPDATE pending_channel_approvals SET card_id = messaging_group_id;
CREATE UNIQUE INDEX idx_pending_channel_approvals_card ON pending_channel_approvals (card_id);

CREATE INDEX idx_router_outbox_question
  ON router_outbox (json_extract(body, '$.question_id')) WHERE kind = 'question';
