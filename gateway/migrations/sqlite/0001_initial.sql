-- Joinery gateway schema, version 1 (SQLite).
-- Every person-level table carries person_id first, so the PostgreSQL twin
-- of this schema can be distributed by that column (Citus).

CREATE TABLE batches (
    organisation      TEXT    NOT NULL,
    batch_id          TEXT    NOT NULL,
    dataset           TEXT    NOT NULL,
    sequence          INTEGER NOT NULL,
    agreement_id      TEXT    NOT NULL,
    agreement_version INTEGER NOT NULL,
    record_count      INTEGER NOT NULL,
    received_at       INTEGER NOT NULL,
    purged_at         INTEGER,
    PRIMARY KEY (organisation, batch_id)
);

CREATE TABLE records (
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
    PRIMARY KEY (person_id, organisation, batch_id, record_index)
);
CREATE INDEX records_by_organisation ON records (organisation, dataset);
CREATE INDEX records_by_local ON records (organisation, local_pseudonym);

CREATE TABLE events (
    person_id     TEXT    NOT NULL,
    organisation  TEXT    NOT NULL,
    batch_id      TEXT    NOT NULL,
    record_index  INTEGER NOT NULL,
    event_index   INTEGER NOT NULL,
    event_type    TEXT    NOT NULL,
    event_date    TEXT    NOT NULL,
    attributes    TEXT    NOT NULL,
    PRIMARY KEY (person_id, organisation, batch_id, record_index, event_index)
);
CREATE INDEX events_by_type ON events (event_type, event_date);
