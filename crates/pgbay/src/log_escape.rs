//! Control characters escaped in every log line.
//!
//! Clients and tenants choose many of the values pgbay logs (user and pool names in a
//! StartupMessage, SQL text, API input). A newline in one of them would end the line early and
//! let the rest pass for a line of pgbay's own; an ESC would drive the reader's terminal. So every
//! field value and message is written through [`Escaping`], by [`EscapedFields`] in the fmt layer
//! and by the service logs' capture layer alike: `\n`, `\r` and `\t` as those two characters,
//! every other control character (C0, DEL, C1) and the Unicode line and paragraph separators as
//! `\u{..}`. Backslashes are left alone: values the fmt layer writes with `Debug` already have
//! theirs escaped, and escaping them again would garble every quoted string.

use std::fmt::{self, Write};

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;

/// A `fmt::Write` that escapes control characters on their way to `W`.
pub struct Escaping<W>(pub W);

fn must_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

impl<W: Write> Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut clean = 0;
        for (i, c) in s.char_indices() {
            if !must_escape(c) {
                continue;
            }
            self.0.write_str(&s[clean..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            clean = i + c.len_utf8();
        }
        self.0.write_str(&s[clean..])
    }
}

/// The fmt layer's field formatter: the default one's output (`name=value`, the message
/// unquoted), escaped. Span fields go through it too (the fmt layer caches them formatted).
/// Its output never carries ANSI styling, so that an escape sequence in a log line can only be
/// one that was escaped.
#[derive(Default)]
pub struct EscapedFields(DefaultFields);

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut plain = String::new();
        self.0.format_fields(Writer::new(&mut plain), fields)?;
        Escaping(&mut writer).write_str(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        Escaping(&mut out).write_str(s).unwrap();
        out
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("plain é \\ \"q\""), "plain é \\ \"q\"");
        assert_eq!(escaped("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(
            escaped("\u{1b}[31m\u{0}\u{7f}\u{85}\u{9b}\u{2028}"),
            "\\u{1b}[31m\\u{0}\\u{7f}\\u{85}\\u{9b}\\u{2028}"
        );
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_value_with_a_newline_cannot_forge_a_log_line() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(EscapedFields::default())
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let user = "x\nFORGED line";
            let span = tracing::info_span!("client", user = %user);
            span.in_scope(|| {
                tracing::info!(message = %format!("password failed for \"{user}\""), code = "28P01");
                tracing::info!(user = %user, dbg = ?user, "login \u{1b}[2J {user}");
            });
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(lines[0].contains(r#"client{user=x\nFORGED line}"#), "{out}");
        assert!(
            lines[0].contains(r#"password failed for "x\nFORGED line""#),
            "{out}"
        );
        assert!(
            // tracing-subscriber writes an ESC in a message as `\x1b` itself.
            lines[1].contains(r#"[2J x\nFORGED line user=x\nFORGED line dbg="x\nFORGED line""#),
            "{out}"
        );
    }
}
