//! `pgbench` and `idle`: the PostgreSQL door measured with PostgreSQL's own load tool.
//!
//! `pgway-bench pgbench` runs one `pgbench` against one target (pgway's PostgreSQL door,
//! PgBouncer, PgDog or PostgreSQL itself) and measures it the way `run` measures its own
//! callers: the measured window starts after `--warmup` and lasts `--duration`, timed by
//! pgbench's own progress lines (`-P 1`), so neither the clients' logins (SCRAM for the proxies)
//! nor their disconnections are counted. Over the window it reads the CPU of the proxy (`--pid`),
//! of the whole PostgreSQL cluster (`--pg-pid`) and of pgbench itself, and the proxy's peak
//! RSS; after pgbench exits it reads its failed transactions and aborted clients. One JSON
//! line per run, as `run` prints (`tool` is `pgbench`, `statements` the `-M` mode).
//!
//! `pgway-bench idle` opens N client connections (tokio-postgres, so SCRAM when the target
//! asks for it), runs one `SELECT 1` on each, holds them all open for `--hold`, and reports
//! the proxy's RSS before, at its peak and at the end of the hold.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::StreamExt as _;

use crate::json::{self, Num, RunLine};
use crate::procfs;
use crate::{BoxError, Target, parse_duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Script {
    /// `-S`: the built-in select-only script (one point select per transaction).
    Select,
    /// The built-in TPC-B-like script (five statements in BEGIN … END).
    Tpcb,
}

impl Script {
    fn name(self) -> &'static str {
        match self {
            Script::Select => "select",
            Script::Tpcb => "tpcb",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// `-M simple`.
    Simple,
    /// `-M extended`: unnamed statements, Parse/Bind/Execute each time.
    Extended,
    /// `-M prepared`: named statements, prepared once per client connection.
    Prepared,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
            Protocol::Prepared => "prepared",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PgbenchArgs {
    /// What is measured (the name kept in the JSON line).
    #[arg(long, value_enum)]
    target: Target,

    /// The pgbench binary.
    #[arg(long, default_value = "pgbench")]
    pgbench: String,

    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    #[arg(long)]
    port: u16,

    #[arg(long, default_value = "postgres")]
    user: String,

    #[arg(long, default_value = "postgres")]
    dbname: String,

    /// The script.
    #[arg(long, value_enum, default_value = "select")]
    script: Script,

    /// pgbench's `-M`.
    #[arg(long, value_enum, default_value = "extended")]
    protocol: Protocol,

    /// Clients (`-c`).
    #[arg(long, short = 'c', default_value_t = 10)]
    clients: usize,

    /// pgbench threads (`-j`).
    #[arg(long, short = 'j', default_value_t = 2)]
    jobs: usize,

    /// Time run before the window (whole seconds: pgbench reports once a second).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,

    /// The measured window (whole seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// PID of the proxy whose CPU and memory are measured (pgway, PgBouncer or PgDog).
    #[arg(long)]
    pid: Option<u32>,

    /// PID of the postmaster: the CPU of the whole PostgreSQL cluster is measured too.
    #[arg(long)]
    pg_pid: Option<u32>,

    /// A label kept in the JSON line.
    #[arg(long, default_value = "door")]
    label: String,

    /// Append the JSON line to this file too.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// What is measured (the name kept in the JSON line).
    #[arg(long, value_enum)]
    target: Target,

    /// A postgres:// URL (with the password when the target asks for one).
    #[arg(long)]
    url: String,

    /// Client connections to open and hold.
    #[arg(long, short = 'c', default_value_t = 1000)]
    clients: usize,

    /// Connections being opened at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,

    /// How long all of them are held open, idle, after the last one logged in.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,

    /// PID of the proxy whose memory is measured.
    #[arg(long)]
    pid: Option<u32>,

    #[arg(long, default_value = "door")]
    label: String,

    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

/// One `progress:` line of pgbench: seconds since its start, tps over the last interval.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Progress {
    at_s: f64,
    tps: f64,
}

/// `progress: 5.0 s, 8345.2 tps, lat 1.198 ms stddev 0.500, 0 failed`
fn parse_progress(line: &str) -> Option<Progress> {
    let rest = line.strip_prefix("progress: ")?;
    let mut fields = rest.split(", ");
    let at_s = fields.next()?.strip_suffix(" s")?.parse().ok()?;
    let tps = fields.next()?.strip_suffix(" tps")?.parse().ok()?;
    Some(Progress { at_s, tps })
}

/// What pgbench's summary (stdout) says.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    processed: Option<u64>,
    failed: Option<u64>,
    latency_ms: Option<f64>,
    tps: Option<f64>,
}

fn parse_summary(text: &str) -> Summary {
    let mut summary = Summary::default();
    let first_number = |s: &str| {
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse::<f64>().ok())
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("number of transactions actually processed: ") {
            summary.processed = v.split('/').next().and_then(|n| n.trim().parse().ok());
        } else if let Some(v) = line.strip_prefix("number of failed transactions: ") {
            summary.failed = first_number(v).map(|n| n as u64);
        } else if let Some(v) = line.strip_prefix("latency average = ") {
            summary.latency_ms = first_number(v);
        } else if let Some(v) = line.strip_prefix("tps = ") {
            summary.tps = first_number(v);
        }
    }
    summary
}

/// Sums the transactions of the progress lines inside (start, end] seconds: (transactions,
/// seconds covered).
fn window(progress: &[Progress], start_s: f64, end_s: f64) -> (f64, f64) {
    let mut tx = 0.0;
    let mut covered = 0.0;
    let mut last = None::<f64>;
    for p in progress {
        if p.at_s > start_s + 0.01 && p.at_s <= end_s + 0.01 {
            let since = last.unwrap_or(p.at_s - 1.0);
            tx += p.tps * (p.at_s - since);
            covered += p.at_s - since;
        }
        last = Some(p.at_s);
    }
    (tx, covered)
}

struct Snapshot {
    at: Instant,
    /// The `--pid` process's CPU time, user and system (one read of its stat).
    pid_cpu: Option<procfs::CpuTicks>,
    pg_cpu: Option<f64>,
    pgbench_cpu: Option<f64>,
    machine: Option<(f64, f64)>,
}

fn snapshot(args: &PgbenchArgs, child: u32) -> Snapshot {
    let at = Instant::now();
    Snapshot {
        at,
        pid_cpu: args.pid.and_then(procfs::cpu_ticks),
        pg_cpu: args.pg_pid.and_then(procfs::tree_cpu_seconds),
        pgbench_cpu: procfs::cpu_seconds(child),
        machine: procfs::machine_cpu(),
    }
}

pub fn run_pgbench(args: &PgbenchArgs) -> Result<(), BoxError> {
    let warmup_s = args.warmup.as_secs().max(1);
    let duration_s = args.duration.as_secs().max(1);
    let started_unix = json::started_unix();
    let mut child = command(args, warmup_s + duration_s)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.pgbench))?;
    let child_pid = child.id();
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // Progress lines as they come (stderr), and everything else pgbench said there.
    let (tx, rx) = mpsc::channel::<Result<Progress, String>>();
    let stderr_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let item = parse_progress(&line).ok_or(line);
            if tx.send(item).is_err() {
                break;
            }
        }
    });

    let start_s = warmup_s as f64;
    let end_s = (warmup_s + duration_s) as f64;
    let watched = watch(args, &rx, child_pid, start_s, end_s);
    let status = child.wait()?;
    let _ = stderr_reader.join();
    let summary = parse_summary(&stdout_reader.join().unwrap_or_default());
    let failures = Failures::of(&watched.other_lines, &summary, status);
    let measured = Measured::of(&watched, &summary, start_s, end_s);

    let line = pgbench_line(args, warmup_s, started_unix, &summary, &failures, &measured)?;
    let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.1}", v * 1000.0));
    let (failed, aborted) = (failures.failed, failures.aborted);
    eprintln!(
        "pgbench {:<9} {:<6} -M {:<8} c={:<4} {:>9.0} tps  failed {failed}  aborted {aborted}  proxy cpu {} ms/1k  pg cpu {} ms/1k  pgbench cpu {} ms/1k  rss peak {}  other cpu {}",
        args.target.name(),
        args.script.name(),
        args.protocol.name(),
        args.clients,
        measured.qps,
        ms(measured.per_1k(measured.pid_cpu)),
        ms(measured.per_1k(measured.pg_cpu)),
        ms(measured.per_1k(measured.pgbench_cpu)),
        measured
            .rss_peak
            .map_or("–".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
        measured
            .other_cpu
            .map_or("–".into(), |s| format!("{s:.1}s")),
    );
    if failures.total() > 0 || !measured.windowed {
        for l in watched.other_lines.iter().take(5) {
            eprintln!("pgbench: {l}");
        }
    }
    json::emit(line, args.json_out.as_deref())?;
    if !measured.windowed {
        return Err("pgbench gave no measured window (see its messages above)".into());
    }
    Ok(())
}

