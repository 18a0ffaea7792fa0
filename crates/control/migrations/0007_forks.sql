-- Services made from another service's backups (issue 18): the source and, for a point-in-time
-- recovery, the target time ('YYYY-MM-DD HH:MM:SS+00'; NULL: the latest recoverable state).
-- Read by provisioning, which restores instead of running initdb.
CREATE TABLE service_forks (
    service TEXT PRIMARY KEY NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    source TEXT NOT NULL,
    target_time TEXT,
    -- pgBackRest's label of the backup to restore from (the newest that ended by target_time).
    backup_set TEXT
);
