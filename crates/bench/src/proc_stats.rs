//! Reading a process's CPU time and memory from `/proc` (Linux).

use std::time::Duration;

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields after the closing parenthesis are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    let ticks = clock_ticks();
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / ticks))
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second for `/proc/PID/stat` times (USER_HZ). It is 100 on every Linux configuration we target;
/// `getconf CLK_TCK` confirms it without linking libc.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A before/after CPU reading of one process.
pub struct CpuMeter {
    pid: Option<u32>,
    start: Option<Duration>,
}

impl CpuMeter {
    pub fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter { pid, start: pid.and_then(cpu_time) }
    }

    /// CPU time used since [`CpuMeter::start`].
    pub fn elapsed(&self) -> Option<Duration> {
        Some(cpu_time(self.pid?)?.saturating_sub(self.start?))
    }

    /// The CPU time of several processes together (those without a pid count nothing; none at all: `None`).
    pub fn sum(meters: &[&CpuMeter]) -> Option<Duration> {
        meters.iter().filter_map(|m| m.elapsed()).reduce(|a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 1024 * 1024);
        let before = cpu_time(me).unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time(me).unwrap() > before, "busy work shows up as CPU time");
    }
}
