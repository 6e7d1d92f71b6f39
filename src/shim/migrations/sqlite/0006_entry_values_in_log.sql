-- A local write's entry used to hold a second copy of the value its log row holds. Now such
-- an entry stores an empty value and value_in_log = 1: its value is the log row this node
-- wrote with the same key and clock stamp (every local write takes its own stamp). Before a
-- compaction deletes such a row, the value is copied into the entry (value_in_log = 0), so an
-- entry always has its value. Entries from peers, and local entries whose log row got another
-- value (a merge rule kept something else), keep their value here as before.

ALTER TABLE repl_entry ADD COLUMN value_in_log INTEGER NOT NULL DEFAULT 0;

-- The people's view of the entries shows each entry's value wherever it is stored.
DROP VIEW replication_log;
CREATE VIEW replication_log AS
    SELECT e.ingest, e.origin, e.seq, e.hlc, (e.hlc >> 16) AS wall_ms, CAST(e.key AS TEXT) AS key,
           CASE e.deleted WHEN 1 THEN 'DELETE' ELSE 'PUT' END AS event,
           CASE WHEN e.ops IS NULL THEN 'whole' ELSE 'fields' END AS kind,
           CAST(CASE WHEN e.value_in_log = 0 THEN e.value
                     ELSE (SELECT l.value FROM log l WHERE l.key = e.key AND l.hlc = e.hlc)
                END AS TEXT) AS value,
           e.ops, e.uid, COALESCE(e.received_from, 'local') AS received_from, e.skewed, e.outcome
    FROM repl_entry e;
