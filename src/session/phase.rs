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
    /// SCRAM-SHA-256 as the test-only set-up user (`[testing] setup_user`).
    Scram,
}

impl Flow {
    pub fn label(self) -> &'static str {
        match self {
            Flow::Machine => "machine",
            Flow::Human => "human",
            Flow::Speculative => "speculative",
            Flow::Scram => "scram_setup_user",
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
        admin: bool,
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
                admin,
            } => Access::Granted {
                grant,
                backend,
                expires,
                admin,
            },
            Decision::Denied => Access::Refused,
        }
    }

    fn is_granted(&self) -> bool {
        matches!(self, Access::Granted { .. })
    }

    /// Whether the grant allows the proxy's administrative commands.
    pub fn is_admin(&self) -> bool {
        matches!(self, Access::Granted { admin: true, .. })
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
    /// The set-up user's [`SetupUser::fingerprint`](crate::auth::scram_server::SetupUser), if one is configured.
    pub setup: Option<u64>,
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
    if session.flow == Flow::Scram {
        return check_setup_user(session, policy, now);
    }
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
        // No grant matches any more, or one matches a session refused so
        // far: decided afresh at re-authentication. A grant that still
        // matches but names another backend user applies to new sign-ins;
        // the open session keeps its backend identity and connection.
        // Administrative rights follow the new config at once.
        if access.is_granted() != session.access.is_granted()
            || access.is_admin() != session.access.is_admin()
        {
            return Some(Expiry::GrantChanged);
        }
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

/// The set-up user has no token and no IdP: its sign-in holds while the
/// same user, password and grant are configured (`idp_fingerprint` holds
/// the set-up user's fingerprint) and the grant has not expired.
fn check_setup_user(session: &mut SignedIn, policy: &Policy<'_>, now: u64) -> Option<Expiry> {
    if session.runtime_version != policy.version {
        if policy.setup != Some(session.idp_fingerprint) {
            return Some(Expiry::GrantChanged);
        }
        session.runtime_version = policy.version;
    }
    match &session.access {
        Access::Granted {
            expires: Some(at), ..
        } if SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now) >= *at => {
            Some(Expiry::GrantExpired)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GrantConfig, IdentityProviderConfig};
    use crate::session::decide::{self, Action, Inputs, Refused, Verified};
    use crate::wire::Request;
    use bson::rawdoc;

    const NOW: u64 = 1_800_000_000;
    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn idp(issuer: &str) -> IdentityProviderConfig {
        toml::from_str(&format!(
            "issuer = \"{issuer}\"\naudience = \"api://m\"\nauth_name_prefix = \"okta\"\nclient_id = \"c\""
        ))
        .unwrap()
    }

    fn grants(text: &str) -> Grants {
        #[derive(serde::Deserialize)]
        struct G {
            grant: Vec<GrantConfig>,
        }
        let g: G = toml::from_str(text).unwrap();
        Grants::from_config(&g.grant, crate::authz::Secrets::Skip).unwrap()
    }

    const RW: &str =
        "[[grant]]\nrole = \"okta/dba\"\nbackend_user = \"rw\"\nbackend_password_env = \"X\"\n";
    const RO: &str =
        "[[grant]]\nrole = \"okta/dba\"\nbackend_user = \"ro\"\nbackend_password_env = \"X\"\n";

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }

    struct World {
        registry: IdpRegistry,
        grants: Grants,
        version: u64,
    }

    impl World {
        fn new(issuers: &[&str], grants_text: &str, version: u64) -> World {
            let configs: Vec<_> = issuers.iter().map(|i| idp(i)).collect();
            World {
                registry: IdpRegistry::new(&configs).unwrap(),
                grants: grants(grants_text),
                version,
            }
        }

        fn policy(&self) -> Policy<'_> {
            Policy {
                version: self.version,
                registry: &self.registry,
                grants: &self.grants,
                setup: None,
            }
        }

        /// Signs alice (group dba) in under this world's rules, as the act step does.
        fn sign_in(&self, phase: &Phase, exp: u64, now: u64) -> Result<Phase, i32> {
            let identity = Identity {
                idp: 0,
                principal: "alice".into(),
                user: "okta/alice".into(),
                roles: vec!["okta/dba".into()],
                expires_at: exp,
                log_claims: vec![],
            };
            let access = Access::from_decision(self.grants.decide(&identity, PEER, at(now)));
            let verified = Verified {
                idp_fingerprint: self.registry.fingerprint(0).unwrap(),
                key_generation: self.registry.key_generation(0),
                identity,
                flow: Flow::Machine,
                access,
                runtime_version: self.version,
                at: at(now),
            };
            decide::sign_in(phase, verified)
                .map(|s| Phase::SignedIn(Box::new(s)))
                .map_err(|e| e.code)
        }
    }

    fn find_outcome(phase: &Phase) -> Option<(i32, Refused)> {
        let bytes = crate::wire::op_msg::encode(1, 0, 0, &rawdoc! { "find": "c", "$db": "app" });
        let req = Request::decode(&bytes).unwrap();
        match decide::decide(
            &req,
            phase,
            Inputs {
                draining: false,
                test_commands: false,
            },
        ) {
            Action::Relay(_) => None,
            Action::Refuse { error, reason } => Some((error.code, reason)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_token_past_its_exp_expires_the_session_once() {
        let w = World::new(&["https://a.example"], RW, 1);
        let mut phase = w.sign_in(&Phase::Anonymous, NOW + 60, NOW).unwrap();
        assert_eq!(phase.resolve(&w.policy(), PEER, NOW + 59), None);
        assert_eq!(find_outcome(&phase), None);
        assert_eq!(
            phase.resolve(&w.policy(), PEER, NOW + 60),
            Some(Expiry::TokenExpired)
        );
        assert_eq!(
            phase.resolve(&w.policy(), PEER, NOW + 61),
            None,
            "reported once"
        );
        assert_eq!(
            find_outcome(&phase),
            Some((391, Refused::ReauthenticationRequired))
        );
        // Same user with a fresh token: serving again.
        let again = w.sign_in(&phase, NOW + 3600, NOW + 61).unwrap();
        assert_eq!(find_outcome(&again), None);
    }

    #[test]
    fn a_temporary_grant_ends_live_sessions_then_refuses_with_13() {
        let expires = "2027-01-15T08:00:00Z";
        let w = World::new(
            &["https://a.example"],
            &format!("{RW}expires = \"{expires}\"\n"),
            1,
        );
        let end = humantime::parse_rfc3339(expires)
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut phase = w.sign_in(&Phase::Anonymous, end + 7200, end - 100).unwrap();
        assert_eq!(phase.resolve(&w.policy(), PEER, end - 1), None);
        assert_eq!(
            phase.resolve(&w.policy(), PEER, end),
            Some(Expiry::GrantExpired)
        );
        assert_eq!(
            find_outcome(&phase),
            Some((391, Refused::ReauthenticationRequired))
        );
        let after = w.sign_in(&phase, end + 7200, end + 1).unwrap();
        assert_eq!(find_outcome(&after), Some((13, Refused::NoGrant)));
    }

    #[test]
    fn a_reload_that_keeps_the_idp_and_grant_keeps_the_session() {
        let w1 = World::new(&["https://a.example", "https://b.example"], RW, 1);
        let mut phase = w1.sign_in(&Phase::Anonymous, NOW + 600, NOW).unwrap();
        // The same IdP now sits second in the file.
        let w2 = World::new(&["https://z.example", "https://a.example"], RW, 2);
        assert_eq!(phase.resolve(&w2.policy(), PEER, NOW + 1), None);
        let s = phase.signed_in().unwrap();
        assert_eq!((s.identity.idp, s.runtime_version), (1, 2));
        assert_eq!(find_outcome(&phase), None);
    }

    #[test]
    fn reloads_that_remove_the_idp_or_the_matching_grant_end_the_session() {
        let w1 = World::new(&["https://a.example"], RW, 1);
        let signed = w1.sign_in(&Phase::Anonymous, NOW + 600, NOW).unwrap();

        let mut phase = signed.clone();
        let without = World::new(&["https://b.example"], RW, 2);
        assert_eq!(
            phase.resolve(&without.policy(), PEER, NOW),
            Some(Expiry::IdpRemoved)
        );
        assert_eq!(
            find_outcome(&phase),
            Some((391, Refused::ReauthenticationRequired))
        );

        // A grant that now names another backend user: the open session
        // continues as before, its re-authentication gets the new user.
        let mut phase = signed.clone();
        let read_only = World::new(&["https://a.example"], RO, 3);
        assert_eq!(phase.resolve(&read_only.policy(), PEER, NOW), None);
        let Some(Access::Granted { backend, .. }) = phase.signed_in().map(|s| &s.access) else {
            panic!("granted")
        };
        assert_eq!(backend.user, "rw");
        let again = read_only.sign_in(&phase, NOW + 600, NOW).unwrap();
        let Some(Access::Granted { backend, .. }) = again.signed_in().map(|s| &s.access) else {
            panic!("granted")
        };
        assert_eq!(backend.user, "ro");

        let mut phase = signed;
        let no_grant = World::new(
            &["https://a.example"],
            "[[grant]]\nrole = \"okta/other\"\nbackend_user = \"rw\"\nbackend_password_env = \"X\"\n",
            4,
        );
        assert_eq!(
            phase.resolve(&no_grant.policy(), PEER, NOW),
            Some(Expiry::GrantChanged)
        );
        let again = no_grant.sign_in(&phase, NOW + 600, NOW).unwrap();
        assert_eq!(find_outcome(&again), Some((13, Refused::NoGrant)));
    }

    #[test]
    fn a_changed_idp_config_ends_its_sessions() {
        let w1 = World::new(&["https://a.example"], RW, 1);
        let mut phase = w1.sign_in(&Phase::Anonymous, NOW + 600, NOW).unwrap();
        let mut changed = idp("https://a.example");
        changed.principal_name = "email".into();
        let w2 = World {
            registry: IdpRegistry::new(&[changed]).unwrap(),
            grants: grants(RW),
            version: 2,
        };
        assert_eq!(
            phase.resolve(&w2.policy(), PEER, NOW),
            Some(Expiry::IdpRemoved)
        );
    }

    #[test]
    fn a_scram_set_up_session_holds_until_a_reload_changes_the_set_up_user() {
        let w1 = World::new(&["https://a.example"], RW, 1);
        let setup = SignedIn {
            identity: Identity {
                idp: usize::MAX,
                principal: "setup".into(),
                user: "setup".into(),
                roles: vec![],
                expires_at: NOW,
                log_claims: vec![],
            },
            flow: Flow::Scram,
            access: Access::from_decision(w1.grants.by_index(0, at(NOW))),
            idp_fingerprint: 77,
            key_generation: None,
            runtime_version: 1,
            signed_in_at: at(NOW),
            expired: None,
        };
        fn policy(w: &World, setup: Option<u64>) -> Policy<'_> {
            Policy {
                setup,
                ..w.policy()
            }
        }
        // No token and no IdP: neither the token time nor the keys end it.
        let mut phase = Phase::SignedIn(Box::new(setup.clone()));
        assert_eq!(
            phase.resolve(&policy(&w1, Some(77)), PEER, NOW + 3600),
            None
        );
        assert_eq!(find_outcome(&phase), None);
        // A reload that keeps the set-up user keeps the session.
        let w2 = World::new(&["https://b.example"], RW, 2);
        assert_eq!(phase.resolve(&policy(&w2, Some(77)), PEER, NOW), None);
        assert_eq!(phase.signed_in().unwrap().runtime_version, 2);
        // One that changes or removes it ends the session.
        for changed in [Some(78), None] {
            let mut phase = Phase::SignedIn(Box::new(setup.clone()));
            assert_eq!(
                phase.resolve(&policy(&w2, changed), PEER, NOW),
                Some(Expiry::GrantChanged)
            );
            assert_eq!(
                find_outcome(&phase),
                Some((391, Refused::ReauthenticationRequired))
            );
        }
        // The grant's expires still applies.
        let expires = "2027-01-15T08:00:00Z";
        let temporary = World::new(
            &["https://a.example"],
            &format!("{RW}expires = \"{expires}\"\n"),
            1,
        );
        let end = humantime::parse_rfc3339(expires).unwrap();
        let mut s = setup;
        let before = end - std::time::Duration::from_secs(100);
        s.access = Access::from_decision(temporary.grants.by_index(0, before));
        assert!(s.access.is_granted());
        let mut phase = Phase::SignedIn(Box::new(s));
        let end_secs = end
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(
            phase.resolve(&policy(&temporary, Some(77)), PEER, end_secs),
            Some(Expiry::GrantExpired)
        );
        assert!(matches!(
            temporary.grants.by_index(0, end),
            crate::authz::Decision::Denied
        ));
        assert!(matches!(
            temporary.grants.by_index(5, before),
            crate::authz::Decision::Denied
        ));
    }

    #[test]
    fn anonymous_phases_have_nothing_to_resolve() {
        let w = World::new(&["https://a.example"], RW, 1);
        let mut phase = Phase::Anonymous;
        assert_eq!(phase.resolve(&w.policy(), PEER, NOW), None);
        let mut phase = Phase::Authenticating {
            pending: Pending { idp: 0, hint: None },
            previous: None,
        };
        assert_eq!(phase.resolve(&w.policy(), PEER, NOW), None);
        phase.abandon_conversation();
        assert!(matches!(phase, Phase::Anonymous));
    }
}
