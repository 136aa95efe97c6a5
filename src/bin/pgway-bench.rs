//! `pgway-bench`: a load tool for pgway, and for the things it is compared with.
//!
//! `pgway-bench run` drives one workload with N concurrent callers for a fixed time after a
//! warm-up, against one target:
//!
//! - `gateway`: pgway over gRPC, with the generated client, callers spread over several HTTP/2
//!   connections (one h2 connection runs through one connection task, so many callers on one
//!   connection measure that task, not the gateway). By default each connection is hyper's
//!   HTTP/2 client used directly; `--grpc-client tonic-channel` uses tonic's `Channel` instead,
//!   which adds a queue and a task hop per call (see [`GrpcClient`]);
//! - `direct`: PostgreSQL itself, one tokio-postgres connection per caller, with named prepared
//!   statements (what a service without a pooler does);
//! - `pgbouncer`: PgBouncer in transaction pooling mode, one client connection per caller, with
//!   unnamed statements (`query_typed`: Parse/Bind/Execute in one round trip), since named
//!   prepared statements don't survive transaction pooling before PgBouncer 1.21.
//!
//! It prints one JSON line per run on stdout (and appends it to `--json-out`) and a line for
//! people on stderr: throughput, latency percentiles, errors by code, and — for the process
//! named by `--pid` (the gateway or PgBouncer) — CPU seconds per 1,000 queries and peak RSS,
//! read from `/proc`. With `--pg-pid` it also measures the whole PostgreSQL cluster's CPU.
//! `--soak` samples the RSS every `--sample-every` and reports its least-squares slope.
//!
//! `pgway-bench report` turns the JSON lines of a `bench/compare.sh` run into BENCHMARKS.md.
//! `pgway-bench hop` times a bare loopback TCP round trip between two threads (on two cores and
//! on one): what the machine charges for a hop between processes before any protocol.
//! `pgway-bench free-port` prints a free loopback TCP port (for the script).
//!
//! It is a benchmark, not a test: nothing here asserts a timing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::TryStreamExt;
use pgway::proto::database_client::DatabaseClient;
use pgway::proto::{self, QueryRequest, Statement, TransactionRequest};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// Load tool for pgway (and for PostgreSQL and PgBouncer, to compare with).
#[derive(Debug, Parser)]
#[command(name = "pgway-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one workload against one target and report it.
    Run(RunArgs),
    /// Render the JSON lines of a compare.sh run as BENCHMARKS.md.
    Report(ReportArgs),
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
    /// Time a bare TCP round trip over loopback between two threads, with blocking sockets and
    /// no protocol: the floor under every hop between two processes on this machine. Once with
    /// the threads on two different cores, once with both on one core.
    Hop(HopArgs),
}

#[derive(Debug, Clone, Args)]
struct HopArgs {
    /// Time measured for each placement (after a tenth of it as warm-up).
    #[arg(long, default_value = "3s", value_parser = pgway::app::config::parse_duration)]
    duration: Duration,

    /// The label of the JSON lines.
    #[arg(long, default_value = "floor")]
    label: String,

    /// Append the JSON lines to this file too.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// pgway over gRPC.
    Gateway,
    /// PostgreSQL over its own protocol, one connection per caller.
    Direct,
    /// PgBouncer (transaction pooling), one client connection per caller.
    Pgbouncer,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Gateway => "gateway",
            Target::Direct => "direct",
            Target::Pgbouncer => "pgbouncer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// `pgbench -S`: SELECT abalance FROM pgbench_accounts WHERE aid = $1, random aid.
    Select,
    /// A small write transaction: BEGIN; UPDATE pgbench_accounts SET abalance = abalance + $1
    /// WHERE aid = $2; COMMIT (the Transaction RPC for the gateway).
    Write,
    /// A read of --rows consecutive accounts (1,000 by default), in one reply.
    Read1000,
    /// The same read through QueryStream (a row stream for the PostgreSQL targets).
    Stream,
    /// No SQL: the gRPC health Check for the gateway, an empty query for the others. The floor
    /// of one round trip through each stack.
    Ping,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Select => "select",
            Workload::Write => "write",
            Workload::Read1000 => "read1000",
            Workload::Stream => "stream",
            Workload::Ping => "ping",
        }
    }
}

const SELECT_SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
const UPDATE_SQL: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";
const RANGE_SQL: &str =
    "SELECT aid, bid, abalance, filler FROM pgbench_accounts WHERE aid BETWEEN $1 AND $2";

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// What to load.
    #[arg(long, value_enum)]
    target: Target,

    /// The target's address: http://host:port for the gateway, a postgres:// URL otherwise.
    #[arg(long)]
    url: String,

    /// The workload.
    #[arg(long, value_enum, default_value = "select")]
    workload: Workload,

    /// Concurrent callers (each waits for its answer before it asks again).
    #[arg(long, short = 'c', default_value_t = 10)]
    concurrency: usize,

    /// Time to run before measuring.
    #[arg(long, default_value = "3s", value_parser = pgway::app::config::parse_duration)]
    warmup: Duration,

    /// Time measured.
    #[arg(long, default_value = "8s", value_parser = pgway::app::config::parse_duration)]
    duration: Duration,

    /// Gateway callers per HTTP/2 connection (0: one connection per load thread, shared by all
    /// of that thread's callers, the way a gRPC client process sends every call over its one
    /// channel).
    #[arg(long, default_value_t = 0)]
    callers_per_channel: usize,

    /// The gRPC client transport for the gateway.
    #[arg(long, value_enum, default_value = "h2")]
    grpc_client: GrpcClient,

    /// Load threads. Each owns a share of the callers together with their connections, so a
    /// call never moves between threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,

    /// pgbench scale factor of the database (100,000 accounts per unit).
    #[arg(long, default_value_t = 10)]
    scale: u32,

    /// Rows per read for the read1000 and stream workloads.
    #[arg(long, default_value_t = 1000)]
    rows: u32,

    /// PID of the process whose CPU and memory are measured (the gateway or PgBouncer).
    #[arg(long)]
    pid: Option<u32>,

    /// PID of the postmaster: the CPU of the whole PostgreSQL cluster is measured too.
    #[arg(long)]
    pg_pid: Option<u32>,

    /// The gateway's metrics address (host:port): acquire timeouts and shed calls are read
    /// from /metrics before and after the measurement.
    #[arg(long)]
    metrics_addr: Option<String>,

    /// Soak mode: keep the RSS samples in the output and report their slope.
    #[arg(long)]
    soak: bool,

    /// How often the RSS of --pid is sampled for the slope (peak RSS is sampled every 100 ms).
    #[arg(long, default_value = "5s", value_parser = pgway::app::config::parse_duration)]
    sample_every: Duration,

    /// Statements for the PostgreSQL targets [default: prepared for direct, unnamed for
    /// pgbouncer].
    #[arg(long, value_enum)]
    statements: Option<StatementMode>,

    /// A label kept in the JSON line (compare.sh uses it to group runs).
    #[arg(long, default_value = "")]
    label: String,

    /// Append the JSON line to this file too.
    #[arg(long)]
    json_out: Option<PathBuf>,

    /// A file whose first line is a bearer token (a static token or a JWT) sent with every
    /// gateway call, to measure the gateway with authentication (and, with a JWT, its
    /// row-level security transaction) on.
    #[arg(long)]
    bearer_file: Option<PathBuf>,

    /// Pause after an error before the caller asks again (no busy loop on a failing target).
    #[arg(long, default_value = "10ms", value_parser = pgway::app::config::parse_duration)]
    error_pause: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatementMode {
    /// Named statements prepared once per connection.
    Prepared,
    /// Unnamed statements with the parameter types given (`query_typed`).
    Unnamed,
}

#[derive(Debug, Clone, Args)]
struct ReportArgs {
    /// JSON lines written by `run --json-out`.
    #[arg(long)]
    results: PathBuf,

    /// key=value lines describing the machine and the run, in the order to show them.
    #[arg(long)]
    machine: Option<PathBuf>,

    /// Where to write the Markdown (stdout when absent).
    #[arg(long)]
    out: Option<PathBuf>,

