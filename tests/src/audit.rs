//! Forged auditor exports: what someone who can edit records and holds a
//! key of their own makes — the chain recomputed over an altered row and
//! every checkpoint re-signed, so the export is self-consistent.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use kakehashi_interfaces::audit::{
    append_seal, bundle_path_for, chain_hash, BundleLine, Checkpoint, ExportRow, Hash,
};
use sha2::{Digest, Sha256};

fn hash(hex_text: &str) -> Result<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).context("hex hash")?;
    Ok(out)
}

/// Writes `out` (JSON Lines) and its bundle: the JSON Lines export `data`
/// with `edit` applied to every row, re-chained and re-signed with `key`.
/// The `latest` line, if any, is dropped (its head no longer follows).
pub fn forge_jsonl_export(
    data: &Path,
    out: &Path,
    key: &SigningKey,
    edit: impl Fn(&mut ExportRow),
) -> Result<()> {
    let rows: Vec<ExportRow> = std::fs::read_to_string(data)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut rows = rows.into_iter();
    let mut new_data = Vec::new();
    let mut new_bundle = Vec::new();
    let mut head: Hash = [0; 32];
    for line in std::fs::read_to_string(bundle_path_for(data))?.lines() {
        let line: BundleLine = serde_json::from_str(line)?;
        match line {
            BundleLine::Segment { ref start_hash, .. } => {
                head = hash(start_hash)?;
                line.write(&mut new_bundle)?;
            }
            BundleLine::Row {
                seq,
                ref rc,
                ref pc,
            } => {
                let mut row = rows.next().context("fewer rows than the bundle lists")?;
                if row.seq != seq {
                    bail!("row {} where the bundle lists {seq}", row.seq);
                }
                edit(&mut row);
                let rc_hash = rc.as_deref().map(hash).transpose()?;
                let pc_hash = pc.as_deref().map(hash).transpose()?;
                row.write_jsonl(&mut new_data)?;
                let record = row
                    .into_record(rc_hash, pc_hash)
                    .map_err(anyhow::Error::msg)?;
                head = chain_hash(&head, &record.leaf_hash());
                line.write(&mut new_bundle)?;
            }
            BundleLine::Leaf { ref leaf, .. } => {
                head = chain_hash(&head, &hash(leaf)?);
                line.write(&mut new_bundle)?;
            }
            BundleLine::Checkpoint { seq, ref at, .. } => {
                let cp = Checkpoint::sign(seq, head, at.clone(), key);
                BundleLine::checkpoint(&cp, &key.verifying_key()).write(&mut new_bundle)?;
            }
            BundleLine::Latest { .. } => {}
            BundleLine::End { rows, .. } => BundleLine::End {
                rows,
                data_sha256: hex::encode(Sha256::digest(&new_data)),
            }
            .write(&mut new_bundle)?,
            BundleLine::Header { .. } => line.write(&mut new_bundle)?,
            // Sealed again with the forger's key, as a forger would.
            BundleLine::Seal { .. } => append_seal(&mut new_bundle, key)?,
        }
    }
    std::fs::File::create(out)?.write_all(&new_data)?;
    std::fs::File::create(bundle_path_for(out))?.write_all(&new_bundle)?;
    Ok(())
}

/// Writes `out` (JSON Lines) and its bundle: the JSON Lines export `data`
/// with record `seq` withheld, as whoever holds the export could do
/// without any key: its row becomes a `leaf` line (so the chain stays
/// whole), its data line goes, and the end line's count and hash are fixed.
/// The seal line is kept as it was when `keep_seal`, else dropped.
pub fn withhold_jsonl_row(data: &Path, out: &Path, seq: u64, keep_seal: bool) -> Result<()> {
    let mut new_data = Vec::new();
    let mut withheld = None;
    for line in std::fs::read_to_string(data)?.lines() {
        let row: ExportRow = serde_json::from_str(line)?;
        if row.seq == seq {
            withheld = Some(row);
        } else {
            row.write_jsonl(&mut new_data)?;
        }
    }
    let mut withheld = Some(withheld.context("no such row to withhold")?);
    let mut new_bundle = Vec::new();
    for line in std::fs::read_to_string(bundle_path_for(data))?.lines() {
        match serde_json::from_str::<BundleLine>(line)? {
            BundleLine::Row {
                seq: s,
                ref rc,
                ref pc,
            } if s == seq => {
                let row = withheld.take().context("withheld twice")?;
                let rc = rc.as_deref().map(hash).transpose()?;
                let pc = pc.as_deref().map(hash).transpose()?;
                let record = row.into_record(rc, pc).map_err(anyhow::Error::msg)?;
                BundleLine::write_leaf(&mut new_bundle, seq, &record.leaf_hash())?;
            }
            BundleLine::End { rows, .. } => BundleLine::End {
                rows: rows - 1,
                data_sha256: hex::encode(Sha256::digest(&new_data)),
            }
            .write(&mut new_bundle)?,
            BundleLine::Seal { .. } if !keep_seal => {}
            _ => {
                new_bundle.extend_from_slice(line.as_bytes());
                new_bundle.push(b'\n');
            }
        }
    }
    std::fs::File::create(out)?.write_all(&new_data)?;
    std::fs::File::create(bundle_path_for(out))?.write_all(&new_bundle)?;
    Ok(())
}

