//! One client connection's life:
//!
//! ```text
//! anonymous ──saslStart/speculativeAuthenticate──▶ signed in ──exp passes──▶ expired (391)
//!     ▲  only hello, ping, buildInfo, connectionStatus,      │  relays to the backend     │
//!     │  endSessions and SASL are served                      ◀──── same-user re-auth ─────┘
//! ```
//!
//! The loop is strictly request/response, as MongoDB drivers use a
//! connection: read one client message, answer it locally or relay it and
//! every reply it produces (exhaust streams included), then read the next.

mod commands;
mod handshake;
mod relay;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bson::{RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::auth::oidc::{self, ClientStep, Conversation, PayloadEncoding, StepOutcome};
use crate::auth::{AuthFailure, Identity, IdpRegistry};
use crate::authz::{BackendIdentity, Decision, Grants};
use crate::backend::{Backend, BackendConnection};
use crate::errors::MongoError;
use crate::metrics::{Disposition, Metrics};
use crate::wire::{self, Frame, OpCode, OpMsg, OpQuery};

pub use handshake::ProxyIdentity;

/// Drivers' human-flow callback timeout (300 s) plus a margin.
const HUMAN_FLOW_TIMEOUT: Duration = Duration::from_secs(310);

/// What every session shares: configuration turned into live parts.
pub struct Context {
    pub registry: Arc<IdpRegistry>,
    pub grants: Arc<Grants>,
    pub backend: Arc<Backend>,
    pub metrics: Arc<Metrics>,
    pub proxy: ProxyIdentity,
    /// Longest a client may stay silent before it has signed in.
    pub anonymous_idle_timeout: Duration,
    next_connection_id: AtomicI32,
}

impl Context {
    pub fn new(
        registry: Arc<IdpRegistry>,
        grants: Arc<Grants>,
        backend: Arc<Backend>,
        metrics: Arc<Metrics>,
        max_message_size: usize,
        anonymous_idle_timeout: Duration,
    ) -> Context {
        Context {
            registry,
            grants,
            backend,
            metrics,
            proxy: ProxyIdentity {
                service_id: bson::oid::ObjectId::new(),
                max_message_size,
            },
            anonymous_idle_timeout,
            next_connection_id: AtomicI32::new(1),
        }
    }
}

/// Why a session ended, for the log and the `connections_closed_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    IdleBeforeSignIn,
    MalformedMessage,
    UnsupportedOpcode,
    ClientIo,
    BackendClosed,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::IdleBeforeSignIn => "idle_before_sign_in",
            CloseReason::MalformedMessage => "malformed_message",
            CloseReason::UnsupportedOpcode => "unsupported_opcode",
            CloseReason::ClientIo => "client_io",
            CloseReason::BackendClosed => "backend_closed",
        }
    }
}

/// What a signed-in session may do.
enum Access {
    /// A grant matched: relay as this backend identity (connected lazily).
    Granted {
        backend_identity: Arc<BackendIdentity>,
        connection: Option<BackendConnection>,
    },
    /// Signed in, but no grant names the caller: every command is refused.
    Refused,
}

struct SignedIn {
    identity: Identity,
    access: Access,
    /// The issuer's key-set generation when the token was verified.
    key_generation: Option<u64>,
}

