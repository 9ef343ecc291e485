-- Which people each data generation changed, written in the same
-- transaction that moves the generation on (a batch stored: its people; a
-- linkage run: the people it moved, under their old and new spine ids;
-- data deleted: the people it was about). A gateway holding the population
-- in memory at generation g reads the people changed after g again instead
-- of reloading everyone. Keyed by generation first, so writing appends;
-- distributable by person_id (Citus needs it in the key, not first).
CREATE TABLE population_changes (
    person_id  TEXT   NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (generation, person_id)
);
-- The log is complete after this generation: a population loaded earlier
-- is reloaded in full. Old rows are pruned (see retention), moving it on.
ALTER TABLE data_generation ADD COLUMN changes_from BIGINT NOT NULL DEFAULT 0;
UPDATE data_generation SET changes_from = n;
