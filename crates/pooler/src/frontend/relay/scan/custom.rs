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

/// Notes the custom settings' names a Bind gives the statement `sql` as parameters of
/// `set_config($n, ...)` (`bind`: the Bind's parameter part, after the statement's name), as
/// drivers that bind on the server send them.
#[cold]
#[inline(never)]
pub fn note_bound(sql: &[u8], bind: &[u8], params: &mut ClientParams) {
    for name in bound_names(sql, bind) {
        params.note_custom(name);
    }
}

/// The custom settings' names a Bind's parameters (`bind`) give the statement `sql` as
/// `set_config($n, ...)`'s name, in the order of the parameters' numbers in the text.
fn bound_names<'a>(sql: &[u8], bind: &'a [u8]) -> impl Iterator<Item = Box<str>> + 'a {
    name_parameters(sql).into_iter().filter_map(move |n| {
        bound(bind, n)
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(custom_name)
    })
}

/// The numbers of the parameters `sql` gives `set_config` as its name (`set_config($2, ...)`).
fn name_parameters(sql: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    for i in 0..sql.len() {
        let s = &sql[i..];
        if (i > 0 && ident(sql[i - 1]))
            || s.len() < 10
            || !s[..10].eq_ignore_ascii_case(b"set_config")
        {
            continue;
        }
        let Some(rest) = skip_noise(&s[10..]).strip_prefix(b"(") else {
            continue;
        };
        let Some(digits) = skip_noise(rest).strip_prefix(b"$") else {
            continue;
        };
        let end = digits
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(digits.len());
        if let Ok(n) = std::str::from_utf8(&digits[..end])
            .unwrap_or("")
            .parse::<usize>()
        {
            if n > 0 && !found.contains(&n) {
                found.push(n);
            }
        }
    }
    found
}

