//! Who owns which backend cursors and logical sessions.
//!
//! Pooled connections serve every principal of a backend user, and many
//! backends tie neither cursors nor sessions to anyone (any signed-in user
//! may continue a cursor whose namespace it names, or join another user's
//! transaction by reusing its lsid). The proxy is then the only guard: this
//! table records the principal (the owner) of every cursor id seen in a
//! reply and of every lsid seen in a request, and which client connections
//! use each. A principal naming a cursor or session it does not own is
//! refused before anything reaches the backend.
//!
//! When the last connection using a cursor or a session closes,
//! [`Ownership::release`] says what to clean up on the backend: the cursors
//! to kill, the open transactions to abort and the sessions to end.
//!
//! Both tables are bounded; a full table refuses new entries and counts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bson::{RawDocument, RawDocumentBuf};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

/// The owner: one principal signed in as one backend user.
pub type Owner = Arc<str>;

/// A logical session's id (`lsid.id`, a UUID).
pub type SessionKey = [u8; 16];

/// Client connection ids, as the session registry numbers them.
pub type ConnId = i32;

/// Most cursors tracked at once (mongod keeps at most this many open per
/// server by default, far fewer in practice).
pub const MAX_CURSORS: usize = 1_000_000;
/// Most logical sessions tracked at once (mongod's default
/// `maxSessions` is 1,000,000).
pub const MAX_SESSIONS: usize = 1_000_000;

#[derive(Debug)]
struct CursorEntry {
    owner: Owner,
    ns: String,
    users: Vec<ConnId>,
}

#[derive(Debug)]
struct SessionEntry {
    owner: Owner,
    lsid: RawDocumentBuf,
    users: Vec<ConnId>,
    /// The transaction number of a transaction started and not yet
    /// committed or aborted.
    open_transaction: Option<i64>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A cursor this owner does not hold (or nobody holds).
    CursorNotFound(i64),
    /// The session belongs to another principal.
    SessionOfAnother,
    /// `lsid` without a 16-byte binary `id`.
    BadLsid,
    /// The session table is full.
    TooManySessions,
}

/// What to do on the backend once connections have closed.
#[derive(Debug, Default, PartialEq)]
pub struct Cleanup {
    /// Cursors to kill, by namespace.
    pub kill: Vec<(String, i64)>,
    /// Transactions to abort: the lsid and the transaction number.
    pub abort: Vec<(RawDocumentBuf, i64)>,
    /// Sessions to end.
    pub end: Vec<RawDocumentBuf>,
}

impl Cleanup {
    pub fn is_empty(&self) -> bool {
        self.kill.is_empty() && self.abort.is_empty() && self.end.is_empty()
    }
}

/// Sizes and refusals, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnershipStats {
    pub cursors: usize,
    pub sessions: usize,
    pub transactions: usize,
    pub cursors_full: u64,
    pub sessions_full: u64,
}

/// The process's table of cursors and sessions.
#[derive(Debug)]
pub struct Ownership {
    cursors: DashMap<i64, CursorEntry>,
    sessions: DashMap<SessionKey, SessionEntry>,
    max_cursors: usize,
    max_sessions: usize,
    cursors_full: AtomicU64,
    sessions_full: AtomicU64,
}

impl Default for Ownership {
    fn default() -> Self {
        Ownership::with_limits(MAX_CURSORS, MAX_SESSIONS)
    }
}

/// The key of an lsid document: its binary `id`.
pub fn session_key(lsid: &RawDocument) -> Result<SessionKey, Refusal> {
    let id = lsid.get_binary("id").map_err(|_| Refusal::BadLsid)?;
    SessionKey::try_from(id.bytes).map_err(|_| Refusal::BadLsid)
}

fn add_user(users: &mut Vec<ConnId>, conn: ConnId) {
    if !users.contains(&conn) {
        users.push(conn);
    }
}

impl Ownership {
    pub fn with_limits(max_cursors: usize, max_sessions: usize) -> Ownership {
        Ownership {
            cursors: DashMap::new(),
            sessions: DashMap::new(),
            max_cursors,
            max_sessions,
            cursors_full: AtomicU64::new(0),
            sessions_full: AtomicU64::new(0),
        }
    }

