//! `report`: the JSON lines of a bench/compare.sh run rendered as BENCHMARKS.md (the gRPC door
//! here, its one-caller floor and own work per call in `floor`, the PostgreSQL door's pgbench
//! runs in `door`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::json::{self, Record};
use crate::targets::{RANGE_SQL, SELECT_SQL, UPDATE_SQL};
use crate::{BoxError, ReportArgs};

mod door;
mod floor;
mod verdicts;

use floor::{floor_ratio_section, floor_section};
use verdicts::verdicts;

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

fn errors_text(run: &Record) -> String {
    let total = run.errors.unwrap_or(0.0);
    let mut text = format!("{total:.0}");
    if !run.errors_by_code.is_empty() {
        let parts: Vec<String> = run
            .errors_by_code
            .iter()
            .map(|(k, n)| format!("{k}: {n:.0}"))
            .collect();
        let _ = write!(text, " ({})", parts.join(", "));
    }
    text
}

/// Of runs of one point, the one with the median throughput (of an even number, the lower of
/// the two middle ones).
fn median(mut runs: Vec<&Record>) -> Option<&Record> {
    runs.sort_by(|a, b| {
        let q = |r: &Record| r.throughput_qps.unwrap_or(0.0);
        q(a).total_cmp(&q(b))
    });
    runs.get(runs.len().saturating_sub(1) / 2).copied()
}

struct Runs {
    runs: Vec<Record>,
}

impl Runs {
    /// The runs that `keep` keeps, in the order they were made.
    fn select(&self, keep: impl Fn(&Record) -> bool) -> Vec<&Record> {
        self.runs.iter().filter(|r| keep(r)).collect()
    }

    /// Every run of one point, in the order they were made.
    fn all(&self, label: &str, target: &str, workload: &str, concurrency: u64) -> Vec<&Record> {
        self.select(|r| {
            r.label == label
                && r.target == target
                && r.workload == workload
                && r.concurrency == Some(concurrency as f64)
        })
    }

    /// The run that stands for a point: when it was repeated (`REPEAT` in compare.sh), the
    /// one with the median throughput, so that one disturbed run moves no ratio.
    fn find(&self, label: &str, target: &str, workload: &str, concurrency: u64) -> Option<&Record> {
        median(self.all(label, target, workload, concurrency))
    }

    fn concurrencies(&self, label: &str, workload: &str) -> Vec<u64> {
        distinct_concurrencies(self.select(|r| r.label == label && r.workload == workload))
    }

    fn label_runs(&self, label: &str) -> Vec<&Record> {
        self.select(|r| r.label == label)
    }
}

/// The concurrency points of some runs, ascending.
fn distinct_concurrencies(runs: Vec<&Record>) -> Vec<u64> {
    let mut cs: Vec<u64> = runs
        .iter()
        .filter_map(|r| r.concurrency.map(|c| c as u64))
        .collect();
    cs.sort_unstable();
    cs.dedup();
    cs
}

/// The key=value lines compare.sh writes about the machine and the run, in their order.
struct Machine {
    lines: Vec<(String, String)>,
}

