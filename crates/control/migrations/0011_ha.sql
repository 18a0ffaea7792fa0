-- High availability (issue 17): a business (2 nodes) or premium (3 nodes) service runs one
-- Patroni member per node. `ha_services` keeps the replication and rewind roles' passwords
-- (sealed like user passwords) and the failover settings; `ha_members` each member's PostgreSQL
-- and REST ports (the service's own pg_port is then pgbay's forwarder to the current primary).
CREATE TABLE ha_services (
    service TEXT PRIMARY KEY NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    replication_password_enc TEXT NOT NULL,
    rewind_password_enc TEXT NOT NULL,
    synchronous INTEGER NOT NULL,
    max_lag_seconds INTEGER
);
CREATE TABLE ha_members (
    service TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    pg_port INTEGER NOT NULL,
    rest_port INTEGER NOT NULL,
    PRIMARY KEY (service, idx)
);
