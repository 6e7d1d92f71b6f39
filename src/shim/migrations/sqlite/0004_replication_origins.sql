-- Per origin node, the highest sequence number stored here (a version vector). Entries of one
-- origin reach every node in sequence order, so an entry at or below it is a duplicate, even
-- after the entry itself was pruned (replication retention).

CREATE TABLE repl_origin (
    origin  TEXT PRIMARY KEY,
    max_seq INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO repl_origin (origin, max_seq) SELECT origin, MAX(seq) FROM repl_entry GROUP BY origin;

DROP VIEW replication_origins;
CREATE VIEW replication_origins AS
    SELECT o.origin, o.max_seq, COUNT(e.ingest) AS entries_kept, MAX(e.hlc >> 16) AS newest_wall_ms
    FROM repl_origin o LEFT JOIN repl_entry e ON e.origin = o.origin GROUP BY o.origin;
