"""The log/MVCC core: etcd's key-value semantics (revisions, ranges, txns, compaction) over a
SQL backend, the single ordered write path, and the commit stream watchers are fed from."""
