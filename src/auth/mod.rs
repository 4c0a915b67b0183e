//! Authentication: JWT verification against cached JWKS ([`jwt`], [`jwks`]),
//! the identity-provider registry ([`idp`]) and the server side of the
//! MONGODB-OIDC SASL conversation ([`oidc`]). Nothing here knows about sockets.

pub mod idp;
pub mod jwks;
pub mod jwt;
pub mod oidc;
pub mod scram_server;
#[cfg(test)]
mod shapes;

pub use idp::IdpRegistry;

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Index of the identity provider (config order) that vouched for it.
    pub idp: usize,
    /// The principal claim's value, without prefix.
    pub principal: String,
    /// `{auth_name_prefix}/{principal}`, in database `$external`.
    pub user: String,
    /// `{auth_name_prefix}/{group}` for each group, in database `admin`.
    pub roles: Vec<String>,
    /// The token's `exp`, Unix seconds.
    pub expires_at: u64,
    /// The configured `log_claims` that were present, as `claim=value` text.
    pub log_claims: Vec<(String, String)>,
}

/// Why a sign-in failed. Logged and counted; the client only ever sees
/// code 18 "Authentication failed.".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("SASL payload is not valid: {0}")]
    BadPayload(String),
    #[error("no identity provider could be chosen: {0}")]
    NoIdentityProvider(String),
    #[error("token is malformed: {0}")]
    MalformedToken(String),
    #[error("token is larger than {0} bytes")]
    TokenTooLarge(usize),
    #[error("token algorithm is not accepted: {0}")]
    Algorithm(String),
    #[error("no key for the token: {0}")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token issuer is not accepted: {0}")]
    Issuer(String),
    #[error("token audience is not accepted: {0}")]
    Audience(String),
    #[error("token is expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token claim is invalid: {0}")]
    Claim(String),
    #[error("principal name changed between step 1 '{hint}' and step 2 '{principal}'")]
    PrincipalChanged { hint: String, principal: String },
    /// The test-only SCRAM set-up user's conversation failed.
    #[error("SCRAM-SHA-256 set-up user: {0}")]
    Scram(#[from] scram_server::ScramServerError),
}

impl AuthFailure {
    /// A short, stable label for the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::BadPayload(_) => "bad_payload",
            AuthFailure::NoIdentityProvider(_) => "no_identity_provider",
            AuthFailure::MalformedToken(_) => "malformed_token",
            AuthFailure::TokenTooLarge(_) => "token_too_large",
            AuthFailure::Algorithm(_) => "algorithm",
            AuthFailure::UnknownKey(_) => "unknown_key",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Issuer(_) => "issuer",
            AuthFailure::Audience(_) => "audience",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::Claim(_) => "claim",
            AuthFailure::PrincipalChanged { .. } => "principal_changed",
            AuthFailure::Scram(_) => "scram_setup_user",
        }
    }
}
