-- Cohorts released to analysts, so that differencing can be refused: a new
-- cohort that differs from an earlier one by a handful of people is not
-- answered. Members are the people's 64-bit keys, sorted, little-endian.
CREATE TABLE query_cohorts (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    actor    TEXT    NOT NULL,
    size     INTEGER NOT NULL,
    members  BLOB    NOT NULL
);
CREATE INDEX query_cohorts_size ON query_cohorts (size);