impl Machine {
    /// A line's value ("" when absent).
    fn get(&self, key: &str) -> &str {
        self.lines
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Why a pooler (`pgbouncer`, `pgdog`) was not measured, when compare.sh skipped it: its
    /// line then says so (`pgbouncer=not measured (PgBouncer not found)`).
    fn skipped(&self, target: &str) -> Option<&str> {
        Some(self.get(target)).filter(|v| v.starts_with("not measured"))
    }
}

/// The gRPC runs' targets, in their tables' order, with the names the tables give them.
const TARGETS: [&str; 3] = ["direct", "pgbouncer", "gateway"];

fn target_name(target: &str) -> &str {
    match target {
        "pgbouncer" => "PgBouncer",
        t => t,
    }
}

/// `PgBouncer: not measured (PgBouncer not found).` when compare.sh skipped it.
fn skipped_pgbouncer(out: &mut String, machine: &Machine) {
    if let Some(why) = machine.skipped("pgbouncer") {
        let _ = writeln!(out, "PgBouncer: {why}.\n");
    }
}

fn sweep_section(
    out: &mut String,
    runs: &Runs,
    machine: &Machine,
    label: &str,
    workload: &str,
    title: &str,
) {
    let cs = runs.concurrencies(label, workload);
    if cs.is_empty() {
        return;
    }
    // A pooler compare.sh skipped has no columns (a line under the table says why).
    let present: Vec<&str> = TARGETS
        .into_iter()
        .filter(|t| {
            machine.skipped(t).is_none()
                || cs
                    .iter()
                    .any(|&c| !runs.all(label, t, workload, c).is_empty())
        })
        .collect();
    let others: Vec<&str> = present
        .iter()
        .copied()
        .filter(|t| *t != "gateway")
        .collect();
    let names = present
        .iter()
        .map(|t| target_name(t))
        .collect::<Vec<_>>()
        .join(" / ");
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(
        out,
        "Throughput in queries (or transactions, or reads) per second; ratios are of runs in this same invocation.\n"
    );
    let mut head = String::from("| callers |");
    for t in &present {
        let _ = write!(head, " {} q/s |", target_name(t));
    }
    for t in &others {
        let _ = write!(head, " gateway / {} |", target_name(t));
    }
    let _ = writeln!(out, "{head} p50 {names} (µs) | p99 {names} (µs) |");
    let _ = writeln!(
        out,
        "|{}",
        "---:|".repeat(1 + present.len() + others.len() + 2)
    );
    for &c in &cs {
        let get = |t: &str| runs.find(label, t, workload, c);
        let q = |t: &str| get(t).and_then(|r| r.throughput_qps);
        let p = |k: fn(&Record) -> Option<f64>| {
            present
                .iter()
                .map(|t| fmt_num(get(t).and_then(k), 0))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let mut row = format!("| {c} |");
        for t in &present {
            let _ = write!(row, " {} |", fmt_num(q(t), 0));
        }
        for t in &others {
            let _ = write!(row, " {} |", fmt_num(ratio(q("gateway"), q(t)), 2));
        }
        let _ = writeln!(out, "{row} {} | {} |", p(|r| r.p50_us), p(|r| r.p99_us));
    }
    let _ = writeln!(out);
    skipped_pgbouncer(out, machine);
    every_run_details(out, runs, label, workload, &cs);
}

/// Every run of a workload, at the concurrencies `cs`, in a table folded away.
fn every_run_details(out: &mut String, runs: &Runs, label: &str, workload: &str, cs: &[u64]) {
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
            let c = r.concurrency.unwrap_or(0.0);
            let ms = |v: Option<f64>| fmt_num(v.map(|v| v * 1000.0), 1);
            let _ = writeln!(
                out,
                "| {t} | {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}% | {} |",
                fmt_num(r.throughput_qps, 0),
                fmt_num(r.p50_us, 0),
                fmt_num(r.p90_us, 0),
                fmt_num(r.p99_us, 0),
                fmt_num(r.max_us, 0),
                errors_text(r),
                ms(r.cpu_s_per_1k),
                ms(r.pg_cpu_s_per_1k),
                ms(r.bench_cpu_s_per_1k),
                mib(r.rss_peak_bytes),
                fmt_num(r.machine_busy_pct, 0),
                fmt_num(r.other_cpu_s, 1),
            );
        }
    }
    let _ = writeln!(out, "\n</details>\n");
}

struct Verdict {
    target: String,
    measured: String,
    met: Option<bool>,
}

impl Verdict {
    /// A target without the runs to judge it.
    fn unmeasured(target: impl Into<String>) -> Verdict {
        Verdict {
            target: target.into(),
            measured: "not measured".into(),
            met: None,
        }
    }
}

