//! Semantic checks a TOML parser cannot make. Every error names the field.
//!
//! Only checks that need nothing but the config itself live here: config
//! imports no other module of the crate. What needs another module (backend
//! URI and TLS files, grant secrets and subjects, listener TLS, the process's
//! file-descriptor limit) is refused by that module's constructor, which
//! start-up and `check` both call.

use super::{
    AdminConfig, Config, GrantConfig, PoolConfig, TestingConfig, DEFAULT_MAX_MESSAGE_SIZE,
};

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
        // toml's message already quotes the offending line and key.
        ConfigError::new("config", e.to_string().trim_end().to_string())
    }
}

const MIN_MESSAGE_SIZE: usize = 1 << 20;
const MAX_DRAIN_SECS: u64 = 3600;
/// A hello with a speculative sign-in carrying a large token needs this.
const MIN_MESSAGE_SIZE_BEFORE_SIGN_IN: usize = 16 * 1024;

/// mongod-compatible servers close connections idle for 300 s; a pool
/// keeping them longer would hand out dead ones.
const MAX_POOL_IDLE_SECS: u64 = 299;
const MAX_POOL_SIZE: usize = 10_000;

fn validate_pool(pool: &PoolConfig) -> Result<(), ConfigError> {
    if !(1..=MAX_POOL_SIZE).contains(&pool.max_size) {
        return Err(ConfigError::new(
            "backend.pool.max_size",
            format!("must be between 1 and {MAX_POOL_SIZE}"),
        ));
    }
    if pool.min_size > pool.max_size {
        return Err(ConfigError::new(
            "backend.pool.min_size",
            format!("must not exceed backend.pool.max_size ({})", pool.max_size),
        ));
    }
    if pool.max_connecting == 0 {
        return Err(ConfigError::new(
            "backend.pool.max_connecting",
            "must be at least 1",
        ));
    }
    if !(1..=MAX_POOL_IDLE_SECS).contains(&pool.idle_timeout_secs) {
        return Err(ConfigError::new(
            "backend.pool.idle_timeout_secs",
            format!(
                "must be between 1 and {MAX_POOL_IDLE_SECS}: backends close connections idle for 300 s"
            ),
        ));
    }
    if pool.checkout_timeout_ms == 0 {
        return Err(ConfigError::new(
            "backend.pool.checkout_timeout_ms",
            "must be at least 1",
        ));
    }
    if pool.max_waiters == Some(0) {
        return Err(ConfigError::new(
            "backend.pool.max_waiters",
            "must be at least 1 (or left out: ten per connection of max_size)",
        ));
    }
    Ok(())
}

pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let listen = &config.listen;
    if listen.client_cert_mode.is_some() && listen.client_ca.is_none() {
        return Err(ConfigError::new(
            "listen.client_cert_mode",
            "needs listen.client_ca, the CA that signs client certificates",
        ));
    }
    if config.backend.uri.trim().is_empty() {
        return Err(ConfigError::new(
            "backend.uri",
            "must be a mongodb:// URI such as mongodb://127.0.0.1:27018/",
        ));
    }
    if config.backend.connect_timeout_ms == 0 {
        return Err(ConfigError::new(
            "backend.connect_timeout_ms",
            "must be at least 1",
        ));
    }
    validate_pool(&config.backend.pool)?;
    let limits = &config.limits;
    if !(MIN_MESSAGE_SIZE..=DEFAULT_MAX_MESSAGE_SIZE).contains(&limits.max_message_size) {
        return Err(ConfigError::new(
            "limits.max_message_size",
            format!("must be between {MIN_MESSAGE_SIZE} and {DEFAULT_MAX_MESSAGE_SIZE} bytes"),
        ));
    }
    if limits.max_connections == 0 {
        return Err(ConfigError::new(
            "limits.max_connections",
            "must be at least 1",
        ));
    }
    if !(MIN_MESSAGE_SIZE_BEFORE_SIGN_IN..=limits.max_message_size)
        .contains(&limits.max_message_size_before_sign_in)
    {
        return Err(ConfigError::new(
            "limits.max_message_size_before_sign_in",
            format!(
                "must be between {MIN_MESSAGE_SIZE_BEFORE_SIGN_IN} bytes and limits.max_message_size ({})",
                limits.max_message_size
            ),
        ));
    }
    if !(1..=MAX_DRAIN_SECS).contains(&limits.sign_in_deadline_secs) {
        return Err(ConfigError::new(
            "limits.sign_in_deadline_secs",
            format!("must be between 1 and {MAX_DRAIN_SECS}"),
        ));
    }
    for (field, value) in [
        (
            "limits.max_connections_per_ip",
            limits.max_connections_per_ip,
        ),
        (
            "limits.max_pending_human_flows_per_ip",
            limits.max_pending_human_flows_per_ip,
        ),
        (
            "limits.max_sign_in_failures_per_connection",
            limits.max_sign_in_failures_per_connection as usize,
        ),
    ] {
        if value == 0 {
            return Err(ConfigError::new(field, "must be at least 1"));
        }
    }
    if limits.auth_timeout_secs == 0 {
        return Err(ConfigError::new(
            "limits.auth_timeout_secs",
            "must be at least 1",
        ));
    }
    if config.shutdown.drain_secs > MAX_DRAIN_SECS {
        return Err(ConfigError::new(
            "shutdown.drain_secs",
            format!("must be at most {MAX_DRAIN_SECS} (one hour)"),
        ));
    }
    if config
        .audit
        .as_ref()
        .is_some_and(|a| a.path.as_os_str().is_empty())
    {
        return Err(ConfigError::new(
            "audit.path",
            "must name a file to append to, or be \"-\" for standard output",
        ));
    }
    if let Some(admin) = &config.admin {
        validate_admin(admin, config.metrics.is_some())?;
    }
    if config.identity_provider.is_empty() {
        return Err(ConfigError::new(
            "identity_provider",
            "configure at least one [[identity_provider]]; without one nobody can sign in",
        ));
    }
    super::identity_provider::validate(&config.identity_provider)?;
    if config.grant.is_empty() {
        return Err(ConfigError::new(
            "grant",
            "configure at least one [[grant]]; without one every session is refused",
        ));
    }
    validate_grant_names(&config.grant)?;
    validate_setup_user(&config.testing, &config.grant)
}

