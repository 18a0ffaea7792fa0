//! The names of the custom settings (`params::custom_name`: `app.tenant` and the like) a
//! statement text may set, read when the scan found one (`CUSTOM`), off the hot path. They are
//! noted on the client (`params::ClientParams::note_custom`): the reset that follows the
//! transaction (`session_state::read_back`) reads their values first, and the client keeps
//! them on every server connection it gets next, as it would on its own connection.
//!
//! Looked for: `SET [SESSION|LOCAL] name`, `RESET name` and `set_config('name', ...)`,
//! anywhere in the text. Erring either way is safe: a name read back that the server does not
//! have comes back NULL and is not kept; a name missed (spelled with escapes, or a parameter
//! of `set_config`) is reset with the session, as every custom setting was before.

use super::ident;
use super::lex::{keyword, skip_noise};
use super::literal::{custom_name_at, string_at};
use crate::params::{custom_name, ClientParams};

/// Notes every custom setting's name `sql` may set on `params` (module docs).
#[cold]
#[inline(never)]
pub fn note(sql: &[u8], params: &mut ClientParams) {
    for name in names(sql) {
        params.note_custom(name);
    }
}

/// The custom settings' names in `sql` (module docs), lower case, in order.
pub fn names(sql: &[u8]) -> Vec<Box<str>> {
    let mut found = Vec::new();
    each(sql, |name, _| {
        if !found.contains(&name) {
            found.push(name);
        }
    });
    found
}

/// The first of the names `sql` may give a session-long value (a `SET [SESSION]` or a
/// `set_config`; not a `RESET` or a `SET LOCAL`) that a client carrying `carried` (and having
/// named `pending` since) cannot carry: the one past `params::MAX_CUSTOM`. Read only when the
/// scan found a custom setting (`CUSTOM`), off the hot path.
#[cold]
#[inline(never)]
pub fn one_too_many(sql: &[u8], params: &ClientParams) -> Option<Box<str>> {
    let mut new: Vec<Box<str>> = Vec::new();
    let mut over = None;
    each(sql, |name, lasts| {
        if over.is_some() || !lasts || new.contains(&name) || !params.would_add_custom(&name) {
            return;
        }
        if params.customs_named() + new.len() >= crate::params::MAX_CUSTOM {
            over = Some(name);
        } else {
            new.push(name);
        }
    });
    over
}

/// Calls `f` with each custom setting's name in `sql` (module docs), lower case, in order,
/// and whether the statement may give it a value that lasts the session (false for `RESET`
/// and `SET LOCAL`).
fn each(sql: &[u8], mut f: impl FnMut(Box<str>, bool)) {
    for i in 0..sql.len() {
        if !matches!(sql[i] | 0x20, b's' | b'r') || (i > 0 && ident(sql[i - 1])) {
            continue;
        }
        let s = &sql[i..];
        let (set, reset) = (keyword(s, b"set"), keyword(s, b"reset"));
        let found = if let Some(rest) = set.or(reset) {
            let mut rest = skip_noise(rest);
            let mut lasts = set.is_some();
            if let Some(r) = keyword(rest, b"session") {
                rest = skip_noise(r);
            } else if let Some(r) = keyword(rest, b"local") {
                rest = skip_noise(r);
                lasts = false;
            }
            custom_name_at(rest).map(|(name, _)| (name, lasts))
        } else if s.len() >= 10 && s[..10].eq_ignore_ascii_case(b"set_config") {
            skip_noise(&s[10..])
                .strip_prefix(b"(")
                .and_then(|rest| string_at(skip_noise(rest)))
                .and_then(|(text, _)| custom_name(&text))
                .map(|name| (name, true))
        } else {
            None
        };
        if let Some((name, lasts)) = found {
            f(name, lasts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::names;

    fn got(sql: &str) -> Vec<String> {
        names(sql.as_bytes())
            .into_iter()
            .map(String::from)
            .collect()
    }

    #[test]
    fn finds_what_sets_and_resets_custom_settings() {
        assert_eq!(got("SET app.tenant = 'a'\0"), ["app.tenant"]);
        assert_eq!(got("set session App.Tenant to a\0"), ["app.tenant"]);
        assert_eq!(got("RESET app.tenant\0"), ["app.tenant"]);
        assert_eq!(
            got("select 1; SELECT pg_catalog.set_config( 'My.Opt', $1, false)\0"),
            ["my.opt"]
        );
        assert_eq!(got("SET \"App\".\"X\" = 1; set app.x = 2\0"), ["app.x"]);
        assert_eq!(
            got("begin; set local a.b = 1; set c.d = 2; commit\0"),
            ["a.b", "c.d"]
        );
        // Not custom settings, or not a name the pooler can know.
        assert!(got("SET search_path = x; reset all\0").is_empty());
        assert!(got("SELECT set_config($1, 'x', false)\0").is_empty());
        assert!(got("UPDATE t SET a = 1; select reset_x.y\0").is_empty());
        assert!(got("SET app.\"x y\" = 1\0").is_empty());
    }

    /// The name past `MAX_CUSTOM` a statement would make its client carry: not one it carries
    /// or named already, nor one it resets or sets for its transaction only.
    #[test]
    fn finds_the_setting_one_too_many() {
        use crate::params::{ClientParams, Values, MAX_CUSTOM};
        let mut values: Values = Default::default();
        for i in 0..MAX_CUSTOM - 2 {
            assert!(values.set_custom(&format!("app.s{i}"), Some("1".into())));
        }
        let mut params = ClientParams::new(values);
        let over = |sql: &str, params: &ClientParams| {
            super::one_too_many(sql.as_bytes(), params).map(String::from)
        };
        assert_eq!(over("SET app.a = 1; SET app.b = 1\0", &params), None);
        assert_eq!(
            over(
                "SET app.a = 1; SET app.s0 = 2; SET app.b = 1; SET app.c = 1\0",
                &params
            )
            .as_deref(),
            Some("app.c")
        );
        assert_eq!(
            over("select set_config('app.a', $1, false), set_config('App.B', 'x', false), set_config('app.c', 'y', false)\0", &params).as_deref(),
            Some("app.c")
        );
        assert_eq!(
            over("RESET app.a; RESET app.b; SET LOCAL app.c = 1\0", &params),
            None
        );
        assert_eq!(
            over("SET app.a = 1; SET app.a = 2; SET app.b = 3\0", &params),
            None
        );
        // Named since the last read-back: counted once, as carried.
        params.note_custom("app.a".into());
        assert_eq!(over("SET app.a = 1; SET app.b = 1\0", &params), None);
        assert_eq!(
            over("SET app.b = 1; SET session app.c = 1\0", &params).as_deref(),
            Some("app.c")
        );
    }
}
