//! The open sessions, for the operator: who is signed in (`GET
//! /admin/sessions`) and a way to close one connection (`POST
//! /admin/sessions/<id>/close`).
//!
//! A session registers itself when it starts and gets a [`SessionHandle`];
//! dropping the handle (the session ended, or its task was aborted) removes
//! it. Who signed in arrives as events ([`SessionRegistry`] is a [`Sink`]);
//! the per-message counts are plain atomics the session adds to, so the
//! relay path takes no lock here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::Notify;

use super::events::{ConnInfo, Event, Sink};
use super::phase::{Access, SignedIn};

/// What a sign-in looks like to the operator. Never a token or password.
#[derive(Debug, Clone)]
struct SignInView {
    user: String,
    roles: Vec<String>,
    issuer: String,
    grant: Option<usize>,
    backend_user: Option<String>,
    admin: bool,
    flow: &'static str,
    signed_in_at: SystemTime,
    token_expires_at: u64,
    expired: Option<&'static str>,
    app_name: Option<String>,
}

impl SignInView {
    fn of(s: &SignedIn, issuer: &str, app_name: Option<&str>) -> SignInView {
        let (grant, backend_user) = match &s.access {
            Access::Granted { grant, backend, .. } => (Some(*grant), Some(backend.user.clone())),
            Access::Refused => (None, None),
        };
        SignInView {
            user: s.identity.user.clone(),
            roles: s.identity.roles.clone(),
            issuer: issuer.to_owned(),
            grant,
            backend_user,
            admin: s.access.is_admin(),
            flow: s.flow.label(),
            signed_in_at: s.signed_in_at,
            token_expires_at: s.identity.expires_at,
            expired: s.expired.map(|e| e.label()),
            app_name: app_name.map(str::to_owned),
        }
    }
}

struct Entry {
    peer: SocketAddr,
    connected_at: SystemTime,
    close: Notify,
    commands: AtomicU64,
    bytes_from_client: AtomicU64,
    bytes_to_client: AtomicU64,
    /// What the connection holds on the backend ([`SessionHandle::set_pins`]).
    cursors: AtomicU64,
    logical_sessions: AtomicU64,
    in_transaction: AtomicBool,
    /// Written on sign-in and expiry only.
    sign_in: Mutex<Option<SignInView>>,
}

/// One open session as `GET /admin/sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionView {
    /// The connection id (also the `connectionId` of the session's hello).
    pub id: i32,
    pub client: String,
    pub connected_at: String,
    pub user: Option<String>,
    pub roles: Vec<String>,
    pub issuer: Option<String>,
    /// Index of the `[[grant]]` that matched, `None` when none did.
    pub grant: Option<usize>,
    pub backend_user: Option<String>,
    pub admin: bool,
    pub flow: Option<&'static str>,
    pub signed_in_at: Option<String>,
    pub token_expires_at: Option<String>,
    /// The sign-in no longer holds: the client gets 391 until it re-authenticates.
    pub expired: bool,
    pub expired_reason: Option<&'static str>,
    pub app_name: Option<String>,
    pub commands: u64,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    /// Backend cursors this connection holds (opened or continued).
    pub cursors: u64,
    /// Logical sessions (lsid) this connection has used.
    pub logical_sessions: u64,
    /// Its last command was a statement of a transaction still open.
    pub in_transaction: bool,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Entry {
    fn view(&self, id: i32, now: u64) -> SessionView {
        let sign_in = self.sign_in.lock().map(|s| s.clone()).unwrap_or_default();
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        // The session notices an expired token at its next command; the
        // list says so at once.
        let expired_reason = sign_in.as_ref().and_then(|s| {
            s.expired
                .or((s.token_expires_at <= now).then_some("token_expired"))
        });
        SessionView {
            id,
            client: self.peer.to_string(),
            connected_at: rfc3339(self.connected_at),
            user: sign_in.as_ref().map(|s| s.user.clone()),
            roles: sign_in
                .as_ref()
                .map(|s| s.roles.clone())
                .unwrap_or_default(),
            issuer: sign_in.as_ref().map(|s| s.issuer.clone()),
            grant: sign_in.as_ref().and_then(|s| s.grant),
            backend_user: sign_in.as_ref().and_then(|s| s.backend_user.clone()),
            admin: sign_in.as_ref().is_some_and(|s| s.admin),
            flow: sign_in.as_ref().map(|s| s.flow),
            signed_in_at: sign_in.as_ref().map(|s| rfc3339(s.signed_in_at)),
            token_expires_at: sign_in.as_ref().map(|s| rfc3339(at(s.token_expires_at))),
            expired: expired_reason.is_some(),
            expired_reason,
            app_name: sign_in.as_ref().and_then(|s| s.app_name.clone()),
            commands: self.commands.load(Ordering::Relaxed),
            bytes_from_client: self.bytes_from_client.load(Ordering::Relaxed),
            bytes_to_client: self.bytes_to_client.load(Ordering::Relaxed),
            cursors: self.cursors.load(Ordering::Relaxed),
            logical_sessions: self.logical_sessions.load(Ordering::Relaxed),
            in_transaction: self.in_transaction.load(Ordering::Relaxed),
        }
    }
}