    /// A `getMore` or `killCursors` by `owner` on `conn`: allowed only for
    /// a cursor the owner opened; the connection becomes one of its users.
    pub fn use_cursor(&self, id: i64, owner: &Owner, conn: ConnId) -> Result<(), Refusal> {
        match self.cursors.get_mut(&id) {
            Some(mut c) if c.owner == *owner => {
                add_user(&mut c.users, conn);
                Ok(())
            }
            _ => Err(Refusal::CursorNotFound(id)),
        }
    }

    /// A reply opened cursor `id` on `ns` for `owner`. False when the table
    /// is full: the cursor must be killed, as no one could continue it.
    pub fn opened_cursor(&self, id: i64, ns: &str, owner: &Owner, conn: ConnId) -> bool {
        if self.cursors.len() >= self.max_cursors && !self.cursors.contains_key(&id) {
            self.cursors_full.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.cursors.insert(
            id,
            CursorEntry {
                owner: Arc::clone(owner),
                ns: ns.to_string(),
                users: vec![conn],
            },
        );
        true
    }

    /// The cursor is gone on the backend (exhausted or killed).
    pub fn closed_cursor(&self, id: i64) {
        self.cursors.remove(&id);
    }

    /// Whether `owner` holds cursor `id` (it is open and theirs).
    pub fn owns_cursor(&self, id: i64, owner: &Owner) -> bool {
        self.cursors.get(&id).is_some_and(|c| c.owner == *owner)
    }

    /// A request of `owner` on `conn` carries `lsid`: allowed for a new
    /// session or one the owner already uses.
    pub fn use_session(
        &self,
        lsid: &RawDocument,
        owner: &Owner,
        conn: ConnId,
    ) -> Result<SessionKey, Refusal> {
        let key = session_key(lsid)?;
        let full = self.sessions.len() >= self.max_sessions;
        match self.sessions.entry(key) {
            Entry::Occupied(mut e) => {
                let s = e.get_mut();
                if s.owner != *owner {
                    return Err(Refusal::SessionOfAnother);
                }
                add_user(&mut s.users, conn);
            }
            Entry::Vacant(_) if full => {
                self.sessions_full.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::TooManySessions);
            }
            Entry::Vacant(e) => {
                e.insert(SessionEntry {
                    owner: Arc::clone(owner),
                    lsid: lsid.to_owned(),
                    users: vec![conn],
                    open_transaction: None,
                });
            }
        }
        Ok(key)
    }

    /// Whether `owner` uses the session (for `endSessions` filtering).
    pub fn owns_session(&self, key: &SessionKey, owner: &Owner) -> bool {
        self.sessions.get(key).is_some_and(|s| s.owner == *owner)
    }

    /// A statement of transaction `txn` ran (open), or the transaction was
    /// committed or aborted (`None`).
    pub fn set_transaction(&self, key: &SessionKey, txn: Option<i64>) {
        if let Some(mut s) = self.sessions.get_mut(key) {
            s.open_transaction = txn;
        }
    }

    /// The open transaction of a session, if any.
    pub fn open_transaction(&self, key: &SessionKey) -> Option<i64> {
        self.sessions.get(key).and_then(|s| s.open_transaction)
    }

    /// The session was ended by its owner (`endSessions`): forgotten.
    pub fn ended_session(&self, key: &SessionKey) {
        self.sessions.remove(key);
    }

    /// Connection `conn` closed: it no longer uses these cursors and
    /// sessions. Those it was the last user of are forgotten and returned
    /// for clean-up.
    pub fn release(&self, conn: ConnId, cursors: &[i64], sessions: &[SessionKey]) -> Cleanup {
        let mut cleanup = Cleanup::default();
        for id in cursors {
            let last = self.cursors.get_mut(id).is_some_and(|mut c| {
                c.users.retain(|u| *u != conn);
                c.users.is_empty()
            });
            if last {
                if let Some((_, c)) = self.cursors.remove(id) {
                    cleanup.kill.push((c.ns, *id));
                }
            }
        }
        for key in sessions {
            let last = self.sessions.get_mut(key).is_some_and(|mut s| {
                s.users.retain(|u| *u != conn);
                s.users.is_empty()
            });
            if last {
                if let Some((_, s)) = self.sessions.remove(key) {
                    if let Some(txn) = s.open_transaction {
                        cleanup.abort.push((s.lsid.clone(), txn));
                    }
                    cleanup.end.push(s.lsid);
                }
            }
        }
        cleanup
    }

