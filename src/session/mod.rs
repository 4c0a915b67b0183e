//! One client connection's life, as decode → decide → act per message:
//!
//! 1. **decode** ([`crate::wire::Request::decode`], pure): one walk of the
//!    frame into a typed request;
//! 2. **decide** ([`decide::decide`], pure): `(request, phase, inputs) →`
//!    [`Action`] — answer, refuse, SASL step, relay, close — after the phase
//!    was resolved against the current runtime ([`phase::Phase::resolve`]:
//!    expiry, withdrawn keys, reloads);
//! 3. **act** (here): carry the action out and emit [`events::Event`]s, which
//!    the sinks turn into metrics and log lines.
//!
//! The loop is strictly request/response, as drivers use a connection: read
//! one client message, answer it locally or relay it and every reply it
//! produces (exhaust streams included), then read the next. On a drain the
//! loop keeps serving until the drain period ends; a command still running
//! then gets InterruptedAtShutdown (11600).

pub mod commands;
pub mod decide;
pub mod events;
pub mod handshake;
pub mod phase;
mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bson::{RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::auth::oidc::{self, PayloadEncoding, StepOutcome};
use crate::auth::{AuthFailure, Identity};
use crate::authz::BackendIdentity;
use crate::backend::{BackendConnection, BackendError};
use crate::errors::MongoError;
use crate::runtime::{Runtime, Shared, Stage};
use crate::wire::{self, DecodeError, Frame, Op, OpCode, Request};

pub use decide::{Action, Inputs, Local, Refused};
use events::BackendStage;
pub use events::{ConnInfo, Counts, Disposition, Event, Limit};
use phase::{Access, Flow, Phase, Policy};

/// Drivers' human-flow callback timeout (300 s) plus a margin.
const HUMAN_FLOW_TIMEOUT: Duration = Duration::from_secs(310);
/// A read buffer grown past this for one large message is released once idle.
const KEPT_READ_BUFFER: usize = 64 * 1024;

/// Why a session ended, for the log and the `connections_closed_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    IdleBeforeSignIn,
    MalformedMessage,
    UnsupportedOpcode,
    ClientIo,
    BackendClosed,
    Shutdown,
    SignInDeadline,
    SignInFailures,
}

impl CloseReason {
    pub const ALL: [CloseReason; 9] = [
        CloseReason::ClientClosed,
        CloseReason::IdleBeforeSignIn,
        CloseReason::MalformedMessage,
        CloseReason::UnsupportedOpcode,
        CloseReason::ClientIo,
        CloseReason::BackendClosed,
        CloseReason::Shutdown,
        CloseReason::SignInDeadline,
        CloseReason::SignInFailures,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::IdleBeforeSignIn => "idle_before_sign_in",
            CloseReason::MalformedMessage => "malformed_message",
            CloseReason::UnsupportedOpcode => "unsupported_opcode",
            CloseReason::ClientIo => "client_io",
            CloseReason::BackendClosed => "backend_closed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SignInDeadline => "sign_in_deadline",
            CloseReason::SignInFailures => "sign_in_failures",
        }
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

impl ReplyKind {
    fn for_op(op: Op) -> ReplyKind {
        match op {
            Op::Query { .. }
            | Op::Compressed {
                original: OpCode::Query,
            } => ReplyKind::Reply,
            _ => ReplyKind::Msg,
        }
    }
}

/// The client side: the TLS stream, its read buffer and reply ids.
struct Client<S> {
    stream: S,
    read_buf: BytesMut,
    next_reply_id: i32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn reply(
        &mut self,
        response_to: i32,
        kind: ReplyKind,
        doc: &RawDocument,
    ) -> Result<u64, CloseReason> {
        let id = self.next_reply_id;
        self.next_reply_id = self.next_reply_id.wrapping_add(1);
        let bytes = match kind {
            ReplyKind::Msg => wire::op_msg::encode(id, response_to, 0, doc),
            ReplyKind::Reply => wire::op_query::encode_reply(id, response_to, doc),
        };
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|_| CloseReason::ClientIo)?;
        self.stream
            .flush()
            .await
            .map_err(|_| CloseReason::ClientIo)?;
        Ok(bytes.len() as u64)
    }

    /// Releases a buffer that one large message grew, so an idle connection
    /// costs the same after it as before.
    fn shrink(&mut self) {
        if self.read_buf.is_empty() && self.read_buf.capacity() > KEPT_READ_BUFFER {
            self.read_buf = BytesMut::new();
        }
    }
}

