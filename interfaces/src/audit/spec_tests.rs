//! The specification (the documentation of `mod.rs`) against the code: its
//! outcome table lists exactly the outcomes the code writes, with their tags,
//! names and fields, and its worked examples are what the code computes.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use super::*;

/// The specification: the `//!` lines of `mod.rs`, without the marker.
fn spec() -> Vec<&'static str> {
    include_str!("mod.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect()
}

/// The ```` ```text ```` blocks of the section under `heading`, up to the
/// next heading.
fn blocks_under(heading: &str) -> Vec<Vec<&'static str>> {
    let spec = spec();
    let start = spec
        .iter()
        .position(|l| *l == heading)
        .unwrap_or_else(|| panic!("the spec has no heading {heading:?}"));
    let mut blocks = Vec::new();
    let mut open: Option<Vec<&str>> = None;
    for line in &spec[start + 1..] {
        match (&mut open, *line) {
            (None, l) if l.starts_with('#') => break,
            (None, "```text") => open = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(open.take()),
            (Some(block), l) => block.push(l),
            (None, _) => {}
        }
    }
    assert!(!blocks.is_empty(), "no example block under {heading:?}");
    blocks
}

/// `name = value` lines; an indented line without `=` continues the value
/// above. Spaces inside a value are dropped (hex is grouped for reading).
fn values(block: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut last = String::new();
    for line in block {
        let (key, value) = match line.split_once(" = ") {
            Some((k, v)) => (k.trim().to_string(), v),
            None => (last.clone(), *line),
        };
        let value: String = value.split_whitespace().collect();
        out.entry(key.clone())
            .or_insert_with(String::new)
            .push_str(&value);
        last = key;
    }
    out
}

fn hex32(s: &str) -> Hash {
    let mut out = [0; 32];
    hex::decode_to_slice(s, &mut out).unwrap();
    out
}

/// A row of the outcome table: tag, name and `(type, field)` pairs.
type TableRow = (String, Vec<(String, String)>);

/// The outcome table, by tag.
fn outcome_table() -> BTreeMap<u8, TableRow> {
    let mut table = BTreeMap::new();
    for line in spec() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| tag | name | fields | written when |` splits into six cells.
        let [_, tag, name, fields, _, _] = cells[..] else {
            continue;
        };
        let Ok(tag) = tag.parse::<u8>() else {
            continue;
        };
        let fields = if fields == "—" {
            Vec::new()
        } else {
            fields
                .split(',')
                .map(|f| {
                    let f = f.trim().trim_matches('`');
                    let (ty, name) = f.split_once(' ').unwrap();
                    (ty.to_string(), name.to_string())
                })
                .collect()
        };
        let row = (name.trim_matches('`').to_string(), fields);
        assert!(
            table.insert(tag, row).is_none(),
            "tag {tag} appears twice in the spec's table"
        );
    }
    table
}

/// The name of every variant of [`Outcome`], from serde's own list (so a new
/// variant shows up here without anyone listing it).
fn variant_names() -> BTreeSet<String> {
    let err = serde_json::from_str::<Outcome>(r#"{"outcome":"-"}"#)
        .unwrap_err()
        .to_string();
    let list = err
        .split_once("expected one of ")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("unexpected serde message: {err}"));
    let names: BTreeSet<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(names.contains("provided"), "{err}");
    names
}

/// One outcome of each tag (so of each variant), with distinct field values.
fn one_of_each() -> Vec<Outcome> {
    vec![
        Outcome::Provided,
        Outcome::Pending,
        Outcome::Approved,
        Outcome::Rejected,
        Outcome::Denied {
            reason: "not_on_flow_list".into(),
        },
        Outcome::Expired,
        Outcome::Export {
            actor: "auditor".into(),
            filter: "org=city-a".into(),
            count: 3,
        },
        Outcome::Purge {
            before: "2019-04-01T00:00:00.000000Z".into(),
            first_seq: 1,
            cut_seq: 9,
            count: 8,
            cut_hash: "ab".repeat(32),
            actor: "retention-task".into(),
        },
        Outcome::Erasure {
            confirmed_before: "2025-04-01T00:00:00.000000Z".into(),
            lost_before: "2021-04-01".into(),
            identity_confirmations: 4,
            persons: 2,
            copies: 5,
            codes: None,
            actor: "operator".into(),
        },
        Outcome::Erasure {
            confirmed_before: "2025-04-01T00:00:00.000000Z".into(),
            lost_before: "2021-04-01".into(),
            identity_confirmations: 0,
            persons: 0,
            copies: 3,
            codes: Some(6),
            actor: "retention-task".into(),
        },
    ]
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> &'a [u8] {
    assert!(bytes.len() >= n, "encoding ends early");
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    head
}

