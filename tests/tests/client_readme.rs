//! client/README.md's quick start, as a new user pastes it: the first block
//! starts a dev broker, the second runs every command against it. Only
//! `/tmp/kk`, the ports and `target/release` are replaced (by a temporary
//! directory, free ports and this build's binaries).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `sh` blocks of the README's "Quick start" section.
fn quick_start_blocks() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(repo_root().join("client/README.md"))?;
    let start = text
        .find("## Quick start")
        .context("client/README.md has no Quick start section")?;
    let section = &text[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut blocks = Vec::new();
    let mut rest = &section[..end];
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").context("unclosed block")?;
        blocks.push(body[..close].to_string());
        rest = &body[close + 3..];
    }
    Ok(blocks)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_client_quick_start_works_as_written() -> Result<()> {
    let blocks = quick_start_blocks()?;
    assert!(
        blocks.len() >= 2,
        "expected the broker block and the commands block"
    );
    let client = kakehashi_tests::binaries::workspace_binary("kakehashi-client", "kakehashi")?;
    let broker =
        kakehashi_tests::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")?;
    let bin_dir = client.parent().context("binary dir")?.to_path_buf();
    assert_eq!(Some(bin_dir.as_path()), broker.parent());

    let dir = tempfile::tempdir()?;
    let kk = dir.path().join("kk");
    let (exchange, console) = (kakehashi_tests::free_port()?, kakehashi_tests::free_port()?);
    let adapt = |block: &str| {
        block
            .replace("$PWD/target/release", &bin_dir.display().to_string())
            .replace("/tmp/kk", &kk.display().to_string())
            .replace("127.0.0.1:17443", &format!("127.0.0.1:{exchange}"))
            .replace("127.0.0.1:17444", &format!("127.0.0.1:{console}"))
    };

    // Block 1 without its build step: the binaries are this build's.
    let serve: String = adapt(&blocks[0])
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        // exec: the broker is the process this test stops.
        .map(|l| l.replace("kakehashi-broker dev", "exec kakehashi-broker dev"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(serve.contains("kakehashi-broker dev"), "{serve}");
    let _broker = Killed(
        Command::new("bash")
            .args([
                "-euo",
                "pipefail",
                "-c",
                &format!("exec 1>/dev/null\n{serve}"),
            ])
            .current_dir(repo_root())
            .env("KAKEHASHI_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()?,
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", exchange)).is_err()
        || !kk.join("profiles/config.toml").exists()
    {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the dev broker of the quick start did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Block 2 as pasted, and block 3 (a profile of one's own).
    for (i, block) in blocks[1..].iter().enumerate() {
        let script = adapt(block);
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(repo_root())
            .env_remove("KAKEHASHI_PROFILE")
            // One terminal: what block 2 exported holds for block 3.
            .env("PATH", &path)
            .env("KAKEHASHI_HOME", kk.join("profiles"))
            .stdin(Stdio::null())
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "quick start block {} failed ({}):\n{stdout}\n{stderr}",
            i + 2,
            out.status
        );
        if i == 0 {
            // whoami names the org; the single query shows its value; the
            // batch answered every person.
            assert!(stdout.contains("city-saitama"), "{stdout}");
            assert!(stdout.contains("local_tax.income"), "{stdout}");
            let work = kk.join("work");
            let persons = std::fs::read_to_string(work.join("persons.csv"))?;
            let results = std::fs::read_to_string(work.join("results.jsonl"))?;
            let provided = results
                .lines()
                .filter(|l| l.contains("\"status\":\"provided\""))
                .count();
            assert_eq!(provided, persons.lines().count() - 1, "{results}");
            assert!(provided > 0);
        }
    }

    // The profile dev wrote is not replaced silently.
    let out = Command::new(&client)
        .args(["profile", "add", "city-saitama", "--broker"])
        .arg(format!("https://127.0.0.1:{exchange}"))
        .arg("--ca")
        .arg(kk.join("pki/ca.crt"))
        .arg("--cert")
        .arg(kk.join("pki/city-kawagoe.crt"))
        .arg("--key")
        .arg(kk.join("pki/city-kawagoe.key"))
        .env("KAKEHASHI_HOME", kk.join("profiles"))
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already exists") && stderr.contains("--replace"),
        "{stderr}"
    );
    Ok(())
}
