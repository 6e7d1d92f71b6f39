-- The state of each link as the running node last saw it, for `shim status`: written when a
-- link comes up or goes down (or its reason for failing changes), not on every heartbeat.
-- Dialed links are keyed by the URL dialed (known before the peer ever answered), admitted
-- ones by the peer's node id.

CREATE TABLE link (
    link_key      TEXT PRIMARY KEY,
    role          TEXT    NOT NULL,             -- 'dial' or 'admit'
    node_id       TEXT    NOT NULL DEFAULT '',  -- the peer, once it answered
    state         TEXT    NOT NULL,             -- 'up' or 'down'
    since_ms      INTEGER NOT NULL,             -- up: since it linked; down: since the first failure in a row
    failures      INTEGER NOT NULL DEFAULT 0,   -- failed attempts since it was last up
    last_error    TEXT    NOT NULL DEFAULT '',
    last_error_ms INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The peer's confirmed position in THIS node's log (it acknowledges what it applied), so
-- `shim status` can count, when asked, the entries the peer still lacks.
ALTER TABLE peer ADD COLUMN acked INTEGER NOT NULL DEFAULT 0;
