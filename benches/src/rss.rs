//! Memory of the process under test, from /proc (Linux only): VmRSS now,
//! VmHWM (peak since start), and the pids that hold a listening port.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use tokio::sync::watch;

/// `VmRSS` and `VmHWM` of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Mem {
    /// Resident set now.
    pub rss_kib: u64,
    /// Peak resident set since the process started.
    pub hwm_kib: u64,
}

/// Reads `/proc/<pid>/status`.
pub fn mem(pid: u32) -> Result<Mem> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Ok(Mem {
        rss_kib: field("VmRSS:").unwrap_or(0),
        hwm_kib: field("VmHWM:").unwrap_or(0),
    })
}

/// Sum over several processes (nginx: master and workers).
pub fn mem_sum(pids: &[u32]) -> Result<Mem> {
    let mut total = Mem::default();
    for pid in pids {
        let m = mem(*pid)?;
        total.rss_kib += m.rss_kib;
        total.hwm_kib += m.hwm_kib;
    }
    Ok(total)
}

/// Socket inodes listening on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let port_hex = local.rsplit(':').next().unwrap_or("");
            // 0A is TCP_LISTEN.
            if *state == "0A" && u16::from_str_radix(port_hex, 16).ok() == Some(port) {
                inodes.push((*inode).to_string());
            }
        }
    }
    inodes
}

/// The pids holding a socket that listens on `port` (needs permission to
/// read other processes' fd tables: same user or root).
pub fn pids_listening_on(port: u16) -> Result<Vec<u32>> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return Err(anyhow!("nothing listens on port {port}"));
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| t.to_str().map(|s| wanted.iter().any(|w| w == s)))
                .unwrap_or(false)
        });
        if holds {
            pids.push(pid);
        }
    }
    if pids.is_empty() {
        return Err(anyhow!(
            "port {port} is listening but its process is not visible (run as its user or root, or pass --broker-pid)"
        ));
    }
    pids.sort_unstable();
    Ok(pids)
}

/// CPU time (user + system) of one process so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name (field 2) may contain spaces; fields after its ')' are fixed.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path}: no field {i}"))
    };
    // USER_HZ is 100 on every Linux architecture the broker targets.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Summed CPU seconds of several processes.
pub fn cpu_seconds_sum(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p).ok()).sum()
}

/// Busy CPU time of the whole machine so far (all cores), in seconds.
pub fn machine_busy_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum();
    busy as f64 / 100.0
}

/// Waits until the machine is quiet (under 0.25 busy cores for three
/// 2-second windows in a row), at most `max`. Returns the busy cores seen last.
pub async fn wait_quiet(max: Duration) -> f64 {
    let deadline = std::time::Instant::now() + max;
    let mut quiet = 0;
    let mut busy = 0.0;
    while std::time::Instant::now() < deadline {
        let before = machine_busy_seconds();
        tokio::time::sleep(Duration::from_secs(2)).await;
        busy = (machine_busy_seconds() - before) / 2.0;
        quiet = if busy < 0.25 { quiet + 1 } else { 0 };
        if quiet >= 3 {
            break;
        }
    }
    busy
}

/// What [`sample`] saw during one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sampled {
    /// Largest summed VmRSS seen, KiB.
    pub peak_rss_kib: u64,
    /// CPU seconds the processes used during the run.
    pub cpu_seconds: f64,
    /// CPU seconds the whole machine used during the run.
    pub machine_busy_seconds: f64,
    /// Wall seconds of the run.
    pub wall_seconds: f64,
}

/// Samples the summed VmRSS of `pids` every 100 ms until told to stop, and
/// their CPU time over the whole span. The peak is the one of this run
/// (VmHWM covers the whole life of the process, including setup).
pub fn sample(pids: Vec<u32>, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<Sampled> {
    let started = std::time::Instant::now();
    let cpu_at_start = cpu_seconds_sum(&pids);
    let machine_at_start = machine_busy_seconds();
    tokio::spawn(async move {
        let mut peak = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Ok(m) = mem_sum(&pids) {
                        peak = peak.max(m.rss_kib);
                    }
                }
                _ = stop.changed() => break,
            }
        }
        if let Ok(m) = mem_sum(&pids) {
            peak = peak.max(m.rss_kib);
        }
        Sampled {
            peak_rss_kib: peak,
            cpu_seconds: cpu_seconds_sum(&pids) - cpu_at_start,
            machine_busy_seconds: machine_busy_seconds() - machine_at_start,
            wall_seconds: started.elapsed().as_secs_f64(),
        }
    })
}
