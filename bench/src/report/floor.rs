//! The gRPC door's floor: one caller through each stack, and the gateway's own work per call
//! against a call that does nothing.

use std::fmt::Write as _;

use super::{
    Machine, Runs, TARGETS, Verdict, distinct_concurrencies, fmt_num, ratio, skipped_pgbouncer,
    verdict_table,
};
use crate::json::Record;

/// One caller: each stack's no-op call and point select, and the bare loopback hop under them.
pub(super) fn floor_section(out: &mut String, runs: &Runs, machine: &Machine) {
    let floor = runs.label_runs("floor");
    if floor.is_empty() {
        return;
    }
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
    skipped_pgbouncer(out, machine);
}

/// The gRPC door's own work per call: gateway CPU per point select against gateway CPU per
/// call that does nothing (the health `Check`), at each concurrency both were measured at;
/// that CPU split into user space and kernel when the runs have the split; and the gateway's
/// instructions per call counted by callgrind (bench/callgrind.sh) when there are such lines.
pub(super) fn floor_ratio_section(out: &mut String, runs: &Runs) {
    let pairs = floor_pairs(runs);
    let points: Vec<(u64, f64, f64)> = pairs
        .iter()
        .filter_map(|&(c, ping, select)| {
            let (ping, select) = (ping.cpu_s_per_1k?, select.cpu_s_per_1k?);
            (ping > 0.0).then_some((c, ping, select))
        })
        .collect();
    let own_connection = own_connection_points(runs);
    let paced = paced_points(runs);
    let split = user_kernel_split(&pairs);
    let counted = runs
        .select(|r| r.tool == "callgrind" && r.label == "instructions" && r.target == "gateway");
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
        cpu_ratios(out, &points, &own_connection, &paced);
    }
    if !split.is_empty() {
        user_kernel_table(out, &split);
    }
    if !counted_cs.is_empty() {
        instructions_table(out, &counted, &counted_cs, !split.is_empty());
    }
}

/// (callers, the gateway's `ping` run of the floor, its `select` run of the sweep), at each
/// concurrency both were measured at.
fn floor_pairs(runs: &Runs) -> Vec<(u64, &Record, &Record)> {
    runs.concurrencies("floor", "ping")
        .into_iter()
        .filter_map(|c| {
            let ping = runs.find("floor", "gateway", "ping", c)?;
            let select = runs.find("sweep", "gateway", "select", c)?;
            Some((c, ping, select))
        })
        .collect()
}

/// The same pair with one HTTP/2 connection per caller, measured side by side under its own
/// label.
fn own_connection_points(runs: &Runs) -> Vec<(u64, f64, f64)> {
    runs.concurrencies("floor-conn", "ping")
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
        .collect()
}

/// The no-op call paced at the sweep's select rate: (callers, select q/s, ping q/s, ping CPU,
/// select CPU).
fn paced_points(runs: &Runs) -> Vec<(u64, f64, f64, f64, f64)> {
    runs.concurrencies("floor-rate", "ping")
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
        .collect()
}

/// µs per call of a CPU field of a run.
fn per_call(r: &Record, seconds: fn(&Record) -> Option<f64>) -> Option<f64> {
    match (seconds(r), r.ok) {
        (Some(s), Some(ok)) if ok > 0.0 => Some(s / ok * 1e6),
        _ => None,
    }
}

/// (callers, [user ping, user select, kernel ping, kernel select]) in µs per call.
fn user_kernel_split(pairs: &[(u64, &Record, &Record)]) -> Vec<(u64, [f64; 4])> {
    pairs
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
        .collect()
}

/// Gateway CPU per point select against per no-op call: on shared connections (`points`), on
/// one connection per caller, and with the no-op call paced; then their verdicts.
fn cpu_ratios(
    out: &mut String,
    points: &[(u64, f64, f64)],
    own_connection: &[(u64, f64, f64)],
    paced: &[(u64, f64, f64, f64, f64)],
) {
    let _ = writeln!(
        out,
        "Gateway CPU per point select (`select`, from the sweep) against gateway CPU per health \
         `Check` (`ping`, a call that does nothing), same run. The difference is pgway's own work \
         per call and the libraries under it (auth, admission, deadline, pool checkout, \
         tokio-postgres, values, the observer layer); the `ping` figure is the gRPC stack's floor.\n"
    );
    cpu_ratio_table(out, points);
    if !own_connection.is_empty() {
        let _ = writeln!(
            out,
            "The same two calls with every caller on an HTTP/2 connection of its own \
             (`--callers-per-channel 1`: h2load's arrangement, one stream per connection). \
             Concurrent `Check`s then can't share the gateway's reads and writes, so the \
             floor costs more than on the shared connections above. At one caller the two \
             arrangements are the same.\n"
        );
        cpu_ratio_table(out, own_connection);
    }
    if !paced.is_empty() {
        paced_table(out, paced);
    }
    verdict_table(out, floor_verdicts(points, own_connection, paced));
}