/// The pgbench command line, to run for `seconds` and one more.
fn command(args: &PgbenchArgs, seconds: u64) -> Command {
    let mut command = Command::new(&args.pgbench);
    command.args(["-n", "-P", "1"]);
    if args.script == Script::Select {
        command.arg("-S");
    }
    command
        .args(["-M", args.protocol.name()])
        .args(["-c", &args.clients.to_string()])
        .args(["-j", &args.jobs.min(args.clients).max(1).to_string()])
        // One more second, so that the progress line closing the window is printed.
        .args(["-T", &(seconds + 1).to_string()])
        .args(["-h", &args.host, "-p", &args.port.to_string()])
        .args(["-U", &args.user, &args.dbname])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// What was read while pgbench ran: its lines, and the processes at the window's two ends.
struct Watched {
    progress: Vec<Progress>,
    other_lines: Vec<String>,
    before: Option<Snapshot>,
    after: Option<Snapshot>,
    hwm_reset: bool,
    sampled_peak: u64,
    hwm: Option<u64>,
    rss_end: Option<u64>,
}

/// Follows pgbench's stderr until it closes, reading the processes when its progress lines
/// open and close the (`start_s`, `end_s`] window, and sampling the proxy's RSS inside it.
fn watch(
    args: &PgbenchArgs,
    rx: &mpsc::Receiver<Result<Progress, String>>,
    child_pid: u32,
    start_s: f64,
    end_s: f64,
) -> Watched {
    let mut w = Watched {
        progress: Vec::new(),
        other_lines: Vec::new(),
        before: None,
        after: None,
        hwm_reset: false,
        sampled_peak: 0,
        hwm: None,
        rss_end: None,
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(p)) => {
                w.progress.push(p);
                if w.before.is_none() && p.at_s >= start_s - 0.01 {
                    w.hwm_reset = args.pid.is_some_and(procfs::reset_hwm);
                    w.before = Some(snapshot(args, child_pid));
                } else if w.before.is_some() && w.after.is_none() && p.at_s >= end_s - 0.01 {
                    w.after = Some(snapshot(args, child_pid));
                    w.hwm = args.pid.and_then(procfs::hwm);
                    w.rss_end = args.pid.and_then(procfs::rss);
                }
            }
            Ok(Err(line)) => w.other_lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if w.before.is_some() && w.after.is_none() {
            if let Some(rss) = args.pid.and_then(procfs::rss) {
                w.sampled_peak = w.sampled_peak.max(rss);
            }
        }
    }
    w
}

