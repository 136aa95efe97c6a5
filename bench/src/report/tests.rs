//! The report's rendering, on records made up for each case.

use super::*;

fn run(target: &str, concurrency: u64, qps: f64) -> Record {
    json::parse(&format!(
        r#"{{"label":"sweep","target":"{target}","workload":"select","concurrency":{concurrency},"throughput_qps":{qps}}}"#
    ))
    .expect("valid JSON")
}

#[test]
fn a_repeated_point_is_its_median_run() {
    let runs = Runs {
        runs: vec![
            run("gateway", 100, 900.0),
            run("gateway", 100, 300.0),
            run("gateway", 10, 50.0),
            run("gateway", 100, 600.0),
            run("direct", 100, 5.0),
        ],
    };
    let q = |r: Option<&Record>| r.and_then(|r| r.throughput_qps);
    assert_eq!(q(runs.find("sweep", "gateway", "select", 100)), Some(600.0));
    assert_eq!(q(runs.find("sweep", "gateway", "select", 10)), Some(50.0));
    assert_eq!(runs.all("sweep", "gateway", "select", 100).len(), 3);
    assert!(runs.find("sweep", "pgbouncer", "select", 100).is_none());
    let two = Runs {
        runs: vec![run("gateway", 1, 20.0), run("gateway", 1, 10.0)],
    };
    assert_eq!(q(two.find("sweep", "gateway", "select", 1)), Some(10.0));
}
#[test]
fn a_sweep_without_pgbouncer_says_why_and_keeps_its_columns_otherwise() {
    let runs = Runs {
        runs: vec![
            run("direct", 100, 1000.0),
            run("pgbouncer", 100, 900.0),
            run("gateway", 100, 1100.0),
        ],
    };
    let found = Machine {
        lines: vec![("pgbouncer".into(), "PgBouncer 1.25.2".into())],
    };
    let mut out = String::new();
    sweep_section(&mut out, &runs, &found, "sweep", "select", "Point select");
    assert!(
        out.contains("| callers | direct q/s | PgBouncer q/s | gateway q/s | gateway / direct | gateway / PgBouncer | p50 direct / PgBouncer / gateway (µs) | p99 direct / PgBouncer / gateway (µs) |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n| 100 | 1000 | 900 | 1100 | 1.10 | 1.22 | – / – / – | – / – / – |"),
        "{out}"
    );
    let runs = Runs {
        runs: vec![run("direct", 100, 1000.0), run("gateway", 100, 1100.0)],
    };
    let skipped = Machine {
        lines: vec![(
            "pgbouncer".into(),
            "not measured (PgBouncer not found)".into(),
        )],
    };
    let mut out = String::new();
    sweep_section(&mut out, &runs, &skipped, "sweep", "select", "Point select");
    assert!(
        out.contains("| callers | direct q/s | gateway q/s | gateway / direct | p50 direct / gateway (µs) | p99 direct / gateway (µs) |\n|---:|---:|---:|---:|---:|---:|\n| 100 | 1000 | 1100 | 1.10 |"),
        "{out}"
    );
    assert!(
        out.contains("PgBouncer: not measured (PgBouncer not found).\n"),
        "{out}"
    );
    let verdicts = verdicts(&runs, &skipped);
    let versus = verdicts
        .iter()
        .find(|v| v.target.contains("PgBouncer's"))
        .expect("the verdict against PgBouncer");
    assert_eq!(versus.measured, "not measured (PgBouncer not found)");
    assert_eq!(versus.met, None);
}

#[test]
fn the_report_reads_the_added_latency_against_the_bare_hop() {
    let dir = tempfile::tempdir().unwrap();
    let line = |label: &str, target: &str, workload: &str, p50: f64| {
        serde_json::json!({
            "label": label,
            "target": target,
            "workload": workload,
            "concurrency": 1,
            "throughput_qps": 1000.0,
            "p50_us": p50,
        })
        .to_string()
    };
    let results = dir.path().join("results.jsonl");
    let lines = [
        line("sweep", "direct", "select", 190.0),
        line("sweep", "gateway", "select", 400.0),
        line("floor", "loopback", "tcp-2-cores", 123.0),
        line("floor", "loopback", "tcp-1-core", 16.0),
    ];
    std::fs::write(&results, lines.join("\n")).unwrap();
    let out = dir.path().join("BENCHMARKS.md");
    let args = ReportArgs {
        results,
        machine: None,
        out: Some(out.clone()),
        notes: None,
    };
    super::run(&args).unwrap();
    let text = std::fs::read_to_string(out).unwrap();
    assert!(
        text.contains("400 − 190 = 210 µs (a bare loopback round trip between two cores: 123 µs)"),
        "{text}"
    );
    assert!(
        text.contains("| loopback | tcp-2-cores | 1000 | 123 |"),
        "{text}"
    );
    assert!(
        text.contains("| loopback | tcp-1-core | 1000 | 16 |"),
        "{text}"
    );
}

