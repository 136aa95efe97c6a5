//! The JSON lines: one object per run, printed by `run` and `hop` (and appended to
//! `--json-out`), read back by `report`.
//!
//! bench/compare.sh collects them in target/bench/results-*.jsonl and renders BENCHMARKS.md
//! from them with `report`: the names and meaning of the fields are what ties the three
//! together (and what makes older results files still readable).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, Serializer};

/// A number as the lines carry it: rounded to three decimals (a microsecond to the nanosecond,
/// a second to the millisecond; more is noise), `null` when not finite.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Num(pub f64);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_finite() {
            serializer.serialize_f64((self.0 * 1000.0).round() / 1000.0)
        } else {
            serializer.serialize_none()
        }
    }
}

/// The line of one `run`. Absent measurements are `null`, not left out, so that every run's
/// line has the same fields.
#[derive(Debug, Default, Serialize)]
pub struct RunLine<'a> {
    pub tool: &'static str,
    /// `--label`: compare.sh groups runs by it (sweep, floor, workloads, soak, streams).
    pub label: &'a str,
    pub target: &'static str,
    pub workload: &'static str,
    pub concurrency: usize,
    /// `--rate`: the calls per second asked for, when the callers were paced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_qps: Option<Num>,
    /// HTTP/2 connections for the gateway, PostgreSQL connections otherwise.
    pub connections: usize,
    /// `gateway`, `prepared` or `unnamed`.
    pub statements: &'static str,
    pub warmup_s: Num,
    /// The measured window as it was (a little more than `--duration`).
    pub duration_s: Num,
    pub started_unix: u64,
    /// Calls answered without error in the window.
    pub ok: u64,
    pub rows: u64,
    pub errors: u64,
    /// `CODE`, `CODE/REASON` (gRPC), `SQLSTATE_xxxxx`, `CONNECTION_CLOSED`, ...
    pub errors_by_code: BTreeMap<String, u64>,
    pub errors_outside_window: u64,
    pub throughput_qps: Num,
    pub p50_us: Num,
    pub p90_us: Num,
    pub p99_us: Num,
    pub p999_us: Num,
    pub max_us: Num,
    pub mean_us: Num,
    /// `--pid`: the proxy whose CPU and memory the `cpu_*` and `rss_*` fields are.
    pub pid: Option<u32>,
    pub cpu_s: Option<Num>,
    /// `cpu_s` split: the proxy's user-space seconds (utime) and the kernel's on its behalf
    /// (stime), over the same window.
    pub cpu_user_s: Option<Num>,
    pub cpu_sys_s: Option<Num>,
    pub cpu_s_per_1k: Option<Num>,
    pub rss_peak_bytes: Option<u64>,
    pub rss_hwm_bytes: Option<u64>,
    pub rss_hwm_reset: bool,
    /// `idle` only: the proxy's RSS before its clients connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_start_bytes: Option<u64>,
    pub rss_end_bytes: Option<u64>,
    pub rss_slope_bytes_per_min: Option<Num>,
    /// The whole PostgreSQL cluster (`--pg-pid` and its children).
    pub pg_cpu_s: Option<Num>,
    pub pg_cpu_s_per_1k: Option<Num>,
    /// pgway-bench itself.
    pub bench_cpu_s: Option<Num>,
    pub bench_cpu_s_per_1k: Option<Num>,
    pub machine_busy_pct: Option<Num>,
    /// CPU of processes outside the benchmark during the window.
    pub other_cpu_s: Option<Num>,
    pub loadavg_end: String,
    /// Deltas of the gateway's counters over the window (`--metrics-addr`).
    pub acquire_timeouts: Option<Num>,
    pub shed: Option<Num>,
    pub retries: Option<Num>,
    /// `--soak` only: `[seconds, bytes]` RSS samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_samples: Option<Vec<(Num, u64)>>,
}

/// The line of one placement of `hop` (target `loopback`).
#[derive(Debug, Serialize)]
pub struct HopLine<'a> {
    pub tool: &'static str,
    pub label: &'a str,
    pub target: &'static str,
    /// `tcp-2-cores` or `tcp-1-core`.
    pub workload: &'static str,
    pub concurrency: u64,
    pub duration_s: Num,
    pub ok: u64,
    pub throughput_qps: Num,
    pub p50_us: Num,
    pub p90_us: Num,
    pub p99_us: Num,
    pub max_us: Num,
}