/// A run's failed transactions and aborted clients, and a failed pgbench.
struct Failures {
    failed: u64,
    aborted: u64,
    by_code: BTreeMap<String, u64>,
}

impl Failures {
    fn of(other_lines: &[String], summary: &Summary, status: ExitStatus) -> Failures {
        // Clients that gave up: pgbench says so on stderr, one line each.
        let aborted = other_lines
            .iter()
            .filter(|l| l.contains("aborted in command") || l.contains("aborted while"))
            .count() as u64;
        let failed = summary.failed.unwrap_or(0);
        let mut by_code = BTreeMap::new();
        if failed > 0 {
            by_code.insert("failed transactions".to_owned(), failed);
        }
        if aborted > 0 {
            by_code.insert("aborted clients".to_owned(), aborted);
        }
        if !status.success() && aborted == 0 {
            by_code.insert(format!("pgbench exit {}", status.code().unwrap_or(-1)), 1);
        }
        Failures {
            failed,
            aborted,
            by_code,
        }
    }

    fn total(&self) -> u64 {
        self.by_code.values().sum()
    }
}

/// The window's figures: transactions, and the CPU and memory of the processes.
struct Measured {
    ok: f64,
    qps: f64,
    elapsed: f64,
    /// Whether pgbench's progress lines covered the window (else no CPU was read).
    windowed: bool,
    pid_ticks: Option<procfs::CpuTicks>,
    pid_cpu: Option<f64>,
    pg_cpu: Option<f64>,
    pgbench_cpu: Option<f64>,
    machine_busy_pct: Option<f64>,
    other_cpu: Option<f64>,
    rss_peak: Option<u64>,
    hwm: Option<u64>,
    hwm_reset: bool,
    rss_end: Option<u64>,
}