#[test]
fn the_report_sets_the_grpc_door_against_its_own_floor() {
    let record = |label: &str, workload: &str, c: u64, cpu: f64| -> Record {
        json::parse(&format!(
            r#"{{"label":"{label}","target":"gateway","workload":"{workload}","concurrency":{c},"throughput_qps":1000.0,"cpu_s_per_1k":{cpu}}}"#
        ))
        .expect("valid JSON")
    };
    let runs = Runs {
        runs: vec![
            record("floor", "ping", 1, 0.040),
            record("sweep", "select", 1, 0.056),
            record("floor", "ping", 100, 0.030),
            record("sweep", "select", 100, 0.060),
        ],
    };
    let mut out = String::new();
    floor_ratio_section(&mut out, &runs);
    assert!(out.contains("| 1 | 40.0 | 56.0 | 1.40 |"), "{out}");
    assert!(out.contains("| 100 | 30.0 | 60.0 | 2.00 |"), "{out}");
    assert!(
        out.contains("≤ 1.5× its CPU per no-op call | ratio 1.40 | **met** |"),
        "{out}"
    );
    assert!(
        out.contains("≤ 1.3× its CPU per no-op call | ratio 2.00 | **not met** |"),
        "{out}"
    );
    // Lines without the user/kernel split and no callgrind lines: no more than that.
    assert!(!out.contains("####"), "{out}");
}

#[test]
fn the_report_splits_the_grpc_doors_floor_into_user_and_kernel_and_counts_instructions() {
    let record = |label: &str, workload: &str, c: u64, user: f64, sys: f64| -> Record {
        json::parse(&format!(
            r#"{{"tool":"pgway-bench","label":"{label}","target":"gateway","workload":"{workload}","concurrency":{c},"ok":100000,"throughput_qps":1000.0,"cpu_s":{},"cpu_user_s":{user},"cpu_sys_s":{sys},"cpu_s_per_1k":{}}}"#,
            user + sys,
            (user + sys) / 100.0,
        ))
        .expect("valid JSON")
    };
    let counted = |workload: &str, c: u64, per_call: u64| -> Record {
        json::parse(&format!(
            r#"{{"tool":"callgrind","label":"instructions","target":"gateway","workload":"{workload}","concurrency":{c},"ok":1000,"instructions":{},"instructions_per_call":{per_call}}}"#,
            per_call * 1000
        ))
        .expect("valid JSON")
    };
    let runs = Runs {
        runs: vec![
            // 100,000 calls each: 2 s of user time = 20 µs per call.
            record("floor", "ping", 1, 2.0, 2.0),
            record("sweep", "select", 1, 3.0, 2.5),
            record("floor", "ping", 100, 1.0, 0.5),
            record("sweep", "select", 100, 1.6, 0.6),
            record("floor-conn", "ping", 100, 4.0, 2.0),
            record("floor-conn", "select", 100, 7.0, 5.0),
            record("floor-rate", "ping", 100, 1.2, 0.4),
            counted("ping", 1, 64000),
            counted("select", 1, 80000),
            counted("ping", 100, 50000),
            counted("select", 100, 55000),
        ],
    };
    let mut out = String::new();
    floor_ratio_section(&mut out, &runs);
    // The CPU ratio is still there: (3 + 2.5) / (2 + 2) = 1.375.
    assert!(out.contains("| 1 | 40.0 | 55.0 | 1.38 |"), "{out}");
    // One connection per caller: (7 + 5) / (4 + 2) = 2, and its own verdict.
    assert!(out.contains("h2load's arrangement"), "{out}");
    assert!(out.contains("| 100 | 60.0 | 120.0 | 2.00 |"), "{out}");
    assert!(
        out.contains("| At 100 callers, one HTTP/2 connection each: the same ≤ 1.3× | ratio 2.00 | **not met** |"),
        "{out}"
    );
    // Paced at the select's rate: (1.6 + 0.6) / (1.2 + 0.4) = 1.375.
    assert!(
        out.contains("| 100 | 1000 | 1000 | 16.0 | 22.0 | 1.38 |"),
        "{out}"
    );
    assert!(
        out.contains("| At 100 callers, the no-op call paced at the select's rate: the same ≤ 1.3× | ratio 1.38 | **not met** |"),
        "{out}"
    );
    assert!(
        out.contains("| callers | user µs / call, ping | user µs / call, select | user select / ping | kernel µs / call, ping | kernel µs / call, select | kernel select / ping |"),
        "{out}"
    );
    assert!(
        out.contains("| 1 | 20.0 | 30.0 | 1.50 | 20.0 | 25.0 | 1.25 |"),
        "{out}"
    );
    assert!(
        out.contains("| 100 | 10.0 | 16.0 | 1.60 | 5.0 | 6.0 | 1.20 |"),
        "{out}"
    );
    assert!(
        out.contains(
            "#### Instructions per call (callgrind, the gateway process's user space only)"
        ),
        "{out}"
    );
    assert!(out.contains("| 1 | 64000 | 80000 | 1.25 |"), "{out}");
    assert!(out.contains("| 100 | 50000 | 55000 | 1.10 |"), "{out}");
    assert!(
        out.contains("Instruction counts don't move with the machine's load, unlike CPU time"),
        "{out}"
    );
    assert!(
        out.contains("not the kernel's loopback TCP work (the kernel columns above)."),
        "{out}"
    );

    // Only callgrind's lines: the section is the instructions table alone.
    let runs = Runs {
        runs: vec![counted("ping", 1, 64000), counted("select", 1, 80000)],
    };
    let mut out = String::new();
    floor_ratio_section(&mut out, &runs);
    assert!(
        out.starts_with("### The gRPC door's own work per call\n\n#### Instructions per call"),
        "{out}"
    );
    assert!(out.contains("| 1 | 64000 | 80000 | 1.25 |"), "{out}");
    assert!(out.contains("loopback TCP work.\n"), "{out}");
    assert!(!out.contains("| target | measured |"), "{out}");
}
