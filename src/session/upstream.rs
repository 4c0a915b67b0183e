//! The session's side of the upstream: relaying one command on a leased
//! backend connection, with the hooks around the one relay path
//! ([`super::relay`]), and cleaning up on the backend when the connection
//! closes.
//!
//! Before the lease, [`Session::claim`] checks that every cursor and
//! logical session the request names belongs to this principal
//! ([`Ownership`]); after the reply, [`Session::track`] records the cursors
//! it opened or closed and the end of transactions. When the client
//! connection closes, what only it still used is cleaned up: open
//! transactions aborted, cursors killed, sessions ended, within
//! [`CLEANUP_WITHIN`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::raw::cstr;
use bson::{rawdoc, RawArrayBuf, RawDocumentBuf};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::authz::BackendIdentity;
use crate::backend::ownership::{Cleanup, Owner, Ownership, Refusal, SessionKey};
use crate::backend::{Backend, BackendError, Lease, LeaseError, Purpose, Target};
use crate::errors::MongoError;
use crate::runtime::Runtime;
use crate::wire::{self, Command, Request};

use super::decide::Affinity;
use super::events::{BackendStage, Disposition, Event};
use super::phase::{Access, SignedIn};
use super::relay::{self, Progress, RelayError};
use super::{closing, commands, CloseReason, Refused, ReplyKind, Rewrite, Session};

/// How long the clean-up after a client's close may take in all.
pub const CLEANUP_WITHIN: Duration = Duration::from_secs(5);
/// `endSessions` takes at most this many sessions at once.
const END_SESSIONS_BATCH: usize = 10_000;

/// What this connection holds on the backend, through its principal.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// The principal and its backend user; `None` until a granted sign-in.
    pub owner: Option<Owner>,
    pub target: Option<Arc<BackendIdentity>>,
    pub cursors: HashSet<i64>,
    pub sessions: HashSet<SessionKey>,
    /// The sets' size at which they are next pruned ([`Held::prune`]).
    prune_at: usize,
}

/// Below this many entries a connection's sets are not pruned.
const PRUNE_FROM: usize = 64;

impl Held {
    /// Forgets the cursors and sessions another connection of the same
    /// principal closed or ended meanwhile, so that a long-lived connection
    /// holds as many entries as are really open; the next pruning waits
    /// until the sets have doubled.
    fn prune(&mut self, ownership: &Ownership) {
        let Some(owner) = &self.owner else {
            return;
        };
        if self.cursors.len() + self.sessions.len() < self.prune_at.max(PRUNE_FROM) {
            return;
        }
        self.cursors.retain(|id| ownership.owns_cursor(*id, owner));
        self.sessions
            .retain(|key| ownership.owns_session(key, owner));
        self.prune_at = 2 * (self.cursors.len() + self.sessions.len());
    }
}

/// What the checks before the lease found.
#[derive(Debug, Default)]
struct Claim {
    session: Option<SessionKey>,
    /// The request as it goes to the backend, when it was changed
    /// (`endSessions` naming other principals' sessions).
    rewritten: Option<Vec<u8>>,
    /// Sessions the request ends.
    ends: Vec<SessionKey>,
}

fn purpose(affinity: Affinity) -> Purpose {
    match affinity {
        Affinity::None => Purpose::Request,
        Affinity::Cursor => Purpose::Cursor,
        Affinity::Transaction => Purpose::Transaction,
        Affinity::Exhaust => Purpose::Exhaust,
    }
}

/// The owner key of a principal signed in as a backend user.
pub(super) fn owner_of(user: &str, backend_user: &str) -> Owner {
    Arc::from(format!("{user}\u{0}{backend_user}"))
}

fn refusal_error(r: Refusal) -> MongoError {
    match r {
        Refusal::CursorNotFound(id) => {
            MongoError::cursor_not_found(format!("cursor id {id} not found"))
        }
        Refusal::SessionOfAnother => {
            MongoError::unauthorized("Cannot use this logical session: it belongs to another user")
        }
        Refusal::BadLsid => {
            MongoError::bad_value("lsid must be a document whose id is a 16-byte UUID")
        }
        Refusal::TooManySessions => MongoError::too_many_logical_sessions(
            "too many logical sessions are open through mongo-oidc-proxy; end unused ones",
        ),
    }
}

