#![forbid(unsafe_code)]
//! `kakehashi-certs`: the Kakehashi PKI command-line tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use kakehashi_certs::{
    inspect_der, inspect_pem, revoke, write_crl, write_issued, Ca, CertError, CertInfo,
    OffsetDateTime, OrgCertOptions, Validity,
};
use time::format_description::well_known::Rfc3339;

const AFTER_HELP: &str = "\
Examples:
  # A development CA
  kakehashi-certs ca init --dir pki/ca

  # A broker server certificate for local testing
  kakehashi-certs server --ca pki/ca --name localhost --name 127.0.0.1 --out pki/broker

  # A client certificate for an organisation
  kakehashi-certs org --ca pki/ca --org-id city-saitama --out pki/orgs

  # Revoke it again (by serial or by certificate file)
  kakehashi-certs revoke --ca pki/ca --cert pki/orgs/city-saitama.crt

  # Look at a certificate
  kakehashi-certs inspect pki/orgs/city-saitama.crt

Private keys are written with mode 0600 and never printed. Existing files are
never replaced unless --force is given.";

/// Kakehashi PKI: a development CA, server and org certificates, revocation.
#[derive(Parser, Debug)]
#[command(name = "kakehashi-certs", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage the certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue a server certificate (EKU serverAuth).
    #[command(after_help = "\
Example:
  kakehashi-certs server --ca pki/ca --name localhost --name 127.0.0.1 --out pki/broker
  -> pki/broker/server.crt, pki/broker/server.key")]
    Server(ServerArgs),
    /// Issue an org client certificate (SAN URI urn:kakehashi:org:<id>, EKU clientAuth).
    #[command(after_help = "\
Examples:
  kakehashi-certs org --ca pki/ca --org-id city-saitama --out pki/orgs
  -> pki/orgs/city-saitama.crt, pki/orgs/city-saitama.key

  # An already expired certificate, for tests
  kakehashi-certs org --ca pki/ca --org-id city-saitama --out tmp \\
      --not-before 2024-01-01T00:00:00Z --not-after 2024-02-01T00:00:00Z")]
    Org(OrgArgs),
    /// Revoke a certificate and re-issue the CRL (CA_DIR/ca.crl).
    #[command(after_help = "\
Examples:
  kakehashi-certs revoke --ca pki/ca --serial 5f3a...c2
  kakehashi-certs revoke --ca pki/ca --cert pki/orgs/city-saitama.crt")]
    Revoke(RevokeArgs),
    /// Re-issue the CRL (CA_DIR/ca.crl) from CA_DIR/revoked.json, e.g. before it expires.
    #[command(after_help = "\
Example:
  kakehashi-certs crl --ca pki/ca

CRLs are valid for 7 days; re-issue them regularly (e.g. from cron).")]
    Crl(CrlArgs),
    /// Show a certificate: org id, subject, issuer, SANs, validity, serial, fingerprint, EKUs.
    #[command(after_help = "\
Examples:
  kakehashi-certs inspect pki/orgs/city-saitama.crt
  kakehashi-certs inspect --json pki/broker/server.crt")]
    Inspect(InspectArgs),
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a CA: DIR/ca.crt, DIR/ca.key (0600) and an empty DIR/ca.crl.
    #[command(after_help = "\
