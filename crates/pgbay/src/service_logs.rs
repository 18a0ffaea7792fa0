//! The pooler's log lines per service, for `POST /dbaas-service-logs/{name}` (unit `pgbouncer`).
//!
//! A tracing [`Capture`] layer, registered next to the fmt layer, keeps every pooler event at
//! INFO or above that concerns a service: the event carries a `service` field (listener, apply,
//! pool events) or happens inside a pooler span that does (the `client` span of every client
//! connection). Each is formatted as one line like the fmt layer writes it, without the time
//! and the target (`INFO client{addr=127.0.0.1:50312}: login refused SSL required: ...
//! code="28000"`; the `service` field itself is left out, the whole log is the service's), and
//! appended with its UTC time to the service's ring in [`ServiceLogs`]: the last
//! [`LINES_PER_SERVICE`] lines, each at most [`MAX_LINE`] bytes, for at most [`MAX_SERVICES`]
//! services (the ring written to least recently goes first; a deleted service's ring is
//! dropped). Control reads it through [`pgbay_control::logs::PoolerLogSource`].
//!
//! Control characters in values and messages are escaped as in pgbay's own log
//! (`log_escape`): a client-chosen user name cannot forge a line of a service's log.
//!
//! Only the pooler's events (target `pgbay_pooler…`) are kept: control's own events about a
//! service may carry internal details that the API does not show. The pooler never logs
//! passwords; as a second guard, a field whose name mentions a password or secret is written
//! as `<redacted>`.
//!
//! Cost: INFO events are per connection (login, refusal, disconnection), not per message; an
//! event takes a read lock on the map and its ring's mutex for one push.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use chrono::Utc;

use crate::log_escape::Escaping;
use pgbay_control::logs::{PoolerLine, PoolerLogSource};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Lines kept per service.
pub const LINES_PER_SERVICE: usize = 5_000;
/// Services with a ring at once.
pub const MAX_SERVICES: usize = 1_024;
/// Longest line kept, in bytes (longer ones are cut, marked with `…`).
pub const MAX_LINE: usize = 4_096;

/// The target prefix of the pooler's events.
const POOLER: &str = "pgbay_pooler";

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<PoolerLine>,
    /// Sequence number of its last line (which ring to drop when there are too many).
    last: u64,
}

/// The rings of every service.
#[derive(Default)]
pub struct ServiceLogs {
    rings: RwLock<HashMap<String, Arc<Mutex<Ring>>>>,
    seq: AtomicU64,
}

impl ServiceLogs {
    fn ring(&self, service: &str) -> Arc<Mutex<Ring>> {
        if let Some(r) = self
            .rings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
        {
            return r.clone();
        }
        let mut rings = self.rings.write().unwrap_or_else(|p| p.into_inner());
        if !rings.contains_key(service) && rings.len() >= MAX_SERVICES {
            let oldest = rings
                .iter()
                .min_by_key(|(_, r)| locked(r).last)
                .map(|(name, _)| name.clone());
            if let Some(name) = oldest {
                rings.remove(&name);
            }
        }
        rings.entry(service.to_string()).or_default().clone()
    }

    /// Appends `message` to the ring of `service`.
    pub fn push(&self, service: &str, mut message: String) {
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let ring = self.ring(service);
        let mut ring = locked(&ring);
        // Taken under the ring's lock: a ring's lines are in sequence order.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if ring.lines.len() >= LINES_PER_SERVICE {
            ring.lines.pop_front();
        }
        ring.lines.push_back(PoolerLine {
            seq,
            time: Utc::now(),
            message,
        });
        ring.last = seq;
    }
}

