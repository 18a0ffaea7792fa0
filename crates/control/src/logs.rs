//! Service logs for `POST /dbaas-service-logs/{name}`: the service's PostgreSQL log lines and its
//! pooler log lines, merged into one list ordered by time.
//!
//! - PostgreSQL (`unit` `postgresql`): the lines of the local cluster's server log
//!   (`postgresql.log` in the service directory, written by pg_ctl, mode 0600). Only the last
//!   [`WINDOW_BYTES`] of the file are read. An entry's time is the timestamp PostgreSQL's
//!   `log_line_prefix` put at the start of the line (`%m`/`%t`), in RFC 3339 when the log's time
//!   zone is UTC (pgbay sets `log_timezone = 'UTC'`); a line without one (a prefix without a
//!   time, or a continuation line) takes the time of the line before it. An entry is identified
//!   by the byte position of its line in the file. A service on an external server has none.
//! - Pooler (`unit` `pgbouncer`, the name Exoscale gives its pooler's unit): the pooler's own
//!   events about the service (logins, refusals, disconnections, listener and pool changes).
//!   The pooler logs with `tracing` into the binary, which control cannot import: the binary
//!   installs a [`PoolerLogSource`] with [`Control::set_pooler_logs`] (a bounded ring of recent
//!   lines per service) and its lines are identified by their sequence number. Without one,
//!   there are no pooler entries.
//!
//! - pgBackRest (`unit` `pgbackrest`): pgbay's record of the service's backups and WAL archiving
//!   (a backup taken or failed with pgBackRest's own words, archive failures PostgreSQL reported),
//!   a bounded ring per service kept in memory by control, identified by sequence number.
//!
//! Order and paging: every entry has a [`Position`] (its time, then its unit, then its identity
//! within the unit), a total order that does not depend on what else is in the log. The
//! document's opaque `offset` is a position written as text ([`Position`]'s `Display`); paging
//! with it returns the entries after it (`asc`) or before it (`desc`), exactly, whether or not
//! the entry it names is still in the log. A plain number, the offsets pgbay gave before pooler
//! lines were included, is still read as a byte position in the PostgreSQL log.

use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex as StdMutex};

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

use crate::control::{locked, Control};
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

/// Where an entry comes from (the document's `unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    /// The service's PostgreSQL server.
    Postgresql,
    /// pgbay's pooler.
    Pgbouncer,
    /// Backups and WAL archiving (pgBackRest).
    Pgbackrest,
}

impl Unit {
    /// The document's `unit`.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Postgresql => "postgresql",
            Unit::Pgbouncer => "pgbouncer",
            Unit::Pgbackrest => "pgbackrest",
        }
    }

    fn tag(self) -> char {
        match self {
            Unit::Postgresql => 'p',
            Unit::Pgbouncer => 'b',
            Unit::Pgbackrest => 'k',
        }
    }
}

/// An entry's place in the merged log: by time (an entry without a readable time first), then
/// unit, then its identity in its unit (byte position or sequence number).
///
/// Written as `{tag}{id}@{unix nanoseconds}` (`p` for PostgreSQL, `b` for the pooler), or
/// `{tag}{id}` without a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    at: Option<i64>,
    unit: Unit,
    id: u64,
}

impl Position {
    fn new(at: Option<DateTime<Utc>>, unit: Unit, id: u64) -> Position {
        Position {
            at: at.and_then(|t| t.timestamp_nanos_opt()),
            unit,
            id,
        }
    }

