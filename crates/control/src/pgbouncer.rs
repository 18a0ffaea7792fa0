//! The service's pgbouncer settings (json-schema-pgbouncer of the Exoscale document), typed. The
//! pooler reads them from the desired state; the API accepts and returns them in the document's
//! JSON shape. `None` means "not set", i.e. the pooler's default applies.
//!
//! [`SETTINGS`] is the one table of the settings: name, JSON type with its bounds, default,
//! example, description and how the pooler applies it. Parsing, the JSON view and the schema are
//! all read from it, so a limit cannot differ between what is accepted and what is advertised.

use serde_json::{json, Map, Value};

use crate::input::{boolean, int_in, InputError, PoolMode};

/// A startup parameter that the pooler may be told to ignore (items enum of the document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Service-wide pooler settings. Each field is `None` when the user has not set it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgbouncerSettings {
    /// 0..=10000
    pub min_pool_size: Option<u32>,
    /// up to 32 items
    pub ignore_startup_parameters: Option<Vec<IgnoredStartupParameter>>,
    /// 60..=86400 seconds
    pub server_lifetime: Option<u32>,
    /// pool mode of automatically created pools
    pub autodb_pool_mode: Option<PoolMode>,
    /// 0..=86400 seconds, 0 disables
    pub server_idle_timeout: Option<u32>,
    /// 0..=2147483647, 0 unlimited
    pub autodb_max_db_connections: Option<u32>,
    /// 0..=3000, 0 disables prepared statement tracking
    pub max_prepared_statements: Option<u32>,
    /// run DISCARD ALL in every pooling mode
    pub server_reset_query_always: Option<bool>,
    /// 0..=10000
    pub autodb_pool_size: Option<u32>,
    /// 0..=86400 seconds
    pub autodb_idle_timeout: Option<u32>,
}

