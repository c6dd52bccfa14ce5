-- Central DB, first shape. Every time is integer UTC epoch milliseconds (*_ms).
-- Column defaults are real (upstream quirk 12): a row inserted with only its required columns
-- gets the documented behaviour.

CREATE TABLE agent_groups (
  id             TEXT PRIMARY KEY,
  name           TEXT NOT NULL,
  folder         TEXT NOT NULL UNIQUE,          -- directory under groups/
  created_at_ms  INTEGER NOT NULL
);

CREATE TABLE messaging_groups (                -- one chat on one platform
  id                     TEXT PRIMARY KEY,
  channel_type           TEXT NOT NULL,
  platform_id            TEXT NOT NULL,
  name                   TEXT,
  is_group               INTEGER NOT NULL DEFAULT 0,
  unknown_sender_policy  TEXT NOT NULL DEFAULT 'strict'
                         CHECK (unknown_sender_policy IN ('strict', 'request_approval', 'public')),
  denied_at_ms           INTEGER,              -- the owner refused registration
  created_at_ms          INTEGER NOT NULL,
  UNIQUE (channel_type, platform_id)
);

CREATE TABLE wirings (                         -- upstream: messaging_group_agents
  id                      TEXT PRIMARY KEY,
  messaging_group_id      TEXT NOT NULL REFERENCES messaging_groups(id) ON DELETE CASCADE,
  agent_group_id          TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  engage_mode             TEXT NOT NULL DEFAULT 'mention'
                          CHECK (engage_mode IN ('mention', 'mention-sticky', 'pattern')),
  engage_pattern          TEXT,                 -- regex for 'pattern'; '.' matches everything
  sender_scope            TEXT NOT NULL DEFAULT 'all' CHECK (sender_scope IN ('all', 'known')),
  ignored_message_policy  TEXT NOT NULL DEFAULT 'drop'
                          CHECK (ignored_message_policy IN ('drop', 'accumulate')),
  session_mode            TEXT NOT NULL DEFAULT 'shared'
                          CHECK (session_mode IN ('shared', 'per-thread', 'agent-shared')),
  priority                INTEGER NOT NULL DEFAULT 0,   -- fan-out order, highest first
  created_at_ms           INTEGER NOT NULL,
  UNIQUE (messaging_group_id, agent_group_id)
);

CREATE TABLE users (                           -- a platform identity, '<channel_type>:<handle>'
  id             TEXT PRIMARY KEY,
  kind           TEXT NOT NULL,
  display_name   TEXT,
  created_at_ms  INTEGER NOT NULL
);

CREATE TABLE user_roles (
  user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  role            TEXT NOT NULL CHECK (role IN ('owner', 'admin')),
  agent_group_id  TEXT REFERENCES agent_groups(id) ON DELETE CASCADE,  -- NULL = global
  granted_by      TEXT REFERENCES users(id) ON DELETE SET NULL,
  granted_at_ms   INTEGER NOT NULL,
  CHECK (role <> 'owner' OR agent_group_id IS NULL)
);
-- NULLs are distinct in a composite key, so a plain PRIMARY KEY would allow duplicate global
-- grants (upstream quirk). The expression index makes a global grant unique too.
CREATE UNIQUE INDEX idx_user_roles_unique ON user_roles (user_id, role, ifnull(agent_group_id, ''));
CREATE INDEX idx_user_roles_scope ON user_roles (agent_group_id, role);

CREATE TABLE agent_group_members (
  user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  agent_group_id  TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  added_by        TEXT REFERENCES users(id) ON DELETE SET NULL,
  added_at_ms     INTEGER NOT NULL,
  PRIMARY KEY (user_id, agent_group_id)
);

CREATE TABLE user_dms (                        -- how to DM this user on this channel
  user_id             TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  channel_type        TEXT NOT NULL,
  messaging_group_id  TEXT NOT NULL REFERENCES messaging_groups(id) ON DELETE CASCADE,
  resolved_at_ms      INTEGER NOT NULL,
  PRIMARY KEY (user_id, channel_type)
);

CREATE TABLE sessions (
  id                  TEXT PRIMARY KEY,
  agent_group_id      TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  messaging_group_id  TEXT REFERENCES messaging_groups(id) ON DELETE SET NULL,
  thread_id           TEXT,                     -- set only for per-thread sessions
  agent_provider      TEXT,                     -- per-session provider override
  status              TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
  container_status    TEXT NOT NULL DEFAULT 'stopped'
                      CHECK (container_status IN ('stopped', 'starting', 'running')),
  run_id              TEXT,                     -- the container run that owns claims now
  run_started_at_ms   INTEGER,                  -- for the sweeper's spawn grace
  last_active_ms      INTEGER,
  created_at_ms       INTEGER NOT NULL
);
CREATE INDEX idx_sessions_agent_group ON sessions (agent_group_id, status, created_at_ms);
CREATE INDEX idx_sessions_lookup ON sessions (messaging_group_id, thread_id);

CREATE TABLE agent_destinations (              -- the ACL and each agent's name map
  agent_group_id  TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  local_name      TEXT NOT NULL,
  target_type     TEXT NOT NULL CHECK (target_type IN ('channel', 'agent')),
  target_id       TEXT NOT NULL,                -- messaging_groups.id or agent_groups.id
  created_at_ms   INTEGER NOT NULL,
  PRIMARY KEY (agent_group_id, local_name)
);
CREATE INDEX idx_agent_dest_target ON agent_destinations (target_type, target_id);

