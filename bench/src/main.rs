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
//!   prepared statements don't survive transaction pooling before PgBouncer 1.21;
//! - `pgdog`: PgDog in transaction pooling mode, as `pgbouncer` (compare.sh measures it at the
//!   PostgreSQL door only, with `pgbench` and `idle`).
//!
//! It prints one JSON line per run on stdout (and appends it to `--json-out`) and a line for
//! people on stderr: throughput, latency percentiles, errors by code, and — for the process
//! named by `--pid` (the gateway or a pooler) — CPU seconds per 1,000 queries and peak RSS,
//! read from `/proc`. With `--pg-pid` it also measures the whole PostgreSQL cluster's CPU.
//! `--soak` samples the RSS every `--sample-every` and reports its least-squares slope.
//!
//! `pgway-bench report` turns the JSON lines of a `bench/compare.sh` run into BENCHMARKS.md.
//! `pgway-bench hop` times a bare loopback TCP round trip between two threads (on two cores and
//! on one): what the machine charges for a hop between processes before any protocol.
//! `pgway-bench pgbench` runs PostgreSQL's own `pgbench` against one target (pgway's PostgreSQL
//! door, PgBouncer, PgDog, PostgreSQL) and measures its window the way `run` does;
//! `pgway-bench idle` holds N idle client connections open and reports the proxy's memory.
//! `pgway-bench free-port` prints a free loopback TCP port (for the script).
//!
//! It is a benchmark, not a test: nothing here asserts a timing.
//!
//! Here: the command line. `run` drives a run: its callers (`targets`: the gateway, PostgreSQL,
//! PgBouncer) on the load threads (`shards`), the gateway's over `h2`, timed by `histogram`,
//! with the processes measured by `procfs`; `hop`; `report`; `json`, the lines they all share.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod h2;
mod histogram;
mod hop;
mod json;
mod pgbench;
mod procfs;
mod report;
mod run;
mod shards;
mod targets;

use h2::GrpcClient;
use shards::Shards;

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// Load tool for pgway (and for PostgreSQL, PgBouncer and PgDog, to compare with).
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
    /// Run one pgbench against one target and measure it like `run` (the PostgreSQL door).
    Pgbench(pgbench::PgbenchArgs),
    /// Open N client connections, hold them idle, and report the proxy's memory.
    Idle(pgbench::IdleArgs),
}

#[derive(Debug, Clone, Args)]
struct HopArgs {
    /// Time measured for each placement (after a tenth of it as warm-up).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
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
    /// PgDog (transaction pooling), one client connection per caller.
    Pgdog,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Gateway => "gateway",
            Target::Direct => "direct",
            Target::Pgbouncer => "pgbouncer",
            Target::Pgdog => "pgdog",
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

    /// Calls per second for all callers together (0: each caller asks again as soon as it has
    /// its answer). Each caller takes its share, its first call staggered; one that falls
    /// far behind carries on from where it is instead of catching up in a burst. It measures a
    /// target at a given rate, such as the no-op call at the point select's rate.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,

    /// Time to run before measuring.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,

    /// Time measured.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
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
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    sample_every: Duration,

    /// Statements for the PostgreSQL targets [default: prepared for direct, unnamed for
    /// pgbouncer and pgdog].
    #[arg(long, value_enum)]
    statements: Option<StatementMode>,

    /// Gateway only: the point select's Query asks for `read_only` (a READ ONLY transaction of
    /// its own, which makes it safe to retry).
    #[arg(long)]
    read_only: bool,

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
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
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
        Cmd::Hop(args) => exit_code("hop", hop::run(&args)),
        Cmd::Pgbench(args) => exit_code("pgbench", pgbench::run_pgbench(&args)),
        Cmd::Idle(args) => exit_code("idle", pgbench::run_idle(&args)),
        Cmd::Report(args) => exit_code("report", report::run(&args)),
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
            let outcome = runtime.block_on(run::run(args, &shards));
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

/// The exit status of a subcommand, its error said on stderr.
fn exit_code(command: &str, outcome: Result<(), BoxError>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pgway-bench {command}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses durations such as `250ms`, `5s`, `2m`, `1h30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write durations like 250ms, 5s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_humantime() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        // The command line parses as written, defaults included.
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
