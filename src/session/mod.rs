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
//! With test commands on, the `failCommand` fail point ([`failpoint`], pure
//! state shared by the process) is asked first; when it fires,
//! [`decide::fail_point`] turns its answer into the action (close, or its
//! error) and the act step blocks first if it says so.
//!
//! The loop is strictly request/response, as drivers use a connection: read
//! one client message, answer it locally or relay it and every reply it
//! produces (exhaust streams included), then read the next. On a drain the
//! loop keeps serving until the drain period ends; a command still running
//! then gets InterruptedAtShutdown (11600).

pub mod admin;
pub mod commands;
pub mod decide;
pub mod events;
pub mod failpoint;
pub mod handshake;
pub mod phase;
pub mod registry;
mod relay;
mod setup_user;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bson::{RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::auth::oidc::{self, PayloadEncoding, StepOutcome};
use crate::auth::{AuthFailure, Identity};
use crate::backend::BackendError;
use crate::errors::MongoError;
use crate::runtime::{Runtime, Shared, Stage};
use crate::wire::{self, DecodeError, Frame, Op, OpCode, Request};
use failpoint::{FailPoints, Fired, WriteConcernFault};

pub use decide::{Action, Inputs, Local, Refused};
use events::{AdminAction, AdminOutcome, BackendStage, OperatorEvent};
pub use events::{ConnInfo, Counts, Disposition, Event, Limit};
use phase::{Access, Flow, Phase, Policy};

/// Drivers' human-flow callback timeout (300 s) plus a margin.
const HUMAN_FLOW_TIMEOUT: Duration = Duration::from_secs(310);
/// A read buffer grown past this for one large message is released at once.
const KEPT_READ_BUFFER: usize = 64 * 1024;
/// Silence after which a connection gives back its read buffers (client and
/// backend). Long next to a round trip, so a busy connection reuses one
/// buffer without an allocation per message; short next to the time a
/// driver's pooled connection sits idle.
const IDLE_RELEASE: Duration = Duration::from_millis(500);

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
    /// `POST /admin/sessions/<id>/close`.
    ClosedByOperator,
    /// `closeConnection` of the `failCommand` fail point (test commands).
    FailPoint,
}

