//! What else the machine did during a measured window: bytes written to
//! disk; on PostgreSQL, the maintenance that finished (autovacuum,
//! autoanalyze), the autovacuum passes at work at either end, and the
//! checkpointer's writes; and how the broker's own record commits went
//! (its `/metrics` histogram).
//!
//! Why: a half-rate p99 that misses its target is read against these. On
//! this project's 2-core VM the misses come from the full-rate run's
//! aftermath — autovacuum passes and checkpoints over the rows it inserted,
//! each slowing the WAL fsync every commit waits for (benches/README.md) —
//! and whether the 10 s window caught one decides the verdict. The report
//! says so instead of leaving the reader to guess.

use std::process::Command;
use std::time::Duration;

use serde::Serialize;

/// PostgreSQL's counters at one instant, or their growth over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PgCounters {
    /// Autovacuum passes finished on the database's tables.
    pub autovacuums: u64,
    /// Autoanalyze passes finished on the database's tables.
    pub autoanalyzes: u64,
    /// Checkpoints started (timed or requested), whole cluster.
    pub checkpoints: u64,
    /// Buffers the checkpointer wrote (8 KiB each), whole cluster.
    pub checkpoint_buffers: u64,
}

impl PgCounters {
    /// Parses `psql -tA -F,` output of [`PG_COUNTERS_SQL`]; `None` when it
    /// is not four integers.
    pub fn parse(out: &str) -> Option<PgCounters> {
        let fields: Vec<u64> = out
            .trim()
            .split(',')
            .map(|f| f.trim().parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        match fields.as_slice() {
            [autovacuums, autoanalyzes, checkpoints, checkpoint_buffers] => Some(PgCounters {
                autovacuums: *autovacuums,
                autoanalyzes: *autoanalyzes,
                checkpoints: *checkpoints,
                checkpoint_buffers: *checkpoint_buffers,
            }),
            _ => None,
        }
    }

    fn since(self, before: PgCounters) -> PgCounters {
        PgCounters {
            autovacuums: self.autovacuums.saturating_sub(before.autovacuums),
            autoanalyzes: self.autoanalyzes.saturating_sub(before.autoanalyzes),
            checkpoints: self.checkpoints.saturating_sub(before.checkpoints),
            checkpoint_buffers: self
                .checkpoint_buffers
                .saturating_sub(before.checkpoint_buffers),
        }
    }
}

/// One query for all four counters (PostgreSQL 15's statistics views).
pub const PG_COUNTERS_SQL: &str = "SELECT \
    (SELECT coalesce(sum(autovacuum_count), 0) FROM pg_stat_user_tables), \
    (SELECT coalesce(sum(autoanalyze_count), 0) FROM pg_stat_user_tables), \
    checkpoints_timed + checkpoints_req, buffers_checkpoint FROM pg_stat_bgwriter";

/// What the autovacuum workers are doing in the database now, one line
/// each (`autovacuum: VACUUM public.queries`). The counters above move
/// only when a pass ends, so a pass that began before a window and ends
/// after it shows only here.
pub const PG_AUTOVACUUM_SQL: &str = "SELECT query FROM pg_stat_activity \
    WHERE backend_type = 'autovacuum worker' AND datname = current_database() \
    AND query <> '' ORDER BY query";

/// Parses psql's output of [`PG_COUNTERS_SQL`] then [`PG_AUTOVACUUM_SQL`]:
/// the counters on the first line, then the autovacuum workers' passes
/// (their `autovacuum: ` prefix dropped); `None` without counters.
pub fn parse_pg(out: &str) -> Option<(PgCounters, Vec<String>)> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let counters = PgCounters::parse(lines.next()?)?;
    let running = lines
        .map(|l| {
            let l = l.trim();
            l.strip_prefix("autovacuum: ").unwrap_or(l).to_string()
        })
        .collect();
    Some((counters, running))
}

/// The broker's record-commit latency histogram
/// (`kakehashi_record_commit_seconds` on `/metrics`): cumulative counts by
/// upper bound in seconds, in the order the broker prints them.
pub type CommitBuckets = Vec<(f64, u64)>;

/// The histogram's buckets from `/metrics` text; `None` without any.
pub fn parse_commit_buckets(metrics: &str) -> Option<CommitBuckets> {
    let buckets: CommitBuckets = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("kakehashi_record_commit_seconds_bucket{le=\"")?;
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect();
    (!buckets.is_empty()).then_some(buckets)
}

