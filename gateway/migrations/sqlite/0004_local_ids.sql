-- An organisation's records of one local id are one person, whichever of its
-- datasets they came in (one with the NHS number, one without): linkage finds
-- an entity's twins by organisation and local id.
CREATE INDEX linkage_entities_local ON linkage_entities (organisation, local_pseudonym);
