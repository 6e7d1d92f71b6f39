-- Version vectors hold no gaps: repl_origin.max_seq is the highest seq of an origin held here
-- with none missing below it. An entry from a peer beyond max_seq + 1 waits here (not applied,
-- not forwarded, not counted) until the entries before it arrive; then it moves to repl_entry.
CREATE TABLE repl_pending (
    origin        TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    hlc           INTEGER NOT NULL,
    key           BLOB    NOT NULL,
    deleted       INTEGER NOT NULL,
    value         BLOB    NOT NULL,
    lease         INTEGER NOT NULL,
    ops           TEXT,
    base_uid      TEXT,
    uid           TEXT,
    kind          TEXT    NOT NULL DEFAULT '',
    secret        TEXT,
    pruned        INTEGER NOT NULL DEFAULT 0,
    received_from TEXT    NOT NULL,
    received_ms   INTEGER NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;

-- Retention keeps a pruned entry's place in its origin's sequence (outcome 'pruned', no value,
-- no operations), so a peer that catches up later gets a sequence without gaps.

DROP VIEW replication_origins;
CREATE VIEW replication_origins AS
    SELECT o.origin, o.max_seq, COUNT(e.ingest) AS entries_kept, MAX(e.hlc >> 16) AS newest_wall_ms,
           (SELECT COUNT(*) FROM repl_pending p WHERE p.origin = o.origin) AS waiting
    FROM repl_origin o LEFT JOIN repl_entry e ON e.origin = o.origin GROUP BY o.origin;

-- Which node writes under an origin (a node takes a new origin at every start): this node's
-- own, and each peer's as its link's handshake names it.
ALTER TABLE repl_origin ADD COLUMN node_id TEXT;

DROP VIEW replication_log;
CREATE VIEW replication_log AS
    SELECT e.ingest, e.origin, o.node_id AS origin_node, e.seq, e.hlc, (e.hlc >> 16) AS wall_ms,
           CAST(e.key AS TEXT) AS key,
           CASE e.deleted WHEN 1 THEN 'DELETE' ELSE 'PUT' END AS event,
           CASE WHEN e.kind != '' THEN e.kind WHEN e.ops IS NULL THEN 'whole' ELSE 'fields' END
               AS kind,
           CAST(CASE WHEN e.value_in_log = 0 THEN e.value
                     ELSE (SELECT l.value FROM log l WHERE l.key = e.key AND l.hlc = e.hlc)
                END AS TEXT) AS value,
           e.ops, e.uid, COALESCE(e.received_from, 'local') AS received_from, e.skewed, e.outcome
    FROM repl_entry e LEFT JOIN repl_origin o ON o.origin = e.origin;
