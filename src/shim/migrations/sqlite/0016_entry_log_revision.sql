-- A local write's entry that stores no copy of its value (0006) found its log row by key and
-- clock stamp: the (key, revision) index narrowed that to the key, then every version of the
-- key was read for the stamp. Reading a hot key's entries (a peer catching up, a re-fold)
-- was quadratic in its versions until a compaction: 8,000 versions of one key took 1.7 s to
-- send. Such an entry now names the revision of its row (0: the entry holds its own value),
-- and the index finds that row directly.
ALTER TABLE repl_entry RENAME COLUMN value_in_log TO log_revision;

-- Entries written before this migration say 1; give each its row's revision (found once, with
-- an index that lives only for this). One without a row keeps 1 and reads no value, as before.
CREATE INDEX migration_log_key_stamp ON log (key, hlc);
UPDATE repl_entry SET log_revision = COALESCE(
    (SELECT l.revision FROM log l WHERE l.key = repl_entry.key AND l.hlc = repl_entry.hlc),
    log_revision)
WHERE log_revision != 0;
DROP INDEX migration_log_key_stamp;

DROP VIEW replication_log;
CREATE VIEW replication_log AS
    SELECT e.ingest, e.origin, o.node_id AS origin_node, e.seq, e.hlc, (e.hlc >> 16) AS wall_ms,
           CAST(e.key AS TEXT) AS key,
           CASE e.deleted WHEN 1 THEN 'DELETE' ELSE 'PUT' END AS event,
           CASE WHEN e.kind != '' THEN e.kind WHEN e.ops IS NULL THEN 'whole' ELSE 'fields' END
               AS kind,
           CAST(CASE WHEN e.log_revision = 0 THEN e.value
                     ELSE (SELECT l.value FROM log l WHERE l.key = e.key
                           AND l.revision = e.log_revision AND l.hlc = e.hlc)
                END AS TEXT) AS value,
           e.ops, e.uid, COALESCE(e.received_from, 'local') AS received_from, e.skewed, e.outcome
    FROM repl_entry e LEFT JOIN repl_origin o ON o.origin = e.origin;
