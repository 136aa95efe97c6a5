//! Readings from `/proc`: the CPU time and memory of the processes under test, and of the
//! machine.

use std::sync::OnceLock;

/// Clock ticks per second for `/proc/<pid>/stat` times.
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/<pid>/stat` read here, times in ticks.
struct Stat {
    ppid: u32,
    /// utime (field 14) and stime (field 15).
    own: CpuTicks,
    /// cutime + cstime: the children it has waited for.
    reaped: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after it.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): field n is fields[n - 3].
    let ppid = fields.get(1)?.parse().ok()?;
    let user: u64 = fields.get(11)?.parse().ok()?;
    let sys: u64 = fields.get(12)?.parse().ok()?;
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(Stat {
        ppid,
        own: CpuTicks { user, sys },
        reaped: cutime + cstime,
    })
}

/// (ppid, utime + stime in ticks) of a process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    read_stat(pid).map(|s| (s.ppid, s.own.user + s.own.sys))
}

/// The CPU time a process has used, all threads, in ticks: in user space (utime) and in the
/// kernel on its behalf (stime: system calls, and the loopback TCP work they do).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTicks {
    pub user: u64,
    pub sys: u64,
}

impl CpuTicks {
    /// User + system seconds, as [`cpu_seconds`] gives them.
    pub fn total_s(self) -> f64 {
        (self.user + self.sys) as f64 / clock_ticks()
    }

    pub fn user_s(self) -> f64 {
        self.user as f64 / clock_ticks()
    }

    pub fn sys_s(self) -> f64 {
        self.sys as f64 / clock_ticks()
    }

    /// The time used since `before`, an earlier reading of the same process.
    pub fn since(self, before: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(before.user),
            sys: self.sys.saturating_sub(before.sys),
        }
    }
}

/// A process's user and system CPU time, read together (one read of its stat).
pub fn cpu_ticks(pid: u32) -> Option<CpuTicks> {
    read_stat(pid).map(|s| s.own)
}

/// CPU seconds (user + system, all threads) a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_ticks(pid).map(CpuTicks::total_s)
}

/// CPU seconds of a process and its children (a postmaster and its backends): those alive now,
/// and those that ended and were waited for (a backend that exits during a measurement, such
/// as a pool's connection being closed, takes its CPU time out of the live sum, and into its
/// parent's cutime/cstime).
pub fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let root_stat = read_stat(root)?;
    let mut ticks = root_stat.own.user + root_stat.own.sys + root_stat.reaped;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == root {
            continue;
        }
        if let Some((ppid, t)) = stat(pid) {
            if ppid == root {
                ticks += t;
            }
        }
    }
    Some(ticks as f64 / clock_ticks())
}

/// A `kB` line of `/proc/<pid>/stat`us, in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

pub fn rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS")
}

pub fn hwm(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM")
}

/// Resets the process's peak RSS (VmHWM) to its current RSS; false when not allowed.
pub fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The peak RSS of a measured window: VmHWM when it could be reset at the window's start
/// (with the highest sample, in case), else the highest of the 100 ms samples.
pub fn peak_rss(hwm_reset: bool, hwm: Option<u64>, sampled_peak: u64) -> Option<u64> {
    match (hwm_reset, hwm) {
        (true, Some(hwm)) => Some(hwm.max(sampled_peak)),
        _ if sampled_peak > 0 => Some(sampled_peak),
        _ => None,
    }
}

/// (busy, total) CPU seconds of the whole machine, all cores, from /proc/stat.
pub fn machine_cpu() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is counted in user already).
    let idle = v[3] + v[4];
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    let ticks = clock_ticks();
    Some((busy as f64 / ticks, (busy + idle) as f64 / ticks))
}

/// The machine's busy CPU seconds between two [`machine_cpu`] readings, and their share of all
/// its CPU time in percent.
pub fn machine_busy(
    before: Option<(f64, f64)>,
    after: Option<(f64, f64)>,
) -> (Option<f64>, Option<f64>) {
    match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            (Some(b1 - b0), Some((b1 - b0) / (t1 - t0) * 100.0))
        }
        _ => (None, None),
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