/// Reads one field of the given spec type as a JSON value.
fn read_field(bytes: &mut &[u8], ty: &str) -> serde_json::Value {
    match ty {
        "u64" => {
            let v = u64::from_be_bytes(take(bytes, 8).try_into().unwrap());
            serde_json::Value::from(v)
        }
        "str" => {
            let len = u32::from_be_bytes(take(bytes, 4).try_into().unwrap());
            let s = std::str::from_utf8(take(bytes, len as usize)).unwrap();
            serde_json::Value::from(s)
        }
        other => panic!("the spec's table names an unknown type {other:?}"),
    }
}

#[test]
fn the_outcome_table_lists_every_outcome_the_code_writes() {
    let table = outcome_table();
    let outcomes = one_of_each();
    let names: BTreeSet<String> = outcomes.iter().map(|o| o.name().to_string()).collect();
    assert_eq!(
        names,
        variant_names(),
        "one_of_each() must hold one outcome of every variant"
    );
    let tags: BTreeSet<u8> = outcomes.iter().map(Outcome::tag).collect();
    assert_eq!(tags.len(), outcomes.len(), "two outcomes share a tag");
    assert_eq!(
        table.keys().copied().collect::<BTreeSet<u8>>(),
        tags,
        "the spec's outcome table and the code's tags differ"
    );

    // Everything before the tag is the same for every outcome; the approver
    // (absent: one 0x00 byte) follows the outcome's fields.
    let mut record = fixtures::sample();
    record.approver = None;
    record.outcome = Outcome::Provided;
    let prefix = record.canonical_bytes().len() - 2;
    for outcome in outcomes {
        let (name, fields) = &table[&outcome.tag()];
        assert_eq!(name, outcome.name(), "tag {}", outcome.tag());
        record.outcome = outcome.clone();
        let bytes = record.canonical_bytes();
        let mut rest = &bytes[prefix + 1..];
        assert_eq!(bytes[prefix], outcome.tag());
        let decoded: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(ty, field)| (field.clone(), read_field(&mut rest, ty)))
            .collect();
        assert_eq!(
            rest,
            [0],
            "{name}: the spec's fields do not cover the encoding"
        );
        let (_, reason, detail) = outcome.to_parts();
        let expected = match (reason, detail) {
            (Some(reason), None) => serde_json::json!({ "reason": reason }),
            (None, Some(detail)) => detail,
            (None, None) => serde_json::json!({}),
            (Some(_), Some(_)) => panic!("{name} has both a reason and a detail"),
        };
        assert_eq!(
            serde_json::Value::Object(decoded),
            expected,
            "{name}: the spec's fields (names, types or order) differ from the encoding"
        );
    }
}

#[test]
fn the_person_commitment_example_is_what_the_code_computes() {
    let v = values(&blocks_under("## A person commitment")[0]);
    let salt: [u8; SALT_LEN] = hex::decode(&v["salt"]).unwrap().try_into().unwrap();
    assert_eq!(
        hex::encode(person_commitment(&salt, &v["code"])),
        v["commitment"]
    );
}

/// The record of the worked example, as the spec describes it in words.
fn example_record() -> Record {
    Record {
        seq: 1,
        at: "2026-04-01T09:00:00.000000Z".into(),
        query_id: "q-1".into(),
        permit_id: None,
        flow_id: None,
        flow_list_version: Some(3),
        procedure: None,
        requester: "city-a".into(),
        provider: Some("city-b".into()),
        items: vec!["tax.resident".into()],
        requester_person: Some(person_commitment(&[1; SALT_LEN], "RQ-0001")),
        provider_person: None,
        outcome: Outcome::Denied {
            reason: "not_on_flow_list".into(),
        },
        approver: None,
    }
}

