//! The service's pgbouncer settings (json-schema-pgbouncer of the Exoscale document), typed. The
//! pooler reads them from the desired state; the API reads and writes them in the document's
//! shape (`api/src/requests/pgbouncer.rs`), the store in its own column (serde). `None` means
//! "not set", i.e. the pooler's default applies.
//!
//! [`SETTINGS`] is the one table of the settings: name, type with its bounds, default, example,
//! description and how the pooler applies it. The checks here, the API's parsing and the schema it
//! serves are all read from it, so a limit cannot differ between what is accepted and what is
//! advertised.

use serde::{Deserialize, Serialize};

use crate::input::{in_range, InputError, PoolMode};

/// A startup parameter that the pooler may be told to ignore (items enum of the document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoredStartupParameter {
    /// `extra_float_digits`
    ExtraFloatDigits,
    /// `search_path`
    SearchPath,
}

impl IgnoredStartupParameter {
    /// Every parameter, in the document's order.
    pub const ALL: [IgnoredStartupParameter; 2] = [
        IgnoredStartupParameter::ExtraFloatDigits,
        IgnoredStartupParameter::SearchPath,
    ];

    /// The document's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoredStartupParameter::ExtraFloatDigits => "extra_float_digits",
            IgnoredStartupParameter::SearchPath => "search_path",
        }
    }
}

/// Service-wide pooler settings. Each field is `None` when the user has not set it. The store
/// keeps them as serde writes them (only the fields that are set).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgbouncerSettings {
    /// 0..=10000
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_pool_size: Option<u32>,
    /// up to 32 items
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_startup_parameters: Option<Vec<IgnoredStartupParameter>>,
    /// 60..=86400 seconds
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_lifetime: Option<u32>,
    /// pool mode of automatically created pools
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autodb_pool_mode: Option<PoolMode>,
    /// 0..=86400 seconds, 0 disables
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_idle_timeout: Option<u32>,
    /// 0..=2147483647, 0 unlimited
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autodb_max_db_connections: Option<u32>,
    /// 0..=3000, 0 disables prepared statement tracking
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prepared_statements: Option<u32>,
    /// run DISCARD ALL in every pooling mode
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_reset_query_always: Option<bool>,
    /// 0..=10000
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autodb_pool_size: Option<u32>,
    /// 0..=86400 seconds
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autodb_idle_timeout: Option<u32>,
}

/// The type of a setting, with its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingType {
    /// An integer within `min..=max`.
    Integer {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A boolean.
    Boolean,
    /// One of the pool modes' spellings.
    PoolMode,
    /// An array of at most `max_items` [`IgnoredStartupParameter`] spellings.
    StartupParameters {
        /// Most items accepted.
        max_items: usize,
    },
}

/// The value of one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingValue {
    /// [`SettingType::Integer`]
    Integer(u32),
    /// [`SettingType::Boolean`]
    Boolean(bool),
    /// [`SettingType::PoolMode`]
    PoolMode(PoolMode),
    /// [`SettingType::StartupParameters`]
    StartupParameters(Vec<IgnoredStartupParameter>),
}

/// One row of [`SETTINGS`].
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The key in `pgbouncer-settings`.
    pub name: &'static str,
    /// Type and bounds.
    pub kind: SettingType,
    /// The value that applies when unset, as the document writes it (`None`: it names none).
    pub default: Option<&'static str>,
    /// An example value, as the document writes it.
    pub example: &'static str,
    /// The document's description (its `title`).
    pub title: &'static str,
    /// How the pooler applies it (the binary's translation follows this).
    pub pooler: &'static str,
    get: fn(&PgbouncerSettings) -> Option<SettingValue>,
    set: fn(&mut PgbouncerSettings, Option<SettingValue>),
}

/// Accessors of a field of [`PgbouncerSettings`] as a [`SettingValue`] variant.
macro_rules! field {
    ($field:ident, $variant:ident) => {
        (
            |s: &PgbouncerSettings| s.$field.clone().map(SettingValue::$variant),
            |s: &mut PgbouncerSettings, v: Option<SettingValue>| {
                s.$field = match v {
                    Some(SettingValue::$variant(x)) => Some(x),
                    _ => None,
                }
            },
        )
    };
}

