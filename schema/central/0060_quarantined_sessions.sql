-- Host files (issue 8 §1): sessions whose container-written files were refused (a FIFO or a
-- link where a database, journal or heartbeat must be) or stalled a host program's file work.
-- While a row is here no host program reads or writes the session's agent/ folder: the sweeper
-- skips the session and stops its container, delivery stops watching it, wake() refuses it.
-- One row per session, written once by whichever program noticed first (that program logs it
-- once); `nanoclaw quarantine list` shows it and `nanoclaw quarantine release` deletes it.
-- `reason` is host-written text; container-chosen names in it are escaped (untrusted.shown).
CREATE TABLE quarantined_sessions (
  session_id         TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
  program            TEXT NOT NULL,
  reason             TEXT NOT NULL,
  quarantined_at_ms  INTEGER NOT NULL
);
