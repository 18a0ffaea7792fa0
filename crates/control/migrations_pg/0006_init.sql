-- pgbay control-plane state in PostgreSQL: the same tables as migrations/ (SQLite) 0001-0006
-- build, in one step. Numbered 0006 so that later migrations share their number with their
-- SQLite twin. Integers are BIGINT (the store reads and binds 64-bit integers); booleans stay
-- 0/1 integers, as in SQLite.
CREATE TABLE services (
    name TEXT PRIMARY KEY NOT NULL,
    id TEXT NOT NULL UNIQUE,
    plan TEXT NOT NULL,
    state TEXT NOT NULL,
    version TEXT NOT NULL,
    admin_username TEXT NOT NULL,
    pg_port BIGINT NOT NULL UNIQUE,
    pooler_port BIGINT NOT NULL UNIQUE,
    pgbouncer_settings TEXT NOT NULL,
    ip_filter TEXT NOT NULL,
    termination_protection BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    external_host TEXT,
    pg_settings TEXT NOT NULL DEFAULT '{}',
    work_mem BIGINT,
    shared_buffers_percentage BIGINT
);

-- A port belongs to one service and one role (see migrations/0002_distinct_ports.sql).
CREATE FUNCTION services_ports_distinct() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.pg_port = NEW.pooler_port OR EXISTS (
        SELECT 1 FROM services
        WHERE pg_port IN (NEW.pg_port, NEW.pooler_port)
           OR pooler_port IN (NEW.pg_port, NEW.pooler_port)) THEN
        RAISE EXCEPTION 'port already allocated to a service' USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER services_ports_distinct BEFORE INSERT ON services
    FOR EACH ROW EXECUTE FUNCTION services_ports_distinct();

CREATE TABLE databases (
    service TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    PRIMARY KEY (service, name)
);

CREATE TABLE users (
    service TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    password_enc TEXT NOT NULL,
    password_overridden BIGINT NOT NULL,
    allow_replication BIGINT NOT NULL,
    pending_password_enc TEXT,
    PRIMARY KEY (service, name)
);

CREATE TABLE pools (
    service TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    database TEXT NOT NULL,
    username TEXT NOT NULL,
    mode TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (service, name),
    FOREIGN KEY (service, database) REFERENCES databases(service, name),
    FOREIGN KEY (service, username) REFERENCES users(service, name)
);

CREATE TABLE operations (
    id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    message TEXT NOT NULL,
    ref_id TEXT NOT NULL,
    ref_link TEXT NOT NULL,
    ref_command TEXT NOT NULL,
    kind TEXT NOT NULL,
    service TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX operations_pending ON operations(state) WHERE state = 'pending';

CREATE TABLE service_internal (
    service TEXT PRIMARY KEY NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    password_enc TEXT NOT NULL
);