    /// A Markdown file appended as it is (analysis that the numbers alone don't show).
    #[arg(long)]
    notes: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::FreePort => {
            match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
                Ok(addr) => {
                    println!("{}", addr.port());
                    std::process::ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("pgway-bench: no free port: {error}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Cmd::Hop(args) => match hop::run(&args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("pgway-bench hop: {error}");
                std::process::ExitCode::FAILURE
            }
        },
        Cmd::Report(args) => match report::run(&args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("pgway-bench report: {error}");
                std::process::ExitCode::FAILURE
            }
        },
        Cmd::Run(args) => {
            let threads = match args.threads {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => n,
            };
            let shards = match Shards::start(threads) {
                Ok(shards) => shards,
                Err(error) => {
                    eprintln!("pgway-bench: cannot start the load threads: {error}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            // The main thread only paces the run and samples /proc.
            let built = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let runtime = match built {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("pgway-bench: cannot start the runtime: {error}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let outcome = runtime.block_on(run(args, &shards));
            drop(runtime);
            shards.stop();
            match outcome {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("pgway-bench: {error}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Latency histogram: log-linear buckets (128 per power of two, < 0.8% error), shared by all
// callers through atomics.
// ---------------------------------------------------------------------------------------------

const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let msb = 63 - ns.leading_zeros();
    let shift = msb - SUB_BITS;
    (shift as usize + 1) * SUB + ((ns >> shift) as usize - SUB)
}

/// The lower bound and width of a bucket.
fn bucket_range(index: usize) -> (u64, u64) {
    if index < SUB {
        return (index as u64, 1);
    }
    let group = index / SUB;
    let sub = (index % SUB) as u64;
    ((SUB as u64 + sub) << (group - 1), 1u64 << (group - 1))
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// The q-quantile in nanoseconds (the middle of its bucket, never above the maximum).
    fn quantile(&self, q: f64) -> u64 {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return 0;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                let (low, width) = bucket_range(index);
                return (low + width / 2).min(self.max_ns.load(Ordering::Relaxed));
            }
        }
        self.max_ns.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------------------------

mod procfs {
    use std::sync::OnceLock;

    /// Clock ticks per second for `/proc/<pid>/stat` times.
    pub fn clock_ticks() -> f64 {
        static TICKS: OnceLock<f64> = OnceLock::new();
        *TICKS.get_or_init(|| {
            std::process::Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|t| *t > 0.0)
                .unwrap_or(100.0)
        })
    }

    /// (ppid, utime + stime in ticks) of a process.
    fn stat(pid: u32) -> Option<(u32, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may contain spaces: fields start after it.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state): field n is fields[n - 3].
        let ppid = fields.get(1)?.parse().ok()?;
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((ppid, utime + stime))
    }

    /// CPU seconds (user + system, all threads) a process has used.
    pub fn cpu_seconds(pid: u32) -> Option<f64> {
        stat(pid).map(|(_, ticks)| ticks as f64 / clock_ticks())
    }

    /// CPU seconds of a process and its children now alive (a postmaster and its backends).
    pub fn tree_cpu_seconds(root: u32) -> Option<f64> {
        let (_, own) = stat(root)?;
        let mut ticks = own;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == root {
                continue;
            }
            if let Some((ppid, t)) = stat(pid) {
                if ppid == root {
                    ticks += t;
                }
            }
        }
        Some(ticks as f64 / clock_ticks())
    }

    /// A `kB` line of `/proc/<pid>/stat`us, in bytes.
    pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line[key.len()..]
            .trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    pub fn rss(pid: u32) -> Option<u64> {
        status_bytes(pid, "VmRSS")
    }

    pub fn hwm(pid: u32) -> Option<u64> {
        status_bytes(pid, "VmHWM")
    }

    /// Resets the process's peak RSS (VmHWM) to its current RSS; false when not allowed.
    pub fn reset_hwm(pid: u32) -> bool {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
    }

    /// (busy, total) CPU seconds of the whole machine, all cores, from /proc/stat.
    pub fn machine_cpu() -> Option<(f64, f64)> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        if v.len() < 8 {
            return None;
        }
        // user nice system idle iowait irq softirq steal (guest is counted in user already).
        let idle = v[3] + v[4];
        let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        let ticks = clock_ticks();
        Some((busy as f64 / ticks, (busy + idle) as f64 / ticks))
    }

    pub fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }
}

/// Sums the counters named in `names` from the gateway's /metrics (all label sets).
async fn scrape(addr: &str, names: &[&str]) -> Option<Vec<f64>> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut body))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&body);
    let mut sums = vec![0.0; names.len()];
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if let Some(i) = names.iter().position(|n| *n == name) {
            if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                sums[i] += value;
            }
        }
    }
    Some(sums)
}

// ---------------------------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------------------------

struct Shared {
    histogram: Histogram,
    /// Errors by label during the measurement.
    errors: Mutex<BTreeMap<String, u64>>,
    /// Errors before or after it.
    other_errors: AtomicU64,
    recording: AtomicBool,
    stop: AtomicBool,
    rows: AtomicU64,
}

impl Shared {
    fn error(&self, label: String) {
        if self.recording.load(Ordering::Relaxed) {
            let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
            *errors.entry(label).or_default() += 1;
        } else {
            self.other_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn int(value: i64) -> proto::Value {
    proto::Value {
        kind: Some(proto::value::Kind::IntValue(value)),
    }
}

/// `CODE` or `CODE/REASON` (the ErrorInfo reason pgway attaches) of a gRPC status.
fn status_label(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let code = pgway::grpc::observe::code_label(status.code());
    match status.get_error_details().error_info() {
        Some(info) if !info.reason.is_empty() => format!("{code}/{}", info.reason),
        _ => code.to_owned(),
    }
}

fn pg_label(error: &tokio_postgres::Error) -> String {
    match error.code() {
        Some(code) => format!("SQLSTATE_{}", code.code()),
        None if error.is_closed() => "CONNECTION_CLOSED".into(),
        None => "CLIENT_ERROR".into(),
    }
}

struct Params {
    workload: Workload,
    accounts: i32,
    rows: i32,
    /// `Bearer <token>` for the gateway's authorization header.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Params {
    /// A gateway request with the bearer token, when there is one.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    fn aid(&self, rng: &mut impl Rng) -> i32 {
        rng.random_range(1..=self.accounts)
    }

    fn range(&self, rng: &mut impl Rng) -> (i32, i32) {
        let start = rng.random_range(1..=(self.accounts - self.rows + 1).max(1));
        (start, start + self.rows - 1)
    }

    fn delta(rng: &mut impl Rng) -> i32 {
        rng.random_range(-5000..=5000)
    }
}

/// One gateway call. `Ok(rows)` on success.
async fn gateway_call(
    client: &mut DatabaseClient<Transport>,
    params: &Params,
) -> Result<u64, String> {
    // ThreadRng is not Send: draw everything before the first await.
    let (aid, delta, (start, end)) = {
        let mut rng = rand::rng();
        (
            params.aid(&mut rng),
            Params::delta(&mut rng),
            params.range(&mut rng),
        )
    };
    match params.workload {
        Workload::Select => {
            let reply = client
                .query(params.request(QueryRequest {
                    sql: SELECT_SQL.into(),
                    params: vec![int(aid.into())],
                    ..Default::default()
                }))
                .await
                .map_err(|s| status_label(&s))?
                .into_inner();
            if reply.rows.len() != 1 {
                return Err("WRONG_ROW_COUNT".into());
            }
            Ok(1)
        }
        Workload::Write => {
            let reply = client
                .transaction(params.request(TransactionRequest {
                    statements: vec![Statement {
                        sql: UPDATE_SQL.into(),
                        params: vec![int(delta.into()), int(aid.into())],
                    }],
                    ..Default::default()
                }))
                .await
                .map_err(|s| status_label(&s))?
                .into_inner();
            if reply.results.first().map(|r| r.rows_affected) != Some(1) {
                return Err("WRONG_ROW_COUNT".into());
            }
            Ok(1)
        }
        Workload::Read1000 => {
            let reply = client
                .query(params.request(QueryRequest {
                    sql: RANGE_SQL.into(),
                    params: vec![int(start.into()), int(end.into())],
                    ..Default::default()
                }))
                .await
                .map_err(|s| status_label(&s))?
                .into_inner();
            if reply.rows.len() != params.rows as usize {
                return Err("WRONG_ROW_COUNT".into());
            }
            Ok(reply.rows.len() as u64)
        }
        Workload::Ping => unreachable!("ping is served by the health client"),
        Workload::Stream => {
            let mut stream = client
                .query_stream(params.request(QueryRequest {
                    sql: RANGE_SQL.into(),
                    params: vec![int(start.into()), int(end.into())],
                    ..Default::default()
                }))
                .await
                .map_err(|s| status_label(&s))?
                .into_inner();
            let mut rows = 0u64;
            while let Some(message) = stream.message().await.map_err(|s| status_label(&s))? {
                rows += message.rows.len() as u64;
            }
            if rows != u64::from(params.rows as u32) {
                return Err("WRONG_ROW_COUNT".into());
            }
            Ok(rows)
        }
    }
}

/// A PostgreSQL connection (direct or through PgBouncer) and its statements.
struct PgCaller {
    client: tokio_postgres::Client,
    prepared: Option<[tokio_postgres::Statement; 3]>,
}

async fn pg_connect(url: &str, mode: StatementMode) -> Result<PgCaller, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let prepared = match mode {
        StatementMode::Unnamed => None,
        StatementMode::Prepared => Some([
            client.prepare(SELECT_SQL).await?,
            client.prepare(UPDATE_SQL).await?,
            client.prepare(RANGE_SQL).await?,
        ]),
    };
    Ok(PgCaller { client, prepared })
}

/// Reads every column of a range row, as a client using the data would.
fn touch_range_row(row: &tokio_postgres::Row) -> Result<i64, tokio_postgres::Error> {
    let aid: i32 = row.try_get(0)?;
    let bid: i32 = row.try_get(1)?;
    let abalance: i32 = row.try_get(2)?;
    let filler: Option<&str> = row.try_get(3)?;
    Ok(
        i64::from(aid)
            + i64::from(bid)
            + i64::from(abalance)
            + filler.map_or(0, |f| f.len() as i64),
    )
}

async fn pg_call(caller: &PgCaller, params: &Params) -> Result<u64, tokio_postgres::Error> {
    let client = &caller.client;
    let (aid, delta, (start, end)) = {
        let mut rng = rand::rng();
        (
            params.aid(&mut rng),
            Params::delta(&mut rng),
            params.range(&mut rng),
        )
    };
    match params.workload {
        Workload::Select => {
            let rows = match &caller.prepared {
                Some(s) => client.query(&s[0], &[&aid]).await?,
                None => {
                    client
                        .query_typed(SELECT_SQL, &[(&aid, Type::INT4)])
                        .await?
                }
            };
            let mut n = 0;
            for row in &rows {
                let _: i32 = row.try_get(0)?;
                n += 1;
            }
            Ok(n)
        }
        Workload::Write => {
            client.batch_execute("BEGIN").await?;
            let result = match &caller.prepared {
                Some(s) => client.execute(&s[1], &[&delta, &aid]).await.map(drop),
                None => client
                    .query_typed(UPDATE_SQL, &[(&delta, Type::INT4), (&aid, Type::INT4)])
                    .await
                    .map(drop),
            };
            match result {
                Ok(()) => {
                    client.batch_execute("COMMIT").await?;
                    Ok(1)
                }
                Err(error) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(error)
                }
            }
        }
        Workload::Ping => {
            client.simple_query("").await?;
            Ok(0)
        }
        Workload::Read1000 | Workload::Stream => {
            let stream = match &caller.prepared {
                Some(s) => {
                    client
                        .query_raw(
                            &s[2],
                            [&start as &(dyn tokio_postgres::types::ToSql + Sync), &end],
                        )
                        .await?
                }
                None => {
                    client
                        .query_typed_raw(
                            RANGE_SQL,
                            [
                                (
                                    &start as &(dyn tokio_postgres::types::ToSql + Sync),
                                    Type::INT4,
                                ),
                                (
                                    &end as &(dyn tokio_postgres::types::ToSql + Sync),
                                    Type::INT4,
                                ),
                            ],
                        )
                        .await?
                }
            };
            futures::pin_mut!(stream);
            let mut n = 0u64;
            let mut checksum = 0i64;
            while let Some(row) = stream.try_next().await? {
                checksum = checksum.wrapping_add(touch_range_row(&row)?);
                n += 1;
            }
            std::hint::black_box(checksum);
            Ok(n)
        }
    }
}

