//! The PostgreSQL door's targets, each judged from the pgbench runs.

use super::{DOOR_TARGETS, door_name, proxy_ms};
use crate::json::Record;
use crate::report::{Machine, Runs, Verdict, errors_text, fmt_num, ratio};

/// What a verdict says when a target has no run to compare with: why, when compare.sh said so
/// (`not measured (PgBouncer not found)`), or when PgBouncer was there but too old for `-M
/// prepared`.
fn not_measured(runs: &Runs, machine: &Machine, target: &str, mode: &str) -> String {
    if let Some(why) = machine.skipped(target) {
        return why.to_owned();
    }
    let door_runs = runs.select(|r| r.label == "door" && r.target == target);
    if target == "pgbouncer"
        && mode == "prepared"
        && !door_runs.is_empty()
        && door_runs.iter().all(|r| r.statements != "prepared")
    {
        return "not measured (`-M prepared` through PgBouncer needs 1.21 or newer: max_prepared_statements)"
            .to_owned();
    }
    "not measured".to_owned()
}

/// pgway's `-S` throughput against `other`'s at every client count of a mode's sweep: met when
/// each ratio is at least `least`.
fn sweep_ratio_verdict(
    runs: &Runs,
    machine: &Machine,
    mode: &str,
    other: &str,
    least: f64,
    target: String,
) -> Verdict {
    let tps = |t: &str, c: u64| {
        runs.door(t, "select", mode, c)
            .and_then(|r| r.throughput_qps)
    };
    let points: Vec<(u64, Option<f64>)> = runs
        .door_clients("select", mode)
        .into_iter()
        .map(|c| (c, ratio(tps("gateway", c), tps(other, c))))
        .collect();
    let measured: Vec<(u64, f64)> = points.iter().filter_map(|&(c, r)| Some((c, r?))).collect();
    let Some(&(low_c, low)) = measured.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
        return Verdict {
            target,
            measured: not_measured(runs, machine, other, mode),
            met: None,
        };
    };
    let listed = points
        .iter()
        .map(|(c, r)| format!("{} at {c}", fmt_num(*r, 2)))
        .collect::<Vec<_>>()
        .join(", ");
    let complete = measured.len() == points.len();
    Verdict {
        target,
        measured: format!(
            "pgway / {} {listed} clients (lowest {low:.2} at {low_c}){}",
            door_name(other),
            if complete {
                ""
            } else {
                "; not every client count measured"
            }
        ),
        met: if low < least {
            Some(false)
        } else {
            complete.then_some(true)
        },
    }
}

pub(super) fn door_verdicts(runs: &Runs, machine: &Machine) -> Vec<Verdict> {
    let mut out = Vec::new();

    // 1. Versus PgBouncer and PgDog at every client count, each mode.
    for (other, least, than) in [
        ("pgbouncer", 1.0, "≥ 1.0× PgBouncer's"),
        ("pgdog", 1.0, "≥ PgDog's"),
    ] {
        for mode in ["extended", "prepared"] {
            out.push(sweep_ratio_verdict(
                runs,
                machine,
                mode,
                other,
                least,
                format!("`-S -M {mode}` at every client count: pgway's throughput {than}"),
            ));
        }
    }

    // 2. Versus PgBouncer at 100, each mode: more throughput, no more CPU.
    for mode in ["extended", "prepared"] {
        out.push(versus_pgbouncer_at_100(runs, machine, mode));
    }

    // 3. TPC-B-like at 100, versus PgBouncer.
    out.push(tpcb_verdict(runs, machine));

    // 4. No collapse at 100, each mode.
    for mode in ["extended", "prepared"] {
        out.push(no_collapse_verdict(runs, mode));
    }

    // 5. Versus direct at 200, each mode.
    for mode in ["extended", "prepared"] {
        out.push(versus_direct_verdict(runs, mode));
    }

    out.push(failures_verdict(runs));
    out.push(memory_verdict(runs));
    out
}

/// A target's median `-S` throughput at `c` clients in a mode.
fn select_tps(runs: &Runs, t: &str, mode: &str, c: u64) -> Option<f64> {
    runs.door(t, "select", mode, c)
        .and_then(|r| r.throughput_qps)
}

