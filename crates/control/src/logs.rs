//! Service logs for `POST /dbaas-service-logs/{name}`: the lines of the local cluster's server log
//! (`postgresql.log` in the service directory, written by pg_ctl, mode 0600). The pooler's log
//! lines are not per service (they go to pgbay's own output) and are not included.
//!
//! Each line is one entry; its offset (the opaque `offset` of the document) is the byte position
//! of the line in the file. Only the last [`WINDOW_BYTES`] of the file are read. An entry's time
//! is the timestamp PostgreSQL's `log_line_prefix` put at the start of the line (`%m`/`%t`),
//! in RFC 3339 when the log's time zone is UTC; a line without one (a prefix without a time, or a
//! continuation line) takes the time of the line before it.

use std::io::{Read, Seek, SeekFrom};

use crate::control::Control;
use crate::error::ControlError;
use crate::input::{InputError, ServiceName};

/// How much of the end of a log file is read.
pub const WINDOW_BYTES: u64 = 8 << 20;

/// Order of the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// Oldest first.
    Asc,
    /// Newest first (the document's default).
    #[default]
    Desc,
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// At most this many entries (1..=500, default 100).
    pub limit: Option<u32>,
    /// Continue after this entry (an offset a previous answer gave).
    pub offset: Option<u64>,
    /// Order.
    pub sort: SortOrder,
}

impl LogQuery {
    /// Parses the document's opaque `offset`.
    pub fn parse_offset(field: &str, s: &str) -> Result<u64, InputError> {
        s.parse()
            .map_err(|_| InputError::new(field, format!("not an offset pgbay gave: {s:?}")))
    }
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Byte position of the line.
    pub offset: u64,
    /// Time of the line.
    pub time: String,
    /// The line, without its timestamp.
    pub message: String,
}

/// A page of entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogPage {
    /// The entries.
    pub entries: Vec<LogEntry>,
    /// Offset of the first entry of the log.
    pub first_offset: Option<u64>,
}

/// Splits a leading `YYYY-MM-DD HH:MM:SS[.fff] ZONE` off `line`.
fn split_time(line: &str) -> Option<(String, &str)> {
    let b = line.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let shape = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b' ')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut end = 19;
    if b.get(19) == Some(&b'.') {
        end = 20;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
    }
    let stamp = &line[..end];
    let rest = line[end..].trim_start();
    let (zone, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let time = if matches!(zone, "UTC" | "GMT" | "Z") {
        format!("{}T{}Z", &stamp[..10], &stamp[11..])
    } else {
        format!("{stamp} {zone}")
    };
    Some((time, rest))
}

/// The entries of `text`, whose first byte is at `base` in the file.
fn entries(text: &str, base: u64) -> Vec<LogEntry> {
    let mut out = Vec::new();
    let mut pos = base;
    let mut last_time = String::new();
    for line in text.split_inclusive('\n') {
        let offset = pos;
        pos += line.len() as u64;
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        let (time, message) = match split_time(line) {
            Some((t, rest)) => {
                last_time = t.clone();
                (t, rest.to_string())
            }
            None => (last_time.clone(), line.to_string()),
        };
        out.push(LogEntry {
            offset,
            time,
            message,
        });
    }
    out
}

/// A page of `all` for `q`.
fn page(all: Vec<LogEntry>, q: &LogQuery) -> LogPage {
    let limit = q.limit.unwrap_or(100) as usize;
    let first_offset = all.first().map(|e| e.offset);
    let entries = match q.sort {
        SortOrder::Asc => all
            .into_iter()
            .filter(|e| q.offset.is_none_or(|o| e.offset > o))
            .take(limit)
            .collect(),
        SortOrder::Desc => {
            let mut v: Vec<LogEntry> = all
                .into_iter()
                .filter(|e| q.offset.is_none_or(|o| e.offset < o))
                .collect();
            let keep = v.len().saturating_sub(limit);
            v.drain(..keep);
            v.reverse();
            v
        }
    };
    LogPage {
        entries,
        first_offset,
    }
}

fn read_window(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(WINDOW_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(WINDOW_BYTES).read_to_end(&mut buf)?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    let mut base = start;
    if start > 0 {
        // Drop the partial first line of the window.
        let cut = text.find('\n').map_or(text.len(), |i| i + 1);
        base += cut as u64;
        text.drain(..cut);
    }
    Ok((text, base))
}

impl Control {
    /// `POST /dbaas-service-logs/{name}`: entries of the service's PostgreSQL log.
    pub async fn service_logs(
        &self,
        service: &ServiceName,
        q: LogQuery,
    ) -> Result<LogPage, ControlError> {
        let s = self.existing(service).await?;
        if s.external_host.is_some() {
            return Err(ControlError::Conflict(format!(
                "service {service} runs on an external server whose log pgbay cannot read"
            )));
        }
        let path = self.inner.prov.log_path(&s.name);
        let (text, base) = tokio::task::spawn_blocking(move || read_window(&path))
            .await?
            .map_err(|e| ControlError::internal(format!("reading the server log: {e}")))?;
        Ok(page(entries(&text, base), &q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-11-27 11:20:00.123 UTC [42] LOG:  starting PostgreSQL 15\n\
                       2026-11-27 11:20:01.000 UTC [42] LOG:  ready\n\
                       \tcontinued\n\
                       pid=7,user=a LOG:  no time here\n";

    #[test]
    fn lines_times_and_pages() {
        let all = entries(LOG, 100);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].time, "2026-11-27T11:20:00.123Z");
        assert_eq!(all[0].message, "[42] LOG:  starting PostgreSQL 15");
        assert_eq!(all[0].offset, 100);
        assert_eq!(all[2].time, "2026-11-27T11:20:01.000Z");
        let desc = page(
            all.clone(),
            &LogQuery {
                limit: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(desc.entries.len(), 2);
        assert_eq!(desc.entries[0].message, "pid=7,user=a LOG:  no time here");
        let next = page(
            all.clone(),
            &LogQuery {
                limit: Some(2),
                offset: Some(desc.entries[1].offset),
                ..Default::default()
            },
        );
        assert_eq!(next.entries[0].message, "[42] LOG:  ready");
        assert_eq!(next.entries[1].offset, 100);
        let asc = page(
            all,
            &LogQuery {
                limit: Some(1),
                offset: Some(100),
                sort: SortOrder::Asc,
            },
        );
        assert_eq!(asc.entries[0].message, "[42] LOG:  ready");
        assert_eq!(asc.first_offset, Some(100));
    }
}