/// How the broker's record commits went in a window: whether the tail of
/// the queries came with slow commits (the disk) or without (CPU, queues).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Commits {
    /// Commits in the window.
    pub commits: u64,
    /// Of those, taking longer than 3.2 ms.
    pub over_3_2_ms: u64,
    /// The upper bound of the slowest bucket any reached, in ms (`None`
    /// past the last finite bound).
    pub slowest_under_ms: Option<f64>,
}

impl Commits {
    /// The growth from `before` to `after`; `None` if the buckets differ.
    pub fn between(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<Commits> {
        if before.len() != after.len() || before.iter().zip(after).any(|(b, a)| b.0 != a.0) {
            return None;
        }
        let grown: Vec<(f64, u64)> = before
            .iter()
            .zip(after)
            .map(|(b, a)| (a.0, a.1.saturating_sub(b.1)))
            .collect();
        let commits = grown.last().map(|b| b.1).unwrap_or(0);
        let within = |bound: f64| {
            grown
                .iter()
                .filter(|b| b.0 <= bound)
                .map(|b| b.1)
                .max()
                .unwrap_or(0)
        };
        // With no commits every bucket "holds them all": there is no slowest.
        let slowest = grown
            .iter()
            .find(|b| commits > 0 && b.1 == commits)
            .map(|b| b.0);
        Some(Commits {
            commits,
            over_3_2_ms: commits.saturating_sub(within(0.0032)),
            slowest_under_ms: slowest.filter(|le| le.is_finite()).map(|le| le * 1e3),
        })
    }

    fn text(&self) -> String {
        if self.commits == 0 {
            return "broker: no record commits".to_string();
        }
        let share = self.over_3_2_ms as f64 * 100.0 / (self.commits.max(1) as f64);
        let slowest = match self.slowest_under_ms {
            Some(ms) => format!("the slowest under {ms} ms"),
            None => "the slowest past the histogram".to_string(),
        };
        format!(
            "broker: {} record commits, {share:.1} % over 3.2 ms, {slowest}",
            self.commits
        )
    }
}

/// The counters at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// 512-byte sectors written to the machine's disks since boot.
    pub disk_sectors_written: u64,
    /// PostgreSQL's counters, when a database was given and psql answered.
    pub postgres: Option<PgCounters>,
    /// The autovacuum passes at work then (empty without PostgreSQL).
    pub autovacuum_running: Vec<String>,
    /// The broker's commit histogram, when its `/metrics` answered.
    pub commit_buckets: Option<CommitBuckets>,
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Background {
    /// Seconds between the snapshots.
    pub seconds: f64,
    /// Megabytes (10^6 bytes) written to the machine's disks.
    pub disk_written_mb: f64,
    /// PostgreSQL's maintenance in the window, when the target was PostgreSQL.
    pub postgres: Option<PgCounters>,
    /// Autovacuum passes at work when the window began (PostgreSQL).
    pub autovacuum_at_start: Vec<String>,
    /// Autovacuum passes at work when it ended (PostgreSQL).
    pub autovacuum_at_end: Vec<String>,
    /// The broker's record commits in the window, when `/metrics` answered.
    pub commits: Option<Commits>,
}

impl Background {
    /// The growth from `before` to `after`, `seconds` apart.
    pub fn between(before: &Snapshot, after: &Snapshot, seconds: f64) -> Background {
        Background {
            seconds,
            disk_written_mb: after
                .disk_sectors_written
                .saturating_sub(before.disk_sectors_written) as f64
                * 512.0
                / 1e6,
            postgres: match (before.postgres, after.postgres) {
                (Some(b), Some(a)) => Some(a.since(b)),
                _ => None,
            },
            autovacuum_at_start: before.autovacuum_running.clone(),
            autovacuum_at_end: after.autovacuum_running.clone(),
            commits: match (&before.commit_buckets, &after.commit_buckets) {
                (Some(b), Some(a)) => Commits::between(b, a),
                _ => None,
            },
        }
    }

