-- Disclosure control by noise and a privacy budget replaces the refusal of
-- cohorts near earlier ones (that refusal was itself an oracle).
DROP TABLE query_cohorts;

-- Every answer released to an analyst, by what was asked of which data:
-- the same question of the same data is answered from here, with the same
-- noise, so asking again cannot average the noise away.
CREATE TABLE releases (
    release_key TEXT    PRIMARY KEY,
    at_ms       INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    cost_nano   INTEGER NOT NULL,
    answer      BLOB    NOT NULL
);

-- Privacy loss (zero-concentrated DP, rho, in billionths) spent per agreement.
CREATE TABLE privacy_spent (
    agreement_id TEXT    PRIMARY KEY,
    spent_nano   INTEGER NOT NULL
);
