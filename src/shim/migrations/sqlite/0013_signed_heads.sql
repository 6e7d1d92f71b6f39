-- Origins sign their hash chain once for many entries (shim.replication.signing.head_message)
-- instead of each entry: the signature of the chain at an entry, on the entries that have one
-- (the last of each write transaction here; the end of each verified run for a peer's).
ALTER TABLE repl_entry ADD COLUMN head_sig BLOB;
ALTER TABLE repl_pending ADD COLUMN head_sig BLOB;
-- The proof that the origin wrote a version of an equivocated entry signed this way: the
-- chain before it, then the message hashes after it up to the signed one (sig holds that
-- signature).
ALTER TABLE repl_fork ADD COLUMN proof BLOB;