impl Measured {
    fn of(watched: &Watched, summary: &Summary, start_s: f64, end_s: f64) -> Measured {
        let (tx_window, covered) = window(&watched.progress, start_s, end_s);
        let (ok, qps, elapsed, snapshots) = match (&watched.before, &watched.after) {
            (Some(b), Some(a)) if covered > 0.0 => (
                tx_window,
                tx_window / covered,
                (a.at - b.at).as_secs_f64(),
                Some((b, a)),
            ),
            // No window (pgbench stopped early): its own totals, and no CPU.
            _ => (
                summary.processed.unwrap_or(0) as f64,
                summary.tps.unwrap_or(0.0),
                0.0,
                None,
            ),
        };
        let delta = |f: fn(&Snapshot) -> Option<f64>| {
            snapshots.and_then(|(b, a)| f(a).zip(f(b)).map(|(a, b)| a - b))
        };
        let pid_ticks =
            snapshots.and_then(|(b, a)| a.pid_cpu.zip(b.pid_cpu).map(|(a, b)| a.since(b)));
        let pid_cpu = pid_ticks.map(procfs::CpuTicks::total_s);
        let pg_cpu = delta(|s| s.pg_cpu);
        let pgbench_cpu = delta(|s| s.pgbench_cpu);
        let (machine_busy, machine_busy_pct) = match snapshots {
            Some((b, a)) => procfs::machine_busy(b.machine, a.machine),
            None => (None, None),
        };
        let other_cpu = machine_busy.map(|busy| {
            busy - pid_cpu.unwrap_or(0.0) - pg_cpu.unwrap_or(0.0) - pgbench_cpu.unwrap_or(0.0)
        });
        Measured {
            ok,
            qps,
            elapsed,
            windowed: snapshots.is_some(),
            pid_ticks,
            pid_cpu,
            pg_cpu,
            pgbench_cpu,
            machine_busy_pct,
            other_cpu,
            rss_peak: procfs::peak_rss(watched.hwm_reset, watched.hwm, watched.sampled_peak),
            hwm: watched.hwm,
            hwm_reset: watched.hwm_reset,
            rss_end: watched.rss_end,
        }
    }

    fn per_1k(&self, cpu: Option<f64>) -> Option<f64> {
        cpu.filter(|_| self.ok > 0.0).map(|c| c / self.ok * 1000.0)
    }
}