/// The JSON type of a setting, with its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingType {
    /// A JSON integer within `min..=max`.
    Integer {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A JSON boolean.
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
    /// JSON type and bounds.
    pub json_type: SettingType,
    /// The value that applies when unset, as JSON text (`None`: the document names none).
    pub default: Option<&'static str>,
    /// An example value, as JSON text.
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
            json_type: $ty,
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

fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

impl SettingType {
    /// Parses `v` given as `field`.
    fn parse(self, field: &str, v: &Value) -> Result<SettingValue, InputError> {
        Ok(match self {
            SettingType::Integer { min, max } => {
                SettingValue::Integer(int_in(field, v, min, max)? as u32)
            }
            SettingType::Boolean => SettingValue::Boolean(boolean(field, v)?),
            SettingType::PoolMode => SettingValue::PoolMode(PoolMode::parse(field, v)?),
            SettingType::StartupParameters { max_items } => {
                SettingValue::StartupParameters(parse_ignored(field, v, max_items)?)
            }
        })
    }

    /// The schema keywords of this type.
    fn schema(self) -> Map<String, Value> {
        let mut m = Map::new();
        match self {
            SettingType::Integer { min, max } => {
                m.insert("type".into(), json!("integer"));
                m.insert("minimum".into(), json!(min));
                m.insert("maximum".into(), json!(max));
            }
            SettingType::Boolean => {
                m.insert("type".into(), json!("boolean"));
            }
            SettingType::PoolMode => {
                m.insert("type".into(), json!("string"));
                m.insert(
                    "enum".into(),
                    json!(["session", "statement", "transaction"]),
                );
            }
            SettingType::StartupParameters { max_items } => {
                let names: Vec<&str> = IgnoredStartupParameter::ALL
                    .iter()
                    .map(|p| p.as_str())
                    .collect();
                m.insert("type".into(), json!("array"));
                m.insert("maxItems".into(), json!(max_items));
                m.insert("items".into(), json!({"enum": names, "type": "string"}));
            }
        }
        m
    }
}

impl SettingValue {
    fn to_json(&self) -> Value {
        match self {
            SettingValue::Integer(n) => json!(n),
            SettingValue::Boolean(b) => json!(b),
            SettingValue::PoolMode(m) => json!(m.as_str()),
            SettingValue::StartupParameters(p) => {
                json!(p.iter().map(|x| x.as_str()).collect::<Vec<_>>())
            }
        }
    }
}

impl PgbouncerSettings {
    /// Parses the `pgbouncer-settings` object given as `field`; unknown keys are refused.
    pub fn parse(field: &str, v: &Value) -> Result<Self, InputError> {
        let obj = v
            .as_object()
            .ok_or_else(|| InputError::new(field, "must be an object"))?;
        let mut s = PgbouncerSettings::default();
        s.merge(field, obj)?;
        Ok(s)
    }

    /// Applies the keys of `obj` over `self` (an update sets only what it names; `null` unsets).
    /// A refused object changes nothing.
    pub fn merge(&mut self, field: &str, obj: &Map<String, Value>) -> Result<(), InputError> {
        let patch = PgbouncerPatch::parse(field, obj)?;
        self.apply(&patch);
        Ok(())
    }

    /// Sets and unsets what `patch` names.
    pub fn apply(&mut self, patch: &PgbouncerPatch) {
        for (row, value) in &patch.changes {
            (row.set)(self, value.clone());
        }
    }

    /// The document's JSON shape: only the keys that are set.
    pub fn to_json(&self) -> Value {
        let set = SETTINGS
            .iter()
            .filter_map(|row| Some((row.name.to_string(), (row.get)(self)?.to_json())));
        Value::Object(set.collect())
    }

    /// json-schema-pgbouncer, as `GET /dbaas-settings-pg` serves it.
    pub fn schema() -> Value {
        let properties: Map<String, Value> = SETTINGS
            .iter()
            .map(|row| {
                let mut p = row.json_type.schema();
                p.insert("title".into(), json!(row.title));
                p.insert("example".into(), json_text(row.example));
                if let Some(d) = row.default {
                    p.insert("default".into(), json_text(d));
                }
                (row.name.to_string(), Value::Object(p))
            })
            .collect();
        json!({
            "description": "System-wide settings for pgbouncer.",
            "title": "PGBouncer connection pooling settings",
            "type": "object",
            "additionalProperties": false,
            "properties": properties,
        })
    }
}

/// A change to a service's settings: what an update names, to set or (`null`) to unset; the
/// settings it does not name keep their values.
#[derive(Debug, Clone, Default)]
pub struct PgbouncerPatch {
    changes: Vec<(&'static Setting, Option<SettingValue>)>,
}

impl PgbouncerPatch {
    /// Parses the `pgbouncer-settings` object of an update given as `field`: every key it names is
    /// set to its value, or unset by `null`; unknown keys are refused.
    pub fn parse(field: &str, obj: &Map<String, Value>) -> Result<Self, InputError> {
        if let Some(k) = obj.keys().find(|k| setting(k).is_none()) {
            return Err(InputError::new(
                &format!("{field}.{k}"),
                "unknown pgbouncer setting",
            ));
        }
        let mut changes = Vec::with_capacity(obj.len());
        for (key, value) in obj {
            let Some(row) = setting(key) else { continue };
            let parsed = match value {
                Value::Null => None,
                v => Some(row.json_type.parse(&format!("{field}.{key}"), v)?),
            };
            changes.push((row, parsed));
        }
        Ok(PgbouncerPatch { changes })
    }
}

fn parse_ignored(
    field: &str,
    v: &Value,
    max_items: usize,
) -> Result<Vec<IgnoredStartupParameter>, InputError> {
    let items = v
        .as_array()
        .ok_or_else(|| InputError::new(field, "must be an array"))?;
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
                .find(|p| item.as_str() == Some(p.as_str()))
                .ok_or_else(|| {
                    InputError::new(
                        field,
                        "items must be one of \"extra_float_digits\", \"search_path\"",
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<PgbouncerSettings, InputError> {
        PgbouncerSettings::parse("pgbouncer-settings", &v)
    }

    #[test]
    fn integer_limits_just_inside_and_outside() {
        let ints = SETTINGS.iter().filter_map(|row| match row.json_type {
            SettingType::Integer { min, max } => Some((row.name, min, max)),
            _ => None,
        });
        for (key, min, max) in ints {
            assert!(parse(json!({ key: min })).is_ok(), "{key}={min}");
            assert!(parse(json!({ key: max })).is_ok(), "{key}={max}");
            let e = parse(json!({ key: min - 1 })).unwrap_err();
            assert!(e.message.contains(key), "{e}");
            assert!(parse(json!({ key: max + 1 })).is_err(), "{key}={}", max + 1);
            assert!(parse(json!({ key: "1" })).is_err(), "{key} string");
        }
    }

    #[test]
    fn other_settings() {
        let s = parse(json!({
            "server_reset_query_always": true,
            "autodb_pool_mode": "session",
            "ignore_startup_parameters": ["search_path", "extra_float_digits"],
        }))
        .unwrap();
        assert_eq!(s.server_reset_query_always, Some(true));
        assert_eq!(s.autodb_pool_mode, Some(PoolMode::Session));
        assert_eq!(s.ignore_startup_parameters.as_ref().map(Vec::len), Some(2));
        assert!(parse(json!({"server_reset_query_always": "yes"})).is_err());
        assert!(parse(json!({"ignore_startup_parameters": ["work_mem"]})).is_err());
        let many: Vec<&str> = std::iter::repeat_n("search_path", 33).collect();
        assert!(parse(json!({ "ignore_startup_parameters": many })).is_err());
        let ok: Vec<&str> = std::iter::repeat_n("search_path", 32).collect();
        assert!(parse(json!({ "ignore_startup_parameters": ok })).is_ok());
        let e = parse(json!({"pool_mode": "session"})).unwrap_err();
        assert!(e.message.contains("pool_mode"), "{e}");
        assert_eq!(
            parse(json!({"min_pool_size": 3})).unwrap().to_json(),
            json!({"min_pool_size": 3})
        );
    }

    #[test]
    fn merge_keeps_unnamed_and_refused_merge_changes_nothing() {
        let mut s = parse(json!({"min_pool_size": 3, "server_lifetime": 120})).unwrap();
        let bad = json!({"min_pool_size": 4, "server_lifetime": 1});
        assert!(s
            .merge("pgbouncer-settings", bad.as_object().unwrap())
            .is_err());
        assert_eq!(s.min_pool_size, Some(3));
        let upd = json!({"min_pool_size": 5, "server_lifetime": null});
        s.merge("pgbouncer-settings", upd.as_object().unwrap())
            .unwrap();
        assert_eq!((s.min_pool_size, s.server_lifetime), (Some(5), None));
    }

    /// The schema is the table: every row is a property with its type, bounds and default, every
    /// property is a row, and parsing refuses what the row's bounds refuse.
    #[test]
    fn schema_is_the_table_and_parsing_follows_its_bounds() {
        let schema = PgbouncerSettings::schema();
        let props = schema["properties"].as_object().unwrap();
        assert_eq!(props.len(), SETTINGS.len());
        for key in props.keys() {
            assert!(
                setting(key).is_some(),
                "{key} in the schema but not in the table"
            );
        }
        for row in SETTINGS {
            let p = &props[row.name];
            assert_eq!(p["title"], json!(row.title), "{}", row.name);
            assert_eq!(p.get("default"), row.default.map(json_text).as_ref());
            let too_far = match row.json_type {
                SettingType::Integer { min, max } => {
                    assert_eq!(
                        (
                            p["type"].clone(),
                            p["minimum"].clone(),
                            p["maximum"].clone()
                        ),
                        (json!("integer"), json!(min), json!(max)),
                        "{}",
                        row.name
                    );
                    vec![json!(min - 1), json!(max + 1), json!(min.to_string())]
                }
                SettingType::Boolean => {
                    assert_eq!(p["type"], "boolean");
                    vec![json!("true"), json!(1)]
                }
                SettingType::PoolMode => {
                    assert_eq!(p["enum"], json!(["session", "statement", "transaction"]));
                    vec![json!("pooled"), json!(1)]
                }
                SettingType::StartupParameters { max_items } => {
                    assert_eq!(p["maxItems"], json!(max_items));
                    let names = p["items"]["enum"].as_array().unwrap();
                    assert_eq!(names.len(), IgnoredStartupParameter::ALL.len());
                    let many = vec![names[0].clone(); max_items + 1];
                    assert!(parse(json!({ row.name: many[..max_items] })).is_ok());
                    vec![json!(many), json!(["work_mem"]), json!("search_path")]
                }
            };
            for bad in too_far {
                let e = parse(json!({ row.name: bad })).unwrap_err();
                assert!(e.message.contains(row.name), "{e}");
            }
            // The example is accepted and reads back as itself.
            let example = json!({ row.name: json_text(row.example) });
            assert_eq!(parse(example.clone()).unwrap().to_json(), example);
        }
    }
}
