//! Wire behaviour a client would notice: every wire type survives a JSON
//! round trip, and every request type refuses malformed JSON and unknown
//! fields.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kakehashi_interfaces::envelope::{EnvelopeSuite, ReplyKeyPair};
use kakehashi_interfaces::individual_number::check_digit;
use kakehashi_interfaces::permit::{self, PermitAlgorithm};
use kakehashi_interfaces::*;
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Debug;
use time::{Date, Month, OffsetDateTime};

// ---------- strategies ----------

fn org_id() -> impl Strategy<Value = OrgId> {
    "[a-z][a-z0-9-]{1,20}[a-z0-9]".prop_map(|s| OrgId::new(s).unwrap())
}
fn flow_id() -> impl Strategy<Value = FlowId> {
    "[A-Za-z0-9._-]{1,64}".prop_map(|s| FlowId::new(s).unwrap())
}
fn procedure() -> impl Strategy<Value = ProcedureCode> {
    "[A-Za-z0-9._-]{1,64}".prop_map(|s| ProcedureCode::new(s).unwrap())
}
fn item_code() -> impl Strategy<Value = ItemCode> {
    "[a-z][a-z0-9._]{0,63}".prop_map(|s| ItemCode::new(s).unwrap())
}
fn person_code() -> impl Strategy<Value = PersonCode> {
    "[A-Za-z0-9_-]{8,64}".prop_map(|s| PersonCode::new(s).unwrap())
}
fn query_id() -> impl Strategy<Value = QueryId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| QueryId::new(s).unwrap())
}
fn permit_id() -> impl Strategy<Value = PermitId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| PermitId::new(s).unwrap())
}
fn key_id() -> impl Strategy<Value = KeyId> {
    "[A-Za-z0-9._-]{1,64}".prop_map(|s| KeyId::new(s).unwrap())
}
fn branch() -> impl Strategy<Value = BranchNumber> {
    (1u32..=99_999_999).prop_map(|n| BranchNumber::from_u32(n).unwrap())
}
fn individual_number() -> impl Strategy<Value = IndividualNumber> {
    "[0-9]{11}"
        .prop_map(|s| IndividualNumber::new(&format!("{s}{}", check_digit(&s).unwrap())).unwrap())
}
fn date() -> impl Strategy<Value = Date> {
    (1i32..=9999, 1u8..=12, 1u8..=28)
        .prop_map(|(y, m, d)| Date::from_calendar_date(y, Month::try_from(m).unwrap(), d).unwrap())
}
fn instant() -> impl Strategy<Value = OffsetDateTime> {
    (0i64..=253_402_300_799).prop_map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap())
}
fn text(max: usize) -> impl Strategy<Value = String> {
    // Letters, kana, kanji, digits and inner spaces; never blank.
    proptest::string::string_regex(&format!(
        "[A-Za-z0-9ぁ-んァ-ン一-龯][A-Za-z0-9ぁ-んァ-ン一-龯 ー-]{{0,{}}}",
        max - 1
    ))
    .unwrap()
}
fn item_value() -> impl Strategy<Value = ItemValue> {
    prop_oneof![
        ".{0,100}".prop_map(ItemValue::Text),
        any::<i64>().prop_map(ItemValue::from),
        any::<i32>().prop_map(|n| ItemValue::Number(
            serde_json::Number::from_f64(f64::from(n) / 100.0).unwrap()
        )),
        any::<bool>().prop_map(ItemValue::from),
    ]
}
fn items_map() -> impl Strategy<Value = BTreeMap<ItemCode, ItemValue>> {
    btree_map(item_code(), item_value(), 1..20)
}
fn item_list() -> impl Strategy<Value = Vec<ItemCode>> {
    btree_set(item_code(), 1..=64).prop_map(|s| s.into_iter().collect())
}
fn reply_key() -> impl Strategy<Value = ReplyPublicKey> {
    any::<[u8; 32]>()
        .prop_filter("not all zero", |b| b != &[0u8; 32])
        .prop_map(|b| ReplyPublicKey::from_bytes(b).unwrap())
}
fn b64(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    vec(any::<u8>(), len).prop_map(|b| URL_SAFE_NO_PAD.encode(b))
}
fn sealed() -> impl Strategy<Value = SealedEnvelope> {
    (b64(32..33), b64(16..200)).prop_map(|(enc, ciphertext)| SealedEnvelope {
        suite: EnvelopeSuite::X25519Sha256Aes256Gcm,
        enc,
        ciphertext,
    })
}
fn party() -> impl Strategy<Value = Party> {
    prop_oneof![
        org_id().prop_map(|org| Party::Org { org }),
        prop_oneof![
            Just(OrgKind::Union),
            Just(OrgKind::Municipality),
            Just(OrgKind::Agency)
        ]
        .prop_map(|kind| Party::Kind { kind }),
    ]
}
fn signing_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
}
fn claims() -> impl Strategy<Value = PermitClaims> {
    (
        (
            permit_id(),
            query_id(),
            key_id(),
            org_id(),
            org_id(),
            flow_id(),
            procedure(),
        ),
        (
            item_list(),
            person_code(),
            person_code(),
            reply_key(),
            instant(),
            0i64..86_400,
        ),
    )
        .prop_map(
            |(
                (permit_id, query_id, key_id, requester, provider, flow_id, procedure),
                (items, rp, pp, rk, at, ttl),
            )| {
                PermitClaims {
                    permit_id,
                    query_id,
                    key_id,
                    requester,
                    provider,
                    flow_id,
                    procedure,
                    items,
                    requester_person_code: rp,
                    provider_person_commitment: permit::provider_person_commitment(
                        &[9; permit::PROVIDER_PERSON_SALT_LEN],
                        pp.as_str(),
                    ),
                    reply_key_sha256: rk.sha256_hex(),
                    issued_at: at,
                    expires_at: at + time::Duration::seconds(ttl),
                }
            },
        )
}
fn signed_permit() -> impl Strategy<Value = SignedPermit> {
    claims().prop_map(|c| permit::sign(&signing_key(), c))
}
fn flow_entry() -> impl Strategy<Value = FlowEntry> {
    (
        flow_id(),
        procedure(),
        party(),
        party(),
        item_list(),
        any::<u64>(),
        text(100),
        date(),
        proptest::option::of(0i64..3650),
    )
        .prop_map(
            |(flow_id, procedure, requester, provider, items, mask, legal_basis, from, until)| {
                let sensitive_items = items
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> (i % 64) & 1 == 1)
                    .map(|(_, c)| c.clone())
                    .collect();
                FlowEntry {
                    flow_id,
                    procedure,
                    requester,
                    provider,
                    items,
                    sensitive_items,
                    legal_basis,
                    valid_from: from,
                    valid_until: until.and_then(|d| from.checked_add(time::Duration::days(d))),
                }
            },
        )
}
fn basic_facts() -> impl Strategy<Value = BasicFacts> {
    (
        text(200),
        prop_oneof![Just(Sex::Male), Just(Sex::Female), Just(Sex::Unknown)],
        date(),
        text(200),
    )
        .prop_map(|(n, s, d, a)| BasicFacts::new(n, s, d, a).unwrap())
}
fn line_issue() -> impl Strategy<Value = LineIssue> {
    (
        1u64..100_000,
        prop_oneof![
            Just(LineReason::InvalidInput),
            Just(LineReason::MissingIndividualNumber),
            Just(LineReason::IndividualNumberConflict),
            Just(LineReason::UnknownPerson),
            Just(LineReason::ItemNotAllowed),
            Just(LineReason::DuplicateInBatch),
        ],
        ".{0,80}",
    )
        .prop_map(|(line, reason, message)| LineIssue {
            line,
            reason,
            message,
        })
}
fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ErrorCode::ALL.to_vec())
}

