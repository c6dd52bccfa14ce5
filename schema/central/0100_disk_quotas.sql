-- Disk quotas (issue 8 §4): what a group's folder and a session's agent/ folder may hold, what
-- the sweeper measured, and which wakes are held back until a folder is under its quota again.
-- docs/internals.md "Disk quotas" has the contract; docs/security.md the threat model.

-- Per-group overrides of the group_disk_quota_mb / session_disk_quota_mb settings (NULL: the
-- setting; 0: no limit).
ALTER TABLE container_configs ADD COLUMN group_disk_quota_mb INTEGER;
ALTER TABLE container_configs ADD COLUMN session_disk_quota_mb INTEGER;

-- The last measurement of each folder (scope 'group': groups/<folder>, scope_id the agent
-- group id; scope 'session': sessions/<group>/<session>/agent, scope_id the session id).
-- complete = 0: the walk stopped early, at the entry limit or too deep (counts as over).
CREATE TABLE disk_usage (
  scope           TEXT NOT NULL CHECK (scope IN ('group', 'session')),
  scope_id        TEXT NOT NULL,
  bytes           INTEGER NOT NULL,
  entries         INTEGER NOT NULL,
  complete        INTEGER NOT NULL,
  method          TEXT NOT NULL CHECK (method IN ('walk', 'project')),
  measured_at_ms  INTEGER NOT NULL,
  PRIMARY KEY (scope, scope_id)
);

-- A folder found over its quota (or, scope 'floor', the data folder's filesystem below
-- disk_min_free_mb). While a row exists, Sandbox.wake refuses the sessions it covers (a
-- group's row covers every session of the group; the floor covers all), except, in state
-- 'cleanup', the one session allowed a run to delete files. The sweeper deletes the row when
-- a measurement finds the folder under its quota again; messages wait meanwhile, pending.
CREATE TABLE disk_blocks (
  scope               TEXT NOT NULL CHECK (scope IN ('group', 'session', 'floor')),
  scope_id            TEXT NOT NULL,
  agent_group_id      TEXT,                    -- NULL for the floor
  state               TEXT NOT NULL CHECK (state IN ('cleanup', 'blocked')),
  cleanup_session_id  TEXT,                    -- the one session a 'cleanup' row lets run...
  cleanup_after_run   TEXT,                    -- ...in a run other than this one (its run then)
  bytes               INTEGER NOT NULL,        -- usage when blocked (free bytes for the floor)
  entries             INTEGER NOT NULL,
  limit_bytes         INTEGER NOT NULL,
  limit_entries       INTEGER NOT NULL,
  reason              TEXT NOT NULL,
  blocked_at_ms       INTEGER NOT NULL,
  notified_at_ms      INTEGER,                 -- the agent's note and the owner's notice queued
  refused_wakes       INTEGER NOT NULL DEFAULT 0,
  last_refused_at_ms  INTEGER,
  PRIMARY KEY (scope, scope_id)
);

-- Kernel project quotas (ext4/XFS mounted prjquota): the project id given to each folder.
-- labelled_at_ms: when every entry already in the folder got the id (new entries inherit it).
CREATE TABLE disk_projects (
  scope           TEXT NOT NULL CHECK (scope IN ('group', 'session')),
  scope_id        TEXT NOT NULL,
  project_id      INTEGER NOT NULL UNIQUE,
  labelled_at_ms  INTEGER,
  PRIMARY KEY (scope, scope_id)
);
