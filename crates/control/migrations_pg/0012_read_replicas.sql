-- Read replicas (issue 19): `service` is a physical streaming replica of `source` (the
-- integration `id` of type read_replica). It replicates as a role of its own on the source
-- (`pgbay_rr_` and the first 12 hex digits of the id) whose password is sealed here.
CREATE TABLE read_replicas (
    id TEXT PRIMARY KEY NOT NULL,
    service TEXT NOT NULL UNIQUE REFERENCES services(name) ON DELETE CASCADE,
    source TEXT NOT NULL,
    replication_password_enc TEXT NOT NULL,
    created_at TEXT NOT NULL
);
