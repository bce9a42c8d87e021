-- The name of an instance whose deletion has not been requested, NULL otherwise. Its unique
-- index makes a create that races another create of the same name fail instead of making a
-- second instance; both backends allow many NULLs in a unique index.
ALTER TABLE instances ADD COLUMN live_name VARCHAR(255) NULL;
UPDATE instances SET live_name = name WHERE deleted_at IS NULL AND desired <> 'deleted';
CREATE UNIQUE INDEX instances_live_name ON instances (live_name);
