//! `report`: the JSON lines of a bench/compare.sh run rendered as BENCHMARKS.md (the gRPC door
//! here, the PostgreSQL door's pgbench runs in `door`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::json::{self, Record};
use crate::targets::{RANGE_SQL, SELECT_SQL, UPDATE_SQL};
use crate::{BoxError, ReportArgs};

mod door;
mod verdicts;

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

/// The gRPC door's own work per call: gateway CPU per point select against gateway CPU per
/// call that does nothing (the health `Check`), at each concurrency both were measured at;
/// that CPU split into user space and kernel when the runs have the split; and the gateway's
/// instructions per call counted by callgrind (bench/callgrind.sh) when there are such lines.
fn floor_ratio_section(out: &mut String, runs: &Runs) {
    let pairs: Vec<(u64, &Record, &Record)> = runs
        .concurrencies("floor", "ping")
        .into_iter()
        .filter_map(|c| {
            let ping = runs.find("floor", "gateway", "ping", c)?;
            let select = runs.find("sweep", "gateway", "select", c)?;
            Some((c, ping, select))
        })
        .collect();
    let points: Vec<(u64, f64, f64)> = pairs
        .iter()
        .filter_map(|&(c, ping, select)| {
            let (ping, select) = (ping.cpu_s_per_1k?, select.cpu_s_per_1k?);
            (ping > 0.0).then_some((c, ping, select))
        })
        .collect();
    // The same pair with one HTTP/2 connection per caller, measured side by side under its own
    // label.
    let own_connection: Vec<(u64, f64, f64)> = runs
        .concurrencies("floor-conn", "ping")
        .into_iter()
        .filter_map(|c| {
            let ping = runs
                .find("floor-conn", "gateway", "ping", c)?
                .cpu_s_per_1k?;
            let select = runs
                .find("floor-conn", "gateway", "select", c)?
                .cpu_s_per_1k?;
            (ping > 0.0).then_some((c, ping, select))
        })
        .collect();
    // The no-op call paced at the sweep's select rate: (callers, select q/s, ping q/s, ping CPU,
    // select CPU).
    let paced: Vec<(u64, f64, f64, f64, f64)> = runs
        .concurrencies("floor-rate", "ping")
        .into_iter()
        .filter_map(|c| {
            let ping = runs.find("floor-rate", "gateway", "ping", c)?;
            let select = runs.find("sweep", "gateway", "select", c)?;
            let (ping_cpu, select_cpu) = (ping.cpu_s_per_1k?, select.cpu_s_per_1k?);
            (ping_cpu > 0.0).then_some((
                c,
                select.throughput_qps?,
                ping.throughput_qps?,
                ping_cpu,
                select_cpu,
            ))
        })
        .collect();
    // µs per call of a CPU field of a run.
    let per_call = |r: &Record, seconds: fn(&Record) -> Option<f64>| match (seconds(r), r.ok) {
        (Some(s), Some(ok)) if ok > 0.0 => Some(s / ok * 1e6),
        _ => None,
    };
    // (callers, [user ping, user select, kernel ping, kernel select]) in µs per call.
    let split: Vec<(u64, [f64; 4])> = pairs
        .iter()
        .filter_map(|&(c, ping, select)| {
            Some((
                c,
                [
                    per_call(ping, |r| r.cpu_user_s)?,
                    per_call(select, |r| r.cpu_user_s)?,
                    per_call(ping, |r| r.cpu_sys_s)?,
                    per_call(select, |r| r.cpu_sys_s)?,
                ],
            ))
        })
        .collect();
    let counted = runs
        .select(|r| r.tool == "callgrind" && r.label == "instructions" && r.target == "gateway");
    let instructions_per_call = |workload: &str, c: u64| {
        let r = counted
            .iter()
            .rfind(|r| r.workload == workload && r.concurrency == Some(c as f64))?;
        r.instructions_per_call
            .or_else(|| ratio(r.instructions, r.ok))
            .filter(|n| *n > 0.0)
    };
    let counted_cs = distinct_concurrencies(
        counted
            .iter()
            .copied()
            .filter(|r| r.workload == "ping" || r.workload == "select")
            .collect(),
    );
    if points.is_empty() && split.is_empty() && counted_cs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### The gRPC door's own work per call
"
    );
    if !points.is_empty() {
        let _ = writeln!(
            out,
            "Gateway CPU per point select (`select`, from the sweep) against gateway CPU per health \
             `Check` (`ping`, a call that does nothing), same run. The difference is pgway's own work \
             per call and the libraries under it (auth, admission, deadline, pool checkout, \
             tokio-postgres, values, the observer layer); the `ping` figure is the gRPC stack's floor.\n"
        );
        cpu_ratio_table(out, &points);
        if !own_connection.is_empty() {
            let _ = writeln!(
                out,
                "The same two calls with every caller on an HTTP/2 connection of its own \
                 (`--callers-per-channel 1`: h2load's arrangement, one stream per connection). \
                 Concurrent `Check`s then can't share the gateway's reads and writes, so the \
                 floor costs more than on the shared connections above. At one caller the two \
                 arrangements are the same.\n"
            );
            cpu_ratio_table(out, &own_connection);
        }
        if !paced.is_empty() {
            let _ = writeln!(
                out,
                "And the `Check` paced at the rate the sweep's select reached with as many callers \
                 (`--rate`). A select's gateway waits for PostgreSQL, on the same cores, so its \
                 threads sleep and wake between calls and fewer calls share each read, write and \
                 wake-up; unpaced, the `Check`s above run several times faster and share them. \
                 Paced, the two calls meet the gateway at the same pace, and the difference is \
                 the select's own work.\n"
            );
            let _ = writeln!(
                out,
                "| callers | select q/s | paced ping q/s | gateway CPU ms / 1k, paced ping | gateway CPU ms / 1k, select | select / paced ping |\n|---:|---:|---:|---:|---:|---:|"
            );
            for (c, select_qps, ping_qps, ping, select) in &paced {
                let _ = writeln!(
                    out,
                    "| {c} | {select_qps:.0} | {ping_qps:.0} | {:.1} | {:.1} | {:.2} |",
                    ping * 1000.0,
                    select * 1000.0,
                    select / ping
                );
            }
            let _ = writeln!(out);
        }
        let verdict = |target: &'static str, points: &[(u64, f64, f64)], c: u64, limit: f64| {
            let found = points.iter().find(|(pc, _, _)| *pc == c);
            Verdict {
                target: target.to_owned(),
                measured: found.map_or_else(
                    || "not measured".to_owned(),
                    |(_, ping, select)| format!("ratio {:.2}", select / ping),
                ),
                met: found.map(|(_, ping, select)| select / ping <= limit),
            }
        };
        let mut verdicts = vec![
            verdict(
                "At 1 caller: gateway CPU per point select ≤ 1.5× its CPU per no-op call",
                &points,
                1,
                1.5,
            ),
            verdict(
                "At 100 callers: gateway CPU per point select ≤ 1.3× its CPU per no-op call",
                &points,
                100,
                1.3,
            ),
        ];
        if !own_connection.is_empty() {
            verdicts.push(verdict(
                "At 100 callers, one HTTP/2 connection each: the same ≤ 1.3×",
                &own_connection,
                100,
                1.3,
            ));
        }
        if !paced.is_empty() {
            let at_rate: Vec<(u64, f64, f64)> = paced
                .iter()
                .map(|&(c, _, _, ping, select)| (c, ping, select))
                .collect();
            verdicts.push(verdict(
                "At 100 callers, the no-op call paced at the select's rate: the same ≤ 1.3×",
                &at_rate,
                100,
                1.3,
            ));
        }
        verdict_table(out, verdicts);
    }
    if !split.is_empty() {
        let _ = writeln!(out, "#### The same CPU, user space and kernel\n");
        let _ = writeln!(
            out,
            "The gateway's CPU per call split into its own user-space time (utime) and the kernel's \
             time on its behalf (stime: system calls, and the loopback TCP work under them), in µs \
             per call, same runs as above.\n"
        );
        let _ = writeln!(
            out,
            "| callers | user µs / call, ping | user µs / call, select | user select / ping | kernel µs / call, ping | kernel µs / call, select | kernel select / ping |\n|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (c, [user_ping, user_select, sys_ping, sys_select]) in &split {
            let _ = writeln!(
                out,
                "| {c} | {user_ping:.1} | {user_select:.1} | {} | {sys_ping:.1} | {sys_select:.1} | {} |",
                fmt_num(ratio(Some(*user_select), Some(*user_ping)), 2),
                fmt_num(ratio(Some(*sys_select), Some(*sys_ping)), 2),
            );
        }
        let _ = writeln!(out);
    }
    if !counted_cs.is_empty() {
        let _ = writeln!(
            out,
            "#### Instructions per call (callgrind, the gateway process's user space only)\n"
        );
        let _ = writeln!(
            out,
            "Counted by `bench/callgrind.sh`: the gateway run under `valgrind --tool=callgrind`, \
             instructions over one measured window divided by the calls it answered. Instruction \
             counts don't move with the machine's load, unlike CPU time, so they compare across \
             runs; they cover the gateway's user space only, not the kernel's loopback TCP work{}.\n",
            if split.is_empty() {
                ""
            } else {
                " (the kernel columns above)"
            }
        );
        let _ = writeln!(
            out,
            "| callers | instructions / call, ping | instructions / call, select | select / ping |\n|---:|---:|---:|---:|"
        );
        for &c in &counted_cs {
            let (ping, select) = (
                instructions_per_call("ping", c),
                instructions_per_call("select", c),
            );
            let _ = writeln!(
                out,
                "| {c} | {} | {} | {} |",
                fmt_num(ping, 0),
                fmt_num(select, 0),
                fmt_num(ratio(select, ping), 2),
            );
        }
        let _ = writeln!(out);
    }
}

