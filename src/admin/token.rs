//! The bearer token of the admin endpoints: read once per runtime build from
//! the environment or a file, kept only as its SHA-256, and compared in
//! constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AdminConfig, ConfigError};

/// The admin token of one runtime. Holds only a digest, so neither `Debug`
/// nor a core dump shows the token itself.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads the token `[admin]` names; refuses a missing or empty one,
    /// naming the field.
    pub fn from_config(config: &AdminConfig) -> Result<AdminToken, ConfigError> {
        let token = match (&config.token_env, &config.token_file) {
            (Some(var), _) => {
                let field = "admin.token_env";
                let value = std::env::var(var).map_err(|e| {
                    let why = match e {
                        std::env::VarError::NotPresent => "is not set",
                        std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                    };
                    ConfigError::new(
                        field,
                        format!("environment variable {var} {why}; export it with the admin endpoints' bearer token"),
                    )
                })?;
                if value.is_empty() {
                    return Err(ConfigError::new(
                        field,
                        format!("environment variable {var} is empty; set it to the admin endpoints' bearer token"),
                    ));
                }
                value
            }
            (None, Some(path)) => {
                let field = "admin.token_file";
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(field, format!("cannot read {}: {e}", path.display()))
                })?;
                // An editor's or `echo`'s final newline is not part of the token.
                let token = text.trim_end_matches(['\r', '\n']);
                if token.is_empty() {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "{} is empty; write the admin endpoints' bearer token into it",
                            path.display()
                        ),
                    ));
                }
                token.to_owned()
            }
            // Config validation refuses this already.
            (None, None) => {
                return Err(ConfigError::new(
                    "admin.token_env",
                    "the admin endpoints need a bearer token: name an environment variable (token_env) or a file (token_file)",
                ))
            }
        };
        Ok(AdminToken::new(&token))
    }

    pub fn new(token: &str) -> AdminToken {
        AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`.
    /// The digests are compared in constant time, and comparing digests
    /// rather than tokens hides the token's length as well.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(bearer) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// The credentials of a `Bearer` authorization (the scheme is
/// case-insensitive, RFC 7235).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value.get(7..)?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn admits_only_the_bearer_token() {
        let t = AdminToken::new("s3cret-token");
        assert!(t.admits(Some(b"Bearer s3cret-token")));
        assert!(t.admits(Some(b"bearer s3cret-token")));
        assert!(t.admits(Some(b"BEARER  s3cret-token ")));
        for bad in [
            &b"Bearer s3cret-tokeN"[..],
            b"Bearer s3cret-token2",
            b"Bearer s3cret",
            b"Bearer ",
            b"Bearer",
            b"Basic s3cret-token",
            b"s3cret-token",
            b"",
        ] {
            assert!(!t.admits(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!t.admits(None));
        assert_eq!(format!("{t:?}"), "AdminToken(..)");
    }

    fn env(var: &str) -> AdminConfig {
        AdminConfig {
            token_env: Some(var.into()),
            token_file: None,
        }
    }

    fn file(path: PathBuf) -> AdminConfig {
        AdminConfig {
            token_env: None,
            token_file: Some(path),
        }
    }

    #[test]
    fn reads_the_token_from_the_environment_or_a_file() {
        // Variables only this test sets.
        std::env::set_var("MOP_TEST_ADMIN_TOKEN", "from-env");
        std::env::set_var("MOP_TEST_ADMIN_TOKEN_EMPTY", "");
        let t = AdminToken::from_config(&env("MOP_TEST_ADMIN_TOKEN")).unwrap();
        assert!(t.admits(Some(b"Bearer from-env")));
        assert_eq!(
            AdminToken::from_config(&env("MOP_TEST_ADMIN_TOKEN_UNSET"))
                .unwrap_err()
                .to_string(),
            "admin.token_env: environment variable MOP_TEST_ADMIN_TOKEN_UNSET is not set; export it with the admin endpoints' bearer token"
        );
        assert_eq!(
            AdminToken::from_config(&env("MOP_TEST_ADMIN_TOKEN_EMPTY"))
                .unwrap_err()
                .to_string(),
            "admin.token_env: environment variable MOP_TEST_ADMIN_TOKEN_EMPTY is empty; set it to the admin endpoints' bearer token"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "from-file\n").unwrap();
        let t = AdminToken::from_config(&file(path.clone())).unwrap();
        assert!(t.admits(Some(b"Bearer from-file")));
        std::fs::write(&path, "\r\n").unwrap();
        assert_eq!(
            AdminToken::from_config(&file(path.clone()))
                .unwrap_err()
                .to_string(),
            format!(
                "admin.token_file: {} is empty; write the admin endpoints' bearer token into it",
                path.display()
            )
        );
        let missing = dir.path().join("missing.token");
        let err = AdminToken::from_config(&file(missing.clone())).unwrap_err();
        assert_eq!(err.field, "admin.token_file");
        assert!(
            err.message
                .starts_with(&format!("cannot read {}: ", missing.display())),
            "{err}"
        );
    }
}
