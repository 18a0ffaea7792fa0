-- Data migrated into a service from an existing server (issue 19): where from (the password
-- sealed like user passwords), and how far it got. `details` is a JSON array of per-database
-- {dbname, method, status, error}.
CREATE TABLE service_migrations (
    service TEXT PRIMARY KEY NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    host TEXT NOT NULL,
    port BIGINT NOT NULL,
    username TEXT NOT NULL,
    password_enc TEXT NOT NULL,
    dbname TEXT NOT NULL,
    ssl BIGINT NOT NULL,
    ignore_dbs TEXT NOT NULL,
    method TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    details TEXT NOT NULL
);
