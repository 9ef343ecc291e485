-- records keyed by what they are: (person_id, organisation, record_key) is
-- the primary key, and the only other index is the one by local id. Before,
-- each record stored cost four B-tree inserts (a primary key by batch and
-- position, the content key, the local id, the snapshot); now two.
-- A batch's snapshot is held on the batch (every record of a batch belongs
-- to its snapshot), so retiring earlier snapshots reads the batches table.
-- Records stored before record keys existed get one from their batch and
-- position, which no agent's key (64 hex digits) can equal. SQLite cannot
-- change a primary key in place: the table is copied.
ALTER TABLE batches ADD COLUMN snapshot TEXT;
UPDATE batches SET snapshot = s.snapshot
FROM (SELECT DISTINCT organisation, batch_id, snapshot FROM records WHERE snapshot IS NOT NULL) AS s
WHERE batches.organisation = s.organisation AND batches.batch_id = s.batch_id;
CREATE TABLE records_by_content (
    person_id         TEXT    NOT NULL,
    organisation      TEXT    NOT NULL,
    batch_id          TEXT    NOT NULL,
    record_index      INTEGER NOT NULL,
    dataset           TEXT    NOT NULL,
    source_row        INTEGER NOT NULL,
    local_pseudonym   TEXT    NOT NULL,
    nhs_pseudonym     TEXT,
    link_method       TEXT    NOT NULL,
    sex               TEXT,
    birth_month       TEXT,
    postcode_district TEXT,
    attributes        TEXT    NOT NULL,
    record_key        TEXT    NOT NULL,
    PRIMARY KEY (person_id, organisation, record_key)
);
INSERT INTO records_by_content
SELECT person_id, organisation, batch_id, record_index, dataset, source_row, local_pseudonym,
       nhs_pseudonym, link_method, sex, birth_month, postcode_district, attributes,
       COALESCE(record_key, 'batch ' || batch_id || ' ' || record_index)
FROM records;
DROP TABLE records;
ALTER TABLE records_by_content RENAME TO records;
CREATE INDEX records_by_local ON records (organisation, local_pseudonym);
