//! The `kakehashi` CLI as a user runs it: a config home of their own, a
//! directory of certificate files, and real subprocesses.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::TestBroker;

/// What one CLI run did.
#[derive(Debug)]
pub struct Run {
    /// Exit status (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// The run, if it exited 0; else an error with its output.
    pub fn ok(self) -> Result<Run> {
        if self.code != 0 {
            bail!("exit {}: {}{}", self.code, self.stdout, self.stderr);
        }
        Ok(self)
    }
}

/// A user's environment: a config home (`KAKEHASHI_HOME`) and a directory
/// of certificate and data files.
pub struct CliUser {
    /// `KAKEHASHI_HOME`.
    pub home: TempDir,
    /// Certificates and the user's files.
    pub files: TempDir,
}

impl CliUser {
    /// Empty directories.
    pub fn new() -> Result<CliUser> {
        Ok(CliUser {
            home: tempfile::tempdir()?,
            files: tempfile::tempdir()?,
        })
    }

    /// The CLI with `args`, in this user's environment.
    pub fn command(&self, args: &[&str]) -> Result<tokio::process::Command> {
        let binary = crate::binaries::workspace_binary("kakehashi-client", "kakehashi")?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(args)
            .env("KAKEHASHI_HOME", self.home.path())
            .env_remove("KAKEHASHI_PROFILE")
            .env_remove("KAKEHASHI_USER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs the CLI (async, so that a broker in this process keeps serving).
    pub async fn run(&self, args: &[&str]) -> Result<Run> {
        self.run_command(self.command(args)?).await
    }

    /// Runs a command made by [`CliUser::command`] and adjusted (arguments
    /// that are not UTF-8, environment variables).
    pub async fn run_command(&self, mut cmd: tokio::process::Command) -> Result<Run> {
        let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .context("the CLI did not finish in 300 s")??;
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// A file in the user's files directory.
    pub fn path(&self, name: &str) -> String {
        self.files.path().join(name).display().to_string()
    }

    /// Writes a certificate for `org` and adds a profile named `org` for it.
    pub async fn add_profile(&self, broker: &TestBroker, org: &str) -> Result<()> {
        let cert = broker.pki.org_cert(org)?;
        kakehashi_certs::write_issued(self.files.path(), org, &cert, true)?;
        let url = format!("https://127.0.0.1:{}", broker.addr().port());
        let ca = broker.pki.path("ca.crt").display().to_string();
        self.run(&[
            "profile",
            "add",
            org,
            "--broker",
            &url,
            "--ca",
            &ca,
            "--cert",
            &self.path(&format!("{org}.crt")),
            "--key",
            &self.path(&format!("{org}.key")),
        ])
        .await?
        .ok()?;
        Ok(())
    }
}

/// `query` flags of a sensitive item (F-0121, public assistance): the
/// answer waits for an operator.
pub const SENSITIVE: [&str; 8] = [
    "--flow",
    "F-0121",
    "--procedure",
    "benefit-reduction",
    "--provider",
    "city-saitama",
    "--item",
    "welfare.public_assistance",
];

/// `query` flags of an item answered at once (F-0120, income).
pub const PLAIN: [&str; 8] = [
    "--flow",
    "F-0120",
    "--procedure",
    "premium-calculation",
    "--provider",
    "city-saitama",
    "--item",
    "local_tax.income",
];

/// A file's permission bits.
pub fn mode(path: &std::path::Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}