/// At 100 clients, pgway's `-S` throughput against PgBouncer's (at least 1.1×), and its CPU
/// per transaction (no more).
fn versus_pgbouncer_at_100(runs: &Runs, machine: &Machine, mode: &str) -> Verdict {
    let target = format!(
        "At 100 clients (`-S -M {mode}`): pgway's throughput ≥ 1.1× PgBouncer's, and its CPU per transaction ≤ PgBouncer's"
    );
    match (
        runs.door("gateway", "select", mode, 100),
        runs.door("pgbouncer", "select", mode, 100),
    ) {
        (Some(g), Some(b)) => {
            let (gq, bq) = (
                g.throughput_qps.unwrap_or(0.0),
                b.throughput_qps.unwrap_or(0.0),
            );
            let (gc, bc) = (proxy_ms(g), proxy_ms(b));
            let fast = bq > 0.0 && gq >= 1.1 * bq;
            let frugal = gc.zip(bc).map(|(g, b)| g <= b);
            Verdict {
                target,
                measured: format!(
                    "{gq:.0} vs {bq:.0} tps (ratio {}); CPU {} vs {} ms per 1,000 transactions (ratio {})",
                    fmt_num(ratio(Some(gq), Some(bq)), 2),
                    fmt_num(gc, 1),
                    fmt_num(bc, 1),
                    fmt_num(ratio(gc, bc), 2),
                ),
                met: match frugal {
                    Some(frugal) => Some(fast && frugal),
                    None => (!fast).then_some(false),
                },
            }
        }
        // PgBouncer skipped or not run: why, whether pgway was measured or not.
        (_, None) => Verdict {
            target,
            measured: not_measured(runs, machine, "pgbouncer", mode),
            met: None,
        },
        (None, _) => Verdict::unmeasured(target),
    }
}

/// The TPC-B-like script at 100 clients: pgway's throughput against PgBouncer's.
fn tpcb_verdict(runs: &Runs, machine: &Machine) -> Verdict {
    let target =
        "TPC-B-like script at 100 clients (`-M extended`): pgway's throughput ≥ 1.0× PgBouncer's"
            .to_owned();
    let tpcb = |t: &str| {
        runs.door(t, "tpcb", "extended", 100)
            .and_then(|r| r.throughput_qps)
    };
    match (tpcb("gateway"), tpcb("pgbouncer")) {
        (Some(g), Some(b)) => Verdict {
            target,
            measured: format!(
                "{g:.0} vs {b:.0} tps (ratio {})",
                fmt_num(ratio(Some(g), Some(b)), 2)
            ),
            met: Some(g >= b),
        },
        (_, None) => Verdict {
            target,
            measured: not_measured(runs, machine, "pgbouncer", "extended"),
            met: None,
        },
        (None, _) => Verdict::unmeasured(target),
    }
}

/// pgway at 100 clients against its best over a mode's `-S` sweep.
fn no_collapse_verdict(runs: &Runs, mode: &str) -> Verdict {
    let target = format!(
        "At 100 clients (`-S -M {mode}`) pgway keeps ≥ 95% of its best throughput over the sweep"
    );
    match (runs.door_best(mode), select_tps(runs, "gateway", mode, 100)) {
        (Some((best, at)), Some(q)) => Verdict {
            target,
            measured: format!(
                "{q:.0} tps at 100 = {:.1}% of its best ({best:.0} tps at {at})",
                q / best * 100.0
            ),
            met: Some(q / best >= 0.95),
        },
        _ => Verdict::unmeasured(target),
    }
}

/// pgway against direct connections at 200 clients, in a mode.
fn versus_direct_verdict(runs: &Runs, mode: &str) -> Verdict {
    let target = format!("At 200 clients (`-S -M {mode}`) pgway beats direct connections");
    match (
        select_tps(runs, "gateway", mode, 200),
        select_tps(runs, "direct", mode, 200),
    ) {
        (Some(g), Some(d)) => Verdict {
            target,
            measured: format!(
                "{g:.0} vs {d:.0} tps (ratio {})",
                fmt_num(ratio(Some(g), Some(d)), 2)
            ),
            met: Some(g > d),
        },
        _ => Verdict::unmeasured(target),
    }
}

