//! The fuzz targets as library functions, one per parser that faces the
//! network or the operator: `fuzz/fuzz_targets/*.rs` are thin wrappers
//! around them, and `tests/fuzz_replay.rs` feeds them every seed and corpus
//! file on the stable toolchain, so the harnesses keep building and old
//! crashes stay fixed without nightly.
//!
//! Every function takes arbitrary bytes and must never panic except through
//! one of its own assertions: those state the invariants (round trips,
//! agreement between two readings, the session's safety rules). Inputs that
//! need knobs (a size limit, a signing key, a control event) take them from
//! the first byte(s), as documented on each function and in fuzz/README.md.

// A fuzz target reports a finding by panicking, and nothing in the proxy
// calls this module: the no-panic lints do not apply here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bson::raw::RawBsonRef;
use bson::{rawdoc, RawDocument};
use bytes::{Bytes, BytesMut};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, ReadBuf};

use crate::auth::jwks::{self, KeyKind, KeySet};
use crate::auth::jwt::{self, ClaimRules};
use crate::auth::oidc::{self, ClientStep, PayloadEncoding, Pending, StepOutcome};
use crate::auth::{AuthFailure, Identity, IdpRegistry};
use crate::authz::{BackendIdentity, Grants, Secrets};
use crate::backend::ServerInfo;
use crate::config::{Config, GrantConfig, IdentityProviderConfig};
use crate::session::decide::{self, Action, Inputs, Refused, Verified};
use crate::session::handshake;
use crate::session::phase::{Access, Expiry, Flow, Phase, Policy, SignedIn};
use crate::wire::{
    self, Command, Cursors, DecodeError, Frame, MsgHeader, Op, OpCode, OpMsg, OpQuery, Request,
    WireError, HEADER_LEN,
};

/// A fuzz target: arbitrary bytes in, a panic only for a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test and the fuzz crate.
pub const TARGETS: [(&str, Target); 9] = [
    ("frames", frames),
    ("wire", wire),
    ("request", request),
    ("sasl", sasl),
    ("hello", hello),
    ("jwt", jwt),
    ("jwks", jwks),
    ("config", config),
    ("session", session),
];

// ---------------------------------------------------------------------------
// Driving futures that never wait
// ---------------------------------------------------------------------------

/// Runs a future whose every `Pending` is followed by progress (the
/// in-memory reader below; `oidc::start` for a principal step, which never
/// awaits). A future that stays pending is a hang, reported as one.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("a future that cannot wait on anything stayed pending");
}

