//! The `kakehashi` commands. Each module is one command group.

pub mod args;
mod batch;
pub mod fail;
mod files;
mod profile_cmd;
mod query_cmd;
mod table;

use std::io::Write;

use clap::CommandFactory;
use kakehashi_client::Client;

use args::{AuditCommand, Cli, Command, CopiesCommand, PersonsCommand};
use fail::{CliError, Exit};

/// Connects with the chosen profile.
async fn connect(chosen: Option<&str>) -> Result<Client, CliError> {
    let (_name, profile) = profile_cmd::resolve(chosen)?;
    Ok(Client::connect(&profile).await?)
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
        Command::Query(args) => {
            let client = connect(chosen).await?;
            match args.person.as_deref() {
                Some(person) => query_cmd::run_single(&client, &args, person).await,
                None => batch::run(client, &args).await,
            }
        }
        Command::Persons(PersonsCommand::Register { file, out, batch }) => {
            let client = connect(chosen).await?;
            files::register(&client, &file, out, &batch).await
        }
        Command::Copies(CopiesCommand::Deposit { file, batch }) => {
            let client = connect(chosen).await?;
            files::deposit(&client, &file, &batch).await
        }
        Command::PersonRecords(_args) => Err(CliError::internal(
            "person-records is not available in this build",
        )),
        Command::Audit(AuditCommand::Verify { file: _ }) => Err(CliError::internal(
            "audit verify is not available in this build (kakehashi_interfaces::audit is missing)",
        )),
    }
}