/// What a client sees when no connection could be leased: never the
/// backend's address or user.
fn lease_refusal(e: &LeaseError) -> MongoError {
    match e {
        LeaseError::Timeout { ms, .. } => MongoError::network_timeout(format!(
            "mongo-oidc-proxy found no free backend connection within {ms} ms"
        )),
        LeaseError::TooManyWaiters { .. } => MongoError::network_timeout(
            "mongo-oidc-proxy has too many requests waiting for a backend connection",
        ),
        LeaseError::Backend(e) => unreachable(e),
    }
}

/// What a client sees when the backend cannot be reached or signed in to.
pub(super) fn unreachable(e: &BackendError) -> MongoError {
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

/// The error for a command that did not run, labelled as the command needs.
fn labelled(error: MongoError, command: &Command<'_>, affinity: Affinity) -> MongoError {
    if affinity == Affinity::Transaction && !command.is_retryable_write() {
        return error.labelled_in_transaction();
    }
    error.labelled_for(command.is_retryable_write())
}

/// The reply to a command the end of the drain period interrupted.
fn interrupted_at_shutdown(command: &Command<'_>) -> RawDocumentBuf {
    MongoError::interrupted_at_shutdown(
        "interrupted at shutdown: mongo-oidc-proxy's drain period ended",
    )
    .labelled_for(command.is_retryable_write())
    .to_document()
}

/// `endSessions`/`killSessions` keeping only the caller's own sessions.
fn own_sessions(
    command: &Command<'_>,
    ownership: &Ownership,
    owner: &Owner,
) -> Option<(RawArrayBuf, Vec<SessionKey>, bool)> {
    let list = command.body.get_array(command.name).ok()?;
    let mut kept = RawArrayBuf::new();
    let mut keys = Vec::new();
    let mut dropped = false;
    for item in list {
        let doc = item.ok().and_then(|v| v.as_document());
        let key = doc.and_then(|d| crate::backend::ownership::session_key(d).ok());
        match (doc, key) {
            (Some(d), Some(k)) if ownership.owns_session(&k, owner) => {
                kept.push(d);
                keys.push(k);
            }
            _ => dropped = true,
        }
    }
    Some((kept, keys, dropped))
}

/// The command body with its first element's value replaced.
fn with_list(command: &Command<'_>, list: RawArrayBuf) -> Option<RawDocumentBuf> {
    let mut body = RawDocumentBuf::new();
    for (i, element) in command.body.iter().enumerate() {
        let (key, value) = element.ok()?;
        if i == 0 {
            body.append(key, list.clone());
        } else {
            body.append(key, value);
        }
    }
    Some(body)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Relays a command as the session's backend identity on a leased
    /// connection; a drain that ends meanwhile interrupts it with 11600 if
    /// no reply byte was sent yet.
    pub(super) async fn relay(
        &mut self,
        req: &Request<'_>,
        rt: &Runtime,
        affinity: Affinity,
        rewrite: Option<Rewrite>,
    ) -> Result<(), CloseReason> {
        let (Some(command), Some(owner), Some(target)) = (
            req.command,
            self.held.owner.clone(),
            self.held.target.clone(),
        ) else {
            return Err(CloseReason::MalformedMessage);
        };
        let claimed = self.claim(&command, &owner);
        let disposition = match &claimed {
            Ok(Some(_)) => Disposition::Relayed,
            Ok(None) => Disposition::Local,
            Err(_) => Disposition::Refused(Refused::Ownership),
        };
        self.emit(&Event::Command {
            name: command.name,
            disposition,
        });
        let claim = match claimed {
            Ok(Some(claim)) => claim,
            Ok(None) => return self.answer(req, &commands::ok()).await,
            Err(error) => {
                let error = labelled(error, &command, affinity);
                self.emit(&Event::Refused {
                    name: command.name,
                    db: command.db,
                    code: error.code,
                    reason: Refused::Ownership,
                });
                return self.answer(req, &error.to_document()).await;
            }
        };
        let Some(mut lease) = self.lease(req, &command, rt, &target, affinity).await? else {
            return Ok(());
        };
        let bytes = claim.rewritten.as_deref().unwrap_or(req.bytes);
        let started = Instant::now();
        let mut progress = Progress::default();
        let outcome = match rewrite {
            None => {
                let inspect = rt.config.audit.as_ref().is_some_and(|a| a.commands);
                self.exchange(&mut lease, bytes, req.more_to_come, inspect, &mut progress)
                    .await
            }
            Some(rewrite) => {
                self.exchange_rewritten(&mut lease, bytes, rt, &command, rewrite, &mut progress)
                    .await
            }
        };
        if matches!(outcome, Err(Interrupted::Backend(_))) {
            lease.clear_idle();
        }
        // Back to the pool, or closed when the exchange did not finish.
        drop(lease);
        self.relayed(req, &command, &progress, started.elapsed());
        match outcome {
            Ok(()) => {
                self.track(&command, &claim, &progress, &owner);
                Ok(())
            }
            Err(Interrupted::Client(error)) => {
                self.emit(&Event::ClientIo { error: &error });
                Err(CloseReason::ClientIo)
            }
            Err(Interrupted::Backend(e)) => {
                self.emit(&Event::Backend {
                    stage: BackendStage::Relay,
                    error: &e,
                });
                if progress.replying || req.more_to_come {
                    // Half a reply went out: only closing tells the client.
                    return Err(CloseReason::BackendClosed);
                }
                let error = MongoError::host_unreachable(
                    "mongo-oidc-proxy lost its backend connection during the command",
                );
                let error = labelled(error, &command, affinity);
                self.answer(req, &error.to_document()).await
            }
            Err(Interrupted::ByOperator) => Err(CloseReason::ClosedByOperator),
            Err(Interrupted::Drain) => {
                if !progress.replying {
                    let _ = self.answer(req, &interrupted_at_shutdown(&command)).await;
                }
                Err(CloseReason::Shutdown)
            }
        }
    }

    /// Sends `doc` as the reply to `req`, unless it asked for none.
    async fn answer(&mut self, req: &Request<'_>, doc: &RawDocumentBuf) -> Result<(), CloseReason> {
        if req.more_to_come {
            return Ok(());
        }
        self.send(req.request_id, ReplyKind::Msg, doc).await
    }

    /// A connection for the request; `None` when the client was answered
    /// with why there is none.
    async fn lease(
        &mut self,
        req: &Request<'_>,
        command: &Command<'_>,
        rt: &Runtime,
        target: &BackendIdentity,
        affinity: Affinity,
    ) -> Result<Option<Lease>, CloseReason> {
        let backend: &Arc<Backend> = &rt.backend;
        let target = Target {
            user: &target.user,
            password: &target.password,
        };
        let leased = tokio::select! {
            biased;
            r = backend.lease(target, purpose(affinity)) => r,
            _ = closing(&mut self.stage) => {
                let _ = self.answer(req, &interrupted_at_shutdown(command)).await;
                return Err(CloseReason::Shutdown);
            }
            _ = self.listed.closed() => return Err(CloseReason::ClosedByOperator),
        };
        match leased {
            Ok(lease) => {
                if lease.fresh() {
                    self.emit(&Event::BackendConnected {
                        seconds: lease.waited().as_secs_f64(),
                    });
                }
                self.emit(&Event::Leased {
                    seconds: lease.waited().as_secs_f64(),
                });
                Ok(Some(lease))
            }
            Err(e) => {
                self.emit(&Event::LeaseFailed { error: &e });
                let error = labelled(lease_refusal(&e), command, affinity);
                self.answer(req, &error.to_document()).await?;
                Ok(None)
            }
        }
    }

    /// The plain relay: streamed both ways, interrupted by the end of a
    /// drain or an operator's close.
    async fn exchange(
        &mut self,
        lease: &mut Lease,
        bytes: &[u8],
        more_to_come: bool,
        inspect: bool,
        progress: &mut Progress,
    ) -> Result<(), Interrupted> {
        let client = &mut self.client.stream;
        tokio::select! {
            r = relay::stream(client, lease, bytes, more_to_come, inspect, progress) => r.map_err(Interrupted::from),
            _ = closing(&mut self.stage) => Err(Interrupted::Drain),
            _ = self.listed.closed() => Err(Interrupted::ByOperator),
        }
    }

    /// A relay whose reply the proxy changes (`getParameter`, a fail
    /// point's `writeConcernError`): the first reply is read whole,
    /// rewritten and sent on; anything that cannot be rewritten (an exhaust
    /// stream, not OP_MSG) is passed on as it came.
    async fn exchange_rewritten(
        &mut self,
        lease: &mut Lease,
        bytes: &[u8],
        rt: &Runtime,
        command: &Command<'_>,
        rewrite: Rewrite,
        progress: &mut Progress,
    ) -> Result<(), Interrupted> {
        let frame = tokio::select! {
            r = relay::whole(lease, bytes) => r.map_err(Interrupted::from)?,
            _ = closing(&mut self.stage) => return Err(Interrupted::Drain),
            _ = self.listed.closed() => return Err(Interrupted::ByOperator),
        };
        let parsed = wire::OpMsg::parse(&frame.bytes).ok();
        let streaming = parsed.as_ref().is_some_and(|m| m.flags.more_to_come());
        let rewritten = parsed.filter(|_| !streaming).map(|m| {
            let body = self.rewrite(m.body, rt, command, rewrite);
            wire::op_msg::encode(frame.header.request_id, frame.header.response_to, 0, &body)
        });
        let out: &[u8] = rewritten.as_deref().unwrap_or(&frame.bytes);
        progress.replying = true;
        self.write_to_client(out)
            .await
            .map_err(Interrupted::Client)?;
        progress.replies = 1;
        progress.to_client = out.len() as u64;
        progress.status = wire::op_msg::reply_status(out);
        if streaming {
            let client = &mut self.client.stream;
            tokio::select! {
                r = relay::forward_rest(client, lease, progress) => r.map_err(Interrupted::from)?,
                _ = closing(&mut self.stage) => return Err(Interrupted::Drain),
            }
        }
        Ok(())
    }

    fn rewrite(
        &mut self,
        body: &bson::RawDocument,
        rt: &Runtime,
        command: &Command<'_>,
        rewrite: Rewrite,
    ) -> RawDocumentBuf {
        match rewrite {
            Rewrite::Parameters { all, show_details } => {
                commands::rewrite_parameters(body, rt.test_commands, all, show_details)
            }
            Rewrite::WriteConcern => {
                let fault = if commands::is_ok(body) {
                    self.write_concern_fault(command.name, command.is_retryable_write())
                } else {
                    None
                };
                match fault {
                    Some(f) => f.apply(body),
                    None => body.to_owned(),
                }
            }
        }
    }

    /// The `Relayed` event, the session's byte counts and the memory
    /// notification after a large message.
    fn relayed(
        &mut self,
        req: &Request<'_>,
        command: &Command<'_>,
        progress: &Progress,
        duration: Duration,
    ) {
        self.counts.bytes_to_client += progress.to_client;
        self.listed.count_out(progress.to_client);
        self.emit(&Event::Relayed {
            to_backend: req.bytes.len() as u64,
            to_client: progress.to_client,
            replies: progress.replies,
            command: command.name,
            db: command.db,
            collection: command.target,
            status: progress.status,
            duration,
        });
        if req.bytes.len() as u64 + progress.to_client >= wire::frame::OWN_MAPPING as u64 {
            self.shared.memory_freed.notify_one();
        }
    }

    /// Before the lease: the cursors and the session the request names
    /// must be this principal's. `Ok(None)`: nothing is left to send (an
    /// `endSessions` naming only other principals' sessions), answer ok.
    fn claim(&mut self, command: &Command<'_>, owner: &Owner) -> Result<Option<Claim>, MongoError> {
        let ownership = Arc::clone(&self.shared.ownership);
        let conn = self.conn.id;
        let mut claim = Claim::default();
        if let Some(lsid) = command.lsid {
            let key = ownership
                .use_session(lsid, owner, conn)
                .map_err(refusal_error)?;
            self.held.sessions.insert(key);
            let ends = matches!(command.name, "commitTransaction" | "abortTransaction");
            if let (Some(false), Some(txn), false) = (command.autocommit, command.txn_number, ends)
            {
                ownership.set_transaction(&key, Some(txn));
            }
            claim.session = Some(key);
        }
        for id in command.cursors.ids() {
            ownership
                .use_cursor(id, owner, conn)
                .map_err(refusal_error)?;
            self.held.cursors.insert(id);
        }
        match command.name {
            "endSessions" | "killSessions" => {
                let Some((kept, keys, dropped)) = own_sessions(command, &ownership, owner) else {
                    return Ok(Some(claim));
                };
                if keys.is_empty() {
                    return Ok(None);
                }
                if dropped {
                    let body = with_list(command, kept).ok_or_else(|| {
                        MongoError::bad_value(format!("{} could not be read", command.name))
                    })?;
                    claim.rewritten = Some(wire::op_msg::encode(0, 0, 0, &body));
                }
                claim.ends = keys;
            }
            "killAllSessions" | "killAllSessionsByPattern" => {
                return Err(MongoError::unauthorized(format!(
                    "{} is not allowed through mongo-oidc-proxy: it would end other users' \
                     sessions; end your own with endSessions",
                    command.name
                )));
            }
            _ => {}
        }
        Ok(Some(claim))
    }

    /// After the reply: the cursors it opened or closed, the transaction
    /// it ended, the sessions it ended.
    fn track(&mut self, command: &Command<'_>, claim: &Claim, p: &Progress, owner: &Owner) {
        let ownership = Arc::clone(&self.shared.ownership);
        let ok = p.first.ok == Some(true);
        match command.name {
            "getMore" => {
                let gone = p.last.cursor_id == Some(0) || p.first.code == Some(43);
                for id in command.cursors.ids().filter(|_| gone) {
                    ownership.closed_cursor(id);
                    self.held.cursors.remove(&id);
                }
            }
            "killCursors" if ok => {
                for id in command.cursors.ids() {
                    ownership.closed_cursor(id);
                    self.held.cursors.remove(&id);
                }
            }
            _ => {
                if let Some(id) = p.first.cursor_id.filter(|id| *id != 0 && ok) {
                    let ns = p.ns.clone().unwrap_or_else(|| {
                        format!(
                            "{}.{}",
                            command.db.unwrap_or(""),
                            command.target.unwrap_or("")
                        )
                    });
                    if ownership.opened_cursor(id, &ns, owner, self.conn.id) {
                        self.held.cursors.insert(id);
                    } else {
                        // No one could continue it: kill it now.
                        let cleanup = Cleanup {
                            kill: vec![(ns, id)],
                            ..Cleanup::default()
                        };
                        self.clean_up(cleanup);
                    }
                }
            }
        }
        if let (Some(key), true) = (claim.session, ok) {
            if matches!(command.name, "commitTransaction" | "abortTransaction") {
                ownership.set_transaction(&key, None);
            }
        }
        for key in &claim.ends {
            ownership.ended_session(key);
            self.held.sessions.remove(key);
        }
        self.held.prune(&ownership);
        let in_transaction = claim
            .session
            .is_some_and(|key| ownership.open_transaction(&key).is_some());
        self.listed.set_pins(
            self.held.cursors.len(),
            self.held.sessions.len(),
            in_transaction,
        );
    }

    /// A sign-in (or re-authentication) decides whose cursors and sessions
    /// this connection may use; a change of owner first releases the old
    /// owner's.
    pub(super) fn hold_as(&mut self, session: &SignedIn) {
        let (owner, target) = match &session.access {
            Access::Granted { backend, .. } => (
                Some(owner_of(&session.identity.user, &backend.user)),
                Some(Arc::clone(backend)),
            ),
            Access::Refused => (None, None),
        };
        if owner != self.held.owner {
            self.release_held();
        }
        self.held.owner = owner;
        self.held.target = target;
    }

    /// The connection closed (or signed in as someone else): what only it
    /// still held is cleaned up on the backend, in the background.
    pub(super) fn release_held(&mut self) {
        let cursors: Vec<i64> = self.held.cursors.drain().collect();
        let sessions: Vec<SessionKey> = self.held.sessions.drain().collect();
        if cursors.is_empty() && sessions.is_empty() {
            return;
        }
        let cleanup = self
            .shared
            .ownership
            .release(self.conn.id, &cursors, &sessions);
        self.clean_up(cleanup);
    }

    fn clean_up(&self, cleanup: Cleanup) {
        let Some(target) = self.held.target.clone() else {
            return;
        };
        if cleanup.is_empty() {
            return;
        }
        let backend = Arc::clone(&self.shared.runtime.load().backend);
        tokio::spawn(async move {
            let run = run_cleanup(&backend, &target, &cleanup);
            match tokio::time::timeout(CLEANUP_WITHIN, run).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cleaning up a closed client's cursors and sessions on the backend failed"),
                Err(_) => tracing::warn!(
                    "cleaning up a closed client's cursors and sessions on the backend took over {} s; the backend will expire them",
                    CLEANUP_WITHIN.as_secs()
                ),
            }
        });
    }
}

