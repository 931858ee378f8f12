//! Results as text and JSON.

use serde::Serialize;

use crate::client::Protocol;
use crate::load::{Measured, Scenario};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// Memory of the server process(es) during a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerMem {
    /// The processes measured (nginx: master and workers, summed).
    pub pids: Vec<u32>,
    /// Largest VmRSS sampled every 100 ms during the run, KiB.
    pub peak_rss_kib: u64,
    /// VmHWM at the end of the run (peak since the process started), KiB.
    pub hwm_kib: u64,
    /// CPU the server used during the run (warm-up included), in cores
    /// (1.0 = one core busy all the time).
    pub cpu_cores: f64,
}

impl ServerMem {
    /// From what the sampler saw and VmHWM read after the run.
    pub fn new(pids: Vec<u32>, sampled: crate::rss::Sampled) -> ServerMem {
        ServerMem {
            hwm_kib: crate::rss::mem_sum(&pids).map(|m| m.hwm_kib).unwrap_or(0),
            pids,
            peak_rss_kib: sampled.peak_rss_kib,
            cpu_cores: if sampled.wall_seconds > 0.0 {
                sampled.cpu_seconds / sampled.wall_seconds
            } else {
                0.0
            },
        }
    }
}

/// One run of one scenario against one target.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// A name for the target (`kakehashi-sqlite`, `nginx`, or the URL).
    pub target: String,
    /// The URL driven.
    pub url: String,
    /// Scenario.
    pub scenario: Scenario,
    /// HTTP version.
    pub protocol: Protocol,
    /// Connections (or concurrent connect loops for `handshake`).
    pub connections: usize,
    /// In-flight requests per h2 connection.
    pub streams: usize,
    /// Offered rate in open-loop mode (requests per second), if any.
    pub rate: Option<f64>,
    /// Measured window, seconds.
    pub seconds: f64,
    /// Correct answers in the window.
    pub ok: u64,
    /// Errors (whole run).
    pub errors: u64,
    /// The first error messages.
    pub error_samples: Vec<String>,
    /// Correct answers per second.
    pub throughput: f64,
    /// Latency of correct answers.
    pub latency_ms: Latency,
    /// Envelopes opened with the private key (query scenario).
    pub envelopes_opened: u64,
    /// Server memory and CPU, if its pid was known.
    pub server: Option<ServerMem>,
    /// CPU the load generator itself used, in cores: on a small machine it
    /// competes with the server, which bounds what any server can show.
    pub client_cpu_cores: f64,
    /// CPU used by everything else on the machine during the run, in cores
    /// (other builds, databases): a number well above 0 means the run was disturbed.
    pub other_cpu_cores: f64,
    /// Disk writes and database maintenance during the measured window
    /// (half-rate runs of `compare`).
    pub background: Option<crate::background::Background>,
}

impl RunReport {
    /// Fills in the CPU split of the run: server, generator, everything else.
    pub fn set_cpu(&mut self, client_cores: f64, sampled: &crate::rss::Sampled) {
        self.client_cpu_cores = client_cores;
        if sampled.wall_seconds > 0.0 {
            let machine = sampled.machine_busy_seconds / sampled.wall_seconds;
            let server = self.server.as_ref().map(|s| s.cpu_cores).unwrap_or(0.0);
            self.other_cpu_cores = (machine - server - client_cores).max(0.0);
        }
    }

