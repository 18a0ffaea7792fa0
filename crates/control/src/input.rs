//! Input types of the control plane: every value that arrives through the API becomes one of these
//! newtypes, which can only hold values within the limits of the Exoscale OpenAPI document. The
//! limits live here and nowhere else; each error names the field and the limit it broke.
//!
//! The API reads request bodies (`api/src/requests`) and builds these from the values it read
//! (strings, integers, lists); none of them knows JSON. `field` is the caller's name for the
//! value, put into the error so that every message names what was refused.

use std::fmt;

/// What a refused input is. A `Given` value was handed to a parser together with the caller's
/// name for it (`ServiceName::parse("name", ..)`); the others are parts of a service that control
/// refuses by its own rules, and the API names them in its own spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A value the caller named.
    Given(String),
    /// The service's plan.
    Plan,
    /// The PostgreSQL major version.
    Version,
    /// The admin user's name, given at creation.
    AdminUsername,
    /// The admin user's password, given at creation.
    AdminPassword,
    /// The service's PostgreSQL settings as a whole.
    PgSettings,
    /// One PostgreSQL setting, by its PostgreSQL name.
    PgSetting(String),
    /// The `work_mem` of the service, in MB.
    WorkMem,
    /// The share of memory given to `shared_buffers`.
    SharedBuffersPercentage,
    /// Synchronous replication of an HA service.
    SynchronousReplication,
    /// The most replication lag a standby may have to be promoted.
    MaxFailoverLag,
    /// A migration into the service.
    Migration,
    /// The point in time of a fork.
    RecoveryTime,
    /// The service a fork is made from.
    ForkSource,
    /// The service a read replica is made of, given at its creation.
    ReplicaSource,
    /// The daily backup time.
    BackupSchedule,
    /// The source service of an integration.
    IntegrationSource,
    /// The destination service of an integration.
    IntegrationDest,
    /// Several of these at once (a configuration that does not fit its plan).
    Several(Vec<Subject>),
    /// No single value: the message says it all (a server's refusal of a statement).
    Whole,
}

impl Subject {
    /// How control words the subject in its own messages (the API words it its own way).
    pub fn describe(&self) -> String {
        match self {
            Subject::Given(f) => format!("field `{f}`"),
            Subject::Plan => "plan".into(),
            Subject::Version => "version".into(),
            Subject::AdminUsername => "admin user name".into(),
            Subject::AdminPassword => "admin password".into(),
            Subject::PgSettings => "PostgreSQL settings".into(),
            Subject::PgSetting(n) => format!("PostgreSQL setting `{n}`"),
            Subject::WorkMem => "work_mem".into(),
            Subject::SharedBuffersPercentage => "shared_buffers share".into(),
            Subject::SynchronousReplication => "synchronous replication".into(),
            Subject::MaxFailoverLag => "failover lag".into(),
            Subject::Migration => "migration".into(),
            Subject::RecoveryTime => "recovery time".into(),
            Subject::ForkSource => "fork source".into(),
            Subject::ReplicaSource => "read replica source".into(),
            Subject::BackupSchedule => "backup schedule".into(),
            Subject::IntegrationSource => "integration source".into(),
            Subject::IntegrationDest => "integration destination".into(),
            Subject::Several(all) => all
                .iter()
                .map(Subject::describe)
                .collect::<Vec<_>>()
                .join(", "),
            Subject::Whole => "input".into(),
        }
    }
}

/// A refused input: what, and why. Becomes a 400 with `{"message": ...}` in the API, which names
/// the subject as its request spells it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    /// What was refused.
    pub subject: Subject,
    /// Why, without naming the subject; `{other}` in it stands for `other`.
    pub detail: String,
    /// Another subject the refusal is about (a field that cannot go with this one).
    pub other: Option<Subject>,
    /// The whole message in control's words; always names the subject.
    pub message: String,
}

impl InputError {
    /// A refusal of a value the caller named `field`: the message starts with the field name.
    pub fn new(field: &str, detail: impl fmt::Display) -> Self {
        let detail = detail.to_string();
        InputError {
            subject: Subject::Given(field.to_string()),
            message: format!("invalid field `{field}`: {detail}"),
            detail,
            other: None,
        }
    }

