//! Logging set-up: JSON lines for machines, text for people; the filter comes from `PGWAY_LOG`
//! or `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
