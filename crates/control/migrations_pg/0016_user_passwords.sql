-- Every password each user has had, from when (issue 18): a fork at a time T gets the users of T
-- with the passwords they had then, as its restored cluster has them.
CREATE TABLE user_passwords (
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    password_enc TEXT NOT NULL,
    since TEXT NOT NULL
);
CREATE INDEX user_passwords_by_user ON user_passwords (service, name, since);