    /// A refusal of `subject` by control's own rules.
    pub fn of(subject: Subject, detail: impl fmt::Display) -> Self {
        let detail = detail.to_string();
        InputError {
            message: format!("invalid {}: {detail}", subject.describe()),
            subject,
            detail,
            other: None,
        }
    }

    /// A refusal of `subject` because of `other` (which `{other}` in `detail` names).
    pub fn naming(subject: Subject, other: Subject, detail: &str) -> Self {
        let mut e = InputError::of(subject, detail.replace("{other}", &other.describe()));
        e.detail = detail.to_string();
        e.other = Some(other);
        e
    }

    /// A refusal whose message is all there is to say (not about one value).
    pub fn whole(message: impl fmt::Display) -> Self {
        let message = message.to_string();
        InputError {
            subject: Subject::Whole,
            detail: message.clone(),
            message,
            other: None,
        }
    }
}

/// The name PostgreSQL keeps of an identifier: its first 63 bytes (NAMEDATALEN - 1). Two API
/// names with the same stored identifier would be the same PostgreSQL object.
pub fn pg_identifier(s: &str) -> &str {
    if s.len() <= 63 {
        return s;
    }
    let mut end = 63;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn check_len(field: &str, s: &str, min: usize, max: usize) -> Result<(), InputError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(InputError::new(
            field,
            format!("length must be between {min} and {max} characters, got {n}"),
        ));
    }
    if s.contains('\0') {
        return Err(InputError::new(field, "must not contain a NUL character"));
    }
    Ok(())
}

/// The database every service is created with; the service's `uri` and `uri-params` name it.
pub const DEFAULT_DATABASE: &str = "defaultdb";

/// PostgreSQL keeps the first 63 bytes of an identifier (NAMEDATALEN - 1) and silently cuts the
/// rest: a longer name would become another object in PostgreSQL than the one the API created.
pub const IDENTIFIER_MAX_BYTES: usize = 63;

/// `check_len` for names that become PostgreSQL identifiers: the document's character limit, at
/// most 63 bytes in UTF-8, and no control character (a newline in a name forges lines in logs
/// and breaks the admin console's SHOW output, which print names as they are).
fn check_identifier(field: &str, s: &str, min: usize, max: usize) -> Result<(), InputError> {
    check_len(field, s, min, max)?;
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(InputError::new(
            field,
            format!(
                "must not contain control characters, found U+{:04X}",
                u32::from(c)
            ),
        ));
    }
    if s.len() > IDENTIFIER_MAX_BYTES {
        return Err(InputError::new(
            field,
            format!(
                "must be at most {IDENTIFIER_MAX_BYTES} bytes in UTF-8 (PostgreSQL's identifier \
                 limit), got {} bytes",
                s.len()
            ),
        ));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// Consumes the newtype.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// A service name: 1..=63 characters of `[a-z0-9-]`. The document allows 0..63; empty is
    /// refused because the name is a path segment and a directory name, and the charset keeps it
    /// safe as a file name.
    ServiceName
);
string_newtype!(
    /// A database name: 1..=40 characters (dbaas-database-name). Quoted as an identifier in SQL.
    DatabaseName
);
string_newtype!(
    /// A user name: 1..=64 characters (dbaas-user-username). Quoted as an identifier in SQL.
    Username
);
string_newtype!(
    /// A connection pool name: 1..=63 characters (dbaas-pg-pool-name); the pooler's database name.
    PoolName
);
string_newtype!(
    /// A user password: 8..=256 characters (dbaas-user-password).
    Password
);
string_newtype!(
    /// The admin password given at service creation: 8..=256 of `[a-zA-Z0-9-_]`.
    AdminPassword
);
string_newtype!(
    /// The admin user name given at service creation: `^[_A-Za-z0-9][-._A-Za-z0-9]{0,63}$`.
    AdminUsername
);
string_newtype!(
    /// A plan name: `^(hobbyist|startup|business|premium)-[0-9]+$`, at most 128 characters.
    Plan
);

