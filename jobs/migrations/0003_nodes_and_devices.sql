-- Node an instance is pinned to by its last migration; NULL lets the scheduler choose.
ALTER TABLE instances ADD COLUMN node VARCHAR(253) NULL;

CREATE TABLE devices (
    resource VARCHAR(253) NOT NULL PRIMARY KEY,
    position INTEGER NOT NULL,
    spec TEXT NOT NULL
);
