//! The TOML configuration file: its shape (snake_case versions of MongoDB's
//! `oidcIdentityProviders` fields) and its validation.

mod identity_provider;
mod mongodb_json;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub use validate::ConfigError;

/// The default and largest `limits.max_message_size`: mongod's usual
/// `maxMessageSizeBytes`. Equal to `wire::DEFAULT_MAX_MESSAGE_SIZE`; config
/// keeps its own copy so that it imports no other module of the crate, and
/// src/layering.rs tests that the two agree.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 48_000_000;

#[cfg(test)]
pub(crate) use identity_provider::url_rule;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub backend: BackendConfig,
    #[serde(default)]
    pub identity_provider: Vec<IdentityProviderConfig>,
    /// MongoDB's `oidcIdentityProviders` JSON, inline: an alternative to the
    /// `[[identity_provider]]` tables. Mapped into `identity_provider` at load.
    #[serde(default)]
    pub identity_providers_json: Option<String>,
    /// The same JSON in a file (relative to the config file).
    #[serde(default)]
    pub identity_providers_file: Option<PathBuf>,
    #[serde(default)]
    pub grant: Vec<GrantConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The admin endpoints on the metrics address, and the token they need.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    #[serde(default)]
    pub testing: TestingConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// An IP address and port, or `localhost:PORT` (meaning 127.0.0.1:PORT).
    #[serde(deserialize_with = "deserialize_listen_address")]
    pub address: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_cert_mode: Option<ClientCertMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    Optional,
    Required,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `mongodb://host[:port][,host...]/[?options]`; credentials come from grants.
    pub uri: String,
    /// Database the backend users authenticate against (SCRAM `authSource`).
    #[serde(default = "default_auth_source")]
    pub auth_source: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// `[backend.pool]`: the pooled backend connections.
    #[serde(default)]
    pub pool: PoolConfig,
}

/// `[backend.pool]`: one pool per backend host and backend user, with
/// mongos-like defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Connections (in use and idle) per host and backend user.
    pub max_size: usize,
    /// Connections kept open even when idle.
    pub min_size: usize,
    /// New connections being opened at once per pool.
    pub max_connecting: usize,
    /// An idle connection is closed after this long (under the 300 s after
    /// which mongod-compatible servers close idle connections themselves).
    pub idle_timeout_secs: u64,
    /// How long a request may wait for a connection.
    pub checkout_timeout_ms: u64,
    /// Requests that may wait for a connection at once; `None`: 10 × `max_size`.
    pub max_waiters: Option<usize>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_size: 100,
            min_size: 0,
            max_connecting: 2,
            idle_timeout_secs: 240,
            checkout_timeout_ms: 5_000,
            max_waiters: None,
        }
    }
}

