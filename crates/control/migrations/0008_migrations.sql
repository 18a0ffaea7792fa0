-- Migration of a server that runs elsewhere into a service (issue 19): the source as given at
-- create (its password sealed like user passwords), and the migration's status as
-- GET /dbaas-migration-status shows it (details: a JSON array, one object per database).
CREATE TABLE migrations (
    service TEXT PRIMARY KEY NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    method TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    username TEXT,
    password_enc TEXT,
    dbname TEXT,
    ssl INTEGER NOT NULL,
    ignore_dbs TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    details TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Migration checks (POST /dbaas-task-migration-check): the document's dbaas-task, kept so that
-- GET /dbaas-task/{service}/{id} reads it. result: what was found, in words.
CREATE TABLE migration_tasks (
    id TEXT PRIMARY KEY NOT NULL,
    service TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    success INTEGER NOT NULL,
    result TEXT NOT NULL,
    created_at TEXT NOT NULL
);