/// Gateway CPU per 1,000 calls of ping and select, and their ratio, one row per concurrency.
fn cpu_ratio_table(out: &mut String, points: &[(u64, f64, f64)]) {
    let _ = writeln!(
        out,
        "| callers | gateway CPU ms / 1k, ping | gateway CPU ms / 1k, select | select / ping |\n|---:|---:|---:|---:|"
    );
    for (c, ping, select) in points {
        let _ = writeln!(
            out,
            "| {c} | {:.1} | {:.1} | {:.2} |",
            ping * 1000.0,
            select * 1000.0,
            select / ping
        );
    }
    let _ = writeln!(out);
}

struct Verdict {
    target: String,
    measured: String,
    met: Option<bool>,
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
    let runs = Runs { runs: parsed };
    let machine = Machine {
        lines: match &args.machine {
            Some(path) => std::fs::read_to_string(path)?
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
            None => Vec::new(),
        },
    };
    let info = |key: &str| machine.get(key);
    let mut out = String::new();
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
            let ms = |v: Option<f64>| fmt_num(v.map(|v| v * 1000.0), 1);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                r.workload,
                fmt_num(r.throughput_qps, 0),
                fmt_num(r.p50_us, 0),
                fmt_num(r.p90_us, 0),
                fmt_num(r.p99_us, 0),
                ms(r.cpu_s_per_1k),
                ms(r.pg_cpu_s_per_1k),
                ms(r.bench_cpu_s_per_1k),
            );
        }
        let _ = writeln!(out);
        skipped_pgbouncer(&mut out, &machine);
    }

    floor_ratio_section(&mut out, &runs);

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

    if let Some(r) = runs.label_runs("soak").last() {
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

    door::door_section(&mut out, &runs, &machine);

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
        *by_label.entry(r.label.as_str()).or_default() += 1;
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
mod tests;