impl SignedIn {
    /// mongod ends an OIDC session when its token expires, and when a JWKS
    /// refresh removes or changes a key: either way the client must re-auth.
    fn expired(&self, now: u64, registry: &IdpRegistry) -> bool {
        self.identity.expires_at <= now
            || registry.key_generation(self.identity.idp) != self.key_generation
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How a reply must be framed: in kind with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyKind {
    Msg,
    Reply,
}

/// One client connection.
pub struct Session<S> {
    stream: S,
    peer: SocketAddr,
    ctx: Arc<Context>,
    connection_id: i32,
    read_buf: BytesMut,
    next_request_id: i32,
    conversation: Conversation,
    signed_in: Option<SignedIn>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(stream: S, peer: SocketAddr, ctx: Arc<Context>) -> Session<S> {
        let connection_id = ctx.next_connection_id.fetch_add(1, Ordering::Relaxed);
        Session {
            stream,
            peer,
            ctx,
            connection_id,
            read_buf: BytesMut::with_capacity(16 * 1024),
            next_request_id: 1,
            conversation: Conversation::Idle,
            signed_in: None,
        }
    }

    pub fn connection_id(&self) -> i32 {
        self.connection_id
    }

    /// Serves the connection until either side closes it.
    pub async fn run(mut self) -> CloseReason {
        loop {
            let frame = match self.read_client_frame().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return CloseReason::ClientClosed,
                Err(reason) => return reason,
            };
            let result = match frame.header.op_code {
                OpCode::Msg => self.on_op_msg(&frame).await,
                OpCode::Query => self.on_op_query(&frame).await,
                OpCode::Compressed => self.on_op_compressed(&frame).await,
                OpCode::Reply | OpCode::Other(_) => {
                    self.count_wire_error("unsupported_opcode");
                    warn!(
                        opcode = frame.header.op_code.as_i32(),
                        "closing: opcode not supported by the proxy"
                    );
                    Err(CloseReason::UnsupportedOpcode)
                }
            };
            if let Err(reason) = result {
                return reason;
            }
        }
    }

    async fn read_client_frame(&mut self) -> Result<Option<Frame>, CloseReason> {
        let max = self.ctx.proxy.max_message_size;
        let read = wire::read_frame(&mut self.stream, &mut self.read_buf, max);
        let result = if self.signed_in.is_none() {
            // Between the two steps of the human flow a person signs in at
            // the IdP; drivers give that callback five minutes.
            let idle = if self.conversation.is_active() {
                self.ctx.anonymous_idle_timeout.max(HUMAN_FLOW_TIMEOUT)
            } else {
                self.ctx.anonymous_idle_timeout
            };
            match tokio::time::timeout(idle, read).await {
                Ok(r) => r,
                Err(_) => return Err(CloseReason::IdleBeforeSignIn),
            }
        } else {
            read.await
        };
        result.map_err(|e| {
            self.count_wire_error(e.kind());
            match e {
                wire::WireError::Io(_) | wire::WireError::UnexpectedEof => CloseReason::ClientIo,
                other => {
                    // The frame boundary itself is untrustworthy: nothing can be answered.
                    warn!(error = %other, "closing: unreadable message from client");
                    CloseReason::MalformedMessage
                }
            }
        })
    }

    fn count_wire_error(&self, kind: &str) {
        self.ctx
            .metrics
            .wire_errors
            .with_label_values(&[kind])
            .inc();
    }

    fn count_command(&self, disposition: Disposition) {
        self.ctx.metrics.count_command(disposition);
    }

    async fn on_op_msg(&mut self, frame: &Frame) -> Result<(), CloseReason> {
        let msg = match OpMsg::parse(&frame.bytes) {
            Ok(msg) => msg,
            Err(e) => {
                self.count_wire_error(e.kind());
                let more_to_come = frame.body().get(..4).is_some_and(|f| f[0] & 2 != 0);
                if more_to_come {
                    warn!(error = %e, "closing: malformed fire-and-forget message");
                    return Err(CloseReason::MalformedMessage);
                }
                let err = match e {
                    wire::WireError::InvalidBson { .. } => MongoError::invalid_bson(e.to_string()),
                    _ => MongoError::protocol_error(e.to_string()),
                };
                return self.reply_error(frame, ReplyKind::Msg, &err).await;
            }
        };
        let name = match msg.command_name() {
            Ok(name) => name,
            Err(e) => {
                self.count_wire_error(e.kind());
                return self
                    .reply_error(
                        frame,
                        ReplyKind::Msg,
                        &MongoError::invalid_bson(e.to_string()),
                    )
                    .await;
            }
        };
        let answer = self
            .dispatch(name, msg.body, frame, msg.flags.more_to_come())
            .await?;
        match answer {
            Some(doc) if !msg.flags.more_to_come() => self.reply(frame, ReplyKind::Msg, &doc).await,
            _ => Ok(()),
        }
    }

    async fn on_op_query(&mut self, frame: &Frame) -> Result<(), CloseReason> {
        let query = match OpQuery::parse(&frame.bytes) {
            Ok(q) => q,
            Err(e) => {
                self.count_wire_error(e.kind());
                return self
                    .reply_error(
                        frame,
                        ReplyKind::Reply,
                        &MongoError::protocol_error(e.to_string()),
                    )
                    .await;
            }
        };
        let name = wire::op_msg::first_key(query.query).unwrap_or("");
        if query.command_database().is_none() || !handshake::is_handshake(name) {
            self.count_command(Disposition::RefusedOpQuery);
            let err = MongoError::unsupported_op_query_command(format!(
                "Unsupported OP_QUERY command: {name}. The client driver may require an upgrade. For more details see https://dochub.mongodb.org/core/legacy-opcode-removal"
            ));
            return self.reply_error(frame, ReplyKind::Reply, &err).await;
        }
        let doc = self
            .hello(name, query.query)
            .await
            .unwrap_or_else(|e| e.to_document());
        self.reply(frame, ReplyKind::Reply, &doc).await
    }

    async fn on_op_compressed(&mut self, frame: &Frame) -> Result<(), CloseReason> {
        self.count_wire_error("compressed");
        let original = frame
            .body()
            .get(..4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let kind = if original == Some(OpCode::Query.as_i32()) {
            ReplyKind::Reply
        } else {
            ReplyKind::Msg
        };
        let err = MongoError::not_implemented(
            "OP_COMPRESSED is not supported by mongo-oidc-proxy, which advertises no compressors; remove 'compressors' from the connection string",
        );
        self.reply_error(frame, kind, &err).await
    }

    /// Answers a command locally (`Some(reply)`) or relays it (`None`).
    async fn dispatch(
        &mut self,
        name: &str,
        body: &RawDocument,
        frame: &Frame,
        more_to_come: bool,
    ) -> Result<Option<RawDocumentBuf>, CloseReason> {
        if handshake::is_handshake(name) {
            self.count_command(Disposition::Local);
            return Ok(Some(
                self.hello(name, body)
                    .await
                    .unwrap_or_else(|e| e.to_document()),
            ));
        }
        let local = match name {
            "saslStart" => {
                let db = body.get_str("$db").unwrap_or("admin");
                Some(self.sasl_start(body, db).await)
            }
            "saslContinue" => Some(self.sasl_continue(body).await),
            "ping" => Some(Ok(commands::ok())),
            "buildInfo" | "buildinfo" => Some(self.build_info().await),
            "connectionStatus" => {
                let now = unix_now();
                let identity = self.signed_in.as_ref().filter(|s| !s.expired(now, &self.ctx.registry)).map(|s| &s.identity);
                Some(Ok(commands::connection_status(identity)))
            }
            "endSessions" if self.signed_in.is_none() => Some(Ok(commands::ok())),
            "authenticate" => Some(Err(MongoError::mechanism_unavailable(
                "Received authentication for mechanism MONGODB-X509 which is not enabled; sign in with MONGODB-OIDC",
            ))),
            "logout" => Some(Err(MongoError::command_not_supported(
                "logout is not supported by mongo-oidc-proxy; close the connection to sign out",
            ))),
            _ => None,
        };
        if let Some(result) = local {
            self.count_command(Disposition::Local);
            return Ok(Some(result.unwrap_or_else(|e| e.to_document())));
        }
        self.authorised_relay(name, frame, more_to_come).await
    }

    /// Relays a command if the session may, or says why not.
    async fn authorised_relay(
        &mut self,
        name: &str,
        frame: &Frame,
        more_to_come: bool,
    ) -> Result<Option<RawDocumentBuf>, CloseReason> {
        let now = unix_now();
        let refusal = match &self.signed_in {
            None => Some((Disposition::RefusedUnauthenticated, MongoError::unauthorized(format!("Command {name} requires authentication")))),
            Some(s) if s.expired(now, &self.ctx.registry) => {
                Some((Disposition::ReauthenticationRequired, MongoError::reauthentication_required(format!(
                    "Command {name} requires reauthentication since the current authorization session has expired. Please re-auth."
                ))))
            }
            Some(SignedIn { access: Access::Refused, identity, .. }) => Some((Disposition::RefusedNoGrant, MongoError::unauthorized(format!(
                "not authorized to execute command {name}: no grant of this proxy names user '{}' or its roles; ask the proxy's operator for a [[grant]]",
                identity.user
            )))),
            Some(_) => None,
        };
        if let Some((disposition, err)) = refusal {
            self.count_command(disposition);
            return Ok(Some(err.to_document()));
        }
        self.count_command(Disposition::Relayed);
        self.relay(frame, more_to_come).await
    }

    async fn build_info(&self) -> Result<RawDocumentBuf, MongoError> {
        let info = self
            .ctx
            .backend
            .server_info()
            .await
            .map_err(|e| handshake::backend_unavailable(&e.to_string()))?;
        Ok(commands::build_info(&info))
    }

    async fn hello(
        &mut self,
        name: &str,
        body: &RawDocument,
    ) -> Result<RawDocumentBuf, MongoError> {
        let req = handshake::parse_hello(name, body)?;
        let info = self.ctx.backend.server_info().await.map_err(|e| {
            self.ctx
                .metrics
                .backend_errors
                .with_label_values(&["probe"])
                .inc();
            handshake::backend_unavailable(&e.to_string())
        })?;
        let speculative = match req.speculative {
            Some(spec) if self.signed_in.is_none() => self.speculative_authenticate(spec).await,
            _ => None,
        };
        Ok(handshake::hello_reply(
            &req,
            &info,
            &self.ctx.proxy,
            self.connection_id,
            speculative,
        ))
    }

    /// mongod's rules: only a `saslStart` with a `db` is attempted, and any
    /// failure is swallowed so the driver falls back to an explicit saslStart.
    async fn speculative_authenticate(&mut self, spec: &RawDocument) -> Option<RawDocumentBuf> {
        let first = wire::op_msg::first_key(spec).ok()?;
        if first != "saslStart" {
            return None;
        }
        let db = spec.get_str("db").ok()?;
        let start = oidc::parse_sasl_start(spec, db).ok()?;
        let encoding = start.payload.encoding;
        let (payload, done) = match self.run_sasl_step(start.payload.bytes.as_ref(), true).await {
            Ok(outcome) => outcome,
            Err(_) => return None,
        };
        Some(oidc::speculative_reply(payload.as_deref(), done, encoding))
    }

    async fn sasl_start(
        &mut self,
        body: &RawDocument,
        db: &str,
    ) -> Result<RawDocumentBuf, MongoError> {
        self.conversation = Conversation::Idle;
        let start = oidc::parse_sasl_start(body, db)?;
        let encoding = start.payload.encoding;
        let (payload, done) = self
            .run_sasl_step(start.payload.bytes.as_ref(), true)
            .await?;
        Ok(oidc::step_reply(payload.as_deref(), done, encoding))
    }

    async fn sasl_continue(&mut self, body: &RawDocument) -> Result<RawDocumentBuf, MongoError> {
        let cont = oidc::parse_sasl_continue(body)?;
        oidc::check_continue(&cont, &self.conversation)?;
        let encoding: PayloadEncoding = cont.payload.encoding;
        let (payload, done) = self
            .run_sasl_step(cont.payload.bytes.as_ref(), false)
            .await?;
        Ok(oidc::step_reply(payload.as_deref(), done, encoding))
    }

    /// One mechanism step. Every failure inside it is the generic 18; the
    /// reason goes to the log and metrics only.
    async fn run_sasl_step(
        &mut self,
        payload: &[u8],
        start: bool,
    ) -> Result<(Option<RawDocumentBuf>, bool), MongoError> {
        let started = Instant::now();
        let registry = self.ctx.registry.clone();
        let outcome = match oidc::parse_payload(payload) {
            Ok(step) => {
                let step: ClientStep<'_> = step;
                if start {
                    self.conversation.start(&registry, step).await
                } else {
                    self.conversation.resume(&registry, step).await
                }
            }
            Err(e) => Err(e),
        };
        self.ctx
            .metrics
            .auth_duration
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(StepOutcome::Challenge(doc)) => Ok((Some(doc), false)),
            Ok(StepOutcome::Authenticated(identity)) => {
                self.sign_in(identity)?;
                Ok((None, true))
            }
            Err(failure) => {
                self.conversation = Conversation::Idle;
                self.auth_failed(&failure);
                Err(MongoError::generic_authentication_failure())
            }
        }
    }

    fn auth_failed(&self, failure: &AuthFailure) {
        self.ctx
            .metrics
            .auth_attempts
            .with_label_values(&["failure", failure.reason()])
            .inc();
        // Debug-formatted: the reason quotes token fields (issuer, kid, ...)
        // that an attacker chose, so control characters must be escaped.
        warn!(peer = %self.peer, reason = failure.reason(), error = ?failure.to_string(), "authentication failed");
    }

    /// Accepts a verified identity: a first sign-in, or a re-authentication
    /// that must be for the same user.
    fn sign_in(&mut self, identity: Identity) -> Result<(), MongoError> {
        let now = unix_now();
        if let Some(current) = &self.signed_in {
            if current.identity.user != identity.user {
                self.ctx
                    .metrics
                    .auth_attempts
                    .with_label_values(&["failure", "different_user"])
                    .inc();
                return Err(if current.expired(now, &self.ctx.registry) {
                    MongoError::with_code(7070100, "Location7070100", format!(
                        "Only same user is permitted to re-auth to an expired session. Expired user is {}@$external",
                        current.identity.user
                    ))
                } else {
                    MongoError::with_code(5626701, "Location5626701", format!(
                        "Each client connection may only be authenticated once. Previously authenticated as: {}@$external",
                        current.identity.user
                    ))
                });
            }
            self.ctx.metrics.reauthentications.inc();
        }
        self.ctx
            .metrics
            .auth_attempts
            .with_label_values(&["success", ""])
            .inc();
        let decision = self
            .ctx
            .grants
            .decide(&identity, self.peer.ip(), SystemTime::now());
        let previous = self.signed_in.take();
        let access = match decision {
            Decision::Granted { grant, backend } => {
                info!(peer = %self.peer, user = %identity.user, roles = ?identity.roles, claims = ?identity.log_claims,
                      grant, backend_user = %backend.user, "signed in");
                // Keep the backend connection when re-authentication keeps the backend user.
                let connection = match previous {
                    Some(SignedIn {
                        access:
                            Access::Granted {
                                backend_identity,
                                connection,
                            },
                        ..
                    }) if backend_identity.user == backend.user => connection,
                    _ => None,
                };
                Access::Granted {
                    backend_identity: backend,
                    connection,
                }
            }
            Decision::Denied => {
                self.ctx.metrics.sessions_refused.inc();
                warn!(peer = %self.peer, user = %identity.user, roles = ?identity.roles, "signed in, but no grant matches: every command will be refused");
                Access::Refused
            }
        };
        let key_generation = self.ctx.registry.key_generation(identity.idp);
        self.signed_in = Some(SignedIn {
            identity,
            access,
            key_generation,
        });
        Ok(())
    }

    async fn relay(
        &mut self,
        frame: &Frame,
        more_to_come: bool,
    ) -> Result<Option<RawDocumentBuf>, CloseReason> {
        let Some(SignedIn {
            access:
                Access::Granted {
                    backend_identity,
                    connection,
                },
            ..
        }) = self.signed_in.as_mut()
        else {
            return Ok(Some(
                MongoError::unauthorized("not signed in").to_document(),
            ));
        };
        if connection.is_none() {
            let started = Instant::now();
            match self
                .ctx
                .backend
                .connect_as(&backend_identity.user, &backend_identity.password)
                .await
            {
                Ok(conn) => {
                    self.ctx
                        .metrics
                        .backend_connect_duration
                        .observe(started.elapsed().as_secs_f64());
                    *connection = Some(conn);
                }
                Err(e) => {
                    self.ctx
                        .metrics
                        .backend_errors
                        .with_label_values(&["connect"])
                        .inc();
                    warn!(error = %e, backend_user = %backend_identity.user, "backend connection failed");
                    return Ok(Some(
                        MongoError::host_unreachable(format!(
                            "mongo-oidc-proxy could not open a backend connection: {e}"
                        ))
                        .to_document(),
                    ));
                }
            }
        }
        let Some(conn) = connection.as_mut() else {
            return Ok(None);
        };
        match relay::relay(
            &mut self.stream,
            conn,
            frame,
            more_to_come,
            &self.ctx.metrics.relay,
        )
        .await
        {
            Ok(()) => Ok(None),
            Err(relay::RelayError::Client) => Err(CloseReason::ClientIo),
            Err(relay::RelayError::Backend(e)) => {
                // When either side closes, both close: the driver sees a
                // network error and retries on a new connection if it may.
                self.ctx
                    .metrics
                    .backend_errors
                    .with_label_values(&["relay"])
                    .inc();
                warn!(error = %e, "backend connection lost while relaying; closing the client connection");
                Err(CloseReason::BackendClosed)
            }
        }
    }

    async fn reply_error(
        &mut self,
        frame: &Frame,
        kind: ReplyKind,
        err: &MongoError,
    ) -> Result<(), CloseReason> {
        debug!(code = err.code, errmsg = %err.errmsg, "error reply");
        self.reply(frame, kind, &err.to_document()).await
    }

    async fn reply(
        &mut self,
        request: &Frame,
        kind: ReplyKind,
        doc: &RawDocument,
    ) -> Result<(), CloseReason> {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        let bytes = match kind {
            ReplyKind::Msg => wire::op_msg::encode(id, request.header.request_id, 0, doc),
            ReplyKind::Reply => wire::op_query::encode_reply(id, request.header.request_id, doc),
        };
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|_| CloseReason::ClientIo)?;
        self.stream.flush().await.map_err(|_| CloseReason::ClientIo)
    }
}