Example:
  kakehashi-certs ca init --dir pki/ca --cn \"Kakehashi Dev CA\"")]
    Init {
        /// Directory for the CA files (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Common name of the CA certificate.
        #[arg(long, value_name = "NAME", default_value = "Kakehashi Dev CA")]
        cn: String,
        /// Replace an existing CA (its revocation list is reset).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// CA directory (holding ca.crt and ca.key).
    #[arg(long = "ca", value_name = "DIR")]
    ca_dir: PathBuf,
    /// DNS name or IP address; repeat for several. The first is also the CN.
    #[arg(long = "name", value_name = "NAME", required = true)]
    names: Vec<String>,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// File name stem: writes <STEM>.crt and <STEM>.key.
    #[arg(long, value_name = "STEM", default_value = "server")]
    stem: String,
    /// Validity in days.
    #[arg(long, value_name = "N", default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=36500))]
    days: i64,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct OrgArgs {
    /// CA directory (holding ca.crt and ca.key).
    #[arg(long = "ca", value_name = "DIR")]
    ca_dir: PathBuf,
    /// Org id: 3-64 characters of a-z, 0-9 and '-', starting with a letter.
    #[arg(long, value_name = "ID")]
    org_id: String,
    /// Output directory: writes <ID>.crt and <ID>.key.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Validity in days from now.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=36500),
          conflicts_with_all = ["not_before", "not_after"])]
    days: Option<i64>,
    /// Explicit start of validity (RFC 3339, e.g. 2024-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339, requires = "not_after")]
    not_before: Option<OffsetDateTime>,
    /// Explicit end of validity (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339, requires = "not_before")]
    not_after: Option<OffsetDateTime>,
    /// Leave out the clientAuth EKU (serverAuth only); the broker must reject such a
    /// certificate. For tests.
    #[arg(long)]
    no_client_auth: bool,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct RevokeArgs {
    /// CA directory (holding ca.crt and ca.key).
    #[arg(long = "ca", value_name = "DIR")]
    ca_dir: PathBuf,
    /// Serial number in hex (colons allowed), as printed by `org` or `inspect`.
    #[arg(
        long,
        value_name = "HEX",
        required_unless_present = "cert",
        conflicts_with = "cert"
    )]
    serial: Option<String>,
    /// Take the serial from this certificate file (PEM or DER).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CrlArgs {
    /// CA directory (holding ca.crt, ca.key and revoked.json).
    #[arg(long = "ca", value_name = "DIR")]
    ca_dir: PathBuf,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Certificate file, PEM or DER.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time like 2024-01-01T00:00:00Z ({e})"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let (message, code) = describe(&err);
            eprintln!("kakehashi-certs: error: {message}");
            ExitCode::from(code)
        }
    }
}

/// One line saying what went wrong and what to do, plus the exit code:
/// 2 for bad input or a refused overwrite, 1 for everything else.
fn describe(err: &anyhow::Error) -> (String, u8) {
    let cert_err = err.chain().find_map(|e| e.downcast_ref::<CertError>());
    match cert_err {
        Some(CertError::Exists { path }) => (
            format!("{} exists; pass --force to replace it", path.display()),
            2,
        ),
        Some(CertError::NoCa { dir, .. }) => (
            format!(
                "{err:#}; create one with `kakehashi-certs ca init --dir {}` or pass the right --ca",
                dir.display()
            ),
            1,
        ),
        Some(
            CertError::InvalidOrgId { .. }
            | CertError::InvalidName(..)
            | CertError::InvalidSerial(_)
            | CertError::InvalidValidity(_),
        ) => (format!("{err:#}"), 2),
        _ => (format!("{err:#}"), 1),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca(CaCommand::Init { dir, cn, force }) => ca_init(&dir, &cn, force),
        Command::Server(args) => server(args),
        Command::Org(args) => org(args),
        Command::Revoke(args) => revoke_cmd(args),
        Command::Crl(args) => {
            let path = write_crl(&args.ca_dir)?;
            println!("crl: {}", path.display());
            Ok(())
        }
        Command::Inspect(args) => inspect(args),
    }
}

fn ca_init(dir: &Path, cn: &str, force: bool) -> anyhow::Result<()> {
    let ca = Ca::generate(cn)?;
    ca.save(dir, force)?;
    // A new CA starts a new revocation history: old serials and CRL numbers
    // belong to the replaced CA.
    for name in ["revoked.json", "ca.crl"] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    let crl = write_crl(dir)?;
    let info = inspect_der(ca.cert_der())?;
    println!("wrote {}", dir.join("ca.crt").display());
    println!(
        "wrote {} (private key, mode 0600)",
        dir.join("ca.key").display()
    );
    println!("wrote {}", crl.display());
    println!("subject:     {}", info.subject);
    println!("not after:   {}", info.not_after);
    println!("sha256:      {}", info.fingerprint_sha256);
    Ok(())
}

fn server(args: ServerArgs) -> anyhow::Result<()> {
    let ca = Ca::load(&args.ca_dir)?;
    let names: Vec<&str> = args.names.iter().map(String::as_str).collect();
    let issued = ca.issue_server(&names, Validity::days_from_now(args.days))?;
    write_issued(&args.out, &args.stem, &issued, args.force)?;
    print_issued(&args.out, &args.stem, &inspect_der(&issued.cert_der)?);
    Ok(())
}

