-- A counter that moves whenever what analytics reads changes (a batch
-- stored, data deleted, people linked), so a gateway can keep the linked
-- population in memory and reload it only when it has changed.
CREATE TABLE data_generation (
    id  INTEGER PRIMARY KEY,
    n   BIGINT  NOT NULL
);
INSERT INTO data_generation (id, n) VALUES (1, 0);
