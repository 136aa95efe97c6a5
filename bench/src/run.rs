//! One run: the callers started, the warm-up, the measured window, and its JSON line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgway::core::telemetry;

use crate::histogram::Histogram;
use crate::json::{self, Num, RunLine};
use crate::procfs;
use crate::shards::Shards;
use crate::targets::{self, Params, Shared};
use crate::{BoxError, RunArgs, StatementMode, Target};

/// What is read before and after the measured window.
struct Snapshot {
    at: Instant,
    /// The `--pid` process's CPU time, user and system (one read of its stat).
    pid_cpu: Option<procfs::CpuTicks>,
    pg_cpu: Option<f64>,
    self_cpu: Option<f64>,
    machine: Option<(f64, f64)>,
    metrics: Option<Vec<f64>>,
}

const METRIC_NAMES: [&str; 3] = [
    telemetry::POOL_ACQUIRE_TIMEOUTS,
    telemetry::SHED,
    telemetry::RETRIES,
];

async fn snapshot(args: &RunArgs) -> Snapshot {
    let metrics = match &args.metrics_addr {
        Some(addr) => scrape(addr, &METRIC_NAMES).await,
        None => None,
    };
    let at = Instant::now();
    Snapshot {
        at,
        pid_cpu: args.pid.and_then(procfs::cpu_ticks),
        pg_cpu: args.pg_pid.and_then(procfs::tree_cpu_seconds),
        self_cpu: procfs::cpu_seconds(std::process::id()),
        machine: procfs::machine_cpu(),
        metrics,
    }
}

/// Where a sample's name ends: at its labels, or at the space before its value.
const NAME_END: [char; 2] = ['{', ' '];

/// Sums the counters named in `names` from the gateway's /metrics (all label sets), read as
/// `pgway stats` reads it.
async fn scrape(addr: &str, names: &[&str]) -> Option<Vec<f64>> {
    let addr = tokio::net::lookup_host(addr).await.ok()?.next()?;
    let text = pgway::admin::stats::fetch(addr).await.ok()?;
    let mut sums = vec![0.0; names.len()];
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(NAME_END).unwrap_or(line.len());
        let name = &line[..name_end];
        if let Some(i) = names.iter().position(|n| *n == name) {
            if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                sums[i] += value;
            }
        }
    }
    Some(sums)
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

pub async fn run(args: RunArgs, shards: &Shards) -> Result<(), BoxError> {
    check(&args)?;
    let mode = args.statements.unwrap_or(match args.target {
        Target::Pgbouncer | Target::Pgdog => StatementMode::Unnamed,
        _ => StatementMode::Prepared,
    });
    let params = Arc::new(params(&args)?);
    let args = Arc::new(args);
    let shared = Arc::new(Shared {
        histogram: Histogram::new(),
        errors: Mutex::new(BTreeMap::new()),
        other_errors: AtomicU64::new(0),
        recording: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        rows: AtomicU64::new(0),
    });
    let started_unix = json::started_unix();
    let (callers, connections) = targets::connect_callers(&args, mode, shards).await?;

    let mut tasks = Vec::with_capacity(callers.len());
    let count = callers.len();
    for (index, (shard, caller)) in callers.into_iter().enumerate() {
        tasks.push(shards.handle(shard).spawn(targets::caller_loop(
            caller,
            targets::Pace::of(args.rate, count, index),
            Arc::clone(&shared),
            Arc::clone(&params),
            Arc::clone(&args),
            mode,
        )));
    }

    tokio::time::sleep(args.warmup).await;
    let window = measure(&args, &shared).await;

    shared.stop.store(true, Ordering::Relaxed);
    let stop_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for task in tasks {
        if tokio::time::timeout_at(stop_deadline, task).await.is_err() {
            // Stuck caller (a target that stopped answering): leave it, the process ends.
        }
    }

    let results = Results::of(&window, &shared);
    let line = run_line(&args, mode, connections, started_unix, &window, &results)?;
    eprintln!("{}", human_line(&args, &window, &results));
    json::emit(line, args.json_out.as_deref())?;
    Ok(())
}

/// The options that the command line's types let through but that make no run.
fn check(args: &RunArgs) -> Result<(), BoxError> {
    if args.read_only && !matches!(args.target, Target::Gateway) {
        return Err("--read-only is for the gateway target".into());
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        return Err(format!(
            "--rate {} is not a rate: give calls per second, or 0",
            args.rate
        )
        .into());
    }
    Ok(())
}

/// What every caller's calls are made of (the bearer token read from `--bearer-file`).
fn params(args: &RunArgs) -> Result<Params, BoxError> {
    Ok(Params {
        workload: args.workload,
        accounts: i32::try_from(u64::from(args.scale) * 100_000).unwrap_or(i32::MAX),
        rows: i32::try_from(args.rows.max(1)).unwrap_or(i32::MAX),
        read_only: args.read_only,
        authorization: match &args.bearer_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)?;
                let token = text.lines().next().unwrap_or_default().trim();
                Some(format!("Bearer {token}").parse()?)
            }
        },
    })
}

