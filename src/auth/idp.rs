//! The identity-provider registry. (Stub: being written.)

use super::{AuthFailure, Identity};
use crate::config::{ConfigError, IdentityProviderConfig};

/// What a human-flow client is told in the step-1 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpInfo<'a> {
    pub issuer: &'a str,
    /// `None` for machine (supports_human_flows = false) IdPs.
    pub client_id: Option<&'a str>,
    pub request_scopes: &'a [String],
}

/// What step 1 of the human flow decided, checked again at step 2.
#[derive(Debug, Clone, Copy)]
pub struct Step1<'a> {
    pub idp: usize,
    pub hint: Option<&'a str>,
}

pub struct IdpRegistry {
    _configs: Vec<IdentityProviderConfig>,
}

impl IdpRegistry {
    pub fn new(configs: &[IdentityProviderConfig]) -> Result<IdpRegistry, ConfigError> {
        Ok(IdpRegistry {
            _configs: configs.to_vec(),
        })
    }

    pub async fn load_all(&self) {}

    pub fn select_for_hint(&self, _hint: Option<&str>) -> Result<usize, AuthFailure> {
        Err(AuthFailure::NoIdentityProvider("not implemented".into()))
    }

    pub fn info(&self, _idp: usize) -> Option<IdpInfo<'_>> {
        None
    }

    pub async fn verify(
        &self,
        _token: &str,
        _step1: Option<Step1<'_>>,
    ) -> Result<Identity, AuthFailure> {
        Err(AuthFailure::MalformedToken("not implemented".into()))
    }
}