/// The no-op call paced at the rate of the sweep's select, against that select.
fn paced_table(out: &mut String, paced: &[(u64, f64, f64, f64, f64)]) {
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
    for (c, select_qps, ping_qps, ping, select) in paced {
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

/// The select / ping CPU ratio at `c` callers, met when at most `limit`.
fn floor_verdict(target: &str, points: &[(u64, f64, f64)], c: u64, limit: f64) -> Verdict {
    let found = points.iter().find(|(pc, _, _)| *pc == c);
    Verdict {
        target: target.to_owned(),
        measured: found.map_or_else(
            || "not measured".to_owned(),
            |(_, ping, select)| format!("ratio {:.2}", select / ping),
        ),
        met: found.map(|(_, ping, select)| select / ping <= limit),
    }
}

fn floor_verdicts(
    points: &[(u64, f64, f64)],
    own_connection: &[(u64, f64, f64)],
    paced: &[(u64, f64, f64, f64, f64)],
) -> Vec<Verdict> {
    let mut verdicts = vec![
        floor_verdict(
            "At 1 caller: gateway CPU per point select ≤ 1.5× its CPU per no-op call",
            points,
            1,
            1.5,
        ),
        floor_verdict(
            "At 100 callers: gateway CPU per point select ≤ 1.3× its CPU per no-op call",
            points,
            100,
            1.3,
        ),
    ];
    if !own_connection.is_empty() {
        verdicts.push(floor_verdict(
            "At 100 callers, one HTTP/2 connection each: the same ≤ 1.3×",
            own_connection,
            100,
            1.3,
        ));
    }
    if !paced.is_empty() {
        let at_rate: Vec<(u64, f64, f64)> = paced
            .iter()
            .map(|&(c, _, _, ping, select)| (c, ping, select))
            .collect();
        verdicts.push(floor_verdict(
            "At 100 callers, the no-op call paced at the select's rate: the same ≤ 1.3×",
            &at_rate,
            100,
            1.3,
        ));
    }
    verdicts
}

/// The gateway's CPU per call split into user space and kernel.
fn user_kernel_table(out: &mut String, split: &[(u64, [f64; 4])]) {
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
    for (c, [user_ping, user_select, sys_ping, sys_select]) in split {
        let _ = writeln!(
            out,
            "| {c} | {user_ping:.1} | {user_select:.1} | {} | {sys_ping:.1} | {sys_select:.1} | {} |",
            fmt_num(ratio(Some(*user_select), Some(*user_ping)), 2),
            fmt_num(ratio(Some(*sys_select), Some(*sys_ping)), 2),
        );
    }
    let _ = writeln!(out);
}

/// The gateway's instructions per call of a workload at `c` callers, as callgrind counted them.
fn instructions_per_call(counted: &[&Record], workload: &str, c: u64) -> Option<f64> {
    let r = counted
        .iter()
        .rfind(|r| r.workload == workload && r.concurrency == Some(c as f64))?;
    r.instructions_per_call
        .or_else(|| ratio(r.instructions, r.ok))
        .filter(|n| *n > 0.0)
}

/// Instructions per call of ping and select at the concurrencies `cs`; `after_split` when
/// the user/kernel table is above it.
fn instructions_table(out: &mut String, counted: &[&Record], cs: &[u64], after_split: bool) {
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
        if after_split {
            " (the kernel columns above)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "| callers | instructions / call, ping | instructions / call, select | select / ping |\n|---:|---:|---:|---:|"
    );
    for &c in cs {
        let (ping, select) = (
            instructions_per_call(counted, "ping", c),
            instructions_per_call(counted, "select", c),
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
