//! The PostgreSQL door in the report: the pgbench runs (label `door`) through pgway's
//! PostgreSQL door, PgBouncer, PgDog and PostgreSQL itself, and the proxies' memory.

use std::fmt::Write as _;

use super::{
    Machine, Runs, distinct_concurrencies, errors_text, fmt_num, median, mib, ratio, verdict_table,
};
use crate::json::Record;

mod verdicts;

use verdicts::door_verdicts;

/// The names the door's tables give the targets, in their column order.
const DOOR_TARGETS: [(&str, &str); 4] = [
    ("gateway", "pgway"),
    ("pgbouncer", "PgBouncer"),
    ("pgdog", "PgDog"),
    ("direct", "direct"),
];

/// The poolers compare.sh may have skipped (their binary not found).
const POOLERS: [(&str, &str); 2] = [("pgbouncer", "PgBouncer"), ("pgdog", "PgDog")];

fn door_name(target: &str) -> &str {
    DOOR_TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .map_or(target, |(_, n)| n)
}

/// CPU milliseconds per 1,000 transactions from a run's CPU seconds and its count (the
/// `*_per_1k` fields are rounded to a millisecond, too coarse for a table in tenths).
fn per_1k_ms(cpu_s: Option<f64>, rounded: Option<f64>, ok: Option<f64>) -> Option<f64> {
    match (cpu_s, ok) {
        (Some(cpu), Some(ok)) if ok > 0.0 => Some(cpu / ok * 1e6),
        _ => rounded.map(|v| v * 1000.0),
    }
}

fn proxy_ms(r: &Record) -> Option<f64> {
    per_1k_ms(r.cpu_s, r.cpu_s_per_1k, r.ok)
}

fn pg_ms(r: &Record) -> Option<f64> {
    per_1k_ms(r.pg_cpu_s, r.pg_cpu_s_per_1k, r.ok)
}

fn pgbench_ms(r: &Record) -> Option<f64> {
    per_1k_ms(r.bench_cpu_s, r.bench_cpu_s_per_1k, r.ok)
}

impl Runs {
    /// Every door run of one point, in the order they were made.
    fn door_all(&self, target: &str, workload: &str, mode: &str, clients: u64) -> Vec<&Record> {
        let mut runs = self.all("door", target, workload, clients);
        runs.retain(|r| r.statements == mode);
        runs
    }

    /// The median run of a door point (as [`Runs::find`]).
    fn door(&self, target: &str, workload: &str, mode: &str, clients: u64) -> Option<&Record> {
        median(self.door_all(target, workload, mode, clients))
    }

    fn door_clients(&self, workload: &str, mode: &str) -> Vec<u64> {
        distinct_concurrencies(
            self.select(|r| r.label == "door" && r.workload == workload && r.statements == mode),
        )
    }

    /// pgway's best median throughput over a mode's -S sweep: (tps, clients).
    fn door_best(&self, mode: &str) -> Option<(f64, u64)> {
        self.door_clients("select", mode)
            .into_iter()
            .filter_map(|c| Some((self.door("gateway", "select", mode, c)?.throughput_qps?, c)))
            .fold(None, |acc: Option<(f64, u64)>, x| match acc {
                Some(a) if a.0 >= x.0 => Some(a),
                _ => Some(x),
            })
    }
}

/// A line for each pooler compare.sh skipped: `PgBouncer: not measured (PgBouncer not found).`
fn skipped_lines(out: &mut String, machine: &Machine) {
    let mut any = false;
    for (t, n) in POOLERS {
        if let Some(why) = machine.skipped(t) {
            let _ = writeln!(out, "{n}: {why}.");
            any = true;
        }
    }
    if any {
        let _ = writeln!(out);
    }
}

