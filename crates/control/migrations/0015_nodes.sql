-- Many nodes on one store (issue 16).
-- Every `pgbay serve` registers as a node and heartbeats (unix milliseconds of its own clock);
-- one silent for longer than --node-timeout is dead. `instance` names the machine and data dir,
-- so that a second process claiming a live node's name elsewhere is refused.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY NOT NULL,
    public_host TEXT NOT NULL,
    api_url TEXT NOT NULL,
    instance TEXT NOT NULL,
    started_at TEXT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    applied_generation BIGINT NOT NULL DEFAULT 0
);
-- The node a service is placed on (its cluster runs there). NULL: a service of a store written
-- before nodes existed, claimed by the first node that starts.
ALTER TABLE services ADD COLUMN node TEXT;
-- What every node must share: the wrapped secret key, the CA, the API key pair.
CREATE TABLE shared_secrets (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
-- The desired state's generation, one counter for every node: bumped by each change.
CREATE TABLE generation (
    id BIGINT PRIMARY KEY NOT NULL,
    value BIGINT NOT NULL
);
INSERT INTO generation (id, value) VALUES (1, 0);
