-- records keyed by what they are: (person_id, organisation, record_key) is
-- the primary key, and the only other index is the one by local id. Before,
-- each record stored cost four B-tree inserts (a primary key by batch and
-- position, the content key, the local id, the snapshot); now two.
-- A batch's snapshot is held on the batch (every record of a batch belongs
-- to its snapshot), so retiring earlier snapshots reads the batches table.
-- Records stored before record keys existed get one from their batch and
-- position, which no agent's key (64 hex digits) can equal.
ALTER TABLE batches ADD COLUMN snapshot TEXT;
UPDATE batches SET snapshot = s.snapshot
FROM (SELECT DISTINCT organisation, batch_id, snapshot FROM records WHERE snapshot IS NOT NULL) AS s
WHERE batches.organisation = s.organisation AND batches.batch_id = s.batch_id;
UPDATE records SET record_key = 'batch ' || batch_id || ' ' || record_index WHERE record_key IS NULL;
DROP INDEX records_once;
DROP INDEX records_by_snapshot;
ALTER TABLE records DROP CONSTRAINT records_pkey;
ALTER TABLE records ALTER COLUMN record_key SET NOT NULL;
ALTER TABLE records ADD PRIMARY KEY (person_id, organisation, record_key);
ALTER TABLE records DROP COLUMN snapshot;