enum Caller {
    Gateway(DatabaseClient<Transport>),
    Health(HealthClient<Transport>),
    Pg(PgCaller),
}

async fn health_call(client: &mut HealthClient<Transport>) -> Result<u64, String> {
    let reply = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| status_label(&s))?
        .into_inner();
    if reply.status != ServingStatus::Serving as i32 {
        return Err("NOT_SERVING".into());
    }
    Ok(0)
}

async fn caller_loop(
    mut caller: Caller,
    shared: Arc<Shared>,
    params: Arc<Params>,
    args: Arc<RunArgs>,
    mode: StatementMode,
) {
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = match &mut caller {
            Caller::Gateway(client) => gateway_call(client, &params).await,
            Caller::Health(client) => health_call(client).await,
            Caller::Pg(pg) => pg_call(pg, &params).await.map_err(|e| pg_label(&e)),
        };
        let elapsed = started.elapsed();
        match result {
            Ok(rows) => {
                if shared.recording.load(Ordering::Relaxed) {
                    shared.histogram.record(elapsed);
                    shared.rows.fetch_add(rows, Ordering::Relaxed);
                }
            }
            Err(label) => {
                shared.error(label);
                tokio::time::sleep(args.error_pause).await;
                if let Caller::Pg(pg) = &mut caller {
                    if pg.client.is_closed() && !shared.stop.load(Ordering::Relaxed) {
                        if let Ok(fresh) = pg_connect(&args.url, mode).await {
                            *pg = fresh;
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load threads
// ---------------------------------------------------------------------------------------------

/// The load generator's threads, each a single-threaded runtime.
///
/// The load generator shares the machine with what it measures. On tokio's work-stealing
/// runtime a caller's task and the task of the connection it sends on land on different threads,
/// and a call then wakes the other thread; with each caller kept on the thread that
/// owns its connection, the gRPC client spent about 10% less CPU per call at 100 callers and
/// 20% less at one (bench/notes.md, finding 12). One thread in all would be cheaper still, but
/// it slows 200 direct connections down by a third: one per core.
struct Shards {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    fn start(count: usize) -> std::io::Result<Shards> {
        let mut shards = Shards {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            shards.handles.push(runtime.handle().clone());
            shards.stops.push(stop);
            // The runtime runs the tasks given to its handle while its thread waits here, and
            // drops what is left (callers, connections) when the thread ends.
            shards.threads.push(
                std::thread::Builder::new()
                    .name(format!("load-{index}"))
                    .spawn(move || {
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    })?,
            );
        }
        Ok(shards)
    }

    fn len(&self) -> usize {
        self.handles.len()
    }

    fn handle(&self, shard: usize) -> &tokio::runtime::Handle {
        &self.handles[shard % self.len()]
    }

    /// Runs `work` on load thread `shard` (anything it spawns stays there) and waits for it.
    async fn on<T: Send + 'static>(
        &self,
        shard: usize,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, BoxError> {
        self.handle(shard)
            .spawn(work)
            .await
            .map_err(|e| format!("load thread {shard}: {e}").into())
    }

    fn stop(self) {
        drop(self.stops);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------------

struct Snapshot {
    at: Instant,
    pid_cpu: Option<f64>,
    pg_cpu: Option<f64>,
    self_cpu: Option<f64>,
    machine: Option<(f64, f64)>,
    metrics: Option<Vec<f64>>,
}

const METRIC_NAMES: [&str; 3] = [
    "pgway_pool_acquire_timeouts_total",
    "pgway_shed_total",
    "pgway_retries_total",
];

async fn snapshot(args: &RunArgs) -> Snapshot {
    let metrics = match &args.metrics_addr {
        Some(addr) => scrape(addr, &METRIC_NAMES).await,
        None => None,
    };
    Snapshot {
        at: Instant::now(),
        pid_cpu: args.pid.and_then(procfs::cpu_seconds),
        pg_cpu: args.pg_pid.and_then(procfs::tree_cpu_seconds),
        self_cpu: procfs::cpu_seconds(std::process::id()),
        machine: procfs::machine_cpu(),
        metrics,
    }
}

/// Connects the callers, each on the load thread that owns its connection; returns them with
/// that thread's index, and the number of connections.
async fn connect_callers(
    args: &RunArgs,
    mode: StatementMode,
    shards: &Shards,
) -> Result<(Vec<(usize, Caller)>, usize), BoxError> {
    let n = args.concurrency.max(1);
    match args.target {
        Target::Gateway => {
            // Caller i sends on connection `channel_of(i)`, which the load thread of that number
            // (modulo the thread count) owns, as it owns the caller.
            // With a fixed number of connections the sweep varies only the concurrency: more
            // callers per connection, not more connections carrying fewer calls each (which
            // costs both ends more per call: fewer requests share a read or a write).
            let per = args.callers_per_channel;
            let channels = match per {
                0 => n.min(shards.len()),
                per => n.div_ceil(per),
            };
            // Consecutive callers share a connection, or (per = 0) they take turns.
            let channel_of = |i: usize| i.checked_div(per).unwrap_or(i % channels);
            let origin: http::Uri = args.url.parse()?;
            let mut made = Vec::with_capacity(channels);
            for channel in 0..channels {
                let (kind, origin) = (args.grpc_client, origin.clone());
                let connect = async move { Transport::connect(kind, &origin).await };
                made.push(shards.on(channel, connect).await??);
            }
            let callers = (0..n)
                .map(|i| {
                    let transport = made[channel_of(i)].clone();
                    let caller = if args.workload == Workload::Ping {
                        Caller::Health(HealthClient::with_origin(transport, origin.clone()))
                    } else {
                        Caller::Gateway(
                            DatabaseClient::with_origin(transport, origin.clone())
                                .max_decoding_message_size(64 * 1024 * 1024),
                        )
                    };
                    (channel_of(i), caller)
                })
                .collect();
            Ok((callers, channels))
        }
        Target::Direct | Target::Pgbouncer => {
            // Open the connections a few at a time: a burst of forks is not what is measured.
            let mut callers = Vec::with_capacity(n);
            let mut pending = futures::stream::iter((0..n).map(|i| {
                let url = args.url.clone();
                let connect = async move { pg_connect(&url, mode).await };
                async move { (i, shards.on(i, connect).await) }
            }))
            .buffer_unordered(8);
            while let Some((i, caller)) = pending.next().await {
                callers.push((i, Caller::Pg(caller??)));
            }
            Ok((callers, n))
        }
    }
}

use futures::StreamExt as _;

/// How the load tool speaks gRPC to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GrpcClient {
    /// hyper's HTTP/2 client connection, used directly: the caller's task hands its request to
    /// the connection task, nothing more.
    H2,
    /// tonic's `Channel`: a `tower` buffer in front of the connection, i.e. one more queue and
    /// task hop per call, and a client-side timer per call when a deadline is set.
    TonicChannel,
}

type TransportFuture = std::pin::Pin<
    Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, BoxError>> + Send>,
>;

/// One HTTP/2 connection to the gateway, shared by the callers given a clone of it.
///
/// The load generator shares the machine with what it measures, so every cycle it spends on a
/// call is taken from the gateway: it should not cost more than the client a service would
/// use. tonic's `Channel` is the convenient default (reconnects, load balancing), at the price
/// of a `tower::buffer::Buffer` task between the caller and the HTTP/2 connection; `H2` is the
/// connection alone.
#[derive(Clone)]
enum Transport {
    H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>),
    Channel(tonic::transport::Channel),
}

impl Transport {
    async fn connect(kind: GrpcClient, origin: &http::Uri) -> Result<Transport, BoxError> {
        match kind {
            GrpcClient::TonicChannel => {
                let channel = Endpoint::from(origin.clone())
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(5))
                    .connect()
                    .await?;
                Ok(Transport::Channel(channel))
            }
            GrpcClient::H2 => {
                let host = origin.host().ok_or("the gateway URL has no host")?;
                // A bracketed IPv6 literal in a URI is not a socket address as it stands.
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = origin.port_u16().unwrap_or(80);
                let stream = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect((host, port)),
                )
                .await
                .map_err(|_| format!("connecting to {origin}: timed out"))??;
                stream.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        eprintln!("pgway-bench: HTTP/2 connection to the gateway ended: {e}");
                    }
                });
                Ok(Transport::H2(sender))
            }
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = TransportFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        match self {
            Transport::H2(sender) => sender.poll_ready(cx).map_err(Into::into),
            Transport::Channel(channel) => channel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> TransportFuture {
        match self {
            Transport::H2(sender) => {
                let sent = sender.send_request(request);
                Box::pin(async move { Ok(sent.await?.map(tonic::body::Body::new)) })
            }
            Transport::Channel(channel) => {
                let sent = channel.call(request);
                Box::pin(async move { Ok(sent.await?) })
            }
        }
    }
}

/// Least-squares slope of (seconds, bytes) samples, in bytes per minute.
fn slope_per_minute(samples: &[(f64, u64)]) -> Option<f64> {
    if samples.len() < 3 {
        return None;
    }
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_y = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, y) in samples {
        num += (t - mean_t) * (*y as f64 - mean_y);
        den += (t - mean_t) * (t - mean_t);
    }
    (den > 0.0).then(|| num / den * 60.0)
}

async fn run(args: RunArgs, shards: &Shards) -> Result<(), BoxError> {
    let mode = args.statements.unwrap_or(match args.target {
        Target::Pgbouncer => StatementMode::Unnamed,
        _ => StatementMode::Prepared,
    });
    let params = Arc::new(Params {
        workload: args.workload,
        accounts: i32::try_from(u64::from(args.scale) * 100_000).unwrap_or(i32::MAX),
        rows: i32::try_from(args.rows.max(1)).unwrap_or(i32::MAX),
        authorization: match &args.bearer_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)?;
                let token = text.lines().next().unwrap_or_default().trim();
                Some(format!("Bearer {token}").parse()?)
            }
        },
    });
    let args = Arc::new(args);
    let shared = Arc::new(Shared {
        histogram: Histogram::new(),
        errors: Mutex::new(BTreeMap::new()),
        other_errors: AtomicU64::new(0),
        recording: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        rows: AtomicU64::new(0),
    });
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (callers, connections) = connect_callers(&args, mode, shards).await?;

    let mut tasks = Vec::with_capacity(callers.len());
    for (shard, caller) in callers {
        tasks.push(shards.handle(shard).spawn(caller_loop(
            caller,
            Arc::clone(&shared),
            Arc::clone(&params),
            Arc::clone(&args),
            mode,
        )));
    }

    tokio::time::sleep(args.warmup).await;

    // The measured window.
    let hwm_reset = args.pid.is_some_and(procfs::reset_hwm);
    let before = snapshot(&args).await;
    shared.recording.store(true, Ordering::Relaxed);
    let sampler = {
        let pid = args.pid;
        let every = args.sample_every;
        let duration = args.duration;
        tokio::spawn(async move {
            let mut peak = 0u64;
            let mut samples: Vec<(f64, u64)> = Vec::new();
            let Some(pid) = pid else {
                return (peak, samples);
            };
            let start = Instant::now();
            let mut next_sample = Duration::ZERO;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let now = start.elapsed();
                if now > duration {
                    break;
                }
                if let Some(rss) = procfs::rss(pid) {
                    peak = peak.max(rss);
                    if now >= next_sample {
                        samples.push((now.as_secs_f64(), rss));
                        next_sample += every;
                    }
                }
            }
            (peak, samples)
        })
    };
    tokio::time::sleep(args.duration).await;
    shared.recording.store(false, Ordering::Relaxed);
    let after = snapshot(&args).await;
    let (sampled_peak, samples) = sampler.await.unwrap_or_default();
    let hwm = args.pid.and_then(procfs::hwm);
    let rss_end = args.pid.and_then(procfs::rss);

    shared.stop.store(true, Ordering::Relaxed);
    let stop_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for task in tasks {
        if tokio::time::timeout_at(stop_deadline, task).await.is_err() {
            // Stuck caller (a target that stopped answering): leave it, the process ends.
        }
    }

    // Results.
    let elapsed = (after.at - before.at).as_secs_f64();
    let ok = shared.histogram.count.load(Ordering::Relaxed);
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let error_total: u64 = errors.values().sum();
    let qps = ok as f64 / elapsed;
    let per_1k = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if ok > 0 => Some((b - a) / ok as f64 * 1000.0),
        _ => None,
    };
    let delta = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
    let pid_cpu = delta(before.pid_cpu, after.pid_cpu);
    let pg_cpu = delta(before.pg_cpu, after.pg_cpu);
    let self_cpu = delta(before.self_cpu, after.self_cpu);
    let (machine_busy, machine_busy_pct) = match (before.machine, after.machine) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            (Some(b1 - b0), Some((b1 - b0) / (t1 - t0) * 100.0))
        }
        _ => (None, None),
    };
    // CPU used by processes that are not part of the benchmark (other work on the machine).
    let other_cpu = machine_busy.map(|busy| {
        busy - pid_cpu.unwrap_or(0.0) - pg_cpu.unwrap_or(0.0) - self_cpu.unwrap_or(0.0)
    });
    let metric_delta = |i: usize| match (&before.metrics, &after.metrics) {
        (Some(a), Some(b)) => Some(b[i] - a[i]),
        _ => None,
    };
    let rss_peak = match (hwm_reset, hwm) {
        (true, Some(hwm)) => Some(hwm.max(sampled_peak)),
        _ if sampled_peak > 0 => Some(sampled_peak),
        _ => None,
    };
    let slope = slope_per_minute(&samples);
    let h = &shared.histogram;
    let us = |ns: u64| ns as f64 / 1000.0;
    let (p50, p90, p99, p999) = (
        h.quantile(0.50),
        h.quantile(0.90),
        h.quantile(0.99),
        h.quantile(0.999),
    );
    let max = h.max_ns.load(Ordering::Relaxed);
    let mean = h
        .sum_ns
        .load(Ordering::Relaxed)
        .checked_div(ok)
        .unwrap_or(0);

    let mut j = Json::object();
    j.str("tool", "pgway-bench")
        .str("label", &args.label)
        .str("target", args.target.name())
        .str("workload", args.workload.name())
        .int("concurrency", args.concurrency as u64)
        .int("connections", connections as u64)
        .str(
            "statements",
            match (args.target, mode) {
                (Target::Gateway, _) => "gateway",
                (_, StatementMode::Prepared) => "prepared",
                (_, StatementMode::Unnamed) => "unnamed",
            },
        )
        .num("warmup_s", args.warmup.as_secs_f64())
        .num("duration_s", elapsed)
        .int("started_unix", started_unix)
        .int("ok", ok)
        .int("rows", shared.rows.load(Ordering::Relaxed))
        .int("errors", error_total)
        .map("errors_by_code", &errors)
        .int(
            "errors_outside_window",
            shared.other_errors.load(Ordering::Relaxed),
        )
        .num("throughput_qps", qps)
        .num("p50_us", us(p50))
        .num("p90_us", us(p90))
        .num("p99_us", us(p99))
        .num("p999_us", us(p999))
        .num("max_us", us(max))
        .num("mean_us", us(mean))
        .opt_int("pid", args.pid.map(u64::from))
        .opt_num("cpu_s", pid_cpu)
        .opt_num("cpu_s_per_1k", per_1k(before.pid_cpu, after.pid_cpu))
        .opt_int("rss_peak_bytes", rss_peak)
        .opt_int("rss_hwm_bytes", hwm)
        .bool("rss_hwm_reset", hwm_reset)
        .opt_int("rss_end_bytes", rss_end)
        .opt_num("rss_slope_bytes_per_min", slope)
        .opt_num("pg_cpu_s", pg_cpu)
        .opt_num("pg_cpu_s_per_1k", per_1k(before.pg_cpu, after.pg_cpu))
        .opt_num("bench_cpu_s", self_cpu)
        .opt_num(
            "bench_cpu_s_per_1k",
            per_1k(before.self_cpu, after.self_cpu),
        )
        .opt_num("machine_busy_pct", machine_busy_pct)
        .opt_num("other_cpu_s", other_cpu)
        .str("loadavg_end", &procfs::loadavg())
        .opt_num("acquire_timeouts", metric_delta(0))
        .opt_num("shed", metric_delta(1))
        .opt_num("retries", metric_delta(2));
    if args.soak {
        j.samples("rss_samples", &samples);
    }
    let line = j.finish();

    let mut human = format!(
        "{:<9} {:<8} c={:<5} {:>9.0} q/s  p50 {:>8.1}µs  p90 {:>8.1}µs  p99 {:>8.1}µs  max {:>9.1}µs  errors {}",
        args.target.name(),
        args.workload.name(),
        args.concurrency,
        qps,
        us(p50),
        us(p90),
        us(p99),
        us(max),
        error_total
    );
    if !errors.is_empty() {
        let _ = write!(human, " {errors:?}");
    }
    if let Some(cpu) = per_1k(before.pid_cpu, after.pid_cpu) {
        let _ = write!(human, "  cpu {:.1} ms/1k", cpu * 1000.0);
    }
    if let Some(rss) = rss_peak {
        let _ = write!(human, "  rss peak {:.1} MiB", rss as f64 / 1048576.0);
    }
    if let Some(cpu) = per_1k(before.pg_cpu, after.pg_cpu) {
        let _ = write!(human, "  pg cpu {:.1} ms/1k", cpu * 1000.0);
    }
    if let Some(cpu) = per_1k(before.self_cpu, after.self_cpu) {
        let _ = write!(human, "  bench cpu {:.1} ms/1k", cpu * 1000.0);
    }
    if let Some(other) = other_cpu {
        let _ = write!(human, "  other cpu {:.1}s", other);
    }
    if let Some(slope) = slope {
        if args.soak {
            let _ = write!(
                human,
                "  rss slope {:.0} B/min over {} samples",
                slope,
                samples.len()
            );
        }
    }
    eprintln!("{human}");
    println!("{line}");
    if let Some(path) = &args.json_out {
        append_lines(path, &[line])?;
    }
    Ok(())
}

