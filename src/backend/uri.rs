//! Parsing `backend.uri`: a `mongodb://` connection string restricted to the
//! options this proxy honours.
//!
//! Anything else is refused with a message naming the offending part, because
//! silently ignoring an option (say `authSource` or `readPreference`) would
//! make the proxy behave differently from what the operator wrote.

use std::fmt;
use std::path::PathBuf;

/// The default mongod port, used when a host has none.
pub const DEFAULT_PORT: u16 = 27017;

/// Options accepted in `backend.uri`, in the spelling the error message shows.
pub const SUPPORTED_OPTIONS: &[&str] = &[
    "replicaSet",
    "tls",
    "ssl",
    "tlsCAFile",
    "tlsCertificateKeyFile",
    "directConnection",
    "connectTimeoutMS",
];

/// The most hosts a seed list may name; replica sets have at most 50 members.
const MAX_HOSTS: usize = 50;

/// What `backend.uri` says about how to reach the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSettings {
    /// Seed list in the order given; hosts are stored without IPv6 brackets.
    pub hosts: Vec<(String, u16)>,
    pub replica_set: Option<String>,
    /// `Some` when TLS is on.
    pub tls: Option<TlsOptions>,
    pub direct_connection: bool,
    /// `connectTimeoutMS` from the URI; overrides `backend.connect_timeout_ms`.
    pub connect_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// PEM CA bundle; `None` means the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// PEM file holding the client certificate chain and its private key.
    pub cert_key_file: Option<PathBuf>,
}

/// A refused `backend.uri`; the message is complete and names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend.uri: {0}")]
pub struct UriError(pub String);

impl From<UriError> for crate::config::ConfigError {
    fn from(e: UriError) -> Self {
        crate::config::ConfigError::new("backend.uri", e.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, UriError> {
    Err(UriError(msg.into()))
}

/// `host:port` for messages and logs, with brackets around IPv6 literals.
pub struct HostPort<'a>(pub &'a str, pub u16);

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.contains(':') {
            write!(f, "[{}]:{}", self.0, self.1)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

impl BackendSettings {
    pub fn parse(uri: &str) -> Result<BackendSettings, UriError> {
        let rest = if let Some(r) = uri.strip_prefix("mongodb://") {
            r
        } else if uri.starts_with("mongodb+srv://") {
            return err(
                "mongodb+srv:// is not supported; list the hosts explicitly as \
                 mongodb://host1:port,host2:port/?replicaSet=NAME",
            );
        } else {
            return err("must start with mongodb:// (for example mongodb://127.0.0.1:27017/)");
        };

        // The host list ends at the first '/' or '?'; neither can occur in a
        // host, and an '@' before it means credentials.
        let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (host_part, tail) = rest.split_at(host_end);
        if host_part.contains('@') {
            return err(
                "credentials in the URI are not supported; backend users and passwords \
                 come from [[grant]] backend_user and backend_password_env. Remove 'user:password@'",
            );
        }
        let hosts = parse_hosts(host_part)?;

        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let db = path.strip_prefix('/').unwrap_or(path);
        if !db.is_empty() {
            return err(format!(
                "a database in the path ('{db}') is not used; remove it and set \
                 backend.auth_source for the database the backend users authenticate against"
            ));
        }

        let mut settings = BackendSettings {
            hosts,
            replica_set: None,
            tls: None,
            direct_connection: false,
            connect_timeout_ms: None,
        };
        let opts = parse_options(query.unwrap_or(""))?;
        settings.apply(opts)?;
        Ok(settings)
    }

    fn apply(&mut self, opts: Options) -> Result<(), UriError> {
        let tls_on = match (opts.tls, opts.ssl) {
            (Some(a), Some(b)) if a != b => {
                return err("tls and ssl disagree; they are the same option, set only tls")
            }
            (Some(a), _) | (None, Some(a)) => Some(a),
            (None, None) => None,
        };
        let has_tls_files = opts.tls_ca_file.is_some() || opts.tls_cert_key_file.is_some();
        if tls_on == Some(false) && has_tls_files {
            return err(
                "tlsCAFile/tlsCertificateKeyFile are set but tls=false; set tls=true or remove them",
            );
        }
        // The TLS file options imply TLS, as they do for MongoDB's drivers.
        if tls_on == Some(true) || has_tls_files {
            self.tls = Some(TlsOptions {
                ca_file: opts.tls_ca_file,
                cert_key_file: opts.tls_cert_key_file,
            });
        }
        self.replica_set = opts.replica_set;
        self.direct_connection = opts.direct_connection.unwrap_or(false);
        if self.direct_connection && self.hosts.len() > 1 {
            return err(format!(
                "directConnection=true needs exactly one host, but {} are listed",
                self.hosts.len()
            ));
        }
        self.connect_timeout_ms = opts.connect_timeout_ms;
        Ok(())
    }
}

fn parse_hosts(part: &str) -> Result<Vec<(String, u16)>, UriError> {
    if part.is_empty() {
        return err("no host given (for example mongodb://127.0.0.1:27017/)");
    }
    let mut hosts = Vec::new();
    for item in part.split(',') {
        if hosts.len() == MAX_HOSTS {
            return err(format!("more than {MAX_HOSTS} hosts"));
        }
        let (host, port) = if let Some(v6) = item.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return err(format!(
                    "host '{item}': IPv6 address is missing its closing ']'"
                ));
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return err(format!("host '{item}': '{addr}' is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return err(format!("host '{item}': expected ':port' after ']'")),
                },
            };
            (addr, port)
        } else {
            match item.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (item, None),
            }
        };
        if host.is_empty() {
            return err(format!("empty host in '{part}'"));
        }
        if !item.starts_with('[')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return err(format!(
                "host '{host}' contains characters not allowed in a host name \
                 (IPv6 addresses go in brackets: [::1]:27017)"
            ));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return err(format!(
                        "host '{item}': port '{p}' is not a number from 1 to 65535"
                    ))
                }
            },
        };
        let entry = (host.to_ascii_lowercase(), port);
        if hosts.contains(&entry) {
            return err(format!("host '{item}' is listed twice"));
        }
        hosts.push(entry);
    }
    Ok(hosts)
}

