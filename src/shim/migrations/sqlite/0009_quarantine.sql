-- Entries set apart (shim.replication.quarantine): refused on arrival ('ingest': never stored
-- in repl_entry) or stored but impossible to fold ('fold': their repl_entry outcome is
-- 'quarantined' and every fold of the key leaves them out). seq and hlc are NULL when the
-- peer sent values no integer column holds.
CREATE TABLE repl_quarantine (
    id            INTEGER PRIMARY KEY,
    origin        TEXT    NOT NULL,
    seq           INTEGER,
    hlc           INTEGER,
    key           BLOB    NOT NULL,
    stage         TEXT    NOT NULL,   -- 'ingest' or 'fold'
    reason        TEXT    NOT NULL,
    received_from TEXT,               -- the peer that sent it (NULL: found in a fold)
    received_ms   INTEGER NOT NULL
);
CREATE INDEX repl_quarantine_origin_seq ON repl_quarantine (origin, seq);

-- Entries stamped further ahead than --max-clock-skew wait apart (outcome 'held') until the
-- wall clock reaches them.
CREATE INDEX repl_entry_held ON repl_entry (hlc) WHERE outcome = 'held';

CREATE VIEW replication_quarantine AS
    SELECT id, origin, seq, hlc, CAST(key AS TEXT) AS key, stage, reason,
           COALESCE(received_from, 'fold') AS received_from,
           datetime(received_ms / 1000, 'unixepoch') AS at
    FROM repl_quarantine;
