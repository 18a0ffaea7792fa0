//! The service's pgbouncer settings (json-schema-pgbouncer of the Exoscale document), typed. The
//! pooler reads them from the desired state; the API accepts and returns them in the document's
//! JSON shape. `None` means "not set", i.e. the pooler's default applies.

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

/// Integer settings with their bounds, in one table so parsing and the schema agree.
const INT_LIMITS: [(&str, i64, i64); 7] = [
    ("min_pool_size", 0, 10000),
    ("server_lifetime", 60, 86400),
    ("server_idle_timeout", 0, 86400),
    ("autodb_max_db_connections", 0, 2147483647),
    ("max_prepared_statements", 0, 3000),
    ("autodb_pool_size", 0, 10000),
    ("autodb_idle_timeout", 0, 86400),
];

const KNOWN: [&str; 10] = [
    "min_pool_size",
    "ignore_startup_parameters",
    "server_lifetime",
    "autodb_pool_mode",
    "server_idle_timeout",
    "autodb_max_db_connections",
    "max_prepared_statements",
    "server_reset_query_always",
    "autodb_pool_size",
    "autodb_idle_timeout",
];

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
        for key in &patch.named {
            self.copy_from(key, &patch.values);
        }
    }

    fn copy_from(&mut self, key: &str, from: &PgbouncerSettings) {
        match key {
            "ignore_startup_parameters" => {
                self.ignore_startup_parameters = from.ignore_startup_parameters.clone()
            }
            "autodb_pool_mode" => self.autodb_pool_mode = from.autodb_pool_mode,
            "server_reset_query_always" => {
                self.server_reset_query_always = from.server_reset_query_always
            }
            _ => self.set_int(key, from.int(key)),
        }
    }

    fn int(&self, key: &str) -> Option<u32> {
        match key {
            "min_pool_size" => self.min_pool_size,
            "server_lifetime" => self.server_lifetime,
            "server_idle_timeout" => self.server_idle_timeout,
            "autodb_max_db_connections" => self.autodb_max_db_connections,
            "max_prepared_statements" => self.max_prepared_statements,
            "autodb_pool_size" => self.autodb_pool_size,
            "autodb_idle_timeout" => self.autodb_idle_timeout,
            _ => None,
        }
    }

    fn set_int(&mut self, key: &str, v: Option<u32>) {
        let slot = match key {
            "min_pool_size" => &mut self.min_pool_size,
            "server_lifetime" => &mut self.server_lifetime,
            "server_idle_timeout" => &mut self.server_idle_timeout,
            "autodb_max_db_connections" => &mut self.autodb_max_db_connections,
            "max_prepared_statements" => &mut self.max_prepared_statements,
            "autodb_pool_size" => &mut self.autodb_pool_size,
            "autodb_idle_timeout" => &mut self.autodb_idle_timeout,
            _ => return,
        };
        *slot = v;
    }

    /// The document's JSON shape: only the keys that are set.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let ints = [
            ("min_pool_size", self.min_pool_size),
            ("server_lifetime", self.server_lifetime),
            ("server_idle_timeout", self.server_idle_timeout),
            ("autodb_max_db_connections", self.autodb_max_db_connections),
            ("max_prepared_statements", self.max_prepared_statements),
            ("autodb_pool_size", self.autodb_pool_size),
            ("autodb_idle_timeout", self.autodb_idle_timeout),
        ];
        for (k, v) in ints {
            if let Some(v) = v {
                m.insert(k.to_string(), json!(v));
            }
        }
        if let Some(p) = &self.ignore_startup_parameters {
            let items: Vec<&str> = p.iter().map(|x| x.as_str()).collect();
            m.insert("ignore_startup_parameters".into(), json!(items));
        }
        if let Some(mode) = self.autodb_pool_mode {
            m.insert("autodb_pool_mode".into(), json!(mode.as_str()));
        }
        if let Some(b) = self.server_reset_query_always {
            m.insert("server_reset_query_always".into(), json!(b));
        }
        Value::Object(m)
    }

    /// json-schema-pgbouncer, as `GET /dbaas-settings-pg` serves it.
    pub fn schema() -> Value {
        json!({
            "description": "System-wide settings for pgbouncer.",
            "title": "PGBouncer connection pooling settings",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "min_pool_size": {"default": 0, "example": 0, "maximum": 10000, "minimum": 0, "type": "integer",
                    "title": "Add more server connections to pool if below this number. Improves behavior when usual load comes suddenly back after period of total inactivity. The value is effectively capped at the pool size."},
                "ignore_startup_parameters": {"example": ["extra_float_digits", "search_path"],
                    "items": {"enum": ["extra_float_digits", "search_path"], "type": "string"},
                    "maxItems": 32, "type": "array", "title": "List of parameters to ignore when given in startup packet"},
                "server_lifetime": {"default": 3600, "example": 3600, "maximum": 86400, "minimum": 60, "type": "integer",
                    "title": "The pooler will close an unused server connection that has been connected longer than this. [seconds]"},
                "autodb_pool_mode": {"default": "transaction", "enum": ["session", "statement", "transaction"],
                    "example": "session", "type": "string", "title": "PGBouncer pool mode"},
                "server_idle_timeout": {"default": 600, "example": 600, "maximum": 86400, "minimum": 0, "type": "integer",
                    "title": "If a server connection has been idle more than this many seconds it will be dropped. If 0 then timeout is disabled. [seconds]"},
                "autodb_max_db_connections": {"example": 0, "maximum": 2147483647, "minimum": 0, "type": "integer",
                    "title": "Do not allow more than this many server connections per database (regardless of user). Setting it to 0 means unlimited."},
                "max_prepared_statements": {"default": 100, "example": 100, "maximum": 3000, "minimum": 0, "type": "integer",
                    "title": "PgBouncer tracks protocol-level named prepared statements related commands sent by the client in transaction and statement pooling modes when max_prepared_statements is set to a non-zero value. Setting it to 0 disables prepared statements. max_prepared_statements defaults to 100, and its maximum is 3000."},
                "server_reset_query_always": {"default": false, "example": false, "type": "boolean",
                    "title": "Run server_reset_query (DISCARD ALL) in all pooling modes"},
                "autodb_pool_size": {"default": 0, "example": 0, "maximum": 10000, "minimum": 0, "type": "integer",
                    "title": "If non-zero then create automatically a pool of that size per user when a pool doesn't exist."},
                "autodb_idle_timeout": {"default": 3600, "example": 3600, "maximum": 86400, "minimum": 0, "type": "integer",
                    "title": "If the automatically created database pools have been unused this many seconds, they are freed. If 0 then timeout is disabled. [seconds]"}
            }
        })
    }
}