/// What `report` reads of a line (of either kind): every field optional, other fields ignored.
/// Numbers are read as `f64`, whichever way they were written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Record {
    /// `pgway-bench`, `pgbench`, `callgrind` (bench/callgrind.sh), ...
    pub tool: String,
    pub label: String,
    pub target: String,
    pub workload: String,
    pub concurrency: Option<f64>,
    pub connections: Option<f64>,
    pub warmup_s: Option<f64>,
    pub duration_s: Option<f64>,
    pub ok: Option<f64>,
    pub errors: Option<f64>,
    pub errors_by_code: BTreeMap<String, f64>,
    pub throughput_qps: Option<f64>,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    pub cpu_s: Option<f64>,
    /// Absent from the lines of older runs.
    pub cpu_user_s: Option<f64>,
    pub cpu_sys_s: Option<f64>,
    pub cpu_s_per_1k: Option<f64>,
    pub pg_cpu_s: Option<f64>,
    pub bench_cpu_s: Option<f64>,
    pub statements: String,
    pub rss_peak_bytes: Option<f64>,
    pub rss_start_bytes: Option<f64>,
    pub rss_end_bytes: Option<f64>,
    pub rss_slope_bytes_per_min: Option<f64>,
    pub pg_cpu_s_per_1k: Option<f64>,
    pub bench_cpu_s_per_1k: Option<f64>,
    pub mean_us: Option<f64>,
    pub machine_busy_pct: Option<f64>,
    pub other_cpu_s: Option<f64>,
    pub acquire_timeouts: Option<f64>,
    pub rss_samples: Option<Vec<(f64, f64)>>,
    /// bench/callgrind.sh's lines (label `instructions`): the gateway's instructions over the
    /// counted window, and per call.
    pub instructions: Option<f64>,
    pub instructions_per_call: Option<f64>,
}

/// A line's `started_unix`: seconds since the Unix epoch (0 for a clock set before it).
pub fn started_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads one line.
pub fn parse(line: &str) -> serde_json::Result<Record> {
    serde_json::from_str(line)
}

/// Prints a run's line on stdout and appends it to `--json-out` when given.
pub fn emit(line: String, json_out: Option<&Path>) -> std::io::Result<()> {
    println!("{line}");
    match json_out {
        Some(path) => append_lines(path, &[line]),
        None => Ok(()),
    }
}

/// Appends JSON lines to a results file (`--json-out`), creating it when missing.
pub fn append_lines(path: &Path, lines: &[String]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for line in lines {
        writeln!(file, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_line_reads_back() {
        let mut errors_by_code = BTreeMap::new();
        errors_by_code.insert("UNAVAILABLE/POOL_TIMEOUT".to_owned(), 3);
        let line = RunLine {
            tool: "pgway-bench",
            label: "x\"y",
            target: "gateway",
            workload: "select",
            concurrency: 100,
            errors: 3,
            errors_by_code,
            throughput_qps: Num(1234.56789),
            p50_us: Num(1.5),
            cpu_s: Some(Num(f64::NAN)),
            cpu_user_s: Some(Num(1.23)),
            cpu_sys_s: Some(Num(0.4567)),
            rss_peak_bytes: Some(17_000_000),
            rss_samples: Some(vec![(Num(0.1004), 1), (Num(5.0), 2)]),
            ..RunLine::default()
        };
        let text = serde_json::to_string(&line).unwrap();
        // Three decimals; a measurement that is absent or not a number is null, not left out.
        assert!(text.contains(r#""throughput_qps":1234.568,"#), "{text}");
        assert!(text.contains(r#""cpu_s":null,"#), "{text}");
        assert!(text.contains(r#""pid":null,"#), "{text}");
        assert!(
            text.contains(r#""cpu_user_s":1.23,"cpu_sys_s":0.457,"#),
            "{text}"
        );
        assert!(
            text.contains(r#""errors_by_code":{"UNAVAILABLE/POOL_TIMEOUT":3}"#),
            "{text}"
        );
        let record = parse(&text).unwrap();
        assert_eq!(record.label, "x\"y");
        assert_eq!(record.concurrency, Some(100.0));
        assert_eq!(record.p50_us, Some(1.5));
        assert_eq!(record.rss_peak_bytes, Some(17e6));
        assert_eq!(record.errors_by_code["UNAVAILABLE/POOL_TIMEOUT"], 3.0);
        assert_eq!(record.rss_samples, Some(vec![(0.1, 1.0), (5.0, 2.0)]));
        assert_eq!(record.acquire_timeouts, None);
        assert_eq!(record.cpu_user_s, Some(1.23));
        assert_eq!(record.cpu_sys_s, Some(0.457));

        // Without --soak there are no samples at all.
        let text = serde_json::to_string(&RunLine::default()).unwrap();
        assert!(!text.contains("rss_samples"), "{text}");
        assert_eq!(parse(&text).unwrap().rss_samples, None);
    }

    #[test]
    fn a_line_of_the_former_writer_reads() {
        // As the hand-written writer before serde_json printed them: floats without a
        // fraction as integers.
        let record = parse(
            r#"{"tool":"pgway-bench","label":"soak","target":"gateway","workload":"select","concurrency":100,"throughput_qps":9830,"errors_by_code":{},"pid":123,"cpu_s":null,"rss_samples":[[0,17000000],[5.001,17100000]]}"#,
        )
        .unwrap();
        assert_eq!(record.throughput_qps, Some(9830.0));
        assert_eq!(record.cpu_s_per_1k, None);
        // Lines from before the user/system split.
        assert_eq!((record.cpu_user_s, record.cpu_sys_s), (None, None));
        assert_eq!(record.rss_samples.map(|s| s.len()), Some(2));
    }
}
