//! The floor under a hop: a bare loopback round trip between two threads.
//!
//! Every call through the gateway crosses two process boundaries where a direct connection
//! crosses one, and each crossing wakes a sleeping thread. What a wake-up costs is the
//! machine's, not the software's: on a virtual machine, waking a thread on another core goes
//! through the hypervisor and can cost several times the same wake-up on one core. This
//! measures it, so that the added latency of the gateway can be read against it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

use crate::histogram::Histogram;
use crate::json::{self, HopLine, Num};
use crate::{BoxError, HopArgs};

/// Pins the calling thread to one CPU.
fn pin(cpu: usize) -> std::io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(std::io::Error::from)
}

/// Round trips of one byte between an echo thread on `echo_cpu` and a timing thread on
/// `ping_cpu`, for `warmup` and then `duration`.
fn measure(
    echo_cpu: usize,
    ping_cpu: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Histogram, BoxError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        pin(echo_cpu)?;
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        // Until the timing thread closes its end (read returns 0).
        while socket.read(&mut byte)? == 1 {
            socket.write_all(&byte)?;
        }
        Ok(())
    });
    let ping = std::thread::spawn(move || -> std::io::Result<Histogram> {
        pin(ping_cpu)?;
        let mut socket = TcpStream::connect(addr)?;
        socket.set_nodelay(true)?;
        let histogram = Histogram::new();
        let mut byte = [0u8; 1];
        let start = Instant::now();
        let measure_from = start + warmup;
        let end = measure_from + duration;
        loop {
            let sent = Instant::now();
            if sent >= end {
                break;
            }
            socket.write_all(&byte)?;
            socket.read_exact(&mut byte)?;
            if sent >= measure_from {
                histogram.record(sent.elapsed());
            }
        }
        Ok(histogram)
    });
    let histogram = ping.join().map_err(|_| "the timing thread panicked")??;
    echo.join().map_err(|_| "the echo thread panicked")??;
    Ok(histogram)
}

pub fn run(args: &HopArgs) -> Result<(), BoxError> {
    let allowed = sched_getaffinity(None)?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&cpu| allowed.is_set(cpu))
        .take(2)
        .collect();
    let Some(&first) = cpus.first() else {
        return Err("no CPU to run on".into());
    };
    let mut placements = vec![("tcp-1-core", first, first)];
    if let Some(&second) = cpus.get(1) {
        placements.insert(0, ("tcp-2-cores", first, second));
    }
    let mut lines = Vec::new();
    for (workload, echo_cpu, ping_cpu) in placements {
        let h = measure(echo_cpu, ping_cpu, args.duration / 10, args.duration)?;
        let count = h.count.load(Ordering::Relaxed);
        let us = |ns: u64| ns as f64 / 1000.0;
        let (p50, p90, p99) = (
            us(h.quantile(0.50)),
            us(h.quantile(0.90)),
            us(h.quantile(0.99)),
        );
        let line = serde_json::to_string(&HopLine {
            tool: "pgway-bench",
            label: &args.label,
            target: "loopback",
            workload,
            concurrency: 1,
            duration_s: Num(args.duration.as_secs_f64()),
            ok: count,
            throughput_qps: Num(count as f64 / args.duration.as_secs_f64()),
            p50_us: Num(p50),
            p90_us: Num(p90),
            p99_us: Num(p99),
            max_us: Num(us(h.max_ns.load(Ordering::Relaxed))),
        })?;
        eprintln!(
            "loopback  {workload:<11} round trip p50 {p50:>8.1}µs  p90 {p90:>8.1}µs  p99 {p99:>8.1}µs"
        );
        println!("{line}");
        lines.push(line);
    }
    if let Some(path) = &args.json_out {
        json::append_lines(path, &lines)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_times_round_trips_on_one_core_and_on_two() {
        let dir = tempfile::tempdir().unwrap();
        let json_out = dir.path().join("hop.jsonl");
        let args = HopArgs {
            duration: Duration::from_millis(200),
            label: "floor".into(),
            json_out: Some(json_out.clone()),
        };
        run(&args).unwrap();
        let text = std::fs::read_to_string(json_out).unwrap();
        let runs: Vec<_> = text.lines().map(|l| json::parse(l).unwrap()).collect();
        let mut expected = vec!["tcp-1-core"];
        if sched_getaffinity(None).unwrap().count() > 1 {
            expected.insert(0, "tcp-2-cores");
        }
        let workloads: Vec<&str> = runs.iter().map(|r| r.workload.as_str()).collect();
        assert_eq!(workloads, expected);
        for r in &runs {
            assert_eq!(r.target, "loopback");
            assert!(r.ok.unwrap() > 0.0, "{text}");
            let (p50, p99) = (r.p50_us.unwrap(), r.p99_us.unwrap());
            assert!(0.0 < p50 && p50 <= p99, "{text}");
        }
    }
}