/// The run's JSON line.
fn pgbench_line(
    args: &PgbenchArgs,
    warmup_s: u64,
    started_unix: u64,
    summary: &Summary,
    failures: &Failures,
    m: &Measured,
) -> serde_json::Result<String> {
    let nan = Num(f64::NAN);
    serde_json::to_string(&RunLine {
        tool: "pgbench",
        label: &args.label,
        target: args.target.name(),
        workload: args.script.name(),
        concurrency: args.clients,
        connections: args.clients,
        statements: args.protocol.name(),
        warmup_s: Num(warmup_s as f64),
        duration_s: Num(m.elapsed),
        started_unix,
        ok: m.ok.round() as u64,
        rows: 0,
        errors: failures.total(),
        errors_by_code: failures.by_code.clone(),
        errors_outside_window: 0,
        throughput_qps: Num(m.qps),
        p50_us: nan,
        p90_us: nan,
        p99_us: nan,
        p999_us: nan,
        max_us: nan,
        mean_us: Num(summary.latency_ms.map_or(f64::NAN, |ms| ms * 1000.0)),
        pid: args.pid,
        cpu_s: m.pid_cpu.map(Num),
        cpu_user_s: m.pid_ticks.map(|t| Num(t.user_s())),
        cpu_sys_s: m.pid_ticks.map(|t| Num(t.sys_s())),
        cpu_s_per_1k: m.per_1k(m.pid_cpu).map(Num),
        rss_peak_bytes: m.rss_peak,
        rss_hwm_bytes: m.hwm,
        rss_hwm_reset: m.hwm_reset,
        rss_end_bytes: m.rss_end,
        rss_slope_bytes_per_min: None,
        pg_cpu_s: m.pg_cpu.map(Num),
        pg_cpu_s_per_1k: m.per_1k(m.pg_cpu).map(Num),
        bench_cpu_s: m.pgbench_cpu.map(Num),
        bench_cpu_s_per_1k: m.per_1k(m.pgbench_cpu).map(Num),
        machine_busy_pct: m.machine_busy_pct.map(Num),
        other_cpu_s: m.other_cpu.map(Num),
        loadavg_end: procfs::loadavg(),
        ..RunLine::default()
    })
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run_idle(args: &IdleArgs) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(idle(args))
}