/// Appends JSON lines to a results file (`--json-out`), creating it when missing.
fn append_lines(path: &Path, lines: &[String]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for line in lines {
        writeln!(file, "{line}")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The floor under a hop: a bare loopback round trip between two threads
// ---------------------------------------------------------------------------------------------

/// Every call through the gateway crosses two process boundaries where a direct connection
/// crosses one, and each crossing wakes a sleeping thread. What a wake-up costs is the
/// machine's, not the software's: on a virtual machine, waking a thread on another core goes
/// through the hypervisor and can cost several times the same wake-up on one core. This
/// measures it, so that the added latency of the gateway can be read against it.
mod hop {
    use super::{BoxError, Histogram, HopArgs, Json};
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

    /// Pins the calling thread to one CPU.
    fn pin(cpu: usize) -> std::io::Result<()> {
        let mut set = CpuSet::new();
        set.set(cpu);
        sched_setaffinity(None, &set).map_err(std::io::Error::from)
    }

    /// Round trips of one byte between an echo thread on `echo_cpu` and a timing thread on
    /// `ping_cpu`, for `warmup` and then `duration`.
    fn measure(
        echo_cpu: usize,
        ping_cpu: usize,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Histogram, BoxError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            pin(echo_cpu)?;
            let (mut socket, _) = listener.accept()?;
            socket.set_nodelay(true)?;
            let mut byte = [0u8; 1];
            // Until the timing thread closes its end (read returns 0).
            while socket.read(&mut byte)? == 1 {
                socket.write_all(&byte)?;
            }
            Ok(())
        });
        let ping = std::thread::spawn(move || -> std::io::Result<Histogram> {
            pin(ping_cpu)?;
            let mut socket = TcpStream::connect(addr)?;
            socket.set_nodelay(true)?;
            let histogram = Histogram::new();
            let mut byte = [0u8; 1];
            let start = Instant::now();
            let measure_from = start + warmup;
            let end = measure_from + duration;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                socket.write_all(&byte)?;
                socket.read_exact(&mut byte)?;
                if sent >= measure_from {
                    histogram.record(sent.elapsed());
                }
            }
            Ok(histogram)
        });
        let histogram = ping.join().map_err(|_| "the timing thread panicked")??;
        echo.join().map_err(|_| "the echo thread panicked")??;
        Ok(histogram)
    }

    pub fn run(args: &HopArgs) -> Result<(), BoxError> {
        let allowed = sched_getaffinity(None)?;
        let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
            .filter(|&cpu| allowed.is_set(cpu))
            .take(2)
            .collect();
        let Some(&first) = cpus.first() else {
            return Err("no CPU to run on".into());
        };
        let mut placements = vec![("tcp-1-core", first, first)];
        if let Some(&second) = cpus.get(1) {
            placements.insert(0, ("tcp-2-cores", first, second));
        }
        let mut lines = Vec::new();
        for (workload, echo_cpu, ping_cpu) in placements {
            let h = measure(echo_cpu, ping_cpu, args.duration / 10, args.duration)?;
            let count = h.count.load(Ordering::Relaxed);
            let us = |ns: u64| ns as f64 / 1000.0;
            let (p50, p90, p99) = (
                us(h.quantile(0.50)),
                us(h.quantile(0.90)),
                us(h.quantile(0.99)),
            );
            let line = Json::object()
                .str("tool", "pgway-bench")
                .str("label", &args.label)
                .str("target", "loopback")
                .str("workload", workload)
                .int("concurrency", 1)
                .num("duration_s", args.duration.as_secs_f64())
                .int("ok", count)
                .num("throughput_qps", count as f64 / args.duration.as_secs_f64())
                .num("p50_us", p50)
                .num("p90_us", p90)
                .num("p99_us", p99)
                .num("max_us", us(h.max_ns.load(Ordering::Relaxed)))
                .finish();
            eprintln!(
                "loopback  {workload:<11} round trip p50 {p50:>8.1}µs  p90 {p90:>8.1}µs  p99 {p99:>8.1}µs"
            );
            println!("{line}");
            lines.push(line);
        }
        if let Some(path) = &args.json_out {
            super::append_lines(path, &lines)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// A small JSON writer (no serde_json in the non-dev dependencies)
// ---------------------------------------------------------------------------------------------

struct Json {
    text: String,
    first: bool,
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn number(value: f64) -> String {
    if value.is_finite() {
        let rounded = (value * 1000.0).round() / 1000.0;
        format!("{rounded}")
    } else {
        "null".into()
    }
}

impl Json {
    fn object() -> Self {
        Json {
            text: "{".into(),
            first: true,
        }
    }

    fn key(&mut self, key: &str) -> &mut Self {
        if !self.first {
            self.text.push(',');
        }
        self.first = false;
        self.text.push_str(&escape(key));
        self.text.push(':');
        self
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.text.push_str(&escape(value));
        self
    }

    fn int(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let _ = write!(self.text, "{value}");
        self
    }

    fn num(&mut self, key: &str, value: f64) -> &mut Self {
        self.key(key);
        self.text.push_str(&number(value));
        self
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.text.push_str(if value { "true" } else { "false" });
        self
    }

    fn opt_int(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(v) => self.int(key, v),
            None => {
                self.key(key);
                self.text.push_str("null");
                self
            }
        }
    }

    fn opt_num(&mut self, key: &str, value: Option<f64>) -> &mut Self {
        match value {
            Some(v) => self.num(key, v),
            None => {
                self.key(key);
                self.text.push_str("null");
                self
            }
        }
    }

    fn map(&mut self, key: &str, map: &BTreeMap<String, u64>) -> &mut Self {
        self.key(key);
        self.text.push('{');
        for (i, (k, v)) in map.iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            let _ = write!(self.text, "{}:{v}", escape(k));
        }
        self.text.push('}');
        self
    }

    fn samples(&mut self, key: &str, samples: &[(f64, u64)]) -> &mut Self {
        self.key(key);
        self.text.push('[');
        for (i, (t, v)) in samples.iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            let _ = write!(self.text, "[{},{v}]", number(*t));
        }
        self.text.push(']');
        self
    }

    fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.text);
        text.push('}');
        text
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

