//! What the benchmark reads from Linux' `/proc`: the machine, load, a process' memory and
//! CPU time, and who the benchmark runs as.

use std::time::Instant;

/// Cores, memory and CPU model, one line.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = meminfo("MemTotal").map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0));
    format!("{cores} cores ({model}), {mem_gib:.1} GiB RAM")
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A `/proc/meminfo` figure in KiB.
pub fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident memory of a running process in KiB (`VmHWM` of `/proc/PID/status`).
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_field(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn status_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// The effective user id of this process.
pub fn euid() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(2)?.parse().ok()
}

/// Uid and gid of a local user, from `/etc/passwd`.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
    let mut f = line.split(':').skip(2);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// User plus system CPU time of a process in clock ticks (fields 14 and 15 of
/// `/proc/PID/stat`).
fn process_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy and total ticks of all CPUs (the `cpu` line of `/proc/stat`).
fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    // idle + iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU use over an interval: of the whole machine and of chosen processes.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    start: Instant,
    machine: Option<(u64, u64)>,
    procs: Vec<(String, u32, Option<u64>)>,
}

/// Tick rate of `/proc` CPU times; 100 on every Linux build that matters here.
const TICKS_PER_SEC: f64 = 100.0;

impl CpuWindow {
    pub fn start(procs: &[(&str, u32)]) -> Self {
        Self {
            start: Instant::now(),
            machine: machine_ticks(),
            procs: procs.iter().map(|(n, p)| ((*n).to_owned(), *p, process_ticks(*p))).collect(),
        }
    }

    /// "machine 97% busy; source 0.62 cores, receiver 0.31 cores".
    pub fn finish(&self) -> CpuUse {
        let secs = self.start.elapsed().as_secs_f64();
        let machine_busy = match (self.machine, machine_ticks()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
            _ => f64::NAN,
        };
        let procs = self
            .procs
            .iter()
            .map(|(name, pid, t0)| {
                let cores = match (t0, process_ticks(*pid)) {
                    (Some(a), Some(b)) if secs > 0.0 => (b - a) as f64 / TICKS_PER_SEC / secs,
                    _ => f64::NAN,
                };
                (name.clone(), cores)
            })
            .collect();
        CpuUse { machine_busy, procs }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    /// Fraction of all cores busy.
    pub machine_busy: f64,
    /// Cores used by each process.
    pub procs: Vec<(String, f64)>,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "machine {:.0}% busy", self.machine_busy * 100.0)?;
        for (name, cores) in &self.procs {
            write!(f, ", {name} {cores:.2} cores")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|k| k > 0));
        assert!(process_ticks(pid).is_some());
        assert!(meminfo("MemTotal").is_some_and(|k| k > 0));
        assert!(euid().is_some());
        assert_eq!(user_ids("root"), Some((0, 0)));
    }
}
