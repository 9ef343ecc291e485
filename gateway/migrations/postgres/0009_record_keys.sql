-- Exactly once by content: each record carries a key digesting its dataset,
-- its line in the extract and everything it holds (not the file's name nor
-- the batch it came in), so the same extract delivered again under another
-- name, or cut into other batches, stores nothing twice. Records stored
-- before this migration have no key. person_id leads the index, so Citus can
-- enforce it on each shard.
ALTER TABLE records ADD COLUMN record_key TEXT;
CREATE UNIQUE INDEX records_once ON records (person_id, organisation, record_key);
