//! A private PostgreSQL server for one test: `initdb` into a temporary
//! directory and `pg_ctl` on a free loopback port, so a test may stop and
//! start it without touching the shared server the other tests use.
//!
//! Run as root (as in CI containers), every PostgreSQL program runs as the
//! `postgres` user (`runuser`), like `scripts/postgres-up`: the server
//! refuses to run as root. Missing binaries are an error saying so, never a
//! silent pass.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::process::Command;

/// Where Debian puts each major version's server programs.
const LIB: &str = "/usr/lib/postgresql";

/// A PostgreSQL server of the test's own; stopped (immediately) on drop.
pub struct PgInstance {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    running: bool,
}

impl PgInstance {
    /// Initialises a cluster, starts it on a free loopback port and creates
    /// the database `kakehashi`.
    pub async fn start() -> Result<PgInstance> {
        let bin = server_binaries()?;
        let dir = tempfile::Builder::new().prefix("kk-pg-").tempdir()?;
        if as_root() {
            let status = std::process::Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .context("chown the private PostgreSQL directory to postgres")?;
            if !status.success() {
                bail!(
                    "chown postgres {} failed (is there a postgres user?)",
                    dir.path().display()
                );
            }
        }
        let port = crate::free_port()?;
        let mut pg = PgInstance {
            dir,
            bin,
            port,
            running: false,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
        .await?;
        pg.start_server().await?;
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .context("connect to the private PostgreSQL")?;
        sqlx::query("CREATE DATABASE kakehashi")
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(pg)
    }

    /// The URL of its database `kakehashi` (superuser `postgres`, trusted on loopback).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/kakehashi", self.port)
    }

    /// Its TCP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL of its database reached through `addr` instead (a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        format!("postgres://postgres@{addr}/kakehashi")
    }

    /// Stops the server the way an operator restarting it does (`pg_ctl stop
    /// -m fast`: open sessions are ended, everything committed stays).
    pub async fn stop(&mut self) -> Result<()> {
        self.stop_in("fast").await
    }

    /// Kills the server the way a crash does (`pg_ctl stop -m immediate`:
    /// no shutdown checkpoint, and WAL still in the server's memory is
    /// lost; WAL already written stays, as the operating system survives).
    pub async fn crash(&mut self) -> Result<()> {
        self.stop_in("immediate").await
    }

    /// `pg_ctl stop` in shutdown mode `mode`.
    async fn stop_in(&mut self, mode: &str) -> Result<()> {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", mode, "-w", "stop"],
        )
        .await?;
        self.running = false;
        Ok(())
    }

    /// Starts the stopped server again on the same port and data.
    pub async fn start_again(&mut self) -> Result<()> {
        self.start_server().await
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn start_server(&mut self) -> Result<()> {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            path_str(self.dir.path())?
        );
        let started = Instant::now();
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await
        .with_context(|| format!("starting the private PostgreSQL; its log:\n{}", self.log()))?;
        self.running = true;
        // `-w` waits for the socket; make sure TCP answers too.
        while tokio::net::TcpStream::connect(self.addr()).await.is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the private PostgreSQL does not accept TCP connections");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Runs one of the server's programs (as `postgres` when root).
    async fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let exe = self.bin.join(program);
        let mut command = if as_root() {
            let mut c = Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .await
            .with_context(|| format!("run {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut command = if as_root() {
            let mut c = std::process::Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let _ = command
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("a temporary path that is not UTF-8")
}

/// The server programs of the newest PostgreSQL installed (15 preferred,
/// as `scripts/postgres-up` installs it).
fn server_binaries() -> Result<PathBuf> {
    let preferred = Path::new(LIB).join("15/bin");
    if preferred.join("postgres").exists() && preferred.join("initdb").exists() {
        return Ok(preferred);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(LIB)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    (bin.join("postgres").exists() && bin.join("initdb").exists())
                        .then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "\n!!! PostgreSQL server programs (initdb, pg_ctl, postgres) are not installed under \
             {LIB}/*/bin: this test starts a private PostgreSQL and cannot run without them \
             (scripts/postgres-up installs them) !!!\n"
        ),
    }
}
