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
    for i in 0..sql.len() {
        if !matches!(sql[i] | 0x20, b's' | b'r') || (i > 0 && ident(sql[i - 1])) {
            continue;
        }
        let s = &sql[i..];
        let name = if let Some(rest) = keyword(s, b"set").or_else(|| keyword(s, b"reset")) {
            let mut rest = skip_noise(rest);
            if let Some(r) = keyword(rest, b"session").or_else(|| keyword(rest, b"local")) {
                rest = skip_noise(r);
            }
            custom_name_at(rest).map(|(name, _)| name)
        } else if s.len() >= 10 && s[..10].eq_ignore_ascii_case(b"set_config") {
            skip_noise(&s[10..])
                .strip_prefix(b"(")
                .and_then(|rest| string_at(skip_noise(rest)))
                .and_then(|(text, _)| custom_name(&text))
        } else {
            None
        };
        if let Some(name) = name {
            if !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found
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
}
