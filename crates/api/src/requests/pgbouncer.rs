//! `pgbouncer-settings` in the document's JSON shape: read into control's typed settings (the
//! JSON type here, the bounds by control's table), written back, and the schema
//! (`json-schema-pgbouncer`) served by `GET /dbaas-settings-pg`, all from control's [`SETTINGS`].

use pgbay_control::input::{InputError, PoolMode};
use pgbay_control::pgbouncer::{setting, Setting, SettingType, SettingValue, SETTINGS};
use pgbay_control::{IgnoredStartupParameter, PgbouncerPatch, PgbouncerSettings};
use serde_json::{json, Map, Value};

use super::values::{boolean, integer, strings};

/// The value of `row` given as `field`; `null` is None (unset).
fn value(
    row: &'static Setting,
    field: &str,
    v: &Value,
) -> Result<Option<SettingValue>, InputError> {
    if v.is_null() {
        return Ok(None);
    }
    Ok(Some(match row.kind {
        SettingType::Integer { .. } => row.integer(field, integer(field, v)?)?,
        SettingType::Boolean => SettingValue::Boolean(boolean(field, v)?),
        SettingType::PoolMode => {
            SettingValue::PoolMode(PoolMode::parse(field, v.as_str().unwrap_or_default())?)
        }
        SettingType::StartupParameters { .. } => {
            row.startup_parameters(field, &strings(field, v, "")?)?
        }
    }))
}

/// The `pgbouncer-settings` object of an update given as `field`: every key it names is set to
/// its value, or unset by `null`; unknown keys are refused.
pub(super) fn patch(field: &str, v: &Value) -> Result<PgbouncerPatch, InputError> {
    let obj = v
        .as_object()
        .ok_or_else(|| InputError::new(field, "must be an object"))?;
    if let Some(k) = obj.keys().find(|k| setting(k).is_none()) {
        return Err(InputError::new(
            &format!("{field}.{k}"),
            "unknown pgbouncer setting",
        ));
    }
    let mut patch = PgbouncerPatch::default();
    for (key, v) in obj {
        let Some(row) = setting(key) else { continue };
        patch.set(row, value(row, &format!("{field}.{key}"), v)?);
    }
    Ok(patch)
}

/// The `pgbouncer-settings` of a create given as `field`.
pub(super) fn settings(field: &str, v: &Value) -> Result<PgbouncerSettings, InputError> {
    let mut s = PgbouncerSettings::default();
    s.apply(&patch(field, v)?);
    Ok(s)
}

fn value_json(v: &SettingValue) -> Value {
    match v {
        SettingValue::Integer(n) => json!(n),
        SettingValue::Boolean(b) => json!(b),
        SettingValue::PoolMode(m) => json!(m.as_str()),
        SettingValue::StartupParameters(p) => {
            json!(p.iter().map(|x| x.as_str()).collect::<Vec<_>>())
        }
    }
}

/// The document's JSON shape: only the keys that are set.
pub fn pgbouncer_json(s: &PgbouncerSettings) -> Value {
    Value::Object(
        s.values()
            .map(|(row, v)| (row.name.to_string(), value_json(&v)))
            .collect(),
    )
}

fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The schema keywords of a setting's type.
fn type_schema(kind: SettingType) -> Map<String, Value> {
    let mut m = Map::new();
    match kind {
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

/// json-schema-pgbouncer, as `GET /dbaas-settings-pg` serves it.
pub fn pgbouncer_schema() -> Value {
    let properties: Map<String, Value> = SETTINGS
        .iter()
        .map(|row| {
            let mut p = type_schema(row.kind);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<PgbouncerSettings, InputError> {
        settings("pgbouncer-settings", &v)
    }

    #[test]
    fn integer_limits_just_inside_and_outside() {
        let ints = SETTINGS.iter().filter_map(|row| match row.kind {
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
            pgbouncer_json(&parse(json!({"min_pool_size": 3})).unwrap()),
            json!({"min_pool_size": 3})
        );
    }

    #[test]
    fn a_patch_keeps_unnamed_and_a_refused_patch_changes_nothing() {
        let mut s = parse(json!({"min_pool_size": 3, "server_lifetime": 120})).unwrap();
        let bad = json!({"min_pool_size": 4, "server_lifetime": 1});
        assert!(patch("pgbouncer-settings", &bad).is_err());
        assert_eq!(s.min_pool_size, Some(3));
        let upd = json!({"min_pool_size": 5, "server_lifetime": null});
        s.apply(&patch("pgbouncer-settings", &upd).unwrap());
        assert_eq!((s.min_pool_size, s.server_lifetime), (Some(5), None));
    }

    /// The schema is the table: every row is a property with its type, bounds and default, every
    /// property is a row, and parsing refuses what the row's bounds refuse.
    #[test]
    fn schema_is_the_table_and_parsing_follows_its_bounds() {
        let schema = pgbouncer_schema();
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
            let too_far = match row.kind {
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
            assert_eq!(pgbouncer_json(&parse(example.clone()).unwrap()), example);
        }
    }
}
