//! `wire::Request::decode` over messages captured from real drivers (the
//! fuzz seeds): each driver's handshake, find, insert and getMore as it
//! really sends them, so the figures track what the proxy decodes per
//! relayed message rather than a hand-made document.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mongo_oidc_proxy::wire::Request;

/// (driver, command, seed file). The node driver's captures have no getMore;
/// node and mongosh open with a legacy OP_QUERY `ismaster`.
const SEEDS: &[(&str, &str, &str)] = &[
    ("pymongo", "hello", "pymongo-scram-fd5e7b54e663"),
    ("pymongo", "find", "pymongo-oidc-d99308da5cd4"),
    ("pymongo", "insert", "pymongo-oidc-416d66d8d709"),
    ("pymongo", "getMore", "pymongo-oidc-5de543598a9b"),
    ("node", "ismaster", "node-oidc-e2832561f535"),
    ("node", "find", "node-oidc-8935bdd895f1"),
    ("node", "insert", "node-oidc-1dce23d8766e"),
    ("mongosh", "ismaster", "mongosh-oidc-61d93fc66a2f"),
    ("mongosh", "find", "mongosh-scram-cf53a58b5775"),
    ("mongosh", "insert", "mongosh-oidc-4884a035786e"),
    ("mongosh", "getMore", "mongosh-scram-1b28852e1e43"),
    ("rust", "hello", "rust-scram-a55324eb3b0d"),
    ("rust", "find", "rust-oidc-439ab22a627b"),
    ("rust", "insert", "rust-oidc-65922b4bfe28"),
    ("rust", "getMore", "rust-oidc-932a8e8d8504"),
];

fn load(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds/request")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_decode");
    for (driver, command, file) in SEEDS {
        let bytes = load(file);
        // A seed that stopped decoding (or changed command) would bench an
        // error path; refuse it so the figures stay comparable.
        let name = Request::decode(&bytes)
            .ok()
            .and_then(|r| r.command.map(|c| c.name.to_string()));
        assert_eq!(name.as_deref(), Some(*command), "{file}");
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new(*driver, command), &bytes, |b, bytes| {
            b.iter(|| Request::decode(std::hint::black_box(bytes)).is_ok())
        });
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
