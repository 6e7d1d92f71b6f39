-- Per origin, the largest clock stamp stored here (apart from stamps flagged as skewed, kept
-- in their own column), so a restart seeds its clock from a few rows instead of scanning
-- every entry. This node's own row also carries its own newest stamp.

ALTER TABLE repl_origin ADD COLUMN max_hlc INTEGER NOT NULL DEFAULT 0;
ALTER TABLE repl_origin ADD COLUMN max_skewed_hlc INTEGER NOT NULL DEFAULT 0;

UPDATE repl_origin SET
    max_hlc = COALESCE((SELECT MAX(e.hlc) FROM repl_entry e
                        WHERE e.origin = repl_origin.origin AND e.skewed = 0), 0),
    max_skewed_hlc = COALESCE((SELECT MAX(e.hlc) FROM repl_entry e
                               WHERE e.origin = repl_origin.origin AND e.skewed = 1), 0);