impl ServiceName {
    /// Parses a service name given as `field`.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        check_len(field, s, 1, 63)?;
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(InputError::new(
                field,
                "must contain only lowercase letters, digits and '-'",
            ));
        }
        Ok(ServiceName(s.to_string()))
    }
}

impl DatabaseName {
    /// Names PostgreSQL itself needs; the API may not create or drop them.
    pub const RESERVED: [&'static str; 3] = ["postgres", "template0", "template1"];

    /// Parses a database name given as `field` (1..=40).
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        check_identifier(field, s, 1, 40)?;
        if Self::RESERVED.contains(&s) {
            return Err(InputError::new(
                field,
                format!("`{s}` is a reserved database name"),
            ));
        }
        Ok(DatabaseName(s.to_string()))
    }

    /// Parses a database name from a path (dbaas-pg-database-name allows 1..=63, a lookup only).
    pub fn parse_lookup(field: &str, s: &str) -> Result<Self, InputError> {
        check_len(field, s, 1, 63)?;
        Ok(DatabaseName(s.to_string()))
    }
}

/// Role names a service's users may not take: PostgreSQL's own (`pg_*`, and `public` and `none`,
/// which CREATE ROLE refuses) and pgbay's.
fn check_role_name(field: &str, s: &str) -> Result<(), InputError> {
    if s.starts_with("pg_") {
        return Err(InputError::new(
            field,
            "names starting with `pg_` are reserved",
        ));
    }
    if s == "public" || s == "none" || pgbay_cluster::admin::is_reserved_role(s) {
        return Err(InputError::new(field, format!("`{s}` is reserved")));
    }
    Ok(())
}

impl Username {
    /// Parses a user name given as `field` (1..=64).
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        check_identifier(field, s, 1, 64)?;
        check_role_name(field, s)?;
        Ok(Username(s.to_string()))
    }
}

impl Username {
    /// Parses the `username` of a pool (dbaas-pg-pool-username, 1..=64): a reference to an
    /// existing user, so only the length is checked here.
    pub fn parse_pool(field: &str, s: &str) -> Result<Self, InputError> {
        check_identifier(field, s, 1, 64)?;
        Ok(Username(s.to_string()))
    }

    /// Parses a user name from a path (a lookup: only the length is checked; a name that cannot
    /// exist is then not found).
    pub fn parse_lookup(field: &str, s: &str) -> Result<Self, InputError> {
        check_len(field, s, 1, 64)?;
        Ok(Username(s.to_string()))
    }
}

impl PoolName {
    /// The database name of the pooler's admin console on every service's port: a pool of that
    /// name could never be reached.
    pub const ADMIN_CONSOLE: &'static str = "pgbouncer";

    /// Parses a new pool's name given as `field` (1..=63 characters, at most 63 bytes, not the
    /// admin console's name).
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        check_identifier(field, s, 1, 63)?;
        if s == Self::ADMIN_CONSOLE {
            return Err(InputError::new(
                field,
                format!(
                    "`{}` is reserved: it is the database name of the pooler's admin console",
                    Self::ADMIN_CONSOLE
                ),
            ));
        }
        Ok(PoolName(s.to_string()))
    }

    /// Parses a pool name from a path (a lookup: only the length is checked, so that a pool
    /// stored before a rule existed can still be updated or deleted).
    pub fn parse_lookup(field: &str, s: &str) -> Result<Self, InputError> {
        check_len(field, s, 1, 63)?;
        Ok(PoolName(s.to_string()))
    }
}

impl Password {
    /// Parses a password given as `field` (8..=256).
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        check_len(field, s, 8, 256)?;
        Ok(Password(s.to_string()))
    }

    /// A fresh random password (24 alphanumerics), for users without a given password.
    pub fn generate() -> Self {
        use rand::distributions::{Alphanumeric, DistString};
        Password(Alphanumeric.sample_string(&mut rand::thread_rng(), 24))
    }
}

impl AdminPassword {
    /// Parses the admin password given as `field`.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        check_len(field, s, 8, 256)?;
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(InputError::new(field, "must match ^[a-zA-Z0-9-_]+$"));
        }
        Ok(AdminPassword(s.to_string()))
    }
}

