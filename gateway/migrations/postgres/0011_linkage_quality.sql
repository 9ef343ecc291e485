-- What the fitted model expects of the links between each two
-- organisations (JSON: links, expected wrong, expected missed), written by
-- each full linkage run beside its model; `joinery gateway linkage-report`
-- and the gateway's metrics read it.
ALTER TABLE linkage_models ADD COLUMN quality TEXT;
