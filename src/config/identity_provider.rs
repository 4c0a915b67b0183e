//! Identity-provider rules (stub; being written on the auth branch).

use super::{ConfigError, IdentityProviderConfig};

pub(super) fn validate(_idps: &[IdentityProviderConfig]) -> Result<(), ConfigError> {
    Ok(())
}
