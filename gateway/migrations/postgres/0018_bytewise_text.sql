-- Every text column compares byte by byte (COLLATE "C"), as SQLite's do.
-- The keys are hex pseudonyms, codes and ids, for which a language's
-- collation means nothing but costs a locale-aware comparison (strcoll) at
-- every B-tree step of every row stored; under a database created with a
-- language's collation (en_GB.UTF-8, say) that was a large share of what
-- storing a batch cost. Both backends now also order text the same way.
-- A column's collation is all that changes (no table is rewritten), but
-- each index on a changed column is built again.
ALTER TABLE batches
    ALTER COLUMN organisation TYPE TEXT COLLATE "C",
    ALTER COLUMN batch_id TYPE TEXT COLLATE "C",
    ALTER COLUMN dataset TYPE TEXT COLLATE "C",
    ALTER COLUMN agreement_id TYPE TEXT COLLATE "C",
    ALTER COLUMN snapshot TYPE TEXT COLLATE "C";
ALTER TABLE records
    ALTER COLUMN person_id TYPE TEXT COLLATE "C",
    ALTER COLUMN organisation TYPE TEXT COLLATE "C",
    ALTER COLUMN batch_id TYPE TEXT COLLATE "C",
    ALTER COLUMN dataset TYPE TEXT COLLATE "C",
    ALTER COLUMN local_pseudonym TYPE TEXT COLLATE "C",
    ALTER COLUMN nhs_pseudonym TYPE TEXT COLLATE "C",
    ALTER COLUMN link_method TYPE TEXT COLLATE "C",
    ALTER COLUMN sex TYPE TEXT COLLATE "C",
    ALTER COLUMN birth_month TYPE TEXT COLLATE "C",
    ALTER COLUMN postcode_district TYPE TEXT COLLATE "C",
    ALTER COLUMN attributes TYPE TEXT COLLATE "C",
    ALTER COLUMN record_key TYPE TEXT COLLATE "C";
ALTER TABLE events
    ALTER COLUMN person_id TYPE TEXT COLLATE "C",
    ALTER COLUMN organisation TYPE TEXT COLLATE "C",
    ALTER COLUMN batch_id TYPE TEXT COLLATE "C",
    ALTER COLUMN event_type TYPE TEXT COLLATE "C",
    ALTER COLUMN event_date TYPE TEXT COLLATE "C",
    ALTER COLUMN attributes TYPE TEXT COLLATE "C";
ALTER TABLE person_spine
    ALTER COLUMN person_id TYPE TEXT COLLATE "C",
    ALTER COLUMN spine_id TYPE TEXT COLLATE "C",
    ALTER COLUMN method TYPE TEXT COLLATE "C";
ALTER TABLE linkage_entities
    ALTER COLUMN person_id TYPE TEXT COLLATE "C",
    ALTER COLUMN organisation TYPE TEXT COLLATE "C",
    ALTER COLUMN local_pseudonym TYPE TEXT COLLATE "C",
    ALTER COLUMN nhs_pseudonym TYPE TEXT COLLATE "C";
ALTER TABLE population_changes
    ALTER COLUMN person_id TYPE TEXT COLLATE "C";
ALTER TABLE audit_log
    ALTER COLUMN kind TYPE TEXT COLLATE "C",
    ALTER COLUMN actor TYPE TEXT COLLATE "C",
    ALTER COLUMN agreement_id TYPE TEXT COLLATE "C",
    ALTER COLUMN detail TYPE TEXT COLLATE "C",
    ALTER COLUMN prev_hash TYPE TEXT COLLATE "C",
    ALTER COLUMN hash TYPE TEXT COLLATE "C";
ALTER TABLE audit_head
    ALTER COLUMN hash TYPE TEXT COLLATE "C";
ALTER TABLE audit_checkpoints
    ALTER COLUMN hash TYPE TEXT COLLATE "C",
    ALTER COLUMN public_key TYPE TEXT COLLATE "C",
    ALTER COLUMN signature TYPE TEXT COLLATE "C";
ALTER TABLE linkage_lease
    ALTER COLUMN holder TYPE TEXT COLLATE "C";
ALTER TABLE linkage_models
    ALTER COLUMN model TYPE TEXT COLLATE "C",
    ALTER COLUMN quality TYPE TEXT COLLATE "C";
ALTER TABLE privacy_spent
    ALTER COLUMN agreement_id TYPE TEXT COLLATE "C";
ALTER TABLE releases
    ALTER COLUMN actor TYPE TEXT COLLATE "C",
    ALTER COLUMN release_key TYPE TEXT COLLATE "C";
