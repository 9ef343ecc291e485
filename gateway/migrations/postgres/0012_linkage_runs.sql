-- Linkage runs saved per parameter version: a gateway keeps the entities
-- and links of its last run in memory, and trusts them only while this
-- count is the one its own run left (another gateway's run, or a full
-- re-link, moves it on).
ALTER TABLE linkage_models ADD COLUMN runs BIGINT NOT NULL DEFAULT 0;