/// Every stored record, decoded with the public construction (person
/// codes and salts into commitments), with its stored chain hash.
pub async fn read_records(
    pools: &kakehashi_broker::store::Pools,
) -> Result<Vec<(kakehashi_interfaces::audit::Record, Hash)>> {
    use kakehashi_interfaces::audit::{person_commitment, Outcome, Record, SALT_LEN};
    macro_rules! read {
        ($pool:expr) => {{
            use sqlx::Row;
            let rows = sqlx::query(
                "SELECT seq, recorded_at, query_id, permit_id, flow_id, flow_list_version, \
                 procedure_code, requester, provider, items, requester_code, requester_salt, \
                 provider_code, provider_salt, outcome, reason, approver, detail, hash \
                 FROM records ORDER BY seq",
            )
            .fetch_all($pool)
            .await?;
            let mut out = Vec::new();
            for row in rows {
                let commit = |code: &str, salt: &str| -> Result<Option<Hash>> {
                    let code: Option<String> = row.try_get(code)?;
                    let salt: Option<Vec<u8>> = row.try_get(salt)?;
                    Ok(match (code, salt) {
                        (Some(code), Some(salt)) => {
                            let salt: [u8; SALT_LEN] = salt.as_slice().try_into()?;
                            Some(person_commitment(&salt, &code))
                        }
                        _ => None,
                    })
                };
                let detail: Option<String> = row.try_get("detail")?;
                let detail = detail.map(|d| serde_json::from_str(&d)).transpose()?;
                let outcome: String = row.try_get("outcome")?;
                let items: String = row.try_get("items")?;
                let hash: Vec<u8> = row.try_get("hash")?;
                let seq: i64 = row.try_get("seq")?;
                let version: Option<i64> = row.try_get("flow_list_version")?;
                out.push((
                    Record {
                        seq: u64::try_from(seq)?,
                        at: row.try_get("recorded_at")?,
                        query_id: row.try_get("query_id")?,
                        permit_id: row.try_get("permit_id")?,
                        flow_id: row.try_get("flow_id")?,
                        flow_list_version: version.map(u64::try_from).transpose()?,
                        procedure: row.try_get("procedure_code")?,
                        requester: row.try_get("requester")?,
                        provider: row.try_get("provider")?,
                        items: items
                            .split(' ')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect(),
                        requester_person: commit("requester_code", "requester_salt")?,
                        provider_person: commit("provider_code", "provider_salt")?,
                        outcome: Outcome::from_parts(&outcome, row.try_get("reason")?, detail)
                            .map_err(anyhow::Error::msg)?,
                        approver: row.try_get("approver")?,
                    },
                    hash.as_slice().try_into()?,
                ));
            }
            out
        }};
    }
    use kakehashi_broker::store::Pools;
    Ok(match pools {
        Pools::Sqlite { read, .. } => read!(read),
        Pools::Postgres(pool) => read!(pool),
    })
}

/// Bytes (a hash, a key, a signature) as an SQL literal for the pools' database.
pub fn hash_literal(pools: &kakehashi_broker::store::Pools, bytes: &[u8]) -> String {
    match pools {
        kakehashi_broker::store::Pools::Sqlite { .. } => format!("X'{}'", hex::encode(bytes)),
        kakehashi_broker::store::Pools::Postgres(_) => {
            format!("decode('{}', 'hex')", hex::encode(bytes))
        }
    }
}

/// Recomputes every stored chain hash from `from` on with the public
/// construction (as anyone who can write the database can) and moves the
/// head row to the last record; returns the new head (sequence, hash).
pub async fn rechain_from(
    pools: &kakehashi_broker::store::Pools,
    from: u64,
) -> Result<(u64, Hash)> {
    let records = read_records(pools).await?;
    let mut prev = kakehashi_interfaces::audit::GENESIS_HASH;
    let mut script = String::new();
    let mut last = 0;
    for (record, stored) in records {
        last = record.seq;
        if record.seq < from {
            prev = stored;
            continue;
        }
        prev = chain_hash(&prev, &record.leaf_hash());
        script.push_str(&format!(
            "UPDATE records SET hash = {} WHERE seq = {};\n",
            hash_literal(pools, &prev),
            record.seq
        ));
    }
    script.push_str(&format!(
        "UPDATE records_head SET seq = {last}, hash = {} WHERE id = 1;\n",
        hash_literal(pools, &prev)
    ));
    crate::sql_exec(pools, &script).await?;
    Ok((last, prev))
}

/// Signs a checkpoint of `(seq, head)` with the sealer key in `key_dir` and
/// stores it, as whoever holds the sealer key can.
pub async fn sign_with_sealer_key(
    pools: &kakehashi_broker::store::Pools,
    key_dir: &Path,
    seq: u64,
    head: Hash,
) -> Result<()> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let pem = std::fs::read_to_string(key_dir.join(kakehashi_broker::keys::SEALER_FILE))?;
    let key = SigningKey::from_pkcs8_pem(&pem).context("the sealer key")?;
    let at =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let cp = Checkpoint::sign(seq, head, at.clone(), &key);
    crate::sql_exec(
        pools,
        &format!(
            "INSERT INTO record_checkpoints (seq, head_hash, signed_at, key_id, public_key, signature) \
             VALUES ({seq}, {}, '{at}', '{}', {}, {})",
            hash_literal(pools, &head),
            cp.key_id,
            hash_literal(pools, &key.verifying_key().to_bytes()),
            hash_literal(pools, &cp.signature),
        ),
    )
    .await
}
