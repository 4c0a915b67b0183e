//! What happened, as events: the act step emits one per message and per
//! transition, and the sinks (metrics, log; later the audit trail) turn them
//! into counters and lines. Nothing else in the session logs or counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthFailure;
use crate::backend::BackendError;

use super::decide::Refused;
use super::phase::{Access, Expiry, Flow, SignedIn};
use super::CloseReason;

/// The connection an event belongs to.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub id: i32,
    pub peer: SocketAddr,
}

/// How the proxy handled one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Local,
    Relayed,
    Refused(Refused),
}

/// Which part of talking to the backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStage {
    /// Probing hello/buildInfo for the handshake.
    Probe,
    /// Opening and signing in a session's connection.
    Connect,
    /// Relaying a command.
    Relay,
}

impl BackendStage {
    pub fn label(self) -> &'static str {
        match self {
            BackendStage::Probe => "probe",
            BackendStage::Connect => "connect",
            BackendStage::Relay => "relay",
        }
    }
}

/// Bytes and messages of one session.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub commands: u64,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

#[derive(Debug)]
pub enum Event<'a> {
    /// One client message, after it was handled.
    Command {
        name: &'a str,
        disposition: Disposition,
    },
    /// A command was refused (also counted as a [`Event::Command`]).
    Refused {
        name: &'a str,
        db: Option<&'a str>,
        code: i32,
        reason: Refused,
    },
    SignedIn {
        session: &'a SignedIn,
        reauthenticated: bool,
        issuer: &'a str,
        /// `client.application.name` from the client's hello, if it sent one.
        app_name: Option<&'a str>,
    },
    SignInFailed {
        failure: &'a AuthFailure,
        flow: Flow,
    },
    /// A re-authentication by someone else was refused (7070100 / 5626701).
    ReauthenticationRefused { code: i32 },
    /// A sign-in stopped holding; the client now gets 391.
    Expired { user: &'a str, why: Expiry },
    /// A malformed or refused client message.
    WireError { kind: &'static str, detail: &'a str },
    Backend {
        stage: BackendStage,
        error: &'a BackendError,
    },
    /// Time to open and sign in a backend connection.
    BackendConnected { seconds: f64 },
    /// Time a SASL step took, including any JWKS fetch.
    AuthStep { seconds: f64 },
    Relayed {
        to_backend: u64,
        to_client: u64,
        replies: u64,
    },
    SessionEnded {
        reason: CloseReason,
        counts: Counts,
        duration: Duration,
        user: Option<&'a str>,
    },
    /// `configureFailPoint` set the `failCommand` fail point (test commands).
    FailPointSet {
        user: &'a str,
        mode: &'a str,
        data: &'a str,
    },
    /// The `failCommand` fail point fired on a command.
    FailPointFired {
        command: &'a str,
        app_name: Option<&'a str>,
        /// `close`, `error`, `block` or `write_concern_error`.
        effect: &'static str,
    },
}

/// Something an operator did, outside any client session.
#[derive(Debug)]
pub enum OperatorEvent<'a> {
    /// A configuration reload (SIGHUP or the admin endpoint): what changed,
    /// or why it was refused.
    Reload {
        ok: bool,
        path: &'a str,
        detail: &'a str,
    },
}