    /// Builds the report of a finished run.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &str,
        url: &str,
        scenario: Scenario,
        protocol: Protocol,
        connections: usize,
        streams: usize,
        rate: Option<f64>,
        m: &Measured,
        envelopes_opened: u64,
        server: Option<ServerMem>,
    ) -> RunReport {
        let ms = |q: f64| m.hist.value_at_quantile(q) as f64 / 1000.0;
        let seconds = m.window.as_secs_f64();
        RunReport {
            target: target.to_string(),
            url: url.to_string(),
            scenario,
            protocol,
            connections,
            streams,
            rate,
            seconds,
            ok: m.ok,
            errors: m.errors,
            error_samples: m.error_samples.clone(),
            throughput: if seconds > 0.0 {
                m.ok as f64 / seconds
            } else {
                0.0
            },
            latency_ms: if m.hist.is_empty() {
                Latency::default()
            } else {
                Latency {
                    mean: m.hist.mean() / 1000.0,
                    p50: ms(0.5),
                    p90: ms(0.9),
                    p99: ms(0.99),
                    p999: ms(0.999),
                    max: m.hist.max() as f64 / 1000.0,
                }
            },
            envelopes_opened,
            server,
            client_cpu_cores: 0.0,
            other_cpu_cores: 0.0,
            background: None,
        }
    }

    /// A few lines for people.
    pub fn text(&self) -> String {
        let l = &self.latency_ms;
        let mut out = format!(
            "{target} {scenario} ({proto}, {conns} conn{streams}{rate}): {ok} ok in {secs:.1} s = {tp:.0} req/s\n  \
             latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  p99.9 {p999:.2}  max {max:.2}  mean {mean:.2}\n",
            target = self.target,
            scenario = self.scenario.name(),
            proto = match self.protocol {
                Protocol::Http1 => "HTTP/1.1",
                Protocol::Http2 => "h2",
            },
            conns = self.connections,
            streams = if self.streams > 1 {
                format!(" × {} streams", self.streams)
            } else {
                String::new()
            },
            rate = self.rate.map(|r| format!(", open loop at {r:.0}/s")).unwrap_or_default(),
            ok = self.ok,
            secs = self.seconds,
            tp = self.throughput,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            p999 = l.p999,
            max = l.max,
            mean = l.mean,
        );
        if self.errors > 0 {
            out.push_str(&format!(
                "  errors: {} (e.g. {:?})\n",
                self.errors, self.error_samples
            ));
        }
        if let Some(b) = &self.background {
            out.push_str(&format!("  during the measured window: {}\n", b.text()));
        }
        if self.envelopes_opened > 0 {
            out.push_str(&format!(
                "  envelopes opened with the reply key: {} (all opened)\n",
                self.envelopes_opened
            ));
        }
        if let Some(s) = &self.server {
            out.push_str(&format!(
                "  server: RSS peak during run {:.1} MiB, VmHWM {:.1} MiB, CPU {:.2} cores (pid {:?})\n",
                s.peak_rss_kib as f64 / 1024.0,
                s.hwm_kib as f64 / 1024.0,
                s.cpu_cores,
                s.pids
            ));
        }
        if self.client_cpu_cores > 0.0 {
            out.push_str(&format!(
                "  load generator CPU: {:.2} cores; everything else on the machine: {:.2} cores\n",
                self.client_cpu_cores, self.other_cpu_cores
            ));
        }
        out
    }
}

/// `nproc`, CPU model, memory and the kernel's writeback threshold, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// CPU model name.
    pub cpu_model: String,
    /// Total memory, MiB.
    pub mem_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// When the kernel starts writing dirty page cache back. PostgreSQL's
    /// commit latency depends on it (benches/README.md, "Design decisions in force").
    pub writeback: Writeback,
}

/// `vm.dirty_background_bytes` and `vm.dirty_background_ratio` as read
/// (`None`: unreadable).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Writeback {
    /// Dirty bytes that start background writeback; 0 means the ratio applies.
    pub dirty_background_bytes: Option<u64>,
    /// Percent of memory dirty that starts it, when the bytes are 0.
    pub dirty_background_ratio: Option<u64>,
}

impl Writeback {
    fn read() -> Writeback {
        let read = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/vm/{name}"))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Writeback {
            dirty_background_bytes: read("dirty_background_bytes"),
            dirty_background_ratio: read("dirty_background_ratio"),
        }
    }

    /// The setting the kernel uses: the bytes when non-zero, else the ratio.
    pub fn text(&self) -> String {
        match (self.dirty_background_bytes, self.dirty_background_ratio) {
            (Some(bytes), _) if bytes > 0 => format!("{} MiB dirty", bytes / (1024 * 1024)),
            (_, Some(ratio)) => format!("{ratio}% of memory dirty"),
            _ => "unknown".into(),
        }
    }
}

impl Machine {
    /// Reads /proc.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_default();
        let mem_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024;
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            mem_mib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            writeback: Writeback::read(),
        }
    }

    /// One line.
    pub fn text(&self) -> String {
        format!(
            "{} CPUs ({}), {:.1} GiB RAM, Linux {}, background writeback from {}",
            self.cpus,
            self.cpu_model,
            self.mem_mib as f64 / 1024.0,
            self.kernel,
            self.writeback.text()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Writeback;

    fn describe_writeback(bytes: Option<u64>, ratio: Option<u64>) -> String {
        Writeback {
            dirty_background_bytes: bytes,
            dirty_background_ratio: ratio,
        }
        .text()
    }

    #[test]
    fn writeback_names_the_setting_the_kernel_uses() {
        // A byte threshold, when set, overrides the ratio.
        assert_eq!(
            describe_writeback(Some(16 * 1024 * 1024), Some(0)),
            "16 MiB dirty"
        );
        assert_eq!(describe_writeback(Some(0), Some(10)), "10% of memory dirty");
        assert_eq!(describe_writeback(None, None), "unknown");
    }
}