    fn parse(s: &str) -> Option<Position> {
        let mut chars = s.chars();
        let unit = match chars.next()? {
            'p' => Unit::Postgresql,
            'b' => Unit::Pgbouncer,
            'k' => Unit::Pgbackrest,
            _ => return None,
        };
        let rest = chars.as_str();
        let (id, at) = match rest.split_once('@') {
            Some((id, at)) => (id, Some(at)),
            None => (rest, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(id) || !at.is_none_or(digits) {
            return None;
        }
        Some(Position {
            at: match at {
                Some(a) => Some(a.parse().ok()?),
                None => None,
            },
            unit,
            id: id.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.unit.tag(), self.id)?;
        if let Some(at) = self.at {
            write!(f, "@{at}")?;
        }
        Ok(())
    }
}

/// The document's `offset`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// A position pgbay gave.
    At(Position),
    /// A plain number: a byte position in the PostgreSQL log (offsets of earlier pgbay
    /// versions, which only served that log).
    Bytes(u64),
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// At most this many entries (1..=500, default 100).
    pub limit: Option<u32>,
    /// Continue after this entry (an offset a previous answer gave).
    pub offset: Option<Offset>,
    /// Order.
    pub sort: SortOrder,
}

impl LogQuery {
    /// Parses the document's opaque `offset`.
    pub fn parse_offset(field: &str, s: &str) -> Result<Offset, InputError> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = s.parse() {
                return Ok(Offset::Bytes(n));
            }
        }
        Position::parse(s)
            .map(Offset::At)
            .ok_or_else(|| InputError::new(field, format!("not an offset pgbay gave: {s:?}")))
    }
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its place in the merged log; its text is the document's `offset`.
    pub position: Position,
    /// Its unit.
    pub unit: Unit,
    /// Time of the line (RFC 3339 in UTC, or as the log wrote it).
    pub time: String,
    /// The line, without its timestamp.
    pub message: String,
}

/// A page of entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogPage {
    /// The entries.
    pub entries: Vec<LogEntry>,
    /// Position of the first (oldest) entry of the merged log.
    pub first_offset: Option<Position>,
}

/// One pooler log line of a service, as the binary keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolerLine {
    /// Increases with every line the source keeps (never reused while the process runs).
    pub seq: u64,
    /// When it was logged.
    pub time: DateTime<Utc>,
    /// The formatted line (level, message, fields), without its time.
    pub message: String,
}

/// Where the pooler's lines come from: filled by the binary, which sees the pooler's logging.
pub trait PoolerLogSource: Send + Sync {
    /// The lines kept for service `service`, oldest first.
    fn lines(&self, service: &str) -> Vec<PoolerLine>;

    /// Drops the lines of `service`, which was deleted (a new service of that name starts
    /// with an empty log).
    fn forget(&self, service: &str) {
        let _ = service;
    }
}

/// The pooler-log hook of [`Control`].
#[derive(Default)]
pub(crate) struct Logs {
    pooler: StdMutex<Option<Arc<dyn PoolerLogSource>>>,
    /// pgBackRest events by service, oldest first, at most [`BACKREST_LINES`] each.
    backrest: StdMutex<std::collections::HashMap<String, std::collections::VecDeque<PoolerLine>>>,
    backrest_seq: std::sync::atomic::AtomicU64,
}

/// How many pgBackRest events are kept per service.
const BACKREST_LINES: usize = 200;