/// An in-memory stream that hands out at most `chunk` bytes per read (all it
/// has when 0) and, when `stall`, answers every other read with `Pending`.
struct Trickle<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
    stall: bool,
    stalled: bool,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stall && !self.stalled {
            self.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.stalled = false;
        let data = self.data;
        let rest = data.get(self.pos..).unwrap_or_default();
        let mut n = rest.len().min(buf.remaining());
        if self.chunk > 0 {
            n = n.min(self.chunk);
        }
        buf.put_slice(&rest[..n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------
// frames: the frame reader
// ---------------------------------------------------------------------------

/// The frame reader's growth step (`frame::READ_CHUNK`).
const READ_CHUNK: usize = 64 * 1024;

const FRAME_LIMITS: [usize; 6] = [
    HEADER_LEN,
    64,
    1024,
    16 * 1024,
    128 * 1024,
    wire::DEFAULT_MAX_MESSAGE_SIZE,
];

/// What one pass of the frame reader over a stream produced.
#[derive(Debug, PartialEq)]
struct FrameRun {
    frames: Vec<Bytes>,
    end: Result<(), WireError>,
}

fn read_all_frames(stream: &[u8], max: usize, chunk: usize, stall: bool) -> FrameRun {
    let mut reader = Trickle {
        data: stream,
        pos: 0,
        chunk,
        stall,
        stalled: false,
    };
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut consumed = 0usize;
    loop {
        let result = block_on(wire::read_frame(&mut reader, &mut buf, max));
        // Memory grows only as bytes arrive, whatever length a header declares.
        assert!(
            buf.capacity() <= 4 * (reader.pos + READ_CHUNK),
            "read buffer of {} bytes after {} bytes arrived",
            buf.capacity(),
            reader.pos
        );
        match result {
            Ok(Some(frame)) => {
                let len = frame.bytes.len();
                assert_eq!(len, frame.header.message_length as usize);
                assert!(
                    (HEADER_LEN..=max).contains(&len),
                    "frame of {len} bytes, limit {max}"
                );
                assert_eq!(
                    stream.get(consumed..consumed + len),
                    Some(&frame.bytes[..]),
                    "frames are the stream's bytes, in order"
                );
                assert_eq!(MsgHeader::parse(&frame.bytes, max), Ok(frame.header));
                consumed += len;
                frames.push(frame.bytes);
            }
            Ok(None) => {
                assert_eq!(consumed, stream.len(), "clean end only after the last byte");
                return FrameRun {
                    frames,
                    end: Ok(()),
                };
            }
            Err(e) => {
                let rest = stream.get(consumed..).unwrap_or_default();
                match &e {
                    WireError::LengthTooSmall(_) | WireError::LengthTooLarge { .. } => {
                        let head = rest.get(..HEADER_LEN).expect("a bad length was read");
                        assert_eq!(MsgHeader::parse(head, max), Err(e.clone()));
                    }
                    WireError::UnexpectedEof => {
                        assert!(!rest.is_empty(), "EOF between messages is a clean end");
                        let declared = MsgHeader::parse(rest, max)
                            .map_or(HEADER_LEN, |h| h.message_length as usize);
                        assert!(rest.len() < declared, "EOF with a whole message left");
                    }
                    other => panic!("the in-memory reader cannot fail with {other:?}"),
                }
                return FrameRun {
                    frames,
                    end: Err(e),
                };
            }
        }
    }
}

/// `wire::read_frame` over an in-memory stream of messages back to back.
/// Byte 0 picks the size limit, byte 1 how the stream trickles in (low 7
/// bits: bytes per read, 0 = all at once; high bit: every other read is
/// `Pending`); the rest is the stream. Every frame must be the stream's next
/// bytes, and the result must not depend on how the bytes arrived. Each
/// frame then goes through the message parsers, as in [`wire`].
pub fn frames(data: &[u8]) {
    let [limit, trickle, stream @ ..] = data else {
        return;
    };
    let max = FRAME_LIMITS[*limit as usize % FRAME_LIMITS.len()];
    let chunk = (*trickle & 0x7f) as usize;
    let run = read_all_frames(stream, max, chunk, trickle & 0x80 != 0);
    let whole = read_all_frames(stream, max, 0, false);
    assert_eq!(run, whole, "the frames depend on how the bytes arrived");
    for frame in &run.frames {
        check_message(frame);
    }
}

// ---------------------------------------------------------------------------
// wire: OP_MSG, OP_QUERY, OP_REPLY
// ---------------------------------------------------------------------------

/// One message (header included) through the header check and the OP_MSG,
/// OP_QUERY and OP_REPLY parsers. Re-encoding must give the same bytes
/// wherever the encoders can express the message.
pub fn wire(data: &[u8]) {
    if Frame::from_bytes(Bytes::copy_from_slice(data), 1 << 20).is_ok() {
        check_message(data);
    }
}

fn check_message(bytes: &[u8]) {
    let Ok(header) = MsgHeader::parse(bytes, usize::MAX) else {
        return;
    };
    match header.op_code {
        OpCode::Msg => check_op_msg(&header, bytes),
        OpCode::Query => check_op_query(&header, bytes),
        OpCode::Reply => check_op_reply(&header, bytes),
        _ => {}
    }
}

fn check_op_msg(header: &MsgHeader, bytes: &[u8]) {
    let Ok(msg) = OpMsg::parse(bytes) else {
        return;
    };
    let _ = msg.command_name();
    let mut walked = 0;
    for seq in msg.sequences() {
        walked += 1;
        for doc in seq.documents() {
            // parse validated every document of every sequence.
            let doc = doc.expect("a document that parse accepted");
            let _ = doc.iter().count();
        }
    }
    assert_eq!(walked, msg.sequence_count());
    assert!(walked <= wire::op_msg::MAX_SEQUENCES);
    if walked == 0 && !msg.flags.checksum_present() {
        let again =
            wire::op_msg::encode(header.request_id, header.response_to, msg.flags.0, msg.body);
        assert_eq!(again, bytes, "OP_MSG round trip");
    }
}

fn check_op_query(header: &MsgHeader, bytes: &[u8]) {
    let Ok(q) = OpQuery::parse(bytes) else {
        return;
    };
    let _ = wire::op_msg::first_key(q.query);
    if let Some(db) = q.command_database() {
        assert_eq!(format!("{db}.$cmd"), q.full_collection_name);
    }
    let plain_len =
        HEADER_LEN + 4 + q.full_collection_name.len() + 1 + 8 + q.query.as_bytes().len();
    if header.response_to == 0
        && q.flags == 0
        && q.number_to_skip == 0
        && q.number_to_return == -1
        && plain_len == bytes.len()
    {
        let again =
            wire::op_query::encode_query(header.request_id, q.full_collection_name, q.query);
        assert_eq!(again, bytes, "OP_QUERY round trip");
    }
}

fn check_op_reply(header: &MsgHeader, bytes: &[u8]) {
    let Ok(doc) = wire::op_query::parse_reply(bytes) else {
        return;
    };
    let fields = bytes.get(HEADER_LEN..HEADER_LEN + 20);
    let mut plain = [0u8; 20];
    plain[16..].copy_from_slice(&1i32.to_le_bytes());
    if fields == Some(&plain[..]) && HEADER_LEN + 20 + doc.as_bytes().len() == bytes.len() {
        let again = wire::op_query::encode_reply(header.request_id, header.response_to, doc);
        assert_eq!(again, bytes, "OP_REPLY round trip");
    }
}

// ---------------------------------------------------------------------------
// request: the decoder and the decide step for fixed phases
// ---------------------------------------------------------------------------

/// Backend users of the fixed phases and grants: no client-visible text may
/// ever name them.
const BACKEND_USERS: [&str; 3] = ["fz_backend_rw", "fz_backend_ro", "fz_backend_admin"];
const BACKEND_PASSWORD: &str = "fz-backend-secret";

fn fixed_identity(user: &str, expires_at: u64) -> Identity {
    Identity {
        idp: 0,
        principal: user.into(),
        user: format!("test/{user}"),
        roles: vec!["test/writers".into()],
        expires_at,
        log_claims: vec![],
    }
}

fn fixed_signed_in(access: Access, expired: Option<Expiry>) -> SignedIn {
    SignedIn {
        identity: fixed_identity("alice", u64::MAX),
        flow: Flow::Machine,
        access,
        idp_fingerprint: 1,
        key_generation: Some(0),
        runtime_version: 1,
        signed_in_at: SystemTime::UNIX_EPOCH,
        expired,
    }
}

fn fixed_granted() -> Access {
    Access::Granted {
        grant: 0,
        backend: std::sync::Arc::new(BackendIdentity {
            user: BACKEND_USERS[0].into(),
            password: BACKEND_PASSWORD.into(),
        }),
        expires: None,
        admin: false,
    }
}

/// One phase of every kind the decide step distinguishes.
fn fixed_phases() -> &'static [Phase] {
    static PHASES: OnceLock<Vec<Phase>> = OnceLock::new();
    PHASES.get_or_init(|| {
        let pending = Pending { idp: 0, hint: None };
        vec![
            Phase::Anonymous,
            Phase::Authenticating {
                pending: pending.clone(),
                previous: None,
            },
            Phase::SignedIn(Box::new(fixed_signed_in(fixed_granted(), None))),
            Phase::SignedIn(Box::new(fixed_signed_in(Access::Refused, None))),
            Phase::SignedIn(Box::new(fixed_signed_in(
                fixed_granted(),
                Some(Expiry::TokenExpired),
            ))),
            Phase::Authenticating {
                pending,
                previous: Some(Box::new(fixed_signed_in(fixed_granted(), None))),
            },
        ]
    })
}

/// A live sign-in with a grant: the only phase that may relay.
fn may_relay(phase: &Phase) -> bool {
    phase
        .signed_in()
        .is_some_and(|s| s.expired.is_none() && matches!(s.access, Access::Granted { .. }))
}

/// The command document of a message as the decoder should have read it.
fn command_document(bytes: &[u8]) -> Option<&RawDocument> {
    let header = MsgHeader::parse(bytes, usize::MAX).ok()?;
    match header.op_code {
        OpCode::Msg => Some(OpMsg::parse(bytes).ok()?.body),
        OpCode::Query => {
            let q = OpQuery::parse(bytes).ok()?;
            q.command_database()?;
            Some(match q.query.get("$query") {
                Ok(Some(RawBsonRef::Document(inner))) => inner,
                _ => q.query,
            })
        }
        _ => None,
    }
}

/// How often `key` occurs in a document, and whether the whole document
/// could be walked (counting stops at the first malformed element).
fn key_count(doc: &RawDocument, key: &str) -> (usize, bool) {
    let mut n = 0;
    for element in doc.iter() {
        let Ok((k, _)) = element else {
            return (n, false);
        };
        n += usize::from(k.as_str() == key);
    }
    (n, true)
}

const GUARDED: [&str; 6] = [
    "$db",
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "cursors",
];

fn check_decoded(req: &Request<'_>, data: &[u8]) {
    assert!(
        std::ptr::eq(req.bytes, data),
        "the request keeps the original bytes"
    );
    let header = MsgHeader::parse(data, usize::MAX).expect("decoded, so the header parsed");
    assert_eq!(req.request_id, header.request_id);
    match (req.op, &req.command) {
        (Op::Msg, Some(_)) | (Op::Query { command: true }, Some(_)) => {}
        (Op::Query { command: false }, None)
        | (Op::Compressed { .. }, None)
        | (Op::Other(_), None) => {}
        (op, c) => panic!("op {op:?} with command {c:?}"),
    }
    let Some(c) = req.command else {
        return;
    };
    let doc = command_document(data).expect("a decoded command has a document");
    assert!(
        std::ptr::eq(c.body, doc),
        "the command is the message's document"
    );
    assert_eq!(wire::op_msg::first_key(doc).ok(), Some(c.name));
    // Independently of the decoder: no security-relevant key repeats.
    assert_eq!(key_count(doc, c.name), (1, true), "'{}' repeated", c.name);
    for key in GUARDED {
        assert!(key_count(doc, key).0 <= 1, "'{key}' repeated");
    }
    if req.op == Op::Msg {
        assert_eq!(c.db, doc.get_str("$db").ok());
    }
    match c.cursors {
        Cursors::One(id) => {
            assert_eq!(c.name, "getMore");
            assert_eq!(
                doc.get("getMore").ok().flatten().and_then(|v| v.as_i64()),
                Some(id)
            );
        }
        Cursors::Many(_) => assert_eq!(c.name, "killCursors"),
        Cursors::None => assert!(c.name != "getMore"),
    }
    let _ = c.is_retryable_write();
}

/// No refusal may name a backend user or password, unless the client sent
/// that text itself (errors quote the offending key of a malformed document).
fn check_refusal_text(error: &crate::errors::MongoError, sent: &[u8]) {
    let echoed = |text: &str| sent.windows(text.len()).any(|w| w == text.as_bytes());
    for secret in BACKEND_USERS.iter().chain([&BACKEND_PASSWORD]) {
        assert!(
            !error.errmsg.contains(secret) || echoed(secret),
            "a client would see backend text: {}",
            error.errmsg
        );
    }
}

fn check_action(req: &Request<'_>, phase: &Phase, inputs: Inputs, action: &Action) {
    let command: Option<&Command<'_>> = req.command.as_ref();
    let name = command.map_or("", |c| c.name);
    match action {
        Action::Relay(_) => {
            assert!(may_relay(phase), "relayed in phase {phase:?}");
            assert_eq!(req.op, Op::Msg, "only OP_MSG is relayed");
        }
        Action::Hello { speculative } => {
            assert!(decide::is_handshake(name));
            assert!(!inputs.draining, "hello answered while draining");
            assert_eq!(*speculative, phase.is_anonymous());
        }
        Action::SaslStart => assert_eq!((req.op, name), (Op::Msg, "saslStart")),
        Action::SaslContinue => assert_eq!((req.op, name), (Op::Msg, "saslContinue")),
        Action::Local(_) => assert_eq!(req.op, Op::Msg),
        Action::Refuse { error, reason } => {
            check_refusal_text(error, req.bytes);
            match reason {
                Refused::Unauthenticated => assert!(phase.is_anonymous()),
                Refused::NoGrant => assert!(matches!(
                    phase.signed_in().map(|s| &s.access),
                    Some(Access::Refused)
                )),
                Refused::ReauthenticationRequired => {
                    assert!(phase.signed_in().is_some_and(|s| s.expired.is_some()))
                }
                Refused::Draining => assert!(inputs.draining && decide::is_handshake(name)),
                Refused::Malformed => panic!("a decoded request refused as malformed"),
                _ => {}
            }
        }
        Action::Close(_) => assert!(matches!(req.op, Op::Other(_)) || req.command.is_none()),
        Action::Admin(_) | Action::ConfigureFailPoint => assert!(
            phase
                .signed_in()
                .is_some_and(|s| s.expired.is_none() && s.access.is_admin()),
            "an administrative command for a session without a live admin grant"
        ),
        Action::GetParameter => assert!(may_relay(phase), "getParameter in phase {phase:?}"),
        Action::FailPoint(_) => assert!(inputs.test_commands, "a fail point without test commands"),
    }
}

/// `wire::Request::decode` over one message, then `decide` (or
/// `decide_malformed`) for every fixed phase, serving and draining. A
/// decoded request keeps the input as its bytes, and no key the proxy's
/// rules read may repeat; only a live, granted sign-in relays.
pub fn request(data: &[u8]) {
    match Request::decode(data) {
        Ok(req) => {
            check_decoded(&req, data);
            for phase in fixed_phases() {
                for (draining, test_commands) in [(false, false), (true, false), (false, true)] {
                    let inputs = Inputs {
                        draining,
                        test_commands,
                    };
                    let action = decide::decide(&req, phase, inputs);
                    check_action(&req, phase, inputs, &action);
                }
            }
        }
        Err(e) => check_malformed(&e, data),
    }
}

fn check_malformed(e: &DecodeError, data: &[u8]) {
    if let WireError::DuplicateField { field, .. } = &e.error {
        let doc = command_document(data).expect("a duplicate was found in a document");
        assert!(key_count(doc, field).0 >= 2, "'{field}' is not repeated");
    }
    match decide::decide_malformed(e) {
        Action::Close(_) => {}
        Action::Refuse { error, reason } => {
            assert_eq!(reason, Refused::Malformed);
            assert!(!e.more_to_come, "a reply to a fire-and-forget message");
            check_refusal_text(&error, data);
        }
        other => panic!("a malformed message led to {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// sasl: payloads and the saslStart / saslContinue parsers
// ---------------------------------------------------------------------------

fn check_payload_field(body: &RawDocument, payload: &oidc::SaslPayload<'_>) {
    assert_eq!(key_count(body, "payload"), (1, true));
    match (body.get("payload"), payload.encoding) {
        (Ok(Some(RawBsonRef::Binary(b))), PayloadEncoding::Binary) => {
            assert_eq!(b.bytes, &payload.bytes[..])
        }
        (Ok(Some(RawBsonRef::String(s))), PayloadEncoding::Base64) => {
            // Canonical base64 only: the decoded bytes encode back to the text.
            assert_eq!(STANDARD.encode(&payload.bytes), s)
        }
        (other, encoding) => panic!("payload {other:?} read as {encoding:?}"),
    }
}

fn check_client_step(payload: &[u8]) {
    let Ok(step) = oidc::parse_payload(payload) else {
        return;
    };
    let rebuilt = match step {
        ClientStep::Jwt(token) => rawdoc! { "jwt": token },
        ClientStep::Principal { hint: Some(n) } => rawdoc! { "n": n },
        ClientStep::Principal { hint: None } => rawdoc! {},
    };
    assert_eq!(oidc::parse_payload(rebuilt.as_bytes()).ok(), Some(step));
    // The reply carrying a document must be readable as the client would.
    let declared = i32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
    let doc = RawDocument::from_bytes(&payload[..declared]).expect("parse_payload read it");
    for encoding in [PayloadEncoding::Binary, PayloadEncoding::Base64] {
        let reply = oidc::step_reply(Some(doc), false, encoding);
        let cont = oidc::parse_sasl_continue(&reply).expect("our own reply parses");
        assert_eq!(cont.conversation_id, i64::from(oidc::CONVERSATION_ID));
        assert_eq!(
            (&cont.payload.bytes[..], cont.payload.encoding),
            (doc.as_bytes(), encoding)
        );
    }
}

/// The MONGODB-OIDC payload (`{n}` / `{jwt}`) and the `saslStart` /
/// `saslContinue` command parsers over the same bytes. Payloads round-trip;
/// a parsed command has its fields exactly once; only MONGODB-OIDC on
/// `$external` starts.
pub fn sasl(data: &[u8]) {
    check_client_step(data);
    let Ok(doc) = RawDocument::from_bytes(data) else {
        return;
    };
    for db in ["$external", "admin"] {
        if let Ok(start) = oidc::parse_sasl_start(doc, db) {
            assert_eq!((start.mechanism, db), (oidc::MECHANISM, oidc::EXTERNAL_DB));
            assert_eq!(key_count(doc, "mechanism"), (1, true));
            check_payload_field(doc, &start.payload);
            check_client_step(&start.payload.bytes);
        }
    }
    // As the session reads it: the database from `$db`.
    if let Ok(db) = doc.get_str("$db") {
        let _ = oidc::parse_sasl_start(doc, db);
    }
    if let Ok(cont) = oidc::parse_sasl_continue(doc) {
        assert_eq!(key_count(doc, "conversationId"), (1, true));
        check_payload_field(doc, &cont.payload);
        check_client_step(&cont.payload.bytes);
        for active in [false, true] {
            let ok = oidc::check_continue(&cont, active).is_ok();
            assert_eq!(ok, active && cont.conversation_id == 1);
        }
    }
}

// ---------------------------------------------------------------------------
// hello: the handshake and speculativeAuthenticate
// ---------------------------------------------------------------------------

fn server_info() -> &'static ServerInfo {
    static INFO: OnceLock<ServerInfo> = OnceLock::new();
    INFO.get_or_init(|| ServerInfo {
        limits: crate::backend::info::Limits {
            max_wire_version: 21,
            min_wire_version: 0,
            max_bson_object_size: 16 * 1024 * 1024,
            max_message_size_bytes: 48_000_000,
            max_write_batch_size: 100_000,
            logical_session_timeout_minutes: Some(30),
        },
        build_info: rawdoc! { "version": "7.0.0" },
        is_replica_set: false,
    })
}

/// The speculative `saslStart` inside a hello, read as the session does:
/// only a `saslStart` naming its `db`.
fn speculative_start(spec: &RawDocument) -> Option<oidc::SaslStart<'_>> {
    if wire::op_msg::first_key(spec).ok()? != "saslStart" {
        return None;
    }
    let db = spec.get_str("db").ok()?;
    oidc::parse_sasl_start(spec, db).ok()
}

/// `session::handshake::parse_hello` over a command document (byte 0 picks
/// the command name when the document's first key is not a handshake
/// name), then the speculative sign-in's parsers, then the reply.
pub fn hello(data: &[u8]) {
    let [pick, body @ ..] = data else {
        return;
    };
    let Ok(doc) = RawDocument::from_bytes(body) else {
        return;
    };
    let name = match wire::op_msg::first_key(doc) {
        Ok(first) if decide::is_handshake(first) => first,
        _ => ["hello", "isMaster", "ismaster"][*pick as usize % 3],
    };
    let req = match handshake::parse_hello(name, doc) {
        Ok(req) => req,
        Err(e) => {
            assert!(matches!(e.code, 2 | 22), "hello refused with {e:?}");
            return;
        }
    };
    assert_eq!(req.is_hello, name == "hello");
    if let Some(spec) = req.speculative {
        assert!(
            spec.iter().next().is_some(),
            "an empty speculativeAuthenticate"
        );
        if let Some(start) = speculative_start(spec) {
            assert_eq!(start.mechanism, oidc::MECHANISM);
            check_client_step(&start.payload.bytes);
        }
    }
    let proxy = handshake::ProxyIdentity {
        service_id: bson::oid::ObjectId::from_bytes([7; 12]),
        max_message_size: wire::DEFAULT_MAX_MESSAGE_SIZE,
        setup_user: None,
    };
    let answered = req.speculative.map(|_| {
        oidc::speculative_reply(
            Some(&rawdoc! { "issuer": "https://idp.example" }),
            false,
            PayloadEncoding::Binary,
        )
    });
    let had_answer = answered.is_some();
    let reply = handshake::hello_reply(&req, server_info(), &proxy, 1, answered);
    let primary = if req.is_hello {
        "isWritablePrimary"
    } else {
        "ismaster"
    };
    assert_eq!(reply.get_bool(primary).ok(), Some(true));
    assert_eq!(
        reply
            .get("speculativeAuthenticate")
            .ok()
            .flatten()
            .is_some(),
        had_answer
    );
    assert_eq!(reply.get("helloOk").ok().flatten().is_some(), req.hello_ok);
    assert_eq!(
        reply.get("serviceId").ok().flatten().is_some(),
        req.load_balanced
    );
    assert!(reply.get_f64("ok").is_ok());
}

// ---------------------------------------------------------------------------
// jwt: parsing and verification with a fixed key set
// ---------------------------------------------------------------------------

// Keys made for fuzzing only (`openssl genpkey`): they sign fuzz inputs and
// protect nothing. Nothing outside this module refers to them.
const FUZZ_RSA_PKCS8: &str = "
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCeqAme46rexTQk
nNAEnUjh6xJZlJ0pEz11Tvim7etXXATtiYV6qsNVZ5xSRG6qXsdSdl1fIpNfAwHp
cva1CheDz+NbKiU/w9Ms5fCjyuqRZ0mARUmiOmwAj3EhgXmsfCzkJJi+UhmFJqsi
B/7Owrw7ULJBAoZphFbefdhV3F67xkq9HEGCyZurTLgmz1ltiU4VgeG6TQQJsCoT
6Zi0bY9Nwse8pKTkwRU2Y1M+GYhiv+H3smw3ylazqlbj8gU2l8RiB5dsnpDhC9oK
Xlp2KaIDdgn+LIpoHnXTM13S2jWKC0pyUfY7hNwLKAXMEXkqSxM23r1jXAFEKcpx
4QdPNGBDAgMBAAECggEAN21OGx+/cJ8lZcsQ0yPds+trWDdWpmRt2p8xuCOzTaw8
nn2mT6H7pskRMB5vKP7+lHz8hsFuCcnjr5p1vO6fI3ILpCw3oiy4CF32cUpxI0YZ
xAGwxUeytolmRQXWK5+gET4FzKui9cT6EWQIrVQT7Yb2F0caDR/qN0VwwCJCSEfj
wLQAJi1zEVCc5B5qMi911/JqCnmB8VedfLSuojgVf2ajHGpgG4iR0azamCZq8Tuv
agCgzdZ4iwn6MfCUbJB0V8YJdouOnGPeNiieK7fVVC6FkqM41uYSoD2D6O8nr2Uc
nknzwWgJ5vSquGki8Cu+8HodR+/QCeekCq8dDhtPVQKBgQDJ50E75QktqnNtMvdO
iaGLGsUDL4kxsLQXj0MfpnrF/lGEcnP4FSmn3Nl7eKmkYw7D6uf8Dz7GKjxBapcL
SwJKKGuE0IxtKPny7eE5ZLvM/yi9Yo2ug/XQrI3gXYdJysuYQD3UvZQ80GA03t21
AzkMEV24/fn8JRryi64TVESuhwKBgQDJKm7lO73PgDCcP6qCT3HYEA1KXSxCzIlX
9KUu6D+X7Ee2lxKNctR6dP9kzkO31jmOBblIXV+Z7z8CHVpkCL70jQGZ7I8LGqe2
o+xlQ6e0pZ7z9hWqWfcbO4UuIjI/e5fqd1+hspVfwmcOrJCpYC6faPttLMElB7cT
q6QjVfyTZQKBgQC1h8LTQz5ZXKOjTuukJYKlO1BfaOIFV0bU1+4WCuzgD6TjXLSA
HSby0lKH/RkpwBaKeC5UJrDeIyNB/cAIW0yXuHfTVl6r1ufET7TskXF5AwFyJaYV
fngJQtvdGrqE0lzzau8s07bwZrnZT3gvQ9KK0yJdLZ0R45qy8Ht2zZFjCQKBgDjR
ynbnE+rbK1/Gv9OEuwQrLIXXoVvQx+5XBJ0mLmgr7emN7EiVqZxZFZYUiJ4RXTpX
NYlSDmG9aM+hGNnuenk6prwiTBj3021MCcZkgKcOrMH9vQrb1GcVvb1VHVo+/57T
TuiuN3DPySok5cthhmmyTmn83SUnc7eToI32iJvdAoGBAJ8PtiJwr9LbC2saSsEC
+Ufru0qgiRNvg9KZsZuO4vOwYAHdZxibSvXrZ2RF58a81Lw0qRZtGW7gzfTOEpVr
j9FGhdQc13crN/dfXU4OigV5fDfY6KUrwsq904gnRmDpfXRfRCEKFKlMcoa6SQLM
sQtu3kb//BZeZE+87FLNGc40";
const FUZZ_P256_PKCS8: &str = "
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4OZXs1V978z5SZae
YriM96pda4PfB1UdRIQUhQeExI+hRANCAARJ55jK3QIoJtrc4ENqR5tKv4GgzSr1
poMMU9VLF3MJ1gJv4mvAIRGwGt1RWlxuVhva2A3OjK4Z8JV2wPIlNPld";
const FUZZ_ED25519_PKCS8: &str = "
MC4CAQAwBQYDK2VwBCIEIIh37547LwjSjmfiAo18XQUMI2OpIOR8/l12gLpiU6Tj";
/// The public half of `FUZZ_ED25519_PKCS8`, base64url.
const FUZZ_ED25519_X: &str = "ubg2Wfor4CjuctcL2aENlpwKEPM-Zvh3onH8oCOoZLs";

/// The time the JWT target checks `exp` and `nbf` against.
pub const JWT_NOW: u64 = 1_700_000_000;
pub const JWT_ISSUER: &str = "https://idp.fuzz.example";
pub const JWT_AUDIENCE: &str = "api://fuzz";
pub const JWT_PREFIX: &str = "fz";

/// One signing key of the fixed set and the algorithms it signs with.
struct FuzzSigner {
    kid: &'static str,
    algs: [Algorithm; 2],
    key: EncodingKey,
}

struct FuzzKeys {
    set: KeySet,
    signers: [FuzzSigner; 3],
}

fn der(text: &str) -> Vec<u8> {
    let b64: String = text.split_whitespace().collect();
    STANDARD.decode(b64).expect("a constant key")
}

/// The fixed key set, loaded through `jwks::parse_jwks` like an IdP's.
fn fuzz_keys() -> &'static FuzzKeys {
    static KEYS: OnceLock<FuzzKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::traits::PublicKeyParts;

        let rsa = rsa::RsaPrivateKey::from_pkcs8_der(&der(FUZZ_RSA_PKCS8)).expect("RSA key");
        let ec_der = der(FUZZ_P256_PKCS8);
        let ec = p256::SecretKey::from_pkcs8_der(&ec_der).expect("P-256 key");
        let point = ec.public_key().to_encoded_point(false);
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let set = json!({"keys": [
            {"kty": "RSA", "kid": "fz-rsa", "use": "sig",
             "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be())},
            {"kty": "EC", "kid": "fz-p256", "crv": "P-256",
             "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y"))},
            {"kty": "OKP", "kid": "fz-ed25519", "crv": "Ed25519", "x": FUZZ_ED25519_X},
        ]});
        let set = jwks::parse_jwks(set.to_string().as_bytes()).expect("the fixed JWKS");
        let pkcs1 = rsa.to_pkcs1_der().expect("PKCS#1");
        FuzzKeys {
            set,
            signers: [
                FuzzSigner {
                    kid: "fz-rsa",
                    algs: [Algorithm::RS256, Algorithm::PS384],
                    key: EncodingKey::from_rsa_der(pkcs1.as_bytes()),
                },
                FuzzSigner {
                    kid: "fz-p256",
                    algs: [Algorithm::ES256, Algorithm::ES256],
                    key: EncodingKey::from_ec_der(&ec_der),
                },
                FuzzSigner {
                    kid: "fz-ed25519",
                    algs: [Algorithm::EdDSA, Algorithm::EdDSA],
                    key: EncodingKey::from_ed_der(&der(FUZZ_ED25519_PKCS8)),
                },
            ],
        }
    })
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::PS384 => "PS384",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "other",
    }
}

