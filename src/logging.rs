//! Logging set-up: JSON lines for machines, text for people; the filter comes from `PGWAY_LOG`
//! or `RUST_LOG` (default `info`).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::Subscriber;
use tracing_log::NormalizeEvent;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::app::config::LogFormat;

/// Library log targets capped at info, whatever the filter asks for.
const SECRET_BEARING_TARGETS: &[&str] = &[
    "tokio_postgres=info",
    "postgres_protocol=info",
    "h2=info",
    "hyper=info",
    "hyper_util=info",
    "tonic=info",
    "tower=info",
    "rustls=info",
];

/// Installs the global subscriber. `format` defaults to JSON when stdout is not a terminal.
pub fn init(format: Option<LogFormat>) {
    let filter = filter();
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    // A second init (tests start several gateways in one process) keeps the first subscriber.
    match format {
        LogFormat::Json => {
            let _ = tracing_subscriber::registry()
                .with(json())
                .with(filter)
                .try_init();
        }
        LogFormat::Text => {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
        }
    }
}

/// `PGWAY_LOG`, else `RUST_LOG`, else `info`; with the secret-bearing targets capped.
fn filter() -> EnvFilter {
    capped(
        EnvFilter::try_from_env("PGWAY_LOG")
            .or_else(|_| EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| EnvFilter::new("info")),
    )
}

/// `filter` with the secret-bearing targets capped at info.
fn capped(mut filter: EnvFilter) -> EnvFilter {
    // Below info these libraries print what must never reach a log: tokio-postgres the
    // parameter values of every statement, the HTTP/2 stack request headers (authorization).
    // pgway's own events say what every call and connection did without them.
    for directive in SECRET_BEARING_TARGETS {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// JSON lines: the event's fields at the top level, with `timestamp`, `level`, `target`, the
/// current `span` and the `spans` list, as `tracing_subscriber`'s JSON format writes them, but
/// with the keys in alphabetical order, and with an event's explicit parent (a call's `call
/// finished` line, written after its future returned) in `spans` as well as in `span`.
///
/// `json-subscriber` rather than that format: it keeps a span's fields as JSON values, where
/// `tracing_subscriber` stores them as text and parses that text back at every line. A gRPC
/// call's span, its caller recorded later and its `call finished` line cost about 50 k
/// instructions that way and 21.6 k with `json-subscriber` (callgrind, 10,000 of them); a
/// point select's whole call at `info`, at 100 callers, 108 k against 91 k.
fn json<S>() -> json_subscriber::fmt::Layer<S>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    let mut layer = json_subscriber::fmt::layer()
        .flatten_event(true)
        .with_timer(Timestamp);
    // A record of the `log` crate (rustls, tokio-postgres' notices) arrives as an event of
    // tracing-log's own callsite, whose target is `log`: name the record's own target, as
    // `tracing_subscriber`'s format does. (Its `log.*` fields stay: file, line, module.)
    layer
        .inner_layer_mut()
        .add_dynamic_field("target", |event, _| {
            let target = match event.normalized_metadata() {
                Some(metadata) => metadata.target().to_owned(),
                None => event.metadata().target().to_owned(),
            };
            Some(target)
        });
    layer
}

/// A line's `timestamp`: RFC 3339 in UTC with microseconds (`2026-12-07T17:15:40.123456Z`),
/// as `tracing_subscriber`'s `SystemTime` writes it, but with the date and the time of day
/// formatted once a second on each thread and only the microseconds at every line. Working
/// out the date and formatting it were 2.3 k of a gRPC call's 91 k instructions at `info`
/// with JSON logs, where every call writes a line; this writes it in 0.2 k (callgrind, point
/// select, 100 callers: 91.1 k a call before, 89.0 k after).
#[derive(Debug, Clone, Copy)]
struct Timestamp;

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        thread_local! {
            static SECOND: RefCell<Second> = const { RefCell::new(Second::new()) };
        }
        // A clock set before 1970 reads as 1970: nothing pgway logs is dated then.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let written = SECOND.try_with(|second| second.borrow_mut().write(since, w));
        // Only while the thread's locals are torn down is the cache gone.
        written.unwrap_or_else(|_| tracing_subscriber::fmt::time::SystemTime.format_time(w))
    }
}

/// The formatted second a [`Timestamp`] last wrote, up to (not including) its fraction.
#[derive(Debug)]
struct Second {
    /// Seconds since the epoch; `u64::MAX` before the first line.
    at: u64,
    text: String,
}

impl Second {
    const fn new() -> Second {
        Second {
            at: u64::MAX,
            text: String::new(),
        }
    }

    fn write(&mut self, since: Duration, w: &mut impl std::fmt::Write) -> std::fmt::Result {
        let at = since.as_secs();
        if at != self.at {
            self.text.clear();
            // `2026-12-07T17:15:40Z`, whose `Z` goes after the fraction. (Past the year 9999
            // this writes nothing: the line still comes out, with the fraction alone.)
            let whole = UNIX_EPOCH + Duration::from_secs(at);
            if write!(self.text, "{}", humantime::format_rfc3339_seconds(whole)).is_ok() {
                self.text.pop();
            } else {
                self.text.clear();
            }
            self.at = at;
        }
        w.write_str(&self.text)?;
        let mut fraction = *b".000000Z";
        let mut micros = since.subsec_micros();
        for digit in fraction[1..7].iter_mut().rev() {
            // A digit, so always ASCII.
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        // Only ASCII digits, a dot and a `Z` above: always valid UTF-8.
        w.write_str(std::str::from_utf8(&fraction).unwrap_or(".000000Z"))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines the JSON format writes for `emit` under `PGWAY_LOG=directives`, parsed.
    fn json_lines(directives: &str, emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry()
            .with(json().with_writer(move || writer.clone()))
            .with(capped(EnvFilter::new(directives)));
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                // A parsed object keeps the last of two equal keys: count them in the text.
                for key in ["\"target\":", "\"span\":", "\"level\":"] {
                    assert!(line.matches(key).count() <= 1, "{key} twice in {line}");
                }
                serde_json::from_str(line).unwrap()
            })
            .collect()
    }

