//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const MAIN_AFTER_HELP: &str = "\
Examples:
  kakehashi profile add city-saitama --broker https://127.0.0.1:17443 \\
      --ca pki/ca.crt --cert pki/city-saitama.crt --key pki/city-saitama.key
  kakehashi whoami
  kakehashi flows
  kakehashi --profile union-saitama query --flow F-0120 --procedure premium-calculation \\
      --provider city-saitama --person <code> --item local_tax.income
  kakehashi --profile union-saitama query --batch persons.csv --out results.jsonl \\
      --flow F-0120 --procedure premium-calculation --provider city-saitama --item local_tax.income
  kakehashi --profile union-saitama query collect
  kakehashi --profile union-saitama persons register insured.csv
  kakehashi copies deposit copies.jsonl

Profiles live in $KAKEHASHI_HOME/config.toml (default ~/.config/kakehashi/config.toml);
--profile or KAKEHASHI_PROFILE choose one instead of the current profile.
";

/// Kakehashi client: exchange data with other public bodies through a Kakehashi broker.
#[derive(Debug, Parser)]
#[command(
    name = "kakehashi",
    version,
    after_help = format!("{MAIN_AFTER_HELP}\n{}", super::fail::EXIT_CODES_HELP),
)]
pub struct Cli {
    /// Profile to use instead of the current one.
    #[arg(long, global = true, env = "KAKEHASHI_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage profiles (broker URL, CA, certificate and key paths).
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Show the org the broker identifies from this profile's certificate.
    Whoami(JsonFlag),
    /// List the flows this org may use as requester or provider.
    Flows(JsonFlag),
    /// Ask a provider for data items about one person, or a CSV of persons.
    Query(Box<QueryArgs>),
    /// Register insured persons (union) or link persons to this org's codes.
    #[command(subcommand)]
    Persons(PersonsCommand),
    /// Deposit copies (副本) of this org's data items.
    #[command(subcommand)]
    Copies(CopiesCommand),
    /// List who received which data about one insured person (union only; R18).
    #[command(
        name = "person-records",
        after_help = "Example:\n  kakehashi --profile union-saitama person-records <person-code>"
    )]
    PersonRecords(PersonRecordsArgs),
    /// Offline checks of files exported by the broker.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  kakehashi completions bash > ~/.local/share/bash-completion/completions/kakehashi"
    )]
    Completions {
        /// Shell to generate for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Add a profile (`--replace` to replace one); paths are stored canonicalized, keys are never copied.
    #[command(
        after_help = "Example:\n  kakehashi profile add city-saitama --broker https://127.0.0.1:17443 \\\n      --ca /tmp/kk/pki/ca.crt --cert /tmp/kk/pki/city-saitama.crt --key /tmp/kk/pki/city-saitama.key"
    )]
    Add {
        /// Profile name.
        name: String,
        /// Broker URL, https://host:port.
        #[arg(long, value_name = "URL")]
        broker: String,
        /// CA certificate(s) that signed the broker's server certificate (PEM).
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// This org's client certificate (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// This org's private key (PEM).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// TLS server name to verify instead of the URL's host.
        #[arg(long, value_name = "NAME")]
        server_name: Option<String>,
        /// Also make it the current profile.
        #[arg(long = "use")]
        make_current: bool,
        /// Replace a profile of the same name (without it, an existing name is refused).
        #[arg(long)]
        replace: bool,
    },
    /// List profiles; the current one is marked with *.
    List(JsonFlag),
    /// Make a profile the current one.
    Use {
        /// Profile name.
        name: String,
    },
    /// Remove a profile (its files are left alone).
    Remove {
        /// Profile name.
        name: String,
    },
}

const QUERY_AFTER_HELP: &str = "\
Examples:
  One person, as a table (or --json):
    kakehashi query --flow F-0120 --procedure premium-calculation --provider city-saitama \\
        --person <code> --item local_tax.income --item local_tax.taxable_status --wait 30
  Many persons, resumable (rerun the same command after an interruption):
    kakehashi query --batch persons.csv --out results.jsonl \\
        --flow F-0120 --procedure premium-calculation --provider city-saitama --item local_tax.income
  Answers that were pending approval, after the provider's operator decided:
    kakehashi query collect
    kakehashi query get <query-id> --wait 30
    kakehashi query collect --batch results.jsonl

The batch CSV has a header; `person` is required, `flow`, `procedure`,
`provider` and `items` (separated by ';' or spaces) override the flags per row.
Each finished person is appended to --out as one JSON line; persons already
there are skipped. Refusals due to overload or connection loss are not
written, so a rerun tries them again. A refusal of this org as a whole
(org_suspended, unknown_org, ...) stops the batch (exit 7) without writing
the lines not done.