/// How a fuzzed token was made, for the invariants.
enum Made {
    /// Taken as it came.
    AsIs,
    /// Signed by us with this kid and algorithm.
    Signed { kid: &'static str, alg: Algorithm },
    /// Signed by us, then one byte of the signed part changed.
    Tampered,
}

/// What verifying a token with the fixed keys found: whether the
/// signature was checked and held, and the identity under rules with and
/// without the authorization claim.
type Verdict = (Option<bool>, [Result<Identity, AuthFailure>; 2]);

/// The whole verification a token gets, with the fixed keys instead of an
/// IdP: the steps of `IdpRegistry::verify`, through the public functions
/// of `auth::jwt`.
fn verify_fixed(token: &str) -> Verdict {
    let fail = |checked: Option<bool>, e: AuthFailure| (checked, [Err(e.clone()), Err(e)]);
    macro_rules! step {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return fail(None, e),
            }
        };
    }
    let jws = step!(jwt::split(token, jwt::DEFAULT_MAX_TOKEN_SIZE));
    let header_bytes = step!(jws.decode_header());
    let header = step!(jwt::parse_header(&header_bytes));
    let payload = step!(jws.decode_payload());
    let claims = step!(jwt::parse_claims(&payload));
    let Some(key) = fuzz_keys().set.get(&header.kid) else {
        return fail(None, AuthFailure::UnknownKey(header.kid.to_string()));
    };
    if let Err(e) = jwt::verify_signature(&jws, header.alg, key) {
        return fail(Some(false), e);
    }
    let log = ["sub".to_string(), "email".to_string()];
    let check = |use_groups: bool| {
        let rules = ClaimRules {
            issuer: JWT_ISSUER,
            audience: JWT_AUDIENCE,
            auth_name_prefix: JWT_PREFIX,
            principal_name: "sub",
            authorization_claim: use_groups.then_some("groups"),
            log_claims: &log,
        };
        jwt::check_claims(&claims, &rules, 0, JWT_NOW)
    };
    (Some(true), [check(true), check(false)])
}