/// The measured window: the readings at its two ends, and the RSS of `--pid` in between.
struct Window {
    before: Snapshot,
    after: Snapshot,
    hwm_reset: bool,
    sampled_peak: u64,
    /// (seconds into the window, bytes), every `--sample-every`.
    samples: Vec<(f64, u64)>,
    hwm: Option<u64>,
    rss_end: Option<u64>,
}

/// The measured window, the callers recording their calls throughout it.
async fn measure(args: &RunArgs, shared: &Shared) -> Window {
    let hwm_reset = args.pid.is_some_and(procfs::reset_hwm);
    let before = snapshot(args).await;
    shared.recording.store(true, Ordering::Relaxed);
    let sampler = tokio::spawn(sample_rss(args.pid, args.sample_every, args.duration));
    tokio::time::sleep(args.duration).await;
    shared.recording.store(false, Ordering::Relaxed);
    let after = snapshot(args).await;
    let (sampled_peak, samples) = sampler.await.unwrap_or_default();
    let hwm = args.pid.and_then(procfs::hwm);
    let rss_end = args.pid.and_then(procfs::rss);
    Window {
        before,
        after,
        hwm_reset,
        sampled_peak,
        samples,
        hwm,
        rss_end,
    }
}

/// The RSS of `pid` every 100 ms for `duration`: its peak, and a sample every `every`.
async fn sample_rss(
    pid: Option<u32>,
    every: Duration,
    duration: Duration,
) -> (u64, Vec<(f64, u64)>) {
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
}

/// What the window's readings and the callers' counts come to (latencies in nanoseconds).
struct Results {
    elapsed: f64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    error_total: u64,
    qps: f64,
    pid_ticks: Option<procfs::CpuTicks>,
    pid_cpu: Option<f64>,
    pg_cpu: Option<f64>,
    self_cpu: Option<f64>,
    machine_busy_pct: Option<f64>,
    other_cpu: Option<f64>,
    /// The deltas of [`METRIC_NAMES`], in its order.
    metrics: [Option<f64>; 3],
    rss_peak: Option<u64>,
    slope: Option<f64>,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    mean: u64,
    rows: u64,
    errors_outside_window: u64,
}

impl Results {
    fn of(window: &Window, shared: &Shared) -> Results {
        let (before, after) = (&window.before, &window.after);
        let elapsed = (after.at - before.at).as_secs_f64();
        let ok = shared.histogram.count.load(Ordering::Relaxed);
        let errors = shared
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let error_total: u64 = errors.values().sum();
        let qps = ok as f64 / elapsed;
        let delta = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
        let pid_ticks = before.pid_cpu.zip(after.pid_cpu).map(|(b, a)| a.since(b));
        let pid_cpu = pid_ticks.map(procfs::CpuTicks::total_s);
        let pg_cpu = delta(before.pg_cpu, after.pg_cpu);
        let self_cpu = delta(before.self_cpu, after.self_cpu);
        let (machine_busy, machine_busy_pct) = procfs::machine_busy(before.machine, after.machine);
        // CPU used by processes that are not part of the benchmark (other work on the machine).
        let other_cpu = machine_busy.map(|busy| {
            busy - pid_cpu.unwrap_or(0.0) - pg_cpu.unwrap_or(0.0) - self_cpu.unwrap_or(0.0)
        });
        let metric_delta = |i: usize| match (&before.metrics, &after.metrics) {
            (Some(a), Some(b)) => Some(b[i] - a[i]),
            _ => None,
        };
        let rss_peak = procfs::peak_rss(window.hwm_reset, window.hwm, window.sampled_peak);
        let slope = slope_per_minute(&window.samples);
        let h = &shared.histogram;
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
        Results {
            elapsed,
            ok,
            errors,
            error_total,
            qps,
            pid_ticks,
            pid_cpu,
            pg_cpu,
            self_cpu,
            machine_busy_pct,
            other_cpu,
            metrics: [metric_delta(0), metric_delta(1), metric_delta(2)],
            rss_peak,
            slope,
            p50,
            p90,
            p99,
            p999,
            max,
            mean,
            rows: shared.rows.load(Ordering::Relaxed),
            errors_outside_window: shared.other_errors.load(Ordering::Relaxed),
        }
    }

    /// Seconds of CPU in the window per 1,000 successful calls.
    fn per_1k(&self, cpu: Option<f64>) -> Option<f64> {
        cpu.filter(|_| self.ok > 0)
            .map(|c| c / self.ok as f64 * 1000.0)
    }
}

