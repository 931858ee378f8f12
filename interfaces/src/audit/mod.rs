//! Provision records (情報提供等記録): their format, their tamper evidence
//! and their offline verification. This documentation is the format
//! specification; outside verifiers implement it without broker code.
//!
//! The broker stores records and signs checkpoints; this module defines
//! exactly what is hashed and signed, how an auditor export is laid out, and
//! how a run of records or an export is checked against signed checkpoints.
//! The client (`kakehashi audit verify`) and third parties verify an auditor
//! export with it, offline.
//!
//! # Where IO happens
//!
//! Nothing here opens a database or a socket, reads the clock or draws
//! random numbers: times, salts and keys come from the caller, and Ed25519
//! signing is deterministic. Encoding, hashing, signing and [`ChainVerifier`]
//! work on values in memory. IO happens in these places only:
//!
//! - [`ExportRow::write_csv`], [`ExportRow::write_jsonl`], [`write_csv_header`]
//!   and [`BundleLine::write`] write to the `std::io::Write` the caller passes;
//! - [`verify_export`] reads the data file and the bundle from the
//!   `std::io::Read` and `std::io::BufRead` the caller passes;
//! - [`verify_export_files`] opens two files read-only (the data file, and
//!   the bundle, by default [`bundle_path_for`] the data file) and reads them
//!   through [`verify_export`]. It is the only function that touches the file
//!   system.
//!
//! # Files of this module
//!
//! - `record.rs`: [`Record`], its canonical encoding and leaf hash,
//!   [`person_commitment`]; `encoding.rs`: the primitive encodings.
//! - `outcome.rs`: [`Outcome`], its tag and its storage form (name, reason,
//!   detail).
//! - `chain.rs`: [`chain_hash`], [`GENESIS_HASH`], and how a chain is found
//!   broken ([`FailureKind`], [`ChainFailure`]).
//! - `checkpoint.rs`: [`Checkpoint`] signing bytes and signatures, [`key_id`],
//!   [`TrustedKeys`].
//! - `export.rs`: the auditor export's data file (CSV, JSON Lines) and
//!   bundle ([`ExportRow`], [`BundleLine`]).
//! - `timestamp.rs`: RFC 3161 time-stamp tokens of checkpoints: the request
//!   a sealer sends ([`timestamp_request`]), the token it keeps
//!   ([`token_from_response`]) and the offline check against a TSA
//!   certificate ([`verify_token`], [`TsaCertificate`]).
//! - `verify.rs`: [`ChainVerifier`] and [`verify_export`].
//! - `disclosure.rs`: [`DisclosureEntry`], a line of a person's disclosure
//!   (R18); it is a view of records and is not hashed.
//!
//! # Canonical encoding of a record (version 1)
//!
//! Integers are big-endian. `str` is a `u32` byte length followed by UTF-8
//! bytes; `opt<T>` is `0x00` (absent) or `0x01` followed by `T`.
//!
//! ```text
//! u8        version = 1
//! u64       seq
//! str       at                       fixed-width RFC 3339 UTC, as stored
//! str       query_id
//! opt<str>  permit_id
//! opt<str>  flow_id
//! opt<u64>  flow_list_version
//! opt<str>  procedure
//! str       requester
//! opt<str>  provider
//! u32       number of items, then one str per item (stored order)
//! opt<[32]> requester person commitment
//! opt<[32]> provider person commitment
//! u8        outcome tag, then the outcome's fields (table below)
//! opt<str>  approver
//! ```
//!
//! # Outcomes
//!
//! Every outcome the code writes, with its tag in the canonical encoding,
//! its name in storage and exports, and its fields in encoding order:
//!
//! | tag | name | fields after the tag | written when |
//! |----:|------|----------------------|--------------|
//! | 1 | `provided` | — | the answer was provided |
//! | 2 | `pending` | — | sensitive items await the provider's approval |
//! | 3 | `approved` | — | the provider approved a pending query |
//! | 4 | `rejected` | — | the provider rejected a pending query |
//! | 5 | `denied` | `str reason` | the broker refused the query; `reason` is the stable error code, e.g. `not_on_flow_list` |
//! | 6 | `expired` | — | a pending query or result expired |
//! | 7 | `export` | `str actor`, `str filter`, `u64 count` | an auditor export (R16) was made: who, the filter without person codes, rows written |
//! | 8 | `purge` | `str before`, `u64 first_seq`, `u64 cut_seq`, `u64 count`, `str cut_hash`, `str actor` | records older than `before` were purged (R15); the chain of what remains starts at `cut_seq` |
//! | 9 | `erasure` | `str confirmed_before`, `str lost_before`, `u64 identity_confirmations`, `u64 persons`, `u64 copies`, `str actor` | personal data reached the end of its own retention (R15) and was erased; counts only, never a code or a value (written by brokers that did not count erased linking codes) |
//! | 10 | `erasure` | `str confirmed_before`, `str lost_before`, `u64 identity_confirmations`, `u64 persons`, `u64 copies`, `u64 codes`, `str actor` | the same, with the person codes erased (of the persons erased, and linking codes no insurer keeps a person for); its detail has `codes`, tag 9's has not |
//!
//! `before` and `confirmed_before` are fixed-width RFC 3339 UTC;
//! `lost_before` is a day, `YYYY-MM-DD`; `cut_hash` is the chain hash at
//! `cut_seq`, 64 lowercase hex digits; `actor` names who acted (a name
//! given to the broker's command, the OS user, or `retention-task` for the
//! scheduled purge and erasure).
//!
//! In storage and exports an outcome is three columns: its name; `reason`,
//! present for `denied` only; and `detail`, present for `export`, `purge` and
//! `erasure` only: a JSON object with exactly the fields above, by name
//! (strings as JSON strings, `u64` as JSON numbers).
//!
//! # Hashes and signatures
//!
//! ```text
//! commitment(code) = SHA-256("kakehashi/records/v1/person\0" ‖ salt[16] ‖ str code)
//! leaf_n           = SHA-256("kakehashi/records/v1/leaf\0"   ‖ canonical(record_n))
//! hash_n           = SHA-256("kakehashi/records/v1/chain\0"  ‖ hash_{n-1} ‖ leaf_n)
//! hash_0           = 32 zero bytes (or the cut hash of the latest purge)
//! checkpoint       = Ed25519 over "kakehashi/records/v1/checkpoint\0"
//!                    ‖ u64 seq ‖ hash_seq[32] ‖ str at ‖ str key_id
//! key_id           = first 16 lowercase hex digits of SHA-256(public key)
//! tsa imprint      = SHA-256(the checkpoint's signing bytes above)
//! ```
//!
//! A checkpoint may carry an RFC 3161 time-stamp token (DER
//! `TimeStampToken`; standard base64 in JSON) whose message imprint is the
//! SHA-256 `tsa imprint` above. The token is not covered by the Ed25519
//! signature: it proves itself against the TSA's certificate
//! ([`verify_token`]; ECDSA P-256 and RSA PKCS#1 v1.5, with SHA-256).
//!
//! The public key is the 32-byte Ed25519 key. Signatures are checked
//! strictly (RFC 8032, and small-order keys and points are refused).
//!
//! Person codes enter the hash only through salted commitments, so an export
//! can prove a record's integrity without carrying the (linkable) code, and
//! the leaf indirection lets an export prove the chain across records it does
//! not show, by carrying only their leaf hashes.
//!
//! Order comes from `seq` alone; `at` is recorded, never checked for
//! monotonicity (a clock stepping backwards breaks nothing).
//!
//! # Verifying a chain
//!
//! [`ChainVerifier`] takes records in sequence order, each optionally with the
//! chain hash stored beside it, and checkpoints, each after the record at its
//! sequence. It names the first bad sequence and a [`FailureKind`]:
//!
//! - sequences run from the anchor + 1 without gaps or repeats (`missing`,
//!   `unexpected`); a stored hash equals the recomputed one
//!   (`hash_mismatch`);
//! - a checkpoint comes right after the record at its sequence
//!   (`checkpoint_order`), is signed by a trusted key (`unknown_key`,
//!   `bad_signature`) and its head hash equals the recomputed chain hash at
//!   its sequence (`checkpoint_mismatch`); one beyond the last record means
//!   the tail was cut (`truncated`); checkpoints at or before the anchor are
//!   skipped;
//! - a whole store starts at sequence 0 with [`GENESIS_HASH`], or at the
//!   latest purge cut with its cut hash, and then a `purge` record in the
//!   chain must state that cut (`anchor_mismatch`, `anchor_unconfirmed`); the
//!   store's head sequence equals the last record (`head_ahead`,
//!   `beyond_head`); records after the last checkpoint are reported as
//!   unsealed, not refused;
//! - a segment of an export must end at a checkpoint (`unsealed`);
//! - a stored record the broker cannot decode is `malformed`.
//!
//! # Auditor export (R16)
//!
//! An export is a data file and a bundle beside it named after the data
//! file's full name plus `.bundle.jsonl` (`export.csv.bundle.jsonl`).
//!
//! The data file has one row per exported record, in sequence order, with
//! the columns of [`CSV_COLUMNS`]: every field of the canonical encoding
//! except the person commitments, which travel in the bundle. It is one of:
//!
//! - **CSV** (`csv`): the UTF-8 byte order mark, a header line of the column
//!   names, then one line per row. Every field is in double quotes (a quote
//!   inside is doubled) and lines end in CRLF. An absent optional field is
//!   empty; `items` are the item codes separated by one space; `detail` is
//!   the JSON text of the detail object. A reader also accepts the file
//!   without the byte order mark, unquoted fields and LF line ends.
//! - **JSON Lines** (`jsonl`): one JSON object per row with the columns as
//!   keys and `\n` after each; absent fields are written as `null` (a
//!   reader also accepts them left out), `items` is an array of strings,
//!   `detail` an object. Unknown keys are refused.
//!
//! The bundle is JSON Lines; each object has a `type` and exactly these keys
//! (unknown keys are refused; hex is written in lowercase):
//!
//! ```text
//! header      format = "kakehashi-records-bundle/1", data_format ("csv" or "jsonl"),
//!             created_at, filter
//! segment     start_seq, start_hash        chain hash at start_seq (hex)
//! row         seq, rc?, pc?                the data file's next row; rc and pc are the
//!                                          requester's and provider's person
//!                                          commitments (hex), omitted when absent
//! leaf        seq, leaf                    a record that is not exported: its leaf hash
//! checkpoint  seq, head_hash, at, key_id, public_key, signature, timestamp?
//!                                          a checkpoint at the last listed sequence;
//!                                          public_key is 32 bytes, signature 64 (hex);
//!                                          timestamp its RFC 3161 token (base64), if any
//! latest      seq, head_hash, at, key_id, public_key, signature, timestamp?
//!                                          optional, once, after the segments: the whole
//!                                          log's latest checkpoint when the export was made
//! end         rows, data_sha256            rows in the data file; SHA-256 of the whole
//!                                          data file (byte order mark and header included)
//! seal        bundle_sha256, key_id, public_key, signature
//!                                          SHA-256 of the bundle's bytes from its first
//!                                          byte to the end line's `\n`, and the broker's
//!                                          signature over it
//! ```
//!
//! The first line is the header, the listing ends in the end line, and the
//! seal follows it as the last line (nothing else may follow the end line;
//! a bundle that ends there verifies as unsealed). Between them come
//! segments: a `segment` line, then one `row` or `leaf` line for every
//! sequence after `start_seq` in order, ending in a `checkpoint` line at the
//! last of them (more checkpoints may come between), and then the `latest`
//! line, whose sequence is at or after every checkpoint's. [`verify_export`]
//! rebuilds each row's record with its commitments, chains each segment from
//! its start hash, checks each checkpoint's signature (and the `latest`
//! one's) with the key it carries and that its `key_id` is that key's id,
//! checks every time-stamp token's imprint against its checkpoint (a token
//! moved from another checkpoint fails; [`ExportReport::verify_timestamps`]
//! checks the TSA's signatures given its certificate), and checks the row
//! count, the data file's hash and the seal: the bundle's SHA-256 and the
//! signature over [`export_seal_bytes`] with the key it carries. The seal
//! is what shows that no row was withheld (a row turned into a leaf keeps
//! the chain whole) and that the filter is the one the export was made
//! with; an export without one is reported as such
//! ([`ExportTrust::Unsealed`]). That proves the
//! export is self-consistent only: anyone can re-chain altered records and
//! sign with a key of their own. It is evidence when every key in
//! [`ExportReport::public_keys`] (the seal's among them) is one the auditor obtained from the broker
//! beforehand (`GET /v1/record-keys`, pinned in a client profile, or the
//! console's `GET /api/keys`) — `kakehashi audit verify` reports "verified
//! against trusted key K" only then.
//!
//! # Worked examples
//!
//! Every value below is checked by this module's tests against the code.
//!
//! ## A person commitment
//!
//! ```text
//! salt       = 01010101010101010101010101010101
//! code       = RQ-0001
//! commitment = 714938a1b11570144c019665ad43ec5dff5325f16b2155d673d2e55c7331bb73
//! ```
//!
//! ## A record
//!
//! Record 1 at `2026-04-01T09:00:00.000000Z` about query `q-1`: flow list
//! version 3; `city-a` asked `city-b` for item `tax.resident` and was
//! denied with reason `not_on_flow_list`; the requester's person code
//! `RQ-0001` stands as the commitment above; no permit, flow, procedure,
//! provider person or approver. Its canonical bytes, one field a line (hex
//! left of `;`):
//!
//! ```text
//! 01                                                               ; version 1
//! 0000000000000001                                                 ; seq 1
//! 0000001b 323032362d30342d30315430393a30303a30302e3030303030305a  ; at, 27 bytes
//! 00000003 712d31                                                  ; query_id "q-1"
//! 00                                                               ; permit_id absent
//! 00                                                               ; flow_id absent
//! 01 0000000000000003                                              ; flow_list_version 3
//! 00                                                               ; procedure absent
//! 00000006 636974792d61                                            ; requester "city-a"
//! 01 00000006 636974792d62                                         ; provider "city-b"
//! 00000001 0000000c 7461782e7265736964656e74                       ; 1 item, "tax.resident"
//! 01 714938a1b11570144c019665ad43ec5dff5325f16b2155d673d2e55c7331bb73 ; requester commitment
//! 00                                                               ; provider commitment absent
//! 05 00000010 6e6f745f6f6e5f666c6f775f6c697374                     ; tag 5 denied, reason
//! 00                                                               ; approver absent
//! ```
//!
//! Its leaf hash, and its chain hash as the first record (after `hash_0`,
//! 32 zero bytes):
//!
//! ```text
//! leaf_1 = 547dc31bc0950bd611985707be640a215a26fbdec4401d746501625d7db40c2a
//! hash_1 = 82f25bd0a7867a91e326482deeaa5c3949b0b137beb4149273e575737448ad26
//! ```
//!
//! ## A checkpoint
//!
//! Record 1 above sealed by an example key, given by its Ed25519 seed
//! (RFC 8032 secret key; an example only, never a sealer's key):
//!
//! ```text
//! seed          = 0707070707070707070707070707070707070707070707070707070707070707
//! seq           = 1
//! head_hash     = 82f25bd0a7867a91e326482deeaa5c3949b0b137beb4149273e575737448ad26
//! at            = 2026-04-01T09:00:01.000000Z
//! public_key    = ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c
//! key_id        = fe812c12f3ab4ce6
//! signing bytes = 6b616b6568617368692f7265636f7264732f76312f636865636b706f696e7400
//!                 0000000000000001
//!                 82f25bd0a7867a91e326482deeaa5c3949b0b137beb4149273e575737448ad26
//!                 0000001b 323032362d30342d30315430393a30303a30312e3030303030305a
//!                 00000010 66653831326331326633616234636536
//! signature     = fd679932a652da344bb7a32c1e84ebfbc15ea0720b24fac2d8f74db7f67343bb
//!                 60bb5dbc4b9dea666db660675b63590a553354621ad4495202bc730ad0de0f0c
//! ```
//!
//! ## An export
//!
//! The record above exported as JSON Lines; the data file `export.jsonl`:
//!
//! ```text
//! {"seq":1,"at":"2026-04-01T09:00:00.000000Z","query_id":"q-1","permit_id":null,"flow_id":null,"flow_list_version":3,"procedure":null,"requester":"city-a","provider":"city-b","items":["tax.resident"],"outcome":"denied","reason":"not_on_flow_list","approver":null,"detail":null}
//! ```
//!
//! and its bundle `export.jsonl.bundle.jsonl`:
//!
//! ```text
//! {"type":"header","format":"kakehashi-records-bundle/1","data_format":"jsonl","created_at":"2026-04-01T09:00:02.000000Z","filter":"all"}
//! {"type":"segment","start_seq":0,"start_hash":"0000000000000000000000000000000000000000000000000000000000000000"}
//! {"type":"row","seq":1,"rc":"714938a1b11570144c019665ad43ec5dff5325f16b2155d673d2e55c7331bb73"}
//! {"type":"checkpoint","seq":1,"head_hash":"82f25bd0a7867a91e326482deeaa5c3949b0b137beb4149273e575737448ad26","at":"2026-04-01T09:00:01.000000Z","key_id":"fe812c12f3ab4ce6","public_key":"ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c","signature":"fd679932a652da344bb7a32c1e84ebfbc15ea0720b24fac2d8f74db7f67343bb60bb5dbc4b9dea666db660675b63590a553354621ad4495202bc730ad0de0f0c"}
//! {"type":"end","rows":1,"data_sha256":"de52d3dfe2353aa1adde040ded9aa9740c5d00d056cad2057f24cf82b90e9ef9"}
//! {"type":"seal","bundle_sha256":"b690a7e110b607c3a7d6d97a9f7332456e432165f2de341f8cfab856c6932d6b","key_id":"fe812c12f3ab4ce6","public_key":"ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c","signature":"3e486a55622496e385aa89cc597553169184c92eca3431bc643fb0206d883b06c870b8a1e708514988c5dbbde00ca2a720aaa8c7be074908c554851173e0ac03"}
//! ```
//!
//! ## An export's seal
//!
//! The seal above, by the checkpoint's example key: the SHA-256 of the
//! bundle's first five lines (each with its `\n`), and the bytes signed
//! (the tag `kakehashi/records/v1/export` and a zero byte, then the digest):
//!
//! ```text
//! bundle_sha256 = b690a7e110b607c3a7d6d97a9f7332456e432165f2de341f8cfab856c6932d6b
//! signing bytes = 6b616b6568617368692f7265636f7264732f76312f6578706f727400
//!                 b690a7e110b607c3a7d6d97a9f7332456e432165f2de341f8cfab856c6932d6b
//! ```