/// Whether verifying `token` gets as far as the signature check.
fn reaches_signature(token: &str) -> bool {
    let Ok(jws) = jwt::split(token, jwt::DEFAULT_MAX_TOKEN_SIZE) else {
        return false;
    };
    let (Ok(header), Ok(payload)) = (jws.decode_header(), jws.decode_payload()) else {
        return false;
    };
    match (jwt::parse_header(&header), jwt::parse_claims(&payload)) {
        (Ok(h), Ok(_)) => fuzz_keys().set.get(&h.kid).is_some(),
        _ => false,
    }
}

/// Token parsing and verification against a fixed key set (RSA, P-256,
/// Ed25519). Byte 0 is the mode. Bits 0-1: 0 = the rest is a token as is;
/// 1 = the rest is `header JSON 0xFF claims JSON`, signed; 2 = the rest is
/// claims JSON, signed under a correct header; 3 = as 1, then one byte of
/// the signed part (at bits 6-7 × 16) is changed. Bits 2-4 pick the key (0
/// RSA, 1-2 P-256, else Ed25519: RSA signing is slow), bit 5 its second
/// algorithm (RSA: PS384). A token we signed verifies exactly when its
/// header names that key and algorithm; a changed one never does; what
/// verifies has a well-formed identity.
pub fn jwt(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    let keys = fuzz_keys();
    let signer = &keys.signers[match (mode >> 2) & 7 {
        0 => 0,
        1 | 2 => 1,
        _ => 2,
    }];
    let alg = signer.algs[usize::from(mode & 0x20 != 0)];
    let (token, made) = match mode & 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(t) => (t.to_owned(), Made::AsIs),
            Err(_) => return,
        },
        m => {
            let (header, claims) = match m {
                2 => (
                    json!({"alg": alg_name(alg), "kid": signer.kid, "typ": "JWT"}).to_string(),
                    String::from_utf8_lossy(rest).into_owned(),
                ),
                _ => {
                    let at = rest.iter().position(|b| *b == 0xff).unwrap_or(rest.len());
                    (
                        String::from_utf8_lossy(&rest[..at]).into_owned(),
                        String::from_utf8_lossy(rest.get(at + 1..).unwrap_or_default())
                            .into_owned(),
                    )
                }
            };
            let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
            let input = format!("{}.{}", b64(&header), b64(&claims));
            let mut sent = input.clone().into_bytes();
            if m == 3 {
                let at = (*mode as usize >> 6) * 16 % sent.len();
                // Another base64url character (or one in place of the dot).
                sent[at] = if sent[at] == b'A' { b'B' } else { b'A' };
            }
            let sent = String::from_utf8(sent).expect("ASCII");
            // Signing is the slow part: sign only when the signature gets checked.
            let sig = if reaches_signature(&format!("{sent}.AAAA")) {
                jsonwebtoken::crypto::sign(input.as_bytes(), &signer.key, alg).expect("signing")
            } else {
                "AAAA".to_owned()
            };
            let made = match m {
                3 => Made::Tampered,
                _ => Made::Signed {
                    kid: signer.kid,
                    alg,
                },
            };
            (format!("{sent}.{sig}"), made)
        }
    };
    let parsed = jwt::parse_unverified(&token, jwt::DEFAULT_MAX_TOKEN_SIZE);
    if parsed.is_ok() {
        let jws = jwt::split(&token, jwt::DEFAULT_MAX_TOKEN_SIZE).expect("parsed token splits");
        assert_eq!(
            jws.signing_input.len() + 1 + jws.signature_b64.len(),
            token.len()
        );
    }
    let (signature, identities) = verify_fixed(&token);
    if signature.is_some() {
        assert!(parsed.is_ok(), "verified what parse_unverified refused");
    }
    match made {
        Made::Tampered => assert_ne!(signature, Some(true), "a changed token verified"),
        Made::Signed { kid, alg } => {
            let header = jwt::split(&token, usize::MAX)
                .ok()
                .and_then(|jws| jws.decode_header().ok())
                .and_then(|h| {
                    jwt::parse_header(&h)
                        .ok()
                        .map(|h| (h.kid.into_owned(), h.alg))
                });
            if let (Some(ok), Some((hkid, halg))) = (signature, header) {
                assert_eq!(
                    ok,
                    hkid == kid && halg == alg,
                    "header {hkid}/{halg:?}, signed {kid}/{alg:?}"
                );
            }
        }
        Made::AsIs => {}
    }
    for (identity, use_groups) in identities.into_iter().zip([true, false]) {
        let Ok(identity) = identity else {
            continue;
        };
        assert!(!identity.principal.is_empty());
        assert_eq!(
            identity.user,
            format!("{JWT_PREFIX}/{}", identity.principal)
        );
        assert!(identity.roles.iter().all(|r| r.starts_with("fz/")));
        assert!(use_groups || identity.roles.is_empty());
        assert!(identity.expires_at >= JWT_NOW);
        assert!(identity
            .log_claims
            .iter()
            .all(|(n, _)| n == "sub" || n == "email"));
    }
    // The JSON parsers on their own, without base64 in the way.
    let _ = jwt::parse_header(rest);
    if let Ok(claims) = jwt::parse_claims(rest) {
        let _ = jwt::check_times(claims.exp, claims.nbf, JWT_NOW);
        let _ = claims.aud.to_string();
    }
}