/// The session's backend connection, opened on the first relayed command.
struct BackendLink {
    user: String,
    connection: BackendConnection,
}

/// One client connection.
pub struct Session<S> {
    client: Client<S>,
    conn: ConnInfo,
    started: Instant,
    /// Before sign-in, the connection ends here (`limits.sign_in_deadline_secs`).
    sign_in_deadline: Instant,
    /// The end of the one five-minute wait for a human flow's step 2, when
    /// this connection holds one of its address's pending slots.
    human_window: Option<Instant>,
    sign_in_failures: u32,
    /// Close the connection once the current reply is sent.
    close_after_reply: Option<CloseReason>,
    shared: Arc<Shared>,
    stage: watch::Receiver<Stage>,
    phase: Phase,
    backend: Option<BackendLink>,
    counts: Counts,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(stream: S, peer: SocketAddr, shared: Arc<Shared>) -> Session<S> {
        let conn = ConnInfo {
            id: shared.next_connection_id(),
            peer,
        };
        let started = Instant::now();
        let deadline = Duration::from_secs(shared.runtime.load().limits.sign_in_deadline_secs);
        Session {
            client: Client {
                stream,
                read_buf: BytesMut::new(),
                next_reply_id: 1,
            },
            conn,
            started,
            sign_in_deadline: started + deadline,
            human_window: None,
            sign_in_failures: 0,
            close_after_reply: None,
            stage: shared.stage.clone(),
            shared,
            phase: Phase::Anonymous,
            backend: None,
            counts: Counts::default(),
        }
    }

    pub fn connection_id(&self) -> i32 {
        self.conn.id
    }

    /// Serves the connection until either side closes it; the one exit
    /// emits the session's end.
    pub async fn run(mut self) -> CloseReason {
        let reason = self.serve().await;
        self.leave_human_window();
        self.emit(&Event::SessionEnded {
            reason,
            counts: self.counts,
            duration: self.started.elapsed(),
            user: self.phase.signed_in().map(|s| s.identity.user.as_str()),
        });
        reason
    }

    fn emit(&self, event: &Event<'_>) {
        self.shared.sinks.emit(&self.conn, event);
    }

    async fn serve(&mut self) -> CloseReason {
        loop {
            let frame = match self.next_frame().await {
                Ok(frame) => frame,
                Err(reason) => return reason,
            };
            // The runtime current when the message arrived, not when the
            // wait for it began: a reload may have happened in between.
            let rt = self.shared.runtime.load_full();
            self.counts.bytes_from_client += frame.bytes.len() as u64;
            self.counts.commands += 1;
            self.resolve_phase(&rt);
            let result = match Request::decode(&frame.bytes) {
                Ok(req) => {
                    let inputs = Inputs {
                        draining: *self.stage.borrow() != Stage::Serving,
                    };
                    let action = decide::decide(&req, &self.phase, inputs);
                    self.act(&req, action, &rt).await
                }
                Err(e) => self.act_malformed(&e).await,
            };
            drop(frame);
            self.client.shrink();
            if !matches!(self.phase, Phase::Authenticating { .. }) {
                self.leave_human_window();
            }
            if let Err(reason) = result {
                return reason;
            }
            if let Some(reason) = self.close_after_reply.take() {
                return reason;
            }
        }
    }

