//! **A benchmark stand-in, not a MongoDB.** A canned-reply backend that
//! answers just enough of the wire protocol for the relays to be measured
//! instead of the database behind them:
//!
//! - `hello` / `isMaster` / `ismaster`, `buildInfo`, `ping`, `endSessions`;
//! - SCRAM-SHA-256 (`saslStart` / `saslContinue`) for exactly one user, with
//!   the real proof checks, so the proxy's backend sign-in and the clients'
//!   end-to-end sign-in do the same work as against mongod;
//! - `find` on collection `small` (one 128 B document), `blobs` (one 16 KiB
//!   document) or `huge` (one document of just under 16 MiB);
//! - `insert` (answers `n: 1` without looking at the documents), `getMore`
//!   (an exhausted cursor).
//!
//! Every reply but SCRAM's is encoded once at start-up; answering costs one
//! copy and a patched `responseTo`. Nothing is stored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use bson::{rawdoc, RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use mongo_oidc_proxy::wire::{self, op_msg, OpMsg};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::{small_doc, BIG_DOC, BLOB_DOC};

const ITERATIONS: u32 = 4096;
const MAX_MESSAGE: usize = 48_000_000;

/// What one user's SCRAM verifier needs, derived once.
struct Keys {
    user: String,
    salt_b64: String,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

struct Replies {
    hello: Vec<u8>,
    build_info: Vec<u8>,
    ok: Vec<u8>,
    find_small: Vec<u8>,
    find_blob: Vec<u8>,
    find_huge: Vec<u8>,
    insert: Vec<u8>,
    get_more: Vec<u8>,
    unauthorized: Vec<u8>,
    no_such_command: Vec<u8>,
    auth_failed: Vec<u8>,
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

fn encode(body: &RawDocument) -> Vec<u8> {
    op_msg::encode(0, 0, 0, body)
}

fn find_reply(ns: &str, doc: RawDocumentBuf) -> Vec<u8> {
    encode(&rawdoc! { "cursor": { "id": 0_i64, "ns": ns, "firstBatch": [doc] }, "ok": 1.0 })
}

impl Replies {
    fn new() -> Replies {
        let hello = rawdoc! {
            "helloOk": true, "isWritablePrimary": true, "ismaster": true,
            "maxBsonObjectSize": 16_777_216, "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000, "logicalSessionTimeoutMinutes": 30,
            "connectionId": 1, "minWireVersion": 0, "maxWireVersion": 21,
            "readOnly": false, "ok": 1.0,
        };
        let err = |code: i32, name: &str, msg: &str| {
            encode(&rawdoc! { "ok": 0.0, "errmsg": msg, "code": code, "codeName": name })
        };
        Replies {
            hello: encode(&hello),
            build_info: encode(&rawdoc! {
                "version": "7.0.0-canned", "versionArray": [7, 0, 0, 0], "ok": 1.0,
            }),
            ok: encode(&rawdoc! { "ok": 1.0 }),
            find_small: find_reply("bench.small", small_doc(0)),
            find_blob: find_reply("bench.blobs", BLOB_DOC.doc()),
            find_huge: find_reply("bench.huge", BIG_DOC.doc()),
            insert: encode(&rawdoc! { "n": 1, "ok": 1.0 }),
            get_more: encode(&rawdoc! {
                "cursor": { "id": 0_i64, "ns": "bench.small", "nextBatch": [] }, "ok": 1.0,
            }),
            unauthorized: err(13, "Unauthorized", "command requires authentication"),
            no_such_command: err(59, "CommandNotFound", "no such command (canned backend)"),
            auth_failed: err(18, "AuthenticationFailed", "Authentication failed."),
        }
    }
}

pub struct Canned {
    pub port: u16,
    /// Connections open now and the most open at once since the last
    /// [`Canned::reset_peak`]: what a relay holds on its backend.
    pub open: Arc<AtomicUsize>,
    pub peak: Arc<AtomicUsize>,
}

impl Canned {
    /// Starts a new peak from the connections open now.
    pub fn reset_peak(&self) {
        self.peak
            .store(self.open.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Counts a served connection as open until it is dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Listens on a free loopback port and serves until the runtime ends.
pub async fn start(user: &str, password: &str) -> Canned {
    let salt: [u8; 16] = rand::random();
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, ITERATIONS, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let keys = Arc::new(Keys {
        user: user.to_string(),
        salt_b64: base64::engine::general_purpose::STANDARD.encode(salt),
        stored_key: Sha256::digest(client_key).into(),
        server_key: hmac(&salted, b"Server Key"),
    });
    let replies = Arc::new(Replies::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind canned");
    let port = listener.local_addr().expect("local addr").port();
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (counts, most) = (Arc::clone(&open), Arc::clone(&peak));
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            let now = counts.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let counted = Counted(Arc::clone(&counts));
            let (keys, replies) = (Arc::clone(&keys), Arc::clone(&replies));
            tokio::spawn(async move {
                serve(sock, keys, replies).await;
                drop(counted);
            });
        }
    });
    Canned { port, open, peak }
}

/// SCRAM conversation state between `saslStart` and `saslContinue`.
enum Auth {
    None,
    Started { auth_prefix: String, nonce: String },
    Done,
}

async fn serve(mut sock: TcpStream, keys: Arc<Keys>, replies: Arc<Replies>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut auth = Auth::None;
    while let Ok(Some(frame)) = wire::read_frame(&mut sock, &mut buf, MAX_MESSAGE).await {
        let Ok(msg) = OpMsg::parse(&frame.bytes) else {
            return;
        };
        let name = msg.command_name().unwrap_or("");
        let signed_in = matches!(auth, Auth::Done);
        let canned: &[u8] = match name {
            "hello" | "isMaster" | "ismaster" => &replies.hello,
            "buildInfo" | "buildinfo" => &replies.build_info,
            "ping" | "endSessions" => &replies.ok,
            "saslStart" | "saslContinue" => {
                let reply = sasl(name, msg.body, &keys, &mut auth).unwrap_or_else(|| {
                    auth = Auth::None;
                    replies.auth_failed.clone()
                });
                send(&mut sock, &mut out, &reply, frame.header.request_id).await;
                continue;
            }
            _ if !signed_in => &replies.unauthorized,
            "find" => match msg.body.get_str("find").unwrap_or("") {
                "small" => &replies.find_small,
                "blobs" => &replies.find_blob,
                "huge" => &replies.find_huge,
                _ => &replies.no_such_command,
            },
            "insert" => &replies.insert,
            "getMore" => &replies.get_more,
            "killCursors" => &replies.ok,
            _ => &replies.no_such_command,
        };
        if !send(&mut sock, &mut out, canned, frame.header.request_id).await {
            return;
        }
        // A one-off 16 MiB reply should not pin 16 MiB to this connection.
        if out.capacity() > 1 << 20 {
            out = Vec::new();
        }
        if buf.capacity() > 1 << 20 {
            buf = BytesMut::new();
        }
    }
}

/// Writes `pre` with `responseTo` set to `rid`.
async fn send(sock: &mut TcpStream, out: &mut Vec<u8>, pre: &[u8], rid: i32) -> bool {
    out.clear();
    out.extend_from_slice(pre);
    out[8..12].copy_from_slice(&rid.to_le_bytes());
    sock.write_all(out).await.is_ok()
}

fn payload(body: &RawDocument) -> Option<&[u8]> {
    body.get_binary("payload").ok().map(|b| b.bytes)
}

fn sasl_reply(done: bool, payload: Vec<u8>) -> Vec<u8> {
    encode(&rawdoc! {
        "conversationId": 1, "done": done,
        "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: payload },
        "ok": 1.0,
    })
}

/// One SCRAM-SHA-256 step (RFC 5802 / 7677); `None` is a failed sign-in.
fn sasl(name: &str, body: &RawDocument, keys: &Keys, auth: &mut Auth) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(payload(body)?).ok()?;
    match (name, &*auth) {
        ("saslStart", _) => {
            if body.get_str("mechanism").ok()? != "SCRAM-SHA-256" {
                return None;
            }
            let bare = text.strip_prefix("n,,")?;
            let mut user = None;
            let mut cnonce = None;
            for part in bare.split(',') {
                if let Some(v) = part.strip_prefix("n=") {
                    user = Some(v);
                } else if let Some(v) = part.strip_prefix("r=") {
                    cnonce = Some(v);
                }
            }
            if user? != keys.user {
                return None;
            }
            let snonce: [u8; 18] = rand::random();
            let nonce = format!(
                "{}{}",
                cnonce?,
                base64::engine::general_purpose::STANDARD.encode(snonce)
            );
            let first = format!("r={nonce},s={},i={ITERATIONS}", keys.salt_b64);
            *auth = Auth::Started {
                auth_prefix: format!("{bare},{first}"),
                nonce,
            };
            Some(sasl_reply(false, first.into_bytes()))
        }
        ("saslContinue", Auth::Started { auth_prefix, nonce }) => {
            let (without_proof, proof) = text.rsplit_once(",p=")?;
            let r = without_proof
                .split(',')
                .find_map(|p| p.strip_prefix("r="))?;
            if r != nonce {
                return None;
            }
            let proof = base64::engine::general_purpose::STANDARD
                .decode(proof)
                .ok()?;
            let auth_message = format!("{auth_prefix},{without_proof}");
            let signature = hmac(&keys.stored_key, auth_message.as_bytes());
            if proof.len() != 32 {
                return None;
            }
            let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
            if <[u8; 32]>::from(Sha256::digest(&client_key)) != keys.stored_key {
                return None;
            }
            let v = hmac(&keys.server_key, auth_message.as_bytes());
            *auth = Auth::Done;
            let fin = format!("v={}", base64::engine::general_purpose::STANDARD.encode(v));
            Some(sasl_reply(true, fin.into_bytes()))
        }
        // A client that ignored skipEmptyExchange sends one empty round.
        ("saslContinue", Auth::Done) if text.is_empty() => Some(sasl_reply(true, Vec::new())),
        _ => None,
    }
}