// ---------------------------------------------------------------------------
// jwks
// ---------------------------------------------------------------------------

fn kind_of(jwk: &Value) -> Option<KeyKind> {
    match (
        jwk.get("kty")?.as_str()?,
        jwk.get("crv").and_then(Value::as_str),
    ) {
        ("RSA", _) => Some(KeyKind::Rsa { bits: 0 }),
        ("EC", Some("P-256")) => Some(KeyKind::EcP256),
        ("EC", Some("P-384")) => Some(KeyKind::EcP384),
        ("OKP", Some("Ed25519")) => Some(KeyKind::Ed25519),
        _ => None,
    }
}

/// A JWKS document as an IdP could serve it. Every key that loads has a
/// unique, non-empty kid and the kind its `kty`/`crv` names; the set written
/// back as JSON loads to the same keys.
pub fn jwks(data: &[u8]) {
    let Ok(set) = jwks::parse_jwks(data) else {
        return;
    };
    let mut kids: Vec<&str> = set.iter().map(|k| k.kid.as_str()).collect();
    assert!(kids.iter().all(|k| !k.is_empty()));
    for key in set.iter() {
        assert!(std::ptr::eq(
            &**set.get(&key.kid).expect("listed key"),
            &**key
        ));
        assert_eq!(
            key.jwk.get("kid").and_then(Value::as_str),
            Some(key.kid.as_str())
        );
        match (key.kind, kind_of(&key.jwk)) {
            (KeyKind::Rsa { bits }, Some(KeyKind::Rsa { .. })) => {
                assert!((jwks::MIN_RSA_BITS..=jwks::MAX_RSA_BITS).contains(&bits))
            }
            (kind, named) => assert_eq!(Some(kind), named),
        }
    }
    kids.sort_unstable();
    kids.dedup();
    assert_eq!(kids.len(), set.len());
    let again = jwks::parse_jwks(set.to_jwks_json().to_string().as_bytes())
        .expect("the loaded keys load again");
    let described = |s: &KeySet| -> Vec<(String, KeyKind)> {
        s.iter().map(|k| (k.kid.clone(), k.kind)).collect()
    };
    assert_eq!(described(&again), described(&set));
    assert!(!set.lost_keys_in(&again));
    assert_eq!(set.lost_keys_in(&KeySet::default()), !set.is_empty());
}