macro_rules! setting {
    ($name:ident: $ty:expr, $variant:ident, default $default:expr, example $example:expr,
     pooler $pooler:expr, $title:expr) => {
        Setting {
            name: stringify!($name),
            kind: $ty,
            default: $default,
            example: $example,
            title: $title,
            pooler: $pooler,
            get: field!($name, $variant).0,
            set: field!($name, $variant).1,
        }
    };
}

const fn int(min: i64, max: i64) -> SettingType {
    SettingType::Integer { min, max }
}

/// Not applied by the pooler: `autodb_*` describe pools made on demand for unknown database names,
/// and pgbay serves only the pools created through the API. Stored and returned as given.
const AUTODB: &str = "not applied: pgbay makes no pools on demand";

/// Every pgbouncer setting pgbay accepts, in the document's order.
pub const SETTINGS: [Setting; 10] = [
    setting!(min_pool_size: int(0, 10000), Integer, default Some("0"), example "0",
        pooler "min_pool_size of every pool of the service",
        "Add more server connections to pool if below this number. Improves behavior when usual load comes suddenly back after period of total inactivity. The value is effectively capped at the pool size."),
    setting!(ignore_startup_parameters: SettingType::StartupParameters { max_items: 32 },
        StartupParameters, default None, example r#"["extra_float_digits", "search_path"]"#,
        pooler "startup parameters the pooler accepts from clients and does not forward",
        "List of parameters to ignore when given in startup packet"),
    setting!(server_lifetime: int(60, 86400), Integer, default Some("3600"), example "3600",
        pooler "server_lifetime of every pool, in seconds",
        "The pooler will close an unused server connection that has been connected longer than this. [seconds]"),
    setting!(autodb_pool_mode: SettingType::PoolMode, PoolMode, default Some(r#""transaction""#),
        example r#""session""#, pooler AUTODB, "PGBouncer pool mode"),
    setting!(server_idle_timeout: int(0, 86400), Integer, default Some("600"), example "600",
        pooler "server_idle_timeout of every pool, in seconds; 0 disables it",
        "If a server connection has been idle more than this many seconds it will be dropped. If 0 then timeout is disabled. [seconds]"),
    setting!(autodb_max_db_connections: int(0, 2147483647), Integer, default None, example "0",
        pooler AUTODB,
        "Do not allow more than this many server connections per database (regardless of user). Setting it to 0 means unlimited."),
    setting!(max_prepared_statements: int(0, 3000), Integer, default Some("100"), example "100",
        pooler "prepared statements tracked per server connection; 0 disables the tracking",
        "PgBouncer tracks protocol-level named prepared statements related commands sent by the client in transaction and statement pooling modes when max_prepared_statements is set to a non-zero value. Setting it to 0 disables prepared statements. max_prepared_statements defaults to 100, and its maximum is 3000."),
    setting!(server_reset_query_always: SettingType::Boolean, Boolean, default Some("false"),
        example "false", pooler "DISCARD ALL on check-in in every pooling mode, not only session",
        "Run server_reset_query (DISCARD ALL) in all pooling modes"),
    setting!(autodb_pool_size: int(0, 10000), Integer, default Some("0"), example "0",
        pooler AUTODB,
        "If non-zero then create automatically a pool of that size per user when a pool doesn't exist."),
    setting!(autodb_idle_timeout: int(0, 86400), Integer, default Some("3600"), example "3600",
        pooler AUTODB,
        "If the automatically created database pools have been unused this many seconds, they are freed. If 0 then timeout is disabled. [seconds]"),
];

/// The setting called `name`.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

impl Setting {
    /// An integer value of this (integer) setting given as `field`, within its bounds.
    pub fn integer(&self, field: &str, n: i64) -> Result<SettingValue, InputError> {
        match self.kind {
            SettingType::Integer { min, max } => {
                Ok(SettingValue::Integer(in_range(field, n, min, max)? as u32))
            }
            _ => Err(InputError::new(field, "must not be an integer")),
        }
    }

    /// The startup parameters named by `items` (given as `field`), at most the setting's count.
    pub fn startup_parameters<S: AsRef<str>>(
        &self,
        field: &str,
        items: &[S],
    ) -> Result<SettingValue, InputError> {
        let SettingType::StartupParameters { max_items } = self.kind else {
            return Err(InputError::new(field, "must not be a list"));
        };
        if items.len() > max_items {
            return Err(InputError::new(
                field,
                format!("at most {max_items} items, got {}", items.len()),
            ));
        }
        items
            .iter()
            .map(|item| {
                IgnoredStartupParameter::ALL
                    .into_iter()
                    .find(|p| item.as_ref() == p.as_str())
                    .ok_or_else(|| {
                        InputError::new(
                            field,
                            "items must be one of \"extra_float_digits\", \"search_path\"",
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(SettingValue::StartupParameters)
    }

    /// This setting's value in `s`, if set.
    pub fn get(&self, s: &PgbouncerSettings) -> Option<SettingValue> {
        (self.get)(s)
    }
}

impl PgbouncerSettings {
    /// Sets and unsets what `patch` names.
    pub fn apply(&mut self, patch: &PgbouncerPatch) {
        for (row, value) in &patch.changes {
            (row.set)(self, value.clone());
        }
    }

    /// Every setting that is set, in the table's order.
    pub fn values(&self) -> impl Iterator<Item = (&'static Setting, SettingValue)> + '_ {
        SETTINGS
            .iter()
            .filter_map(|row| Some((row, (row.get)(self)?)))
    }
}

/// A change to a service's settings: what an update names, to set or (`None`) to unset; the
/// settings it does not name keep their values.
#[derive(Debug, Clone, Default)]
pub struct PgbouncerPatch {
    changes: Vec<(&'static Setting, Option<SettingValue>)>,
}

impl PgbouncerPatch {
    /// Sets (`Some`) or unsets (`None`) `row`. A value of another type than the row's is
    /// ignored when applied (the row is unset): build values with the row's own constructors.
    pub fn set(&mut self, row: &'static Setting, value: Option<SettingValue>) {
        self.changes.push((row, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_limits_just_inside_and_outside() {
        for row in &SETTINGS {
            let SettingType::Integer { min, max } = row.kind else {
                continue;
            };
            assert!(row.integer(row.name, min).is_ok(), "{}={min}", row.name);
            assert!(row.integer(row.name, max).is_ok(), "{}={max}", row.name);
            let e = row.integer(row.name, min - 1).unwrap_err();
            assert!(e.message.contains(row.name), "{e}");
            assert!(row.integer(row.name, max + 1).is_err());
        }
        let lifetime = setting("server_reset_query_always").unwrap();
        assert!(lifetime.integer("x", 1).is_err());
    }

    #[test]
    fn startup_parameters_and_patches() {
        let row = setting("ignore_startup_parameters").unwrap();
        assert!(row.startup_parameters("f", &["work_mem"]).is_err());
        assert!(row.startup_parameters("f", &["search_path"; 33]).is_err());
        assert!(row.startup_parameters("f", &["search_path"; 32]).is_ok());
        let mut s = PgbouncerSettings::default();
        let mut p = PgbouncerPatch::default();
        p.set(
            setting("min_pool_size").unwrap(),
            Some(SettingValue::Integer(3)),
        );
        p.set(row, row.startup_parameters("f", &["search_path"]).ok());
        s.apply(&p);
        assert_eq!(s.min_pool_size, Some(3));
        assert_eq!(s.values().count(), 2);
        let mut unset = PgbouncerPatch::default();
        unset.set(setting("min_pool_size").unwrap(), None);
        s.apply(&unset);
        assert_eq!((s.min_pool_size, s.values().count()), (None, 1));
    }

    /// The store's column: only what is set, under the document's names, and read back the same.
    #[test]
    fn stored_form_round_trips() {
        let s = PgbouncerSettings {
            min_pool_size: Some(2),
            autodb_pool_mode: Some(PoolMode::Session),
            ignore_startup_parameters: Some(vec![IgnoredStartupParameter::SearchPath]),
            ..Default::default()
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(
            text,
            r#"{"min_pool_size":2,"ignore_startup_parameters":["search_path"],"autodb_pool_mode":"session"}"#
        );
        assert_eq!(serde_json::from_str::<PgbouncerSettings>(&text).unwrap(), s);
        assert_eq!(
            serde_json::from_str::<PgbouncerSettings>("{}").unwrap(),
            PgbouncerSettings::default()
        );
    }
}