fn door_table(
    out: &mut String,
    runs: &Runs,
    machine: &Machine,
    workload: &str,
    mode: &str,
    title: &str,
) {
    let cs = runs.door_clients(workload, mode);
    if cs.is_empty() {
        return;
    }
    let present: Vec<(&str, &str)> = DOOR_TARGETS
        .into_iter()
        .filter(|(t, _)| {
            cs.iter()
                .any(|&c| !runs.door_all(t, workload, mode, c).is_empty())
        })
        .collect();
    let names = |list: &[&(&str, &str)]| -> String {
        list.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(" / ")
    };
    let _ = writeln!(out, "### {title}\n");
    let mut head = String::from("| clients |");
    for (_, n) in &present {
        let _ = write!(head, " {n} tps |");
    }
    let others: Vec<&(&str, &str)> = present.iter().filter(|(t, _)| *t != "gateway").collect();
    for (_, n) in &others {
        let _ = write!(head, " pgway / {n} |");
    }
    let proxies: Vec<&(&str, &str)> = present.iter().filter(|(t, _)| *t != "direct").collect();
    let all: Vec<&(&str, &str)> = present.iter().collect();
    let _ = write!(
        head,
        " proxy CPU ms / 1k tx ({}) | PostgreSQL CPU ms / 1k tx ({}) | pgbench CPU ms / 1k tx ({}) | failed ({}) |",
        names(&proxies),
        names(&all),
        names(&all),
        names(&all),
    );
    let columns = 1 + present.len() + others.len() + 4;
    let _ = writeln!(out, "{head}");
    let _ = writeln!(out, "|{}", "---:|".repeat(columns));
    for &c in &cs {
        let get = |t: &str| runs.door(t, workload, mode, c);
        let q = |t: &str| get(t).and_then(|r| r.throughput_qps);
        let ms = |t: &str, f: fn(&Record) -> Option<f64>| fmt_num(get(t).and_then(f), 1);
        let mut row = format!("| {c} |");
        for (t, _) in &present {
            let _ = write!(row, " {} |", fmt_num(q(t), 0));
        }
        for (t, _) in &others {
            let _ = write!(row, " {} |", fmt_num(ratio(q("gateway"), q(t)), 2));
        }
        let join = |list: &[&(&str, &str)], f: &dyn Fn(&str) -> String| {
            list.iter()
                .map(|(t, _)| f(t))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            out,
            "{row} {} | {} | {} | {} |",
            join(&proxies, &|t| ms(t, proxy_ms)),
            join(&all, &|t| ms(t, pg_ms)),
            join(&all, &|t| ms(t, pgbench_ms)),
            join(&all, &|t| get(t)
                .map_or("–".into(), |r| fmt_num(r.errors, 0))),
        );
    }
    let _ = writeln!(out);
    skipped_lines(out, machine);
}

/// The door's introduction: what ran against what, and how each proxy was set up.
fn door_intro(out: &mut String, runs: &Runs, machine: &Machine) {
    let info = |k: &str| machine.get(k);
    let ran = |t: &str| {
        !runs
            .select(|r| r.label == "door" && r.target == t)
            .is_empty()
    };
    let mut proxies = vec![
        "pgway's PostgreSQL door (**pgway**: the same `pgway serve` process as above, its gRPC door idle \
         meanwhile, transaction pooling over the same pool of 20)"
            .to_owned(),
    ];
    if ran("pgbouncer") {
        proxies.push("PgBouncer (transaction mode, pool of 20)".into());
    }
    if ran("pgdog") {
        proxies.push("PgDog (transaction mode, pool of 20, 2 workers)".into());
    }
    let _ = write!(
        out,
        "PostgreSQL's own `pgbench` against {} and PostgreSQL itself (**direct**: one backend per client), on the same \
         PostgreSQL and data. Each run: `pgbench -n -S -M <mode> -c <clients> -j 2 -T <…> -P 1` (or the built-in \
         TPC-B-like script instead of `-S`); the first {} after the clients have logged in are a warm-up, then \
         {} are measured, cut from pgbench's once-a-second progress lines, so logins (SCRAM-SHA-256 through the \
         proxies) are not in the figures. Over that window the CPU of the proxy, of the whole PostgreSQL cluster \
         and of pgbench is read from `/proc`: CPU per transaction = CPU seconds / transactions in the window. \
         The targets take turns at each point.",
        proxies.join(", "),
        info("pg_warmup"),
        info("pg_duration"),
    );
    let mut set_up = Vec::new();
    match machine.skipped("pgbouncer") {
        Some(why) => set_up.push(format!("PgBouncer: {why}.")),
        None if ran("pgbouncer") => set_up.push(format!(
            "`-M prepared` runs against PgBouncer only where PgBouncer is 1.21 or newer \
             (`max_prepared_statements`); this run's: {}. PgBouncer: {}.",
            info("pgbouncer"),
            info("pgbouncer_auth"),
        )),
        None => {}
    }
    match machine.skipped("pgdog") {
        Some(why) => set_up.push(format!("PgDog: {why}.")),
        None if ran("pgdog") => set_up.push(format!(
            "PgDog: {}; {}.",
            info("pgdog"),
            info("pgdog_config")
        )),
        None => {}
    }
    set_up.push(format!("pgway: {}.", info("pgway_door")));
    let _ = writeln!(out, " {}\n", set_up.join(" "));
}

