//! Authorisation: which backend identity an authenticated caller gets.
//!
//! A caller is user `{prefix}/{principal}` (db `$external`) with roles
//! `{prefix}/{group}` (db `admin`). The first `[[grant]]` that names the user
//! or one of the roles, and whose conditions hold, decides the backend user.
//! No matching grant means no access: nothing is granted by default.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::auth::Identity;
use crate::config::{ConfigError, GrantConfig, IdentityProviderConfig};

/// The credentials the proxy signs in to the backend with.
pub struct BackendIdentity {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for BackendIdentity {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendIdentity")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    User(String),
    Role(String),
}

#[derive(Debug)]
struct Grant {
    subject: Subject,
    backend: Arc<BackendIdentity>,
    client_source: Vec<IpNet>,
    expires: Option<SystemTime>,
    admin: bool,
}

/// The outcome of [`Grants::decide`].
#[derive(Debug, Clone)]
pub enum Decision {
    Granted {
        grant: usize,
        backend: Arc<BackendIdentity>,
        /// The grant's `expires`: a temporary grant ends live sessions too.
        expires: Option<SystemTime>,
        /// The grant allows the proxy's administrative commands.
        admin: bool,
    },
    Denied,
}

/// Whether to read backend passwords while loading (at start-up) or only
/// check that grants are well formed (unit tests of other config fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Resolve,
    Skip,
}

#[derive(Debug, Default)]
pub struct Grants {
    rules: Vec<Grant>,
}

impl Grants {
    pub fn from_config(configs: &[GrantConfig], secrets: Secrets) -> Result<Grants, ConfigError> {
        let rules = configs
            .iter()
            .enumerate()
            .map(|(i, g)| parse_grant(i, g, secrets))
            .collect::<Result<_, _>>()?;
        Ok(Grants { rules })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every backend identity a grant names.
    pub fn backend_identities(&self) -> impl Iterator<Item = &BackendIdentity> {
        self.rules.iter().map(|g| g.backend.as_ref())
    }

    /// The first grant naming the caller whose conditions hold.
    pub fn decide(&self, identity: &Identity, peer: IpAddr, now: SystemTime) -> Decision {
        let names = |s: &Subject| match s {
            Subject::User(u) => *u == identity.user,
            Subject::Role(r) => identity.roles.iter().any(|have| have == r),
        };
        self.rules
            .iter()
            .enumerate()
            .find(|(_, g)| {
                names(&g.subject) && g.allows_source(peer) && g.expires.is_none_or(|e| now < e)
            })
            .map_or(Decision::Denied, |(grant, g)| Decision::Granted {
                grant,
                backend: g.backend.clone(),
                expires: g.expires,
                admin: g.admin,
            })
    }
}

impl Grants {
    /// Grant `index` itself, whoever asks: the test-only SCRAM set-up user
    /// gets the grant `[testing] setup_grant` names, unless it has expired.
    pub fn by_index(&self, index: usize, now: SystemTime) -> Decision {
        match self.rules.get(index) {
            Some(g) if g.expires.is_none_or(|e| now < e) => Decision::Granted {
                grant: index,
                backend: g.backend.clone(),
                expires: g.expires,
                admin: g.admin,
            },
            _ => Decision::Denied,
        }
    }
}

/// A grant that names a caller, for `check --sign-in`: which backend user
/// it gives and under which conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub grant: usize,
    pub backend_user: String,
    pub admin: bool,
    /// Empty: from any address.
    pub client_source: Vec<IpNet>,
    pub expires: Option<SystemTime>,
}

impl Grants {
    /// Every grant that names the caller and has not expired, in order:
    /// [`Grants::decide`] picks the first of them whose `client_source`
    /// admits the client's address.
    pub fn candidates(&self, identity: &Identity, now: SystemTime) -> Vec<Candidate> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                let named = match &g.subject {
                    Subject::User(u) => *u == identity.user,
                    Subject::Role(r) => identity.roles.iter().any(|have| have == r),
                };
                named && g.expires.is_none_or(|e| now < e)
            })
            .map(|(grant, g)| Candidate {
                grant,
                backend_user: g.backend.user.clone(),
                admin: g.admin,
                client_source: g.client_source.clone(),
                expires: g.expires,
            })
            .collect()
    }
}

impl Grant {
    fn allows_source(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.client_source.is_empty() || self.client_source.iter().any(|net| net.contains(&peer))
    }
}

