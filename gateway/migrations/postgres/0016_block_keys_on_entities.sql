-- An entity's blocking keys move onto its row in linkage_entities, packed
-- in one column (each present key as its rule's number, one byte, then its
-- 16 bytes), and linkage_blocks goes. It was the largest table (a row per
-- entity and rule, each repeating the entity's key as hex text) and one
-- more B-tree insert per key stored (docs/scaling.md).
ALTER TABLE linkage_entities ADD COLUMN block_keys BYTEA NOT NULL DEFAULT '\x';
UPDATE linkage_entities SET block_keys = b.packed
FROM (
    SELECT person_id, organisation, local_pseudonym,
           string_agg(set_byte('\x00'::bytea, 0, CAST(rule AS integer)) || decode(block_key, 'hex'),
                      ''::bytea ORDER BY rule) AS packed
    FROM linkage_blocks
    GROUP BY person_id, organisation, local_pseudonym
) AS b
WHERE linkage_entities.person_id = b.person_id
  AND linkage_entities.organisation = b.organisation
  AND linkage_entities.local_pseudonym = b.local_pseudonym;
DROP TABLE linkage_blocks;
