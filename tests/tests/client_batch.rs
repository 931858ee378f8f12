//! What the CLI writes, and when it must not (client fixes): a huge
//! `--wait` waits instead of panicking. Real broker, real `kakehashi`
//! subprocesses.

use std::time::Duration;

use anyhow::{bail, Result};
use kakehashi_tests::cli::CliUser;
use kakehashi_tests::exchange::{exchange_broker, scenario};
use kakehashi_tests::Backend;

const SENSITIVE: [&str; 8] = [
    "--flow",
    "F-0121",
    "--procedure",
    "benefit-reduction",
    "--provider",
    "city-saitama",
    "--item",
    "welfare.public_assistance",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_wait_waits_instead_of_panicking() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 1).await?;
    let user = CliUser::new()?;
    user.add_profile(&broker, "union-saitama").await?;
    let mut args = vec![
        "--profile",
        "union-saitama",
        "query",
        "--person",
        s.union_codes[0].as_str(),
        "--wait",
        "18446744073709551615",
    ];
    args.extend(SENSITIVE);
    let mut child = user.command(&args)?.spawn()?;
    // Still waiting after a few seconds: it neither panicked nor gave up.
    let exited = tokio::time::timeout(Duration::from_secs(4), child.wait()).await;
    if let Ok(status) = exited {
        let out = child.wait_with_output().await?;
        bail!(
            "exited ({:?}) instead of waiting: {}",
            status?,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.start_kill()?;
    let out = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("waiting up to 18446744073709551615s"),
        "{stderr}"
    );
    Ok(())
}
