//! The `kakehashi` commands. Each module is one command group.

pub mod args;
mod batch;
mod collect;
pub mod fail;
mod files;
mod personal_files;
mod profile_cmd;
mod query_cmd;
mod records_cmd;
mod table;
mod witness_cmd;

use std::io::Write;

use clap::CommandFactory;
use kakehashi_client::interfaces::PersonCode;
use kakehashi_client::{Client, PendingStore};

use args::{AuditCommand, Cli, Command, CopiesCommand, PersonsCommand, QueryAction};
use fail::{CliError, Exit};

/// Connects with the chosen profile; the checkpoints its answers carry are
/// kept in the profile's checkpoint book.
async fn connect(chosen: Option<&str>) -> Result<Client, CliError> {
    let (name, profile) = profile_cmd::resolve(chosen)?;
    witnessing(Client::connect(&profile).await?, &name, &profile)
}

/// The profile's checkpoint book (`$KAKEHASHI_HOME/checkpoints/NAME.json`).
fn checkpoint_book(
    name: &str,
    profile: &kakehashi_client::Profile,
) -> Result<kakehashi_client::CheckpointBook, CliError> {
    Ok(kakehashi_client::CheckpointBook::open(
        &config_dir()?,
        name,
        profile.trusted_record_keys()?,
    ))
}

/// `client`, keeping the checkpoints of its answers in the profile's book.
fn witnessing(
    client: Client,
    name: &str,
    profile: &kakehashi_client::Profile,
) -> Result<Client, CliError> {
    client.keep_checkpoints(std::sync::Arc::new(checkpoint_book(name, profile)?));
    Ok(client)
}

/// The directory of the profiles file; the profiles' reply-key stores live under it.
fn config_dir() -> Result<std::path::PathBuf, CliError> {
    let path = profile_cmd::config_path()?;
    Ok(path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from(".")))
}

/// The reply-key store of the chosen profile, created on first use; opened
/// before any query is sent, so that a store that cannot be used stops the
/// run before a pending answer could be lost.
fn pending_store(chosen: Option<&str>) -> Result<PendingStore, CliError> {
    let (name, _) = profile_cmd::resolve(chosen)?;
    Ok(PendingStore::open(&config_dir()?, &name)?)
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::internal(format!("cannot encode JSON output: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<Exit, CliError> {
    let chosen = cli.profile.as_deref();
    match cli.command {
        Command::Profile(cmd) => profile_cmd::run(cmd, chosen),
        Command::Whoami(flags) => {
            let client = connect(chosen).await?;
            let me = client.whoami().await?;
            if flags.json {
                print_json(&me)?;
            } else {
                println!("org:         {}", me.org_id);
                println!("kind:        {}", me.kind.as_str());
                println!("name:        {}", me.name);
                println!("certificate: sha256 {}", me.certificate_fingerprint);
                println!("broker:      {}", client.broker());
            }
            Ok(Exit::Ok)
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut out = std::io::stdout();
            clap_complete::generate(shell, &mut cmd, "kakehashi", &mut out);
            let _ = out.flush();
            Ok(Exit::Ok)
        }
        Command::Flows(flags) => {
            let client = connect(chosen).await?;
            let view = client.flows().await?;
            if flags.json {
                print_json(&view)?;
            } else {
                query_cmd::print_flows(&view);
            }
            Ok(Exit::Ok)
        }
        // Inputs are checked before connecting, so that their errors need no broker.
        Command::Query(args) => match (&args.action, args.person.as_deref()) {
            (Some(QueryAction::Collect(collect_args)), _) => {
                collect::collect(chosen, collect_args).await
            }
            (Some(QueryAction::Get(get_args)), _) => collect::get(chosen, get_args).await,
            (None, Some(person)) => {
                let query = query_cmd::query_from_flags(&args, person)?;
                let store = pending_store(chosen)?;
                let client = connect(chosen).await?;
                query_cmd::run_single(&client, &store, &args, query).await
            }
            (None, None) => {
                let prepared = batch::prepare(&args)?;
                if prepared.is_done() {
                    eprintln!("nothing to do: every query is already in the results file");
                    return Ok(Exit::Ok);
                }
                let store = pending_store(chosen)?;
                let client = connect(chosen).await?;
                batch::execute(client, store, prepared, &args).await
            }
        },
        Command::Persons(PersonsCommand::Register { file, out, batch }) => {
            let parsed = files::read_persons(&file)?;
            let client = connect(chosen).await?;
            files::register(&client, &file, parsed, out, &batch).await
        }
        Command::Copies(CopiesCommand::Deposit { file, batch }) => {
            let parsed = files::read_copies(&file)?;
            let client = connect(chosen).await?;
            files::deposit(&client, &file, parsed, &batch).await
        }
        Command::PersonRecords(args) => {
            let person = PersonCode::new(args.person.as_str()).map_err(|e| {
                CliError::usage(e.to_string()).hint("give the union's code of the person")
            })?;
            let client = connect(chosen).await?;
            let records = client.person_records(&person).await?;
            if args.json {
                print_json(&records)?;
            } else {
                records_cmd::print_person_records(&records);
            }
            Ok(Exit::Ok)
        }
        Command::Audit(AuditCommand::Verify(args)) => records_cmd::verify(chosen, &args),
        Command::Audit(AuditCommand::Keys(args)) => witness_cmd::keys(chosen, args).await,
        Command::Audit(AuditCommand::Witness(flags)) => {
            witness_cmd::witness(chosen, flags.json).await
        }
    }
}