#[derive(Default)]
struct Options {
    replica_set: Option<String>,
    tls: Option<bool>,
    ssl: Option<bool>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_key_file: Option<PathBuf>,
    direct_connection: Option<bool>,
    connect_timeout_ms: Option<u64>,
}

fn parse_options(query: &str) -> Result<Options, UriError> {
    let mut o = Options::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((raw_key, raw_value)) = pair.split_once('=') else {
            return err(format!("option '{pair}' has no value (write {pair}=VALUE)"));
        };
        let key = percent_decode(raw_key)?;
        let value = percent_decode(raw_value)?;
        // Option names are case-insensitive in MongoDB connection strings.
        let canonical = SUPPORTED_OPTIONS
            .iter()
            .find(|s| s.eq_ignore_ascii_case(&key))
            .copied();
        let dup = || UriError(format!("option '{key}' is given more than once"));
        match canonical {
            Some("replicaSet") => {
                if value.is_empty() {
                    return err("replicaSet is empty");
                }
                set_once(&mut o.replica_set, value, dup)?
            }
            Some("tls") => set_once(&mut o.tls, parse_bool("tls", &value)?, dup)?,
            Some("ssl") => set_once(&mut o.ssl, parse_bool("ssl", &value)?, dup)?,
            Some("tlsCAFile") => {
                set_once(&mut o.tls_ca_file, non_empty_path("tlsCAFile", value)?, dup)?
            }
            Some("tlsCertificateKeyFile") => set_once(
                &mut o.tls_cert_key_file,
                non_empty_path("tlsCertificateKeyFile", value)?,
                dup,
            )?,
            Some("directConnection") => set_once(
                &mut o.direct_connection,
                parse_bool("directConnection", &value)?,
                dup,
            )?,
            Some("connectTimeoutMS") => {
                let ms = match value.parse::<u64>() {
                    Ok(n) if (1..=600_000).contains(&n) => n,
                    _ => {
                        return err(format!(
                            "connectTimeoutMS '{value}' must be a number of milliseconds from 1 to 600000"
                        ))
                    }
                };
                set_once(&mut o.connect_timeout_ms, ms, dup)?
            }
            _ => {
                let hint = if key.eq_ignore_ascii_case("authSource")
                    || key.eq_ignore_ascii_case("authMechanism")
                {
                    "; backend authentication is configured by backend.auth_source and [[grant]], not the URI"
                } else {
                    ""
                };
                return err(format!(
                    "unknown option '{key}'; supported: {}{hint}",
                    SUPPORTED_OPTIONS.join(", ")
                ));
            }
        }
    }
    Ok(o)
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    dup: impl FnOnce() -> UriError,
) -> Result<(), UriError> {
    if slot.is_some() {
        return Err(dup());
    }
    *slot = Some(value);
    Ok(())
}