pub(super) fn door_section(out: &mut String, runs: &Runs, machine: &Machine) {
    let door = runs.label_runs("door");
    if door.is_empty() {
        return;
    }
    let _ = writeln!(out, "## The PostgreSQL door (pgbench)\n");
    door_intro(out, runs, machine);
    let _ = writeln!(out, "### Targets of the PostgreSQL door\n");
    verdict_table(out, door_verdicts(runs, machine));
    for (workload, mode, title) in [
        (
            "select",
            "extended",
            "`pgbench -S -M extended` (unnamed statements)",
        ),
        (
            "select",
            "prepared",
            "`pgbench -S -M prepared` (named prepared statements)",
        ),
        ("select", "simple", "`pgbench -S -M simple`"),
        ("tpcb", "extended", "TPC-B-like script, `-M extended`"),
        ("tpcb", "prepared", "TPC-B-like script, `-M prepared`"),
    ] {
        door_table(out, runs, machine, workload, mode, title);
    }

    proxy_memory(out, &door, machine);
    every_door_run(out, &door);
}

/// The proxies' RSS with idle clients, and during the busy runs at 100 clients.
fn proxy_memory(out: &mut String, door: &[&Record], machine: &Machine) {
    let _ = writeln!(out, "### Memory of the proxies\n");
    let _ = writeln!(
        out,
        "Idle: `pgway-bench idle` opens the clients (tokio-postgres, SCRAM-SHA-256 login), runs one `SELECT 1` on \
         each, then holds them all open and idle; the peak is VmHWM (reset before the logins) or the highest \
         100 ms sample. Busy: the peak during the measured window of the pgbench runs at 100 clients.\n"
    );
    let _ = writeln!(
        out,
        "| proxy | clients | what | connected | RSS before | peak RSS | RSS at the end |\n|---|---:|---|---:|---:|---:|---:|"
    );
    for (t, n) in DOOR_TARGETS.iter().filter(|(t, _)| *t != "direct") {
        for r in door
            .iter()
            .filter(|r| r.target == *t && r.workload == "idle")
        {
            let _ = writeln!(
                out,
                "| {n} | {} | idle | {} | {} | {} | {} |",
                fmt_num(r.concurrency, 0),
                fmt_num(r.ok, 0),
                mib(r.rss_start_bytes),
                mib(r.rss_peak_bytes),
                mib(r.rss_end_bytes),
            );
        }
        for r in door
            .iter()
            .filter(|r| r.target == *t && r.workload != "idle" && r.concurrency == Some(100.0))
        {
            let _ = writeln!(
                out,
                "| {n} | 100 | busy: {} -M {} | 100 | – | {} | {} |",
                r.workload,
                r.statements,
                mib(r.rss_peak_bytes),
                mib(r.rss_end_bytes),
            );
        }
    }
    let _ = writeln!(out);
    skipped_lines(out, machine);
}

