//! The workspace's binaries, for tests that run them as real subprocesses.
//!
//! Cargo gives a test crate `CARGO_BIN_EXE_*` only for its own package, and
//! `cargo test --workspace` builds another package's binaries only in test
//! mode, so on a clean checkout `target/<profile>/kakehashi-broker` may not
//! exist yet. [`workspace_binary`] builds it with the same cargo and profile
//! (a no-op when up to date), once per test process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// Path of binary `bin` of workspace package `package`, built for the profile
/// this test runs under.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf> {
    // Holding the lock across the build serialises concurrent tests of one
    // process; a second test waits rather than racing cargo's own lock.
    let mut built = BUILT
        .lock()
        .map_err(|_| anyhow::anyhow!("binary build lock poisoned"))?;
    let map = built.get_or_insert_with(HashMap::new);
    if let Some(path) = map.get(bin) {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("test executable path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not in target/<profile>/deps")?
        .to_path_buf();
    let path = profile_dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo build for {bin}"))?;
    if !status.success() {
        bail!("cargo build -p {package} --bin {bin} failed ({status})");
    }
    if !path.exists() {
        bail!("no {bin} binary at {} after building it", path.display());
    }
    map.insert(bin.to_string(), path.clone());
    Ok(path)
}
