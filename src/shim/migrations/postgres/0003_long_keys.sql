-- Keys of any length up to etcd's request limit (1.5 MiB by default).
-- A btree index row holds at most 2704 bytes, so indexes on the whole key refused keys of
-- about 2.7 KB ("index row size ... exceeds btree version 4 maximum 2704"). The indexes hold
-- the key's first 1024 bytes instead: that prefix orders keys as the whole key does wherever
-- two prefixes differ, and every query also compares the whole key (shim/backend/pg_views.py
-- writes the predicates: prefix condition for the index, whole-key condition for the answer,
-- and ORDER BY prefix, key). Keys of up to 1024 bytes, nearly all keys, are whole in the index.

DROP INDEX log_key_revision;
CREATE INDEX log_key_revision ON log ((substring(key from 1 for 1024)), revision);

-- One row per key: unique on (prefix, SHA-256 of the whole key), which also serves lookups
-- and ordered scans by the prefix.
ALTER TABLE current DROP CONSTRAINT current_pkey;
CREATE UNIQUE INDEX current_key ON current ((substring(key from 1 for 1024)), sha256(key));
