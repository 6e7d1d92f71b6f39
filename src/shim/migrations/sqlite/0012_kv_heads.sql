-- Each version's bytes as a Range answer carries them, up to its value's own bytes
-- (shim/backend/kv_wire.py): the RangeResponse.kvs tag and length, key, revisions, version,
-- lease, the value's tag and length. A Range answer is then its rows' heads and values laid end
-- to end. Written with the row; NULL on tombstones and on rows written before this column
-- (those are encoded when read).
ALTER TABLE log ADD COLUMN kv_head BLOB;