fn verdict_table(out: &mut String, verdicts: Vec<Verdict>) {
    let _ = writeln!(out, "| target | measured | met? |\n|---|---|---|");
    for v in verdicts {
        let met = match v.met {
            Some(true) => "**met**",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | {met} |", v.target, v.measured);
    }
    let _ = writeln!(out);
}

pub fn run(args: &ReportArgs) -> Result<(), BoxError> {
    let runs = read_runs(args)?;
    let machine = read_machine(args)?;
    let mut out = String::new();
    introduction(&mut out, &machine);
    set_up(&mut out, &machine);

    let _ = writeln!(out, "## Targets\n");
    verdict_table(&mut out, verdicts(&runs, &machine));

    let _ = writeln!(out, "## Results\n");
    sweep_section(
        &mut out,
        &runs,
        &machine,
        "sweep",
        "select",
        "Point select (`pgbench -S`), concurrency sweep",
    );
    sweep_section(
        &mut out,
        &runs,
        &machine,
        "workloads",
        "write",
        "Small write transaction",
    );
    sweep_section(
        &mut out,
        &runs,
        &machine,
        "workloads",
        "read1000",
        "1,000-row read",
    );
    floor_section(&mut out, &runs, &machine);
    floor_ratio_section(&mut out, &runs);
    streams_section(&mut out, &runs);
    soak_section(&mut out, &runs);
    door::door_section(&mut out, &runs, &machine);
    notes(&mut out, &machine, args)?;
    write_out(args, &runs, &out)
}

/// The results file's lines, each a run.
fn read_runs(args: &ReportArgs) -> Result<Runs, BoxError> {
    let text = std::fs::read_to_string(&args.results)?;
    let mut parsed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        parsed.push(
            json::parse(line).map_err(|e| format!("{}:{}: {e}", args.results.display(), i + 1))?,
        );
    }
    Ok(Runs { runs: parsed })
}

/// The `--machine` file's key=value lines (none without one).
fn read_machine(args: &ReportArgs) -> Result<Machine, BoxError> {
    Ok(Machine {
        lines: match &args.machine {
            Some(path) => std::fs::read_to_string(path)?
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
            None => Vec::new(),
        },
    })
}

/// The title, where the numbers come from, and the machine they were measured on.
fn introduction(out: &mut String, machine: &Machine) {
    let info = |key: &str| machine.get(key);
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Generated by `bench/compare.sh`{} on {}. Every number below comes from that one run, on one machine: the gateway (`pgway`), \
         PostgreSQL, the poolers it is compared with and the load generator (`pgway-bench`) all ran on it at the same time, over loopback. \
         Compare ratios from the same run, not absolute numbers across runs or machines. \
         Regenerate with `bench/compare.sh` (about 15 minutes on 2 cores; `SOAK_SECONDS=1800` for the long soak).\n",
        if info("mode") == "smoke" {
            " --smoke (a tiny run for CI: not for conclusions)"
        } else {
            ""
        },
        info("date"),
    );
    let _ = writeln!(out, "## The machine\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    for (k, v) in &machine.lines {
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
}

