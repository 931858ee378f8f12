//! `kakehashi persons register` and `kakehashi copies deposit`: files sent in
//! batches of lines, with a confirmation list (確認リスト) of the lines that
//! were not applied. Individual Numbers and item values are never printed.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kakehashi_client::interfaces::{
    parse_jsonl, BasicFacts, CopyDeposit, IndividualNumber, LineReason, PersonRegistration,
    RegisteredPerson, Sex,
};
use kakehashi_client::{Client, ClientError};
use time::Date;

use super::args::BatchFileArgs;
use super::fail::{CliError, Exit};

/// One line of the confirmation list.
struct Issue {
    line: u64,
    reason: String,
    message: String,
}

fn default_beside(input: &Path, suffix: &str) -> PathBuf {
    let mut name = input.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn progress(len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} lines {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Writes the confirmation list (always, so that an old list never misleads).
fn write_confirmation_list(path: &Path, issues: &mut [Issue]) -> Result<(), CliError> {
    issues.sort_by_key(|i| i.line);
    let fail = |e: &dyn std::fmt::Display| {
        CliError::usage(format!(
            "cannot write confirmation list {}: {e}",
            path.display()
        ))
    };
    // Mode 0600: the list names lines of a file of personal data.
    let file = super::personal_files::create_private(path).map_err(|e| fail(&e))?;
    let mut w = csv::Writer::from_writer(file);
    w.write_record(["line", "reason", "message"])
        .map_err(|e| fail(&e))?;
    for i in issues.iter() {
        w.write_record([i.line.to_string().as_str(), &i.reason, &i.message])
            .map_err(|e| fail(&e))?;
    }
    w.flush().map_err(|e| fail(&e))
}

/// A batch request failed: what was applied before, and what to do.
fn stopped(e: ClientError, first_line: u64, written: &str) -> CliError {
    let mut err = CliError::from(e);
    let hint = err.hint.take().unwrap_or_default();
    err.message = format!(
        "{} (stopped at the batch starting on line {first_line}; earlier batches were applied, see {written})",
        err.message
    );
    err.hint = Some(format!("{hint}; sending the whole file again is safe"));
    err
}

fn parse_sex(s: &str) -> Option<Sex> {
    match s.to_ascii_lowercase().as_str() {
        "male" | "男" => Some(Sex::Male),
        "female" | "女" => Some(Sex::Female),
        "unknown" | "不明" => Some(Sex::Unknown),
        _ => None,
    }
}

fn parse_date(s: &str) -> Option<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, format).ok()
}

const PERSON_COLUMNS: [&str; 5] = ["name", "sex", "birth_date", "address", "individual_number"];
/// Optional column: the day eligibility was lost (empty while insured).
const ELIGIBILITY_COLUMN: &str = "eligibility_lost_on";

/// One CSV record as a registration; the error never holds field values.
fn person_from_record(
    record: &csv::StringRecord,
    cols: &[usize; 5],
    eligibility_col: Option<usize>,
    width: usize,
) -> Result<PersonRegistration, (LineReason, String)> {
    let invalid = |m: String| (LineReason::InvalidInput, m);
    if record.len() != width {
        return Err(invalid(format!(
            "the line has {} fields, the header has {width}",
            record.len()
        )));
    }
    let get = |i: usize| record.get(cols[i]).unwrap_or_default();
    let sex = parse_sex(get(1))
        .ok_or_else(|| invalid("sex: must be male, female or unknown (or 男, 女, 不明)".into()))?;
    let birth = parse_date(get(2))
        .ok_or_else(|| invalid("birth_date: must be a date YYYY-MM-DD".into()))?;
    let basic = BasicFacts::new(get(0).to_string(), sex, birth, get(3).to_string())
        .map_err(|e| invalid(e.to_string()))?;
    // The error names the rule, never the digits.
    let number = IndividualNumber::new(get(4)).map_err(|e| {
        (
            LineReason::MissingIndividualNumber,
            format!("individual_number: {e}"),
        )
    })?;
    let eligibility_lost_on = match eligibility_col.and_then(|i| record.get(i)) {
        None | Some("") => None,
        Some(s) => Some(parse_date(s).ok_or_else(|| {
            invalid("eligibility_lost_on: must be a date YYYY-MM-DD or empty".into())
        })?),
    };
    Ok(PersonRegistration {
        basic,
        individual_number: number,
        eligibility_lost_on,
    })
}

/// A file read and checked line by line, before anything is sent.
pub struct Parsed<T> {
    good: Vec<(u64, T)>,
    issues: Vec<Issue>,
}