    /// Reads the next message. Before sign-in, silence and the total time
    /// are bounded, and so is a message's size; the end of a drain
    /// interrupts the wait.
    async fn next_frame(&mut self) -> Result<Frame, CloseReason> {
        let anonymous = self.phase.is_anonymous();
        let (max, silence) = {
            let limits = &self.shared.runtime.load().limits;
            let max = if anonymous {
                limits.max_message_size_before_sign_in
            } else {
                limits.max_message_size
            };
            (max, Duration::from_secs(limits.auth_timeout_secs))
        };
        let waits = if !anonymous {
            None
        } else if let (Phase::Authenticating { .. }, Some(window)) =
            (&self.phase, self.human_window)
        {
            // A person signs in at the IdP between the two steps; drivers
            // give that callback five minutes.
            Some((window, CloseReason::SignInDeadline))
        } else {
            let silent = Instant::now() + silence;
            Some(if silent < self.sign_in_deadline {
                (silent, CloseReason::IdleBeforeSignIn)
            } else {
                (self.sign_in_deadline, CloseReason::SignInDeadline)
            })
        };
        let read = wire::read_frame(&mut self.client.stream, &mut self.client.read_buf, max);
        let timeout = async {
            match waits {
                Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = read => r,
            _ = timeout => {
                let reason = waits.map_or(CloseReason::IdleBeforeSignIn, |(_, r)| r);
                if reason == CloseReason::SignInDeadline {
                    self.emit(&Event::LimitHit { limit: Limit::SignInDeadline });
                }
                return Err(reason);
            }
            _ = closing(&mut self.stage) => return Err(CloseReason::Shutdown),
        };
        match result {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(CloseReason::ClientClosed),
            Err(wire::WireError::Io(_)) | Err(wire::WireError::UnexpectedEof) => {
                Err(CloseReason::ClientIo)
            }
            Err(e) => {
                if anonymous && matches!(e, wire::WireError::LengthTooLarge { .. }) {
                    self.emit(&Event::LimitHit {
                        limit: Limit::MessageSizeBeforeSignIn,
                    });
                }
                // The frame boundary itself is untrustworthy: nothing can be answered.
                self.emit(&Event::WireError {
                    kind: e.kind(),
                    detail: &e.to_string(),
                });
                Err(CloseReason::MalformedMessage)
            }
        }
    }

    /// Gives back this connection's pending human-flow slot, if it held one.
    fn leave_human_window(&mut self) {
        if self.human_window.take().is_some() {
            self.shared.admission.end_human_flow(self.conn.peer.ip());
        }
    }

    /// The first step 1 of a human flow may wait for step 2, if the
    /// address has a pending slot left; the window is never extended.
    fn enter_human_window(&mut self, rt: &Runtime) {
        if self.human_window.is_some() || !self.phase.is_anonymous() {
            return;
        }
        let ip = self.conn.peer.ip();
        if self
            .shared
            .admission
            .start_human_flow(ip, rt.limits.max_pending_human_flows_per_ip)
        {
            let window = Duration::from_secs(rt.limits.auth_timeout_secs).max(HUMAN_FLOW_TIMEOUT);
            self.human_window = Some(Instant::now() + window);
        } else {
            self.emit(&Event::LimitHit {
                limit: Limit::PendingHumanFlows,
            });
        }
    }

    fn resolve_phase(&mut self, rt: &Runtime) {
        let policy = Policy {
            version: rt.version,
            registry: &rt.registry,
            grants: &rt.grants,
        };
        if let Some(why) = self.phase.resolve(&policy, self.conn.peer.ip(), unix_now()) {
            if let Some(s) = self.phase.signed_in() {
                self.emit(&Event::Expired {
                    user: &s.identity.user,
                    why,
                });
            }
        }
    }

    async fn act_malformed(&mut self, err: &DecodeError) -> Result<(), CloseReason> {
        self.emit(&Event::WireError {
            kind: err.error.kind(),
            detail: &err.error.to_string(),
        });
        match decide::decide_malformed(err) {
            Action::Refuse { error, reason } => {
                self.emit(&Event::Command {
                    name: "",
                    disposition: Disposition::Refused(reason),
                });
                let kind = ReplyKind::for_op(err.op);
                self.send(err.request_id, kind, &error.to_document()).await
            }
            Action::Close(reason) => Err(reason),
            _ => Err(CloseReason::MalformedMessage),
        }
    }

    async fn act(
        &mut self,
        req: &Request<'_>,
        action: Action,
        rt: &Arc<Runtime>,
    ) -> Result<(), CloseReason> {
        let name = req.command.map_or("", |c| c.name);
        let disposition = match &action {
            Action::Relay => Disposition::Relayed,
            Action::Refuse { reason, .. } => Disposition::Refused(*reason),
            Action::Close(_) => Disposition::Refused(Refused::Unsupported),
            _ => Disposition::Local,
        };
        self.emit(&Event::Command { name, disposition });
        let reply = match action {
            Action::Close(reason) => {
                if reason == CloseReason::UnsupportedOpcode {
                    self.emit(&Event::WireError {
                        kind: "unsupported_opcode",
                        detail: "opcode not supported by the proxy",
                    });
                }
                return Err(reason);
            }
            Action::Relay => return self.relay(req, rt).await,
            Action::Refuse { error, reason } => {
                self.emit(&Event::Refused {
                    name,
                    db: req.command.and_then(|c| c.db),
                    code: error.code,
                    reason,
                });
                let retryable = req.command.is_some_and(|c| c.is_retryable_write());
                error.labelled_for(retryable).to_document()
            }
            Action::Hello { speculative } => self.hello(req, speculative, rt).await,
            Action::SaslStart => self.sasl_start(req, rt).await,
            Action::SaslContinue => self.sasl_continue(req, rt).await,
            Action::Local(local) => self.local(local, rt).await,
        };
        if req.more_to_come {
            return Ok(());
        }
        self.send(req.request_id, ReplyKind::for_op(req.op), &reply)
            .await
    }

    async fn send(
        &mut self,
        response_to: i32,
        kind: ReplyKind,
        doc: &RawDocument,
    ) -> Result<(), CloseReason> {
        let n = self.client.reply(response_to, kind, doc).await?;
        self.counts.bytes_to_client += n;
        Ok(())
    }

    async fn local(&mut self, local: Local, rt: &Runtime) -> RawDocumentBuf {
        match local {
            Local::Ping | Local::EndSessions => commands::ok(),
            Local::ConnectionStatus => commands::connection_status(
                self.phase
                    .signed_in()
                    .filter(|s| s.expired.is_none())
                    .map(|s| &s.identity),
            ),
            Local::BuildInfo => match rt.backend.server_info().await {
                Ok(info) => commands::build_info(&info),
                Err(e) => self
                    .backend_unavailable(BackendStage::Probe, &e)
                    .to_document(),
            },
        }
    }

    /// What a client sees when the backend fails: never its address, user
    /// or auth source; the details go to the log and metrics.
    fn backend_unavailable(&self, stage: BackendStage, e: &BackendError) -> MongoError {
        self.emit(&Event::Backend { stage, error: e });
        let text = if matches!(
            e,
            BackendError::AuthFailed { .. } | BackendError::Scram { .. }
        ) {
            "mongo-oidc-proxy cannot sign in to its backend as the granted user"
        } else {
            "mongo-oidc-proxy cannot reach its backend"
        };
        MongoError::host_unreachable(text)
    }

    async fn hello(
        &mut self,
        req: &Request<'_>,
        speculative: bool,
        rt: &Runtime,
    ) -> RawDocumentBuf {
        let Some(command) = req.command else {
            return MongoError::protocol_error("hello without a command").to_document();
        };
        let hello = match handshake::parse_hello(command.name, command.body) {
            Ok(h) => h,
            Err(e) => return e.to_document(),
        };
        let info = match rt.backend.server_info().await {
            Ok(info) => info,
            Err(e) => {
                return self
                    .backend_unavailable(BackendStage::Probe, &e)
                    .to_document()
            }
        };
        let spec = match hello.speculative {
            Some(spec) if speculative => self.speculative_authenticate(spec, rt).await,
            _ => None,
        };
        let proxy = handshake::ProxyIdentity {
            service_id: self.shared.service_id,
            max_message_size: rt.limits.max_message_size,
        };
        handshake::hello_reply(&hello, &info, &proxy, self.conn.id, spec)
    }

    /// mongod's rules: only a `saslStart` with a `db` is attempted, and any
    /// failure is swallowed so the driver falls back to an explicit saslStart.
    async fn speculative_authenticate(
        &mut self,
        spec: &RawDocument,
        rt: &Runtime,
    ) -> Option<RawDocumentBuf> {
        if wire::op_msg::first_key(spec).ok()? != "saslStart" {
            return None;
        }
        let db = spec.get_str("db").ok()?;
        let start = oidc::parse_sasl_start(spec, db).ok()?;
        let encoding = start.payload.encoding;
        let step = self
            .sasl_step(&start.payload.bytes, None, Flow::Speculative, rt)
            .await;
        let (payload, done) = step.ok()?;
        Some(oidc::speculative_reply(payload.as_deref(), done, encoding))
    }

    async fn sasl_start(&mut self, req: &Request<'_>, rt: &Runtime) -> RawDocumentBuf {
        self.phase.abandon_conversation();
        let Some(command) = req.command else {
            return MongoError::protocol_error("saslStart without a command").to_document();
        };
        let start = match oidc::parse_sasl_start(command.body, command.db.unwrap_or("admin")) {
            Ok(s) => s,
            Err(e) => return e.to_document(),
        };
        let encoding = start.payload.encoding;
        match self
            .sasl_step(&start.payload.bytes, None, Flow::Machine, rt)
            .await
        {
            Ok((payload, done)) => oidc::step_reply(payload.as_deref(), done, encoding),
            Err(e) => e.to_document(),
        }
    }

    async fn sasl_continue(&mut self, req: &Request<'_>, rt: &Runtime) -> RawDocumentBuf {
        let Some(command) = req.command else {
            return MongoError::protocol_error("saslContinue without a command").to_document();
        };
        let cont = match oidc::parse_sasl_continue(command.body) {
            Ok(c) => c,
            Err(e) => return e.to_document(),
        };
        let pending = self.phase.pending().cloned();
        if let Err(e) = oidc::check_continue(&cont, pending.is_some()) {
            return e.to_document();
        }
        let encoding: PayloadEncoding = cont.payload.encoding;
        match self
            .sasl_step(&cont.payload.bytes, pending, Flow::Human, rt)
            .await
        {
            Ok((payload, done)) => oidc::step_reply(payload.as_deref(), done, encoding),
            Err(e) => e.to_document(),
        }
    }

    /// One mechanism step. Every failure inside it is the generic 18; the
    /// reason goes to the events only.
    async fn sasl_step(
        &mut self,
        payload: &[u8],
        pending: Option<oidc::Pending>,
        flow: Flow,
        rt: &Runtime,
    ) -> Result<(Option<RawDocumentBuf>, bool), MongoError> {
        let started = Instant::now();
        let outcome = match (oidc::parse_payload(payload), &pending) {
            (Err(e), _) => Err(e),
            (Ok(step), Some(p)) => oidc::resume(&rt.registry, p, step)
                .await
                .map(StepOutcome::Authenticated),
            (Ok(step), None) => oidc::start(&rt.registry, step).await,
        };
        self.emit(&Event::AuthStep {
            seconds: started.elapsed().as_secs_f64(),
        });
        match outcome {
            Ok(StepOutcome::Challenge { reply, pending }) => {
                self.enter_human_window(rt);
                let previous = match std::mem::take(&mut self.phase) {
                    Phase::SignedIn(s) => Some(s),
                    Phase::Authenticating { previous, .. } => previous,
                    Phase::Anonymous => None,
                };
                self.phase = Phase::Authenticating { pending, previous };
                Ok((Some(reply), false))
            }
            Ok(StepOutcome::Authenticated(identity)) => {
                let flow = if pending.is_some() { Flow::Human } else { flow };
                self.sign_in(identity, flow, rt)?;
                Ok((None, true))
            }
            Err(failure) => {
                self.phase.abandon_conversation();
                let failure: AuthFailure = failure;
                self.emit(&Event::SignInFailed {
                    failure: &failure,
                    flow,
                });
                self.pay_for_failure(rt).await;
                Err(MongoError::generic_authentication_failure())
            }
        }
    }

    /// Failed sign-ins cost the client, not the proxy: an increasing delay
    /// per address before the reply, and the connection closed after
    /// `limits.max_sign_in_failures_per_connection`.
    async fn pay_for_failure(&mut self, rt: &Runtime) {
        self.sign_in_failures += 1;
        let delay = self
            .shared
            .admission
            .failed(self.conn.peer.ip(), Instant::now());
        if !delay.is_zero() {
            self.emit(&Event::LimitHit {
                limit: Limit::SignInFailureDelay,
            });
            tokio::time::sleep(delay).await;
        }
        if self.sign_in_failures >= rt.limits.max_sign_in_failures_per_connection {
            self.emit(&Event::LimitHit {
                limit: Limit::SignInFailures,
            });
            self.close_after_reply = Some(CloseReason::SignInFailures);
        }
    }

    /// A verified identity becomes the session's sign-in, if the rules allow.
    fn sign_in(&mut self, identity: Identity, flow: Flow, rt: &Runtime) -> Result<(), MongoError> {
        let now = SystemTime::now();
        let access = Access::from_decision(rt.grants.decide(&identity, self.conn.peer.ip(), now));
        let verified = decide::Verified {
            idp_fingerprint: rt.registry.fingerprint(identity.idp).unwrap_or_default(),
            key_generation: rt.registry.key_generation(identity.idp),
            identity,
            flow,
            access,
            runtime_version: rt.version,
            at: now,
        };
        self.shared.admission.succeeded(self.conn.peer.ip());
        let reauthenticated = self.phase.signed_in().is_some();
        let session = match decide::sign_in(&self.phase, verified) {
            Ok(s) => s,
            Err(e) => {
                self.phase.abandon_conversation();
                self.emit(&Event::ReauthenticationRefused { code: e.code });
                return Err(e);
            }
        };
        // Keep the backend connection when the backend user stays the same.
        let keep = match (&session.access, &self.backend) {
            (Access::Granted { backend, .. }, Some(link)) => link.user == backend.user,
            _ => false,
        };
        if !keep {
            self.backend = None;
        }
        let issuer = rt
            .registry
            .describe(session.identity.idp)
            .map_or("", |(_, issuer)| issuer);
        self.emit(&Event::SignedIn {
            session: &session,
            reauthenticated,
            issuer,
            app_name: None,
        });
        self.phase = Phase::SignedIn(Box::new(session));
        Ok(())
    }

    /// Relays a command as the session's backend identity; a drain that
    /// ends meanwhile interrupts it with 11600 if no reply byte was sent yet.
    async fn relay(&mut self, req: &Request<'_>, rt: &Runtime) -> Result<(), CloseReason> {
        let Some(Access::Granted { backend, .. }) = self.phase.signed_in().map(|s| &s.access)
        else {
            return Err(CloseReason::MalformedMessage);
        };
        let backend = backend.clone();
        let retryable = req.command.is_some_and(|c| c.is_retryable_write());
        if self.backend.is_none() {
            if let Err(error) = self.connect_backend(&backend, rt).await {
                let doc = error.labelled_for(retryable).to_document();
                return self.send(req.request_id, ReplyKind::Msg, &doc).await;
            }
        }
        let Some(link) = self.backend.as_mut() else {
            return Err(CloseReason::BackendClosed);
        };
        let mut progress = relay::Progress::default();
        // Only the audit trail's command records want the reply's status.
        let inspect = rt.config.audit.as_ref().is_some_and(|a| a.commands);
        let started = Instant::now();
        let outcome = tokio::select! {
            r = relay::relay(&mut self.client.stream, &mut link.connection, req.bytes, req.more_to_come, inspect, &mut progress) => Some(r),
            _ = closing(&mut self.stage) => None,
        };
        self.counts.bytes_to_client += progress.to_client;
        self.emit(&Event::Relayed {
            to_backend: req.bytes.len() as u64,
            to_client: progress.to_client,
            replies: progress.replies,
            command: req.command.map_or("", |c| c.name),
            db: req.command.and_then(|c| c.db),
            collection: req.command.and_then(|c| c.target),
            status: progress.status,
            duration: started.elapsed(),
        });
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(relay::RelayError::Client)) => Err(CloseReason::ClientIo),
            Some(Err(relay::RelayError::Backend(e))) => {
                // When either side closes, both close: the driver sees a
                // network error and retries on a new connection if it may.
                self.emit(&Event::Backend {
                    stage: BackendStage::Relay,
                    error: &e,
                });
                Err(CloseReason::BackendClosed)
            }
            None => {
                if !progress.replying && !req.more_to_come {
                    let error = MongoError::interrupted_at_shutdown(
                        "interrupted at shutdown: mongo-oidc-proxy's drain period ended",
                    )
                    .labelled_for(retryable);
                    let _ = self
                        .send(req.request_id, ReplyKind::Msg, &error.to_document())
                        .await;
                }
                Err(CloseReason::Shutdown)
            }
        }
    }

    async fn connect_backend(
        &mut self,
        backend: &Arc<BackendIdentity>,
        rt: &Runtime,
    ) -> Result<(), MongoError> {
        let started = Instant::now();
        match rt
            .backend
            .connect_as(&backend.user, &backend.password)
            .await
        {
            Ok(connection) => {
                self.emit(&Event::BackendConnected {
                    seconds: started.elapsed().as_secs_f64(),
                });
                self.backend = Some(BackendLink {
                    user: backend.user.clone(),
                    connection,
                });
                Ok(())
            }
            Err(e) => Err(self.backend_unavailable(BackendStage::Connect, &e)),
        }
    }
}

/// Resolves once the drain period is over.
async fn closing(stage: &mut watch::Receiver<Stage>) {
    if stage.wait_for(|s| *s == Stage::Closing).await.is_err() {
        // The listener is gone without a drain: nothing will ever close us.
        std::future::pending::<()>().await;
    }
}