// ---------------------------------------------------------------------------
// config: TOML and mongod's JSON
// ---------------------------------------------------------------------------

fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| jwks::http_client().expect("HTTP client"))
}

/// A TOML basic string holding `text` exactly.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The config around an `identity_providers_json` value.
pub fn config_with_mongodb_json(json_text: &str) -> String {
    format!(
        "identity_providers_json = {}\n\n\
         [listen]\naddress = \"127.0.0.1:27017\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n\n\
         [backend]\nuri = \"mongodb://127.0.0.1:27018/\"\n\n\
         [[grant]]\nrole = \"okta/dba\"\nbackend_user = \"dba\"\nbackend_password_env = \"DBA_PASSWORD\"\n",
        toml_string(json_text)
    )
}

/// `config::Config::parse`. Byte 0 even: the rest is the TOML file; odd:
/// the rest is mongod's `oidcIdentityProviders` JSON, placed in a fixed
/// config as `identity_providers_json`. A config that parses passes its own
/// validation rules, and its parts build (or refuse, naming a field)
/// without panicking.
pub fn config(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    let json_mode = mode & 1 == 1;
    let text = if json_mode {
        config_with_mongodb_json(&String::from_utf8_lossy(rest))
    } else {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    };
    let parsed = Config::parse(&text);
    assert_eq!(
        parsed.as_ref().err(),
        Config::parse(&text).as_ref().err(),
        "parsing is deterministic"
    );
    let config = match parsed {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !e.field.is_empty() && !e.message.is_empty(),
                "an error names its field: {e:?}"
            );
            return;
        }
    };
    assert!(!config.identity_provider.is_empty() && !config.grant.is_empty());
    let limits = &config.limits;
    assert!(limits.max_message_size <= crate::config::DEFAULT_MAX_MESSAGE_SIZE);
    assert!(limits.max_message_size_before_sign_in <= limits.max_message_size);
    assert!(limits.max_connections > 0 && limits.auth_timeout_secs > 0);
    if json_mode {
        for idp in &config.identity_provider {
            assert!(idp.jwks_uri.is_none(), "mongod's JSON has no jwks_uri");
        }
    }
    let built = |e: crate::config::ConfigError| assert!(!e.field.is_empty(), "{e:?}");
    if let Err(e) = IdpRegistry::with_client(&config.identity_provider, http_client().clone()) {
        built(e);
    }
    match Grants::from_config(&config.grant, Secrets::Skip) {
        Ok(_) => {
            if let Err(e) = crate::authz::check_prefixes(&config.grant, &config.identity_provider) {
                built(e);
            }
        }
        Err(e) => built(e),
    }
    let _ = crate::backend::uri::BackendSettings::parse(&config.backend.uri);
}

// ---------------------------------------------------------------------------
// session: the decide step over a sequence of messages
// ---------------------------------------------------------------------------

/// The clock the session target starts at (2023-11-14T22:13:20Z).
pub const SESSION_START: u64 = 1_700_000_000;
/// When the temporary grant of the session target ends.
const TEMP_GRANT_ENDS: &str = "2023-11-14T23:00:00Z";

struct SessionPolicy {
    version: u64,
    registry: usize,
    grants: usize,
}

struct SessionWorld {
    registries: [IdpRegistry; 2],
    grants: [Grants; 2],
    policies: [SessionPolicy; 3],
}

fn grant(text: &str) -> GrantConfig {
    toml::from_str(text).expect("a fixed grant")
}