A pending answer's reply key is kept, encrypted, in the profile's
directory ($KAKEHASHI_HOME/pending/<profile>/) until the answer is opened,
rejected or expired.";

#[derive(Debug, Args)]
#[command(
    after_help = QUERY_AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct QueryArgs {
    #[command(subcommand)]
    pub action: Option<QueryAction>,
    /// Flow id (row of the flow list).
    #[arg(long, value_name = "FLOW")]
    pub flow: Option<String>,
    /// Procedure code.
    #[arg(long, value_name = "CODE")]
    pub procedure: Option<String>,
    /// Provider org id.
    #[arg(long, value_name = "ORG")]
    pub provider: Option<String>,
    /// This org's code of the person.
    #[arg(
        long,
        value_name = "CODE",
        conflicts_with = "batch",
        required_unless_present = "batch"
    )]
    pub person: Option<String>,
    /// Data item to ask for (repeatable).
    #[arg(long = "item", value_name = "ITEM")]
    pub items: Vec<String>,
    /// Print JSON instead of a table (single person).
    #[arg(long, conflicts_with = "batch")]
    pub json: bool,
    /// Wait up to SECS for a pending (approval-required) answer.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait: u64,
    /// CSV of persons to query.
    #[arg(long, value_name = "FILE", requires = "out")]
    pub batch: Option<PathBuf>,
    /// Results file (JSON Lines, appended; resumable).
    #[arg(long, value_name = "FILE", requires = "batch")]
    pub out: Option<PathBuf>,
    /// Queries in flight at once.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

/// What to do with queries that were pending approval.
#[derive(Debug, Subcommand)]
pub enum QueryAction {
    /// Open the answers of this profile's pending queries that were decided.
    #[command(after_help = "\
Examples:
  kakehashi --profile union-saitama query collect
  kakehashi --profile union-saitama query collect --batch results.jsonl

Asks the broker once about every query of this profile whose answer was
pending approval, and prints each decided one: approved answers exactly as
`kakehashi query` prints them, rejections with the operator's reason,
expired queries as expired. The reply keys of decided queries are wiped.
With --batch, completes the pending lines of a results file written by
`kakehashi query --batch` instead (the file is rewritten atomically; other
lines are left unchanged); a file that a running batch holds is refused.
Exit codes: 0 every decided query was provided (or none was pending),
1 some are still pending, were rejected or expired.")]
    Collect(CollectArgs),
    /// Open the answer of one pending query of this profile.
    #[command(after_help = "\
Example:
  kakehashi --profile union-saitama query get q_0123456789abcdefghijklmnop --wait 30

Prints the answer exactly as `kakehashi query` does once the provider's
operator approved it; a rejection with its reason; or that it expired.
Exit codes: 0 provided, 1 still pending, rejected or expired.")]
    Get(GetArgs),
}

