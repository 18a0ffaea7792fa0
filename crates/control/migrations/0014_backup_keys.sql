-- The key that encrypts a service's pgBackRest repository (issue 18: repo1-cipher-type
-- aes-256-cbc), sealed like passwords; written only into the service's 0600 pgbackrest.conf.
-- Services made before this migration have none: their repositories stay unencrypted.
CREATE TABLE backup_keys (
    service TEXT PRIMARY KEY NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    cipher_pass_enc TEXT NOT NULL
);