fn parse_bool(name: &str, value: &str) -> Result<bool, UriError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => err(format!("{name} must be true or false, not '{value}'")),
    }
}

fn non_empty_path(name: &str, value: String) -> Result<PathBuf, UriError> {
    if value.is_empty() {
        return err(format!("{name} is empty"));
    }
    Ok(PathBuf::from(value))
}

/// Decodes `%XX` escapes (file paths in options may be escaped).
fn percent_decode(s: &str) -> Result<String, UriError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(v) => out.push(v),
                None => return err(format!("bad percent-escape in '{s}'")),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError(format!("'{s}' decodes to invalid UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(uri: &str) -> BackendSettings {
        BackendSettings::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"))
    }
    fn bad(uri: &str) -> String {
        BackendSettings::parse(uri).unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_plain_standalone() {
        let s = ok("mongodb://127.0.0.1:27018/");
        assert_eq!(s.hosts, vec![("127.0.0.1".to_string(), 27018)]);
        assert_eq!(s.replica_set, None);
        assert_eq!(s.tls, None);
        assert!(!s.direct_connection);
        assert_eq!(s.connect_timeout_ms, None);
    }

    #[test]
    fn accepts_shapes_without_slash_or_port() {
        assert_eq!(
            ok("mongodb://db.example.com").hosts,
            vec![("db.example.com".into(), 27017)]
        );
        assert_eq!(ok("mongodb://h:1?tls=true").hosts, vec![("h".into(), 1)]);
        assert_eq!(
            ok("mongodb://H.Example:2/?").hosts,
            vec![("h.example".into(), 2)]
        );
    }

    #[test]
    fn accepts_a_replica_set_seed_list_with_ipv6() {
        let s = ok("mongodb://a:1,[::1]:27019,[fe80::1],b/?replicaSet=rs0&connectTimeoutMS=2500");
        assert_eq!(
            s.hosts,
            vec![
                ("a".into(), 1),
                ("::1".into(), 27019),
                ("fe80::1".into(), 27017),
                ("b".into(), 27017)
            ]
        );
        assert_eq!(s.replica_set.as_deref(), Some("rs0"));
        assert_eq!(s.connect_timeout_ms, Some(2500));
        assert_eq!(HostPort("::1", 27019).to_string(), "[::1]:27019");
        assert_eq!(HostPort("a", 1).to_string(), "a:1");
    }

    #[test]
    fn accepts_tls_options_case_insensitively_and_decoded() {
        let s =
            ok("mongodb://h/?TLS=true&tlscafile=%2Fetc%2Fca.pem&tlsCertificateKeyFile=/c/k.pem");
        assert_eq!(
            s.tls,
            Some(TlsOptions {
                ca_file: Some("/etc/ca.pem".into()),
                cert_key_file: Some("/c/k.pem".into())
            })
        );
        assert_eq!(ok("mongodb://h/?ssl=true").tls, Some(TlsOptions::default()));
        assert_eq!(
            ok("mongodb://h/?tls=true&ssl=true").tls,
            Some(TlsOptions::default())
        );
        assert_eq!(ok("mongodb://h/?tls=false").tls, None);
        // The file options imply TLS.
        assert!(ok("mongodb://h/?tlsCAFile=ca.pem").tls.is_some());
    }

    #[test]
    fn accepts_direct_connection() {
        assert!(ok("mongodb://h/?directConnection=true").direct_connection);
        assert!(!ok("mongodb://h,i/?directConnection=false").direct_connection);
    }

    #[test]
    fn refuses_unknown_options_naming_them() {
        assert_eq!(
            bad("mongodb://h/?foo=1"),
            "backend.uri: unknown option 'foo'; supported: replicaSet, tls, ssl, tlsCAFile, \
             tlsCertificateKeyFile, directConnection, connectTimeoutMS"
        );
        assert_eq!(
            bad("mongodb://h/?authSource=admin"),
            "backend.uri: unknown option 'authSource'; supported: replicaSet, tls, ssl, tlsCAFile, \
             tlsCertificateKeyFile, directConnection, connectTimeoutMS; backend authentication is \
             configured by backend.auth_source and [[grant]], not the URI"
        );
        assert_eq!(
            bad("mongodb://h/?tls"),
            "backend.uri: option 'tls' has no value (write tls=VALUE)"
        );
    }

    #[test]
    fn refuses_srv_other_schemes_and_credentials() {
        assert_eq!(
            bad("mongodb+srv://cluster.example.com/"),
            "backend.uri: mongodb+srv:// is not supported; list the hosts explicitly as \
             mongodb://host1:port,host2:port/?replicaSet=NAME"
        );
        assert_eq!(
            bad("http://h/"),
            "backend.uri: must start with mongodb:// (for example mongodb://127.0.0.1:27017/)"
        );
        let e = bad("mongodb://admin:s3cret@h/");
        assert_eq!(
            e,
            "backend.uri: credentials in the URI are not supported; backend users and passwords \
             come from [[grant]] backend_user and backend_password_env. Remove 'user:password@'"
        );
        assert!(!e.contains("s3cret"));
    }

    #[test]
    fn refuses_bad_hosts_and_ports() {
        assert_eq!(
            bad("mongodb:///"),
            "backend.uri: no host given (for example mongodb://127.0.0.1:27017/)"
        );
        assert_eq!(bad("mongodb://a,,b/"), "backend.uri: empty host in 'a,,b'");
        assert_eq!(
            bad("mongodb://h:0/"),
            "backend.uri: host 'h:0': port '0' is not a number from 1 to 65535"
        );
        assert_eq!(
            bad("mongodb://h:70000/"),
            "backend.uri: host 'h:70000': port '70000' is not a number from 1 to 65535"
        );
        assert_eq!(
            bad("mongodb://h:x/"),
            "backend.uri: host 'h:x': port 'x' is not a number from 1 to 65535"
        );
        assert_eq!(
            bad("mongodb://[::1/"),
            "backend.uri: host '[::1': IPv6 address is missing its closing ']'"
        );
        assert_eq!(
            bad("mongodb://[zz]:1/"),
            "backend.uri: host '[zz]:1': 'zz' is not an IPv6 address"
        );
        assert_eq!(
            bad("mongodb://[::1]x/"),
            "backend.uri: host '[::1]x': expected ':port' after ']'"
        );
        assert_eq!(bad("mongodb://::1/"), "backend.uri: empty host in '::1'");
        assert_eq!(
            bad("mongodb://a:1,A:1/"),
            "backend.uri: host 'A:1' is listed twice"
        );
        assert_eq!(
            bad("mongodb://h%20x/"),
            "backend.uri: host 'h%20x' contains characters not allowed in a host name \
             (IPv6 addresses go in brackets: [::1]:27017)"
        );
    }

    #[test]
    fn refuses_a_database_in_the_path() {
        assert_eq!(
            bad("mongodb://h/admin"),
            "backend.uri: a database in the path ('admin') is not used; remove it and set \
             backend.auth_source for the database the backend users authenticate against"
        );
    }

    #[test]
    fn refuses_bad_option_values() {
        assert_eq!(
            bad("mongodb://h/?tls=yes"),
            "backend.uri: tls must be true or false, not 'yes'"
        );
        assert_eq!(
            bad("mongodb://h/?tls=true&ssl=false"),
            "backend.uri: tls and ssl disagree; they are the same option, set only tls"
        );
        assert_eq!(
            bad("mongodb://h/?tls=false&tlsCAFile=ca.pem"),
            "backend.uri: tlsCAFile/tlsCertificateKeyFile are set but tls=false; set tls=true or remove them"
        );
        assert_eq!(
            bad("mongodb://h/?tlsCAFile="),
            "backend.uri: tlsCAFile is empty"
        );
        assert_eq!(
            bad("mongodb://h/?replicaSet="),
            "backend.uri: replicaSet is empty"
        );
        assert_eq!(
            bad("mongodb://h/?replicaSet=a&replicaset=b"),
            "backend.uri: option 'replicaset' is given more than once"
        );
        assert_eq!(
            bad("mongodb://h/?connectTimeoutMS=0"),
            "backend.uri: connectTimeoutMS '0' must be a number of milliseconds from 1 to 600000"
        );
        assert_eq!(
            bad("mongodb://a,b/?directConnection=true"),
            "backend.uri: directConnection=true needs exactly one host, but 2 are listed"
        );
        assert_eq!(
            bad("mongodb://h/?tlsCAFile=%zz"),
            "backend.uri: bad percent-escape in '%zz'"
        );
        assert_eq!(
            bad("mongodb://h/?tlsCAFile=%ff"),
            "backend.uri: '%ff' decodes to invalid UTF-8"
        );
    }
}