mod report {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use super::BoxError;

    /// A parsed JSON value (only what pgway-bench writes).
    #[derive(Debug, Clone)]
    #[allow(dead_code)]
    pub enum J {
        Null,
        Bool(bool),
        Num(f64),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    impl J {
        pub fn get(&self, key: &str) -> Option<&J> {
            match self {
                J::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn num(&self, key: &str) -> Option<f64> {
            match self.get(key)? {
                J::Num(n) => Some(*n),
                _ => None,
            }
        }

        pub fn text(&self, key: &str) -> &str {
            match self.get(key) {
                Some(J::Str(s)) => s,
                _ => "",
            }
        }
    }

    struct Parser<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.at < self.bytes.len() && self.bytes[self.at].is_ascii_whitespace() {
                self.at += 1;
            }
        }

        fn eat(&mut self, byte: u8) -> Result<(), String> {
            self.ws();
            if self.bytes.get(self.at) == Some(&byte) {
                self.at += 1;
                Ok(())
            } else {
                Err(format!("expected {:?} at byte {}", byte as char, self.at))
            }
        }

        fn value(&mut self) -> Result<J, String> {
            self.ws();
            match self.bytes.get(self.at) {
                Some(b'{') => {
                    self.at += 1;
                    let mut fields = Vec::new();
                    self.ws();
                    if self.bytes.get(self.at) == Some(&b'}') {
                        self.at += 1;
                        return Ok(J::Obj(fields));
                    }
                    loop {
                        self.ws();
                        let key = self.string()?;
                        self.eat(b':')?;
                        let value = self.value()?;
                        fields.push((key, value));
                        self.ws();
                        match self.bytes.get(self.at) {
                            Some(b',') => self.at += 1,
                            Some(b'}') => {
                                self.at += 1;
                                return Ok(J::Obj(fields));
                            }
                            _ => return Err(format!("bad object at byte {}", self.at)),
                        }
                    }
                }
                Some(b'[') => {
                    self.at += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if self.bytes.get(self.at) == Some(&b']') {
                        self.at += 1;
                        return Ok(J::Arr(items));
                    }
                    loop {
                        items.push(self.value()?);
                        self.ws();
                        match self.bytes.get(self.at) {
                            Some(b',') => self.at += 1,
                            Some(b']') => {
                                self.at += 1;
                                return Ok(J::Arr(items));
                            }
                            _ => return Err(format!("bad array at byte {}", self.at)),
                        }
                    }
                }
                Some(b'"') => Ok(J::Str(self.string()?)),
                Some(b't') if self.bytes[self.at..].starts_with(b"true") => {
                    self.at += 4;
                    Ok(J::Bool(true))
                }
                Some(b'f') if self.bytes[self.at..].starts_with(b"false") => {
                    self.at += 5;
                    Ok(J::Bool(false))
                }
                Some(b'n') if self.bytes[self.at..].starts_with(b"null") => {
                    self.at += 4;
                    Ok(J::Null)
                }
                Some(_) => {
                    let start = self.at;
                    while self.at < self.bytes.len()
                        && matches!(
                            self.bytes[self.at],
                            b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                        )
                    {
                        self.at += 1;
                    }
                    std::str::from_utf8(&self.bytes[start..self.at])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .map(J::Num)
                        .ok_or_else(|| format!("bad number at byte {start}"))
                }
                None => Err("unexpected end".into()),
            }
        }

        fn string(&mut self) -> Result<String, String> {
            self.eat(b'"')?;
            let mut out = Vec::new();
            while let Some(&b) = self.bytes.get(self.at) {
                self.at += 1;
                match b {
                    b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                    b'\\' => {
                        let e = *self.bytes.get(self.at).ok_or("bad escape")?;
                        self.at += 1;
                        match e {
                            b'n' => out.push(b'\n'),
                            b't' => out.push(b'\t'),
                            b'r' => out.push(b'\r'),
                            b'u' => {
                                let hex = std::str::from_utf8(
                                    self.bytes.get(self.at..self.at + 4).ok_or("bad escape")?,
                                )
                                .map_err(|e| e.to_string())?;
                                let code =
                                    u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                                self.at += 4;
                                let c = char::from_u32(code).unwrap_or('?');
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            }
                            other => out.push(other),
                        }
                    }
                    other => out.push(other),
                }
            }
            Err("unterminated string".into())
        }
    }

    pub fn parse(text: &str) -> Result<J, String> {
        let mut parser = Parser {
            bytes: text.as_bytes(),
            at: 0,
        };
        parser.value()
    }

    fn fmt_num(v: Option<f64>, decimals: usize) -> String {
        match v {
            Some(v) => format!("{v:.decimals$}"),
            None => "–".into(),
        }
    }

