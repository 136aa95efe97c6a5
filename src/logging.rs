//! Logging set-up: JSON lines for machines, text for people; the filter comes from `PGWAY_LOG`
//! or `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{JsonVisitor, Writer};

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
    let mut filter = EnvFilter::try_from_env("PGWAY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Below info these libraries print what must never reach a log: tokio-postgres the
    // parameter values of every statement, the HTTP/2 stack request headers (authorization).
    // pgway's own events say what every call and connection did without them.
    for directive in SECRET_BEARING_TARGETS {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second init (tests start several gateways in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .fmt_fields(SpliceJsonFields)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A span's fields as one JSON object, like `tracing_subscriber`'s `JsonFields`, but fields
/// recorded later (a call's `caller`, known once it is authenticated) are spliced into the
/// object instead of parsing it and writing it again.
///
/// Hand-written for measured speed: with `JsonFields`, recording the caller on every call's
/// span cost about 10 k instructions (the parse into a map and the second serialisation), more
/// than pgway's whole statement cache and deadline together. A field recorded twice appears
/// twice in the stored text; the JSON formatter parses that text into a map when it writes a
/// line, so the last value wins, as it did before.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpliceJsonFields;

impl<'writer> FormatFields<'writer> for SpliceJsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = JsonVisitor::new(&mut writer);
        fields.record(&mut visitor);
        visitor.finish()
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut added = String::new();
        let mut visitor = JsonVisitor::new(&mut added);
        fields.record(&mut visitor);
        visitor.finish()?;
        splice(&mut current.fields, &added);
        Ok(())
    }
}

/// Adds the members of the JSON object `added` to the JSON object `current` (either may be
/// empty text or `{}`).
fn splice(current: &mut String, added: &str) {
    let Some(members) = added.strip_prefix('{').and_then(|a| a.strip_suffix('}')) else {
        return;
    };
    if members.is_empty() {
        return;
    }
    if current.is_empty() || current == "{}" {
        current.clear();
        current.push_str(added);
        return;
    }
    if current.ends_with('}') {
        current.pop();
        current.push(',');
        current.push_str(members);
        current.push('}');
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

    #[test]
    fn spliced_fields_read_like_recorded_ones() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .fmt_fields(SpliceJsonFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
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
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "call finished");
        assert_eq!(line["span"]["method"], "Query");
        assert_eq!(line["span"]["request_id"], "r\"1");
        assert_eq!(line["span"]["caller"], "jwt:app:42");
        assert_eq!(line["span"]["code"], 2, "the last value recorded wins");
        assert_eq!(line["spans"][0]["caller"], "jwt:app:42");
    }

    #[test]
    fn splicing_handles_empty_objects() {
        let mut current = String::new();
        splice(&mut current, "{\"a\":1}");
        assert_eq!(current, "{\"a\":1}");
        splice(&mut current, "{}");
        assert_eq!(current, "{\"a\":1}");
        splice(&mut current, "{\"b\":\"}\"}");
        assert_eq!(current, "{\"a\":1,\"b\":\"}\"}");
        let mut empty_object = String::from("{}");
        splice(&mut empty_object, "{\"c\":true}");
        assert_eq!(empty_object, "{\"c\":true}");
    }
}
