//! Where a connection is in its life, as one value the decide step reads.
//!
//! ```text
//! Anonymous ──saslStart {n}──▶ Authenticating ──saslContinue {jwt}──▶ SignedIn
//!     └──────── saslStart {jwt} / speculativeAuthenticate ───────────────▲
//! SignedIn ──saslStart {n}──▶ Authenticating { previous: SignedIn } ──▶ SignedIn
//! ```
//!
//! A signed-in session can stop holding: its token's `exp` passes, its
//! grant's `expires` passes, a JWKS refresh withdraws the signing key, or a
//! reload removes or changes its IdP or grant. [`Phase::resolve`] finds that
//! out once per message and records it on the session ([`SignedIn::expired`]);
//! from then on only a re-authentication (same user) brings it back.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::auth::oidc::Pending;
use crate::auth::{Identity, IdpRegistry};
use crate::authz::{BackendIdentity, Decision, Grants};

/// How the client signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// One-step `saslStart {jwt}`.
    Machine,
    /// Two-step `saslStart {n?}`, `saslContinue {jwt}`.
    Human,
    /// `speculativeAuthenticate` in the hello.
    Speculative,
}

impl Flow {
    pub fn label(self) -> &'static str {
        match self {
            Flow::Machine => "machine",
            Flow::Human => "human",
            Flow::Speculative => "speculative",
        }
    }
}

/// Why a sign-in no longer holds (the client gets 391 until it re-authenticates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    TokenExpired,
    GrantExpired,
    KeyWithdrawn,
    IdpRemoved,
    GrantChanged,
}

impl Expiry {
    pub fn label(self) -> &'static str {
        match self {
            Expiry::TokenExpired => "token_expired",
            Expiry::GrantExpired => "grant_expired",
            Expiry::KeyWithdrawn => "key_withdrawn",
            Expiry::IdpRemoved => "idp_removed_or_changed",
            Expiry::GrantChanged => "grant_changed",
        }
    }
}

/// What a signed-in session may do.
#[derive(Debug, Clone)]
pub enum Access {
    /// A grant matched: relay as this backend identity.
    Granted {
        grant: usize,
        backend: Arc<BackendIdentity>,
        expires: Option<SystemTime>,
    },
    /// Signed in, but no grant names the caller: every command is refused.
    Refused,
}

impl Access {
    pub fn from_decision(d: Decision) -> Access {
        match d {
            Decision::Granted {
                grant,
                backend,
                expires,
            } => Access::Granted {
                grant,
                backend,
                expires,
            },
            Decision::Denied => Access::Refused,
        }
    }

    fn same_as(&self, other: &Access) -> bool {
        match (self, other) {
            (Access::Refused, Access::Refused) => true,
            (Access::Granted { backend: a, .. }, Access::Granted { backend: b, .. }) => {
                a.user == b.user
            }
            _ => false,
        }
    }
}

/// A verified sign-in and what it grants.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub identity: Identity,
    pub flow: Flow,
    pub access: Access,
    /// The IdP's config fingerprint at sign-in ([`IdpRegistry::fingerprint`]).
    pub idp_fingerprint: u64,
    /// The issuer's key-set generation when the token was verified.
    pub key_generation: Option<u64>,
    /// The runtime version the IdP and grant were last checked against.
    pub runtime_version: u64,
    pub signed_in_at: SystemTime,
    /// Set once the sign-in stops holding.
    pub expired: Option<Expiry>,
}

/// The connection's phase.
#[derive(Debug, Clone, Default)]
pub enum Phase {
    #[default]
    Anonymous,
    /// Step 1 of the human flow answered; `previous` is the sign-in being
    /// re-authenticated, which keeps deciding other commands meanwhile.
    Authenticating {
        pending: Pending,
        previous: Option<Box<SignedIn>>,
    },
    SignedIn(Box<SignedIn>),
}

/// What expiry resolution reads: the current runtime's policy.
pub struct Policy<'a> {
    pub version: u64,
    pub registry: &'a IdpRegistry,
    pub grants: &'a Grants,
}

impl Phase {
    /// The current sign-in, if any (also while a re-authentication runs).
    pub fn signed_in(&self) -> Option<&SignedIn> {
        match self {
            Phase::SignedIn(s) => Some(s),
            Phase::Authenticating {
                previous: Some(s), ..
            } => Some(s),
            _ => None,
        }
    }

    fn signed_in_mut(&mut self) -> Option<&mut SignedIn> {
        match self {
            Phase::SignedIn(s) => Some(s),
            Phase::Authenticating {
                previous: Some(s), ..
            } => Some(s),
            _ => None,
        }
    }

    /// The human flow's pending step 1, if one is open.
    pub fn pending(&self) -> Option<&Pending> {
        match self {
            Phase::Authenticating { pending, .. } => Some(pending),
            _ => None,
        }
    }

    /// True before any sign-in: the limits for anonymous clients apply.
    pub fn is_anonymous(&self) -> bool {
        self.signed_in().is_none()
    }

    /// Drops an open human-flow step 1 (a new saslStart, or a failure).
    pub fn abandon_conversation(&mut self) {
        if let Phase::Authenticating { previous, .. } = self {
            *self = match previous.take() {
                Some(s) => Phase::SignedIn(s),
                None => Phase::Anonymous,
            };
        }
    }

    /// Once per message: records on the sign-in why it no longer holds, and
    /// returns the reason when that just happened.
    pub fn resolve(&mut self, policy: &Policy<'_>, peer: IpAddr, now: u64) -> Option<Expiry> {
        let session = self.signed_in_mut()?;
        if session.expired.is_some() {
            return None;
        }
        let why = check(session, policy, peer, now)?;
        session.expired = Some(why);
        Some(why)
    }
}

/// Whether `session` still holds under `policy` at `now`; a reload also
/// moves the session's IdP index and grant to the new config's.
fn check(session: &mut SignedIn, policy: &Policy<'_>, peer: IpAddr, now: u64) -> Option<Expiry> {
    if session.identity.expires_at <= now {
        return Some(Expiry::TokenExpired);
    }
    if session.runtime_version != policy.version {
        let Some(idp) = policy.registry.position_of(session.idp_fingerprint) else {
            return Some(Expiry::IdpRemoved);
        };
        session.identity.idp = idp;
        let access = Access::from_decision(policy.grants.decide(
            &session.identity,
            peer,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now),
        ));
        if !access.same_as(&session.access) {
            return Some(Expiry::GrantChanged);
        }
        session.access = access;
        session.runtime_version = policy.version;
    }
    if policy.registry.key_generation(session.identity.idp) != session.key_generation {
        return Some(Expiry::KeyWithdrawn);
    }
    if let Access::Granted {
        expires: Some(at), ..
    } = &session.access
    {
        if SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now) >= *at {
            return Some(Expiry::GrantExpired);
        }
    }
    None
}