#[test]
fn the_record_example_is_what_the_code_computes() {
    let blocks = blocks_under("## A record");
    let bytes: String = blocks[0]
        .iter()
        .map(|l| l.split_once(';').expect("byte lines have a ';'").0)
        .flat_map(str::split_whitespace)
        .collect();
    let record = example_record();
    assert_eq!(bytes, hex::encode(record.canonical_bytes()));
    let v = values(&blocks[1]);
    assert_eq!(v["leaf_1"], hex::encode(record.leaf_hash()));
    assert_eq!(
        v["hash_1"],
        hex::encode(chain_hash(&GENESIS_HASH, &record.leaf_hash()))
    );
}

#[test]
fn the_checkpoint_example_is_what_the_code_computes() {
    let v = values(&blocks_under("## A checkpoint")[0]);
    let key = SigningKey::from_bytes(&hex32(&v["seed"]));
    let seq: u64 = v["seq"].parse().unwrap();
    let head = hex32(&v["head_hash"]);
    let record = example_record();
    assert_eq!(
        head,
        chain_hash(&GENESIS_HASH, &record.leaf_hash()),
        "the example seals record 1"
    );
    assert_eq!(v["public_key"], hex::encode(key.verifying_key().as_bytes()));
    assert_eq!(v["key_id"], key_id(&key.verifying_key()));
    assert_eq!(
        v["signing bytes"],
        hex::encode(Checkpoint::signing_bytes(
            seq,
            &head,
            &v["at"],
            &v["key_id"]
        ))
    );
    let cp = Checkpoint::sign(seq, head, v["at"].clone(), &key);
    assert_eq!(v["signature"], hex::encode(cp.signature));
    let mut keys = TrustedKeys::new();
    keys.add(key.verifying_key());
    assert_eq!(cp.verify(&keys), Ok(()));
}

#[test]
fn the_export_example_is_what_the_code_writes_and_it_verifies() {
    let blocks = blocks_under("## An export");
    let text = |block: &[&str]| block.iter().map(|l| format!("{l}\n")).collect::<String>();
    let (data, bundle) = (text(&blocks[0]), text(&blocks[1]));

    let report = verify_export(data.as_bytes(), bundle.as_bytes(), &[]).unwrap();
    assert_eq!(
        (report.rows, report.segments, report.checkpoints),
        (1, 1, 1)
    );
    assert_eq!(report.key_ids, ["fe812c12f3ab4ce6"]);
    let tampered = data.replace("city-b", "city-c");
    assert!(verify_export(tampered.as_bytes(), bundle.as_bytes(), &[]).is_err());

    // The same files, written by the code.
    let record = example_record();
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut written = Vec::new();
    ExportRow::from_record(&record)
        .write_jsonl(&mut written)
        .unwrap();
    assert_eq!(String::from_utf8(written.clone()).unwrap(), data);
    let head = chain_hash(&GENESIS_HASH, &record.leaf_hash());
    let cp = Checkpoint::sign(1, head, "2026-04-01T09:00:01.000000Z".into(), &key);
    let mut out = Vec::new();
    for line in [
        BundleLine::Header {
            format: BUNDLE_FORMAT.into(),
            data_format: ExportFormat::Jsonl,
            created_at: "2026-04-01T09:00:02.000000Z".into(),
            filter: "all".into(),
        },
        BundleLine::Segment {
            start_seq: 0,
            start_hash: hex::encode(GENESIS_HASH),
        },
        BundleLine::Row {
            seq: 1,
            rc: record.requester_person.map(hex::encode),
            pc: None,
        },
        BundleLine::checkpoint(&cp, &key.verifying_key()),
        BundleLine::End {
            rows: 1,
            data_sha256: hex::encode(Sha256::digest(&written)),
        },
    ] {
        line.write(&mut out).unwrap();
    }
    let digest: [u8; 32] = Sha256::digest(&out).into();
    append_seal(&mut out, &key).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), bundle);

    // The seal's worked example: what it signs, and the bundle it seals.
    let v = values(&blocks_under("## An export's seal")[0]);
    assert_eq!(v["bundle_sha256"], hex::encode(digest));
    assert_eq!(v["signing bytes"], hex::encode(export_seal_bytes(&digest)));
    assert_eq!(report.sealed_by.as_deref(), Some("fe812c12f3ab4ce6"));
}
