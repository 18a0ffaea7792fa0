-- A password being set: written before pgbay changes it in PostgreSQL, cleared when the change
-- commits. If pgbay dies in between, PostgreSQL may already have it; for the admin user, whose
-- password pgbay itself logs in with, start-up recovery uses it to get back in and restore the
-- committed password.
ALTER TABLE users ADD COLUMN pending_password_enc TEXT;