impl PoolConfig {
    /// `max_waiters`, or its default of ten per connection.
    pub fn waiters(&self) -> usize {
        self.max_waiters
            .unwrap_or_else(|| self.max_size.saturating_mul(10))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderConfig {
    pub issuer: String,
    pub audience: String,
    pub auth_name_prefix: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub match_pattern: Option<String>,
    #[serde(default)]
    pub request_scopes: Vec<String>,
    #[serde(default = "default_principal_name")]
    pub principal_name: String,
    #[serde(default = "default_authorization_claim")]
    pub authorization_claim: String,
    #[serde(default = "default_true")]
    pub use_authorization_claim: bool,
    #[serde(default = "default_true")]
    pub supports_human_flows: bool,
    #[serde(default)]
    pub jwks_poll_secs: u64,
    #[serde(default = "default_quiesce")]
    pub jwks_min_quiesce_secs: u64,
    #[serde(default = "default_log_claims")]
    pub log_claims: Vec<String>,
    /// PEM bundle added to the system's trust roots for this IdP's discovery
    /// and JWKS fetches (an IdP behind a private CA).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Longest one key fetch (discovery and JWKS together) may take; also
    /// the longest a sign-in with an unknown `kid` waits for one.
    #[serde(default = "default_jwks_fetch_timeout_secs")]
    pub jwks_fetch_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// A name other settings refer to the grant by (`[testing] setup_grant`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    pub backend_user: String,
    #[serde(default)]
    pub backend_password_env: Option<String>,
    #[serde(default)]
    pub backend_password_file: Option<PathBuf>,
    #[serde(default)]
    pub client_source: Vec<String>,
    #[serde(default)]
    pub expires: Option<String>,
    /// May run the proxy's administrative commands (`oidcListKeys`,
    /// `oidcRefreshKeys`, and `configureFailPoint` when test commands are on).
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// An IP address and port, or `localhost:PORT`, as `listen.address`.
    #[serde(deserialize_with = "deserialize_listen_address")]
    pub address: SocketAddr,
}

/// `[admin]`: where the bearer token of the admin endpoints is. Exactly one
/// of the two; the runtime builder reads it, so `check` refuses a missing or
/// empty one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client may take to finish TLS, and stay silent before it
    /// has signed in.
    #[serde(default = "default_auth_timeout_secs")]
    pub auth_timeout_secs: u64,
    /// Total seconds from accept to sign-in, however chatty the client is.
    #[serde(default = "default_sign_in_deadline_secs")]
    pub sign_in_deadline_secs: u64,
    /// Largest message before sign-in: hello and SASL need kilobytes.
    #[serde(default = "default_max_message_size_before_sign_in")]
    pub max_message_size_before_sign_in: usize,
    /// Open connections per client address.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Human-flow sign-ins per client address that may wait the five
    /// minutes a person needs between step 1 and step 2.
    #[serde(default = "default_max_pending_human_flows_per_ip")]
    pub max_pending_human_flows_per_ip: usize,
    /// Failed sign-ins after which a connection is closed.
    #[serde(default = "default_max_sign_in_failures_per_connection")]
    pub max_sign_in_failures_per_connection: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: default_max_message_size(),
            max_connections: default_max_connections(),
            auth_timeout_secs: default_auth_timeout_secs(),
            sign_in_deadline_secs: default_sign_in_deadline_secs(),
            max_message_size_before_sign_in: default_max_message_size_before_sign_in(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_pending_human_flows_per_ip: default_max_pending_human_flows_per_ip(),
            max_sign_in_failures_per_connection: default_max_sign_in_failures_per_connection(),
        }
    }
}

fn default_sign_in_deadline_secs() -> u64 {
    60
}
/// A 64 KiB token (the largest accepted) in a saslStart or hello, and room.
fn default_max_message_size_before_sign_in() -> usize {
    128 * 1024
}
fn default_max_connections_per_ip() -> usize {
    1000
}
fn default_max_pending_human_flows_per_ip() -> usize {
    16
}
fn default_max_sign_in_failures_per_connection() -> u32 {
    5
}

/// `[shutdown]`: the drain on SIGTERM, as mongos's quiesce mode.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds open connections are still served after SIGTERM.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_secs: default_drain_secs(),
        }
    }
}

fn default_drain_secs() -> u64 {
    15
}

/// `[audit]`: the audit trail, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The file records are appended to, or `-` for standard output.
    pub path: PathBuf,
    /// One more record per relayed command.
    #[serde(default)]
    pub commands: bool,
}

impl AuditConfig {
    /// `path = "-"`: records go to standard output, for a log collector.
    pub fn is_stdout(&self) -> bool {
        self.path.as_os_str() == "-"
    }
}

/// `[testing]`: what only a test deployment may turn on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingConfig {
    /// mongod's `enableTestCommands`: `configureFailPoint` (failCommand) for
    /// sessions whose grant has `admin = true`. Off by default, as on mongod.
    #[serde(default)]
    pub enable_test_commands: bool,
    /// A set-up user that signs in with SCRAM-SHA-256 on `admin`, as drivers'
    /// test harnesses do to set fail points and write test data. Test-only:
    /// refused unless `enable_test_commands` is on.
    #[serde(default)]
    pub setup_user: Option<String>,
    /// The set-up user's password, in this environment variable ...
    #[serde(default)]
    pub setup_password_env: Option<String>,
    /// ... or in this file (relative to the config file).
    #[serde(default)]
    pub setup_password_file: Option<PathBuf>,
    /// The `name` of the `[[grant]]` (with `admin = true`) the set-up user's
    /// sessions get: they relay as its backend user.
    #[serde(default)]
    pub setup_grant: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Parses `listen.address` and `metrics.address`: an IP address and port
