//! The TOML configuration file: its shape (snake_case versions of MongoDB's
//! `oidcIdentityProviders` fields) and its validation.

mod identity_provider;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use validate::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub backend: BackendConfig,
    #[serde(default)]
    pub identity_provider: Vec<IdentityProviderConfig>,
    #[serde(default)]
    pub grant: Vec<GrantConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `mongodb://host[:port][,host...]/[?options]`; credentials come from grants.
    pub uri: String,
    /// Database the backend users authenticate against (SCRAM `authSource`).
    #[serde(default = "default_auth_source")]
    pub auth_source: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client may take to finish TLS and sign in.
    #[serde(default = "default_auth_timeout_secs")]
    pub auth_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: default_max_message_size(),
            max_connections: default_max_connections(),
            auth_timeout_secs: default_auth_timeout_secs(),
        }
    }
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
fn default_log_claims() -> Vec<String> {
    vec!["iss".into(), "sub".into()]
}
fn default_max_message_size() -> usize {
    crate::wire::DEFAULT_MAX_MESSAGE_SIZE
}
fn default_max_connections() -> usize {
    10_000
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
        let mut config = Config::parse(&text)?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(ConfigError::from_toml)?;
        validate::validate(&config)?;
        Ok(config)
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
        for g in &mut self.grant {
            if let Some(f) = g.backend_password_file.as_mut() {
                fix(f);
            }
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
    }

    fn error_for(edit: impl Fn(&str) -> String) -> String {
        Config::parse(&edit(GOOD)).unwrap_err().to_string()
    }

    #[test]
    fn refuses_bad_values_naming_the_field() {
        type Edit = Box<dyn Fn(&str) -> String>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.replace("uri = \"mongodb://127.0.0.1:27018/\"", "uri = \"\"")), "backend.uri: must be a mongodb:// URI such as mongodb://127.0.0.1:27018/"),
            (Box::new(|s| format!("{s}\n[limits]\nmax_message_size = 10\n")), "limits.max_message_size: must be between 1048576 and 48000000 bytes"),
            (Box::new(|s| format!("{s}\n[limits]\nmax_connections = 0\n")), "limits.max_connections: must be at least 1"),
            (Box::new(|s| format!("{s}\n[limits]\nauth_timeout_secs = 0\n")), "limits.auth_timeout_secs: must be at least 1"),
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
        let err =
            error_for(|s| s.replace("address = \"127.0.0.1:27017\"", "address = \"nowhere\""));
        assert!(err.contains("invalid socket address syntax"), "{err}");
        let err = error_for(|s| format!("{s}\n[log]\nformat = \"xml\"\n"));
        assert!(
            err.contains("unknown variant `xml`, expected `text` or `json`"),
            "{err}"
        );
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