/// How a relay ended early.
#[derive(Debug)]
enum Interrupted {
    /// The client's side failed; the session ends as when it closes.
    Client(std::io::Error),
    Backend(BackendError),
    Drain,
    ByOperator,
}

impl From<RelayError> for Interrupted {
    fn from(e: RelayError) -> Self {
        match e {
            RelayError::Client(e) => Interrupted::Client(e),
            RelayError::Backend(e) => Interrupted::Backend(e),
        }
    }
}

/// Aborts, kills and ends, ignoring what the backend answers (the
/// transaction may have ended meanwhile, the cursor may be exhausted).
async fn run_cleanup(
    backend: &Arc<Backend>,
    target: &BackendIdentity,
    cleanup: &Cleanup,
) -> Result<(), LeaseError> {
    let target = Target {
        user: &target.user,
        password: &target.password,
    };
    let mut lease = backend.lease(target, Purpose::Request).await?;
    lease.exchange_started();
    let Some(conn) = lease.conn() else {
        return Ok(());
    };
    for (lsid, txn) in &cleanup.abort {
        let abort = rawdoc! {
            "abortTransaction": 1, "lsid": lsid.clone(), "txnNumber": *txn,
            "autocommit": false, "$db": "admin",
        };
        let _ = conn.command(&abort).await;
    }
    for (ns, id) in &cleanup.kill {
        let Some((db, coll)) = ns.split_once('.') else {
            continue;
        };
        let kill = rawdoc! { "killCursors": coll, "cursors": [*id], "$db": db };
        let _ = conn.command(&kill).await;
    }
    for batch in cleanup.end.chunks(END_SESSIONS_BATCH) {
        let mut list = RawArrayBuf::new();
        for lsid in batch {
            list.push(lsid.clone());
        }
        let mut end = RawDocumentBuf::new();
        end.append(cstr!("endSessions"), list);
        end.append(cstr!("$db"), "admin");
        let _ = conn.command(&end).await;
    }
    lease.exchange_done();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::spec::BinarySubtype;
    use bson::Binary;

    fn lsid(n: u8) -> RawDocumentBuf {
        rawdoc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![n; 16] } }
    }

    fn command(body: &RawDocumentBuf) -> Command<'_> {
        let name = body.iter().next().unwrap().unwrap().0.as_str();
        Command {
            name,
            target: None,
            body,
            db: Some("admin"),
            lsid: None,
            txn_number: None,
            autocommit: None,
            start_transaction: None,
            cursors: wire::Cursors::None,
        }
    }

    #[test]
    fn end_sessions_keeps_only_the_callers_sessions_and_the_rest_of_the_command() {
        let ownership = Ownership::default();
        let (alice, bob) = (owner_of("test/alice", "app"), owner_of("test/bob", "app"));
        ownership.use_session(&lsid(1), &alice, 1).unwrap();
        ownership.use_session(&lsid(2), &bob, 2).unwrap();
        let body = rawdoc! { "endSessions": [lsid(1), lsid(2), lsid(3), 7], "$db": "admin" };
        let c = command(&body);
        let (kept, keys, dropped) = own_sessions(&c, &ownership, &alice).unwrap();
        assert_eq!(keys, vec![[1u8; 16]]);
        assert!(
            dropped,
            "bob's, an unknown one and a non-document were dropped"
        );
        let rebuilt = with_list(&c, kept).unwrap();
        assert_eq!(
            rebuilt,
            rawdoc! { "endSessions": [lsid(1)], "$db": "admin" }
        );
        // Only the caller's: nothing dropped, the command goes out unchanged.
        let body = rawdoc! { "endSessions": [lsid(1)], "$db": "admin" };
        let (_, _, dropped) = own_sessions(&command(&body), &ownership, &alice).unwrap();
        assert!(!dropped);
    }

    #[test]
    fn a_connections_sets_forget_what_other_connections_closed_once_they_grow() {
        let ownership = Ownership::default();
        let alice = owner_of("test/alice", "app");
        let mut held = Held {
            owner: Some(Arc::clone(&alice)),
            ..Held::default()
        };
        for id in 1..=PRUNE_FROM as i64 {
            ownership.opened_cursor(id, "app.c", &alice, 1);
            held.cursors.insert(id);
        }
        // Another connection exhausted all but one.
        for id in 2..=PRUNE_FROM as i64 {
            ownership.closed_cursor(id);
        }
        held.prune(&ownership);
        assert_eq!(held.cursors.iter().copied().collect::<Vec<_>>(), vec![1]);
        // Small sets are left alone until they reach PRUNE_FROM again.
        ownership.closed_cursor(1);
        held.prune(&ownership);
        assert_eq!(held.cursors.len(), 1);
    }

    #[test]
    fn refusals_tell_the_client_what_mongod_would_and_nothing_of_the_backend() {
        let cases = [
            (Refusal::CursorNotFound(7), 43, "cursor id 7 not found"),
            (
                Refusal::SessionOfAnother,
                13,
                "Cannot use this logical session: it belongs to another user",
            ),
            (
                Refusal::BadLsid,
                2,
                "lsid must be a document whose id is a 16-byte UUID",
            ),
            (
                Refusal::TooManySessions,
                261,
                "too many logical sessions are open through mongo-oidc-proxy; end unused ones",
            ),
        ];
        for (refusal, code, text) in cases {
            let e = refusal_error(refusal);
            assert_eq!((e.code, e.errmsg.as_str()), (code, text));
        }
        let timeout = LeaseError::Timeout {
            ms: 5000,
            pool: "pool db1:27017 as app_rw".into(),
        };
        let e = lease_refusal(&timeout);
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                89,
                "mongo-oidc-proxy found no free backend connection within 5000 ms"
            )
        );
        let waiters = LeaseError::TooManyWaiters {
            waiters: 1000,
            pool: "pool db1:27017 as app_rw".into(),
        };
        assert_eq!(lease_refusal(&waiters).code, 89);
        let down = LeaseError::Backend(BackendError::ConnectRefused {
            addr: "db1:27017".into(),
        });
        assert_eq!(
            lease_refusal(&down).errmsg,
            "mongo-oidc-proxy cannot reach its backend"
        );
    }
}
