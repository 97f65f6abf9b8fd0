//! What a process costs, read from `/proc`: CPU time (utime + stime of
//! `/proc/PID/stat`) and resident memory (`VmRSS` of `/proc/PID/status`).

use anyhow::{Context as _, Result};

/// CPU seconds (user + system) the process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (has the process exited?)"))?;
    // The command name (field 2) may hold spaces: count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/PID/stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are 12 and 13 after the name.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("/proc/PID/stat is too short")?
            .parse()
            .context("/proc/PID/stat: a CPU time is not a number")
    };
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / per_second)
}

/// The process's resident set size in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the process exited?)"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .context("/proc/PID/status has no VmRSS")?
        .parse()
        .context("VmRSS is not a number")?;
    Ok(kib / 1024.0)
}