/// A change to a service's settings: what an update names, to set or (`null`) to unset; the
/// settings it does not name keep their values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgbouncerPatch {
    values: PgbouncerSettings,
    named: Vec<&'static str>,
}

impl PgbouncerPatch {
    /// Parses the `pgbouncer-settings` object of an update given as `field`: every key it names is
    /// set to its value, or unset by `null`; unknown keys are refused.
    pub fn parse(field: &str, obj: &Map<String, Value>) -> Result<Self, InputError> {
        if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(InputError::new(
                &format!("{field}.{k}"),
                "unknown pgbouncer setting",
            ));
        }
        let mut next = PgbouncerSettings::default();
        for (key, value) in obj {
            let name = format!("{field}.{key}");
            if value.is_null() {
                next.set_int(key, None);
                match key.as_str() {
                    "ignore_startup_parameters" => next.ignore_startup_parameters = None,
                    "autodb_pool_mode" => next.autodb_pool_mode = None,
                    "server_reset_query_always" => next.server_reset_query_always = None,
                    _ => {}
                }
                continue;
            }
            if let Some((_, min, max)) = INT_LIMITS.iter().find(|(k, _, _)| k == key) {
                let n = int_in(&name, value, *min, *max)?;
                next.set_int(key, Some(n as u32));
                continue;
            }
            match key.as_str() {
                "autodb_pool_mode" => next.autodb_pool_mode = Some(PoolMode::parse(&name, value)?),
                "server_reset_query_always" => {
                    next.server_reset_query_always = Some(boolean(&name, value)?)
                }
                "ignore_startup_parameters" => {
                    next.ignore_startup_parameters = Some(parse_ignored(&name, value)?)
                }
                _ => {}
            }
        }
        let named = obj
            .keys()
            .filter_map(|k| KNOWN.iter().find(|known| *known == k).copied())
            .collect();
        Ok(PgbouncerPatch {
            values: next,
            named,
        })
    }
}

fn parse_ignored(field: &str, v: &Value) -> Result<Vec<IgnoredStartupParameter>, InputError> {
    let items = v
        .as_array()
        .ok_or_else(|| InputError::new(field, "must be an array"))?;
    if items.len() > 32 {
        return Err(InputError::new(
            field,
            format!("at most 32 items, got {}", items.len()),
        ));
    }
    items
        .iter()
        .map(|item| match item.as_str() {
            Some("extra_float_digits") => Ok(IgnoredStartupParameter::ExtraFloatDigits),
            Some("search_path") => Ok(IgnoredStartupParameter::SearchPath),
            _ => Err(InputError::new(
                field,
                "items must be one of \"extra_float_digits\", \"search_path\"",
            )),
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
        for (key, min, max) in INT_LIMITS {
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
}
