//! `pg-settings` in the document's JSON shape: groups (`autovacuum`, `bg-writer`, `wal`) nested
//! as there, read into control's typed patch (each value checked by control's table), written
//! back, and the `pg` schema of `GET /dbaas-settings-pg` generated from the table.

use pgbay_control::input::InputError;
use pgbay_control::pg_settings::{
    all, def, expected, is_group, refuse, Availability, Kind, PgSettings, PgSettingsPatch, PgValue,
    SettingDef,
};
use serde_json::{json, Map, Value};

/// A JSON value as a setting's value; `null` is None (unset).
fn value(
    field: &str,
    path: &str,
    d: &SettingDef,
    v: &Value,
) -> Result<Option<PgValue>, InputError> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => PgValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => PgValue::Int(i),
            None => PgValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => PgValue::Text(s.clone()),
        Value::Array(_) | Value::Object(_) => return Err(refuse(field, path, expected(d.kind))),
    }))
}

/// The document's `pg-settings` object given as `field` (groups nested); `null` values unset, a
/// `null` group unsets the group's settings.
pub(super) fn patch(field: &str, v: &Value) -> Result<PgSettingsPatch, InputError> {
    let obj = v
        .as_object()
        .ok_or_else(|| InputError::new(field, "must be an object"))?;
    let mut out = PgSettingsPatch::default();
    for (k, v) in obj {
        if is_group(k) {
            if v.is_null() {
                for d in all().iter().filter(|d| d.group == Some(k.as_str())) {
                    out.set(field, d, None)?;
                }
                continue;
            }
            let inner = v
                .as_object()
                .ok_or_else(|| refuse(field, k, "is a group of settings and must be an object"))?;
            for (name, v) in inner {
                let path = format!("{k}.{name}");
                let d = def(name)
                    .filter(|d| d.group == Some(k.as_str()))
                    .ok_or_else(|| refuse(field, &path, "is unknown"))?;
                out.set(field, d, value(field, &path, d, v)?)?;
            }
            continue;
        }
        let d = def(k)
            .filter(|d| d.group.is_none())
            .ok_or_else(|| refuse(field, k, "is unknown"))?;
        out.set(field, d, value(field, k, d, v)?)?;
    }
    Ok(out)
}

fn value_json(v: &PgValue) -> Value {
    match v {
        PgValue::Bool(b) => json!(b),
        PgValue::Int(n) => json!(n),
        PgValue::Float(n) => json!(n),
        PgValue::Text(s) => json!(s),
    }
}

/// The document's JSON (groups nested).
pub fn pg_settings_json(s: &PgSettings) -> Value {
    let mut out = Map::new();
    for (k, v) in s.values() {
        match def(k).and_then(|d| d.group) {
            Some(g) => {
                let e = out.entry(g).or_insert_with(|| json!({}));
                if let Value::Object(m) = e {
                    m.insert(k.to_string(), value_json(v));
                }
            }
            None => {
                out.insert(k.to_string(), value_json(v));
            }
        }
    }
    Value::Object(out)
}

/// The `pg` schema of `GET /dbaas-settings-pg`, generated from the table.
pub fn pg_settings_schema() -> Value {
    let mut props = Map::new();
    for d in all() {
        let mut p = match d.kind {
            Kind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
            Kind::Float { min, max } => json!({"type": "number", "minimum": min, "maximum": max}),
            Kind::Enum(values) => json!({"type": "string", "enum": values}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::Str { max_len } => {
                json!({"type": "string", "maxLength": max_len, "pattern": "^[\\w/]*$"})
            }
        };
        let mut description = d.description.to_string();
        match d.availability {
            Availability::Here => {}
            Availability::Since(v) => {
                description.push_str(&format!(" Not available on pgbay (PostgreSQL {v}+)."))
            }
            Availability::Extension(e) => description.push_str(&format!(
                " Not available on pgbay (needs the {e} extension)."
            )),
        }
        p["title"] = json!(d.name);
        p["description"] = json!(description);
        match d.group {
            Some(g) => {
                let group = props
                    .entry(g)
                    .or_insert_with(|| json!({"type": "object", "title": g, "properties": {}}));
                group["properties"][d.name] = p;
            }
            None => {
                props.insert(d.name.to_string(), p);
            }
        }
    }
    json!({
        "title": "postgresql.conf configuration values",
        "type": "object",
        "additionalProperties": false,
        "properties": props,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &str = "pg-settings";

    fn parse(v: &Value) -> Result<PgSettings, InputError> {
        patch(FIELD, v).map(|p| PgSettings::from_patch(&p))
    }

    #[test]
    fn parse_validates_names_bounds_groups_and_availability() {
        let s = parse(&json!({"deadlock_timeout": 2000, "jit": false,
                    "autovacuum": {"autovacuum_naptime": 30}, "max_stack_depth": 3145728}))
        .unwrap();
        let entries = s.conf_entries();
        assert!(entries.contains(&("jit".into(), "off".into(), false)));
        assert!(entries.contains(&("max_stack_depth".into(), "'3072kB'".into(), false)));
        assert_eq!(pg_settings_json(&s)["autovacuum"]["autovacuum_naptime"], 30);
        for (bad, named) in [
            (json!({"deadlock_timeout": 10}), "deadlock_timeout"),
            (json!({"work_mem": 4}), "work_mem"),
            (json!({"autovacuum_naptime": 30}), "autovacuum_naptime"),
            (json!({"autovacuum": {"jit": true}}), "autovacuum.jit"),
            (json!({"io_method": "sync"}), "io_method"),
            (
                json!({"pg_stat_statements.track": "all"}),
                "pg_stat_statements.track",
            ),
            (json!({"timezone": "Mars/Olympus"}), "timezone"),
            (json!({"jit": "yes"}), "jit"),
            (json!({"jit": [true]}), "jit"),
            (json!({"deadlock_timeout": 1500.5}), "deadlock_timeout"),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(e.message.contains(&format!("`{named}`")), "{e}");
            assert!(e.message.contains(&format!("`{FIELD}`")), "{e}");
        }
        // A null group unsets its settings.
        let mut s2 = s.clone();
        s2.apply(&patch(FIELD, &json!({"autovacuum": null})).unwrap());
        assert_eq!(s2.int("autovacuum_naptime"), None);
        assert_eq!(s2.int("deadlock_timeout"), Some(2000));
    }

    #[test]
    fn the_schema_nests_groups() {
        let schema = pg_settings_schema();
        assert_eq!(
            schema["properties"]["autovacuum"]["properties"]["autovacuum_naptime"]["type"],
            "integer"
        );
        assert!(schema["properties"]["jit"].is_object());
    }
}
