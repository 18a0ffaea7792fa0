-- pgbay's internal superuser of a service's local cluster (issue 15): its password, sealed like
-- user passwords. No row: an external server, or a cluster made by an older pgbay, whose admin is
-- its bootstrap superuser and stays pgbay's way in.
CREATE TABLE service_internal (
    service TEXT PRIMARY KEY NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    password_enc TEXT NOT NULL
);