/// (`0.0.0.0:27017`, `[::]:27017`), or `localhost:PORT`, which means
/// 127.0.0.1:PORT. Other host names are refused: which address a name
/// resolves to is not something to leave to the resolver at start-up.
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    parse_address(text, 27017)
}

fn parse_address(text: &str, example_port: u16) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let localhost = text
        .rsplit_once(':')
        .filter(|(host, _)| host.eq_ignore_ascii_case("localhost"))
        .and_then(|(_, port)| port.parse::<u16>().ok());
    match localhost {
        Some(port) => Ok(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))),
        None => Err(format!(
            "'{text}' is not an IP address and port; write one such as 0.0.0.0:{example_port} or \
             127.0.0.1:{example_port} (only localhost is accepted as a name)"
        )),
    }
}

fn deserialize_listen_address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_listen_address(&text).map_err(serde::de::Error::custom)
}

/// The addresses are checked before the typed parse so that a refusal is
/// reported as `listen.address: ...` (or `metrics.address`) rather than
/// inside a TOML parse error.
fn check_listen_address(text: &str) -> Result<(), ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(ConfigError::from_toml)?;
    for (section, example_port) in [("listen", 27017), ("metrics", 9216)] {
        let address = table
            .get(section)
            .and_then(|t| t.get("address"))
            .and_then(|address| address.as_str());
        if let Some(address) = address {
            parse_address(address, example_port)
                .map_err(|m| ConfigError::new(format!("{section}.address"), m))?;
        }
    }
    Ok(())
}