/// How PostgreSQL, the proxies and the load generator were set up.
fn set_up(out: &mut String, machine: &Machine) {
    let info = |key: &str| machine.get(key);
    let _ = writeln!(out, "## Set-up\n");
    let _ = writeln!(
        out,
        "- PostgreSQL: a throwaway cluster (`initdb` as the `postgres` user), `fsync=off`, `synchronous_commit=off`, \
         `full_page_writes=off`, `shared_buffers=128MB`, `max_connections={}`; `pgbench -i -s {}` data.\n\
         - direct: one tokio-postgres connection per caller, named prepared statements (prepared once per connection).\n\
         - PgBouncer: {}\n\
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
        match machine.skipped("pgbouncer") {
            Some(why) => format!("{why}."),
            None => "`pool_mode=transaction`, `default_pool_size=20`, tokio-postgres clients with unnamed \
                     statements (`query_typed`, one round trip; named prepared statements need PgBouncer ≥ 1.21)."
                .to_owned(),
        },
        info("max_waiting"),
        match info("callers_per_channel") {
            "0" => format!(
                "one HTTP/2 connection per load thread, shared by all of its callers (a gRPC client \
                 process sends every call over its one channel; the 2,000-call memory runs use one \
                 connection per {} callers, as many clients would)",
                info("stream_callers_per_channel")
            ),
            per => format!("callers spread over HTTP/2 connections, {per} callers per connection"),
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
        SELECT_SQL,
        UPDATE_SQL,
        RANGE_SQL,
    );

    // Results files from before PG_SOCKET existed don't say: they used loopback TCP.
    if !info("proxies_reach_postgres").is_empty() {
        let _ = writeln!(
            out,
            "The proxies reach PostgreSQL over {}.\n",
            info("proxies_reach_postgres")
        );
    }
}

/// The gateway's memory with many concurrent calls.
fn streams_section(out: &mut String, runs: &Runs) {
    let streams = runs.label_runs("streams");
    if streams.is_empty() {
        return;
    }
    let _ = writeln!(out, "### Many concurrent calls (gateway memory)\n");
    let _ = writeln!(
        out,
        "| callers | workload | channels | q/s | p50 µs | p99 µs | errors | peak RSS | RSS after |\n|---:|---|---:|---:|---:|---:|---|---:|---:|"
    );
    for r in streams {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_num(r.concurrency, 0),
            r.workload,
            fmt_num(r.connections, 0),
            fmt_num(r.throughput_qps, 0),
            fmt_num(r.p50_us, 0),
            fmt_num(r.p99_us, 0),
            errors_text(r),
            mib(r.rss_peak_bytes),
            mib(r.rss_end_bytes),
        );
    }
    let _ = writeln!(out);
}

/// The soak: throughput, errors and the RSS over a long run.
fn soak_section(out: &mut String, runs: &Runs) {
    let soak = runs.label_runs("soak");
    let Some(r) = soak.last() else {
        return;
    };
    let _ = writeln!(out, "### Soak\n");
    let _ = writeln!(
        out,
        "{} callers, point select, {} s after a warm-up of {} s: {} q/s, errors {}, RSS slope {} bytes/min (least squares).\n",
        fmt_num(r.concurrency, 0),
        fmt_num(r.duration_s, 0),
        fmt_num(r.warmup_s, 0),
        fmt_num(r.throughput_qps, 0),
        errors_text(r),
        fmt_num(r.rss_slope_bytes_per_min, 0),
    );
    if let Some(samples) = &r.rss_samples {
        let _ = writeln!(out, "| seconds | RSS |\n|---:|---:|");
        // At most ~20 rows, evenly spread, always the last.
        let step = samples.len().div_ceil(20).max(1);
        for (i, s) in samples.iter().enumerate() {
            if i % step != 0 && i + 1 != samples.len() {
                continue;
            }
            let (t, v) = s;
            let _ = writeln!(out, "| {t:.0} | {:.2} MiB |", v / 1048576.0);
        }
        let _ = writeln!(out);
    }
}

/// The notes of the `--machine` file and of `--notes`, and where the raw results are.
fn notes(out: &mut String, machine: &Machine, args: &ReportArgs) -> Result<(), BoxError> {
    let info = |key: &str| machine.get(key);
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
    Ok(())
}

/// The report written to `--out` (saying so, with the runs by label), or printed.
fn write_out(args: &ReportArgs, runs: &Runs, out: &str) -> Result<(), BoxError> {
    let mut by_label: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &runs.runs {
        *by_label.entry(r.label.as_str()).or_default() += 1;
    }
    match &args.out {
        Some(path) => {
            std::fs::write(path, out)?;
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
mod tests;