/// Every open session, by connection id.
#[derive(Default)]
pub struct SessionRegistry {
    sessions: DashMap<i32, Arc<Entry>>,
}

impl SessionRegistry {
    pub fn new() -> SessionRegistry {
        SessionRegistry::default()
    }

    /// Registers a starting session; it stays listed until the handle drops.
    pub fn open(self: &Arc<Self>, conn: &ConnInfo) -> SessionHandle {
        let entry = Arc::new(Entry {
            peer: conn.peer,
            connected_at: SystemTime::now(),
            close: Notify::new(),
            commands: AtomicU64::new(0),
            bytes_from_client: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            cursors: AtomicU64::new(0),
            logical_sessions: AtomicU64::new(0),
            in_transaction: AtomicBool::new(false),
            sign_in: Mutex::new(None),
        });
        self.sessions.insert(conn.id, entry.clone());
        SessionHandle {
            id: conn.id,
            entry,
            registry: self.clone(),
        }
    }

    /// Every open session, by connection id.
    pub fn list(&self) -> Vec<SessionView> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut all: Vec<SessionView> = self
            .sessions
            .iter()
            .map(|e| e.value().view(*e.key(), now))
            .collect();
        all.sort_by_key(|v| v.id);
        all
    }

    /// Asks session `id` to close its client connection; false if there is
    /// no such session. The session closes at once if it waits for the
    /// client or the backend, else as soon as it does.
    pub fn close(&self, id: i32) -> bool {
        match self.sessions.get(&id) {
            Some(entry) => {
                // A stored permit: a session busy writing a reply sees it next.
                entry.close.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn update(&self, id: i32, f: impl FnOnce(&mut Option<SignInView>)) {
        if let Some(entry) = self.sessions.get(&id) {
            if let Ok(mut sign_in) = entry.sign_in.lock() {
                f(&mut sign_in);
            }
        }
    }
}

impl Sink for SessionRegistry {
    fn emit(&self, conn: &ConnInfo, event: &Event<'_>) {
        match event {
            Event::SignedIn {
                session,
                issuer,
                app_name,
                ..
            } => self.update(conn.id, |s| {
                *s = Some(SignInView::of(session, issuer, *app_name));
            }),
            Event::Expired { why, .. } => self.update(conn.id, |s| {
                if let Some(s) = s.as_mut() {
                    s.expired = Some(why.label());
                }
            }),
            _ => {}
        }
    }
}

/// A session's entry in the registry: its counters and its close request.
pub struct SessionHandle {
    id: i32,
    entry: Arc<Entry>,
    registry: Arc<SessionRegistry>,
}

impl SessionHandle {
    /// One client message of `bytes` arrived.
    pub fn count_in(&self, bytes: u64) {
        self.entry.commands.fetch_add(1, Ordering::Relaxed);
        self.entry
            .bytes_from_client
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` were sent to the client.
    /// What the connection holds on the backend now: cursors, logical
    /// sessions, and whether it is inside an open transaction.
    pub fn set_pins(&self, cursors: usize, logical_sessions: usize, in_transaction: bool) {
        let e = &self.entry;
        e.cursors.store(cursors as u64, Ordering::Relaxed);
        e.logical_sessions
            .store(logical_sessions as u64, Ordering::Relaxed);
        e.in_transaction.store(in_transaction, Ordering::Relaxed);
    }

    pub fn count_out(&self, bytes: u64) {
        self.entry
            .bytes_to_client
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Resolves when the operator asked to close this connection.
    pub async fn closed(&self) {
        self.entry.close.notified().await;
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.registry.sessions.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::authz::BackendIdentity;
    use crate::session::phase::{Expiry, Flow};

    fn conn(id: i32) -> ConnInfo {
        ConnInfo {
            id,
            peer: "127.0.0.1:5000".parse().unwrap(),
        }
    }

    fn signed_in(exp: u64) -> SignedIn {
        SignedIn {
            identity: Identity {
                idp: 0,
                principal: "alice".into(),
                user: "test/alice".into(),
                roles: vec!["test/writers".into()],
                expires_at: exp,
                log_claims: vec![],
            },
            flow: Flow::Human,
            access: Access::Granted {
                grant: 1,
                backend: Arc::new(BackendIdentity {
                    user: "app_rw".into(),
                    password: "backend-secret".into(),
                }),
                expires: None,
                admin: false,
            },
            idp_fingerprint: 7,
            key_generation: Some(0),
            runtime_version: 1,
            signed_in_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            expired: None,
        }
    }

    #[tokio::test]
    async fn lists_open_sessions_until_their_handle_drops() {
        let registry = Arc::new(SessionRegistry::new());
        let a = registry.open(&conn(3));
        let b = registry.open(&conn(1));
        a.count_in(100);
        a.count_in(20);
        a.count_out(7);
        let s = signed_in(4_000_000_000);
        registry.emit(
            &conn(3),
            &Event::SignedIn {
                session: &s,
                reauthenticated: false,
                issuer: "https://idp.example",
                app_name: Some("app"),
            },
        );
        let list = registry.list();
        assert_eq!(list.iter().map(|v| v.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(list[0].user, None);
        let v = &list[1];
        assert_eq!(
            (
                v.user.as_deref(),
                v.grant,
                v.backend_user.as_deref(),
                v.flow
            ),
            (Some("test/alice"), Some(1), Some("app_rw"), Some("human"))
        );
        assert_eq!(v.roles, ["test/writers"]);
        assert_eq!(v.signed_in_at.as_deref(), Some("2027-01-15T08:00:00Z"));
        assert_eq!(v.token_expires_at.as_deref(), Some("2096-10-02T07:06:40Z"));
        assert_eq!(
            (v.commands, v.bytes_from_client, v.bytes_to_client),
            (2, 120, 7)
        );
        assert!(!v.expired);
        let json = serde_json::to_string(&list).unwrap();
        assert!(!json.contains("backend-secret"), "{json}");

        registry.emit(
            &conn(3),
            &Event::Expired {
                user: "test/alice",
                why: Expiry::KeyWithdrawn,
            },
        );
        let v = registry.list().remove(1);
        assert_eq!((v.expired, v.expired_reason), (true, Some("key_withdrawn")));

        drop(a);
        assert_eq!(
            registry.list().iter().map(|v| v.id).collect::<Vec<_>>(),
            [1]
        );
        drop(b);
        assert!(registry.is_empty());
    }

    #[test]
    fn a_token_past_its_exp_is_listed_as_expired() {
        let registry = Arc::new(SessionRegistry::new());
        let _h = registry.open(&conn(1));
        let s = signed_in(1);
        registry.emit(
            &conn(1),
            &Event::SignedIn {
                session: &s,
                reauthenticated: false,
                issuer: "i",
                app_name: None,
            },
        );
        let v = registry.list().remove(0);
        assert_eq!((v.expired, v.expired_reason), (true, Some("token_expired")));
    }

    #[tokio::test]
    async fn close_wakes_the_session_even_if_it_was_not_waiting_yet() {
        let registry = Arc::new(SessionRegistry::new());
        let h = registry.open(&conn(9));
        assert!(!registry.close(10));
        assert!(registry.close(9));
        tokio::time::timeout(Duration::from_secs(1), h.closed())
            .await
            .expect("the stored close request wakes the session");
    }
}
