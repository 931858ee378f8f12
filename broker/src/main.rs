//! `kakehashi-broker`: serve the exchange, run a dev environment, manage orgs.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kakehashi_broker::oplog::{HostLog, OpAction};
use kakehashi_broker::store::{self, NewOrg};
use kakehashi_broker::{dev, Config, RunningBroker};
use kakehashi_interfaces::{OrgId, OrgKind, OrgStatus};

#[derive(Parser)]
#[command(
    name = "kakehashi-broker",
    version,
    about = "Kakehashi intermediate server (mutual-TLS data exchange broker)"
)]
#[command(
    after_help = "Examples:\n  kakehashi-broker dev\n  kakehashi-broker dev --nodes 3 --postgres-url postgres://localhost/kakehashi\n  kakehashi-broker serve --config /etc/kakehashi/broker.toml\n  kakehashi-broker orgs --config broker.toml add city-kawaguchi --kind municipality --name 川口市\n  kakehashi-broker orgs --config broker.toml suspend city-kawaguchi"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the exchange listener until SIGTERM or Ctrl-C.
    Serve {
        /// Path to broker.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create ./kakehashi-dev (CA, certificates, config, database) if missing and serve it.
    Dev {
        /// Directory of the dev environment.
        #[arg(long, default_value = "kakehashi-dev")]
        dir: PathBuf,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: String,
        /// Console listen address (people: operators, auditors, administrators).
        #[arg(long, default_value = "127.0.0.1:7444")]
        console_listen: String,
        /// Prepare the directory and exit without serving.
        #[arg(long)]
        no_serve: bool,
        /// Run this many broker processes on one PostgreSQL database
        /// (listeners on consecutive ports); needs --postgres-url.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        nodes: u16,
        /// Keep state in this PostgreSQL database instead of the directory's
        /// SQLite file, e.g. postgres://user@localhost/kakehashi.
        #[arg(long)]
        postgres_url: Option<String>,
    },
    /// Run database migrations and exit.
    Migrate {
        /// Path to broker.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The authorised-flow list: propose, approve (a second administrator), list, diff, show.
    Flows {
        /// Path to broker.toml.
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        action: kakehashi_broker::cli::flows::FlowsCommand,
    },
    /// Manage registered organisations.
    Orgs {
        /// Path to broker.toml.
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        action: OrgsAction,
    },
    /// Manage people's accounts: add, list, reset, disable, enable, grant, revoke.
    Users {
        /// Path to broker.toml.
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        action: kakehashi_broker::cli::people::UsersCommand,
    },
    /// Operation log (操作ログ, R17): verify its chain and checkpoints, show entries.
    Oplog {
        /// Path to broker.toml.
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        action: kakehashi_broker::cli::oplog::OplogCommand,
    },
    /// Provision records: verify the chain, export for auditors, verify an export.
    Records {
        /// Path to broker.toml (not needed by verify-export).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: kakehashi_broker::cli::records::RecordsCommand,
    },
    /// The broker's keys: status, and rotation without downtime (docs/keys.md).
    Keys {
        /// Path to broker.toml.
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        action: kakehashi_broker::cli::keys::KeysCommand,
    },
    /// Delete provision records older than their retention period (leaving a
    /// signed purge record), then personal data past their own periods:
    /// identity-confirmation data after a year, persons and copies five years
    /// after loss of eligibility (leaving an erasure record).
    Purge {
        /// Path to broker.toml.
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        args: kakehashi_broker::cli::records::PurgeArgs,
    },
}

#[derive(Subcommand)]
enum OrgsAction {
    /// Register an org (active).
    Add {
        /// Org id, as in its certificate's SAN URI urn:kakehashi:org:<id>.
        id: String,
        /// union, municipality or agency.
        #[arg(long)]
        kind: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Pin the org to this certificate SHA-256 fingerprint (hex).
        #[arg(long)]
        pin: Option<String>,
    },
    /// List orgs.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Suspend an org: its connections are refused from now on.
    Suspend {
        /// Org id.
        id: String,
    },
    /// Re-activate a suspended org.
    Activate {
        /// Org id.
        id: String,
    },
    /// Pin an org to a certificate fingerprint, or clear the pin.
    Pin {
        /// Org id.
        id: String,
        /// SHA-256 fingerprint (hex); omit with --clear.
        fingerprint: Option<String>,
        /// Remove the pin.
        #[arg(long)]
        clear: bool,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KAKEHASHI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// mimalloc instead of glibc's allocator: the query path allocates and frees
/// many small buffers across threads, where glibc's arenas spent ~8 % of the
/// broker's CPU (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let store = store::open(&config.storage).await?;
            let broker = RunningBroker::start(config, store).await?;
            broker.run_until_signal().await?;
        }
        Command::Dev {
            dir,
            listen,
            console_listen,
            no_serve,
            nodes,
            postgres_url,
        } => {
            if nodes > 1 {
                let Some(url) = postgres_url else {
                    anyhow::bail!(
                        "--nodes {nodes} には --postgres-url が必要です（ノードは一つの PostgreSQL データベースを共有します） / --nodes {nodes} needs --postgres-url: the nodes share one PostgreSQL database"
                    );
                };
                dev_cluster(&dir, &listen, &console_listen, nodes, &url, no_serve).await?;
                return Ok(ExitCode::SUCCESS);
            }
            let env =
                dev::prepare_on(&dir, &listen, &console_listen, postgres_url.as_deref()).await?;
            if env.created {
                println!("Created dev environment in {}", env.dir.display());
            }
            // Printed before serving (and with --no-serve), so the
            // temporary passwords are never lost.
            println!("{}", dev::console_notice(&env, &console_listen));
            if no_serve {
                return Ok(ExitCode::SUCCESS);
            }
            let config = Config::load(&env.config_path)?;
            let store = store::open(&config.storage).await?;
            let broker = RunningBroker::start(config, store).await?;
            println!(
                "{}",
                dev::try_commands(&env, &broker.local_addr().to_string())
            );
            broker.run_until_signal().await?;
        }
        Command::Migrate { config } => {
            let config = Config::load(&config)?;
            store::open(&config.storage).await?;
            println!("migrations applied");
        }
        Command::Flows { config, action } => {
            kakehashi_broker::cli::flows::run(&config, action).await?;
        }
        Command::Orgs { config, action } => {
            let config = Config::load(&config)?;
            let store = store::open(&config.storage).await?;
            orgs(&*store, &config.keys.dir, action).await?;
        }
        Command::Users { config, action } => {
            kakehashi_broker::cli::people::run(&config, action).await?;
        }
        Command::Oplog { config, action } => {
            kakehashi_broker::cli::oplog::run(&config, action).await?;
        }
        Command::Records { config, action } => {
            let done = kakehashi_broker::cli::records::run(config.as_deref(), action).await?;
            if done == kakehashi_broker::cli::records::Done::NotTrusted {
                return Ok(ExitCode::from(
                    u8::try_from(kakehashi_broker::cli::records::EXIT_NOT_TRUSTED).unwrap_or(1),
                ));
            }
        }
        Command::Keys { config, action } => {
            kakehashi_broker::cli::keys::run(&config, action).await?;
        }
        Command::Purge { config, args } => {
            kakehashi_broker::cli::records::purge(&config, args).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dev --nodes N`: this process serves the first node; the others are
/// `serve` processes of this binary, started once the first is up (it
/// creates the key directory they share), and stopped with it.
async fn dev_cluster(
    dir: &std::path::Path,
    listen: &str,
    console: &str,
    nodes: u16,
    url: &str,
    no_serve: bool,
) -> Result<()> {
    let addresses = dev::node_addresses(listen, console, nodes)?;
    let (first_listen, first_console) = addresses[0];
    let env = dev::prepare_on(
        dir,
        &first_listen.to_string(),
        &first_console.to_string(),
        Some(url),
    )
    .await?;
    if env.created {
        println!("Created dev environment in {}", env.dir.display());
    }
    println!("{}", dev::console_notice(&env, &first_console.to_string()));
    let configs = dev::write_node_configs(&env, url, &addresses)?;
    if no_serve {
        println!("{}", dev::cluster_notice(&configs));
        return Ok(());
    }
    let config = Config::load(&configs[0].config_path)?;
    let store = store::open(&config.storage).await?;
    let broker = RunningBroker::start(config, store).await?;
    let exe = std::env::current_exe().context("locate this binary")?;
    let mut children = Vec::new();
    for node in &configs[1..] {
        let child = tokio::process::Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(&node.config_path)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start the node of {}", node.config_path.display()))?;
        children.push(child);
    }
    println!("{}", dev::cluster_notice(&configs));
    println!("{}", dev::try_commands(&env, &first_listen.to_string()));
    kakehashi_broker::server::wait_for_signal().await;
    tracing::info!("shutdown requested; stopping every node");
    for child in &children {
        if let Some(pid) = child.id() {
            // SIGTERM, so each node finishes its in-flight requests.
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
    }
    broker.shutdown().await;
    for mut child in children {
        let _ = child.wait().await;
    }
    Ok(())
}

/// Org changes are logged in the operation log as `host:<login name>` (R17).
async fn orgs(store: &dyn store::Store, keys: &std::path::Path, action: OrgsAction) -> Result<()> {
    match action {
        OrgsAction::Add {
            id,
            kind,
            name,
            pin,
        } => {
            let id = OrgId::new(id)?;
            let kind = kind.parse::<OrgKind>()?;
            let log = HostLog::open(store.pools(), keys).await?;
            let added = store
                .add_org(&NewOrg {
                    id: id.clone(),
                    kind,
                    name,
                    cert_fingerprint: pin.map(|p| p.to_ascii_lowercase()),
                })
                .await;
            let detail = Some(format!("kind={}", kind.as_str()));
            let org = log
                .org_outcome(OpAction::OrgAdded, &id, detail, added)
                .await?;
            println!(
                "registered {} ({}, {})",
                org.id,
                org.kind.as_str(),
                org.status.as_str()
            );
        }
        OrgsAction::List { json } => {
            let list = store.list_orgs().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<24} {:<13} {:<10} {:<8} NAME",
                    "ID", "KIND", "STATUS", "PINNED"
                );
                for o in list {
                    println!(
                        "{:<24} {:<13} {:<10} {:<8} {}",
                        o.id.as_str(),
                        o.kind.as_str(),
                        o.status.as_str(),
                        if o.cert_fingerprint.is_some() {
                            "yes"
                        } else {
                            "no"
                        },
                        o.name
                    );
                }
            }
        }
        OrgsAction::Suspend { id } => {
            let id = OrgId::new(id)?;
            let log = HostLog::open(store.pools(), keys).await?;
            let result = store.set_org_status(&id, OrgStatus::Suspended).await;
            let org = log
                .org_outcome(OpAction::OrgSuspended, &id, None, result)
                .await?;
            println!("suspended {}", org.id);
        }
        OrgsAction::Activate { id } => {
            let id = OrgId::new(id)?;
            let log = HostLog::open(store.pools(), keys).await?;
            let result = store.set_org_status(&id, OrgStatus::Active).await;
            let org = log
                .org_outcome(OpAction::OrgActivated, &id, None, result)
                .await?;
            println!("activated {}", org.id);
        }
        OrgsAction::Pin {
            id,
            fingerprint,
            clear,
        } => {
            let id = OrgId::new(id)?;
            let fp = match (fingerprint, clear) {
                (Some(fp), false) => Some(fp.to_ascii_lowercase().replace(':', "")),
                (None, true) => None,
                _ => anyhow::bail!("give a fingerprint or --clear"),
            };
            let log = HostLog::open(store.pools(), keys).await?;
            let result = store.set_org_pin(&id, fp.as_deref()).await;
            let detail = Some(match &fp {
                Some(fp) => format!("pin={fp}"),
                None => "pin cleared".into(),
            });
            let org = log
                .org_outcome(OpAction::OrgPinned, &id, detail, result)
                .await
                .context("pin")?;
            println!(
                "{} pin {}",
                org.id,
                if org.cert_fingerprint.is_some() {
                    "set"
                } else {
                    "cleared"
                }
            );
        }
    }
    Ok(())
}