fn parse_grant(i: usize, g: &GrantConfig, secrets: Secrets) -> Result<Grant, ConfigError> {
    let field = |name: &str| format!("grant[{i}].{name}");
    let subject =
        match (&g.role, &g.user) {
            (Some(r), None) if !r.is_empty() => Subject::Role(r.clone()),
            (None, Some(u)) if !u.is_empty() => Subject::User(u.clone()),
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    field("role"),
                    "set either role or user, not both; use two grants for both",
                ))
            }
            _ => return Err(ConfigError::new(
                field("role"),
                "a grant needs a non-empty role (\"prefix/group\") or user (\"prefix/principal\")",
            )),
        };
    if g.backend_user.is_empty() {
        return Err(ConfigError::new(
            field("backend_user"),
            "must name a backend user",
        ));
    }
    let password = match secrets {
        Secrets::Resolve => resolve_password(i, g)?,
        Secrets::Skip => {
            password_source(i, g)?;
            String::new()
        }
    };
    let client_source = g
        .client_source
        .iter()
        .map(|s| {
            parse_source(s).ok_or_else(|| {
                ConfigError::new(
                    field("client_source"),
                    format!("'{s}' is not an IP address or CIDR block such as 10.0.0.0/8"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let expires = g
        .expires
        .as_deref()
        .map(|t| {
            humantime::parse_rfc3339(t).map_err(|e| {
                ConfigError::new(
                    field("expires"),
                    format!("'{t}' is not an RFC 3339 UTC time such as 2026-12-31T00:00:00Z ({e})"),
                )
            })
        })
        .transpose()?;
    let backend = Arc::new(BackendIdentity {
        user: g.backend_user.clone(),
        password,
    });
    Ok(Grant {
        subject,
        backend,
        client_source,
        expires,
        admin: g.admin,
    })
}

enum PasswordSource<'a> {
    Env(&'a str),
    File(&'a Path),
}

fn password_source(i: usize, g: &GrantConfig) -> Result<PasswordSource<'_>, ConfigError> {
    match (&g.backend_password_env, &g.backend_password_file) {
        (Some(var), None) if !var.is_empty() => Ok(PasswordSource::Env(var)),
        (None, Some(path)) => Ok(PasswordSource::File(path)),
        (Some(_), Some(_)) => Err(ConfigError::new(
            format!("grant[{i}].backend_password_env"),
            "set either backend_password_env or backend_password_file, not both",
        )),
        _ => Err(ConfigError::new(
            format!("grant[{i}].backend_password_env"),
            "a grant needs the backend user's password: name an environment variable (backend_password_env) or a file (backend_password_file)",
        )),
    }
}

fn resolve_password(i: usize, g: &GrantConfig) -> Result<String, ConfigError> {
    match password_source(i, g)? {
        PasswordSource::Env(var) => std::env::var(var).map_err(|_| {
            ConfigError::new(
                format!("grant[{i}].backend_password_env"),
                format!("environment variable {var} is not set; export it with backend user '{}''s password", g.backend_user),
            )
        }),
        PasswordSource::File(path) => std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| ConfigError::new(format!("grant[{i}].backend_password_file"), format!("cannot read {}: {e}", path.display()))),
    }
}

/// Refuses a grant whose role or user does not start with a configured
/// `auth_name_prefix` and '/': callers are named `{auth_name_prefix}/{principal}`
/// with roles `{auth_name_prefix}/{group}`, so such a grant could never match.
/// Call it after [`Grants::from_config`], which refuses empty or doubled subjects.
pub fn check_prefixes(
    grants: &[GrantConfig],
    idps: &[IdentityProviderConfig],
) -> Result<(), ConfigError> {
    let prefixes: Vec<&str> = idps.iter().map(|c| c.auth_name_prefix.as_str()).collect();
    let listed = prefixes
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    for (i, grant) in grants.iter().enumerate() {
        let subjects = [
            ("role", grant.role.as_deref(), "group"),
            ("user", grant.user.as_deref(), "principal"),
        ];
        for (name, subject, rest) in subjects {
            let Some(subject) = subject.filter(|s| !s.is_empty()) else {
                continue;
            };
            let message = match subject.split_once('/') {
                Some((prefix, _)) if prefixes.contains(&prefix) => continue,
                Some((prefix, _)) => format!(
                    "prefix '{prefix}' of '{subject}' matches no identity provider's \
                     auth_name_prefix (configured: {listed}); a {name} is named \
                     '<auth_name_prefix>/<{rest}>': correct the prefix, or add an \
                     [[identity_provider]] with auth_name_prefix = \"{prefix}\""
                ),
                None => format!(
                    "'{subject}' has no prefix, so it matches no identity provider's \
                     auth_name_prefix (configured: {listed}); a {name} is named \
                     '<auth_name_prefix>/<{rest}>', e.g. '{}/{subject}'",
                    prefixes.first().copied().unwrap_or("prefix")
                ),
            };
            return Err(ConfigError::new(format!("grant[{i}].{name}"), message));
        }
    }
    Ok(())
}

fn parse_source(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn grant(toml_text: &str) -> GrantConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn alice(roles: &[&str]) -> Identity {
        Identity {
            idp: 0,
            principal: "alice".into(),
            user: "okta/alice".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            expires_at: 0,
            log_claims: vec![],
        }
    }

    fn granted_user(d: Decision) -> Option<String> {
        match d {
            Decision::Granted { backend, .. } => Some(backend.user.clone()),
            Decision::Denied => None,
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn first_matching_grant_wins_and_no_match_denies() {
        std::env::set_var("MOP_TEST_PW", "secret");
        let grants = Grants::from_config(
            &[
                grant("role = 'okta/dba'\nbackend_user = 'dba'\nbackend_password_env = 'MOP_TEST_PW'"),
                grant("user = 'okta/alice'\nbackend_user = 'alice_rw'\nbackend_password_env = 'MOP_TEST_PW'"),
                grant("role = 'okta/readers'\nbackend_user = 'reader'\nbackend_password_env = 'MOP_TEST_PW'"),
            ],
            Secrets::Resolve,
        )
        .unwrap();
        let now = SystemTime::now();
        assert_eq!(
            granted_user(grants.decide(&alice(&["okta/dba"]), LOCAL, now)).as_deref(),
            Some("dba")
        );
        assert_eq!(
            granted_user(grants.decide(&alice(&["okta/readers"]), LOCAL, now)).as_deref(),
            Some("alice_rw")
        );
        let mut bob = alice(&["okta/readers"]);
        bob.user = "okta/bob".into();
        assert_eq!(
            granted_user(grants.decide(&bob, LOCAL, now)).as_deref(),
            Some("reader")
        );
        bob.roles = vec!["other/readers".into(), "okta/dbax".into()];
        assert!(granted_user(grants.decide(&bob, LOCAL, now)).is_none());
        assert!(granted_user(Grants::default().decide(&alice(&[]), LOCAL, now)).is_none());
    }

    #[test]
    fn client_source_and_expiry_restrict_a_grant() {
        std::env::set_var("MOP_TEST_PW2", "x");
        let grants = Grants::from_config(
            &[grant(
                "role = 'okta/dba'\nbackend_user = 'dba'\nbackend_password_env = 'MOP_TEST_PW2'\nclient_source = ['10.0.0.0/8', '127.0.0.1']\nexpires = '2030-01-01T00:00:00Z'",
            )],
            Secrets::Resolve,
        )
        .unwrap();
        let before = humantime::parse_rfc3339("2029-12-31T23:59:59Z").unwrap();
        let after = before + Duration::from_secs(1);
        let id = alice(&["okta/dba"]);
        assert!(granted_user(grants.decide(&id, "10.1.2.3".parse().unwrap(), before)).is_some());
        assert!(
            granted_user(grants.decide(&id, "::ffff:10.1.2.3".parse().unwrap(), before)).is_some()
        );
        assert!(granted_user(grants.decide(&id, LOCAL, before)).is_some());
        assert!(granted_user(grants.decide(&id, "192.168.1.1".parse().unwrap(), before)).is_none());
        assert!(granted_user(grants.decide(&id, LOCAL, after)).is_none());
    }

    #[test]
    fn candidates_are_what_decide_chooses_from() {
        std::env::set_var("MOP_TEST_PW3", "x");
        let grants = Grants::from_config(
            &[
                grant("role = 'okta/dba'\nbackend_user = 'dba'\nbackend_password_env = 'MOP_TEST_PW3'\nclient_source = ['10.0.0.0/8']\nadmin = true"),
                grant("role = 'okta/dba'\nbackend_user = 'old'\nbackend_password_env = 'MOP_TEST_PW3'\nexpires = '2020-01-01T00:00:00Z'"),
                grant("role = 'okta/other'\nbackend_user = 'other'\nbackend_password_env = 'MOP_TEST_PW3'"),
                grant("user = 'okta/alice'\nbackend_user = 'alice_rw'\nbackend_password_env = 'MOP_TEST_PW3'"),
            ],
            Secrets::Resolve,
        )
        .unwrap();
        let now = SystemTime::now();
        let id = alice(&["okta/dba"]);
        let c = grants.candidates(&id, now);
        let summary: Vec<_> = c
            .iter()
            .map(|c| {
                (
                    c.grant,
                    c.backend_user.as_str(),
                    c.admin,
                    c.client_source.len(),
                )
            })
            .collect();
        assert_eq!(summary, [(0, "dba", true, 1), (3, "alice_rw", false, 0)]);
        // decide picks the first candidate whose client_source admits the peer.
        let ten: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            granted_user(grants.decide(&id, ten, now)).as_deref(),
            Some("dba")
        );
        assert_eq!(
            granted_user(grants.decide(&id, LOCAL, now)).as_deref(),
            Some("alice_rw")
        );
        let mut bob = alice(&[]);
        bob.user = "okta/bob".into();
        assert!(grants.candidates(&bob, now).is_empty());
    }

    #[test]
    fn refuses_bad_grants_naming_the_field() {
        let cases = [
            ("backend_user = 'x'\nbackend_password_env = 'P'", "grant[0].role: a grant needs a non-empty role (\"prefix/group\") or user (\"prefix/principal\")"),
            ("role = 'a/b'\nuser = 'a/c'\nbackend_user = 'x'\nbackend_password_env = 'P'", "grant[0].role: set either role or user, not both; use two grants for both"),
            ("role = 'a/b'\nbackend_user = ''\nbackend_password_env = 'P'", "grant[0].backend_user: must name a backend user"),
            ("role = 'a/b'\nbackend_user = 'x'", "grant[0].backend_password_env: a grant needs the backend user's password: name an environment variable (backend_password_env) or a file (backend_password_file)"),
            ("role = 'a/b'\nbackend_user = 'x'\nbackend_password_env = 'P'\nbackend_password_file = 'f'", "grant[0].backend_password_env: set either backend_password_env or backend_password_file, not both"),
            ("role = 'a/b'\nbackend_user = 'x'\nbackend_password_env = 'P'\nclient_source = ['10.0.0.0/33']", "grant[0].client_source: '10.0.0.0/33' is not an IP address or CIDR block such as 10.0.0.0/8"),
        ];
        for (text, want) in cases {
            let err = Grants::from_config(&[grant(text)], Secrets::Skip).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        let err = Grants::from_config(&[grant("role = 'a/b'\nbackend_user = 'x'\nbackend_password_env = 'P'\nexpires = 'tomorrow'")], Secrets::Skip).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("grant[0].expires: 'tomorrow' is not an RFC 3339 UTC time"),
            "{err}"
        );
    }

    fn idp(prefix: &str) -> IdentityProviderConfig {
        toml::from_str(&format!(
            "issuer = 'https://idp.example.com'\naudience = 'a'\nauth_name_prefix = '{prefix}'"
        ))
        .unwrap()
    }

    #[test]
    fn refuses_grants_whose_prefix_matches_no_identity_provider() {
        let idps = [idp("okta"), idp("entra")];
        let err = |text: &str| {
            let grants = [grant("role = 'okta/dba'\nbackend_user = 'x'"), grant(text)];
            check_prefixes(&grants, &idps).unwrap_err().to_string()
        };
        assert_eq!(
            err("role = 'okt/dba'\nbackend_user = 'x'"),
            "grant[1].role: prefix 'okt' of 'okt/dba' matches no identity provider's \
             auth_name_prefix (configured: 'okta', 'entra'); a role is named \
             '<auth_name_prefix>/<group>': correct the prefix, or add an [[identity_provider]] \
             with auth_name_prefix = \"okt\""
        );
        assert_eq!(
            err("user = 'alice'\nbackend_user = 'x'"),
            "grant[1].user: 'alice' has no prefix, so it matches no identity provider's \
             auth_name_prefix (configured: 'okta', 'entra'); a user is named \
             '<auth_name_prefix>/<principal>', e.g. 'okta/alice'"
        );
        assert_eq!(
            err("user = '/alice'\nbackend_user = 'x'"),
            "grant[1].user: prefix '' of '/alice' matches no identity provider's \
             auth_name_prefix (configured: 'okta', 'entra'); a user is named \
             '<auth_name_prefix>/<principal>': correct the prefix, or add an \
             [[identity_provider]] with auth_name_prefix = \"\""
        );
        // The prefix ends at the first '/': the rest may hold more.
        let fine = [
            grant("role = 'entra/a/b'\nbackend_user = 'x'"),
            grant("user = 'okta/alice@example.com'\nbackend_user = 'x'"),
        ];
        assert_eq!(check_prefixes(&fine, &idps), Ok(()));
    }

    #[test]
    fn missing_secrets_are_named() {
        std::env::remove_var("MOP_TEST_UNSET");
        let err = Grants::from_config(
            &[grant(
                "role = 'a/b'\nbackend_user = 'dba'\nbackend_password_env = 'MOP_TEST_UNSET'",
            )],
            Secrets::Resolve,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "grant[0].backend_password_env: environment variable MOP_TEST_UNSET is not set; export it with backend user 'dba''s password");
        let err = Grants::from_config(
            &[grant(
                "role = 'a/b'\nbackend_user = 'dba'\nbackend_password_file = '/nonexistent/pw'",
            )],
            Secrets::Resolve,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("grant[0].backend_password_file: cannot read /nonexistent/pw:"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let b = BackendIdentity {
            user: "dba".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{b:?}").contains("hunter2"));
    }
}
