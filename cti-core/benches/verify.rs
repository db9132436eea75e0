//! Webhook verification throughput: `verify_jwt` of a realistic call event, verify + normalize
//! (the text path the pipeline runs, and the `Value` path),
//! and the API key lookup hash.
//!
//! Run with `cargo bench -p cti-core --bench verify`.

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_main};
use cti_core::keys::{KeyHasher, generate_key};
use cti_core::normalize::{normalize, normalize_json};
use cti_core::verify::{WebhookVerifier, sign_jwt_hs256};

/// The allocator of the reference server (`cti-server`), so the figures are what it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONNECTED: &str =
    include_str!("../../fixtures/dialpad/events/call_inbound_03_connected.json");
const SECRET: &[u8] = b"bench-webhook-secret-0123456789abcdef";

fn signed_token() -> String {
    let payload: serde_json::Value =
        serde_json::from_str(CONNECTED).unwrap_or_else(|e| panic!("fixture is not JSON: {e}"));
    sign_jwt_hs256(&payload, SECRET)
}

fn bench_verify(c: &mut Criterion) {
    let token = signed_token();
    let verifier = WebhookVerifier::default();
    let now = Utc::now();
    // Sanity check outside the timed loop.
    if let Err(e) = verifier.verify_jwt(token.as_bytes(), &[SECRET], now) {
        panic!("bench token does not verify: {e}");
    }

    let mut group = c.benchmark_group("webhook");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_jwt_call_event", |b| {
        b.iter(|| verifier.verify_jwt(black_box(token.as_bytes()), &[SECRET], now))
    });
    group.bench_function("verify_jwt_two_secrets", |b| {
        let secrets: [&[u8]; 2] = [b"previous-secret-being-rotated-out", SECRET];
        b.iter(|| verifier.verify_jwt(black_box(token.as_bytes()), &secrets, now))
    });
    group.bench_function("verify_jwt_text_call_event", |b| {
        b.iter(|| verifier.verify_jwt_text(black_box(token.as_bytes()), &[SECRET], now))
    });
    // What the pipeline runs: the verified text is stored and normalised without a `Value`.
    group.bench_function("verify_jwt_and_normalize", |b| {
        b.iter(|| {
            verifier
                .verify_jwt_text(black_box(token.as_bytes()), &[SECRET], now)
                .map(|payload| normalize_json(&payload, now))
        })
    });
    // The same through `serde_json::Value` (the API for callers that want a tree).
    group.bench_function("verify_jwt_and_normalize_value", |b| {
        b.iter(|| {
            verifier
                .verify_jwt(black_box(token.as_bytes()), &[SECRET], now)
                .map(|payload| normalize(&payload, now))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("api_key");
    group.throughput(Throughput::Elements(1));
    let key = generate_key();
    let peppered = KeyHasher::new(Some(b"bench-pepper-0123456789abcdef0123"));
    let plain = KeyHasher::new(None);
    group.bench_function("lookup_hmac_pepper", |b| {
        b.iter(|| peppered.lookup(black_box(key.expose())))
    });
    group.bench_function("lookup_sha256", |b| {
        b.iter(|| plain.lookup(black_box(key.expose())))
    });
    group.finish();
}

mod group {
    //! The criterion group (its generated function has no doc comment).
    #![allow(missing_docs)]
    use super::bench_verify;
    criterion::criterion_group!(benches, bench_verify);
}

criterion_main!(group::benches);
