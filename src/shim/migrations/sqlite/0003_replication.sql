-- Replication: the immutable entries every node exchanges, apart from the local MVCC log.
-- Every local write of a replicated key records one entry; entries from peers are stored as they
-- arrive (duplicates dropped by origin and seq) and forwarded to other peers. A node's etcd
-- revisions stay its own: a merged entry that changes a key appends an ordinary row to `log`.

CREATE TABLE repl_entry (
    ingest        INTEGER PRIMARY KEY,   -- local arrival order: peers pull entries in this order
    origin        TEXT    NOT NULL,      -- node id of the node that made the write
    seq           INTEGER NOT NULL,      -- the origin's sequence number (1, 2, ...)
    hlc           INTEGER NOT NULL,      -- the origin's hybrid logical clock at the write
    key           BLOB    NOT NULL,
    deleted       INTEGER NOT NULL,      -- 1: a delete
    value         BLOB    NOT NULL,      -- the writer's whole new value (empty for a delete)
    lease         INTEGER NOT NULL,      -- lease id (leases stay with the node that granted them)
    ops           TEXT,                  -- JSON field operations against the writer's base; NULL: whole value
    base_uid      TEXT,                  -- object incarnation the writer saw (metadata.uid)
    uid           TEXT,                  -- object incarnation written
    received_from TEXT,                  -- peer it came from; NULL: written on this node
    received_ms   INTEGER NOT NULL,      -- wall clock when stored here
    skewed        INTEGER NOT NULL DEFAULT 0,  -- 1: its clock was ahead of ours by more than the bound
    outcome       TEXT    NOT NULL       -- 'local', 'applied', 'unchanged', 'superseded'
);
CREATE UNIQUE INDEX repl_entry_origin_seq ON repl_entry (origin, seq);
CREATE INDEX repl_entry_key_stamp ON repl_entry (key, hlc, origin, seq);

-- Object incarnations deleted per key: updates of them never resurrect them.
CREATE TABLE repl_tombstone (
    key BLOB NOT NULL,
    uid TEXT NOT NULL,
    PRIMARY KEY (key, uid)
) WITHOUT ROWID;

-- Nodes this node has exchanged entries with.
CREATE TABLE peer (
    node_id          TEXT PRIMARY KEY,
    name             TEXT    NOT NULL DEFAULT '',
    address          TEXT    NOT NULL DEFAULT '',   -- URL dialed, or the address it dialed from
    role             TEXT    NOT NULL DEFAULT '',   -- 'parent' (we dial it) or 'child' (it dials us)
    cursor           INTEGER NOT NULL DEFAULT 0,    -- the peer's ingest position applied here
    peer_high        INTEGER NOT NULL DEFAULT 0,    -- the peer's newest ingest position we know of
    entries_received INTEGER NOT NULL DEFAULT 0,
    entries_applied  INTEGER NOT NULL DEFAULT 0,    -- changed a key here
    conflicts        INTEGER NOT NULL DEFAULT 0,    -- arrived out of order or lost to another write
    last_lag_ms      INTEGER NOT NULL DEFAULT 0,    -- origin write -> applied here, newest batch
    first_seen_ms    INTEGER NOT NULL DEFAULT 0,
    last_seen_ms     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Views for people.
CREATE VIEW replication_log AS
    SELECT ingest, origin, seq, hlc, (hlc >> 16) AS wall_ms, CAST(key AS TEXT) AS key,
           CASE deleted WHEN 1 THEN 'DELETE' ELSE 'PUT' END AS event,
           CASE WHEN ops IS NULL THEN 'whole' ELSE 'fields' END AS kind,
           ops, uid, COALESCE(received_from, 'local') AS received_from, skewed, outcome
    FROM repl_entry;

CREATE VIEW replication_peers AS
    SELECT node_id, name, address, role, cursor, peer_high, (peer_high - cursor) AS lag_entries,
           last_lag_ms, entries_received, entries_applied, conflicts,
           datetime(last_seen_ms / 1000, 'unixepoch') AS last_seen
    FROM peer;

CREATE VIEW replication_origins AS
    SELECT origin, MAX(seq) AS max_seq, COUNT(*) AS entries, MAX(hlc >> 16) AS newest_wall_ms
    FROM repl_entry GROUP BY origin;
