-- Retention strips entries no merge needs to placeholders (outcome 'pruned'), which stay to
-- keep each origin's sequence whole. It takes chunks of 1,000 candidates, and for each one
-- asked whether any entry of its key names an incarnation by reading every entry of the key,
-- placeholders included: a chunk's time (the writer waits for it) grew with the node's age,
-- over a second at 80,000 entries of 100 keys. Both questions now read an index: the entries
-- it may strip, by age, only those not stripped yet; and the entries that name one.
CREATE INDEX repl_entry_prunable ON repl_entry (received_ms)
    WHERE kind = '' AND uid IS NULL AND base_uid IS NULL AND outcome != 'pruned';
CREATE INDEX repl_entry_incarnations ON repl_entry (key)
    WHERE kind = '' AND (uid IS NOT NULL OR base_uid IS NOT NULL);
