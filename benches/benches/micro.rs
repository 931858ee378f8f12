//! Micro-benchmarks of the pure, per-query work of the broker: flow check,
//! keyed lookup hash, HPKE seal/open, permit sign/verify, at-rest AES-256-GCM
//! and the provision record's encoding and hashes; plus all of one query's
//! cryptography together (the crypto floor's unit).
//!
//! Person-code mapping itself is one indexed SQL lookup (copies::read_for_query, joined with the copy read)
//! with no CPU-heavy part; its pure cousin, the HMAC `Keyring::lookup_hash`
//! used to find Individual Numbers at registration, is measured instead.
#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use kakehashi_benches::floor::Fixture;

fn fixture() -> Fixture {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the keyring fixture");
    runtime
        .block_on(Fixture::new())
        .expect("the fixture: a keyring on a temporary SQLite store")
}

fn micro(c: &mut Criterion) {
    let f = fixture();
    let sealed = f.seal().expect("seal the sample answer");
    let permit = f.sign();
    let cipher = f.encrypt().expect("encrypt the sample copy");
    assert!(
        f.flow_check(),
        "the sample query is on the sample flow list"
    );
    assert!(f.open(&sealed).is_ok(), "the sample envelope opens");
    assert!(f.verify(&permit).is_ok(), "the sample permit verifies");
    assert!(!cipher.is_empty());

    let mut g = c.benchmark_group("policy");
    g.bench_function("flow_check_allowed", |b| {
        b.iter(|| black_box(f.flow_check()))
    });
    g.bench_function("flow_check_refused", |b| {
        b.iter(|| black_box(f.flow_check_refused()))
    });
    g.finish();

    let mut g = c.benchmark_group("identity");
    g.bench_function("lookup_hash_hmac_sha256", |b| {
        b.iter(|| black_box(f.lookup_hash()))
    });
    g.finish();

    let mut g = c.benchmark_group("envelope");
    g.bench_function("hpke_seal_answer", |b| b.iter(|| black_box(f.seal())));
    g.bench_function("hpke_open_answer", |b| {
        b.iter(|| black_box(f.open(&sealed)))
    });
    g.finish();

    let mut g = c.benchmark_group("permit");
    g.bench_function("ed25519_sign", |b| b.iter(|| black_box(f.sign())));
    g.bench_function("ed25519_verify", |b| {
        b.iter(|| black_box(f.verify(&permit)))
    });
    g.finish();

    let mut g = c.benchmark_group("at_rest");
    g.bench_function("aes256gcm_encrypt_copy", |b| {
        b.iter(|| black_box(f.encrypt()))
    });
    g.bench_function("aes256gcm_decrypt_copy", |b| {
        b.iter(|| black_box(f.decrypt()))
    });
    g.finish();

    let mut g = c.benchmark_group("record");
    g.bench_function("canonical_bytes", |b| {
        b.iter(|| black_box(f.record_encode()))
    });
    g.bench_function("commitments_leaf_chain_hash", |b| {
        b.iter(|| black_box(f.record_hash()))
    });
    g.finish();

    let mut g = c.benchmark_group("query");
    g.bench_function("crypto_floor_unit", |b| {
        b.iter(|| black_box(f.query_crypto()))
    });
    g.finish();
}

criterion_group!(benches, micro);
criterion_main!(benches);