#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Complete the pending lines of this batch results file (JSON Lines).
    #[arg(long, value_name = "FILE")]
    pub batch: Option<PathBuf>,
    /// Print JSON instead of tables (a list, one object per query).
    #[arg(long, conflicts_with = "batch")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The query id the pending answer came with.
    #[arg(value_name = "QUERY_ID")]
    pub query_id: String,
    /// Wait up to SECS for the decision while the query is pending.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BatchFileArgs {
    /// Lines per request.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub batch_size: u32,
    /// Where to write the lines that were not applied (CSV: line, reason, message).
    /// Default: INPUT.confirmation.csv, or OUT.confirmation.csv with --out
    #[arg(long, value_name = "FILE")]
    pub confirmation_list: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PersonsCommand {
    /// Register persons from a CSV (name, sex, birth_date, address, individual_number).
    #[command(after_help = "\
Example:
  kakehashi --profile union-saitama persons register insured.csv --out codes.csv

The CSV needs a header with the columns name, sex, birth_date (YYYY-MM-DD),
address and individual_number (12 digits); the union may add
eligibility_lost_on (YYYY-MM-DD, empty while insured). Lines that are not applied go to
the confirmation list with their line number; Individual Numbers are never
printed. The assigned person codes are written to --out (line, person_code,
branch_number, created).")]
    Register {
        /// The CSV file.
        file: PathBuf,
        /// Where to write the assigned person codes. Default: <input>.codes.csv
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        batch: BatchFileArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CopiesCommand {
    /// Deposit copies from a JSON Lines file (one deposit per line).
    #[command(after_help = "\
Example:
  kakehashi --profile city-saitama copies deposit copies.jsonl

Each line is one deposit: {\"person\": \"<this org's code>\", \"items\": {...}}.
Lines that are not applied go to the confirmation list; good lines apply.")]
    Deposit {
        /// The JSON Lines file.
        file: PathBuf,
        #[command(flatten)]
        batch: BatchFileArgs,
    },
}

#[derive(Debug, Args)]
pub struct PersonRecordsArgs {
    /// The union's code of the person.
    pub person: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the integrity of a file written by `kakehashi-broker records export`, offline.
    #[command(after_help = "\
Examples:
  kakehashi --profile union-saitama audit verify records-2025-04.csv
  kakehashi audit verify records-2025-04.csv --trusted-key <64 hex digits from GET /v1/record-keys>

Checks the hash chain and signed checkpoints in FILE.bundle.jsonl against the
data file. The export is evidence only when its checkpoints are signed by a
key you trust: one pinned in the profile (`kakehashi audit keys --pin`), or
given with --trusted-key (or --trusted-key-id). Anyone can re-chain altered
records and sign them with a key of their own, so a bundle's own key proves
nothing.
With --tsa-cert the checkpoints' RFC 3161 time-stamp tokens are verified
against that TSA's certificate and their TSA times shown.
The broker seals each export (the bundle's last line signs the bundle): an
export without a seal line exits 6, since records could have been withheld
from it or its filter changed; export it again from the broker.
Exit codes: 0 verified against a trusted key, 1 verification failed (altered),
2 files unreadable, 6 self-consistent but not signed by a trusted key, or
not sealed.")]
    Verify(VerifyArgs),
    /// Show the broker's checkpoint keys and which the profile pins; pin them.
    Keys(KeysArgs),
    /// Hold the broker's current provision records against the checkpoints this profile kept.
    #[command(after_help = "\
Example:
  kakehashi --profile city-saitama audit witness

Every answer carries the broker's latest signed checkpoint; the profile keeps
the latest and the first of each day ($KAKEHASHI_HOME/checkpoints/NAME.json).
This asks the broker for the record hashes from the oldest kept checkpoint not
yet witnessed up to its current checkpoint (hashes only, no record contents),
and checks that they reproduce every kept head and the current signed head.
A history rewritten before a checkpoint this profile has seen fails, even
when the broker signed the rewritten log. Needs pinned keys (`audit keys --pin`).
Exit codes: 0 consistent, 1 the log contradicts a kept checkpoint,
2 no pinned keys or no kept checkpoint, 3/4 the broker could not be asked.")]
    Witness(JsonFlag),
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kakehashi --profile city-saitama audit keys
  kakehashi --profile city-saitama audit keys --pin
  kakehashi --profile city-saitama audit keys --pin-key <64 hex digits obtained out of band>

Without options, lists the keys the broker publishes (GET /v1/record-keys)
and marks those the profile pins. --pin pins the published keys (compare
their ids with the broker operator's, e.g. the console's keys page, before
you rely on them); --pin-key pins a key you obtained yourself, without
asking the broker. A key is never pinned silently.")]
pub struct KeysArgs {
    /// Pin the keys the broker publishes (all, or those named with --key-id).
    #[arg(long)]
    pub pin: bool,
    /// With --pin: only the published key with this id (repeatable).
    #[arg(long = "key-id", value_name = "ID", requires = "pin")]
    pub key_ids: Vec<String>,
    /// Pin this public key (64 hex digits), without asking the broker (repeatable).
    #[arg(long = "pin-key", value_name = "HEX", conflicts_with = "pin")]
    pub pin_keys: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `audit verify` options.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The exported data file (CSV or JSON Lines).
    pub file: PathBuf,
    /// The verification bundle. Default: FILE.bundle.jsonl
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// A sealer public key to trust, 64 hex digits (repeatable), besides the profile's pinned keys.
    #[arg(long = "trusted-key", value_name = "HEX")]
    pub trusted_keys: Vec<String>,
    /// A sealer key id to trust (repeatable; a full key is the stronger pin).
    #[arg(long = "trusted-key-id", value_name = "ID")]
    pub trusted_key_ids: Vec<String>,
    /// Verify the checkpoints' RFC 3161 time-stamp tokens against this TSA
    /// certificate (PEM); a token that fails is a verification failure (exit 1),
    /// a checkpoint without one is reported as "no timestamp".
    #[arg(long, value_name = "FILE")]
    pub tsa_cert: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}
