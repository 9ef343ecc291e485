-- Retention and snapshot replacement deleted records and events but kept
-- the linkage encodings, blocking keys and spine places of the records
-- they deleted. Those go now (as every deletion now takes them with it:
-- storage::linkage::forget_unheld), the entities linked into the same
-- people as them are linked again, and the linkage run count moves on so
-- a running gateway reads its entities afresh.
UPDATE linkage_entities SET linked = 0
WHERE person_id IN (
    SELECT s2.person_id FROM person_spine s2 WHERE s2.spine_id IN (
        SELECT COALESCE(s.spine_id, e.person_id) FROM linkage_entities e
        LEFT JOIN person_spine s ON s.person_id = e.person_id
        WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.person_id = e.person_id
            AND r.organisation = e.organisation AND r.local_pseudonym = e.local_pseudonym)
    )
);
DELETE FROM linkage_entities
WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.person_id = linkage_entities.person_id
    AND r.organisation = linkage_entities.organisation
    AND r.local_pseudonym = linkage_entities.local_pseudonym);
DELETE FROM person_spine
WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.person_id = person_spine.person_id);
UPDATE linkage_models SET runs = runs + 1;
