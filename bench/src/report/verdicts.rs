//! The gRPC door's targets, each judged from the runs.

use super::*;

pub(super) fn verdicts(runs: &Runs, machine: &Machine) -> Vec<Verdict> {
    vec![
        // 1. No collapse at 100.
        no_collapse(runs),
        // 2. Versus PgBouncer at 100.
        versus_pgbouncer(runs, machine),
        // 3. Versus direct at 200.
        versus_direct(runs),
        // 4. Added latency at 1 caller.
        added_latency(runs),
        // 5. RSS.
        rss_at_100(runs),
        rss_of_streams(runs),
        // 6. Soak.
        soak(runs),
    ]
}

/// The gateway's, PgBouncer's or direct's point select of the sweep at `c` callers.
fn sweep<'a>(runs: &'a Runs, t: &str, c: u64) -> Option<&'a Record> {
    runs.find("sweep", t, "select", c)
}

fn qps(runs: &Runs, t: &str, c: u64) -> Option<f64> {
    sweep(runs, t, c).and_then(|r| r.throughput_qps)
}

fn no_collapse(runs: &Runs) -> Verdict {
    let best = runs
        .concurrencies("sweep", "select")
        .into_iter()
        .filter_map(|c| Some((qps(runs, "gateway", c)?, c as f64)))
        .fold(None::<(f64, f64)>, |acc, x| match acc {
            Some(a) if a.0 >= x.0 => Some(a),
            _ => Some(x),
        });
    let at100 = sweep(runs, "gateway", 100);
    match (best, at100) {
        (Some((best_q, best_c)), Some(r)) => {
            let q = r.throughput_qps.unwrap_or(0.0);
            let errors = r.errors.unwrap_or(0.0);
            let timeouts = r.acquire_timeouts;
            let share = q / best_q;
            Verdict {
                target: "At 100 callers the gateway keeps ≥ 95% of its best throughput, with 0 errors and no acquire timeouts".into(),
                measured: format!(
                    "{q:.0} q/s at 100 = {:.1}% of its best ({best_q:.0} q/s at {best_c:.0}); errors {}; acquire timeouts {}",
                    share * 100.0,
                    errors_text(r),
                    fmt_num(timeouts, 0)
                ),
                met: Some(share >= 0.95 && errors == 0.0 && timeouts.unwrap_or(0.0) == 0.0),
            }
        }
        _ => Verdict::unmeasured(
            "At 100 callers the gateway keeps ≥ 95% of its best throughput, with 0 errors and no acquire timeouts",
        ),
    }
}

