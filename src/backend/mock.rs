//! A scripted loopback server for unit tests of what a misbehaving or
//! unusual backend can send (secondaries, bad SASL replies, bad framing).
//! The happy paths are tested against real SecantusDB in `tests/`.

use std::sync::Arc;

use bson::{RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::wire::{self, op_msg, OpMsg};

pub(crate) enum MockReply {
    Doc(RawDocumentBuf),
    /// A reply whose responseTo names some other request.
    WrongResponseTo(RawDocumentBuf),
    /// Bytes of an OP_REPLY-shaped message instead of OP_MSG.
    WrongOpcode,
    Close,
}

pub(crate) type Handler = Arc<dyn Fn(&str, &RawDocument) -> MockReply + Send + Sync>;

/// Serves `handler` on a loopback port until the test's runtime ends.
pub(crate) async fn serve(handler: Handler) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while let Ok(Some(frame)) = wire::read_frame(&mut sock, &mut buf, 1 << 20).await {
                    let Ok(msg) = OpMsg::parse(&frame.bytes) else {
                        return;
                    };
                    let name = msg.command_name().unwrap_or("");
                    let rid = frame.header.request_id;
                    let out = match handler(name, msg.body) {
                        MockReply::Doc(d) => op_msg::encode(1, rid, 0, &d),
                        MockReply::WrongResponseTo(d) => op_msg::encode(1, rid + 100, 0, &d),
                        MockReply::WrongOpcode => {
                            let mut v = op_msg::encode(1, rid, 0, &bson::rawdoc! { "ok": 1 });
                            v[12..16].copy_from_slice(&1i32.to_le_bytes());
                            v
                        }
                        MockReply::Close => return,
                    };
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A hello reply with the usual limits plus `extra` fields.
pub(crate) fn hello(extra: RawDocumentBuf) -> RawDocumentBuf {
    let mut d = bson::rawdoc! {
        "maxWireVersion": 21, "minWireVersion": 0, "maxBsonObjectSize": 16777216,
        "maxMessageSizeBytes": 48000000, "maxWriteBatchSize": 100000, "ok": 1.0,
    };
    for (k, v) in extra.iter().flatten() {
        d.append(k, bson::RawBson::from(v));
    }
    d
}