/// A subscriber to session events.
pub trait Sink: Send + Sync {
    fn emit(&self, conn: &ConnInfo, event: &Event<'_>);

    /// Operator actions; most sinks only care about sessions.
    fn operator(&self, _event: &OperatorEvent<'_>) {}
}

/// Every sink the proxy runs with.
#[derive(Clone, Default)]
pub struct Sinks(Vec<Arc<dyn Sink>>);

impl Sinks {
    pub fn new(sinks: Vec<Arc<dyn Sink>>) -> Sinks {
        Sinks(sinks)
    }

    pub fn emit(&self, conn: &ConnInfo, event: &Event<'_>) {
        for sink in &self.0 {
            sink.emit(conn, event);
        }
    }

    pub fn operator(&self, event: &OperatorEvent<'_>) {
        for sink in &self.0 {
            sink.operator(event);
        }
    }
}

/// Events → structured log lines. Per-message events log at debug only, so
/// the relay path formats nothing at the default level.
pub struct LogSink;

impl Sink for LogSink {
    fn emit(&self, conn: &ConnInfo, event: &Event<'_>) {
        let (conn_id, peer) = (conn.id, conn.peer);
        match event {
            Event::Command { name, disposition } => {
                tracing::debug!(conn = conn_id, command = %name, ?disposition, "command")
            }
            Event::Refused {
                name,
                db,
                code,
                reason,
            } => {
                tracing::debug!(conn = conn_id, command = %name, db = ?db, code, reason = reason.label(), "command refused")
            }
            Event::SignedIn {
                session,
                reauthenticated,
                issuer,
                app_name,
            } => {
                let (grant, backend_user) = match &session.access {
                    Access::Granted { grant, backend, .. } => {
                        (Some(*grant), Some(backend.user.as_str()))
                    }
                    Access::Refused => (None, None),
                };
                let id = &session.identity;
                if grant.is_none() {
                    tracing::warn!(conn = conn_id, %peer, user = %id.user, roles = ?id.roles, issuer,
                        "signed in, but no grant matches: every command will be refused");
                } else {
                    tracing::info!(conn = conn_id, %peer, user = %id.user, roles = ?id.roles, issuer,
                        flow = session.flow.label(), claims = ?id.log_claims, grant, backend_user,
                        reauthenticated, app = ?app_name, "signed in");
                }
            }
            // Debug-formatted: the reason quotes token fields (issuer, kid,
            // ...) that an attacker chose, so control characters are escaped.
            Event::SignInFailed { failure, flow } => tracing::warn!(conn = conn_id, %peer,
                reason = failure.reason(), flow = flow.label(), error = ?failure.to_string(), "authentication failed"),
            Event::ReauthenticationRefused { code } => tracing::warn!(conn = conn_id, %peer, code,
                "re-authentication as another user refused"),
            Event::Expired { user, why } => {
                tracing::info!(conn = conn_id, user = %user, why = why.label(),
                "sign-in no longer holds; commands get ReauthenticationRequired (391) until the client re-authenticates")
            }
            Event::WireError { kind, detail } => {
                tracing::warn!(conn = conn_id, %peer, kind, error = %detail, "bad message from client")
            }
            Event::Backend { stage, error } => {
                tracing::warn!(conn = conn_id, stage = stage.label(), error = %error, "backend error")
            }
            Event::SessionEnded {
                reason,
                counts,
                duration,
                user,
            } => {
                tracing::debug!(conn = conn_id, reason = reason.label(), commands = counts.commands,
                bytes_in = counts.bytes_from_client, bytes_out = counts.bytes_to_client,
                seconds = duration.as_secs_f64(), user = ?user, "session ended")
            }
            Event::FailPointSet { user, mode, data } => {
                tracing::warn!(conn = conn_id, user = %user, mode, data, "Set failpoint failCommand (test commands are on)")
            }
            Event::FailPointFired {
                command,
                app_name,
                effect,
            } => {
                tracing::info!(conn = conn_id, command = %command, app = ?app_name, effect, "Activating 'failCommand' failpoint")
            }
            Event::BackendConnected { .. } | Event::AuthStep { .. } | Event::Relayed { .. } => {}
        }
    }

    fn operator(&self, event: &OperatorEvent<'_>) {
        match event {
            OperatorEvent::Reload {
                ok: true,
                path,
                detail,
            } => tracing::info!(config = %path, changes = %detail, "configuration reloaded"),
            OperatorEvent::Reload {
                ok: false,
                path,
                detail,
            } => tracing::warn!(config = %path, error = %detail,
                "configuration reload refused; the running configuration keeps serving"),
        }
    }
}
