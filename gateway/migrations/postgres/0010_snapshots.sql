-- Full snapshots: a record sent as part of a snapshot carries its id; once
-- the agent says the whole snapshot was delivered, the organisation's
-- records of the dataset from earlier snapshots are retired.
ALTER TABLE records ADD COLUMN snapshot TEXT;
CREATE INDEX records_by_snapshot ON records (organisation, dataset, snapshot);