/// 0 failed transactions through pgway (the others' failures said beside them).
fn failures_verdict(runs: &Runs) -> Verdict {
    let target = "0 failed transactions (and no aborted clients) in any pgbench run through pgway"
        .to_owned();
    let pgbench_runs: Vec<&Record> = runs
        .label_runs("door")
        .into_iter()
        .filter(|r| r.workload != "idle")
        .collect();
    if pgbench_runs.is_empty() {
        return Verdict {
            target,
            measured: "not measured".into(),
            met: None,
        };
    }
    let with_errors = |t: &str| -> Vec<String> {
        pgbench_runs
            .iter()
            .filter(|r| r.target == t && r.errors.unwrap_or(0.0) > 0.0)
            .map(|r| {
                format!(
                    "{} -M {} at {}: {}",
                    r.workload,
                    r.statements,
                    fmt_num(r.concurrency, 0),
                    errors_text(r)
                )
            })
            .collect()
    };
    let own = with_errors("gateway");
    // The other targets that ran, in the tables' order.
    let others: Vec<&str> = DOOR_TARGETS
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t != "gateway" && pgbench_runs.iter().any(|r| r.target == *t))
        .collect();
    let failing: Vec<String> = others
        .iter()
        .map(|t| (door_name(t), with_errors(t).len()))
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{n} {name} run(s) with failures"))
        .collect();
    let names = others
        .iter()
        .map(|t| match *t {
            "direct" => "direct".to_owned(),
            t => format!("{}'s", door_name(t)),
        })
        .collect::<Vec<_>>();
    let names = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    };
    let n = pgbench_runs
        .iter()
        .filter(|r| r.target == "gateway")
        .count();
    Verdict {
        target,
        measured: format!(
            "{n} runs through pgway, {}{}",
            if own.is_empty() {
                "none failed".to_owned()
            } else {
                own.join("; ")
            },
            if others.is_empty() {
                String::new()
            } else if failing.is_empty() {
                format!("; {names} runs: none failed")
            } else {
                format!("; {}", failing.join(", "))
            }
        ),
        met: Some(own.is_empty()),
    }
}

/// pgway's RSS with 1,000 idle clients and with 100 busy ones.
fn memory_verdict(runs: &Runs) -> Verdict {
    let target = "pgway's RSS < 50 MB at 1,000 idle clients and at 100 busy ones".to_owned();
    let idle = runs
        .label_runs("door")
        .into_iter()
        .filter(|r| r.target == "gateway" && r.workload == "idle")
        .max_by(|a, b| {
            a.concurrency
                .unwrap_or(0.0)
                .total_cmp(&b.concurrency.unwrap_or(0.0))
        });
    let busy: Vec<&Record> = runs
        .label_runs("door")
        .into_iter()
        .filter(|r| r.target == "gateway" && r.workload != "idle" && r.concurrency == Some(100.0))
        .collect();
    let busy_peak = busy
        .iter()
        .filter_map(|r| r.rss_peak_bytes)
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    if idle.is_none() && busy_peak.is_none() {
        return Verdict {
            target,
            measured: "not measured".into(),
            met: None,
        };
    }
    let mut parts = Vec::new();
    if let Some(r) = idle {
        parts.push(format!(
            "{} idle clients ({} connected): peak {} MB, {} MB at the end of the hold",
            fmt_num(r.concurrency, 0),
            fmt_num(r.ok, 0),
            fmt_num(r.rss_peak_bytes.map(|b| b / 1e6), 1),
            fmt_num(r.rss_end_bytes.map(|b| b / 1e6), 1),
        ));
    }
    if let Some(b) = busy_peak {
        parts.push(format!("100 busy clients: peak {:.1} MB", b / 1e6));
    }
    let idle_ok = idle.and_then(|r| r.rss_peak_bytes).map(|b| b < 50e6);
    let idle_full = idle
        .is_some_and(|r| r.concurrency.unwrap_or(0.0) >= 1000.0 && r.errors.unwrap_or(0.0) == 0.0);
    let busy_ok = busy_peak.map(|b| b < 50e6);
    Verdict {
        target,
        measured: parts.join("; ")
            + if idle_full || idle.is_none() {
                ""
            } else {
                " (fewer than 1,000 idle clients connected: not the target's test)"
            },
        met: match (idle_ok, busy_ok) {
            (Some(i), Some(b)) if idle_full => Some(i && b),
            (Some(false), _) | (_, Some(false)) => Some(false),
            _ => None,
        },
    }
}