CREATE TABLE pending_questions (               -- ask_question cards waiting for a click
  question_id          TEXT PRIMARY KEY,
  session_id           TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  message_out_id       TEXT NOT NULL,
  channel_type         TEXT,
  platform_id          TEXT,
  thread_id            TEXT,
  platform_message_id  TEXT,
  target_user_id       TEXT,                    -- only this user's click counts (NULL: anyone in the chat)
  title                TEXT NOT NULL DEFAULT '',
  options_json         TEXT NOT NULL DEFAULT '[]',
  created_at_ms        INTEGER NOT NULL,
  expires_at_ms        INTEGER
);

CREATE TABLE pending_approvals (               -- install_packages, add_mcp_server, ...
  approval_id          TEXT PRIMARY KEY,
  session_id           TEXT REFERENCES sessions(id) ON DELETE CASCADE,
  agent_group_id       TEXT REFERENCES agent_groups(id) ON DELETE CASCADE,
  request_id           TEXT NOT NULL,
  action               TEXT NOT NULL,
  payload              TEXT NOT NULL,
  approver_user_id     TEXT,
  channel_type         TEXT,
  platform_id          TEXT,
  platform_message_id  TEXT,
  status               TEXT NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
  title                TEXT NOT NULL DEFAULT '',
  options_json         TEXT NOT NULL DEFAULT '[]',
  created_at_ms        INTEGER NOT NULL,
  expires_at_ms        INTEGER
);
CREATE INDEX idx_pending_approvals_action_status ON pending_approvals (action, status);

CREATE TABLE pending_sender_approvals (        -- an unknown sender waits for an approver
  id                  TEXT PRIMARY KEY,
  messaging_group_id  TEXT NOT NULL REFERENCES messaging_groups(id) ON DELETE CASCADE,
  agent_group_id      TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  sender_identity     TEXT NOT NULL,
  sender_name         TEXT,
  original_event      TEXT NOT NULL,            -- the InboundEvent, replayed on approval
  approver_user_id    TEXT NOT NULL,
  title               TEXT NOT NULL DEFAULT '',
  options_json        TEXT NOT NULL DEFAULT '[]',
  created_at_ms       INTEGER NOT NULL,
  UNIQUE (messaging_group_id, sender_identity)
);

CREATE TABLE pending_channel_approvals (       -- an unknown chat waits for the owner
  messaging_group_id  TEXT PRIMARY KEY REFERENCES messaging_groups(id) ON DELETE CASCADE,
  agent_group_id      TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  original_event      TEXT NOT NULL,
  approver_user_id    TEXT NOT NULL,
  awaiting_name       INTEGER NOT NULL DEFAULT 0,  -- 'new agent' chosen: the approver's next DM names it
  title               TEXT NOT NULL DEFAULT '',
  options_json        TEXT NOT NULL DEFAULT '[]',
  created_at_ms       INTEGER NOT NULL
);

CREATE TABLE dropped_messages (                -- the audit of everything the router refused
  channel_type        TEXT NOT NULL,
  platform_id         TEXT NOT NULL,
  reason              TEXT NOT NULL,
  user_id             TEXT,
  sender_name         TEXT,
  messaging_group_id  TEXT,
  agent_group_id      TEXT,
  detail              TEXT,
  message_count       INTEGER NOT NULL DEFAULT 1,
  first_seen_ms       INTEGER NOT NULL,
  last_seen_ms        INTEGER NOT NULL,
  PRIMARY KEY (channel_type, platform_id, reason)
);
CREATE INDEX idx_dropped_messages_last_seen ON dropped_messages (last_seen_ms);

CREATE TABLE container_configs (
  agent_group_id           TEXT PRIMARY KEY REFERENCES agent_groups(id) ON DELETE CASCADE,
  provider                 TEXT,
  model                    TEXT,
  effort                   TEXT,
  image_tag                TEXT,
  assistant_name           TEXT,
  max_messages_per_prompt  INTEGER,
  skills                   TEXT NOT NULL DEFAULT '"all"',
  mcp_servers              TEXT NOT NULL DEFAULT '{}',
  packages_apt             TEXT NOT NULL DEFAULT '[]',
  packages_pip             TEXT NOT NULL DEFAULT '[]',
  additional_mounts        TEXT NOT NULL DEFAULT '[]',
  cli_scope                TEXT NOT NULL DEFAULT 'group' CHECK (cli_scope IN ('disabled', 'group', 'global')),
  token_budget_daily       INTEGER,             -- NULL = no budget; the proxy refuses past it
  updated_at_ms            INTEGER NOT NULL
);

CREATE TABLE token_usage (                     -- metered by the proxy, per agent group per UTC day
  agent_group_id  TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  day             TEXT NOT NULL,                -- YYYY-MM-DD (UTC)
  input_tokens    INTEGER NOT NULL DEFAULT 0,
  output_tokens   INTEGER NOT NULL DEFAULT 0,
  requests        INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (agent_group_id, day)
);

CREATE TABLE notices (                         -- rate limit for notices to the owner
  key             TEXT PRIMARY KEY,
  last_sent_ms    INTEGER NOT NULL,
  suppressed      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE proxy_tokens (                    -- which session a proxy request comes from
  token_hash      TEXT PRIMARY KEY,             -- sha256 hex of the token given to the container
  session_id      TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  agent_group_id  TEXT NOT NULL REFERENCES agent_groups(id) ON DELETE CASCADE,
  run_id          TEXT NOT NULL,
  created_at_ms   INTEGER NOT NULL
);
CREATE INDEX idx_proxy_tokens_session ON proxy_tokens (session_id);