fn validate_grant_names(grants: &[GrantConfig]) -> Result<(), ConfigError> {
    for (i, g) in grants.iter().enumerate() {
        let Some(name) = g.name.as_deref() else {
            continue;
        };
        if name.is_empty() {
            return Err(ConfigError::new(
                format!("grant[{i}].name"),
                "must not be empty; remove it or name the grant",
            ));
        }
        if grants
            .iter()
            .take(i)
            .any(|o| o.name.as_deref() == Some(name))
        {
            return Err(ConfigError::new(
                format!("grant[{i}].name"),
                format!("'{name}' names another grant already; grant names must be unique"),
            ));
        }
    }
    Ok(())
}

/// The test-only SCRAM set-up user: only with test commands on, with one
/// password source, mapped to an existing admin grant.
fn validate_setup_user(testing: &TestingConfig, grants: &[GrantConfig]) -> Result<(), ConfigError> {
    let Some(user) = testing.setup_user.as_deref() else {
        for (field, set) in [
            (
                "testing.setup_password_env",
                testing.setup_password_env.is_some(),
            ),
            (
                "testing.setup_password_file",
                testing.setup_password_file.is_some(),
            ),
            ("testing.setup_grant", testing.setup_grant.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(field, "needs testing.setup_user"));
            }
        }
        return Ok(());
    };
    if !testing.enable_test_commands {
        return Err(ConfigError::new(
            "testing.setup_user",
            "a SCRAM set-up user is a test-only back door: it needs \
             testing.enable_test_commands = true, and must never be set in production",
        ));
    }
    // '/' would let the name equal an OIDC user's `<prefix>/<principal>`.
    if user.is_empty() || !user.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(ConfigError::new(
            "testing.setup_user",
            "must be a non-empty name of printable ASCII characters without spaces or '/' \
             (OIDC users are named '<prefix>/<principal>')",
        ));
    }
    match (&testing.setup_password_env, &testing.setup_password_file) {
        (Some(var), None) if !var.is_empty() => {}
        (None, Some(_)) => {}
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "testing.setup_password_env",
                "set either setup_password_env or setup_password_file, not both",
            ))
        }
        _ => {
            return Err(ConfigError::new(
                "testing.setup_password_env",
                "the set-up user needs a password: name an environment variable \
                 (setup_password_env) or a file (setup_password_file)",
            ))
        }
    }
    let Some(name) = testing.setup_grant.as_deref() else {
        return Err(ConfigError::new(
            "testing.setup_grant",
            "name the [[grant]] (by its name) whose backend user the set-up user's sessions relay as",
        ));
    };
    match grants.iter().find(|g| g.name.as_deref() == Some(name)) {
        None => Err(ConfigError::new(
            "testing.setup_grant",
            format!("no [[grant]] has name = \"{name}\""),
        )),
        Some(g) if !g.admin => Err(ConfigError::new(
            "testing.setup_grant",
            format!(
                "grant '{name}' does not have admin = true; the set-up user sets fail points, \
                 which only an admin grant may"
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The token's source must be unambiguous, and the endpoints need the
/// metrics listener they are served on.
fn validate_admin(admin: &AdminConfig, metrics: bool) -> Result<(), ConfigError> {
    match (&admin.token_env, &admin.token_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "admin.token_env",
                "set either token_env or token_file, not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::new(
                "admin.token_env",
                "the admin endpoints need a bearer token: name an environment variable (token_env) or a file (token_file)",
            ))
        }
        (Some(var), None) if var.is_empty() => {
            return Err(ConfigError::new(
                "admin.token_env",
                "must name an environment variable",
            ))
        }
        _ => {}
    }
    if !metrics {
        return Err(ConfigError::new(
            "admin",
            "the admin endpoints are served on the [metrics] address: add [metrics] address = \"127.0.0.1:9216\" (or remove [admin])",
        ));
    }
    Ok(())
}
