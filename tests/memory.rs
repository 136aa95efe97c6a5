//! What a client can make the door hold in memory: a value of hundreds of megabytes is relayed
//! in pieces, never held whole, and the memory is given back; statements without end (distinct
//! texts, never closed, megabytes each) stay within the door's bounds. The gateway runs as its
//! own process here, so its resident memory is its own.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use support::door::{POSTGRES_PASSWORD, cluster, fresh_database};
use support::raw::{Raw, bind_execute, log_in, sqlstate};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

const MIB: f64 = 1024.0 * 1024.0;
const FENCE: Duration = Duration::from_secs(120);

/// A gateway process with the PostgreSQL door on, killed when dropped.
struct Process {
    child: Child,
    pg_addr: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    database: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    async fn start(settings: &[(&str, &str)]) -> Process {
        let pg = cluster().await;
        let database = fresh_database(pg, "memory").await;
        let url = format!(
            "postgres://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{}/{database}",
            pg.port()
        );
        let pg_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_pgway"));
        command
            .env("PGWAY_DATABASE_URL", url)
            .env("PGWAY_AUTH", "none")
            .env("PGWAY_GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("PGWAY_METRICS_ADDR", metrics.to_string())
            .env("PGWAY_PG_ADDR", pg_addr.to_string())
            .env("PGWAY_POOL_MAX", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (name, value) in settings {
            command.env(name, value);
        }
        let process = Process {
            child: command.spawn().expect("the gateway starts"),
            pg_addr,
            metrics,
            database,
        };
        eventually(Duration::from_secs(30), "the door listens", || async {
            tokio::net::TcpStream::connect(pg_addr).await.is_ok()
        })
        .await;
        process
    }

    async fn client(&self) -> Raw {
        log_in(
            "127.0.0.1",
            self.pg_addr,
            &self.database,
            "postgres",
            POSTGRES_PASSWORD,
        )
        .await
        .expect("logs in")
    }

    /// The gateway's resident memory, in MiB.
    fn rss(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the gateway runs");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024.0 / MIB
    }

    async fn metric(&self, sample: &str) -> f64 {
        scrape(self.metrics)
            .await
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

/// Reads replies up to ReadyForQuery without holding any message whole: the bytes of rows
/// seen, and the SQLSTATE of an error ("" if none).
async fn drain(client: &mut Raw) -> (usize, String) {
    let (mut rows, mut code) = (0, String::new());
    loop {
        while client.buf.len() < 5 {
            let n = client.stream.read_buf(&mut client.buf).await.unwrap();
            assert!(n > 0, "the door closed the connection");
        }
        let kind = client.buf[0];
        let len = i32::from_be_bytes([client.buf[1], client.buf[2], client.buf[3], client.buf[4]]);
        let mut left = len as usize + 1;
        if kind == b'D' {
            rows += left;
            while left > 0 {
                if client.buf.is_empty() {
                    client.buf.reserve(1 << 16);
                    client.stream.read_buf(&mut client.buf).await.unwrap();
                }
                let n = left.min(client.buf.len());
                client.buf.advance(n);
                left -= n;
            }
            continue;
        }
        while client.buf.len() < left {
            client.stream.read_buf(&mut client.buf).await.unwrap();
        }
        let msg = client.buf.split_to(left);
        match kind {
            b'E' => code = sqlstate(&msg[5..]),
            b'Z' => return (rows, code),
            _ => {}
        }
    }
}

/// `SELECT repeat('x', 500000000)`: the gateway's resident memory stays under 100 MB while
/// the 500 MB value passes through, and returns near its idle figure after.
#[tokio::test]
async fn a_500_mb_value_passes_in_pieces_and_the_memory_is_given_back() {
    let gateway = Process::start(&[]).await;
    let mut client = gateway.client().await;
    let mut out = BytesMut::new();
    frontend::query("SELECT 1", &mut out).unwrap();
    client.send(&out).await;
    drain(&mut client).await;
    let idle = gateway.rss();

    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pid = gateway.child.id();
    let sampler = {
        let sampling = sampling.clone();
        tokio::task::spawn_blocking(move || {
            let mut peak: f64 = 0.0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let kib: f64 = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                        .unwrap_or(0.0);
                    peak = peak.max(kib * 1024.0 / MIB);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    out.clear();
    frontend::query("SELECT repeat('x', 500000000)", &mut out).unwrap();
    client.send(&out).await;
    let (rows, code) = timeout(FENCE, drain(&mut client)).await.unwrap();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    assert_eq!(code, "");
    assert!(rows > 500_000_000, "the whole value arrived ({rows} bytes)");
    let after = gateway.rss();
    println!(
        "500 MB value: gateway RSS idle {idle:.1} MiB, peak {peak:.1} MiB, after {after:.1} MiB"
    );
    assert!(peak < 100.0, "peak {peak:.1} MiB");
    assert!(
        after < idle + 16.0,
        "after {after:.1} MiB, idle {idle:.1} MiB"
    );
}

/// A client that prepares 1 MB statements without end, never closing one: the door keeps
/// only its bounds' worth (least recently used forgotten, counted), its memory stays flat,
/// the newest statements still run, and a forgotten one gets PostgreSQL's 26000.
#[tokio::test]
async fn statements_without_end_keep_memory_flat() {
    let gateway = Process::start(&[
        ("PGWAY_PG_STATEMENT_CACHE_BYTES", "8MiB"),
        ("PGWAY_PG_MAX_CLIENT_STATEMENT_BYTES", "8MiB"),
    ])
    .await;
    let mut client = gateway.client().await;
    let dropped = "pgway_pg_statements_dropped_total{place=\"client\"}";
    let mut samples = Vec::new();
    for n in 0..600 {
        let text = format!("SELECT {n} AS n, '{}' AS pad", "x".repeat(1 << 20));
        let mut out = BytesMut::new();
        frontend::parse(&format!("s{n}"), &text, [], &mut out).unwrap();
        frontend::sync(&mut out);
        client.send(&out).await;
        assert_eq!(timeout(FENCE, drain(&mut client)).await.unwrap().1, "");
        if n % 100 == 99 {
            samples.push(gateway.rss());
        }
    }
    println!("600 statements of 1 MB, gateway RSS (MiB) after each hundred: {samples:.1?}");
    // Bounded by 8 MiB of texts in the registry and 8 MiB for the client, plus what the
    // allocator keeps: flat after the first hundred, and far from the 600 MB sent.
    let (warm, end) = (samples[0], samples[samples.len() - 1]);
    assert!(end < warm + 32.0 && end < 100.0, "{samples:.1?}");
    assert!(gateway.metric(dropped).await >= 550.0);

    for (name, expected) in [("s599", ""), ("s0", "26000")] {
        let mut out = BytesMut::new();
        bind_execute(name, &mut out);
        frontend::sync(&mut out);
        client.send(&out).await;
        let (_, code) = timeout(FENCE, drain(&mut client)).await.unwrap();
        assert_eq!(code, expected, "Bind of {name}");
    }
}

/// An ordinary application that writes literals into its SQL: every query is a new text the
/// driver prepares (and closes). Past the registry's bound the gateway's memory stays flat.
#[tokio::test]
async fn distinct_literal_queries_keep_memory_flat() {
    let gateway = Process::start(&[("PGWAY_PG_STATEMENT_CACHE", "2000")]).await;
    let dsn = format!(
        "postgresql://postgres:{POSTGRES_PASSWORD}@{}/{}?sslmode=disable",
        gateway.pg_addr, gateway.database
    );
    let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut samples = Vec::new();
    for n in 0..24_000 {
        let sql = format!("SELECT {n} AS id, 'customer-{n}' AS name WHERE {n} > 0");
        client.query(sql.as_str(), &[]).await.unwrap();
        if n % 4000 == 3999 {
            samples.push(gateway.rss());
        }
    }
    println!("24,000 distinct queries, gateway RSS (MiB) after each 4,000: {samples:.1?}");
    let (warm, end) = (samples[0], samples[samples.len() - 1]);
    assert!(end < warm + 8.0, "{samples:.1?}");
    assert!(
        gateway
            .metric("pgway_pg_statements_dropped_total{place=\"registry\"}")
            .await
            >= 20_000.0
    );
}
