-- Indexes no query uses: each cost one more B-tree insert per row stored.
-- records (organisation, dataset) is a prefix of records_by_snapshot;
-- analytics reads events by person, never by type; linkage reads blocking
-- keys and entities with their entity (primary keys), not by key or local id.
DROP INDEX records_by_organisation;
DROP INDEX events_by_type;
DROP INDEX linkage_blocks_key;
DROP INDEX linkage_entities_local;
