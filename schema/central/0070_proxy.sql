-- Credential proxy (issue 8 §5, §8): tokens bound to their container, budget reservations,
-- and which of the model API's server-side capabilities each agent group may use.

-- The peer identity a token works from (nanoclaw_common.peer_identity): `container:<id>` for
-- a token `wake()` issued (recorded after the container was created, before it starts).
-- NULL: a token from before this migration; the proxy refuses it.
ALTER TABLE proxy_tokens ADD COLUMN bound_to TEXT;

-- A model call's worst case (input estimate + max_tokens), held against the group's day
-- from before the call is forwarded until its real usage is recorded. A proxy that died
-- mid-call leaves its rows behind: they stop counting at expires_at_ms, and the next proxy
-- deletes the rows of dead proxies when it starts.
CREATE TABLE token_reservations (
  id              TEXT PRIMARY KEY,
  agent_group_id  TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  day             TEXT NOT NULL,                -- YYYY-MM-DD (UTC), as token_usage
  tokens          INTEGER NOT NULL,
  owner_pid       INTEGER NOT NULL,             -- the proxy process that holds it
  created_at_ms   INTEGER NOT NULL,
  expires_at_ms   INTEGER NOT NULL
);
CREATE INDEX idx_token_reservations_group ON token_reservations (agent_group_id, day);

-- Server-side capabilities (the provider acts on the agent's behalf, outside --network none).
-- Default: web search and web fetch on, everything else off (docs/security.md).
ALTER TABLE container_configs ADD COLUMN web_search INTEGER NOT NULL DEFAULT 1;
ALTER TABLE container_configs ADD COLUMN web_fetch INTEGER NOT NULL DEFAULT 1;
-- JSON list of domains; [] = any domain. Enforced as the tools' allowed_domains.
ALTER TABLE container_configs ADD COLUMN web_domains TEXT NOT NULL DEFAULT '[]';
-- JSON list of further server tool families allowed (e.g. ["code_execution"]).
ALTER TABLE container_configs ADD COLUMN server_tools TEXT NOT NULL DEFAULT '[]';
-- 1: requests may carry mcp_servers (the MCP connector: the provider calls those URLs).
ALTER TABLE container_configs ADD COLUMN mcp_connector INTEGER NOT NULL DEFAULT 0;
-- JSON list of anthropic-beta flags allowed besides those the allowed tools need.
ALTER TABLE container_configs ADD COLUMN allowed_betas TEXT NOT NULL DEFAULT '[]';