// ---------- checks ----------

/// Serialize, deserialize, compare; then check that the same JSON with an
/// unknown field, truncated, or replaced by another JSON type is refused.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(&back, value);
    refuses_malformed::<T>(&json);
}

fn refuses_malformed<T: DeserializeOwned + Debug>(json: &str) {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    if let Some(map) = v.as_object_mut() {
        map.insert("zz_unknown".into(), serde_json::Value::from(1));
        assert!(
            serde_json::from_value::<T>(v).is_err(),
            "unknown field accepted: {json}"
        );
    }
    assert!(
        serde_json::from_str::<T>(&json[..json.len() - 1]).is_err(),
        "truncated JSON accepted"
    );
    for other in ["null", "[]", "42", "\"x\"", "{}"] {
        assert!(
            serde_json::from_str::<T>(other).is_err(),
            "{other} accepted"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn ids_round_trip(f in flow_id(), p in procedure(), i in item_code(), c in person_code(), q in query_id(), k in key_id(), b in branch(), o in org_id()) {
        for (json, s) in [
            (serde_json::to_string(&f).unwrap(), f.to_string()),
            (serde_json::to_string(&p).unwrap(), p.to_string()),
            (serde_json::to_string(&i).unwrap(), i.to_string()),
            (serde_json::to_string(&c).unwrap(), c.to_string()),
            (serde_json::to_string(&q).unwrap(), q.to_string()),
            (serde_json::to_string(&k).unwrap(), k.to_string()),
            (serde_json::to_string(&b).unwrap(), b.to_string()),
            (serde_json::to_string(&o).unwrap(), o.to_string()),
        ] {
            prop_assert_eq!(json, format!("\"{s}\""));
        }
        prop_assert_eq!(serde_json::from_str::<FlowId>(&serde_json::to_string(&f).unwrap()).unwrap(), f);
        prop_assert_eq!(serde_json::from_str::<ItemCode>(&serde_json::to_string(&i).unwrap()).unwrap(), i);
        prop_assert_eq!(serde_json::from_str::<PersonCode>(&serde_json::to_string(&c).unwrap()).unwrap(), c);
        prop_assert_eq!(serde_json::from_str::<BranchNumber>(&serde_json::to_string(&b).unwrap()).unwrap(), b);
    }

    #[test]
    fn individual_numbers(n in individual_number()) {
        let json = serde_json::to_string(&n).unwrap();
        prop_assert_eq!(serde_json::from_str::<IndividualNumber>(&json).unwrap(), n.clone());
        let debug = format!("{:?}", n);
        prop_assert!(!debug.contains(n.expose()));
        // Every other last digit is refused.
        let digits = n.expose();
        let last = digits.as_bytes()[11];
        for d in b'0'..=b'9' {
            if d != last {
                let bad = format!("{}{}", &digits[..11], d as char);
                prop_assert!(IndividualNumber::new(&bad).is_err());
            }
        }
    }

    #[test]
    fn query_request(flow in flow_id(), p in procedure(), o in org_id(), person in person_code(), items in item_list(), rk in reply_key()) {
        check(&QueryRequest { flow_id: flow, procedure: p, provider: o, person, items, reply_key: rk, requested_by: None });
    }

    #[test]
    fn query_response(permit in signed_permit(), env in sealed(), status in 0u8..4, at in instant()) {
        let status = [QueryStatus::Provided, QueryStatus::Pending, QueryStatus::Rejected, QueryStatus::Expired][status as usize];
        check(&QueryResponse {
            query_id: permit.claims.query_id.clone(),
            status,
            envelope: (status == QueryStatus::Provided).then_some(env),
            permit,
            expires_at: at,
            reason: (status == QueryStatus::Rejected).then(|| RejectionReason::new("根拠法令の範囲外").unwrap()),
            checkpoint: (status != QueryStatus::Expired).then(|| {
                let cp = kakehashi_interfaces::audit::Checkpoint::sign(7, [3; 32], "2026-04-01T09:00:01.000000Z".into(), &signing_key());
                kakehashi_interfaces::SignedCheckpoint::from_checkpoint(&cp).unwrap()
            }),
        });
    }

    #[test]
    fn permits_and_keys(permit in signed_permit(), kid in key_id()) {
        check(&permit);
        check(&permit.claims);
        let keys = PermitKeySet { keys: vec![PermitPublicKey::new(kid, &signing_key().verifying_key())] };
        check(&keys);
        prop_assert_eq!(keys.keys[0].algorithm, PermitAlgorithm::Ed25519);
    }

    #[test]
    fn envelopes_and_answers(env in sealed(), q in query_id(), f in flow_id(), o in org_id(), items in items_map()) {
        check(&env);
        check(&AnswerPayload { query_id: q, flow_id: f, provider: o, items });
    }

    #[test]
    fn persons(basic in basic_facts(), n in individual_number(), code in person_code(), b in proptest::option::of(branch()), created in any::<bool>(), issues in vec(line_issue(), 0..5), lost in proptest::option::of(date())) {
        check(&basic);
        check(&PersonRegistration { basic, individual_number: n, eligibility_lost_on: lost });
        let applied = vec![RegisteredPerson { line: 1, person_code: code, branch_number: b, created }];
        check(&RegistrationReport { applied, confirmation_list: issues });
    }

    #[test]
    fn copies(person in person_code(), items in items_map(), applied in any::<u64>(), replaced in any::<u64>(), rejected in vec(line_issue(), 0..5)) {
        check(&CopyDeposit { person, items });
        check(&DepositReport { applied, replaced, rejected });
    }

    #[test]
    fn flows(entries in vec(flow_entry(), 0..4), version in any::<u64>()) {
        for e in &entries {
            check(e);
        }
        check(&FlowListView { version, flows: entries });
    }

    #[test]
    fn errors_and_whoami(code in error_code(), message in ".{0,100}", rid in "[a-z0-9-]{1,40}", o in org_id(), name in text(50)) {
        check(&ErrorBody { code, message, request_id: rid });
        check(&WhoAmI { org_id: o, kind: OrgKind::Municipality, name, certificate_fingerprint: "ab".repeat(32) });
    }

    #[test]
    fn jsonl_never_panics(body in vec(any::<u8>(), 0..400)) {
        let out = parse_jsonl::<CopyDeposit>(&body);
        for (line, _) in &out {
            prop_assert!(*line >= 1);
        }
        let _ = parse_jsonl::<PersonRegistration>(&body);
        let _ = parse_json::<QueryRequest>(&body);
    }
}

// ---------- fixed cases ----------

const QUERY: &str = r#"{"flow_id":"row-80","procedure":"premium.assessment","provider":"city-kawagoe","person":"U0000001","items":["local_tax.income"],"reply_key":"REPLY"}"#;

fn query_json() -> String {
    QUERY.replace("REPLY", &ReplyKeyPair::generate().public().to_base64url())
}

#[test]
fn query_request_refusals() {
    let ok = query_json();
    assert!(serde_json::from_str::<QueryRequest>(&ok).is_ok());
    let many: Vec<String> = (0..65).map(|i| format!("\"i{i}\"")).collect();
    for bad in [
        ok.replace("[\"local_tax.income\"]", "[]"),
        ok.replace(
            "[\"local_tax.income\"]",
            "[\"local_tax.income\",\"local_tax.income\"]",
        ),
        ok.replace("[\"local_tax.income\"]", &format!("[{}]", many.join(","))),
        ok.replace("U0000001", "U01"),
        ok.replace("city-kawagoe", "City_Kawagoe"),
        ok.replace("\"reply_key\":\"", "\"reply_key\":\"x"),
        ok.replace("\"flow_id\":\"row-80\",", ""),
        ok.replace('}', ",\"person_number\":\"123456789018\"}"),
        ok.replace('{', "{{"),
    ] {
        assert!(serde_json::from_str::<QueryRequest>(&bad).is_err(), "{bad}");
    }
}

#[test]
fn registration_line_refusals() {
    let ok = r#"{"basic":{"name":"山田 太郎","sex":"male","birth_date":"1950-04-01","address":"埼玉県さいたま市"},"individual_number":"123456789018"}"#;
    assert!(serde_json::from_str::<PersonRegistration>(ok).is_ok());
    for (bad, secret) in [
        (ok.replace("123456789018", "123456789017"), "123456789017"),
        (ok.replace("123456789018", "12345678901"), "12345678901"),
        (ok.replace("123456789018", "1234567890180"), "1234567890180"),
        (ok.replace("123456789018", "12345678901a"), "12345678901a"),
        (
            ok.replace("123456789018", "１２３４５６７８９０１８"),
            "１２３４５６７８９０１８",
        ),
        (
            ok.replace("\"123456789018\"", "123456789018"),
            "123456789018",
        ),
        (
            ok.replace(",\"individual_number\":\"123456789018\"", ""),
            "123456789018",
        ),
        (
            ok.replace("\"sex\":\"male\"", "\"sex\":\"123456789018\""),
            "123456789018",
        ),
        (
            ok.replace(
                "\"address\":\"埼玉県さいたま市\"",
                "\"address\":\"埼玉県\",\"x\":\"123456789018\"",
            ),
            "123456789018",
        ),
    ] {
        let out = parse_jsonl::<PersonRegistration>(bad.as_bytes());
        let err = out[0].1.as_ref().unwrap_err();
        assert!(!err.to_string().contains(secret), "{err}");
    }
}

#[test]
fn deposit_line_refusals() {
    let ok = r#"{"person":"K0000001","items":{"local_tax.income":3200000,"name.kana":"ヤマダ","flag":true,"rate":0.25}}"#;
    let d: CopyDeposit = serde_json::from_str(ok).unwrap();
    assert_eq!(d.items.len(), 4);
    for bad in [
        ok.replace("3200000", "null"),
        ok.replace("3200000", "[1]"),
        ok.replace("3200000", "{\"a\":1}"),
        ok.replace("\"local_tax.income\"", "\"Local_Tax\""),
        r#"{"person":"K0000001","items":{}}"#.to_string(),
        ok.replace("ヤマダ", &"あ".repeat(4097)),
        ok.replace('}', ",\"x\":1}"),
    ] {
        assert!(serde_json::from_str::<CopyDeposit>(&bad).is_err(), "{bad}");
    }
    // A refused value is not echoed.
    let secret = ok.replace("3200000", "[\"very secret\"]");
    let out = parse_jsonl::<CopyDeposit>(secret.as_bytes());
    assert!(!out[0]
        .1
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("very secret"));
}

#[test]
fn secrets_are_not_debug_printed() {
    let n = IndividualNumber::new("123456789018").unwrap();
    assert_eq!(format!("{n:?}"), "IndividualNumber(****)");
    let v = ItemValue::text("山田 太郎").unwrap();
    assert!(!format!("{v:?}").contains("山田"));
    let v = ItemValue::from(3_200_000i64);
    assert!(!format!("{v:?}").contains("3200000"));
    let reg: PersonRegistration = serde_json::from_str(
        r#"{"basic":{"name":"山田 太郎","sex":"male","birth_date":"1950-04-01","address":"埼玉県"},"individual_number":"123456789018"}"#,
    )
    .unwrap();
    let debug = format!("{reg:?}");
    assert!(
        !debug.contains("123456789018") && !debug.contains("山田") && !debug.contains("1950"),
        "{debug}"
    );
    let kp = ReplyKeyPair::generate();
    let debug = format!("{kp:?}");
    assert!(!debug.contains(&URL_SAFE_NO_PAD.encode(&kp.secret_bytes()[..])));
    assert!(!debug.contains(&hex::encode(&kp.secret_bytes()[..])));
}