/// Reads the persons CSV; bad lines become confirmation-list entries.
pub fn read_persons(file: &Path) -> Result<Parsed<PersonRegistration>, CliError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(file)
        .map_err(|e| CliError::file("read", file, csv_io(&e)))?;
    let headers = reader
        .headers()
        .map_err(|e| {
            CliError::usage(format!(
                "{} has no readable header: {}",
                file.display(),
                csv_kind(&e)
            ))
        })?
        .clone();
    let mut cols = [0usize; 5];
    for (i, name) in PERSON_COLUMNS.iter().enumerate() {
        cols[i] = headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                CliError::usage(format!("{} has no `{name}` column", file.display()))
                    .hint("the header must name the columns name, sex, birth_date, address, individual_number")
            })?;
    }
    let eligibility_col = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case(ELIGIBILITY_COLUMN));
    let mut issues = Vec::new();
    let mut good: Vec<(u64, PersonRegistration)> = Vec::new();
    for record in reader.records() {
        match record {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line());
                match person_from_record(&record, &cols, eligibility_col, headers.len()) {
                    Ok(p) => good.push((line, p)),
                    Err((reason, message)) => issues.push(Issue {
                        line,
                        reason: reason.as_str().to_string(),
                        message,
                    }),
                }
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                issues.push(Issue {
                    line,
                    reason: LineReason::InvalidInput.as_str().to_string(),
                    message: format!("not a valid CSV line: {}", csv_kind(&e)),
                });
            }
        }
    }
    Ok(Parsed { good, issues })
}

/// `kakehashi persons register FILE`.
pub async fn register(
    client: &Client,
    file: &Path,
    parsed: Parsed<PersonRegistration>,
    out: Option<PathBuf>,
    opts: &BatchFileArgs,
) -> Result<Exit, CliError> {
    // With --out, the confirmation list is named after it too, so that two
    // orgs registering the same input file do not overwrite each other's.
    let conf_default = default_beside(out.as_deref().unwrap_or(file), ".confirmation.csv");
    let codes_path = out.unwrap_or_else(|| default_beside(file, ".codes.csv"));
    let conf_path = opts.confirmation_list.clone().unwrap_or(conf_default);
    let Parsed { good, mut issues } = parsed;
    let total = (good.len() + issues.len()) as u64;
    let bar = progress(total);
    bar.inc(issues.len() as u64);
    let mut applied: Vec<(u64, RegisteredPerson)> = Vec::new();
    let mut failure = None;
    for chunk in good.chunks(opts.batch_size as usize) {
        let lines: Vec<u64> = chunk.iter().map(|(l, _)| *l).collect();
        let persons: Vec<PersonRegistration> = chunk.iter().map(|(_, p)| p.clone()).collect();
        match client.register_persons(&persons).await {
            Ok(report) => {
                let file_line = |n: u64| {
                    lines
                        .get((n as usize).wrapping_sub(1))
                        .copied()
                        .unwrap_or(0)
                };
                for p in report.applied {
                    applied.push((file_line(p.line), p));
                }
                for i in report.confirmation_list {
                    issues.push(Issue {
                        line: file_line(i.line),
                        reason: i.reason.as_str().to_string(),
                        message: i.message,
                    });
                }
                bar.inc(chunk.len() as u64);
            }
            Err(e) => {
                failure = Some((e, lines.first().copied().unwrap_or(0)));
                break;
            }
        }
    }
    bar.finish_and_clear();
    write_codes(&codes_path, &applied)?;
    write_confirmation_list(&conf_path, &mut issues)?;
    if let Some((e, line)) = failure {
        return Err(stopped(e, line, &codes_path.display().to_string()));
    }
    let created = applied.iter().filter(|(_, p)| p.created).count();
    if applied.iter().any(|(_, p)| p.branch_number.is_some()) {
        println!(
            "applied {} lines ({created} new, {} already registered); not applied: {}",
            applied.len(),
            applied.len() - created,
            issues.len()
        );
    } else {
        // An org other than an insurer only links its records: no branch numbers.
        println!(
            "linked {} lines to this org's person codes; not applied: {}",
            applied.len(),
            issues.len()
        );
    }
    println!("person codes: {}", codes_path.display());
    println!("confirmation list: {}", conf_path.display());
    Ok(if issues.is_empty() {
        Exit::Ok
    } else {
        Exit::Partial
    })
}

/// A csv open error: only the I/O part (csv errors name positions, never contents).
fn csv_io(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Io(io) => io.to_string(),
        _ => csv_kind(e),
    }
}

/// A csv error without field contents.
fn csv_kind(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Io(io) => io.to_string(),
        csv::ErrorKind::Utf8 { .. } => "the line is not valid UTF-8".to_string(),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("the line has {len} fields, expected {expected_len}"),
        _ => "malformed CSV".to_string(),
    }
}

