-- How fuzzy linkage is doing, for every gateway of a deployment: when a run
-- last succeeded, and how many have failed since. Readiness turns degraded
-- after so many failures in a row; answers say how old their linkage is.
-- Not person-level: a Citus reference table.
CREATE TABLE linkage_status (
    id              INTEGER PRIMARY KEY,
    last_success_at BIGINT,
    failures        BIGINT NOT NULL
);
INSERT INTO linkage_status (id, last_success_at, failures) VALUES (1, NULL, 0);