mod chain;
mod checkpoint;
mod disclosure;
mod encoding;
mod export;
mod outcome;
mod record;
mod seal;
mod timestamp;
mod verify;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod spec_tests;

pub use chain::{chain_hash, ChainFailure, FailureKind, GENESIS_HASH};
pub use checkpoint::{key_id, Checkpoint, TrustedKeys};
pub use disclosure::DisclosureEntry;
pub use export::{
    bundle_path_for, write_csv_header, write_csv_record, BundleLine, ExportFormat, ExportRow,
    BUNDLE_FORMAT, CSV_COLUMNS, UTF8_BOM,
};
pub use outcome::Outcome;
pub use record::{
    person_commitment, Hash, Items, Record, RecordFields, ENCODING_VERSION, SALT_LEN,
};
pub use seal::{append_seal, export_seal_bytes, UNSEALED_EXPORT};
pub use timestamp::{
    check_imprint, checkpoint_digest, decode_token, encode_token, request as timestamp_request,
    token_from_response, verify_token, TimestampError, TokenInfo, TsaCertificate,
    REQUEST_CONTENT_TYPE, RESPONSE_CONTENT_TYPE,
};
pub use verify::{
    verify_export, verify_export_files, ChainSummary, ChainVerifier, CheckpointTimestamp,
    ExportError, ExportReport, ExportTrust, TimestampFailure, VerifiedTimestamp,
};