fn org(args: OrgArgs) -> anyhow::Result<()> {
    let validity = match (args.not_before, args.not_after) {
        (Some(not_before), Some(not_after)) => Validity {
            not_before,
            not_after,
        },
        // clap's `requires` rules out a lone bound.
        _ => Validity::days_from_now(args.days.unwrap_or(365)),
    };
    let opts = OrgCertOptions {
        validity,
        client_auth_eku: !args.no_client_auth,
    };
    let ca = Ca::load(&args.ca_dir)?;
    let issued = ca.issue_org(&args.org_id, &opts)?;
    write_issued(&args.out, &args.org_id, &issued, args.force)?;
    print_issued(&args.out, &args.org_id, &inspect_der(&issued.cert_der)?);
    Ok(())
}

fn print_issued(dir: &Path, stem: &str, info: &CertInfo) {
    println!("wrote {}", dir.join(format!("{stem}.crt")).display());
    println!(
        "wrote {} (private key, mode 0600)",
        dir.join(format!("{stem}.key")).display()
    );
    if let Some(org_id) = &info.org_id {
        println!("org id:      {org_id}");
    }
    print_common(info);
}

fn revoke_cmd(args: RevokeArgs) -> anyhow::Result<()> {
    let serial = match (&args.serial, &args.cert) {
        (Some(serial), _) => serial.clone(),
        (None, Some(file)) => {
            let info = read_cert(file)?;
            // Revoking another CA's serial would silently do nothing useful.
            let ca = Ca::load(&args.ca_dir)?;
            let ca_subject = inspect_der(ca.cert_der())?.subject;
            if info.issuer != ca_subject {
                anyhow::bail!(
                    "{} was issued by \"{}\", not by this CA (\"{}\"); pass the CA that issued it with --ca",
                    file.display(),
                    info.issuer,
                    ca_subject
                );
            }
            info.serial_hex
        }
        // clap requires exactly one of the two.
        (None, None) => anyhow::bail!("pass --serial HEX or --cert FILE"),
    };
    let crl = revoke(&args.ca_dir, &serial)?;
    println!("revoked serial {}", serial.to_lowercase().replace(':', ""));
    println!("crl: {}", crl.display());
    println!("distribute the new CRL to the brokers (or let them reload it)");
    Ok(())
}

fn read_cert(file: &Path) -> anyhow::Result<CertInfo> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // PEM if it looks like text with a PEM header, DER otherwise.
    let result = match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => inspect_pem(text),
        _ => inspect_der(&bytes),
    };
    result.with_context(|| {
        format!(
            "{} is not a certificate (expected a PEM or DER X.509 certificate)",
            file.display()
        )
    })
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let info = read_cert(&args.file)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("org id:      {}", info.org_id.as_deref().unwrap_or("-"));
    println!("subject:     {}", info.subject);
    println!("issuer:      {}", info.issuer);
    let sans: Vec<String> = info
        .dns_names
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(info.ip_addresses.iter().map(|ip| format!("IP:{ip}")))
        .chain(
            info.org_id
                .iter()
                .map(|id| format!("URI:{}{id}", kakehashi_certs::ORG_URI_PREFIX)),
        )
        .collect();
    println!(
        "sans:        {}",
        if sans.is_empty() {
            "-".to_string()
        } else {
            sans.join(", ")
        }
    );
    print_common(&info);
    println!("ca:          {}", if info.is_ca { "yes" } else { "no" });
    println!("status:      {}", status(&info));
    Ok(())
}

fn print_common(info: &CertInfo) {
    let mut eku = Vec::new();
    if info.client_auth {
        eku.push("clientAuth");
    }
    if info.server_auth {
        eku.push("serverAuth");
    }
    println!("serial:      {}", info.serial_hex);
    println!("sha256:      {}", info.fingerprint_sha256);
    println!("not before:  {}", info.not_before);
    println!("not after:   {}", info.not_after);
    println!(
        "eku:         {}",
        if eku.is_empty() {
            "-".to_string()
        } else {
            eku.join(", ")
        }
    );
}

/// Whether the certificate is within its validity window right now.
fn status(info: &CertInfo) -> &'static str {
    let now = OffsetDateTime::now_utc();
    let parse = |s: &str| OffsetDateTime::parse(s, &Rfc3339).ok();
    match (parse(&info.not_before), parse(&info.not_after)) {
        (Some(nb), _) if now < nb => "NOT YET VALID",
        (_, Some(na)) if now > na => "EXPIRED",
        (Some(_), Some(_)) => "valid now",
        _ => "unknown",
    }
}
