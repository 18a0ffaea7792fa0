-- PostgreSQL settings of a service (issue 10): the document's `pg-settings` object (groups nested),
-- and the service-level `work-mem` (MB) and `shared-buffers-percentage` overrides (NULL: derived
-- from the plan).
ALTER TABLE services ADD COLUMN pg_settings TEXT NOT NULL DEFAULT '{}';
ALTER TABLE services ADD COLUMN work_mem INTEGER;
ALTER TABLE services ADD COLUMN shared_buffers_percentage INTEGER;
