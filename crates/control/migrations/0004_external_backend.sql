-- Services adopted on an external PostgreSQL server (the `external` provisioner): the server's
-- host; its port is pg_port. NULL: a local cluster run by pgbay on 127.0.0.1:pg_port.
ALTER TABLE services ADD COLUMN external_host TEXT;
