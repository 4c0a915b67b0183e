//! The codec on the relay path: framing and OP_MSG parsing of typical
//! commands, and encoding the proxy's own replies.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use bson::{rawdoc, RawArrayBuf};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mongo_oidc_proxy::wire::{self, Frame, OpMsg};

fn find_reply(docs: usize) -> Vec<u8> {
    let mut batch = RawArrayBuf::new();
    for i in 0..docs {
        batch.push(rawdoc! { "_id": i as i64, "name": "a reasonably typical document", "n": 42.5 });
    }
    let body =
        rawdoc! { "cursor": { "id": 0_i64, "ns": "app.things", "firstBatch": batch }, "ok": 1.0 };
    wire::op_msg::encode(1, 2, 0, &body)
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("op_msg_parse");
    let find = wire::op_msg::encode(
        7,
        0,
        0,
        &rawdoc! { "find": "things", "filter": { "_id": 5 }, "$db": "app", "lsid": { "id": 1 } },
    );
    for (name, bytes) in [("find_command", find), ("reply_100_docs", find_reply(100))] {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let frame =
            Frame::from_bytes(Bytes::from(bytes), wire::DEFAULT_MAX_MESSAGE_SIZE).expect("frame");
        g.bench_with_input(BenchmarkId::from_parameter(name), &frame, |b, f| {
            b.iter(|| {
                let msg = OpMsg::parse(&f.bytes).expect("parse");
                msg.command_name().expect("name").len()
            })
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let reply = rawdoc! { "conversationId": 1, "done": true, "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![] }, "ok": 1.0 };
    c.bench_function("op_msg_encode_sasl_reply", |b| {
        b.iter(|| wire::op_msg::encode(1, 2, 0, &reply).len())
    });
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
