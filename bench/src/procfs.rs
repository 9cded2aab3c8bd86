//! What `/proc` tells about processes (CPU time, memory), and the open-file limit the
//! fan-out benchmark needs raised.

use anyhow::{Context, Result};

/// User plus system CPU seconds of a process, from `/proc/<pid>/stat` (fields 14 and 15,
/// in USER_HZ, 100 per second).
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses; the fields after it do not.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A `VmRSS:`/`VmHWM:` line of `/proc/<pid>/status`, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// This process's CPU seconds so far; NaN when `/proc` cannot tell.
pub fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(cpu_seconds)
        .unwrap_or(f64::NAN)
}

/// The CPU seconds of `pids`, summed.
pub fn pids_cpu(pids: &[i32]) -> Result<f64> {
    pids.iter().try_fold(0.0, |sum, pid| {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        Ok(sum + cpu_seconds(&stat).with_context(|| format!("cannot parse {path}"))?)
    })
}

/// A memory `field` of `pids` (`VmRSS:`, `VmHWM:`), summed, in KiB.
pub fn pids_kib(pids: &[i32], field: &str) -> Result<u64> {
    pids.iter().try_fold(0, |sum, pid| {
        let path = format!("/proc/{pid}/status");
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        Ok(sum + status_kib(&status, field).with_context(|| format!("no {field} in {path}"))?)
    })
}

/// Raises this process's open-file limit to its hard limit: 10,000 sockets need more than
/// the usual soft limit of 1,024, and the servers it starts inherit it.
pub fn raise_open_files() -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let stat = "42 (centrifugo (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        let status = "Name:\tgateway\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10_240));
        assert_eq!(status_kib(status, "VmHWM:"), Some(20_480));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_has_used_cpu() {
        assert!(own_cpu_seconds() >= 0.0);
    }
}