/// Every pgbench run, in a table folded away.
fn every_door_run(out: &mut String, door: &[&Record]) {
    let _ = writeln!(
        out,
        "<details><summary>Every pgbench run (CPU, memory, machine)</summary>\n"
    );
    let _ = writeln!(
        out,
        "| target | script | -M | clients | tps | latency avg µs | failed | proxy CPU ms / 1k tx | PostgreSQL CPU ms / 1k tx | pgbench CPU ms / 1k tx | proxy peak RSS | machine busy | CPU of other processes (s) |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for (t, n) in DOOR_TARGETS {
        for r in door
            .iter()
            .filter(|r| r.target == t && r.workload != "idle")
        {
            let _ = writeln!(
                out,
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}% | {} |",
                r.workload,
                r.statements,
                fmt_num(r.concurrency, 0),
                fmt_num(r.throughput_qps, 0),
                fmt_num(r.mean_us, 0),
                errors_text(r),
                fmt_num(proxy_ms(r), 1),
                fmt_num(pg_ms(r), 1),
                fmt_num(pgbench_ms(r), 1),
                mib(r.rss_peak_bytes),
                fmt_num(r.machine_busy_pct, 0),
                fmt_num(r.other_cpu_s, 1),
            );
        }
    }
    let _ = writeln!(out, "\n</details>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;

    /// A door run: pgbench's JSON line with the fields the report reads.
    fn door(
        target: &str,
        workload: &str,
        mode: &str,
        clients: u64,
        tps: f64,
        cpu_s: f64,
    ) -> Record {
        json::parse(
            &serde_json::json!({
                "tool": "pgbench",
                "label": "door",
                "target": target,
                "workload": workload,
                "statements": mode,
                "concurrency": clients,
                "ok": tps * 10.0,
                "errors": 0,
                "throughput_qps": tps,
                "cpu_s": cpu_s,
                "rss_peak_bytes": 20e6,
            })
            .to_string(),
        )
        .expect("valid JSON")
    }

    fn machine(lines: &[(&str, &str)]) -> Machine {
        Machine {
            lines: lines
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn verdict_line<'a>(text: &'a str, starts: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(&format!("| {starts}")))
            .unwrap_or_else(|| panic!("no verdict line starting {starts:?} in\n{text}"))
    }

    #[test]
    fn the_door_tables_have_a_pgdog_column_and_its_verdicts() {
        let mut lines = Vec::new();
        for mode in ["extended", "prepared"] {
            for (c, g, b, d) in [(10, 1000.0, 950.0, 990.0), (100, 1200.0, 1000.0, 1300.0)] {
                lines.push(door("gateway", "select", mode, c, g, 1.0));
                lines.push(door("pgbouncer", "select", mode, c, b, 1.2));
                lines.push(door("pgdog", "select", mode, c, d, 2.0));
                lines.push(door("direct", "select", mode, c, 800.0, 0.0));
            }
        }
        lines.push(door("gateway", "tpcb", "extended", 100, 500.0, 1.0));
        lines.push(door("pgbouncer", "tpcb", "extended", 100, 490.0, 1.0));
        lines.push(door("pgdog", "tpcb", "extended", 100, 450.0, 1.0));
        let runs = Runs { runs: lines };
        let machine = machine(&[
            ("pgbouncer", "PgBouncer 1.25.2 (/opt/pgbouncer)"),
            ("pgdog", "PgDog v7b40c0c (/opt/pgdog)"),
            ("pgdog_config", "pooler_mode = \"transaction\""),
        ]);
        let mut out = String::new();
        door_section(&mut out, &runs, &machine);
        assert!(
            out.contains("| clients | pgway tps | PgBouncer tps | PgDog tps | direct tps | pgway / PgBouncer | pgway / PgDog | pgway / direct | proxy CPU ms / 1k tx (pgway / PgBouncer / PgDog) |"),
            "{out}"
        );
        // 1.0 s / 12,000 tx = 83.3 ms per 1,000; PgBouncer 1.2 / 10,000; PgDog 2.0 / 13,000.
        assert!(
            out.contains(
                "| 100 | 1200 | 1000 | 1300 | 800 | 1.20 | 0.92 | 1.50 | 83.3 / 120.0 / 153.8 |"
            ),
            "{out}"
        );
        assert!(
            out.contains("PgDog (transaction mode, pool of 20, 2 workers)"),
            "{out}"
        );
        assert!(out.contains("PgDog: PgDog v7b40c0c (/opt/pgdog);"), "{out}");
        assert!(
            out.contains("| PgDog | select | prepared | 100 | 1300 |"),
            "{out}"
        );
        let line = verdict_line(
            &out,
            "`-S -M extended` at every client count: pgway's throughput ≥ 1.0× PgBouncer's",
        );
        assert!(
            line.ends_with("| pgway / PgBouncer 1.05 at 10, 1.20 at 100 clients (lowest 1.05 at 10) | **met** |"),
            "{line}"
        );
        let line = verdict_line(
            &out,
            "`-S -M prepared` at every client count: pgway's throughput ≥ PgDog's",
        );
        assert!(
            line.ends_with("| pgway / PgDog 1.01 at 10, 0.92 at 100 clients (lowest 0.92 at 100) | **not met** |"),
            "{line}"
        );
        let line = verdict_line(
            &out,
            "At 100 clients (`-S -M prepared`): pgway's throughput ≥ 1.1× PgBouncer's",
        );
        assert!(line.ends_with("(ratio 0.69) | **met** |"), "{line}");
        let line = verdict_line(&out, "TPC-B-like script at 100 clients");
        assert!(
            line.ends_with("| 500 vs 490 tps (ratio 1.02) | **met** |"),
            "{line}"
        );
        let line = verdict_line(&out, "0 failed transactions");
        assert!(
            line.contains("PgBouncer's, PgDog's and direct runs: none failed"),
            "{line}"
        );
        // The sweep had no 200: not measured, never a pass.
        let line = verdict_line(&out, "At 200 clients (`-S -M extended`)");
        assert!(line.ends_with("| not measured | not measured |"), "{line}");
        assert!(!out.contains("not found"), "{out}");
    }

    #[test]
    fn a_skipped_pgbouncer_is_not_measured_and_the_report_says_why() {
        let mut lines = Vec::new();
        for mode in ["extended", "prepared"] {
            lines.push(door("gateway", "select", mode, 100, 1200.0, 1.0));
            lines.push(door("direct", "select", mode, 100, 800.0, 0.0));
        }
        // No TPC-B run through pgway either: the verdict still says why PgBouncer's is missing.
        lines.push(door("direct", "tpcb", "extended", 100, 500.0, 0.0));
        let runs = Runs { runs: lines };
        let machine = machine(&[
            (
                "pgbouncer",
                "not measured (PgBouncer not found at /nonexistent)",
            ),
            ("pgdog", "not measured (PgDog not found)"),
        ]);
        let mut out = String::new();
        door_section(&mut out, &runs, &machine);
        for starts in [
            "`-S -M extended` at every client count: pgway's throughput ≥ 1.0× PgBouncer's",
            "`-S -M prepared` at every client count: pgway's throughput ≥ 1.0× PgBouncer's",
            "At 100 clients (`-S -M extended`): pgway's throughput ≥ 1.1× PgBouncer's",
            "TPC-B-like script at 100 clients",
        ] {
            let line = verdict_line(&out, starts);
            assert!(
                line.ends_with(
                    "| not measured (PgBouncer not found at /nonexistent) | not measured |"
                ),
                "{line}"
            );
        }
        let line = verdict_line(
            &out,
            "`-S -M extended` at every client count: pgway's throughput ≥ PgDog's",
        );
        assert!(
            line.ends_with("| not measured (PgDog not found) | not measured |"),
            "{line}"
        );
        // No PgBouncer or PgDog column, and a line under each table saying why.
        assert!(
            out.contains("| clients | pgway tps | direct tps | pgway / direct | proxy CPU ms / 1k tx (pgway) |"),
            "{out}"
        );
        assert!(!out.contains("PgBouncer tps"), "{out}");
        assert!(
            out.contains(
                "PgBouncer: not measured (PgBouncer not found at /nonexistent).\nPgDog: not measured (PgDog not found).\n"
            ),
            "{out}"
        );
        let line = verdict_line(&out, "0 failed transactions");
        assert!(line.contains("direct runs: none failed"), "{line}");
    }

    #[test]
    fn an_old_pgbouncer_has_no_prepared_runs_and_says_why() {
        let runs = Runs {
            runs: vec![
                door("gateway", "select", "extended", 100, 1200.0, 1.0),
                door("pgbouncer", "select", "extended", 100, 1000.0, 1.0),
                door("gateway", "select", "prepared", 100, 1500.0, 1.0),
            ],
        };
        let mut out = String::new();
        door_section(&mut out, &runs, &machine(&[]));
        let line = verdict_line(
            &out,
            "`-S -M prepared` at every client count: pgway's throughput ≥ 1.0× PgBouncer's",
        );
        assert!(line.contains("needs 1.21 or newer"), "{line}");
        assert!(line.ends_with("| not measured |"), "{line}");
        // A results file from before PgDog: no PgDog column, no line about it.
        assert!(!out.contains("PgDog tps"), "{out}");
        assert!(!out.contains("PgDog:"), "{out}");
    }
}
