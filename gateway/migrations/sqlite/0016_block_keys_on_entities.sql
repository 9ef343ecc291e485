-- An entity's blocking keys move onto its row in linkage_entities, packed
-- in one column (each present key as its rule's number, one byte, then its
-- 16 bytes), and linkage_blocks goes. It was the largest table (a row per
-- entity and rule, each repeating the entity's key as hex text) and one
-- more B-tree insert per key stored (docs/scaling.md).
ALTER TABLE linkage_entities ADD COLUMN block_keys BLOB NOT NULL DEFAULT x'';
UPDATE linkage_entities SET block_keys = coalesce((
    SELECT unhex(group_concat(printf('%02x', b.rule) || b.block_key, '' ORDER BY b.rule))
    FROM linkage_blocks b
    WHERE b.person_id = linkage_entities.person_id
      AND b.organisation = linkage_entities.organisation
      AND b.local_pseudonym = linkage_entities.local_pseudonym
), x'');
DROP TABLE linkage_blocks;