fn versus_pgbouncer(runs: &Runs, machine: &Machine) -> Verdict {
    let name =
        "At 100 callers: gateway throughput ≥ PgBouncer's, and gateway CPU per query ≤ PgBouncer's";
    match (sweep(runs, "gateway", 100), sweep(runs, "pgbouncer", 100)) {
        (Some(g), Some(b)) => {
            let (gq, bq) = (
                g.throughput_qps.unwrap_or(0.0),
                b.throughput_qps.unwrap_or(0.0),
            );
            let (gc, bc) = (g.cpu_s_per_1k, b.cpu_s_per_1k);
            let cpu_ok = matches!((gc, bc), (Some(g), Some(b)) if g <= b);
            Verdict {
                target: name.into(),
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
        (_, None) => Verdict {
            target: name.into(),
            measured: machine
                .skipped("pgbouncer")
                .unwrap_or("not measured")
                .to_owned(),
            met: None,
        },
        (None, _) => Verdict::unmeasured(name),
    }
}

fn versus_direct(runs: &Runs) -> Verdict {
    let name = "At 200 callers the gateway beats direct connections";
    match (qps(runs, "gateway", 200), qps(runs, "direct", 200)) {
        (Some(g), Some(d)) => Verdict {
            target: name.into(),
            measured: format!("{g:.0} vs {d:.0} q/s (ratio {:.2})", g / d),
            met: Some(g > d),
        },
        _ => Verdict::unmeasured(name),
    }
}

fn added_latency(runs: &Runs) -> Verdict {
    let name = "Added latency at 1 caller: gateway p50 − direct p50 < 100 µs";
    let p50 = |t: &str| sweep(runs, t, 1).and_then(|r| r.p50_us);
    let (Some(g), Some(d)) = (p50("gateway"), p50("direct")) else {
        return Verdict::unmeasured(name);
    };
    // What one more hop costs on this machine, for scale: PgBouncer's own, and the bare
    // loopback round trip between two cores under any stack.
    let mut text = format!("{g:.0} − {d:.0} = {:.0} µs", g - d);
    let mut scale = Vec::new();
    if let Some(b) = p50("pgbouncer") {
        scale.push(format!("PgBouncer: {b:.0} − {d:.0} = {:.0} µs", b - d));
    }
    if let Some(hop) = runs
        .find("floor", "loopback", "tcp-2-cores", 1)
        .and_then(|r| r.p50_us)
    {
        scale.push(format!(
            "a bare loopback round trip between two cores: {hop:.0} µs"
        ));
    }
    if !scale.is_empty() {
        let _ = write!(text, " ({})", scale.join("; "));
    }
    Verdict {
        target: name.into(),
        measured: text,
        met: Some(g - d < 100.0),
    }
}

fn rss_at_100(runs: &Runs) -> Verdict {
    let name = "Peak RSS < 50 MB at 100 callers";
    // The highest of each workload's runs (the sweep's may be repeated).
    let mut rss100: Vec<(String, f64)> = Vec::new();
    for r in runs
        .runs
        .iter()
        .filter(|r| r.target == "gateway" && r.concurrency == Some(100.0))
        .filter(|r| r.label == "sweep" || r.label == "workloads")
    {
        let (Some(bytes), workload) = (r.rss_peak_bytes, r.workload.as_str()) else {
            continue;
        };
        match rss100.iter_mut().find(|(w, _)| w == workload) {
            Some((_, most)) => *most = most.max(bytes),
            None => rss100.push((workload.to_owned(), bytes)),
        }
    }
    if rss100.is_empty() {
        return Verdict::unmeasured(name);
    }
    let worst = rss100.iter().map(|x| x.1).fold(0.0, f64::max);
    Verdict {
        target: name.into(),
        measured: rss100
            .iter()
            .map(|(w, b)| format!("{w}: {:.1} MB", b / 1e6))
            .collect::<Vec<_>>()
            .join("; "),
        met: Some(worst < 50e6),
    }
}

fn rss_of_streams(runs: &Runs) -> Verdict {
    let name = "Peak RSS < 200 MB at 2,000 concurrent streams";
    let streams: Vec<&Record> = runs.label_runs("streams");
    if streams.is_empty() {
        return Verdict::unmeasured(name);
    }
    let worst = streams
        .iter()
        .filter_map(|r| r.rss_peak_bytes)
        .fold(0.0, f64::max);
    Verdict {
        target: name.into(),
        measured: streams
            .iter()
            .map(|r| {
                format!(
                    "{} × {}: {} MB, errors {}",
                    fmt_num(r.concurrency, 0),
                    r.workload,
                    fmt_num(r.rss_peak_bytes.map(|b| b / 1e6), 1),
                    errors_text(r)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        met: Some(worst > 0.0 && worst < 200e6),
    }
}

fn soak(runs: &Runs) -> Verdict {
    let name = "Soak: memory flat (RSS slope × 1 h < 5% of the mean RSS)";
    let soak = runs.label_runs("soak");
    let Some(r) = soak.last() else {
        return Verdict::unmeasured(name);
    };
    let slope = r.rss_slope_bytes_per_min;
    let samples: Vec<f64> = r.rss_samples.iter().flatten().map(|s| s.1).collect();
    let mean = if samples.is_empty() {
        0.0
    } else {
        samples.iter().sum::<f64>() / samples.len() as f64
    };
    match slope {
        Some(s) if mean > 0.0 => Verdict {
            target: name.into(),
            measured: format!(
                "{s:.0} bytes/min over {:.0} s ({} samples, mean RSS {:.1} MB, from {:.1} to {:.1} MB, errors {}): {:+.2}% per hour{}",
                r.duration_s.unwrap_or(0.0),
                samples.len(),
                mean / 1e6,
                samples.iter().copied().fold(f64::INFINITY, f64::min) / 1e6,
                samples.iter().copied().fold(0.0, f64::max) / 1e6,
                errors_text(r),
                s * 60.0 / mean * 100.0,
                if r.duration_s.unwrap_or(0.0) < 600.0 {
                    " (a soak this short only rules out fast growth: run SOAK_SECONDS=1800)"
                } else {
                    ""
                }
            ),
            met: Some((s * 60.0).abs() < 0.05 * mean),
        },
        _ => Verdict {
            target: name.into(),
            measured: "too few samples".into(),
            met: None,
        },
    }
}
