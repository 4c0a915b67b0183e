//! What happened, as events: the act step emits one per message and per
//! transition, and the sinks (metrics, log, the audit trail) turn them into
//! counters and lines. Nothing else in the session logs or counts.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

use crate::auth::AuthFailure;
use crate::backend::{BackendError, LeaseError};
use crate::wire::op_msg::ReplyStatus;

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

/// A bound on what an anonymous client may cost, hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.sign_in_deadline_secs` passed before a sign-in.
    SignInDeadline,
    /// A message over `limits.max_message_size_before_sign_in`.
    MessageSizeBeforeSignIn,
    /// `limits.max_pending_human_flows_per_ip`: step 2 gets no five-minute wait.
    PendingHumanFlows,
    /// A failed sign-in answered after a delay.
    SignInFailureDelay,
    /// `limits.max_sign_in_failures_per_connection`: the connection is closed.
    SignInFailures,
}

impl Limit {
    pub const ALL: [Limit; 5] = [
        Limit::SignInDeadline,
        Limit::MessageSizeBeforeSignIn,
        Limit::PendingHumanFlows,
        Limit::SignInFailureDelay,
        Limit::SignInFailures,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Limit::SignInDeadline => "sign_in_deadline",
            Limit::MessageSizeBeforeSignIn => "message_size_before_sign_in",
            Limit::PendingHumanFlows => "pending_human_flows_per_ip",
            Limit::SignInFailureDelay => "sign_in_failure_delay",
            Limit::SignInFailures => "sign_in_failures_per_connection",
        }
    }
}

#[derive(Debug)]
pub enum Event<'a> {
    /// A bound was hit (counted; the log says what happened).
    LimitHit { limit: Limit },
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
    /// Writing a reply to the client failed during a relay.
    ClientIo { error: &'a std::io::Error },
    /// A backend connection was leased after waiting this long.
    Leased { seconds: f64 },
    /// No backend connection could be leased.
    LeaseFailed { error: &'a LeaseError },
    /// Time a SASL step took, including any JWKS fetch.
    AuthStep { seconds: f64 },
    Relayed {
        to_backend: u64,
        to_client: u64,
        replies: u64,
        /// The command's name, `$db` and first value when a string (the
        /// collection of `find`, `insert`...).
        command: &'a str,
        db: Option<&'a str>,
        collection: Option<&'a str>,
        /// The first reply's `ok` and error code, read only while commands
        /// are audited and only when that reply was already buffered.
        status: Option<ReplyStatus>,
        /// From sending the request to the end of the last reply.
        duration: Duration,
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
    /// An administrative request, over HTTP (`/admin/...`) or the wire
    /// (`oidcListKeys`, `oidcRefreshKeys`).
    Admin {
        /// What was asked: [`AdminAction::label`].
        action: AdminAction,
        /// What it was about: an issuer, a connection id; `None` for all.
        target: Option<&'a str>,
        outcome: AdminOutcome,
        /// What happened, for the log: changes made, keys loaded, the error.
        detail: &'a str,
        /// Who asked: `http 127.0.0.1:53122`, or `wire conn 12 user okta/alice`.
        source: &'a str,
    },
}

/// The administrative requests there are (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    Reload,
    JwksRefresh,
    JwksRevoke,
    Sessions,
    SessionClose,
    /// The wire commands, under their mongod names.
    OidcListKeys,
    OidcRefreshKeys,
}

impl AdminAction {
    pub const ALL: [AdminAction; 7] = [
        AdminAction::Reload,
        AdminAction::JwksRefresh,
        AdminAction::JwksRevoke,
        AdminAction::Sessions,
        AdminAction::SessionClose,
        AdminAction::OidcListKeys,
        AdminAction::OidcRefreshKeys,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AdminAction::Reload => "reload",
            AdminAction::JwksRefresh => "jwks_refresh",
            AdminAction::JwksRevoke => "jwks_revoke",
            AdminAction::Sessions => "sessions",
            AdminAction::SessionClose => "session_close",
            AdminAction::OidcListKeys => "oidcListKeys",
            AdminAction::OidcRefreshKeys => "oidcRefreshKeys",
        }
    }
}