impl PoolerLogSource for ServiceLogs {
    fn lines(&self, service: &str) -> Vec<PoolerLine> {
        let ring = self
            .rings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned();
        ring.map(|r| locked(&r).lines.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn forget(&self, service: &str) {
        self.rings
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(service);
    }
}

/// The layer that fills a [`ServiceLogs`].
pub struct Capture {
    logs: Arc<ServiceLogs>,
}

impl Capture {
    /// A layer appending to `logs`; register it with [`Capture::filter`].
    pub fn new(logs: Arc<ServiceLogs>) -> Capture {
        Capture { logs }
    }

    /// What the layer needs to see, decided per callsite: the pooler's events at INFO or above
    /// and its spans that have a `service` field.
    pub fn filter() -> FilterFn<fn(&Metadata<'_>) -> bool> {
        fn wanted(meta: &Metadata<'_>) -> bool {
            meta.target().starts_with(POOLER)
                && if meta.is_span() {
                    meta.fields().field("service").is_some()
                } else {
                    *meta.level() <= Level::INFO
                }
        }
        FilterFn::new(wanted as fn(&Metadata<'_>) -> bool).with_max_level_hint(LevelFilter::INFO)
    }
}

/// A span's service and its other fields, kept in the span's extensions.
struct SpanFields {
    service: String,
    name: &'static str,
    fields: String,
}

/// Formats fields as the fmt layer does (`name=value`, strings quoted), setting `service`
/// and the message apart.
#[derive(Default)]
struct Fields {
    service: Option<String>,
    message: String,
    rest: String,
}

impl Fields {
    fn secret(field: &Field) -> bool {
        let name = field.name().to_ascii_lowercase();
        name.contains("password") || name.contains("secret")
    }

    /// A `message` field: the event's text, or a field named `message` besides it (the fmt
    /// layer writes both, unnamed).
    fn add_message(&mut self, value: std::fmt::Arguments<'_>) {
        if !self.message.is_empty() {
            self.message.push(' ');
        }
        let _ = write!(Escaping(&mut self.message), "{value}");
    }

    fn add(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        if !self.rest.is_empty() {
            self.rest.push(' ');
        }
        if Self::secret(field) {
            let _ = write!(self.rest, "{}=<redacted>", field.name());
        } else {
            let _ = write!(Escaping(&mut self.rest), "{}={}", field.name(), value);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "service" => self.service = Some(value.to_string()),
            "message" => self.add_message(format_args!("{value}")),
            _ => self.add(field, format_args!("{value:?}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "service" => self.service = Some(format!("{value:?}")),
            "message" => self.add_message(format_args!("{value:?}")),
            name if name.starts_with("log.") => {}
            _ => self.add(field, format_args!("{value:?}")),
        }
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        let (Some(service), Some(span)) = (f.service, ctx.span(id)) else {
            return;
        };
        span.extensions_mut().insert(SpanFields {
            service,
            name: attrs.metadata().name(),
            fields: f.rest,
        });
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let own = f.service.is_some();
        let mut service = f.service;
        let mut line = event.metadata().level().to_string();
        line.push(' ');
        if let Some(scope) = ctx.event_scope(event) {
            let mut any = false;
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(s) = ext.get::<SpanFields>() else {
                    continue;
                };
                // The innermost span's service wins, unless the event names its own.
                if !own {
                    service = Some(s.service.clone());
                }
                if any {
                    line.push(':');
                }
                any = true;
                line.push_str(s.name);
                if !s.fields.is_empty() {
                    let _ = write!(line, "{{{}}}", s.fields);
                }
            }
            if any {
                line.push_str(": ");
            }
        }
        let Some(service) = service else { return };
        line.push_str(&f.message);
        if !f.rest.is_empty() {
            if !f.message.is_empty() {
                line.push(' ');
            }
            line.push_str(&f.rest);
        }
        self.logs.push(&service, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn capture(logs: &Arc<ServiceLogs>) -> impl Subscriber + Send + Sync {
        tracing_subscriber::registry()
            .with(Capture::new(logs.clone()).with_filter(Capture::filter()))
    }

    fn messages(logs: &ServiceLogs, service: &str) -> Vec<String> {
        logs.lines(service).into_iter().map(|l| l.message).collect()
    }

    #[test]
    fn keeps_pooler_events_of_a_service_formatted() {
        let logs = Arc::new(ServiceLogs::default());
        tracing::subscriber::with_default(capture(&logs), || {
            tracing::info!(target: "pgbay_pooler::listener", service = %"svc-a", addr = %"127.0.0.1:5", "service listening");
            let span = tracing::info_span!(target: "pgbay_pooler::frontend::client", "client", service = %"svc-b", addr = %"10.0.0.1:4");
            span.in_scope(|| {
                tracing::info!(target: "pgbay_pooler::frontend::client", code = "28000", message = "SSL required", "login refused");
                tracing::debug!(target: "pgbay_pooler::frontend::client", "not kept: DEBUG");
                tracing::warn!(target: "pgbay_pooler::x", password = "hunter2", "kept, redacted");
            });
            // Not the pooler's, or no service.
            tracing::info!(target: "pgbay_control::services", service = %"svc-a", "service recorded");
            tracing::info!(target: "pgbay_pooler::x", "no service");
        });
        assert_eq!(
            messages(&logs, "svc-a"),
            ["INFO service listening addr=127.0.0.1:5"]
        );
        assert_eq!(
            messages(&logs, "svc-b"),
            [
                r#"INFO client{addr=10.0.0.1:4}: login refused SSL required code="28000""#,
                "WARN client{addr=10.0.0.1:4}: kept, redacted password=<redacted>",
            ]
        );
        let lines = logs.lines("svc-b");
        assert!(lines[0].seq < lines[1].seq && lines[0].time <= lines[1].time);
        assert!(logs.lines("nosuch").is_empty());
        logs.forget("svc-b");
        assert!(logs.lines("svc-b").is_empty());
    }

    #[test]
    fn control_characters_are_escaped() {
        let logs = Arc::new(ServiceLogs::default());
        tracing::subscriber::with_default(capture(&logs), || {
            let span = tracing::info_span!(target: "pgbay_pooler::frontend::client", "client", service = %"svc", user = %"u\r\nFORGED");
            span.in_scope(|| {
                tracing::info!(target: "pgbay_pooler::frontend::client", message = "for user \"x\nFORGED line\"", "login refused");
            });
        });
        assert_eq!(
            messages(&logs, "svc"),
            [r#"INFO client{user=u\r\nFORGED}: login refused for user "x\nFORGED line""#]
        );
    }

    #[test]
    fn rings_are_bounded() {
        let logs = ServiceLogs::default();
        for i in 0..LINES_PER_SERVICE + 10 {
            logs.push("a", format!("line {i}"));
        }
        let a = logs.lines("a");
        assert_eq!(a.len(), LINES_PER_SERVICE);
        assert_eq!(a[0].message, "line 10");
        logs.push("a", "é".repeat(MAX_LINE));
        let long = &logs.lines("a")[LINES_PER_SERVICE - 1].message;
        assert!(long.len() <= MAX_LINE + '…'.len_utf8() && long.ends_with('…'));
        for i in 0..MAX_SERVICES {
            logs.push(&format!("s{i}"), "x".into());
        }
        // "a" was written to least recently: its ring went first.
        assert!(logs.lines("a").is_empty());
        assert_eq!(logs.lines("s0").len(), 1);
        assert_eq!(logs.rings.read().unwrap().len(), MAX_SERVICES);
    }
}
