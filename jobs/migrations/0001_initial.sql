-- Runs unchanged on SQLite and MariaDB: keep to types and statements both accept.
-- Catalogue entries keep their full YAML entry as JSON in `spec`; `position` keeps the file's order.
CREATE TABLE flavours (
    id VARCHAR(63) NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL,
    spec TEXT NOT NULL
);

CREATE TABLE images (
    id VARCHAR(63) NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL,
    spec TEXT NOT NULL
);

CREATE TABLE security_groups (
    name VARCHAR(255) NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL,
    spec TEXT NOT NULL
);

-- Times are milliseconds since the Unix epoch.
CREATE TABLE instances (
    id VARCHAR(63) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    image_id VARCHAR(63) NOT NULL,
    flavour_id VARCHAR(63) NOT NULL,
    security_groups TEXT NOT NULL,
    metadata TEXT NOT NULL,
    boot_command TEXT NULL,
    desired VARCHAR(16) NOT NULL,
    action VARCHAR(16) NOT NULL,
    action_at BIGINT NOT NULL,
    action_seq BIGINT NOT NULL,
    applied_seq BIGINT NOT NULL,
    enqueued_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    first_ready_at BIGINT NULL,
    deleted_at BIGINT NULL,
    fault_message TEXT NULL,
    fault_details TEXT NULL,
    fault_at BIGINT NULL,
    lease_owner VARCHAR(255) NULL,
    lease_until BIGINT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX instances_name ON instances (name);
CREATE INDEX instances_updated_at ON instances (updated_at);

-- One row per job enqueued, for operators and for the drift sweep.
CREATE TABLE jobs (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    instance_id VARCHAR(63) NOT NULL,
    action VARCHAR(16) NOT NULL,
    seq BIGINT NOT NULL,
    status VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    worker VARCHAR(255) NULL,
    error TEXT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX jobs_instance ON jobs (instance_id, created_at);