/// How an administrative request ended (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOutcome {
    Ok,
    /// Carried out, and it failed (a refused config, an IdP that did not answer).
    Failed,
    /// No or a wrong bearer token.
    Unauthorized,
    /// No such session or issuer.
    NotFound,
}

impl AdminOutcome {
    pub const ALL: [AdminOutcome; 4] = [
        AdminOutcome::Ok,
        AdminOutcome::Failed,
        AdminOutcome::Unauthorized,
        AdminOutcome::NotFound,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AdminOutcome::Ok => "ok",
            AdminOutcome::Failed => "failed",
            AdminOutcome::Unauthorized => "unauthorized",
            AdminOutcome::NotFound => "not_found",
        }
    }
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

    pub fn add(&mut self, sink: Arc<dyn Sink>) {
        self.0.push(sink);
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
/// the relay path formats nothing at the default level; failed sign-ins are
/// rate-limited, so a flood of forged tokens cannot flood the log.
#[derive(Default)]
pub struct LogSink {
    failures: RateLimit,
}

/// At most [`RateLimit::PER_SECOND`] lines a second; the rest are counted
/// and reported on the next line that is written.
#[derive(Default)]
pub struct RateLimit {
    second: AtomicU64,
    written: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const PER_SECOND: u64 = 10;

    /// `Some(suppressed since the last written line)` when a line may be written.
    pub fn admit(&self, now_secs: u64) -> Option<u64> {
        if self.second.swap(now_secs, Ordering::Relaxed) != now_secs {
            self.written.store(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `name=value,...` for the claims `log_claims` names; Debug-escaped
/// values, as the token's author chose them.
struct LogClaims<'a>(&'a [(String, String)]);

impl fmt::Display for LogClaims<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{name}={value:?}")?;
        }
        Ok(())
    }
}

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
                    // Fields only, each once: conn and peer come from the
                    // session span, roles and the rest are in the audit record.
                    let claims = (!id.log_claims.is_empty())
                        .then(|| tracing::field::display(LogClaims(&id.log_claims)));
                    tracing::info!(user = %id.user, idp = issuer, flow = session.flow.label(),
                        grant, backend_user, app = *app_name, claims,
                        reauth = reauthenticated.then_some(true), "signed in");
                }
            }
            // Debug-formatted: the reason quotes token fields (issuer, kid,
            // ...) that an attacker chose, so control characters are escaped.
            Event::SignInFailed { failure, flow } => {
                if let Some(suppressed) = self.failures.admit(unix_secs()) {
                    tracing::warn!(conn = conn_id, %peer, reason = failure.reason(), flow = flow.label(),
                        error = ?failure.to_string(), suppressed_before = suppressed, "authentication failed");
                }
            }
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
            Event::LimitHit { limit } => {
                tracing::debug!(conn = conn_id, %peer, limit = limit.label(), "limit hit")
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
            Event::ClientIo { error } => {
                tracing::debug!(conn = conn_id, error = %error, "client connection failed during a relay")
            }
            Event::LeaseFailed { error } => {
                tracing::warn!(conn = conn_id, error = %error, "no backend connection for a command")
            }
            Event::BackendConnected { .. }
            | Event::Leased { .. }
            | Event::AuthStep { .. }
            | Event::Relayed { .. } => {}
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
            OperatorEvent::Admin {
                action,
                target,
                outcome,
                detail,
                source,
            } => match outcome {
                AdminOutcome::Ok => {
                    tracing::info!(action = action.label(), target = target.unwrap_or("all"),
                    outcome = outcome.label(), detail = %detail, source = %source, "admin request")
                }
                _ => tracing::warn!(action = action.label(), target = target.unwrap_or("all"),
                    outcome = outcome.label(), detail = %detail, source = %source, "admin request"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_lines_are_rate_limited_and_the_rest_counted() {
        let r = RateLimit::default();
        let admitted: Vec<Option<u64>> = (0..13).map(|_| r.admit(100)).collect();
        assert!(admitted[..10].iter().all(|a| *a == Some(0)));
        assert!(admitted[10..].iter().all(Option::is_none));
        // The next second's first line reports the three suppressed.
        assert_eq!(r.admit(101), Some(3));
        assert_eq!(r.admit(101), Some(0));
    }
}