/// An RFC 3339 UTC time, as [`split_time`] and [`pooler_entries`] write it.
fn instant(time: &str) -> Option<DateTime<Utc>> {
    let t = time.strip_suffix('Z')?;
    let fmt = if t.contains('.') {
        "%Y-%m-%dT%H:%M:%S%.f"
    } else {
        "%Y-%m-%dT%H:%M:%S"
    };
    NaiveDateTime::parse_from_str(t, fmt)
        .ok()
        .map(|n| n.and_utc())
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

/// The PostgreSQL entries of `text`, whose first byte is at `base` in the file, in file order.
fn entries(text: &str, base: u64) -> Vec<LogEntry> {
    let mut out = Vec::new();
    let mut pos = base;
    let mut last_time = String::new();
    let mut last_at = None;
    for line in text.split_inclusive('\n') {
        let offset = pos;
        pos += line.len() as u64;
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        let (time, message) = match split_time(line) {
            Some((t, rest)) => {
                last_at = instant(&t);
                last_time = t.clone();
                (t, rest.to_string())
            }
            None => (last_time.clone(), line.to_string()),
        };
        out.push(LogEntry {
            position: Position::new(last_at, Unit::Postgresql, offset),
            unit: Unit::Postgresql,
            time,
            message,
        });
    }
    out
}

/// The pooler's (or pgBackRest's) entries.
fn pooler_entries(lines: Vec<PoolerLine>) -> Vec<LogEntry> {
    unit_entries(lines, Unit::Pgbouncer)
}

fn unit_entries(lines: Vec<PoolerLine>, unit: Unit) -> Vec<LogEntry> {
    lines
        .into_iter()
        .map(|l| LogEntry {
            position: Position::new(Some(l.time), unit, l.seq),
            unit,
            time: l.time.to_rfc3339_opts(SecondsFormat::Millis, true),
            message: l.message,
        })
        .collect()
}

/// Both units' entries in one list, by position.
fn merge(mut postgresql: Vec<LogEntry>, pooler: Vec<LogEntry>) -> Vec<LogEntry> {
    postgresql.extend(pooler);
    postgresql.sort_by_key(|e| e.position);
    postgresql
}

/// Where a page starts, `offset` resolved against the log.
enum Start {
    /// No offset: the newest (`desc`) or oldest (`asc`) entries.
    Ends,
    /// After (`asc`) or before (`desc`) this position.
    At(Position),
    /// A byte position before every PostgreSQL entry still read.
    BeforeAll,
}

fn start(all: &[LogEntry], offset: Option<Offset>) -> Start {
    match offset {
        None => Start::Ends,
        Some(Offset::At(p)) => Start::At(p),
        // The PostgreSQL entry holding that byte (the last one starting at or before it).
        Some(Offset::Bytes(n)) => all
            .iter()
            .filter(|e| e.unit == Unit::Postgresql && e.position.id <= n)
            .max_by_key(|e| e.position.id)
            .map_or(Start::BeforeAll, |e| Start::At(e.position)),
    }
}

/// A page of `all` (in position order) for `q`.
fn page(all: Vec<LogEntry>, q: &LogQuery) -> LogPage {
    let limit = q.limit.unwrap_or(100) as usize;
    let first_offset = all.first().map(|e| e.position);
    let from = start(&all, q.offset);
    let entries = match q.sort {
        SortOrder::Asc => {
            let skip = match from {
                Start::Ends | Start::BeforeAll => 0,
                Start::At(p) => all.partition_point(|e| e.position <= p),
            };
            all.into_iter().skip(skip).take(limit).collect()
        }
        SortOrder::Desc => {
            let end = match from {
                Start::Ends => all.len(),
                Start::BeforeAll => 0,
                Start::At(p) => all.partition_point(|e| e.position < p),
            };
            let mut v = all;
            v.truncate(end);
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
    /// Installs the source of pooler log lines (the binary's capture of the pooler's logging).
    pub fn set_pooler_logs(&self, source: Arc<dyn PoolerLogSource>) {
        *locked(&self.inner.logs.pooler) = Some(source);
    }

    /// Records a pgBackRest event of `service` (unit `pgbackrest` of its logs).
    pub(crate) fn backrest_event(&self, service: &str, message: String) {
        let seq = self
            .inner
            .logs
            .backrest_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut all = locked(&self.inner.logs.backrest);
        let ring = all.entry(service.to_string()).or_default();
        if ring.len() == BACKREST_LINES {
            ring.pop_front();
        }
        ring.push_back(PoolerLine {
            seq,
            time: Utc::now(),
            message,
        });
    }

    /// Drops the pooler lines of a deleted service.
    pub(crate) fn forget_pooler_logs(&self, service: &str) {
        locked(&self.inner.logs.backrest).remove(service);
        if let Some(p) = locked(&self.inner.logs.pooler).clone() {
            p.forget(service);
        }
    }

    /// `POST /dbaas-service-logs/{name}`: entries of the service's PostgreSQL log (a local
    /// cluster's) and of the pooler, merged.
    pub async fn service_logs(
        &self,
        service: &ServiceName,
        q: LogQuery,
    ) -> Result<LogPage, ControlError> {
        let s = self.existing(service).await?;
        let source = locked(&self.inner.logs.pooler).clone();
        let pooler = source.map(|p| p.lines(&s.name)).unwrap_or_default();
        let backrest: Vec<PoolerLine> = locked(&self.inner.logs.backrest)
            .get(&s.name)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        // pgbay cannot read an external server's log; its pooler lines are still there.
        let path = self.provisioner(&s).log_path(&s.name);
        let found = tokio::task::spawn_blocking(move || {
            let postgresql = match path {
                Some(path) => {
                    let (text, base) = read_window(&path)?;
                    entries(&text, base)
                }
                None => Vec::new(),
            };
            let mut others = pooler_entries(pooler);
            others.extend(unit_entries(backrest, Unit::Pgbackrest));
            Ok::<_, std::io::Error>(page(merge(postgresql, others), &q))
        })
        .await?
        .map_err(|e| ControlError::internal(format!("reading the server log: {e}")))?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-11-27 11:20:00.123 UTC [42] LOG:  starting PostgreSQL 15\n\
                       2026-11-27 11:20:01.000 UTC [42] LOG:  ready\n\
                       \tcontinued\n\
                       pid=7,user=a LOG:  no time here\n";

    fn at(s: &str) -> DateTime<Utc> {
        instant(s).unwrap()
    }

    fn line(seq: u64, time: &str, message: &str) -> PoolerLine {
        PoolerLine {
            seq,
            time: at(time),
            message: message.to_string(),
        }
    }

    fn query(limit: u32, offset: Option<&str>, sort: SortOrder) -> LogQuery {
        LogQuery {
            limit: Some(limit),
            offset: offset.map(|o| LogQuery::parse_offset("offset", o).unwrap()),
            sort,
        }
    }

    fn messages(p: &LogPage) -> Vec<&str> {
        p.entries.iter().map(|e| e.message.as_str()).collect()
    }

    /// Every entry of `all` by following `offset` from page to page.
    fn walk(all: &[LogEntry], limit: u32, sort: SortOrder) -> Vec<String> {
        let mut out = Vec::new();
        let mut offset = None::<String>;
        loop {
            let p = page(all.to_vec(), &query(limit, offset.as_deref(), sort));
            let Some(last) = p.entries.last() else {
                return out;
            };
            offset = Some(last.position.to_string());
            out.extend(p.entries.iter().map(|e| e.message.clone()));
        }
    }

    #[test]
    fn lines_times_and_pages() {
        let all = entries(LOG, 100);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].time, "2026-11-27T11:20:00.123Z");
        assert_eq!(all[0].message, "[42] LOG:  starting PostgreSQL 15");
        assert_eq!(all[0].position.id, 100);
        assert_eq!(all[0].unit, Unit::Postgresql);
        assert_eq!(all[2].time, "2026-11-27T11:20:01.000Z");
        assert_eq!(all[2].position.at, all[1].position.at);
        let all = merge(all, Vec::new());
        let desc = page(all.clone(), &query(2, None, SortOrder::Desc));
        assert_eq!(
            messages(&desc),
            ["pid=7,user=a LOG:  no time here", "\tcontinued"]
        );
        let next = page(
            all.clone(),
            &query(
                2,
                Some(&desc.entries[1].position.to_string()),
                SortOrder::Desc,
            ),
        );
        assert_eq!(next.entries[0].message, "[42] LOG:  ready");
        assert_eq!(next.entries[1].position.id, 100);
        let first = all[0].position.to_string();
        let asc = page(all, &query(1, Some(&first), SortOrder::Asc));
        assert_eq!(asc.entries[0].message, "[42] LOG:  ready");
        assert_eq!(asc.first_offset.map(|p| p.to_string()), Some(first));
    }

    #[test]
    fn pooler_lines_merge_by_time() {
        let pooler = pooler_entries(vec![
            line(7, "2026-11-27T11:19:59.500Z", "pooler before"),
            line(8, "2026-11-27T11:20:00.500Z", "pooler between"),
            // Same instant as the PostgreSQL line: PostgreSQL first.
            line(9, "2026-11-27T11:20:01Z", "pooler same time"),
            line(10, "2026-11-27T11:20:02.250Z", "pooler last"),
        ]);
        assert_eq!(pooler[0].time, "2026-11-27T11:19:59.500Z");
        assert_eq!(pooler[2].time, "2026-11-27T11:20:01.000Z");
        let all = merge(entries(LOG, 0), pooler);
        let order: Vec<_> = all.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            order,
            [
                "pooler before",
                "[42] LOG:  starting PostgreSQL 15",
                "pooler between",
                "[42] LOG:  ready",
                "\tcontinued",
                "pid=7,user=a LOG:  no time here",
                "pooler same time",
                "pooler last",
            ]
        );
        assert_eq!(all[0].unit, Unit::Pgbouncer);
        let desc = page(all.clone(), &query(3, None, SortOrder::Desc));
        assert_eq!(
            messages(&desc),
            [
                "pooler last",
                "pooler same time",
                "pid=7,user=a LOG:  no time here"
            ]
        );
        assert_eq!(desc.first_offset, Some(all[0].position));
    }

    #[test]
    fn paging_walks_every_entry_once_in_both_orders() {
        let pooler = pooler_entries(
            (0..9)
                .map(|i| line(i, &format!("2026-11-27T11:20:0{i}.500Z"), &format!("b{i}")))
                .collect(),
        );
        let mut log = String::new();
        for i in 0..9 {
            log.push_str(&format!("2026-11-27 11:20:0{i}.000 UTC p{i}\n"));
        }
        let all = merge(entries(&log, 0), pooler);
        let asc: Vec<String> = all.iter().map(|e| e.message.clone()).collect();
        assert_eq!(asc.len(), 18);
        for limit in [1, 2, 4, 5, 18, 100] {
            assert_eq!(walk(&all, limit, SortOrder::Asc), asc, "limit {limit}");
            let mut desc = asc.clone();
            desc.reverse();
            assert_eq!(walk(&all, limit, SortOrder::Desc), desc, "limit {limit}");
        }
    }

    #[test]
    fn offsets_stay_exact_when_the_log_moves() {
        let mk = |seqs: std::ops::Range<u64>| {
            pooler_entries(
                seqs.map(|i| line(i, &format!("2026-11-27T11:20:{i:02}Z"), &format!("b{i}")))
                    .collect(),
            )
        };
        let before = merge(Vec::new(), mk(0..10));
        let p1 = page(before, &query(3, None, SortOrder::Desc));
        assert_eq!(messages(&p1), ["b9", "b8", "b7"]);
        let offset = p1.entries[2].position.to_string();
        // New lines came in and old ones (including the one the offset names) left the ring.
        let after = merge(Vec::new(), mk(8..15));
        let desc = page(after.clone(), &query(3, Some(&offset), SortOrder::Desc));
        assert!(desc.entries.is_empty(), "{:?}", messages(&desc));
        let asc = page(after, &query(3, Some(&offset), SortOrder::Asc));
        assert_eq!(messages(&asc), ["b8", "b9", "b10"]);
        let now = merge(Vec::new(), mk(0..15));
        let desc = page(now, &query(3, Some(&offset), SortOrder::Desc));
        assert_eq!(messages(&desc), ["b6", "b5", "b4"]);
    }

    #[test]
    fn byte_offsets_of_earlier_versions_still_page() {
        let all = merge(
            entries(LOG, 0),
            pooler_entries(vec![line(1, "2026-11-27T11:20:00.500Z", "pooler")]),
        );
        let ready = all.iter().find(|e| e.message.ends_with("ready")).unwrap();
        let bytes = ready.position.id.to_string();
        let desc = page(all.clone(), &query(2, Some(&bytes), SortOrder::Desc));
        assert_eq!(
            messages(&desc),
            ["pooler", "[42] LOG:  starting PostgreSQL 15"]
        );
        let asc = page(all.clone(), &query(1, Some(&bytes), SortOrder::Asc));
        assert_eq!(messages(&asc), ["\tcontinued"]);
        // Inside a line: that line's entry.
        let inside = (ready.position.id + 3).to_string();
        let asc = page(all.clone(), &query(1, Some(&inside), SortOrder::Asc));
        assert_eq!(messages(&asc), ["\tcontinued"]);
        // Before the window: everything after, nothing before.
        let late = merge(entries(LOG, 1000), Vec::new());
        assert_eq!(
            page(late.clone(), &query(9, Some("5"), SortOrder::Asc))
                .entries
                .len(),
            4
        );
        assert!(page(late, &query(9, Some("5"), SortOrder::Desc))
            .entries
            .is_empty());
    }

    #[test]
    fn offsets_are_parsed_strictly() {
        for p in [
            Position::new(Some(at("2026-11-27T11:20:00.123Z")), Unit::Pgbouncer, 42),
            Position::new(None, Unit::Postgresql, 0),
        ] {
            assert_eq!(
                LogQuery::parse_offset("offset", &p.to_string()).unwrap(),
                Offset::At(p)
            );
        }
        assert_eq!(
            LogQuery::parse_offset("offset", "17").unwrap(),
            Offset::Bytes(17)
        );
        for bad in [
            "",
            "abc",
            "p",
            "b@1",
            "p1@",
            "p1@x",
            "x1@2",
            "p-1",
            "p1@-2",
            "99999999999999999999",
        ] {
            assert!(LogQuery::parse_offset("offset", bad).is_err(), "{bad:?}");
        }
    }
}
