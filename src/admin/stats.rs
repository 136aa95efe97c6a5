//! `pgway stats`: the pool's current state from a running gateway, for people and scripts
//! without Prometheus. It reads the gateway's `/metrics` and prints the pool figures.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::core::telemetry as metrics;

/// The figures `pgway stats` prints, in order: the metric, its labels if any, and what the
/// line says.
const SHOWN: &[(&str, Option<&str>, &str)] = &[
    (
        metrics::POOL_CONNECTIONS,
        Some("door=\"grpc\",state=\"in_use\""),
        "grpc: connections in use",
    ),
    (
        metrics::POOL_CONNECTIONS,
        Some("door=\"grpc\",state=\"idle\""),
        "grpc: connections idle",
    ),
    (
        metrics::POOL_WAITING,
        Some("door=\"grpc\""),
        "grpc: callers waiting",
    ),
    (
        metrics::POOL_CONNECTIONS,
        Some("door=\"postgres\",state=\"in_use\""),
        "postgres: connections in use",
    ),
    (
        metrics::POOL_CONNECTIONS,
        Some("door=\"postgres\",state=\"idle\""),
        "postgres: connections idle",
    ),
    (
        metrics::POOL_WAITING,
        Some("door=\"postgres\""),
        "postgres: clients waiting",
    ),
    (
        metrics::PG_CLIENTS,
        Some("state=\"active\""),
        "postgres: clients active",
    ),
    (
        metrics::PG_CLIENTS,
        Some("state=\"idle\""),
        "postgres: clients idle",
    ),
    (
        metrics::PG_CLIENTS,
        Some("state=\"pinned\""),
        "postgres: clients pinned",
    ),
    (metrics::POOL_MAX, None, "pool maximum (both)"),
    (metrics::POOL_MIN, None, "pool minimum (kept ready)"),
    (
        metrics::POOL_ACQUIRE_TIMEOUTS,
        Some("door=\"grpc\""),
        "grpc: acquire timeouts",
    ),
    (metrics::SHED, Some("door=\"grpc\""), "grpc: calls shed"),
    (
        metrics::POOL_ACQUIRE_TIMEOUTS,
        Some("door=\"postgres\""),
        "postgres: acquire timeouts",
    ),
    (
        metrics::SHED,
        Some("door=\"postgres\""),
        "postgres: transactions shed",
    ),
    (
        metrics::PG_REFUSALS,
        Some("reason=\"pin_cap\""),
        "postgres: refused, pin cap",
    ),
    (metrics::CONNECTIONS_OPENED, None, "connections opened"),
    (metrics::REQUESTS_IN_FLIGHT, None, "calls in flight"),
    (metrics::DATABASE_UP, None, "database up"),
    (metrics::PAUSED, None, "paused (console PAUSE)"),
];

/// Fetches `/metrics` from `addr`.
pub async fn fetch(addr: SocketAddr) -> Result<String, String> {
    let work = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot reach {addr}: {e}"))?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: pgway\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or("not an HTTP response")?;
        if !head.contains(" 200 ") {
            return Err(format!(
                "unexpected answer: {}",
                head.lines().next().unwrap_or("")
            ));
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| format!("{addr} did not answer within 5 s"))?
}

/// The value of one sample in Prometheus text, if present.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Renders the pool's state as aligned lines, plus closed connections by reason.
pub fn render(text: &str) -> String {
    let mut out = String::new();
    for (name, labels, label) in SHOWN {
        let series = match labels {
            Some(labels) => format!("{name}{{{labels}}}"),
            None => (*name).to_owned(),
        };
        let value = sample(text, &series).unwrap_or(0.0);
        out.push_str(&format!("{label:<30} {value}\n"));
    }
    for line in text.lines().filter(|l| {
        l.strip_prefix(metrics::CONNECTIONS_CLOSED)
            .is_some_and(|rest| rest.starts_with('{'))
    }) {
        if let Some((series, value)) = line.rsplit_once(' ') {
            let reason = series
                .split("reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            out.push_str(&format!("{:<30} {value}\n", format!("closed ({reason})")));
        }
    }
    out
}

/// Runs `pgway stats`; returns the process exit code.
pub async fn run(addr: SocketAddr) -> u8 {
    match fetch(addr).await {
        Ok(text) => {
            print!("{}", render(&text));
            0
        }
        Err(error) => {
            eprintln!("pgway stats: {error}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_pool_figures() {
        let text = "# TYPE x gauge\npgway_pool_connections{door=\"grpc\",state=\"in_use\"} 3\npgway_pool_connections{door=\"postgres\",state=\"in_use\"} 4\npgway_pool_max_connections 20\npgway_connections_closed_total{reason=\"broken\"} 2\n";
        let out = render(text);
        assert!(out.contains("grpc: connections in use       3"), "{out}");
        assert!(out.contains("postgres: connections in use   4"), "{out}");
        assert!(out.contains("pool maximum (both)            20"), "{out}");
        assert!(out.contains("closed (broken)                2"), "{out}");
    }
}