fn default_auth_source() -> String {
    "admin".into()
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_principal_name() -> String {
    "sub".into()
}
fn default_authorization_claim() -> String {
    "groups".into()
}
fn default_true() -> bool {
    true
}
fn default_quiesce() -> u64 {
    60
}
/// Default of `jwks_fetch_timeout_secs`.
pub const DEFAULT_JWKS_FETCH_TIMEOUT_SECS: u64 = 5;

fn default_jwks_fetch_timeout_secs() -> u64 {
    DEFAULT_JWKS_FETCH_TIMEOUT_SECS
}
fn default_log_claims() -> Vec<String> {
    vec!["iss".into(), "sub".into()]
}
fn default_max_message_size() -> usize {
    DEFAULT_MAX_MESSAGE_SIZE
}
/// Needs 2 × 4096 + 64 = 8256 file descriptors (see `fdlimit`), which fits
/// common hard limits (systemd's 524288, Docker's 1048576, and the 20000 of
/// this project's machines, below the 20064 that 10000 would need).
fn default_max_connections() -> usize {
    4_096
}
fn default_auth_timeout_secs() -> u64 {
    30
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it
    /// are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                path.display().to_string(),
                format!("cannot read the config file: {e}"),
            )
        })?;
        Config::parse_in(&text, path.parent())
    }

    /// Parses and validates config text; relative paths stay relative to
    /// the working directory.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, None)
    }

    fn parse_in(text: &str, dir: Option<&Path>) -> Result<Config, ConfigError> {
        check_listen_address(text)?;
        let mut config: Config = toml::from_str(text).map_err(ConfigError::from_toml)?;
        if let Some(dir) = dir {
            config.resolve_paths(dir);
        }
        config.apply_mongodb_json()?;
        if let Some(dir) = dir {
            // After the JSON mapping, so that serverCAFile is resolved too.
            config.resolve_idp_paths(dir);
        }
        validate::validate(&config)?;
        Ok(config)
    }

    /// Maps `identity_providers_json` / `identity_providers_file` into
    /// `identity_provider`; either one, never together with the tables.
    fn apply_mongodb_json(&mut self) -> Result<(), ConfigError> {
        let key = match (&self.identity_providers_json, &self.identity_providers_file) {
            (None, None) => return Ok(()),
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    mongodb_json::JSON_KEY,
                    "cannot be used together with identity_providers_file: keep one of them",
                ))
            }
            (Some(_), None) => mongodb_json::JSON_KEY,
            (None, Some(_)) => mongodb_json::FILE_KEY,
        };
        if !self.identity_provider.is_empty() {
            return Err(ConfigError::new(
                key,
                "cannot be used together with [[identity_provider]] tables: configure the \
                 identity providers either as MongoDB's JSON or as tables, not both",
            ));
        }
        self.identity_provider =
            match (&self.identity_providers_json, &self.identity_providers_file) {
                (Some(text), _) => mongodb_json::parse(text, key)?,
                (None, Some(path)) => mongodb_json::load_file(path)?,
                (None, None) => Vec::new(),
            };
        Ok(())
    }

    fn resolve_idp_paths(&mut self, dir: &Path) {
        for idp in &mut self.identity_provider {
            if let Some(ca) = idp.tls_ca_file.as_mut().filter(|p| p.is_relative()) {
                *ca = dir.join(&*ca);
            }
        }
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.listen.tls_cert);
        fix(&mut self.listen.tls_key);
        if let Some(ca) = self.listen.client_ca.as_mut() {
            fix(ca);
        }
        if let Some(json) = self.identity_providers_file.as_mut() {
            fix(json);
        }
        for g in &mut self.grant {
            if let Some(f) = g.backend_password_file.as_mut() {
                fix(f);
            }
        }
        if let Some(audit) = self.audit.as_mut().filter(|a| !a.is_stdout()) {
            fix(&mut audit.path);
        }
        if let Some(f) = self.admin.as_mut().and_then(|a| a.token_file.as_mut()) {
            fix(f);
        }
        if let Some(f) = self.testing.setup_password_file.as_mut() {
            fix(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[listen]
address = "127.0.0.1:27017"
tls_cert = "certs/server.pem"
tls_key = "certs/server.key"

[backend]
uri = "mongodb://127.0.0.1:27018/"

[[identity_provider]]
issuer = "https://idp.example.com"
audience = "api://mongodb"
auth_name_prefix = "okta"
client_id = "abc"

[[grant]]
role = "okta/dba"
backend_user = "dba"
backend_password_env = "DBA_PASSWORD"
"#;

    #[test]
    fn parses_the_contract_example_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        let idp = &c.identity_provider[0];
        assert_eq!(idp.principal_name, "sub");
        assert_eq!(idp.authorization_claim, "groups");
        assert!(idp.use_authorization_claim && idp.supports_human_flows);
        assert_eq!((idp.jwks_poll_secs, idp.jwks_min_quiesce_secs), (0, 60));
        assert_eq!(idp.log_claims, ["iss", "sub"]);
        assert_eq!(c.limits.max_message_size, 48_000_000);
        assert_eq!(c.backend.auth_source, "admin");
        assert_eq!(c.limits.max_connections, 4096);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        Config::parse(include_str!("../../config.example.toml")).unwrap();
    }

    #[test]
    fn resolves_relative_paths_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, GOOD).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.listen.tls_cert, dir.path().join("certs/server.pem"));
        assert_eq!(c.identity_provider[0].tls_ca_file, None);
        assert_eq!(c.identity_provider[0].jwks_fetch_timeout_secs, 5);
        let with_ca = GOOD.replace(
            "client_id = \"abc\"",
            "client_id = \"abc\"\ntls_ca_file = \"idp-ca.pem\"",
        );
        std::fs::write(&path, with_ca).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.identity_provider[0].tls_ca_file,
            Some(dir.path().join("idp-ca.pem"))
        );
    }

    fn error_for(edit: impl Fn(&str) -> String) -> String {
        Config::parse(&edit(GOOD)).unwrap_err().to_string()
    }

    #[test]
    fn the_pool_has_mongos_like_defaults() {
        let c = Config::parse(GOOD).unwrap();
        let p = &c.backend.pool;
        assert_eq!(
            (
                p.max_size,
                p.min_size,
                p.max_connecting,
                p.idle_timeout_secs,
                p.checkout_timeout_ms
            ),
            (100, 0, 2, 240, 5000)
        );
        assert_eq!(p.waiters(), 1000);
        let c = Config::parse(&format!("{GOOD}\n[backend.pool]\nmax_size = 7\n")).unwrap();
        assert_eq!(c.backend.pool.waiters(), 70);
    }

    #[test]
    fn refuses_bad_values_naming_the_field() {
        type Edit = Box<dyn Fn(&str) -> String>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.replace("uri = \"mongodb://127.0.0.1:27018/\"", "uri = \"\"")), "backend.uri: must be a mongodb:// URI such as mongodb://127.0.0.1:27018/"),
            (Box::new(|s| format!("{s}\n[limits]\nmax_message_size = 10\n")), "limits.max_message_size: must be between 1048576 and 48000000 bytes"),
            (Box::new(|s| format!("{s}\n[limits]\nmax_connections = 0\n")), "limits.max_connections: must be at least 1"),
            (Box::new(|s| format!("{s}\n[limits]\nauth_timeout_secs = 0\n")), "limits.auth_timeout_secs: must be at least 1"),
            (Box::new(|s| format!("{s}\n[limits]\nmax_message_size_before_sign_in = 1000\n")), "limits.max_message_size_before_sign_in: must be between 16384 bytes and limits.max_message_size (48000000)"),
            (Box::new(|s| format!("{s}\n[limits]\nmax_message_size = 2000000\nmax_message_size_before_sign_in = 3000000\n")), "limits.max_message_size_before_sign_in: must be between 16384 bytes and limits.max_message_size (2000000)"),
            (Box::new(|s| format!("{s}\n[limits]\nsign_in_deadline_secs = 0\n")), "limits.sign_in_deadline_secs: must be between 1 and 3600"),
            (Box::new(|s| format!("{s}\n[limits]\nmax_connections_per_ip = 0\n")), "limits.max_connections_per_ip: must be at least 1"),
            (Box::new(|s| format!("{s}\n[limits]\nmax_pending_human_flows_per_ip = 0\n")), "limits.max_pending_human_flows_per_ip: must be at least 1"),
            (Box::new(|s| format!("{s}\n[limits]\nmax_sign_in_failures_per_connection = 0\n")), "limits.max_sign_in_failures_per_connection: must be at least 1"),
            (Box::new(|s| format!("{s}\n[shutdown]\ndrain_secs = 3601\n")), "shutdown.drain_secs: must be at most 3600 (one hour)"),
            (Box::new(|s| format!("{s}\n[backend.pool]\nmax_size = 0\n")), "backend.pool.max_size: must be between 1 and 10000"),
            (Box::new(|s| format!("{s}\n[backend.pool]\nmax_size = 10001\n")), "backend.pool.max_size: must be between 1 and 10000"),
            (Box::new(|s| format!("{s}\n[backend.pool]\nmax_size = 5\nmin_size = 6\n")), "backend.pool.min_size: must not exceed backend.pool.max_size (5)"),
            (Box::new(|s| format!("{s}\n[backend.pool]\nmax_connecting = 0\n")), "backend.pool.max_connecting: must be at least 1"),
            (Box::new(|s| format!("{s}\n[backend.pool]\nidle_timeout_secs = 0\n")), "backend.pool.idle_timeout_secs: must be between 1 and 299: backends close connections idle for 300 s"),
            (Box::new(|s| format!("{s}\n[backend.pool]\nidle_timeout_secs = 300\n")), "backend.pool.idle_timeout_secs: must be between 1 and 299: backends close connections idle for 300 s"),
            (Box::new(|s| format!("{s}\n[backend.pool]\ncheckout_timeout_ms = 0\n")), "backend.pool.checkout_timeout_ms: must be at least 1"),
            (Box::new(|s| format!("{s}\n[backend.pool]\nmax_waiters = 0\n")), "backend.pool.max_waiters: must be at least 1 (or left out: ten per connection of max_size)"),
            (Box::new(|s| s.replace("tls_key = \"certs/server.key\"", "tls_key = \"certs/server.key\"\nclient_cert_mode = \"required\"")), "listen.client_cert_mode: needs listen.client_ca, the CA that signs client certificates"),
            (Box::new(|s| s[..s.find("[[identity_provider]]").unwrap()].to_string() + &s[s.find("[[grant]]").unwrap()..]), "identity_provider: configure at least one [[identity_provider]]; without one nobody can sign in"),
            (Box::new(|s| s[..s.find("[[grant]]").unwrap()].to_string()), "grant: configure at least one [[grant]]; without one every session is refused"),
        ];
        for (edit, want) in cases {
            assert_eq!(error_for(edit), want);
        }
    }

    #[test]
    fn refuses_unknown_fields_and_wrong_types_with_toml_location() {
        let err = error_for(|s| s.replace("auth_name_prefix", "authNamePrefix"));
        assert!(err.starts_with("config: TOML parse error at line"), "{err}");
        assert!(err.contains("unknown field `authNamePrefix`"), "{err}");
        let err = error_for(|s| s.replace("address = \"127.0.0.1:27017\"", "address = 27017"));
        assert!(err.starts_with("config: TOML parse error at line"), "{err}");
        assert!(
            err.contains("invalid type: integer `27017`, expected a string"),
            "{err}"
        );
        let err = error_for(|s| format!("{s}\n[log]\nformat = \"xml\"\n"));
        assert!(
            err.contains("unknown variant `xml`, expected `text` or `json`"),
            "{err}"
        );
    }

    fn listen_address(address: &str) -> Result<SocketAddr, String> {
        let text = GOOD.replace("127.0.0.1:27017", address);
        Config::parse(&text)
            .map(|c| c.listen.address)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn metrics_address_is_an_ip_address_or_localhost() {
        let metrics = |address: &str| {
            let text = format!("{GOOD}\n[metrics]\naddress = \"{address}\"\n");
            Config::parse(&text)
                .map(|c| c.metrics.map(|m| m.address))
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            metrics("localhost:9216"),
            Ok(Some("127.0.0.1:9216".parse().unwrap()))
        );
        assert_eq!(
            metrics("0.0.0.0:9216"),
            Ok(Some("0.0.0.0:9216".parse().unwrap()))
        );
        assert_eq!(
            metrics("metrics.example.com:9216"),
            Err(
                "metrics.address: 'metrics.example.com:9216' is not an IP address and port; \
                 write one such as 0.0.0.0:9216 or 127.0.0.1:9216 (only localhost is accepted \
                 as a name)"
                    .into()
            )
        );
    }

    #[test]
    fn listen_address_is_an_ip_address_or_localhost() {
        assert_eq!(
            listen_address("0.0.0.0:27017"),
            Ok("0.0.0.0:27017".parse().unwrap())
        );
        assert_eq!(
            listen_address("[::]:27017"),
            Ok("[::]:27017".parse().unwrap())
        );
        assert_eq!(
            listen_address("localhost:0"),
            Ok("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            listen_address("LocalHost:27017"),
            Ok("127.0.0.1:27017".parse().unwrap())
        );
        for bad in [
            "proxy.example.com:27017",
            "nowhere",
            "localhost",
            "localhost:99999",
            "",
        ] {
            assert_eq!(
                listen_address(bad),
                Err(format!(
                    "listen.address: '{bad}' is not an IP address and port; write one such as \
                     0.0.0.0:27017 or 127.0.0.1:27017 (only localhost is accepted as a name)"
                ))
            );
        }
    }

    /// GOOD without its `[[identity_provider]]` table, plus `idps`.
    fn with_json_idps(idps: &str) -> String {
        let start = GOOD.find("[[identity_provider]]").unwrap();
        let end = GOOD.find("[[grant]]").unwrap();
        // Top-level keys must come before the first table.
        format!("{idps}\n{}{}", &GOOD[..start], &GOOD[end..])
    }

    const JSON_IDPS: &str = r#"[{"issuer": "https://idp.example.com", "audience": "api://mongodb",
        "authNamePrefix": "okta", "clientId": "abc", "authorizationClaim": "groups",
        "matchPattern": "@example\\.com$"}]"#;

    #[test]
    fn mongodb_json_inline_replaces_the_tables() {
        let c = Config::parse(&with_json_idps(&format!(
            "identity_providers_json = '''{JSON_IDPS}'''"
        )))
        .unwrap();
        assert_eq!(c.identity_provider.len(), 1);
        let idp = &c.identity_provider[0];
        assert_eq!(idp.auth_name_prefix, "okta");
        assert_eq!(idp.match_pattern.as_deref(), Some("@example\\.com$"));
        assert_eq!(idp.jwks_poll_secs, 86_400);
    }

    #[test]
    fn mongodb_json_file_is_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("idps.json"), JSON_IDPS).unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            with_json_idps("identity_providers_file = \"idps.json\""),
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.identity_provider[0].issuer, "https://idp.example.com");
        assert_eq!(
            c.identity_providers_file.as_deref(),
            Some(dir.path().join("idps.json").as_path())
        );
    }

    #[test]
    fn mongodb_json_refusals() {
        let both_tables = format!("identity_providers_json = '''{JSON_IDPS}'''\n{GOOD}");
        assert_eq!(
            Config::parse(&both_tables).unwrap_err().to_string(),
            "identity_providers_json: cannot be used together with [[identity_provider]] tables: \
             configure the identity providers either as MongoDB's JSON or as tables, not both"
        );
        let file_and_tables = format!("identity_providers_file = \"x.json\"\n{GOOD}");
        assert_eq!(
            Config::parse(&file_and_tables).unwrap_err().field,
            "identity_providers_file"
        );
        let json_and_file = with_json_idps(&format!(
            "identity_providers_json = '''{JSON_IDPS}'''\nidentity_providers_file = \"x.json\""
        ));
        assert_eq!(
            Config::parse(&json_and_file).unwrap_err().to_string(),
            "identity_providers_json: cannot be used together with identity_providers_file: \
             keep one of them"
        );
        let bad_rule = with_json_idps(&format!(
            "identity_providers_json = '''{}'''",
            JSON_IDPS.replace("\"okta\"", "\"ok.ta\"")
        ));
        assert_eq!(
            Config::parse(&bad_rule).unwrap_err().to_string(),
            "identity_providers_json[0].authNamePrefix: 'ok.ta' may only contain letters, \
             digits, '_' and '-'"
        );
        let not_string = with_json_idps("identity_providers_json = [1]");
        let e = Config::parse(&not_string).unwrap_err().to_string();
        assert!(
            e.contains("invalid type: sequence, expected a string"),
            "{e}"
        );
    }

    #[test]
    fn audit_paths_resolve_against_the_file_except_standard_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            format!("{GOOD}\n[audit]\npath = \"logs/audit.log\"\n"),
        )
        .unwrap();
        let audit = Config::load(&path).unwrap().audit.unwrap();
        assert_eq!(audit.path, dir.path().join("logs/audit.log"));
        assert!(!audit.commands && !audit.is_stdout());
        std::fs::write(
            &path,
            format!("{GOOD}\n[audit]\npath = \"-\"\ncommands = true\n"),
        )
        .unwrap();
        let audit = Config::load(&path).unwrap().audit.unwrap();
        assert!(audit.is_stdout() && audit.commands);
        assert!(Config::parse(GOOD).unwrap().audit.is_none());
    }

    #[test]
    fn audit_refusals_name_the_field() {
        assert_eq!(
            error_for(|s| format!("{s}\n[audit]\npath = \"\"\n")),
            "audit.path: must name a file to append to, or be \"-\" for standard output"
        );
        let err = error_for(|s| format!("{s}\n[audit]\ncommands = true\n"));
        assert!(err.contains("missing field `path`"), "{err}");
        let err = error_for(|s| format!("{s}\n[audit]\npath = \"a\"\nformat = \"json\"\n"));
        assert!(err.contains("unknown field `format`"), "{err}");
    }

    #[test]
    fn admin_section_rules() {
        const METRICS: &str = "\n[metrics]\naddress = \"127.0.0.1:9216\"\n";
        let with = |admin: &str, metrics: &str| format!("{GOOD}{metrics}\n[admin]\n{admin}\n");
        let c = Config::parse(&with("token_env = \"MOP_ADMIN\"", METRICS)).unwrap();
        assert_eq!(
            c.admin,
            Some(AdminConfig {
                token_env: Some("MOP_ADMIN".into()),
                token_file: None
            })
        );
        assert!(Config::parse(GOOD).unwrap().admin.is_none());
        let cases = [
            (
                with("token_env = \"A\"\ntoken_file = \"t\"", METRICS),
                "admin.token_env: set either token_env or token_file, not both",
            ),
            (
                with("", METRICS),
                "admin.token_env: the admin endpoints need a bearer token: name an environment variable (token_env) or a file (token_file)",
            ),
            (
                with("token_env = \"\"", METRICS),
                "admin.token_env: must name an environment variable",
            ),
            (
                with("token_env = \"A\"", ""),
                "admin: the admin endpoints are served on the [metrics] address: add [metrics] address = \"127.0.0.1:9216\" (or remove [admin])",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Config::parse(&text).unwrap_err().to_string(), want);
        }
        let err = Config::parse(&with("token = \"x\"", METRICS)).unwrap_err();
        assert!(err.to_string().contains("unknown field `token`"), "{err}");
    }

    #[test]
    fn the_admin_token_file_is_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            format!("{GOOD}\n[metrics]\naddress = \"127.0.0.1:9216\"\n\n[admin]\ntoken_file = \"admin.token\"\n"),
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.admin.and_then(|a| a.token_file),
            Some(dir.path().join("admin.token"))
        );
    }

    #[test]
    fn test_commands_are_off_unless_turned_on() {
        assert!(!Config::parse(GOOD).unwrap().testing.enable_test_commands);
        let on = format!("{GOOD}\n[testing]\nenable_test_commands = true\n");
        assert!(Config::parse(&on).unwrap().testing.enable_test_commands);
        let err = error_for(|s| format!("{s}\n[testing]\nenable_fail_points = true\n"));
        assert!(err.contains("unknown field `enable_fail_points`"), "{err}");
    }

    #[test]
    fn the_scram_set_up_user_needs_test_commands_and_an_admin_grant() {
        let named = GOOD.replace("[[grant]]\n", "[[grant]]\nname = \"setup\"\nadmin = true\n");
        let with = |testing: &str| format!("{named}\n[testing]\n{testing}\n");
        let ok = with("enable_test_commands = true\nsetup_user = \"u\"\nsetup_password_env = \"P\"\nsetup_grant = \"setup\"");
        let t = Config::parse(&ok).unwrap().testing;
        assert_eq!(
            (t.setup_user.as_deref(), t.setup_grant.as_deref()),
            (Some("u"), Some("setup"))
        );
        let cases = [
            (
                with("setup_user = \"u\"\nsetup_password_env = \"P\"\nsetup_grant = \"setup\""),
                "testing.setup_user: a SCRAM set-up user is a test-only back door: it needs testing.enable_test_commands = true, and must never be set in production",
            ),
            (
                with("enable_test_commands = true\nsetup_user = \"u\"\nsetup_grant = \"setup\""),
                "testing.setup_password_env: the set-up user needs a password: name an environment variable (setup_password_env) or a file (setup_password_file)",
            ),
            (
                with("enable_test_commands = true\nsetup_user = \"u\"\nsetup_password_env = \"P\"\nsetup_password_file = \"f\"\nsetup_grant = \"setup\""),
                "testing.setup_password_env: set either setup_password_env or setup_password_file, not both",
            ),
            (
                with("enable_test_commands = true\nsetup_user = \"u\"\nsetup_password_env = \"P\""),
                "testing.setup_grant: name the [[grant]] (by its name) whose backend user the set-up user's sessions relay as",
            ),
            (
                with("enable_test_commands = true\nsetup_user = \"u\"\nsetup_password_env = \"P\"\nsetup_grant = \"other\""),
                "testing.setup_grant: no [[grant]] has name = \"other\"",
            ),
            (
                with("enable_test_commands = true\nsetup_user = \"a user\"\nsetup_password_env = \"P\"\nsetup_grant = \"setup\""),
                "testing.setup_user: must be a non-empty name of printable ASCII characters without spaces or '/' (OIDC users are named '<prefix>/<principal>')",
            ),
            (
                with("enable_test_commands = true\nsetup_user = \"okta/x\"\nsetup_password_env = \"P\"\nsetup_grant = \"setup\""),
                "testing.setup_user: must be a non-empty name of printable ASCII characters without spaces or '/' (OIDC users are named '<prefix>/<principal>')",
            ),
            (
                with("enable_test_commands = true\nsetup_password_env = \"P\""),
                "testing.setup_password_env: needs testing.setup_user",
            ),
            (
                format!("{GOOD}\n[testing]\nenable_test_commands = true\nsetup_user = \"u\"\nsetup_password_env = \"P\"\nsetup_grant = \"setup\"\n")
                    .replace("[[grant]]\n", "[[grant]]\nname = \"setup\"\n"),
                "testing.setup_grant: grant 'setup' does not have admin = true; the set-up user sets fail points, which only an admin grant may",
            ),
            (
                format!("{named}\n[[grant]]\nname = \"setup\"\nrole = \"okta/x\"\nbackend_user = \"x\"\nbackend_password_env = \"X\"\n"),
                "grant[1].name: 'setup' names another grant already; grant names must be unique",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Config::parse(&text).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/proxy.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/proxy.toml: cannot read the config file:"),
            "{err}"
        );
    }
}
