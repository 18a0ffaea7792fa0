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
