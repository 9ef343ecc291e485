-- The links each linkage run found above the threshold, kept beside the
-- entities so that a gateway which starts, or takes the linkage lease over,
-- compares only the pairs that involve what is new, as the gateway that ran
-- last does from what it keeps in memory, instead of every pair again
-- (storage::links). One row per entity that owns links (a link is owned by
-- its end whose key sorts first); `links` packs, per link, the other end's
-- digest (16 bytes), its probability and its weight.
-- linkage_models.links_runs is the run count that wrote them: they stand
-- for the last run only while it equals `runs`.
CREATE TABLE linkage_links (
    person_id TEXT NOT NULL,
    organisation TEXT NOT NULL,
    local_pseudonym TEXT NOT NULL,
    params_version INTEGER NOT NULL,
    links BLOB NOT NULL,
    PRIMARY KEY (person_id, organisation, local_pseudonym)
);
ALTER TABLE linkage_models ADD COLUMN links_runs INTEGER;
-- The number that breaks ties between equally strong links, kept on the
-- entity (NULL: the hash of its key, as before): a store built under new
-- keys takes the old store's numbers over with its links, so the same
-- links cluster into the same people (storage::rotation).
ALTER TABLE linkage_entities ADD COLUMN tiebreak INTEGER;
-- The dataset whose record brought the entity's encoding (NULL: any of the
-- entity's records, as before it was kept): when that dataset's records of
-- the entity are deleted, the encoding goes with them, though the entity's
-- records of other datasets (without linkage fields) are still held.
ALTER TABLE linkage_entities ADD COLUMN dataset TEXT;