    fn mib(v: Option<f64>) -> String {
        v.map_or("–".into(), |b| format!("{:.1} MiB", b / 1048576.0))
    }

    fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
        match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        }
    }

    fn errors_text(run: &J) -> String {
        let total = run.num("errors").unwrap_or(0.0);
        let mut text = format!("{total:.0}");
        if let Some(J::Obj(fields)) = run.get("errors_by_code") {
            if !fields.is_empty() {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| match v {
                        J::Num(n) => format!("{k}: {n:.0}"),
                        _ => k.clone(),
                    })
                    .collect();
                let _ = write!(text, " ({})", parts.join(", "));
            }
        }
        text
    }

    struct Runs {
        runs: Vec<J>,
    }

    impl Runs {
        /// Every run of one point, in the order they were made.
        fn all(&self, label: &str, target: &str, workload: &str, concurrency: u64) -> Vec<&J> {
            self.runs
                .iter()
                .filter(|r| {
                    r.text("label") == label
                        && r.text("target") == target
                        && r.text("workload") == workload
                        && r.num("concurrency") == Some(concurrency as f64)
                })
                .collect()
        }

        /// The run that stands for a point: when it was repeated (`REPEAT` in compare.sh), the
        /// one with the median throughput (of an even number, the lower of the two middle
        /// ones), so that one disturbed run moves no ratio.
        fn find(&self, label: &str, target: &str, workload: &str, concurrency: u64) -> Option<&J> {
            let mut runs = self.all(label, target, workload, concurrency);
            runs.sort_by(|a, b| {
                let q = |r: &J| r.num("throughput_qps").unwrap_or(0.0);
                q(a).total_cmp(&q(b))
            });
            runs.get(runs.len().saturating_sub(1) / 2).copied()
        }

        fn concurrencies(&self, label: &str, workload: &str) -> Vec<u64> {
            let mut cs: Vec<u64> = self
                .runs
                .iter()
                .filter(|r| r.text("label") == label && r.text("workload") == workload)
                .filter_map(|r| r.num("concurrency").map(|c| c as u64))
                .collect();
            cs.sort_unstable();
            cs.dedup();
            cs
        }

        fn label_runs(&self, label: &str) -> Vec<&J> {
            self.runs
                .iter()
                .filter(|r| r.text("label") == label)
                .collect()
        }
    }

    const TARGETS: [&str; 3] = ["direct", "pgbouncer", "gateway"];

    fn sweep_section(out: &mut String, runs: &Runs, label: &str, workload: &str, title: &str) {
        let cs = runs.concurrencies(label, workload);
        if cs.is_empty() {
            return;
        }
        let _ = writeln!(out, "### {title}\n");
        let _ = writeln!(
            out,
            "Throughput in queries (or transactions, or reads) per second; ratios are of runs in this same invocation.\n"
        );
        let _ = writeln!(
            out,
            "| callers | direct q/s | PgBouncer q/s | gateway q/s | gateway / direct | gateway / PgBouncer | p50 direct / PgBouncer / gateway (µs) | p99 direct / PgBouncer / gateway (µs) |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &c in &cs {
            let get = |t: &str| runs.find(label, t, workload, c);
            let q = |t: &str| get(t).and_then(|r| r.num("throughput_qps"));
            let p = |t: &str, k: &str| fmt_num(get(t).and_then(|r| r.num(k)), 0);
            let _ = writeln!(
                out,
                "| {c} | {} | {} | {} | {} | {} | {} / {} / {} | {} / {} / {} |",
                fmt_num(q("direct"), 0),
                fmt_num(q("pgbouncer"), 0),
                fmt_num(q("gateway"), 0),
                fmt_num(ratio(q("gateway"), q("direct")), 2),
                fmt_num(ratio(q("gateway"), q("pgbouncer")), 2),
                p("direct", "p50_us"),
                p("pgbouncer", "p50_us"),
                p("gateway", "p50_us"),
                p("direct", "p99_us"),
                p("pgbouncer", "p99_us"),
                p("gateway", "p99_us"),
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "<details><summary>Every run of this workload (latency, errors, CPU, memory)</summary>\n"
        );
        let _ = writeln!(
            out,
            "| target | callers | q/s | p50 µs | p90 µs | p99 µs | max µs | errors | proxy CPU ms / 1k | PostgreSQL CPU ms / 1k | load generator CPU ms / 1k | proxy peak RSS | machine busy | CPU of other processes (s) |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
        );
        for t in TARGETS {
            for r in cs.iter().flat_map(|&c| runs.all(label, t, workload, c)) {
                let c = r.num("concurrency").unwrap_or(0.0);
                let ms = |k: &str| fmt_num(r.num(k).map(|v| v * 1000.0), 1);
                let _ = writeln!(
                    out,
                    "| {t} | {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}% | {} |",
                    fmt_num(r.num("throughput_qps"), 0),
                    fmt_num(r.num("p50_us"), 0),
                    fmt_num(r.num("p90_us"), 0),
                    fmt_num(r.num("p99_us"), 0),
                    fmt_num(r.num("max_us"), 0),
                    errors_text(r),
                    ms("cpu_s_per_1k"),
                    ms("pg_cpu_s_per_1k"),
                    ms("bench_cpu_s_per_1k"),
                    mib(r.num("rss_peak_bytes")),
                    fmt_num(r.num("machine_busy_pct"), 0),
                    fmt_num(r.num("other_cpu_s"), 1),
                );
            }
        }
        let _ = writeln!(out, "\n</details>\n");
    }

    struct Verdict {
        target: &'static str,
        measured: String,
        met: Option<bool>,
    }

    fn verdicts(runs: &Runs) -> Vec<Verdict> {
        let sweep = |t: &str, c: u64| runs.find("sweep", t, "select", c);
        let qps = |t: &str, c: u64| sweep(t, c).and_then(|r| r.num("throughput_qps"));
        let mut out = Vec::new();

        // 1. No collapse at 100.
        let best = runs
            .concurrencies("sweep", "select")
            .into_iter()
            .filter_map(|c| Some((qps("gateway", c)?, c as f64)))
            .fold(None::<(f64, f64)>, |acc, x| match acc {
                Some(a) if a.0 >= x.0 => Some(a),
                _ => Some(x),
            });
        let at100 = sweep("gateway", 100);
        out.push(match (best, at100) {
            (Some((best_q, best_c)), Some(r)) => {
                let q = r.num("throughput_qps").unwrap_or(0.0);
                let errors = r.num("errors").unwrap_or(0.0);
                let timeouts = r.num("acquire_timeouts");
                let share = q / best_q;
                Verdict {
                    target: "At 100 callers the gateway keeps ≥ 95% of its best throughput, with 0 errors and no acquire timeouts",
                    measured: format!(
                        "{q:.0} q/s at 100 = {:.1}% of its best ({best_q:.0} q/s at {best_c:.0}); errors {}; acquire timeouts {}",
                        share * 100.0,
                        errors_text(r),
                        fmt_num(timeouts, 0)
                    ),
                    met: Some(share >= 0.95 && errors == 0.0 && timeouts.unwrap_or(0.0) == 0.0),
                }
            }
            _ => Verdict {
                target: "At 100 callers the gateway keeps ≥ 95% of its best throughput, with 0 errors and no acquire timeouts",
                measured: "not measured".into(),
                met: None,
            },
        });

        // 2. Versus PgBouncer at 100.
        let name = "At 100 callers: gateway throughput ≥ PgBouncer's, and gateway CPU per query ≤ PgBouncer's";
        out.push(match (sweep("gateway", 100), sweep("pgbouncer", 100)) {
            (Some(g), Some(b)) => {
                let (gq, bq) = (g.num("throughput_qps").unwrap_or(0.0), b.num("throughput_qps").unwrap_or(0.0));
                let (gc, bc) = (g.num("cpu_s_per_1k"), b.num("cpu_s_per_1k"));
                let cpu_ok = matches!((gc, bc), (Some(g), Some(b)) if g <= b);
                Verdict {
                    target: name,
                    measured: format!(
                        "throughput {gq:.0} vs {bq:.0} q/s (ratio {}); CPU {} vs {} ms per 1,000 queries (ratio {})",
                        fmt_num(ratio(Some(gq), Some(bq)), 2),
                        fmt_num(gc.map(|v| v * 1000.0), 1),
                        fmt_num(bc.map(|v| v * 1000.0), 1),
                        fmt_num(ratio(gc, bc), 2),
                    ),
                    met: Some(gq >= bq && cpu_ok),
                }
            }
            _ => Verdict { target: name, measured: "not measured".into(), met: None },
        });

        // 3. Versus direct at 200.
        let name = "At 200 callers the gateway beats direct connections";
        out.push(match (qps("gateway", 200), qps("direct", 200)) {
            (Some(g), Some(d)) => Verdict {
                target: name,
                measured: format!("{g:.0} vs {d:.0} q/s (ratio {:.2})", g / d),
                met: Some(g > d),
            },
            _ => Verdict {
                target: name,
                measured: "not measured".into(),
                met: None,
            },
        });

        // 4. Added latency at 1 caller.
        let name = "Added latency at 1 caller: gateway p50 − direct p50 < 100 µs";
        out.push(
            match (
                sweep("gateway", 1).and_then(|r| r.num("p50_us")),
                sweep("direct", 1).and_then(|r| r.num("p50_us")),
            ) {
                (Some(g), Some(d)) => Verdict {
                    target: name,
                    // What one more hop costs on this machine, for scale: PgBouncer's own, and
                    // the bare loopback round trip between two cores under any stack.
                    measured: {
                        let mut text = format!("{g:.0} − {d:.0} = {:.0} µs", g - d);
                        let mut scale = Vec::new();
                        if let Some(b) = sweep("pgbouncer", 1).and_then(|r| r.num("p50_us")) {
                            scale.push(format!("PgBouncer: {b:.0} − {d:.0} = {:.0} µs", b - d));
                        }
                        if let Some(hop) = runs
                            .find("floor", "loopback", "tcp-2-cores", 1)
                            .and_then(|r| r.num("p50_us"))
                        {
                            scale.push(format!(
                                "a bare loopback round trip between two cores: {hop:.0} µs"
                            ));
                        }
                        if !scale.is_empty() {
                            let _ = write!(text, " ({})", scale.join("; "));
                        }
                        text
                    },
                    met: Some(g - d < 100.0),
                },
                _ => Verdict {
                    target: name,
                    measured: "not measured".into(),
                    met: None,
                },
            },
        );

        // 5. RSS.
        let name = "Peak RSS < 50 MB at 100 callers";
        // The highest of each workload's runs (the sweep's may be repeated).
        let mut rss100: Vec<(String, f64)> = Vec::new();
        for r in runs
            .runs
            .iter()
            .filter(|r| r.text("target") == "gateway" && r.num("concurrency") == Some(100.0))
            .filter(|r| r.text("label") == "sweep" || r.text("label") == "workloads")
        {
            let (Some(bytes), workload) = (r.num("rss_peak_bytes"), r.text("workload")) else {
                continue;
            };
            match rss100.iter_mut().find(|(w, _)| w == workload) {
                Some((_, most)) => *most = most.max(bytes),
                None => rss100.push((workload.to_owned(), bytes)),
            }
        }
        out.push(if rss100.is_empty() {
            Verdict {
                target: name,
                measured: "not measured".into(),
                met: None,
            }
        } else {
            let worst = rss100.iter().map(|x| x.1).fold(0.0, f64::max);
            Verdict {
                target: name,
                measured: rss100
                    .iter()
                    .map(|(w, b)| format!("{w}: {:.1} MB", b / 1e6))
                    .collect::<Vec<_>>()
                    .join("; "),
                met: Some(worst < 50e6),
            }
        });
        let name = "Peak RSS < 200 MB at 2,000 concurrent streams";
        let streams: Vec<&J> = runs.label_runs("streams");
        out.push(if streams.is_empty() {
            Verdict {
                target: name,
                measured: "not measured".into(),
                met: None,
            }
        } else {
            let worst = streams
                .iter()
                .filter_map(|r| r.num("rss_peak_bytes"))
                .fold(0.0, f64::max);
            Verdict {
                target: name,
                measured: streams
                    .iter()
                    .map(|r| {
                        format!(
                            "{} × {}: {} MB, errors {}",
                            fmt_num(r.num("concurrency"), 0),
                            r.text("workload"),
                            fmt_num(r.num("rss_peak_bytes").map(|b| b / 1e6), 1),
                            errors_text(r)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                met: Some(worst > 0.0 && worst < 200e6),
            }
        });

        // 6. Soak.
        let name = "Soak: memory flat (RSS slope × 1 h < 5% of the mean RSS)";
        out.push(match runs.label_runs("soak").last() {
            Some(r) => {
                let slope = r.num("rss_slope_bytes_per_min");
                let samples: Vec<f64> = match r.get("rss_samples") {
                    Some(J::Arr(items)) => items
                        .iter()
                        .filter_map(|s| match s {
                            J::Arr(p) => match p.get(1) {
                                Some(J::Num(v)) => Some(*v),
                                _ => None,
                            },
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let mean = if samples.is_empty() { 0.0 } else { samples.iter().sum::<f64>() / samples.len() as f64 };
                match slope {
                    Some(s) if mean > 0.0 => Verdict {
                        target: name,
                        measured: format!(
                            "{s:.0} bytes/min over {:.0} s ({} samples, mean RSS {:.1} MB, from {:.1} to {:.1} MB, errors {}): {:+.2}% per hour{}",
                            r.num("duration_s").unwrap_or(0.0),
                            samples.len(),
                            mean / 1e6,
                            samples.iter().copied().fold(f64::INFINITY, f64::min) / 1e6,
                            samples.iter().copied().fold(0.0, f64::max) / 1e6,
                            errors_text(r),
                            s * 60.0 / mean * 100.0,
                            if r.num("duration_s").unwrap_or(0.0) < 600.0 {
                                " (a soak this short only rules out fast growth: run SOAK_SECONDS=1800)"
                            } else {
                                ""
                            }
                        ),
                        met: Some((s * 60.0).abs() < 0.05 * mean),
                    },
                    _ => Verdict { target: name, measured: "too few samples".into(), met: None },
                }
            }
            None => Verdict { target: name, measured: "not measured".into(), met: None },
        });
        out
    }

    pub fn run(args: &super::ReportArgs) -> Result<(), BoxError> {
        let text = std::fs::read_to_string(&args.results)?;
        let mut parsed = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            parsed.push(
                parse(line).map_err(|e| format!("{}:{}: {e}", args.results.display(), i + 1))?,
            );
        }
        let runs = Runs { runs: parsed };
        let machine: Vec<(String, String)> = match &args.machine {
            Some(path) => std::fs::read_to_string(path)?
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
            None => Vec::new(),
        };
        let info = |key: &str| {
            machine
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Generated by `bench/compare.sh`{} on {}. Every number below comes from that one run, on one machine: the gateway (`pgway`), \
             PostgreSQL, PgBouncer and the load generator (`pgway-bench`) all ran on it at the same time, over loopback. \
             Compare ratios from the same run, not absolute numbers across runs or machines. \
             Regenerate with `bench/compare.sh` (about 8 minutes on 2 cores; `SOAK_SECONDS=1800` for the long soak).\n",
            if info("mode") == "smoke" {
                " --smoke (a tiny run for CI: not for conclusions)"
            } else {
                ""
            },
            info("date"),
        );
        let _ = writeln!(out, "## The machine\n");
        let _ = writeln!(out, "| | |\n|---|---|");
        for (k, v) in &machine {
            let _ = writeln!(out, "| {k} | {v} |");
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "**The load generator shares the machine.** With {} cores for PostgreSQL, the proxy under test and \
             `pgway-bench` itself, every CPU cycle the load generator spends is taken from the system under test; \
             a gRPC client (HTTP/2 + protobuf) costs more CPU per call than a PostgreSQL wire-protocol client, which \
             counts against the gateway here (the per-run table shows the load generator's CPU per 1,000 queries). \
             The *CPU of other processes* column is CPU used during the measurement by processes that are not part \
             of the benchmark (for example a compiler running at the same time): where it is not near 0, that run was disturbed.\n",
            info("cores")
        );
        let _ = writeln!(out, "## Set-up\n");
        let _ = writeln!(
            out,
            "- PostgreSQL: a throwaway cluster (`initdb` as the `postgres` user), `fsync=off`, `synchronous_commit=off`, \
             `full_page_writes=off`, `shared_buffers=128MB`, `max_connections={}`; `pgbench -i -s {}` data.\n\
             - direct: one tokio-postgres connection per caller, named prepared statements (prepared once per connection).\n\
             - PgBouncer: `pool_mode=transaction`, `default_pool_size=20`, tokio-postgres clients with unnamed statements \
             (`query_typed`, one round trip; named prepared statements need PgBouncer ≥ 1.21).\n\
             - gateway: `target/release/pgway serve`, `PGWAY_POOL_MAX=20`, `PGWAY_MAX_WAITING={}`, `PGWAY_LOG=warn`; \
             {}, each connection hyper's HTTP/2 client \
             used directly (tonic's `Channel` would add a buffer task per connection and cost the load generator more CPU per call).\n\
             - The load generator: one thread per core, each a single-threaded runtime that owns a share of the callers \
             and their connections, so a call never moves between threads.\n\
             - Each point: {} warm-up, then {} measured{}. Concurrency = callers each waiting for its answer before asking again.\n\
             - Workloads: **select** = `pgbench -S` (`{}` with a random aid); **write** = `BEGIN; {}; COMMIT` \
             (the `Transaction` RPC for the gateway); **read1000** = `{}` over 1,000 consecutive aids (unary `Query` for the gateway).\n",
            info("max_connections"),
            info("scale"),
            info("max_waiting"),
            match info("callers_per_channel") {
                "0" => format!(
                    "one HTTP/2 connection per load thread, shared by all of its callers (a gRPC client \
                     process sends every call over its one channel; the 2,000-call memory runs use one \
                     connection per {} callers, as many clients would)",
                    info("stream_callers_per_channel")
                ),
                per =>
                    format!("callers spread over HTTP/2 connections, {per} callers per connection"),
            },
            info("warmup"),
            info("duration"),
            match info("repeat").parse::<u32>() {
                Ok(n) if n > 1 => format!(
                    "; the point-select sweep and the one-caller floor were run {n} times each, \
                     interleaved, and the tables show the run with the median throughput \
                     (every run is in the details)"
                ),
                _ => String::new(),
            },
            super::SELECT_SQL,
            super::UPDATE_SQL,
            super::RANGE_SQL,
        );

        let _ = writeln!(out, "## Targets\n");
        let _ = writeln!(out, "| target | measured | met? |\n|---|---|---|");
        for v in verdicts(&runs) {
            let met = match v.met {
                Some(true) => "**met**",
                Some(false) => "**not met**",
                None => "not measured",
            };
            let _ = writeln!(out, "| {} | {} | {met} |", v.target, v.measured);
        }
        let _ = writeln!(out);

        let _ = writeln!(out, "## Results\n");
        sweep_section(
            &mut out,
            &runs,
            "sweep",
            "select",
            "Point select (`pgbench -S`), concurrency sweep",
        );
        sweep_section(
            &mut out,
            &runs,
            "workloads",
            "write",
            "Small write transaction",
        );
        sweep_section(&mut out, &runs, "workloads", "read1000", "1,000-row read");

        let floor = runs.label_runs("floor");
        if !floor.is_empty() {
            let _ = writeln!(out, "### One caller: the round-trip floor of each stack\n");
            let _ = writeln!(
                out,
                "`ping` is a call that does no SQL: the gRPC health `Check` for the gateway, an empty query for \
                 PostgreSQL and PgBouncer. The gap between `ping` and `select` is the work of the query itself; \
                 the gap between the targets' `ping` is the cost of their protocol stacks on this machine. \
                 The `loopback` rows are under every stack: one byte sent back and forth between two threads \
                 over a loopback TCP connection, with blocking sockets and no protocol (`pgway-bench hop`), \
                 the threads pinned to two different cores (`tcp-2-cores`) or both to one (`tcp-1-core`). \
                 A call through the gateway or PgBouncer makes two such round trips where a direct call \
                 makes one, so the `tcp-2-cores` row is the scale on which to read what a proxy adds at one \
                 caller: what this machine charges for waking a thread on another core, before any protocol \
                 (less when the scheduler happens to put the two processes on one core).\n"
            );
            let _ = writeln!(
                out,
                "| target | workload | q/s | p50 µs | p90 µs | p99 µs | proxy CPU ms / 1k | PostgreSQL CPU ms / 1k | load generator CPU ms / 1k |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
            );
            let stacks = TARGETS.iter().flat_map(|&t| {
                runs.find("floor", t, "ping", 1)
                    .into_iter()
                    .chain(runs.find("sweep", t, "select", 1))
            });
            let bare = ["tcp-2-cores", "tcp-1-core"]
                .into_iter()
                .filter_map(|w| runs.find("floor", "loopback", w, 1));
            for r in stacks.chain(bare) {
                let ms = |k: &str| fmt_num(r.num(k).map(|v| v * 1000.0), 1);
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.text("target"),
                    r.text("workload"),
                    fmt_num(r.num("throughput_qps"), 0),
                    fmt_num(r.num("p50_us"), 0),
                    fmt_num(r.num("p90_us"), 0),
                    fmt_num(r.num("p99_us"), 0),
                    ms("cpu_s_per_1k"),
                    ms("pg_cpu_s_per_1k"),
                    ms("bench_cpu_s_per_1k"),
                );
            }
            let _ = writeln!(out);
        }

        let streams = runs.label_runs("streams");
        if !streams.is_empty() {
            let _ = writeln!(out, "### Many concurrent calls (gateway memory)\n");
            let _ = writeln!(
                out,
                "| callers | workload | channels | q/s | p50 µs | p99 µs | errors | peak RSS | RSS after |\n|---:|---|---:|---:|---:|---:|---|---:|---:|"
            );
            for r in streams {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    fmt_num(r.num("concurrency"), 0),
                    r.text("workload"),
                    fmt_num(r.num("connections"), 0),
                    fmt_num(r.num("throughput_qps"), 0),
                    fmt_num(r.num("p50_us"), 0),
                    fmt_num(r.num("p99_us"), 0),
                    errors_text(r),
                    mib(r.num("rss_peak_bytes")),
                    mib(r.num("rss_end_bytes")),
                );
            }
            let _ = writeln!(out);
        }

        if let Some(r) = runs.label_runs("soak").last() {
            let _ = writeln!(out, "### Soak\n");
            let _ = writeln!(
                out,
                "{} callers, point select, {} s after a warm-up of {} s: {} q/s, errors {}, RSS slope {} bytes/min (least squares).\n",
                fmt_num(r.num("concurrency"), 0),
                fmt_num(r.num("duration_s"), 0),
                fmt_num(r.num("warmup_s"), 0),
                fmt_num(r.num("throughput_qps"), 0),
                errors_text(r),
                fmt_num(r.num("rss_slope_bytes_per_min"), 0),
            );
            if let Some(J::Arr(samples)) = r.get("rss_samples") {
                let _ = writeln!(out, "| seconds | RSS |\n|---:|---:|");
                // At most ~20 rows, evenly spread, always the last.
                let step = samples.len().div_ceil(20).max(1);
                for (i, s) in samples.iter().enumerate() {
                    if i % step != 0 && i + 1 != samples.len() {
                        continue;
                    }
                    if let J::Arr(p) = s {
                        if let (Some(J::Num(t)), Some(J::Num(v))) = (p.first(), p.get(1)) {
                            let _ = writeln!(out, "| {t:.0} | {:.2} MiB |", v / 1048576.0);
                        }
                    }
                }
                let _ = writeln!(out);
            }
        }

        let notes = info("notes");
        if !notes.is_empty() {
            let _ = writeln!(out, "## Notes\n\n{notes}\n");
        }
        if let Some(path) = &args.notes {
            let text = std::fs::read_to_string(path)?;
            let _ = writeln!(out, "{}\n", text.trim_end());
        }
        let _ = writeln!(
            out,
            "Raw results: one JSON line per run, printed by `pgway-bench run` (kept by `bench/compare.sh` in `{}`).",
            info("results_file")
        );

        let mut by_label: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &runs.runs {
            *by_label.entry(r.text("label")).or_default() += 1;
        }
        match &args.out {
            Some(path) => {
                std::fs::write(path, &out)?;
                eprintln!(
                    "wrote {} ({} runs: {by_label:?})",
                    path.display(),
                    runs.runs.len()
                );
            }
            None => print!("{out}"),
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn run(target: &str, concurrency: u64, qps: f64) -> J {
            parse(&format!(
                r#"{{"label":"sweep","target":"{target}","workload":"select","concurrency":{concurrency},"throughput_qps":{qps}}}"#
            ))
            .expect("valid JSON")
        }

        #[test]
        fn a_repeated_point_is_its_median_run() {
            let runs = Runs {
                runs: vec![
                    run("gateway", 100, 900.0),
                    run("gateway", 100, 300.0),
                    run("gateway", 10, 50.0),
                    run("gateway", 100, 600.0),
                    run("direct", 100, 5.0),
                ],
            };
            let q = |r: Option<&J>| r.and_then(|r| r.num("throughput_qps"));
            assert_eq!(q(runs.find("sweep", "gateway", "select", 100)), Some(600.0));
            assert_eq!(q(runs.find("sweep", "gateway", "select", 10)), Some(50.0));
            assert_eq!(runs.all("sweep", "gateway", "select", 100).len(), 3);
            assert!(runs.find("sweep", "pgbouncer", "select", 100).is_none());
            let two = Runs {
                runs: vec![run("gateway", 1, 20.0), run("gateway", 1, 10.0)],
            };
            assert_eq!(q(two.find("sweep", "gateway", "select", 1)), Some(10.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            123_456,
            10_000_000_000,
        ] {
            let i = bucket_of(v);
            assert!(i >= last);
            last = i;
            let (low, width) = bucket_range(i);
            assert!(
                low <= v && v < low + width,
                "{v} in [{low}, {})",
                low + width
            );
        }
    }

    #[test]
    fn slope_of_a_line() {
        let samples: Vec<(f64, u64)> = (0..10).map(|i| (i as f64 * 6.0, 1000 + i * 10)).collect();
        let slope = slope_per_minute(&samples).unwrap();
        assert!((slope - 100.0).abs() < 1e-6);
    }

    #[test]
    fn hop_times_round_trips_on_one_core_and_on_two() {
        let dir = tempfile::tempdir().unwrap();
        let json_out = dir.path().join("hop.jsonl");
        let args = HopArgs {
            duration: Duration::from_millis(200),
            label: "floor".into(),
            json_out: Some(json_out.clone()),
        };
        hop::run(&args).unwrap();
        let text = std::fs::read_to_string(json_out).unwrap();
        let runs: Vec<_> = text.lines().map(|l| report::parse(l).unwrap()).collect();
        let mut expected = vec!["tcp-1-core"];
        if rustix::thread::sched_getaffinity(None).unwrap().count() > 1 {
            expected.insert(0, "tcp-2-cores");
        }
        let workloads: Vec<&str> = runs.iter().map(|r| r.text("workload")).collect();
        assert_eq!(workloads, expected);
        for r in &runs {
            assert_eq!(r.text("target"), "loopback");
            assert!(r.num("ok").unwrap() > 0.0, "{text}");
            let (p50, p99) = (r.num("p50_us").unwrap(), r.num("p99_us").unwrap());
            assert!(0.0 < p50 && p50 <= p99, "{text}");
        }
    }

    #[test]
    fn the_report_reads_the_added_latency_against_the_bare_hop() {
        let dir = tempfile::tempdir().unwrap();
        let line = |label: &str, target: &str, workload: &str, p50: f64| {
            Json::object()
                .str("label", label)
                .str("target", target)
                .str("workload", workload)
                .int("concurrency", 1)
                .num("throughput_qps", 1000.0)
                .num("p50_us", p50)
                .finish()
        };
        let results = dir.path().join("results.jsonl");
        let lines = [
            line("sweep", "direct", "select", 190.0),
            line("sweep", "gateway", "select", 400.0),
            line("floor", "loopback", "tcp-2-cores", 123.0),
            line("floor", "loopback", "tcp-1-core", 16.0),
        ];
        std::fs::write(&results, lines.join("\n")).unwrap();
        let out = dir.path().join("BENCHMARKS.md");
        let args = ReportArgs {
            results,
            machine: None,
            out: Some(out.clone()),
            notes: None,
        };
        report::run(&args).unwrap();
        let text = std::fs::read_to_string(out).unwrap();
        assert!(
            text.contains(
                "400 − 190 = 210 µs (a bare loopback round trip between two cores: 123 µs)"
            ),
            "{text}"
        );
        assert!(
            text.contains("| loopback | tcp-2-cores | 1000 | 123 |"),
            "{text}"
        );
        assert!(
            text.contains("| loopback | tcp-1-core | 1000 | 16 |"),
            "{text}"
        );
    }

    #[test]
    fn json_round_trip() {
        let mut j = Json::object();
        let mut map = BTreeMap::new();
        map.insert("UNAVAILABLE/POOL_TIMEOUT".to_owned(), 3);
        j.str("a", "x\"y")
            .num("b", 1.5)
            .map("e", &map)
            .opt_num("n", None);
        let text = j.finish();
        let parsed = report::parse(&text).unwrap();
        assert_eq!(parsed.text("a"), "x\"y");
        assert_eq!(parsed.num("b"), Some(1.5));
    }
}
