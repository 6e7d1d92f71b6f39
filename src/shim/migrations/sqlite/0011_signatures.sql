-- Signed entries (shim.replication.signing): the origin's signature, the body digest (kept by
-- stubs, whose value and operations are gone) and the origin's hash chain up to the entry.
-- Entries written before this migration have none of them.
ALTER TABLE repl_entry ADD COLUMN sig BLOB;
ALTER TABLE repl_entry ADD COLUMN digest BLOB;
ALTER TABLE repl_entry ADD COLUMN chain BLOB;
ALTER TABLE repl_pending ADD COLUMN sig BLOB;
ALTER TABLE repl_pending ADD COLUMN digest BLOB;

-- Per origin: the chain at max_seq, and since when (and from which seq) it is known to have
-- signed two different entries under one seq (equivocation): its entries from that seq on are
-- left out of every fold.
ALTER TABLE repl_origin ADD COLUMN head BLOB;
ALTER TABLE repl_origin ADD COLUMN forked_seq INTEGER;
ALTER TABLE repl_origin ADD COLUMN forked_ms INTEGER;

-- The other version of each entry an origin equivocated on: the proof, sent to every peer.
CREATE TABLE repl_fork (
    origin   TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    hlc      INTEGER NOT NULL,
    key      BLOB    NOT NULL,
    deleted  INTEGER NOT NULL,
    lease    INTEGER NOT NULL,
    base_uid TEXT,
    uid      TEXT,
    kind     TEXT    NOT NULL,
    digest   BLOB    NOT NULL,
    sig      BLOB    NOT NULL,
    found_ms INTEGER NOT NULL,
    PRIMARY KEY (origin, seq, sig)
) WITHOUT ROWID;

-- Entries of origins without a key (written before this migration) are accepted unsigned only
-- when stamped before it.
CREATE TABLE repl_signing (unsigned_before INTEGER NOT NULL);
INSERT INTO repl_signing VALUES ((CAST(strftime('%s', 'now') AS INTEGER) * 1000) << 16);