    pub fn stats(&self) -> OwnershipStats {
        OwnershipStats {
            cursors: self.cursors.len(),
            sessions: self.sessions.len(),
            transactions: self
                .sessions
                .iter()
                .filter(|s| s.open_transaction.is_some())
                .count(),
            cursors_full: self.cursors_full.load(Ordering::Relaxed),
            sessions_full: self.sessions_full.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::spec::BinarySubtype;
    use bson::{rawdoc, Binary};

    fn lsid(n: u8) -> RawDocumentBuf {
        rawdoc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![n; 16] } }
    }

    fn owner(name: &str) -> Owner {
        Arc::from(name)
    }

    #[test]
    fn a_cursor_is_usable_by_its_owner_on_any_connection_and_by_no_one_else() {
        let t = Ownership::default();
        let (alice, bob) = (owner("okta/alice\0app"), owner("okta/bob\0app"));
        assert!(t.opened_cursor(42, "app.c", &alice, 1));
        assert!(t.owns_cursor(42, &alice) && !t.owns_cursor(42, &bob));
        assert_eq!(t.use_cursor(42, &alice, 2), Ok(()));
        assert_eq!(t.use_cursor(42, &bob, 3), Err(Refusal::CursorNotFound(42)));
        assert_eq!(t.use_cursor(7, &alice, 1), Err(Refusal::CursorNotFound(7)));
        // Connection 1 closes: connection 2 still uses the cursor.
        assert!(t.release(1, &[42], &[]).is_empty());
        assert_eq!(t.use_cursor(42, &alice, 2), Ok(()));
        let cleanup = t.release(2, &[42], &[]);
        assert_eq!(cleanup.kill, vec![("app.c".to_string(), 42)]);
        assert_eq!(
            t.use_cursor(42, &alice, 2),
            Err(Refusal::CursorNotFound(42))
        );
    }

    #[test]
    fn an_exhausted_cursor_is_forgotten() {
        let t = Ownership::default();
        let alice = owner("a");
        t.opened_cursor(5, "app.c", &alice, 1);
        t.closed_cursor(5);
        assert!(t.release(1, &[5], &[]).is_empty(), "nothing left to kill");
    }

    #[test]
    fn a_session_belongs_to_the_first_principal_that_used_it() {
        let t = Ownership::default();
        let (alice, bob) = (owner("a"), owner("b"));
        let key = t.use_session(&lsid(1), &alice, 1).unwrap();
        assert_eq!(t.use_session(&lsid(1), &alice, 2), Ok(key));
        assert_eq!(
            t.use_session(&lsid(1), &bob, 3),
            Err(Refusal::SessionOfAnother)
        );
        assert!(t.owns_session(&key, &alice) && !t.owns_session(&key, &bob));
        assert_eq!(
            t.use_session(&rawdoc! { "id": 1 }, &alice, 1),
            Err(Refusal::BadLsid)
        );
    }

    #[test]
    fn the_last_connection_of_a_session_aborts_its_open_transaction_and_ends_it() {
        let t = Ownership::default();
        let alice = owner("a");
        let key = t.use_session(&lsid(2), &alice, 1).unwrap();
        t.use_session(&lsid(2), &alice, 2).unwrap();
        t.set_transaction(&key, Some(3));
        assert_eq!(t.stats().transactions, 1);
        assert!(t.release(1, &[], &[key]).is_empty());
        let cleanup = t.release(2, &[], &[key]);
        assert_eq!(cleanup.abort, vec![(lsid(2), 3)]);
        assert_eq!(cleanup.end, vec![lsid(2)]);
        // A committed transaction is not aborted.
        let key = t.use_session(&lsid(3), &alice, 1).unwrap();
        t.set_transaction(&key, Some(1));
        t.set_transaction(&key, None);
        let cleanup = t.release(1, &[], &[key]);
        assert!(cleanup.abort.is_empty());
        assert_eq!(cleanup.end.len(), 1);
    }

    #[test]
    fn full_tables_refuse_new_entries_and_count_it() {
        let t = Ownership::with_limits(1, 1);
        let alice = owner("a");
        assert!(t.opened_cursor(1, "a.b", &alice, 1));
        assert!(!t.opened_cursor(2, "a.b", &alice, 1));
        t.use_session(&lsid(1), &alice, 1).unwrap();
        assert_eq!(
            t.use_session(&lsid(2), &alice, 1),
            Err(Refusal::TooManySessions)
        );
        assert!(
            t.use_session(&lsid(1), &alice, 2).is_ok(),
            "known ones still work"
        );
        let s = t.stats();
        assert_eq!((s.cursors_full, s.sessions_full), (1, 1));
    }
}