    /// A record of the `log` crate, as `LogTracer` hands it on.
    fn log_record(target: &str, level: log::Level, text: &str) {
        let _ = tracing_log::format_trace(
            &log::Record::builder()
                .target(target)
                .module_path(Some(target))
                .file(Some("src/lib.rs"))
                .line(Some(7))
                .level(level)
                .args(format_args!("{text}"))
                .build(),
        );
    }

    #[test]
    fn fields_recorded_later_read_like_recorded_ones() {
        let lines = json_lines("info", || {
            let span = tracing::info_span!(
                "call",
                method = "Query",
                request_id = "r\"1",
                caller = tracing::field::Empty,
                code = tracing::field::Empty,
            );
            span.record("caller", "jwt:app:42");
            span.record("code", 1);
            span.record("code", 2);
            let _entered = span.enter();
            tracing::info!(duration_ms = 1.5, "call finished");
        });
        let [line] = lines.as_slice() else {
            panic!("one line expected: {lines:?}");
        };
        assert_eq!(line["message"], "call finished");
        assert_eq!(
            line["duration_ms"], 1.5,
            "the event's fields at the top level"
        );
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], module_path!());
        let timestamp = line["timestamp"].as_str().unwrap();
        let parsed = humantime::parse_rfc3339(timestamp).unwrap();
        let off = SystemTime::now().duration_since(parsed).unwrap();
        assert!(off < Duration::from_secs(60), "{timestamp} is not now");
        assert_eq!(line["span"]["name"], "call");
        assert_eq!(line["span"]["method"], "Query");
        assert_eq!(line["span"]["request_id"], "r\"1");
        assert_eq!(line["span"]["caller"], "jwt:app:42");
        assert_eq!(line["span"]["code"], 2, "the last value recorded wins");
        assert_eq!(line["spans"][0]["caller"], "jwt:app:42");
    }

    #[test]
    fn a_line_written_after_its_span_was_left_names_it() {
        let lines = json_lines("info", || {
            let span = tracing::info_span!("call", method = "Query");
            span.in_scope(|| tracing::info!("inside"));
            tracing::info!(parent: &span, code = 0, "call finished");
            tracing::warn!(peer = "127.0.0.1:1", "outside any span");
        });
        let [inside, finished, outside] = lines.as_slice() else {
            panic!("three lines expected: {lines:?}");
        };
        assert_eq!(inside["spans"][0]["name"], "call");
        assert_eq!(finished["span"]["method"], "Query");
        assert_eq!(finished["spans"][0]["method"], "Query");
        assert_eq!(finished["code"], 0);
        assert_eq!(outside["peer"], "127.0.0.1:1");
        assert!(outside.get("span").is_none(), "no span, no span key");
    }

    #[test]
    fn secret_bearing_targets_stay_capped_at_debug() {
        let lines = json_lines("debug", || {
            tracing::debug!(target: "tokio_postgres::query", "a parameter's value");
            log_record(
                "tokio_postgres::query",
                log::Level::Debug,
                "a parameter's value",
            );
            log_record("rustls::client", log::Level::Debug, "a handshake's secret");
            tracing::debug!(target: "h2::codec", "a header");
            tracing::debug!("pgway's own");
            log_record("tokio_postgres::connection", log::Level::Info, "NOTICE: x");
        });
        let messages: Vec<_> = lines.iter().map(|l| l["message"].clone()).collect();
        assert_eq!(messages, ["pgway's own", "NOTICE: x"], "{lines:?}");
    }

    #[test]
    fn log_records_name_their_own_target() {
        let lines = json_lines("info", || {
            log_record("rustls::client", log::Level::Warn, "shown");
        });
        let [line] = lines.as_slice() else {
            panic!("one line expected: {lines:?}");
        };
        assert_eq!(line["target"], "rustls::client");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "shown");
        assert_eq!(line["log.target"], "rustls::client");
        assert_eq!(line["log.module_path"], "rustls::client");
        assert_eq!(line["log.line"], 7);
    }

    #[test]
    fn timestamps_read_as_rfc3339_with_microseconds() {
        let mut second = Second::new();
        // The same second twice (the cached text), the next one, the epoch, a leap day.
        for (secs, micros) in [
            (1_796_663_740, 123_456),
            (1_796_663_740, 7),
            (1_796_663_741, 999_999),
            (0, 0),
            (951_782_400, 500_000),
            (1_796_663_740, 1),
        ] {
            let since = Duration::new(secs, micros * 1000 + 999);
            let mut ours = String::new();
            second.write(since, &mut ours).unwrap();
            let expected = humantime::format_rfc3339_micros(UNIX_EPOCH + since).to_string();
            assert_eq!(ours, expected);
        }
        let mut leap_day = String::new();
        Second::new()
            .write(Duration::from_secs(951_782_400), &mut leap_day)
            .unwrap();
        assert_eq!(leap_day, "2000-02-29T00:00:00.000000Z");
        let mut ordinary = String::new();
        Second::new()
            .write(Duration::new(1_796_663_740, 123_456_789), &mut ordinary)
            .unwrap();
        assert_eq!(ordinary, "2026-12-07T17:15:40.123456Z");
    }
}
