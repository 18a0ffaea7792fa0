-- pgbay control-plane state. One row per object; every API mutation is one transaction.
CREATE TABLE services (
    name TEXT PRIMARY KEY NOT NULL,
    id TEXT NOT NULL UNIQUE,
    plan TEXT NOT NULL,
    state TEXT NOT NULL,
    version TEXT NOT NULL,
    admin_username TEXT NOT NULL,
    pg_port INTEGER NOT NULL UNIQUE,
    pooler_port INTEGER NOT NULL UNIQUE,
    pgbouncer_settings TEXT NOT NULL,
    ip_filter TEXT NOT NULL,
    termination_protection INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

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
    password_overridden INTEGER NOT NULL,
    allow_replication INTEGER NOT NULL,
    PRIMARY KEY (service, name)
);

CREATE TABLE pools (
    service TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    database TEXT NOT NULL,
    username TEXT NOT NULL,
    mode TEXT NOT NULL,
    size INTEGER NOT NULL,
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
