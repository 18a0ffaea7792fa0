-- A service's daily backup time (issue 18) when one was asked for (`backup-schedule`); without a
-- row pgbay picks one from the service's id.
CREATE TABLE backup_schedules (
    service TEXT PRIMARY KEY NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    backup_hour BIGINT NOT NULL,
    backup_minute BIGINT NOT NULL
);