/// Nanoseconds in microseconds.
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The run's JSON line.
fn run_line(
    args: &RunArgs,
    mode: StatementMode,
    connections: usize,
    started_unix: u64,
    window: &Window,
    r: &Results,
) -> serde_json::Result<String> {
    serde_json::to_string(&RunLine {
        tool: "pgway-bench",
        label: &args.label,
        target: args.target.name(),
        workload: args.workload.name(),
        concurrency: args.concurrency,
        rate_qps: (args.rate > 0.0).then_some(Num(args.rate)),
        connections,
        statements: match (args.target, mode) {
            (Target::Gateway, _) => "gateway",
            (_, StatementMode::Prepared) => "prepared",
            (_, StatementMode::Unnamed) => "unnamed",
        },
        warmup_s: Num(args.warmup.as_secs_f64()),
        duration_s: Num(r.elapsed),
        started_unix,
        ok: r.ok,
        rows: r.rows,
        errors: r.error_total,
        errors_by_code: r.errors.clone(),
        errors_outside_window: r.errors_outside_window,
        throughput_qps: Num(r.qps),
        p50_us: Num(us(r.p50)),
        p90_us: Num(us(r.p90)),
        p99_us: Num(us(r.p99)),
        p999_us: Num(us(r.p999)),
        max_us: Num(us(r.max)),
        mean_us: Num(us(r.mean)),
        pid: args.pid,
        cpu_s: r.pid_cpu.map(Num),
        cpu_user_s: r.pid_ticks.map(|t| Num(t.user_s())),
        cpu_sys_s: r.pid_ticks.map(|t| Num(t.sys_s())),
        cpu_s_per_1k: r.per_1k(r.pid_cpu).map(Num),
        rss_peak_bytes: r.rss_peak,
        rss_hwm_bytes: window.hwm,
        rss_hwm_reset: window.hwm_reset,
        rss_start_bytes: None,
        rss_end_bytes: window.rss_end,
        rss_slope_bytes_per_min: r.slope.map(Num),
        pg_cpu_s: r.pg_cpu.map(Num),
        pg_cpu_s_per_1k: r.per_1k(r.pg_cpu).map(Num),
        bench_cpu_s: r.self_cpu.map(Num),
        bench_cpu_s_per_1k: r.per_1k(r.self_cpu).map(Num),
        machine_busy_pct: r.machine_busy_pct.map(Num),
        other_cpu_s: r.other_cpu.map(Num),
        loadavg_end: procfs::loadavg(),
        acquire_timeouts: r.metrics[0].map(Num),
        shed: r.metrics[1].map(Num),
        retries: r.metrics[2].map(Num),
        rss_samples: args.soak.then(|| {
            window
                .samples
                .iter()
                .map(|&(t, bytes)| (Num(t), bytes))
                .collect()
        }),
    })
}

/// The run's line for people (stderr).
fn human_line(args: &RunArgs, window: &Window, r: &Results) -> String {
    let mut human = format!(
        "{:<9} {:<8} c={:<5} {:>9.0} q/s  p50 {:>8.1}µs  p90 {:>8.1}µs  p99 {:>8.1}µs  max {:>9.1}µs  errors {}",
        args.target.name(),
        args.workload.name(),
        args.concurrency,
        r.qps,
        us(r.p50),
        us(r.p90),
        us(r.p99),
        us(r.max),
        r.error_total
    );
    let errors = &r.errors;
    if !errors.is_empty() {
        let _ = write!(human, " {errors:?}");
    }
    if let Some(cpu) = r.per_1k(r.pid_cpu) {
        let _ = write!(human, "  cpu {:.1} ms/1k", cpu * 1000.0);
    }
    if let Some(rss) = r.rss_peak {
        let _ = write!(human, "  rss peak {:.1} MiB", rss as f64 / 1048576.0);
    }
    if let Some(cpu) = r.per_1k(r.pg_cpu) {
        let _ = write!(human, "  pg cpu {:.1} ms/1k", cpu * 1000.0);
    }
    if let Some(cpu) = r.per_1k(r.self_cpu) {
        let _ = write!(human, "  bench cpu {:.1} ms/1k", cpu * 1000.0);
    }
    if let Some(other) = r.other_cpu {
        let _ = write!(human, "  other cpu {:.1}s", other);
    }
    if let Some(slope) = r.slope {
        if args.soak {
            let _ = write!(
                human,
                "  rss slope {:.0} B/min over {} samples",
                slope,
                window.samples.len()
            );
        }
    }
    human
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let samples: Vec<(f64, u64)> = (0..10).map(|i| (i as f64 * 6.0, 1000 + i * 10)).collect();
        let slope = slope_per_minute(&samples).unwrap();
        assert!((slope - 100.0).abs() < 1e-6);
    }
}