/// The policies a fuzzed session can be reloaded between: the start
/// (writers, readers, an admin user, a temporary grant), one without the
/// writers' grant and with the admin's rights withdrawn, one without the
/// identity provider.
fn session_world() -> &'static SessionWorld {
    static WORLD: OnceLock<SessionWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        let idp: IdentityProviderConfig = toml::from_str(
            "issuer = \"https://idp.fuzz.example\"\naudience = \"api://fuzz\"\n\
             auth_name_prefix = \"test\"\nclient_id = \"fuzz-client\"\nrequest_scopes = [\"openid\"]\n",
        )
        .expect("a fixed IdP");
        let registry = |idps: &[IdentityProviderConfig]| {
            IdpRegistry::with_client(idps, http_client().clone()).expect("a fixed registry")
        };
        let backend = |user: &str| {
            format!("backend_user = \"{user}\"\nbackend_password_env = \"FZ_UNUSED\"\n")
        };
        let (rw, ro, admin) = (
            backend(BACKEND_USERS[0]),
            backend(BACKEND_USERS[1]),
            backend(BACKEND_USERS[2]),
        );
        let start = vec![
            grant(&format!("role = \"test/writers\"\n{rw}")),
            grant(&format!("role = \"test/readers\"\n{ro}")),
            grant(&format!("user = \"test/admin\"\nadmin = true\n{admin}")),
            grant(&format!("user = \"test/temp\"\nexpires = \"{TEMP_GRANT_ENDS}\"\n{rw}")),
        ];
        let changed = vec![
            grant(&format!("role = \"test/readers\"\n{ro}")),
            grant(&format!("user = \"test/admin\"\n{admin}")),
            grant(&format!("user = \"test/temp\"\nexpires = \"{TEMP_GRANT_ENDS}\"\n{rw}")),
        ];
        let grants = |g: &[GrantConfig]| Grants::from_config(g, Secrets::Skip).expect("fixed grants");
        SessionWorld {
            registries: [registry(std::slice::from_ref(&idp)), registry(&[])],
            grants: [grants(&start), grants(&changed)],
            policies: [
                SessionPolicy {
                    version: 1,
                    registry: 0,
                    grants: 0,
                },
                SessionPolicy {
                    version: 2,
                    registry: 0,
                    grants: 1,
                },
                SessionPolicy {
                    version: 3,
                    registry: 1,
                    grants: 0,
                },
            ],
        }
    })
}

/// A token as the session target "verifies" it: a JWT's claims read
/// without a signature check (`sub`, `groups`, `exp`), or `user:group,group`
/// for a token valid ten minutes. The signature checks are the jwt target's.
fn synthetic_identity(token: &str, registry: &IdpRegistry, now: u64) -> Result<Identity, ()> {
    if registry.is_empty() {
        return Err(());
    }
    let (principal, groups, expires_at) = if token.contains('.') {
        let jws = jwt::split(token, jwt::DEFAULT_MAX_TOKEN_SIZE).map_err(|_| ())?;
        let payload = jws.decode_payload().map_err(|_| ())?;
        let claims = jwt::parse_claims(&payload).map_err(|_| ())?;
        jwt::check_times(claims.exp, None, now).map_err(|_| ())?;
        let groups = claims
            .get("groups")
            .and_then(|raw| serde_json::from_str::<Vec<String>>(raw.get()).ok())
            .unwrap_or_default();
        (claims.sub.into_owned(), groups, claims.exp.floor() as u64)
    } else {
        let (user, groups) = token.split_once(':').unwrap_or((token, ""));
        let groups = groups
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        (user.to_owned(), groups, now + 600)
    };
    if principal.is_empty() {
        return Err(());
    }
    Ok(Identity {
        idp: 0,
        user: format!("test/{principal}"),
        roles: groups.iter().map(|g| format!("test/{g}")).collect(),
        principal,
        expires_at,
        log_claims: vec![],
    })
}

/// The session as the fuzz target models it: the phase and what the act
/// step would have done to it, with the real decide, resolve and sign-in
/// rules.
struct SessionModel {
    phase: Phase,
    now: u64,
    policy: usize,
    draining: bool,
    failures: u32,
    /// The user of the first sign-in: a connection signs in once.
    user: Option<String>,
    /// An expiry was recorded since the last sign-in.
    expired: bool,
}

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// `limits.max_sign_in_failures_per_connection`'s default.
const MAX_FAILURES: u32 = 5;
const MAX_MESSAGE_BEFORE_SIGN_IN: usize = 128 * 1024;

impl SessionModel {
    fn policy(
        &self,
    ) -> (
        &'static SessionPolicy,
        &'static IdpRegistry,
        &'static Grants,
    ) {
        let world = session_world();
        let p = &world.policies[self.policy];
        (p, &world.registries[p.registry], &world.grants[p.grants])
    }

    fn clock(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.now)
    }

    /// Byte `control` before a message: time passes, a reload, a drain.
    fn control(&mut self, control: u8) {
        match control & 3 {
            1 => self.now += 61,
            2 => self.now += 3600,
            3 => {
                if let Some(s) = self.phase.signed_in() {
                    self.now = self.now.max(s.identity.expires_at);
                }
            }
            _ => {}
        }
        match (control >> 2) & 3 {
            0 => {}
            p => self.policy = usize::from(p - 1),
        }
        if control & 0x10 != 0 {
            self.draining = !self.draining;
        }
    }

    fn check_phase(&self, resolved: bool) {
        let signed_in = self.phase.signed_in();
        assert_eq!(
            signed_in.map(|s| s.identity.user.as_str()),
            self.user.as_deref(),
            "the signed-in user changed"
        );
        assert_eq!(
            signed_in.is_some_and(|s| s.expired.is_some()),
            self.expired,
            "expiry lost or invented"
        );
        // Right after resolve, a sign-in that still holds is within its times.
        if let Some(s) = signed_in.filter(|s| resolved && s.expired.is_none()) {
            assert!(
                s.identity.expires_at > self.now,
                "a live sign-in past its token's exp"
            );
            if let Access::Granted {
                expires: Some(at), ..
            } = &s.access
            {
                assert!(
                    self.clock() < *at,
                    "a live sign-in past its grant's expires"
                );
            }
        }
    }

    /// One message; false when the connection ends.
    fn message(&mut self, bytes: &[u8]) -> bool {
        let (p, registry, grants) = self.policy();
        let policy = Policy {
            version: p.version,
            registry,
            grants,
            setup: None,
        };
        if self.phase.resolve(&policy, PEER, self.now).is_some() {
            self.expired = true;
        }
        self.check_phase(true);
        let req = match Request::decode(bytes) {
            Ok(req) => req,
            Err(e) => {
                return match decide::decide_malformed(&e) {
                    Action::Refuse { reason, .. } => {
                        assert_eq!(reason, Refused::Malformed);
                        true
                    }
                    _ => false,
                };
            }
        };
        let inputs = Inputs {
            draining: self.draining,
            test_commands: false,
        };
        let action = decide::decide(&req, &self.phase, inputs);
        check_action(&req, &self.phase, inputs, &action);
        let going = match action {
            Action::Relay(_) => {
                assert!(self.user.is_some(), "relayed before a sign-in");
                assert!(!self.expired, "an expired session relayed");
                true
            }
            Action::Close(_) => false,
            Action::Hello { speculative } => self.hello(&req, speculative),
            Action::SaslStart => self.sasl_start(&req),
            Action::SaslContinue => self.sasl_continue(&req),
            Action::GetParameter => {
                assert!(
                    self.user.is_some() && !self.expired,
                    "getParameter relayed without a live sign-in"
                );
                true
            }
            Action::Local(_)
            | Action::Refuse { .. }
            | Action::Admin(_)
            | Action::ConfigureFailPoint
            | Action::FailPoint(_) => true,
        };
        self.check_phase(false);
        going
    }

    fn hello(&mut self, req: &Request<'_>, speculative: bool) -> bool {
        let Some(c) = req.command else {
            return true;
        };
        let Ok(hello) = handshake::parse_hello(c.name, c.body) else {
            return true;
        };
        if let (Some(spec), true) = (hello.speculative, speculative) {
            if let Some(start) = speculative_start(spec) {
                let bytes = start.payload.bytes.into_owned();
                // A failed speculative sign-in is swallowed, but still counts.
                return self.step(&bytes, None, Flow::Speculative);
            }
        }
        true
    }

    fn sasl_start(&mut self, req: &Request<'_>) -> bool {
        self.phase.abandon_conversation();
        let Some(c) = req.command else {
            return true;
        };
        match oidc::parse_sasl_start(c.body, c.db.unwrap_or("admin")) {
            Ok(start) => {
                let bytes = start.payload.bytes.into_owned();
                self.step(&bytes, None, Flow::Machine)
            }
            Err(_) => true,
        }
    }

    fn sasl_continue(&mut self, req: &Request<'_>) -> bool {
        let Some(c) = req.command else {
            return true;
        };
        let Ok(cont) = oidc::parse_sasl_continue(c.body) else {
            return true;
        };
        let pending = self.phase.pending().cloned();
        if oidc::check_continue(&cont, pending.is_some()).is_err() {
            return true;
        }
        let bytes = cont.payload.bytes.into_owned();
        self.step(&bytes, pending, Flow::Human)
    }

    /// One mechanism step, as `Session::sasl_step`; false when the failures
    /// close the connection.
    fn step(&mut self, payload: &[u8], pending: Option<Pending>, flow: Flow) -> bool {
        let (_, registry, _) = self.policy();
        let outcome = match (oidc::parse_payload(payload), &pending) {
            (Err(_), _) | (Ok(ClientStep::Principal { .. }), Some(_)) => Err(()),
            (Ok(ClientStep::Jwt(token)), Some(p)) => synthetic_identity(token, registry, self.now)
                .and_then(|id| match &p.hint {
                    Some(hint) if *hint != id.principal => Err(()),
                    _ => Ok(StepOutcome::Authenticated(id)),
                }),
            (Ok(ClientStep::Jwt(token)), None) => {
                synthetic_identity(token, registry, self.now).map(StepOutcome::Authenticated)
            }
            (Ok(step @ ClientStep::Principal { .. }), None) => {
                block_on(oidc::start(registry, step)).map_err(|_| ())
            }
        };
        match outcome {
            Ok(StepOutcome::Challenge { reply, pending }) => {
                assert!(reply.get_str("issuer").is_ok(), "step 1 names the issuer");
                let previous = match std::mem::take(&mut self.phase) {
                    Phase::SignedIn(s) => Some(s),
                    Phase::Authenticating { previous, .. } => previous,
                    Phase::Anonymous => None,
                };
                self.phase = Phase::Authenticating { pending, previous };
                true
            }
            Ok(StepOutcome::Authenticated(identity)) => {
                let flow = if pending.is_some() { Flow::Human } else { flow };
                self.sign_in(identity, flow);
                true
            }
            Err(()) => {
                self.phase.abandon_conversation();
                self.failures += 1;
                self.failures < MAX_FAILURES
            }
        }
    }

    fn sign_in(&mut self, identity: Identity, flow: Flow) {
        let (p, registry, grants) = self.policy();
        let access = Access::from_decision(grants.decide(&identity, PEER, self.clock()));
        let user = identity.user.clone();
        let verified = Verified {
            idp_fingerprint: registry.fingerprint(identity.idp).unwrap_or_default(),
            key_generation: registry.key_generation(identity.idp),
            identity,
            flow,
            access,
            runtime_version: p.version,
            at: self.clock(),
        };
        match decide::sign_in(&self.phase, verified) {
            Ok(session) => {
                assert!(
                    self.user.as_ref().is_none_or(|u| *u == user),
                    "signed in as another user"
                );
                self.phase = Phase::SignedIn(Box::new(session));
                self.user = Some(user);
                self.expired = false;
            }
            Err(e) => {
                assert!(
                    matches!(e.code, 5626701 | 7070100),
                    "sign-in refused with {e:?}"
                );
                assert!(
                    self.user.as_ref().is_some_and(|u| *u != user),
                    "refused the same user"
                );
                self.phase.abandon_conversation();
            }
        }
    }
}

