//! The request bodies of migrations: the `migration` object of service create and update and the
//! body of a migration check, read into control's `MigrationSpec` and `MigrationCheck`. Errors name
//! the field.

use pgbay_control::input::InputError;
use pgbay_control::{MigrationCheck, MigrationSpec};
use serde_json::{Map, Value};

use super::values::{boolean, int_in};

/// The body of `POST /dbaas-task-migration-check/{service}`: `source-service-uri` (required),
/// `method` and `ignore-dbs`.
pub fn migration_check(body: &Map<String, Value>) -> Result<MigrationCheck, InputError> {
    if let Some(k) = body
        .keys()
        .find(|k| !["source-service-uri", "method", "ignore-dbs"].contains(&k.as_str()))
    {
        return Err(InputError::whole(format!(
            "unknown or unsupported field `{k}`"
        )));
    }
    let f = "source-service-uri";
    let uri = body
        .get(f)
        .filter(|v| !v.is_null())
        .ok_or_else(|| InputError::new(f, "missing required field"))?
        .as_str()
        .ok_or_else(|| InputError::new(f, "must be a string"))?;
    let replication = match body.get("method").filter(|v| !v.is_null()) {
        None => false,
        Some(v) => match v.as_str() {
            Some("dump") => false,
            Some("replication") => true,
            _ => {
                return Err(InputError::new(
                    "method",
                    format!("must be dump or replication, got {v}"),
                ))
            }
        },
    };
    if let Some(v) = body.get("ignore-dbs").filter(|v| !v.is_null()) {
        if !v.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 2048) {
            return Err(InputError::new(
                "ignore-dbs",
                "must be a string of 1 to 2048 characters",
            ));
        }
    }
    MigrationCheck::new(f, uri, replication)
}

/// A string member `key` of the `migration` object, at most `max` characters, no control
/// characters.
fn text(obj: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>, InputError> {
    let field = format!("migration.{key}");
    let Some(v) = obj.get(key).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let s = v
        .as_str()
        .ok_or_else(|| InputError::new(&field, "must be a string"))?;
    if s.is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(InputError::new(
            &field,
            format!("must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(Some(s.to_string()))
}

/// The document's `migration` object (`field` names it in errors): `host` and `port` required,
/// `method` `dump` (default) or `replication`.
pub(super) fn spec(field: &str, v: &Value) -> Result<MigrationSpec, InputError> {
    let obj = v
        .as_object()
        .ok_or_else(|| InputError::new(field, "must be an object"))?;
    const KNOWN: [&str; 8] = [
        "host",
        "port",
        "username",
        "password",
        "dbname",
        "ssl",
        "method",
        "ignore-dbs",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(InputError::whole(format!(
            "unknown or unsupported field `{field}.{k}`"
        )));
    }
    let host = text(obj, "host", 255)?
        .ok_or_else(|| InputError::new("migration.host", "missing required field"))?;
    let port = obj
        .get("port")
        .filter(|v| !v.is_null())
        .ok_or_else(|| InputError::new("migration.port", "missing required field"))?;
    let port = int_in("migration.port", port, 1, 65535)? as u16;
    let method = match text(obj, "method", 32)?.as_deref() {
        None | Some("dump") => "dump",
        Some("replication") => "replication",
        Some(other) => {
            return Err(InputError::new(
                "migration.method",
                format!("must be dump or replication, got {other:?}"),
            ))
        }
    }
    .to_string();
    let ssl = match obj.get("ssl").filter(|v| !v.is_null()) {
        Some(v) => boolean("migration.ssl", v)?,
        None => true,
    };
    let ignore_dbs = text(obj, "ignore-dbs", 2048)?
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(MigrationSpec {
        method,
        host,
        port,
        username: text(obj, "username", 255)?,
        password: match obj.get("password").filter(|v| !v.is_null()) {
            Some(v) => match v.as_str() {
                Some(p) if !p.is_empty() && p.chars().count() <= 255 => Some(p.to_string()),
                _ => {
                    return Err(InputError::new(
                        "migration.password",
                        "must be a string of 1 to 255 characters",
                    ))
                }
            },
            None => None,
        },
        dbname: text(obj, "dbname", 63)?,
        ssl,
        ignore_dbs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn migration_object_is_parsed_and_refusals_name_the_field() {
        let m = spec(
            "migration",
            &json!({"host": "db.example", "port": 5432, "password": "pw", "ssl": false,
                    "ignore-dbs": "a, b", "method": "dump"}),
        )
        .unwrap();
        assert_eq!((m.port, m.ssl), (5432, false));
        assert_eq!(m.ignore_dbs, vec!["a", "b"]);
        assert!(!format!("{m:?}").contains("pw"));
        let e = spec(
            "migration",
            &json!({"host": "h", "port": 1, "method": "copy"}),
        )
        .unwrap_err();
        assert!(e.message.contains("migration.method"), "{e:?}");
        let e = spec("migration", &json!({"host": "h", "port": 1, "bogus": 1})).unwrap_err();
        assert!(e.message.contains("migration.bogus"), "{e:?}");
        let e = spec("migration", &json!({"host": "h"})).unwrap_err();
        assert!(e.message.contains("migration.port"), "{e:?}");
        let e = spec("migration", &json!({"host": "h", "port": 0})).unwrap_err();
        assert!(e.message.contains("migration.port"), "{e:?}");
    }
}
