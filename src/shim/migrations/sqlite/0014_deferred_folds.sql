-- A catch-up is merged in several transactions, so that the node's own writes never wait
-- for all of it; a key that receives late entries (stamped before an entry it holds) is
-- folded again from all its entries once, when the catch-up's last part is merged. Until
-- then its late entries wait here (their ingest positions, and the peer whose catch-up it
-- is), in the transaction that stored them: a node stopped between the parts folds them when
-- it starts again.
CREATE TABLE repl_deferred_fold (
    peer   TEXT    NOT NULL,
    key    BLOB    NOT NULL,
    ingest INTEGER NOT NULL,
    PRIMARY KEY (peer, key, ingest)
) WITHOUT ROWID;
