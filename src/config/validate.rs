//! Semantic checks a TOML parser cannot make. Every error names the field.

use super::Config;

/// A config problem: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn from_toml(e: toml::de::Error) -> Self {
        ConfigError::new("config", e.to_string().trim_end().to_string())
    }
}

pub(super) fn validate(_config: &Config) -> Result<(), ConfigError> {
    Ok(())
}
