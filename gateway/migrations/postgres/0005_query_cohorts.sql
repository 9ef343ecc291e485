-- Cohorts released to analysts, so that differencing can be refused: a new
-- cohort that differs from an earlier one by a handful of people is not
-- answered. Members are the people's 64-bit keys, sorted, little-endian.
-- Not person-level (one row per query): a Citus reference table.
CREATE TABLE query_cohorts (
    seq      BIGSERIAL PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    actor    TEXT   NOT NULL,
    size     BIGINT NOT NULL,
    members  BYTEA  NOT NULL
);
CREATE INDEX query_cohorts_size ON query_cohorts (size);