fn write_codes(path: &Path, applied: &[(u64, RegisteredPerson)]) -> Result<(), CliError> {
    let fail = |e: &dyn std::fmt::Display| {
        CliError::usage(format!("cannot write person codes {}: {e}", path.display()))
    };
    // Mode 0600: person codes are personal data.
    let file = super::personal_files::create_private(path).map_err(|e| fail(&e))?;
    let mut w = csv::Writer::from_writer(file);
    w.write_record(["line", "person_code", "branch_number", "created"])
        .map_err(|e| fail(&e))?;
    for (line, p) in applied {
        let branch = p.branch_number.map(|b| b.to_string()).unwrap_or_default();
        w.write_record([
            line.to_string().as_str(),
            p.person_code.as_str(),
            &branch,
            if p.created { "true" } else { "false" },
        ])
        .map_err(|e| fail(&e))?;
    }
    w.flush().map_err(|e| fail(&e))
}

/// Reads the copies JSON Lines file; bad lines become confirmation-list entries.
pub fn read_copies(file: &Path) -> Result<Parsed<CopyDeposit>, CliError> {
    let bytes = std::fs::read(file).map_err(|e| CliError::file("read", file, e))?;
    let mut issues = Vec::new();
    let mut good = Vec::new();
    // The same parser as the broker's, so messages match and never echo values.
    for (line, parsed) in parse_jsonl::<CopyDeposit>(&bytes) {
        match parsed {
            Ok(d) => good.push((line, d)),
            Err(e) => issues.push(Issue {
                line,
                reason: LineReason::InvalidInput.as_str().to_string(),
                message: e.reason,
            }),
        }
    }
    Ok(Parsed { good, issues })
}

/// `kakehashi copies deposit FILE`.
pub async fn deposit(
    client: &Client,
    file: &Path,
    parsed: Parsed<CopyDeposit>,
    opts: &BatchFileArgs,
) -> Result<Exit, CliError> {
    let conf_path = opts
        .confirmation_list
        .clone()
        .unwrap_or_else(|| default_beside(file, ".confirmation.csv"));
    let Parsed { good, mut issues } = parsed;
    let bar = progress((good.len() + issues.len()) as u64);
    bar.inc(issues.len() as u64);
    let (mut applied, mut replaced) = (0u64, 0u64);
    let mut failure = None;
    for chunk in good.chunks(opts.batch_size as usize) {
        let lines: Vec<u64> = chunk.iter().map(|(l, _)| *l).collect();
        let copies: Vec<CopyDeposit> = chunk.iter().map(|(_, c)| c.clone()).collect();
        match client.deposit_copies(&copies).await {
            Ok(report) => {
                applied += report.applied;
                replaced += report.replaced;
                for i in report.rejected {
                    issues.push(Issue {
                        line: lines
                            .get((i.line as usize).wrapping_sub(1))
                            .copied()
                            .unwrap_or(0),
                        reason: i.reason.as_str().to_string(),
                        message: i.message,
                    });
                }
                bar.inc(chunk.len() as u64);
            }
            Err(e) => {
                failure = Some((e, lines.first().copied().unwrap_or(0)));
                break;
            }
        }
    }
    bar.finish_and_clear();
    write_confirmation_list(&conf_path, &mut issues)?;
    if let Some((e, line)) = failure {
        return Err(stopped(e, line, &conf_path.display().to_string()));
    }
    println!(
        "applied {applied} persons' copies ({replaced} replaced earlier copies); lines not applied: {}",
        issues.len()
    );
    println!("confirmation list: {}", conf_path.display());
    Ok(if issues.is_empty() {
        Exit::Ok
    } else {
        Exit::Partial
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_person_lines_never_echo_the_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.csv");
        // 123456789018 has a valid check digit; ...019 does not.
        std::fs::write(
            &path,
            "name,sex,birth_date,address,individual_number\n\
             A,male,1950-01-01,X,123456789018\n\
             B,female,1950-01-01,X,123456789019\n\
             C,女,1950-02-30,X,123456789018\n\
             D,male,1950-01-01,123456789018\n",
        )
        .unwrap();
        let parsed = read_persons(&path).unwrap();
        assert_eq!(parsed.good.len(), 1);
        let lines: Vec<u64> = parsed.issues.iter().map(|i| i.line).collect();
        assert_eq!(lines, [3, 4, 5]);
        assert_eq!(parsed.issues[0].reason, "missing_individual_number");
        for i in &parsed.issues {
            assert!(!i.message.contains("12345678901"), "{}", i.message);
        }
    }

    #[test]
    fn copies_lines_are_checked_locally() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        std::fs::write(
            &path,
            "{\"person\":\"P0000001\",\"items\":{\"a.b\":1}}\n\n{\"person\":\"P0000001\",\"items\":{\"a.b\":null}}\n",
        )
        .unwrap();
        let parsed = read_copies(&path).unwrap();
        assert_eq!(parsed.good.len(), 1);
        assert_eq!(parsed.issues.len(), 1);
        assert_eq!(parsed.issues[0].line, 3);
    }
}