impl AdminUsername {
    /// Parses the admin user name given as `field`.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        check_identifier(field, s, 1, 64)?;
        let mut bytes = s.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !first_ok || !rest_ok {
            return Err(InputError::new(
                field,
                "must match ^[_A-Za-z0-9][-._A-Za-z0-9]{0,63}$",
            ));
        }
        check_role_name(field, s)?;
        Ok(AdminUsername(s.to_string()))
    }

    /// The default admin user, as on Exoscale.
    pub fn default_admin() -> Self {
        AdminUsername("avnadmin".to_string())
    }
}

impl Plan {
    /// Parses a plan name given as `field`.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        check_len(field, s, 1, 128)?;
        let ok = s.split_once('-').is_some_and(|(tier, n)| {
            ["hobbyist", "startup", "business", "premium"].contains(&tier)
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        });
        if !ok {
            return Err(InputError::new(
                field,
                "unknown plan, must match ^(hobbyist|startup|business|premium)-[0-9]+$",
            ));
        }
        Ok(Plan(s.to_string()))
    }
}

/// A locale name for a new database (`lc-collate`, `lc-ctype`): 1..=128 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locale(String);

impl Locale {
    /// Parses a locale given as `field`.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        if s.is_empty() || s.chars().count() > 128 || s.contains('\0') {
            return Err(InputError::new(
                field,
                "length must be between 1 and 128 characters",
            ));
        }
        Ok(Locale(s.to_string()))
    }

    /// The validated value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A pool size: 1..=10000 server connections (dbaas-pg-pool-size), default 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize(u32);

impl PoolSize {
    /// Smallest accepted size.
    pub const MIN: i64 = 1;
    /// Largest accepted size.
    pub const MAX: i64 = 10000;

    /// A size given as `field`, within `MIN..=MAX`.
    pub fn new(field: &str, n: i64) -> Result<Self, InputError> {
        let n = in_range(field, n, Self::MIN, Self::MAX)?;
        Ok(PoolSize(n as u32))
    }

    /// The value.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Rebuilds a size read back from the store (clamped into range).
    pub fn from_stored(n: i64) -> Self {
        PoolSize(n.clamp(Self::MIN, Self::MAX) as u32)
    }
}

impl Default for PoolSize {
    fn default() -> Self {
        PoolSize(10)
    }
}

/// The pooling mode of a pool (enum-pg-pool-mode). Default: transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Server connection held for the client's whole session.
    Session,
    /// Server connection held until the end of each transaction.
    #[default]
    Transaction,
    /// Server connection released after each statement.
    Statement,
}

impl PoolMode {
    /// The document's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }

    /// Reads a stored spelling back (the store's own column, not API input).
    pub fn from_stored(s: &str) -> Option<Self> {
        [
            PoolMode::Session,
            PoolMode::Transaction,
            PoolMode::Statement,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }

    /// Parses a mode given as `field`.
    pub fn parse(field: &str, s: &str) -> Result<Self, InputError> {
        match PoolMode::from_stored(s) {
            Some(m) => Ok(m),
            None => Err(InputError::new(
                field,
                "must be one of \"session\", \"statement\", \"transaction\"",
            )),
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `n` given as `field`, refused outside `min..=max`.
pub fn in_range(field: &str, n: i64, min: i64, max: i64) -> Result<i64, InputError> {
    if n < min || n > max {
        return Err(InputError::new(
            field,
            format!("must be between {min} and {max}, got {n}"),
        ));
    }
    Ok(n)
}

/// The ip-filter of a service: a list of CIDR blocks (a bare address means a single host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpFilter(pub Vec<ipnet::IpNet>);

impl IpFilter {
    /// At most this many entries (a sanity bound; the document sets none).
    pub const MAX_ITEMS: usize = 1024;

    /// Parses the CIDR blocks of an ip-filter given as `field` (a bare address is a host).
    pub fn parse<S: AsRef<str>>(field: &str, items: &[S]) -> Result<Self, InputError> {
        if items.len() > Self::MAX_ITEMS {
            return Err(InputError::new(
                field,
                format!("at most {} entries", Self::MAX_ITEMS),
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let s = item.as_ref();
            let net = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    InputError::new(field, format!("item {i} ({s:?}) is not a CIDR block"))
                })?;
            out.push(net);
        }
        Ok(IpFilter(out))
    }

    /// The default: any IPv4 address (as on Exoscale).
    pub fn allow_all() -> Self {
        IpFilter(vec!["0.0.0.0/0".parse().expect("constant CIDR")])
    }

    /// The document's representation.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|n| n.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_limits() {
        assert!(ServiceName::parse("name", "").is_err());
        assert!(ServiceName::parse("name", "a").is_ok());
        assert!(ServiceName::parse("name", &"a".repeat(63)).is_ok());
        let e = ServiceName::parse("name", &"a".repeat(64)).unwrap_err();
        assert!(
            e.message.contains("`name`") && e.message.contains("63"),
            "{e}"
        );
        assert!(ServiceName::parse("name", "Abc").is_err());
        assert!(ServiceName::parse("name", "a/b").is_err());
        assert!(ServiceName::parse("name", "..").is_err());
    }

    #[test]
    fn database_name_limits() {
        assert!(DatabaseName::parse("database-name", "").is_err());
        assert!(DatabaseName::parse("database-name", &"d".repeat(40)).is_ok());
        assert!(DatabaseName::parse("database-name", &"d".repeat(41)).is_err());
        assert!(DatabaseName::parse("database-name", "x\"; DROP TABLE t; --").is_ok());
        assert!(DatabaseName::parse("database-name", "template1").is_err());
        assert!(DatabaseName::parse("database-name", "a\0b").is_err());
    }

    #[test]
    fn username_limits() {
        assert!(Username::parse("username", "").is_err());
        assert!(Username::parse("username", "u").is_ok());
        assert!(Username::parse("username", &"u".repeat(63)).is_ok());
        // 64 characters are within the document's limit but not PostgreSQL's 63 bytes.
        let e = Username::parse("username", &"u".repeat(64)).unwrap_err();
        assert!(e.message.contains("`username`") && e.message.contains("63 bytes"));
        assert!(Username::parse("username", &"u".repeat(65)).is_err());
        assert!(Username::parse("username", "pg_monitor").is_err());
        for reserved in ["public", "none"] {
            let e = Username::parse("username", reserved).unwrap_err();
            assert!(e.message.contains("username"), "{}", e.message);
            assert!(AdminUsername::parse("admin-username", reserved).is_err());
        }
        assert!(Username::parse("username", "Public").is_ok());
    }

    #[test]
    fn identifiers_are_limited_in_bytes() {
        // 32 two-byte characters: within every character limit, 64 bytes.
        let long = "é".repeat(32);
        for (field, r) in [
            (
                "database-name",
                DatabaseName::parse("database-name", &long).err(),
            ),
            ("username", Username::parse("username", &long).err()),
            ("username", Username::parse_pool("username", &long).err()),
            ("name", PoolName::parse("name", &long).err()),
        ] {
            let e = r.expect("64 bytes refused");
            assert!(
                e.message.contains(&format!("`{field}`")) && e.message.contains("63 bytes"),
                "{}",
                e.message
            );
        }
        let fits = format!("d{}", "é".repeat(31));
        assert_eq!(fits.len(), 63);
        assert!(DatabaseName::parse("database-name", &fits).is_ok());
        assert!(PoolName::parse("name", &fits).is_ok());
    }

    #[test]
    fn pool_name_limits() {
        assert!(PoolName::parse("name", "").is_err());
        assert!(PoolName::parse("name", &"p".repeat(63)).is_ok());
        let e = PoolName::parse("name", &"p".repeat(64)).unwrap_err();
        assert!(e.message.contains("`name`"), "{e}");
    }

    #[test]
    fn names_refuse_control_characters() {
        for bad in [
            "a\nb",
            "a\rb",
            "tab\there",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            for (field, r) in [
                (
                    "database-name",
                    DatabaseName::parse("database-name", bad).err(),
                ),
                ("username", Username::parse("username", bad).err()),
                ("username", Username::parse_pool("username", bad).err()),
                ("name", PoolName::parse("name", bad).err()),
            ] {
                let e = r.unwrap_or_else(|| panic!("{bad:?} accepted as {field}"));
                assert!(
                    e.message.contains(&format!("`{field}`"))
                        && e.message.contains("control characters"),
                    "{}",
                    e.message
                );
            }
        }
        // Quotes, spaces and non-ASCII letters stay allowed (quoted identifiers).
        assert!(PoolName::parse("name", "my pool \"é\"").is_ok());
    }

    #[test]
    fn the_admin_console_name_is_not_a_pool_name() {
        let e = PoolName::parse("name", "pgbouncer").unwrap_err();
        assert!(
            e.message.contains("`name`") && e.message.contains("pgbouncer"),
            "{e}"
        );
        assert!(PoolName::parse("name", "pgbouncer2").is_ok());
        // A lookup still finds a pool stored before the rule.
        assert!(PoolName::parse_lookup("connection-pool-name", "pgbouncer").is_ok());
    }

    #[test]
    fn pool_size_limits() {
        assert!(PoolSize::new("size", 0).is_err());
        assert_eq!(PoolSize::new("size", 1).unwrap().get(), 1);
        assert_eq!(PoolSize::new("size", 10000).unwrap().get(), 10000);
        let e = PoolSize::new("size", 10001).unwrap_err();
        assert!(
            e.message.contains("`size`") && e.message.contains("10000"),
            "{e}"
        );
        assert_eq!(PoolSize::default().get(), 10);
    }

    #[test]
    fn pool_mode_values() {
        assert_eq!(
            PoolMode::parse("mode", "session").unwrap(),
            PoolMode::Session
        );
        assert_eq!(
            PoolMode::parse("mode", "statement").unwrap(),
            PoolMode::Statement
        );
        assert_eq!(
            PoolMode::parse("mode", "transaction").unwrap(),
            PoolMode::Transaction
        );
        assert!(PoolMode::parse("mode", "Session").is_err());
        assert!(PoolMode::parse("mode", "").is_err());
        assert_eq!(PoolMode::default(), PoolMode::Transaction);
    }

    #[test]
    fn password_limits() {
        assert!(Password::parse("password", &"p".repeat(7)).is_err());
        assert!(Password::parse("password", &"p".repeat(8)).is_ok());
        assert!(Password::parse("password", &"p".repeat(256)).is_ok());
        assert!(Password::parse("password", &"p".repeat(257)).is_err());
        assert!(AdminPassword::parse("admin-password", "abc-DEF_123").is_ok());
        assert!(AdminPassword::parse("admin-password", "abc DEF 123").is_err());
        assert_eq!(Password::generate().as_str().len(), 24);
    }

    #[test]
    fn admin_username_pattern() {
        assert!(AdminUsername::parse("admin-username", "_a.b-c").is_ok());
        assert!(AdminUsername::parse("admin-username", "-abc").is_err());
        assert!(AdminUsername::parse("admin-username", &"a".repeat(63)).is_ok());
        assert!(AdminUsername::parse("admin-username", &"a".repeat(64)).is_err());
        assert!(AdminUsername::parse("admin-username", &"a".repeat(65)).is_err());
    }

    #[test]
    fn plan_names() {
        for ok in ["hobbyist-2", "startup-4", "business-16", "premium-225"] {
            assert!(Plan::parse("plan", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "hobbyist",
            "hobbyist-",
            "gold-2",
            "hobbyist-2x",
            "startup--1",
        ] {
            let e = Plan::parse("plan", bad).unwrap_err();
            assert!(e.message.contains("`plan`"), "{e}");
        }
    }

    #[test]
    fn ip_filter_parsing() {
        let f = IpFilter::parse("ip-filter", &["10.0.0.0/8", "192.168.1.1", "::/0"]).unwrap();
        assert_eq!(f.to_strings(), ["10.0.0.0/8", "192.168.1.1/32", "::/0"]);
        let e = IpFilter::parse("ip-filter", &["10.0.0.0/33"]).unwrap_err();
        assert!(e.message.contains("item 0"), "{e}");
    }
}