async fn idle(args: &IdleArgs) -> Result<(), BoxError> {
    let started_unix = json::started_unix();
    let rss_start = args.pid.and_then(procfs::rss);
    let hwm_reset = args.pid.is_some_and(procfs::reset_hwm);
    let opened = Instant::now();
    let results = log_in(args).await;
    let login_s = opened.elapsed().as_secs_f64();
    let mut clients = Vec::new();
    let mut errors_by_code: BTreeMap<String, u64> = BTreeMap::new();
    for result in results {
        match result {
            Ok(client) => clients.push(client),
            Err(error) => *errors_by_code.entry(error).or_default() += 1,
        }
    }
    let sampled_peak = hold(args).await;
    let rss_end = args.pid.and_then(procfs::rss);
    let hwm = args.pid.and_then(procfs::hwm);
    let alive = still_alive(&clients).await;
    let lost = clients.len() as u64 - alive;
    if lost > 0 {
        errors_by_code.insert("lost while idle".into(), lost);
    }
    drop(clients);
    let error_total: u64 = errors_by_code.values().sum();
    let rss_peak = procfs::peak_rss(hwm_reset, hwm, sampled_peak);
    let nan = Num(f64::NAN);
    let line = serde_json::to_string(&RunLine {
        tool: "pgway-bench idle",
        label: &args.label,
        target: args.target.name(),
        workload: "idle",
        concurrency: args.clients,
        connections: alive as usize,
        statements: "simple",
        warmup_s: Num(login_s),
        duration_s: Num(args.hold.as_secs_f64()),
        started_unix,
        ok: alive,
        errors: error_total,
        errors_by_code: errors_by_code.clone(),
        throughput_qps: nan,
        p50_us: nan,
        p90_us: nan,
        p99_us: nan,
        p999_us: nan,
        max_us: nan,
        mean_us: nan,
        pid: args.pid,
        rss_start_bytes: rss_start,
        rss_peak_bytes: rss_peak,
        rss_hwm_bytes: hwm,
        rss_hwm_reset: hwm_reset,
        rss_end_bytes: rss_end,
        loadavg_end: procfs::loadavg(),
        ..RunLine::default()
    })?;
    let mib =
        |b: Option<u64>| b.map_or("–".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
    eprintln!(
        "idle {} × {}: logged in in {login_s:.1} s, {alive} alive after {:?}; rss before {}, peak {}, end {}; errors {errors_by_code:?}",
        args.clients,
        args.target.name(),
        args.hold,
        mib(rss_start),
        mib(rss_peak),
        mib(rss_end),
    );
    json::emit(line, args.json_out.as_deref())?;
    Ok(())
}

/// Opens `--clients` connections, `--parallel` at a time, each logged in and asked one
/// `SELECT 1`: the clients, or why each one failed.
async fn log_in(args: &IdleArgs) -> Vec<Result<tokio_postgres::Client, String>> {
    let url = args.url.clone();
    futures::stream::iter(0..args.clients)
        .map(|_| {
            let url = url.clone();
            async move {
                // A proxy that stops accepting (out of file descriptors) must not hang the run.
                let connecting = tokio_postgres::connect(&url, tokio_postgres::NoTls);
                let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                    .await
                    .map_err(|_| "connect timed out".to_owned())?
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(client)
            }
        })
        .buffer_unordered(args.parallel.max(1))
        .collect()
        .await
}

/// Waits `--hold` while the clients are held open and idle, the RSS sampled meanwhile: its
/// peak.
async fn hold(args: &IdleArgs) -> u64 {
    let mut sampled_peak = 0u64;
    let until = Instant::now() + args.hold;
    while Instant::now() < until {
        if let Some(rss) = args.pid.and_then(procfs::rss) {
            sampled_peak = sampled_peak.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampled_peak
}

/// How many of the clients still answer at the end of the hold.
async fn still_alive(clients: &[tokio_postgres::Client]) -> u64 {
    let mut alive = 0u64;
    for client in clients {
        let query = tokio::time::timeout(CONNECT_TIMEOUT, client.simple_query("SELECT 1"));
        if matches!(query.await, Ok(Ok(_))) {
            alive += 1;
        }
    }
    alive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_summary_lines_parse() {
        assert_eq!(
            parse_progress("progress: 5.0 s, 8345.2 tps, lat 1.198 ms stddev 0.500, 0 failed"),
            Some(Progress {
                at_s: 5.0,
                tps: 8345.2
            })
        );
        assert_eq!(parse_progress("pgbench (15.10)"), None);
        let summary = parse_summary(
            "transaction type: <builtin: select only>\n\
             number of transactions actually processed: 123456\n\
             number of failed transactions: 0 (0.000%)\n\
             latency average = 1.234 ms\n\
             tps = 9876.543210 (without initial connection time)\n",
        );
        assert_eq!(
            summary,
            Summary {
                processed: Some(123456),
                failed: Some(0),
                latency_ms: Some(1.234),
                tps: Some(9876.54321),
            }
        );
    }

    #[test]
    fn the_window_sums_the_intervals_inside_it() {
        let p = |at_s, tps| Progress { at_s, tps };
        let lines = [
            p(1.0, 10.0),
            p(2.0, 100.0),
            p(3.0, 200.0),
            p(4.0, 300.0),
            p(5.0, 7.0),
        ];
        assert_eq!(window(&lines, 2.0, 4.0), (500.0, 2.0));
    }
}
