-- Runs unchanged on SQLite and MariaDB: keep to types and statements both accept.
-- Investigations (proposals) read from the facility's LDAP directory. `paths` is a JSON array of
-- absolute data paths. A row whose entry left the directory keeps its data and gets `gone_at`,
-- so an incomplete answer from LDAP never deletes what running instances mount.
-- Times are milliseconds since the Unix epoch.
CREATE TABLE investigations (
    proposal VARCHAR(255) NOT NULL PRIMARY KEY,
    paths TEXT NOT NULL,
    group_id BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    gone_at BIGINT NULL,
    updated_at BIGINT NOT NULL
);

-- One row per LDAP sync run. `result` is running, succeeded or failed.
CREATE TABLE ldap_sync_runs (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    origin VARCHAR(16) NOT NULL,
    worker VARCHAR(255) NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT NULL,
    result VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    entries BIGINT NOT NULL,
    pages BIGINT NOT NULL,
    synced BIGINT NOT NULL,
    added BIGINT NOT NULL,
    changed BIGINT NOT NULL,
    gone BIGINT NOT NULL,
    skipped BIGINT NOT NULL,
    skipped_paths BIGINT NOT NULL,
    error TEXT NULL
);

CREATE INDEX ldap_sync_runs_started_at ON ldap_sync_runs (started_at);

-- When the next scheduled sync is due. Workers take a run by moving `due_at` forward with one
-- UPDATE, so only one of several workers syncs per interval.
CREATE TABLE schedules (
    name VARCHAR(63) NOT NULL PRIMARY KEY,
    due_at BIGINT NOT NULL
);

INSERT INTO schedules (name, due_at) VALUES ('ldap-sync', 0);
