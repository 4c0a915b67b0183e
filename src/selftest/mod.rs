//! Testing one's own setup from the operator's terminal, without starting
//! the proxy: [`token`] obtains an access token from a configured identity
//! provider (OAuth device flow or client credentials), and [`sign_in`] says
//! what the proxy would make of a token — the user, roles and grant, or the
//! detailed reason for refusing it, which clients never see.
//!
//! Both sit above [`crate::runtime`]: `check --sign-in` builds the runtime
//! exactly as start-up does and asks its registry and grants.

pub mod sign_in;
pub mod token;

/// The largest IdP response read (discovery document, token response), as
/// for JWKS documents.
pub const MAX_RESPONSE: usize = crate::auth::jwks::DEFAULT_MAX_BODY;