    /// One line for people, e.g. `disk 412 MB written (41 MB/s); PostgreSQL:
    /// 2 autovacuums and 2 autoanalyzes finished, 0 checkpoints started, 95 MB
    /// written by checkpoints that ended`.
    pub fn text(&self) -> String {
        let mut out = format!(
            "disk {:.0} MB written ({:.0} MB/s)",
            self.disk_written_mb,
            self.disk_written_mb / self.seconds.max(1e-9)
        );
        if let Some(pg) = self.postgres {
            let plural = |n: u64, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
            // PostgreSQL 15 adds a checkpoint's buffers to the counter when
            // it ends: a checkpoint still writing shows as started, 0 MB.
            out.push_str(&format!(
                "; PostgreSQL: {} and {} finished, {} started, {:.0} MB written by checkpoints that ended",
                plural(pg.autovacuums, "autovacuum"),
                plural(pg.autoanalyzes, "autoanalyze"),
                plural(pg.checkpoints, "checkpoint"),
                pg.checkpoint_buffers as f64 * 8192.0 / 1e6
            ));
            let at_work = |passes: &[String]| {
                if passes.is_empty() {
                    "none".to_string()
                } else {
                    passes.join(", ")
                }
            };
            out.push_str(&format!(
                "; autovacuum at work when it began: {}, when it ended: {}",
                at_work(&self.autovacuum_at_start),
                at_work(&self.autovacuum_at_end)
            ));
        }
        if let Some(commits) = &self.commits {
            out.push_str("; ");
            out.push_str(&commits.text());
        }
        out
    }
}

/// Sectors written to whole disks in `/proc/diskstats` text (field 10);
/// `is_disk` says which device names are disks (partitions, loop and
/// device-mapper devices would count the same bytes twice or not at all).
pub fn sectors_written(diskstats: &str, is_disk: impl Fn(&str) -> bool) -> u64 {
    diskstats
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let name = f.get(2)?;
            if !is_disk(name) {
                return None;
            }
            f.get(9)?.parse::<u64>().ok()
        })
        .sum()
}

/// A device is a disk when `/sys/block/NAME/device` exists: virtio, SCSI
/// and NVMe disks have one; partitions, loop, zram and dm devices do not.
fn is_physical_disk(name: &str) -> bool {
    std::path::Path::new("/sys/block")
        .join(name)
        .join("device")
        .exists()
}

/// Reads the counters now (blocking: it runs psql). `pg_url` is the
/// benchmark's database, if the target is PostgreSQL.
pub fn snapshot(pg_url: Option<&str>) -> Snapshot {
    let disk = std::fs::read_to_string("/proc/diskstats")
        .map(|text| sectors_written(&text, is_physical_disk))
        .unwrap_or(0);
    let postgres = pg_url.and_then(|url| {
        let out = crate::compare::run_tool(
            Command::new("psql").args([
                url,
                "-X",
                "-tA",
                "-F,",
                "-c",
                PG_COUNTERS_SQL,
                "-c",
                PG_AUTOVACUUM_SQL,
            ]),
            "psql (statistics)",
        )
        .ok()?;
        parse_pg(&out)
    });
    let (postgres, autovacuum_running) = match postgres {
        Some((counters, running)) => (Some(counters), running),
        None => (None, Vec::new()),
    };
    Snapshot {
        disk_sectors_written: disk,
        postgres,
        autovacuum_running,
        commit_buckets: None,
    }
}

/// A measured window: its first snapshot is taken `delay` after
/// [`Window::start`] (when the run's warm-up ends), its last by
/// [`Window::finish`]. Both run off the runtime's workers, which the load
/// generator uses.
pub struct Window {
    start: tokio::task::JoinHandle<Option<(std::time::Instant, Snapshot)>>,
    pg_url: Option<String>,
    broker: Option<Metrics>,
}

/// Where the broker's `/metrics` is read, with an identity it lets in.
#[derive(Clone)]
pub struct Metrics {
    /// The broker.
    pub target: crate::client::Target,
    /// TLS with the identity.
    pub tls: tokio_rustls::TlsConnector,
}

impl Metrics {
    /// The commit histogram now; `None` if the broker did not answer.
    pub async fn commit_buckets(&self) -> Option<CommitBuckets> {
        let mut conn =
            crate::client::Conn::connect(&self.target, &self.tls, crate::client::Protocol::Http1)
                .await
                .ok()?;
        let reply = conn
            .send(http::Method::GET, "/metrics", bytes::Bytes::new())
            .await
            .ok()?;
        if !reply.status.is_success() {
            return None;
        }
        parse_commit_buckets(&String::from_utf8_lossy(&reply.body))
    }
}

