-- Joinery gateway schema, version 1 (PostgreSQL).
-- Every person-level table carries person_id first, so it can be distributed
-- by that column (Citus: SELECT create_distributed_table('records', 'person_id')).

CREATE TABLE batches (
    organisation      TEXT    NOT NULL,
    batch_id          TEXT    NOT NULL,
    dataset           TEXT    NOT NULL,
    sequence          BIGINT  NOT NULL,
    agreement_id      TEXT    NOT NULL,
    agreement_version BIGINT  NOT NULL,
    record_count      BIGINT  NOT NULL,
    received_at       BIGINT  NOT NULL,
    purged_at         BIGINT,
    PRIMARY KEY (organisation, batch_id)
);

CREATE TABLE records (
    person_id         TEXT    NOT NULL,
    organisation      TEXT    NOT NULL,
    batch_id          TEXT    NOT NULL,
    record_index      BIGINT  NOT NULL,
    dataset           TEXT    NOT NULL,
    source_row        BIGINT  NOT NULL,
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
    record_index  BIGINT  NOT NULL,
    event_index   BIGINT  NOT NULL,
    event_type    TEXT    NOT NULL,
    event_date    TEXT    NOT NULL,
    attributes    TEXT    NOT NULL,
    PRIMARY KEY (person_id, organisation, batch_id, record_index, event_index)
);
CREATE INDEX events_by_type ON events (event_type, event_date);
