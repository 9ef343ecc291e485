-- Fuzzy linkage (SQLite). Every table is keyed by person_id first, like the
-- records, so PostgreSQL can distribute it by person (Citus).

-- One row per organisation's local id with a linkage encoding: its records'
-- person id, its NHS pseudonym if any, and its Bloom filters (re-permuted
-- with the gateway's key; fields side by side, all-zero when missing).
CREATE TABLE linkage_entities (
    person_id        TEXT    NOT NULL,
    organisation     TEXT    NOT NULL,
    local_pseudonym  TEXT    NOT NULL,
    nhs_pseudonym    TEXT,
    params_version   INTEGER NOT NULL,
    filters          BLOB    NOT NULL,
    linked           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (person_id, organisation, local_pseudonym)
);
CREATE INDEX linkage_entities_pending ON linkage_entities (linked);

-- Keyed blocking keys (re-keyed by the gateway), to find candidates.
CREATE TABLE linkage_blocks (
    person_id        TEXT    NOT NULL,
    organisation     TEXT    NOT NULL,
    local_pseudonym  TEXT    NOT NULL,
    rule             INTEGER NOT NULL,
    block_key        TEXT    NOT NULL,
    PRIMARY KEY (person_id, organisation, local_pseudonym, rule)
);
CREATE INDEX linkage_blocks_key ON linkage_blocks (rule, block_key);

-- The spine: which person each records' person id belongs to, how decided.
CREATE TABLE person_spine (
    person_id  TEXT    NOT NULL PRIMARY KEY,
    spine_id   TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    score      REAL,
    linked_at  INTEGER NOT NULL
);
CREATE INDEX person_spine_spine ON person_spine (spine_id);

-- The fitted Fellegi-Sunter model per parameter version (JSON), and how
-- many entities it was fitted on (it is refitted when they double).
CREATE TABLE linkage_models (
    params_version INTEGER NOT NULL PRIMARY KEY,
    model          TEXT    NOT NULL,
    entities       INTEGER NOT NULL,
    fitted_at      INTEGER NOT NULL
);

-- One gateway links at a time: a lease row it takes and renews.
CREATE TABLE linkage_lease (
    id      BIGINT  NOT NULL PRIMARY KEY,
    holder  TEXT    NOT NULL,
    until   BIGINT  NOT NULL
);
INSERT INTO linkage_lease (id, holder, until) VALUES (1, '', 0);