impl CloseReason {
    pub const ALL: [CloseReason; 11] = [
        CloseReason::ClientClosed,
        CloseReason::IdleBeforeSignIn,
        CloseReason::MalformedMessage,
        CloseReason::UnsupportedOpcode,
        CloseReason::ClientIo,
        CloseReason::BackendClosed,
        CloseReason::Shutdown,
        CloseReason::SignInDeadline,
        CloseReason::SignInFailures,
        CloseReason::ClosedByOperator,
        CloseReason::FailPoint,
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
            CloseReason::ClosedByOperator => "closed_by_operator",
            CloseReason::FailPoint => "fail_point",
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

    /// Releases the read buffer while nothing is buffered: an idle
    /// connection holds none.
    fn release_idle(&mut self) {
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
        }
    }
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
    /// The cursors and logical sessions this connection holds on the backend.
    held: upstream::Held,
    counts: Counts,
    /// This session in the operator's list, and its close request.
    listed: registry::SessionHandle,
    /// `client.application.name` from the client's first hello that had one.
    app_name: Option<String>,
    /// An open SCRAM conversation of the test-only set-up user.
    scram: Option<crate::auth::scram_server::Conversation>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(stream: S, peer: SocketAddr, shared: Arc<Shared>) -> Session<S> {
        let conn = ConnInfo {
            id: shared.next_connection_id(),
            peer,
        };
        let started = Instant::now();
        let deadline = Duration::from_secs(shared.runtime.load().limits.sign_in_deadline_secs);
        let listed = shared.sessions.open(&conn);
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
            held: upstream::Held::default(),
            counts: Counts::default(),
            listed,
            app_name: None,
            scram: None,
        }
    }

    pub fn connection_id(&self) -> i32 {
        self.conn.id
    }

    /// Serves the connection until either side closes it; the one exit
    /// emits the session's end.
    ///
    /// By reference: the caller's future holds the session once (an
    /// `async fn` taking `self` keeps a second copy of it).
    pub async fn run(&mut self) -> CloseReason {
        let mut stage = self.stage.clone();
        let reason = tokio::select! {
            biased;
            reason = self.serve() => reason,
            () = closed_for_good(&mut stage) => CloseReason::Shutdown,
        };
        self.leave_human_window();
        self.release_held();
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
            self.listed.count_in(frame.bytes.len() as u64);
            self.resolve_phase(&rt);
            let result = match Request::decode(&frame.bytes) {
                Ok(req) => {
                    self.note_app_name(&req);
                    let inputs = Inputs {
                        draining: *self.stage.borrow() != Stage::Serving,
                        test_commands: rt.test_commands,
                    };
                    match self.fail_point_before(&req, &rt).await {
                        Err(reason) => Err(reason),
                        Ok(fired) => {
                            let action = fired
                                .and_then(decide::fail_point)
                                .unwrap_or_else(|| decide::decide(&req, &self.phase, inputs));
                            self.act(&req, action, &rt).await
                        }
                    }
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
        let client = &mut self.client;
        let read = async move {
            // read_frame keeps all its state in the buffer, so it can be
            // dropped and started again after the release.
            let busy = tokio::select! {
                biased;
                r = wire::read_frame(&mut client.stream, &mut client.read_buf, max) => Some(r),
                _ = tokio::time::sleep(IDLE_RELEASE) => None,
            };
            match busy {
                Some(r) => r,
                None => {
                    client.release_idle();
                    wire::read_frame(&mut client.stream, &mut client.read_buf, max).await
                }
            }
        };
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
            _ = self.listed.closed() => return Err(CloseReason::ClosedByOperator),
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

    /// mongod takes the client metadata from the hello that carries it,
    /// before any fail point is evaluated on that hello; later hellos do
    /// not change it.
    fn note_app_name(&mut self, req: &Request<'_>) {
        if self.app_name.is_some() {
            return;
        }
        if let Some(c) = req.command.filter(|c| decide::is_handshake(c.name)) {
            self.app_name = handshake::client_app_name(c.body).map(str::to_owned);
        }
    }

    fn failpoints(&self) -> std::sync::MutexGuard<'_, FailPoints> {
        // The state is a few plain fields: a panic elsewhere cannot leave it torn.
        self.shared
            .failpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `failCommand` fail point, before the command: blocks here when
    /// it says so, and returns what happens next.
    async fn fail_point_before(
        &mut self,
        req: &Request<'_>,
        rt: &Runtime,
    ) -> Result<Option<failpoint::Then>, CloseReason> {
        let Some(command) = req.command.filter(|_| rt.test_commands) else {
            return Ok(None);
        };
        let fired = self.failpoints().before(
            command.name,
            self.app_name.as_deref(),
            command.is_retryable_write(),
        );
        let Some(Fired { block, then }) = fired else {
            return Ok(None);
        };
        let effect = match &then {
            failpoint::Then::Close => "close",
            failpoint::Then::Reply(_) => "error",
            failpoint::Then::Proceed => "block",
        };
        self.emit(&Event::FailPointFired {
            command: command.name,
            app_name: self.app_name.as_deref(),
            effect,
        });
        if let Some(wait) = block {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = closing(&mut self.stage) => return Err(CloseReason::Shutdown),
            }
        }
        Ok(Some(then))
    }

    fn resolve_phase(&mut self, rt: &Runtime) {
        let policy = Policy {
            version: rt.version,
            registry: &rt.registry,
            grants: &rt.grants,
            setup: rt.setup_user.as_ref().map(|s| s.fingerprint),
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
            // The relay counts these once it knows whether they go out.
            Action::Relay(_) | Action::GetParameter => None,
            Action::Refuse { reason, .. } => Some(Disposition::Refused(*reason)),
            Action::FailPoint(_) | Action::Close(CloseReason::FailPoint) => {
                Some(Disposition::Refused(Refused::FailPoint))
            }
            Action::Close(_) => Some(Disposition::Refused(Refused::Unsupported)),
            _ => Some(Disposition::Local),
        };
        if let Some(disposition) = disposition {
            self.emit(&Event::Command { name, disposition });
        }
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
            Action::Relay(affinity) => {
                let wants_wce = rt.test_commands
                    && req.command.is_some_and(|c| {
                        self.failpoints()
                            .wants_write_concern_error(c.name, self.app_name.as_deref())
                    });
                let rewrite = wants_wce.then_some(Rewrite::WriteConcern);
                return self.relay(req, rt, affinity, rewrite).await;
            }
            Action::GetParameter => {
                let Some(command) = req.command else {
                    return Err(CloseReason::MalformedMessage);
                };
                match commands::plan_get_parameter(command.body, rt.test_commands) {
                    commands::ParameterPlan::Local(doc) => {
                        self.emit(&Event::Command {
                            name,
                            disposition: Disposition::Relayed,
                        });
                        doc
                    }
                    commands::ParameterPlan::Relay { all, show_details } => {
                        let rewrite = Rewrite::Parameters { all, show_details };
                        return self
                            .relay(req, rt, decide::Affinity::None, Some(rewrite))
                            .await;
                    }
                }
            }
            Action::FailPoint(doc) => doc,
            Action::ConfigureFailPoint => self.configure_fail_point(req),
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
            // Boxed: a connection's task is as large as its largest state for
            // as long as it lives, and these (sign-in above all) are 1-2 KiB
            // each where waiting for the next message needs a few hundred bytes.
            Action::Hello { speculative } => Box::pin(self.hello(req, speculative, rt)).await,
            Action::SaslStart => Box::pin(self.sasl_start(req, rt)).await,
            Action::SaslContinue => Box::pin(self.sasl_continue(req, rt)).await,
            Action::Local(local) => Box::pin(self.local(local, rt)).await,
            Action::Admin(command) => Box::pin(self.admin(command, rt)).await,
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
        self.listed.count_out(n);
        Ok(())
    }

    /// `oidcListKeys` / `oidcRefreshKeys` for an admin grant (decide
    /// checked it); each goes through the sinks as an operator event.
    async fn admin(&mut self, command: admin::AdminCommand, rt: &Runtime) -> RawDocumentBuf {
        let (action, reply, outcome, detail) = match &command {
            admin::AdminCommand::ListKeys { issuers } => (
                AdminAction::OidcListKeys,
                admin::list_keys_reply(&rt.registry, issuers.as_deref()),
                AdminOutcome::Ok,
                String::new(),
            ),
            admin::AdminCommand::RefreshKeys {
                issuers,
                invalidate_on_failure,
            } => {
                let result =
                    admin::refresh_keys(&rt.registry, issuers.as_deref(), *invalidate_on_failure)
                        .await;
                let (outcome, detail) = match &result {
                    Ok(()) => (AdminOutcome::Ok, String::new()),
                    Err(e) => (AdminOutcome::Failed, e.errmsg.clone()),
                };
                (
                    AdminAction::OidcRefreshKeys,
                    admin::refresh_reply(&result),
                    outcome,
                    detail,
                )
            }
        };
        let user = self
            .phase
            .signed_in()
            .map_or("", |s| s.identity.user.as_str());
        let source = format!("wire conn {} user {user}", self.conn.id);
        let target = command.issuers().map(|list| list.join(","));
        self.shared.sinks.operator(&OperatorEvent::Admin {
            action,
            target: target.as_deref(),
            outcome,
            detail: &detail,
            source: &source,
        });
        reply
    }

    async fn local(&mut self, local: Local, rt: &Runtime) -> RawDocumentBuf {
        match local {
            Local::Ping | Local::EndSessions => commands::ok(),
            Local::ConnectionStatus => commands::connection_status(
                self.phase
                    .signed_in()
                    .filter(|s| s.expired.is_none())
                    .map(|s| (&s.identity, s.flow == Flow::Scram)),
            ),
            Local::BuildInfo => match rt.backend.server_info().await {
                Ok(info) => commands::build_info_for(&info, rt.test_commands),
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
        upstream::unreachable(e)
    }

    /// `configureFailPoint` for an admin session: decide checked who may.
    fn configure_fail_point(&mut self, req: &Request<'_>) -> RawDocumentBuf {
        let Some(command) = req.command else {
            return MongoError::protocol_error("configureFailPoint without a command")
                .to_document();
        };
        let result = {
            let mut fp = self.failpoints();
            fp.configure(command.body)
                .map(|reply| (reply, fp.describe()))
        };
        match result {
            Ok((reply, mode)) => {
                let data = command
                    .body
                    .get_document("data")
                    .ok()
                    .and_then(|d| bson::Document::try_from(d).ok())
                    .map_or_else(|| "{}".to_owned(), |d| d.to_string());
                let user = self
                    .phase
                    .signed_in()
                    .map_or("", |s| s.identity.user.as_str());
                self.emit(&Event::FailPointSet {
                    user,
                    mode: &mode,
                    data: &data,
                });
                reply
            }
            Err(e) => e.to_document(),
        }
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
            setup_user: self.setup_user(rt).map(|s| s.credentials.user()),
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
        self.scram = None;
        let Some(command) = req.command else {
            return MongoError::protocol_error("saslStart without a command").to_document();
        };
        let db = command.db.unwrap_or("admin");
        let start = match oidc::parse_sasl_start_any(command.body) {
            Ok(s) => s,
            Err(e) => return e.to_document(),
        };
        let inputs = Inputs {
            draining: false,
            test_commands: rt.test_commands,
        };
        match decide::sasl_mechanism(start.mechanism, db, inputs, self.setup_user(rt).is_some()) {
            Ok(decide::SaslMechanism::Oidc) => {}
            Ok(decide::SaslMechanism::Scram) => {
                return self.scram_start(command.body, db, &start.payload, rt).await
            }
            Err(e) => return e.to_document(),
        }
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
        if let Some(conversation) = self.scram.take() {
            return self.scram_continue(conversation, &cont, rt).await;
        }
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
        self.enter(verified, rt)
    }

    /// A verified sign-in (OIDC, or the test-only SCRAM set-up user)
    /// becomes the session's, if the rules allow.
    fn enter(&mut self, verified: decide::Verified, rt: &Runtime) -> Result<(), MongoError> {
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
        self.hold_as(&session);
        let issuer = rt
            .registry
            .describe(session.identity.idp)
            .map_or("", |(_, issuer)| issuer);
        self.emit(&Event::SignedIn {
            session: &session,
            reauthenticated,
            issuer,
            app_name: self.app_name.as_deref(),
        });
        self.phase = Phase::SignedIn(Box::new(session));
        Ok(())
    }

    fn write_concern_fault(&mut self, command: &str, retryable: bool) -> Option<WriteConcernFault> {
        let fault = self
            .failpoints()
            .after_write(command, self.app_name.as_deref(), retryable)?;
        self.emit(&Event::FailPointFired {
            command,
            app_name: self.app_name.as_deref(),
            effect: "write_concern_error",
        });
        Some(fault)
    }

    async fn write_to_client(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.client.stream.write_all(bytes).await?;
        self.client.stream.flush().await
    }
}

/// Why a relayed reply is read whole and changed.
#[derive(Debug, Clone, Copy)]
enum Rewrite {
    /// `getParameter`: the proxy's own parameters in place of the backend's.
    Parameters { all: bool, show_details: bool },
    /// A write the fail point may add a `writeConcernError` to.
    WriteConcern,
}

/// Resolves half the close grace after the drain period: whatever the
/// session is waiting for by then (a client that does not read its reply)
/// ends with it, before the server aborts the task unrecorded.
async fn closed_for_good(stage: &mut watch::Receiver<Stage>) {
    closing(stage).await;
    tokio::time::sleep(crate::runtime::CLOSE_GRACE / 2).await;
}

/// Resolves once the drain period is over.
async fn closing(stage: &mut watch::Receiver<Stage>) {
    if stage.wait_for(|s| *s == Stage::Closing).await.is_err() {
        // The listener is gone without a drain: nothing will ever close us.
        std::future::pending::<()>().await;
    }
}