/// The value of parameter `n` (1-based) in a Bind's parameter part (`bind`: format codes,
/// then the values, each with its length); None for NULL or a malformed message. A text
/// parameter's bytes are its text in either format.
fn bound(bind: &[u8], n: usize) -> Option<&[u8]> {
    let u16_at = |b: &[u8], at: usize| -> Option<usize> {
        Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
    };
    let formats = u16_at(bind, 0)?;
    let mut at = 2 + 2 * formats;
    let count = u16_at(bind, at)?;
    if n > count {
        return None;
    }
    at += 2;
    for i in 1..=n {
        let len = i32::from_be_bytes(bind.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            if i == n {
                return None;
            }
            continue;
        }
        let value = bind.get(at..at + len as usize)?;
        if i == n {
            return Some(value);
        }
        at += len as usize;
    }
    None
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
/// `set_config`, local or not; not a `RESET` or a `SET LOCAL`) that the client of `params`
/// cannot carry besides what it carries and what its statements named since its last
/// read-back (`ClientParams::customs_named`): the one past `params::MAX_CUSTOM`. Read only
/// when the scan found a custom setting (`CUSTOM`), off the hot path.
#[cold]
#[inline(never)]
pub fn one_too_many(sql: &[u8], params: &ClientParams) -> Option<Box<str>> {
    if !may_hold_room(sql, params) {
        return None;
    }
    first_past_room(lasting(sql), params)
}

/// As `one_too_many`, for a Bind of the statement `sql` (a statement prepared while the client
/// had room, then bound once it had none): the names its text sets, then those the Bind's
/// parameters (`bind`, as for `note_bound`) give `set_config($n, ...)`.
#[cold]
#[inline(never)]
pub fn one_too_many_bound(sql: &[u8], bind: &[u8], params: &ClientParams) -> Option<Box<str>> {
    // A name parameter takes more of the text than a name does (`set_config($1`).
    if !may_hold_room(sql, params) {
        return None;
    }
    let mut names = lasting(sql);
    names.extend(bound_names(sql, bind));
    first_past_room(names, params)
}

/// False when `sql` is too short to name as many custom settings as the client of `params`
/// still has room for: each name the text sets takes at least 7 of its bytes (`set a.b`), so
/// such a text is not scanned (a `SET app.tenant` per request).
fn may_hold_room(sql: &[u8], params: &ClientParams) -> bool {
    let room = crate::params::MAX_CUSTOM.saturating_sub(params.customs_named());
    sql.len() / 7 >= room
}

/// The names `sql` may give a session-long value, in order.
fn lasting(sql: &[u8]) -> Vec<Box<str>> {
    let mut found = Vec::new();
    each(sql, |name, lasts| {
        if lasts {
            found.push(name);
        }
    });
    found
}

/// The first of `names` the client of `params` has no room for (module docs, `one_too_many`).
fn first_past_room(names: Vec<Box<str>>, params: &ClientParams) -> Option<Box<str>> {
    let mut new: Vec<Box<str>> = Vec::new();
    for name in names {
        if new.contains(&name) || !params.would_add_custom(&name) {
            continue;
        }
        if params.customs_named() + new.len() >= crate::params::MAX_CUSTOM {
            return Some(name);
        }
        new.push(name);
    }
    None
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

    /// A Bind's parameter part (after the statement's name): `formats`, then `values`.
    fn bind(formats: &[u16], values: &[Option<&str>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(formats.len() as u16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(values.len() as u16).to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0u16.to_be_bytes());
        b
    }

    /// A name bound as `set_config`'s first parameter is read from the Bind, in text or binary
    /// format; NULL, another parameter or a name that is no custom setting's is not noted.
    #[test]
    fn finds_names_bound_as_parameters_of_set_config() {
        use crate::params::ClientParams;
        let noted = |sql: &str, bind: &[u8]| {
            let mut params = ClientParams::new(Default::default());
            super::note_bound(sql.as_bytes(), bind, &mut params);
            params
                .customs_to_read()
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        let sql = "SELECT pg_catalog.set_config( $2, $1, false), SET_CONFIG($3,'x',true)\0";
        let values = [Some("v"), Some("App.Tenant"), None];
        assert_eq!(noted(sql, &bind(&[], &values)), ["app.tenant"]);
        assert_eq!(noted(sql, &bind(&[1], &values)), ["app.tenant"]);
        assert_eq!(
            noted(
                sql,
                &bind(&[0, 1, 0], &[Some("v"), Some("a.b"), Some("c.d")])
            ),
            ["a.b", "c.d"]
        );
        assert!(noted(sql, &bind(&[], &[Some("v"), Some("search_path"), None])).is_empty());
        assert!(noted(
            "select set_config($1, $2, false)\0",
            &bind(&[], &[None, Some("x")])
        )
        .is_empty());
        assert!(noted("select reset_config($1)\0", &bind(&[], &[Some("a.b")])).is_empty());
        // Cut short: nothing, and no panic.
        let whole = bind(&[], &[Some("v"), Some("a.b")]);
        for end in 0..whole.len() - 2 {
            assert!(noted(sql, &whole[..end]).is_empty(), "{end}");
        }
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
            over("set a.b=1;set c.d=1;set e.f=1\0", &params).as_deref(),
            Some("e.f")
        );
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

    /// At a Bind: the names the statement's text sets, then those bound as `set_config`'s
    /// name parameters, past `MAX_CUSTOM`.
    #[test]
    fn finds_the_setting_one_too_many_at_a_bind() {
        use crate::params::{ClientParams, Values, MAX_CUSTOM};
        let mut values: Values = Default::default();
        for i in 0..MAX_CUSTOM - 1 {
            assert!(values.set_custom(&format!("app.s{i}"), Some("1".into())));
        }
        let params = ClientParams::new(values);
        let over = |sql: &str, values: &[Option<&str>]| {
            super::one_too_many_bound(sql.as_bytes(), &bind(&[], values), &params).map(String::from)
        };
        // Room for one: the first new name fits, the second is refused.
        let sql = "select set_config($1, $2, false)\0";
        assert_eq!(over(sql, &[Some("app.new"), Some("v")]), None);
        assert_eq!(over(sql, &[Some("app.s0"), Some("v")]), None);
        assert_eq!(over(sql, &[Some("search_path"), Some("v")]), None);
        let two = "select set_config($1, 'v', false), set_config($2, 'v', false)\0";
        assert_eq!(
            over(two, &[Some("app.x"), Some("App.Y")]).as_deref(),
            Some("app.y")
        );
        assert_eq!(over(two, &[Some("app.x"), Some("app.x")]), None);
        // The text's own names count first.
        let mixed = "SET app.t = 1; select set_config($1, 'v', false)\0";
        assert_eq!(over(mixed, &[Some("app.u")]).as_deref(), Some("app.u"));
        assert_eq!(over(mixed, &[Some("app.t")]), None);
    }
}
