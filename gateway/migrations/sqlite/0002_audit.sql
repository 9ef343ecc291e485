-- The append-only, hash-chained audit log (SQLite). Not person-level: it
-- holds no person id and no identifier, only who did what under which
-- agreement, with counts and digests.

CREATE TABLE audit_log (
    seq               INTEGER PRIMARY KEY,
    at_ms             INTEGER NOT NULL,
    kind              TEXT    NOT NULL,
    actor             TEXT    NOT NULL,
    agreement_id      TEXT    NOT NULL,
    agreement_version INTEGER NOT NULL,
    detail            TEXT    NOT NULL,
    prev_hash         TEXT    NOT NULL,
    hash              TEXT    NOT NULL
);

-- The chain head: one row, locked by every append so entries are numbered
-- and chained in commit order, even with several gateways on one database.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY,
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Signed statements of the chain head, which agencies can fetch and keep.
CREATE TABLE audit_checkpoints (
    seq        INTEGER PRIMARY KEY,
    hash       TEXT    NOT NULL,
    at_ms      INTEGER NOT NULL,
    public_key TEXT    NOT NULL,
    signature  TEXT    NOT NULL
);