/// Both reads at one instant: the broker's histogram, then the rest.
async fn snapshot_with(pg_url: Option<String>, broker: Option<&Metrics>) -> Option<Snapshot> {
    let commit_buckets = match broker {
        Some(broker) => broker.commit_buckets().await,
        None => None,
    };
    let mut snap = tokio::task::spawn_blocking(move || snapshot(pg_url.as_deref()))
        .await
        .ok()?;
    snap.commit_buckets = commit_buckets;
    Some(snap)
}

impl Window {
    /// Starts the clock; `pg_url` is the benchmark's database, if any;
    /// `broker` where its commit histogram is read, if it is Kakehashi.
    pub fn start(delay: Duration, pg_url: Option<String>, broker: Option<Metrics>) -> Window {
        let url = pg_url.clone();
        let at_start = broker.clone();
        let start = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let at = std::time::Instant::now();
            snapshot_with(url, at_start.as_ref())
                .await
                .map(|first| (at, first))
        });
        Window {
            start,
            pg_url,
            broker,
        }
    }

    /// What happened from the first snapshot to now; `None` if a snapshot
    /// task failed.
    pub async fn finish(self) -> Option<Background> {
        let last = snapshot_with(self.pg_url, self.broker.as_ref()).await?;
        let (at, first) = self.start.await.ok()??;
        Some(Background::between(
            &first,
            &last,
            at.elapsed().as_secs_f64(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISKSTATS: &str = "\
 254       0 vda 1000 0 20000 300 5000 0 80000 900 0 1200 1200 0 0 0 0 0 0
 254       1 vda1 990 0 19000 290 4990 0 79000 890 0 1100 1100 0 0 0 0 0 0
   7       0 loop0 10 0 100 1 0 0 0 0 0 1 1 0 0 0 0 0 0
 253       0 zram0 5 0 40 0 7 0 56 0 0 0 0 0 0 0 0 0 0";

    #[test]
    fn only_whole_disks_count() {
        assert_eq!(sectors_written(DISKSTATS, |n| n == "vda"), 80_000);
        assert_eq!(sectors_written(DISKSTATS, |_| false), 0);
        assert_eq!(sectors_written("garbage\n1 2\n", |_| true), 0);
    }

    #[test]
    fn pg_counters_parse_and_refuse_other_shapes() {
        assert_eq!(
            PgCounters::parse("3,4,1,12207\n"),
            Some(PgCounters {
                autovacuums: 3,
                autoanalyzes: 4,
                checkpoints: 1,
                checkpoint_buffers: 12207
            })
        );
        assert_eq!(
            parse_pg("3,4,1,12207\nautovacuum: VACUUM public.queries\n"),
            Some((
                PgCounters {
                    autovacuums: 3,
                    autoanalyzes: 4,
                    checkpoints: 1,
                    checkpoint_buffers: 12207
                },
                vec!["VACUUM public.queries".to_string()]
            ))
        );
        assert_eq!(parse_pg("autovacuum: VACUUM public.queries\n"), None);
        assert_eq!(PgCounters::parse(""), None);
        assert_eq!(PgCounters::parse("3,4,1"), None);
        assert_eq!(PgCounters::parse("3,x,1,2"), None);
    }

    /// Against the real server `scripts/test` starts, through the
    /// [`Window`] `compare` uses: the counters read, and a checkpoint in the
    /// window is seen.
    #[tokio::test]
    async fn reads_the_counters_of_a_real_postgres() {
        let Ok(url) = std::env::var("KAKEHASHI_TEST_PG_URL") else {
            eprintln!("KAKEHASHI_TEST_PG_URL unset: PostgreSQL counters not read");
            return;
        };
        let before = snapshot(Some(&url));
        let Some(pg_before) = before.postgres else {
            panic!("psql gave no counters for the test server");
        };
        let window = Window::start(Duration::ZERO, Some(url.clone()), None);
        // The window's first snapshot is taken before the checkpoint.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = Command::new("psql")
            .args([url.as_str(), "-X", "-qc", "CHECKPOINT"])
            .status()
            .expect("psql runs");
        assert!(status.success(), "CHECKPOINT refused");
        // The checkpointer publishes its counters just after it finishes.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let started = snapshot(Some(&url))
                .postgres
                .map(|p| p.checkpoints)
                .unwrap_or(0);
            if started > pg_before.checkpoints || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let window = window.finish().await.expect("both snapshots taken");
        let pg = window.postgres.expect("counters on both sides");
        assert!(
            pg.checkpoints >= 1,
            "the checkpoint was not counted: {pg:?}"
        );
        assert!(
            window
                .text()
                .contains(&format!("{} checkpoint", pg.checkpoints)),
            "{}",
            window.text()
        );
    }

    const METRICS: &str = "\
# TYPE kakehashi_record_commit_seconds histogram
kakehashi_record_commit_seconds_bucket{le=\"0.0008\"} 7617
kakehashi_record_commit_seconds_bucket{le=\"0.0016\"} 9405
kakehashi_record_commit_seconds_bucket{le=\"0.0032\"} 9553
kakehashi_record_commit_seconds_bucket{le=\"0.0064\"} 9626
kakehashi_record_commit_seconds_bucket{le=\"0.0128\"} 9641
kakehashi_record_commit_seconds_bucket{le=\"+Inf\"} 9642
kakehashi_record_commit_seconds_sum 7.59
kakehashi_request_duration_seconds_bucket{le=\"0.0001\",route=\"query\"} 3
";

    #[test]
    fn commit_buckets_parse_from_metrics_text() {
        let b = parse_commit_buckets(METRICS).expect("buckets");
        assert_eq!(b.len(), 6);
        assert_eq!(b[0], (0.0008, 7617));
        assert_eq!(b[5], (f64::INFINITY, 9642));
        assert_eq!(parse_commit_buckets("kakehashi_up 1\n"), None);
    }

    #[test]
    fn commits_in_a_window_are_the_growth_of_the_buckets() {
        let after = parse_commit_buckets(METRICS).expect("buckets");
        let before: CommitBuckets = after.iter().map(|b| (b.0, b.1 / 2)).collect();
        // Grown: 3809, 4703, 4777, 4813, 4821, 4821 (of 9642 - 4821).
        let c = Commits::between(&before, &after).expect("same buckets");
        assert_eq!(c.commits, 4821);
        assert_eq!(c.over_3_2_ms, 4821 - 4777);
        assert_eq!(c.slowest_under_ms, Some(12.8));
        assert_eq!(
            c.text(),
            "broker: 4821 record commits, 0.9 % over 3.2 ms, the slowest under 12.8 ms"
        );
        // From nothing: one commit past the last bound.
        let zero: CommitBuckets = after.iter().map(|b| (b.0, 0)).collect();
        let c = Commits::between(&zero, &after).expect("same buckets");
        assert_eq!((c.commits, c.slowest_under_ms), (9642, None));
        assert!(c.text().ends_with("the slowest past the histogram"));
        // A window without commits says so.
        let idle = Commits::between(&after, &after).expect("same buckets");
        assert_eq!((idle.commits, idle.slowest_under_ms), (0, None));
        assert_eq!(idle.text(), "broker: no record commits");
        // A broker restarted with other buckets gives no figures.
        assert_eq!(Commits::between(&after[..5], &after), None);
    }

    #[test]
    fn a_window_reports_growth_in_words() {
        let before = Snapshot {
            disk_sectors_written: 1_000_000,
            postgres: Some(PgCounters {
                autovacuums: 5,
                autoanalyzes: 5,
                checkpoints: 2,
                checkpoint_buffers: 1000,
            }),
            autovacuum_running: vec!["VACUUM ANALYZE public.queries".into()],
            commit_buckets: None,
        };
        let after = Snapshot {
            disk_sectors_written: 1_000_000 + 800_000,
            postgres: Some(PgCounters {
                autovacuums: 7,
                autoanalyzes: 6,
                checkpoints: 3,
                checkpoint_buffers: 1000 + 12_207,
            }),
            autovacuum_running: Vec::new(),
            commit_buckets: None,
        };
        let b = Background::between(&before, &after, 10.0);
        assert_eq!(
            b.text(),
            "disk 410 MB written (41 MB/s); PostgreSQL: 2 autovacuums and 1 autoanalyze \
             finished, 1 checkpoint started, 100 MB written by checkpoints that ended; \
             autovacuum at work when it began: VACUUM ANALYZE public.queries, when it ended: none"
        );
        // SQLite targets have no PostgreSQL counters; a failed psql read
        // on one side gives none rather than a wrong difference.
        let sqlite = Background::between(
            &Snapshot {
                postgres: None,
                autovacuum_running: Vec::new(),
                ..before
            },
            &after,
            10.0,
        );
        assert_eq!(sqlite.text(), "disk 410 MB written (41 MB/s)");
    }
}