/// A connection's messages through the decide step, with the phase
/// transitions the act step makes (tokens verified synthetically, see
/// `synthetic_identity`). The input is records of one control byte (bits
/// 0-1: time passes 61 s / an hour / to the token's `exp`; bits 2-3: reload
/// to policy 1-3; bit 4: drain on/off) and one message, framed by its own
/// header. Invariants: nothing is relayed before a sign-in or while the
/// sign-in is expired, a connection signs in as one user only, and an
/// expiry is never lost or invented.
pub fn session(data: &[u8]) {
    let mut model = SessionModel {
        phase: Phase::Anonymous,
        now: SESSION_START,
        policy: 0,
        draining: false,
        failures: 0,
        user: None,
        expired: false,
    };
    let mut rest = data;
    while let [control, tail @ ..] = rest {
        model.control(*control);
        let max = if model.phase.is_anonymous() {
            MAX_MESSAGE_BEFORE_SIGN_IN
        } else {
            wire::DEFAULT_MAX_MESSAGE_SIZE
        };
        // As the frame reader: a bad length or a cut message ends the connection.
        let Ok(header) = MsgHeader::parse(tail, max) else {
            return;
        };
        let Some((message, after)) = tail.split_at_checked(header.message_length as usize) else {
            return;
        };
        if !model.message(message) {
            return;
        }
        rest = after;
    }
}

/// Writes a session target input from whole messages (control bytes 0):
/// for seed captures.
pub fn session_input<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.push(0);
        out.extend_from_slice(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::op_msg::encode;

    fn sign_token(header: &str, claims: &str, signer: &FuzzSigner, alg: Algorithm) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &signer.key, alg).expect("signing");
        format!("{input}.{sig}")
    }
    use bson::RawDocumentBuf;

    fn msg(doc: RawDocumentBuf) -> Vec<u8> {
        encode(1, 0, 0, &doc)
    }

    fn sasl_start_jwt(token: &str) -> Vec<u8> {
        let payload = rawdoc! { "jwt": token };
        msg(rawdoc! {
            "saslStart": 1, "mechanism": "MONGODB-OIDC",
            "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: payload.into_bytes() },
            "$db": "$external",
        })
    }

    #[test]
    fn tokens_we_sign_verify_and_changed_ones_do_not() {
        let claims = json!({"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": "ann", "exp": JWT_NOW + 60, "groups": ["g"]});
        for (i, signer) in fuzz_keys().signers.iter().enumerate() {
            for alg in signer.algs {
                let header = json!({"alg": alg_name(alg), "kid": signer.kid}).to_string();
                let token = sign_token(&header, &claims.to_string(), signer, alg);
                let (signature, [with_groups, without]) = verify_fixed(&token);
                assert_eq!(signature, Some(true), "key {i} {alg:?}");
                assert_eq!(with_groups.unwrap().roles, ["fz/g"]);
                assert_eq!(without.unwrap().user, "fz/ann");
            }
        }
        // The same inputs through the target, in each of its modes.
        let mut input = vec![2u8];
        input.extend_from_slice(claims.to_string().as_bytes());
        jwt(&input);
        for mode in [2 | (3 << 2), 3, 3 | (1 << 6), 3 | (2 << 6) | (1 << 2)] {
            input[0] = mode;
            jwt(&input);
        }
    }

    #[test]
    fn the_session_model_signs_in_relays_and_expires() {
        let find = msg(rawdoc! { "find": "c", "$db": "app" });
        let sign_in = sasl_start_jwt("carol:writers");
        let input = session_input([&find[..], &sign_in[..], &find[..]]);
        session(&input);
        // The same with the clock run to the token's end before the last find.
        let mut expired = input.clone();
        let last = input.len() - find.len() - 1;
        expired[last] = 3;
        session(&expired);
        let mut model = SessionModel {
            phase: Phase::Anonymous,
            now: SESSION_START,
            policy: 0,
            draining: false,
            failures: 0,
            user: None,
            expired: false,
        };
        assert!(model.message(&sign_in));
        assert!(may_relay(&model.phase));
        model.control(3);
        assert!(model.message(&find));
        assert!(model.expired);
        assert!(!may_relay(&model.phase));
    }

    #[test]
    fn frames_agree_however_the_bytes_arrive() {
        let ping = msg(rawdoc! { "ping": 1, "$db": "admin" });
        let mut input = vec![5, 0x83];
        input.extend_from_slice(&ping);
        input.extend_from_slice(&ping);
        input.extend_from_slice(&ping[..10]);
        frames(&input);
    }

    #[test]
    fn every_target_takes_empty_and_short_inputs() {
        for (_, target) in TARGETS {
            for input in [&[][..], &[0], &[1, 2, 3], &[0xff; 40]] {
                target(input);
            }
        }
    }
}
