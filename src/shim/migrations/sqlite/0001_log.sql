-- The key-value log: one row per version of a key, in revision order.
-- A PUT appends the key's new version; a DELETE appends a tombstone row (deleted = 1).
-- Compaction removes versions that no read at or after the compacted revision can see.

CREATE TABLE meta (
    name  TEXT PRIMARY KEY,   -- 'node_id', 'revision', 'compact_revision', ...
    value                     -- integer or text, depending on name
) WITHOUT ROWID;

CREATE TABLE log (
    id              INTEGER PRIMARY KEY,     -- storage order: revision, then position inside a txn
    revision        INTEGER NOT NULL,        -- etcd mod_revision of this version
    key             BLOB    NOT NULL,        -- etcd key (bytes, compared byte by byte)
    value           BLOB    NOT NULL,        -- empty on a tombstone
    create_revision INTEGER NOT NULL,        -- revision that created this incarnation (0 on a tombstone)
    version         INTEGER NOT NULL,        -- 1 on create, +1 per update (0 on a tombstone)
    lease           INTEGER NOT NULL,        -- attached lease id, 0 = none
    deleted         INTEGER NOT NULL,        -- 1 = tombstone (a DELETE event)
    prev_revision   INTEGER NOT NULL,        -- mod_revision of the version this one replaced (0 = none): prev_kv
    node_id         TEXT    NOT NULL,        -- node that made the write
    hlc             INTEGER NOT NULL         -- hybrid logical clock: (wall ms << 16) | logical counter
);
-- Not unique: etcd lets one Txn put a key and then delete it through a range ending in "\0",
-- which leaves two versions of the key at one revision (told apart by id).
CREATE INDEX log_key_revision ON log (key, revision);
CREATE INDEX log_revision ON log (revision);

-- Each live key's newest version: a read at the current revision never scans history.
CREATE TABLE current (
    key BLOB PRIMARY KEY,
    id  INTEGER NOT NULL    -- log.id of the key's newest, non-deleted version
) WITHOUT ROWID;

-- Views for people with the sqlite3 shell: keys and values shown as text.
CREATE VIEW kv AS
    SELECT CAST(l.key AS TEXT) AS key, CAST(l.value AS TEXT) AS value, l.revision AS mod_revision,
           l.create_revision, l.version, l.lease
    FROM current c JOIN log l ON l.id = c.id;

CREATE VIEW history AS
    SELECT l.revision, CAST(l.key AS TEXT) AS key,
           CASE l.deleted WHEN 1 THEN 'DELETE' ELSE 'PUT' END AS event,
           CAST(l.value AS TEXT) AS value, l.create_revision, l.version, l.lease, l.prev_revision,
           l.node_id, l.hlc
    FROM log l;
