//! `mongo-oidc-proxy check --sign-in TOKEN_FILE`: what the proxy would make
//! of a token, without starting it.
//!
//! The runtime is built as start-up builds it, the identity providers' keys
//! are loaded (this needs the network, as start-up does), and the token goes
//! through the same verification and grant decision as a client's
//! `saslStart`. The answer is the user, roles and grant — or the detailed
//! reason for refusing, which a client only ever sees as
//! AuthenticationFailed (18): this is the operator's own terminal.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::{AuthFailure, Identity};
use crate::authz::{Candidate, Decision};
use crate::config::Config;
use crate::runtime::Runtime;

/// What the proxy would do with the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed in with a grant: the report, one `name: value` per line.
    Granted(String),
    /// Why the token, or every command of its session, would be refused.
    Refused(String),
}

/// Loads every issuer's keys (`warn` gets the ones that fail), verifies the
/// token and decides its grant as of now.
pub async fn check(
    runtime: &Runtime,
    token: &str,
    client: Option<IpAddr>,
    warn: &mut (dyn FnMut(&str) + Send),
) -> Verdict {
    for cache in runtime.registry.jwks_caches() {
        if let Err(e) = cache.load().await {
            warn(&format!(
                "warning: cannot load the keys of {}: {e}; its tokens are refused until it answers",
                cache.issuer()
            ));
        }
    }
    let verified = runtime.registry.verify(token, None).await;
    let now = SystemTime::now();
    match verified {
        Err(failure) => Verdict::Refused(refusal(&failure, token, &runtime.config, now)),
        Ok(identity) => {
            let candidates = runtime.grants.candidates(&identity, now);
            let decided = client.map(|peer| (peer, runtime.grants.decide(&identity, peer, now)));
            explain(&runtime.config, &identity, &candidates, decided, now)
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The token's `exp`, read without verifying anything (for the message only).
fn unverified_exp(token: &str) -> Option<u64> {
    let jws = crate::auth::jwt::split(token, usize::MAX).ok()?;
    let payload = jws.decode_payload().ok()?;
    let claims = crate::auth::jwt::parse_claims(&payload).ok()?;
    (claims.exp.is_finite() && claims.exp >= 0.0).then_some(claims.exp as u64)
}

/// Why the sign-in fails, with what the operator needs to fix it.
pub fn refusal(failure: &AuthFailure, token: &str, config: &Config, now: SystemTime) -> String {
    let detail = match failure {
        AuthFailure::Expired => match unverified_exp(token) {
            Some(exp) => format!(
                "{failure} (exp {}, {} s ago)",
                rfc3339(exp),
                unix(now).saturating_sub(exp)
            ),
            None => failure.to_string(),
        },
        AuthFailure::Issuer(_) => {
            let trusted: Vec<&str> = config
                .identity_provider
                .iter()
                .map(|c| c.issuer.as_str())
                .collect();
            format!("{failure} (the config trusts {})", trusted.join(", "))
        }
        AuthFailure::Audience(_) => {
            let expected: Vec<String> = config
                .identity_provider
                .iter()
                .map(|c| format!("'{}' for {}", c.audience, c.issuer))
                .collect();
            format!("{failure} (the config expects {})", expected.join(", "))
        }
        other => other.to_string(),
    };
    format!(
        "token refused: {detail} (reason {}); a client sending it gets AuthenticationFailed (18)",
        failure.reason()
    )
}

fn roles(identity: &Identity) -> String {
    if identity.roles.is_empty() {
        "no roles".into()
    } else {
        format!("roles {}", identity.roles.join(", "))
    }
}

fn describe_grant(c: &Candidate) -> String {
    let mut s = format!(
        "grant[{}]: backend user {}, admin {}",
        c.grant, c.backend_user, c.admin
    );
    if !c.client_source.is_empty() {
        let from: Vec<String> = c.client_source.iter().map(ToString::to_string).collect();
        s.push_str(&format!(", for clients from {}", from.join(", ")));
    }
    if let Some(until) = c.expires {
        s.push_str(&format!(", until {}", rfc3339(unix(until))));
    }
    s
}

const NO_COMMANDS: &str =
    "every command but hello, ping and the SASL commands would get Unauthorized (13)";

/// The report for a verified token: who it is, and which grant applies —
/// for the given client address, or else for every address in order.
pub fn explain(
    config: &Config,
    identity: &Identity,
    candidates: &[Candidate],
    decided: Option<(IpAddr, Decision)>,
    now: SystemTime,
) -> Verdict {
    let signs_in = format!("it signs in as {} with {}", identity.user, roles(identity));
    let grant_lines: Vec<String> = match decided {
        Some((peer, Decision::Granted { grant, .. })) => candidates
            .iter()
            .find(|c| c.grant == grant)
            .map(|c| vec![format!("{} (for a client from {peer})", describe_grant(c))])
            .unwrap_or_default(),
        Some((peer, Decision::Denied)) => {
            let why = if candidates.is_empty() {
                "no grant names that user or one of those roles".to_string()
            } else {
                let restricted: Vec<String> = candidates.iter().map(describe_grant).collect();
                format!(
                    "no grant admits a client from {peer} ({})",
                    restricted.join("; ")
                )
            };
            return Verdict::Refused(format!(
                "token refused: {signs_in}, but {why}; {NO_COMMANDS}"
            ));
        }
        None => {
            let mut lines = Vec::new();
            for c in candidates {
                let prefix = if lines.is_empty() { "" } else { "otherwise " };
                lines.push(format!("{prefix}{}", describe_grant(c)));
                if c.client_source.is_empty() {
                    break;
                }
            }
            if candidates
                .last()
                .is_some_and(|c| !c.client_source.is_empty())
                && candidates.iter().all(|c| !c.client_source.is_empty())
            {
                lines.push("otherwise none: clients from other addresses get Unauthorized (13) for every command".into());
            }
            lines
        }
    };
    if grant_lines.is_empty() {
        return Verdict::Refused(format!(
            "token refused: {signs_in}, but no grant names that user or one of those roles; {NO_COMMANDS}"
        ));
    }
    let idp = config.identity_provider.get(identity.idp);
    let mut out = vec![match idp {
        Some(c) => format!(
            "token: accepted by identity_provider[{}] (auth_name_prefix {}, issuer {})",
            identity.idp, c.auth_name_prefix, c.issuer
        ),
        None => format!("token: accepted by identity_provider[{}]", identity.idp),
    }];
    out.push(format!("user: {}", identity.user));
    out.push(format!(
        "roles: {}",
        if identity.roles.is_empty() {
            "(none)".to_string()
        } else {
            identity.roles.join(", ")
        }
    ));
    out.push(format!(
        "expires: {} (in {} s)",
        rfc3339(identity.expires_at),
        identity.expires_at.saturating_sub(unix(now))
    ));
    out.extend(grant_lines.into_iter().map(|l| format!("grant: {l}")));
    Verdict::Granted(out.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Grants, Secrets};

    const CONFIG: &str = r#"
[listen]
address = "127.0.0.1:0"
tls_cert = "s.pem"
tls_key = "s.key"
[backend]
uri = "mongodb://127.0.0.1:1/"
[[identity_provider]]
issuer = "https://idp.example.com"
audience = "api://m"
auth_name_prefix = "okta"
client_id = "c"
[[identity_provider]]
issuer = "https://other.example.com"
audience = "api://o"
auth_name_prefix = "o"
supports_human_flows = false
[[grant]]
role = "okta/dba"
backend_user = "dba"
backend_password_env = "P"
client_source = ["10.0.0.0/8"]
admin = true
[[grant]]
role = "okta/dba"
backend_user = "reader"
backend_password_env = "P"
expires = "2999-01-01T00:00:00Z"
[[grant]]
role = "okta/ops"
backend_user = "ops"
backend_password_env = "P"
client_source = ["192.168.0.0/16"]
"#;

    fn setup() -> (Config, Grants) {
        let config = Config::parse(CONFIG).unwrap();
        let grants = Grants::from_config(&config.grant, Secrets::Skip).unwrap();
        (config, grants)
    }

    fn who(roles: &[&str]) -> Identity {
        Identity {
            idp: 0,
            principal: "alice".into(),
            user: "okta/alice".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            expires_at: 1_800_000_600,
            log_claims: vec![],
        }
    }

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn run(roles: &[&str], peer: Option<&str>) -> Verdict {
        let (config, grants) = setup();
        let id = who(roles);
        let c = grants.candidates(&id, at());
        let decided = peer.map(|p| {
            let p: IpAddr = p.parse().unwrap();
            (p, grants.decide(&id, p, at()))
        });
        explain(&config, &id, &c, decided, at())
    }

    #[test]
    fn a_grant_for_every_address_in_order() {
        assert_eq!(
            run(&["okta/dba"], None),
            Verdict::Granted(
                "token: accepted by identity_provider[0] (auth_name_prefix okta, issuer https://idp.example.com)\n\
                 user: okta/alice\n\
                 roles: okta/dba\n\
                 expires: 2027-01-15T08:10:00Z (in 600 s)\n\
                 grant: grant[0]: backend user dba, admin true, for clients from 10.0.0.0/8\n\
                 grant: otherwise grant[1]: backend user reader, admin false, until 2999-01-01T00:00:00Z"
                    .into()
            )
        );
        let Verdict::Granted(ops) = run(&["okta/ops"], None) else {
            panic!()
        };
        assert!(ops.ends_with(
            "grant: grant[2]: backend user ops, admin false, for clients from 192.168.0.0/16\n\
             grant: otherwise none: clients from other addresses get Unauthorized (13) for every command"
        ), "{ops}");
    }

    #[test]
    fn a_client_address_decides_exactly() {
        let Verdict::Granted(r) = run(&["okta/dba"], Some("10.1.1.1")) else {
            panic!()
        };
        assert!(r.ends_with("grant: grant[0]: backend user dba, admin true, for clients from 10.0.0.0/8 (for a client from 10.1.1.1)"), "{r}");
        let Verdict::Granted(r) = run(&["okta/dba"], Some("127.0.0.1")) else {
            panic!()
        };
        assert!(r.ends_with("grant: grant[1]: backend user reader, admin false, until 2999-01-01T00:00:00Z (for a client from 127.0.0.1)"), "{r}");
        assert_eq!(
            run(&["okta/ops"], Some("127.0.0.1")),
            Verdict::Refused("token refused: it signs in as okta/alice with roles okta/ops, but no grant admits a client from 127.0.0.1 (grant[2]: backend user ops, admin false, for clients from 192.168.0.0/16); every command but hello, ping and the SASL commands would get Unauthorized (13)".into())
        );
    }

    #[test]
    fn no_grant_is_a_refusal_naming_user_and_roles() {
        let expected = "token refused: it signs in as okta/alice with roles okta/nobody, okta/else, but no grant names that user or one of those roles; every command but hello, ping and the SASL commands would get Unauthorized (13)";
        assert_eq!(
            run(&["okta/nobody", "okta/else"], None),
            Verdict::Refused(expected.into())
        );
        assert_eq!(
            run(&["okta/nobody", "okta/else"], Some("10.0.0.1")),
            Verdict::Refused(expected.into())
        );
        assert_eq!(
            run(&[], None),
            Verdict::Refused("token refused: it signs in as okta/alice with no roles, but no grant names that user or one of those roles; every command but hello, ping and the SASL commands would get Unauthorized (13)".into())
        );
    }

    #[test]
    fn refusals_say_what_to_fix() {
        let (config, _) = setup();
        // iss, aud, sub and {"exp": 1799999940} as a token's payload.
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbSIsImF1ZCI6ImFwaTovL20iLCJzdWIiOiJhbGljZSIsImV4cCI6MTc5OTk5OTk0MH0.c2ln";
        assert_eq!(
            refusal(&AuthFailure::Expired, token, &config, at()),
            "token refused: token is expired (exp 2027-01-15T07:59:00Z, 60 s ago) (reason expired); a client sending it gets AuthenticationFailed (18)"
        );
        assert_eq!(
            refusal(&AuthFailure::Issuer("Unknown Identity Provider 'https://x'".into()), token, &config, at()),
            "token refused: token issuer is not accepted: Unknown Identity Provider 'https://x' (the config trusts https://idp.example.com, https://other.example.com) (reason issuer); a client sending it gets AuthenticationFailed (18)"
        );
        assert_eq!(
            refusal(&AuthFailure::Audience("Unknown audience name 'api://z' for Identity Provider 'https://idp.example.com'".into()), token, &config, at()),
            "token refused: token audience is not accepted: Unknown audience name 'api://z' for Identity Provider 'https://idp.example.com' (the config expects 'api://m' for https://idp.example.com, 'api://o' for https://other.example.com) (reason audience); a client sending it gets AuthenticationFailed (18)"
        );
        assert_eq!(
            refusal(&AuthFailure::BadSignature, token, &config, at()),
            "token refused: token signature is invalid (reason bad_signature); a client sending it gets AuthenticationFailed (18)"
        );
    }
}
