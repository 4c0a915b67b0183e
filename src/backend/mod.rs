//! Connections to the backend mongod and the proxy's own sign-in to it.
//!
//! - [`uri`]: `backend.uri` parsing, refusing what is not supported.
//! - [`scram`]: the SCRAM-SHA-256 client as pure functions, with a PBKDF2 cache.
//! - [`connection`]: one plain or TLS connection, OP_MSG commands on it, SCRAM.
//! - [`info`]: `hello`/`buildInfo` parsing into [`ServerInfo`].
//!
//! - [`pool`]: a bounded pool of connections handing out guards.
//! - [`upstream`]: the pool for a request's target, and leasing from it.
//! - [`ownership`]: which principal owns which cursors and logical sessions.
//!
//! [`Backend`] ties them together: it finds the writable primary among the
//! configured hosts, caches what the backend reports about itself, opens
//! connections authenticated as a given backend user, and keeps a pool of
//! them per host and backend user ([`Backend::lease`]).

pub mod connection;
pub mod info;
#[cfg(test)]
mod mock;
pub mod ownership;
pub mod pool;
pub mod scram;
pub mod upstream;
pub mod uri;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bson::raw::cstr;
use bson::{rawdoc, RawDocumentBuf};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{BackendConfig, ConfigError};
use crate::wire::WireError;

pub use connection::{BackendConnection, BackendStream, ForwardError, ForwardedReply};
pub use info::{Hello, Limits, ServerInfo};
pub use pool::Purpose;
pub use scram::{SaltedPasswordCache, ScramError};
pub use upstream::{Lease, LeaseError, Target};
pub use uri::{BackendSettings, HostPort, TlsOptions, UriError};

/// mongod's code for an unknown command (used to fall back from `hello` to `isMaster`).
const COMMAND_NOT_FOUND: i32 = 59;

/// Everything that can go wrong talking to the backend once it is
/// configured (a bad configuration is a [`ConfigError`] from [`Backend::new`]).
/// Messages name the host and what to check; none contains a password.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {addr}: connection refused; is mongod running and is backend.uri right?")]
    ConnectRefused { addr: String },
    #[error("backend {addr}: cannot resolve the host name ({detail}); check backend.uri")]
    Resolve { addr: String, detail: String },
    #[error("backend {addr}: cannot connect ({detail}); check backend.uri and the network")]
    Connect { addr: String, detail: String },
    #[error("backend {addr}: no connection within {ms} ms; check backend.uri, firewalls and backend.connect_timeout_ms")]
    ConnectTimeout { addr: String, ms: u64 },
    #[error("backend {addr}: the handshake (hello and authentication) did not finish within {ms} ms; is the server overloaded?")]
    HandshakeTimeout { addr: String, ms: u64 },
    #[error("backend {addr}: TLS handshake failed ({detail}); check tls/tlsCAFile in backend.uri and the server certificate's names")]
    Tls { addr: String, detail: String },
    #[error("backend {addr}: {source}")]
    Wire { addr: String, source: WireError },
    #[error("backend {addr}: the server closed the connection")]
    Closed { addr: String },
    #[error("backend {addr}: I/O error: {detail}")]
    Io { addr: String, detail: String },
    #[error("backend {addr}: unexpected reply: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("backend {addr}: not supported: {detail}")]
    Unsupported { addr: String, detail: String },
    #[error("backend {addr}: command {command} failed: {errmsg} ({code_name}, code {code})")]
    Command {
        addr: String,
        command: String,
        code: i32,
        code_name: String,
        errmsg: String,
    },
    #[error(
        "backend {addr}: authentication as '{user}' on '{db}' failed: {errmsg} ({code_name}, code {code}); \
         check the grant's backend_user and backend_password_env, backend.auth_source, and that the user has SCRAM-SHA-256 credentials"
    )]
    AuthFailed {
        addr: String,
        user: String,
        db: String,
        code: i32,
        code_name: String,
        errmsg: String,
    },
    #[error("backend {addr}: SCRAM-SHA-256 as '{user}' on '{db}': {source}")]
    Scram {
        addr: String,
        user: String,
        db: String,
        source: ScramError,
    },
    #[error("backend {addr}: is no longer the writable primary")]
    NotPrimary { addr: String },
    #[error("backend: no writable primary found; {0}")]
    NoPrimary(String),
}

impl BackendError {
    pub(crate) fn connect(addr: &str, e: &io::Error) -> BackendError {
        let addr = addr.to_string();
        let detail = e.to_string();
        match e.kind() {
            io::ErrorKind::ConnectionRefused => BackendError::ConnectRefused { addr },
            // tokio reports getaddrinfo failures as plain errors with this text.
            _ if detail.contains("lookup address") => BackendError::Resolve { addr, detail },
            _ => BackendError::Connect { addr, detail },
        }
    }

    /// A failed `saslStart`/`saslContinue` is an authentication failure.
    pub(crate) fn into_auth(self, user: &str, db: &str) -> BackendError {
        match self {
            BackendError::Command {
                addr,
                code,
                code_name,
                errmsg,
                ..
            } => BackendError::AuthFailed {
                addr,
                user: user.to_string(),
                db: db.to_string(),
                code,
                code_name,
                errmsg,
            },
            other => other,
        }
    }

    /// The server's error code, when the server sent one.
    pub fn code(&self) -> Option<i32> {
        match self {
            BackendError::Command { code, .. } | BackendError::AuthFailed { code, .. } => {
                Some(*code)
            }
            _ => None,
        }
    }

    /// True when the failure says nothing about the credentials, only about
    /// reaching the server: worth one retry after rediscovering the primary.
    fn is_topology(&self) -> bool {
        matches!(
            self,
            BackendError::ConnectRefused { .. }
                | BackendError::Connect { .. }
                | BackendError::ConnectTimeout { .. }
                | BackendError::Closed { .. }
                | BackendError::Io { .. }
                | BackendError::NotPrimary { .. }
        )
    }
}

/// What discovery found: the primary's address and what it reported.
#[derive(Debug)]
struct Discovered {
    primary: (String, u16),
    info: Arc<ServerInfo>,
}

/// The backend deployment named by `backend.uri`.
#[derive(Debug)]
pub struct Backend {
    settings: BackendSettings,
    auth_source: String,
    connect_timeout: Duration,
    /// Built by `new`, so that unreadable CA or key files are refused with
    /// the rest of the configuration rather than on the first connection.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// What discovery found, read without a lock by every lease.
    discovered: arc_swap::ArcSwapOption<Discovered>,
    /// Held across a discovery so concurrent callers wait for one probe.
    discovering: tokio::sync::Mutex<()>,
    /// Shared with the blocking PBKDF2 task, hence the Arc.
    scram_cache: Arc<SaltedPasswordCache>,
    /// The pooled connections, per host and backend user.
    pools: upstream::Pools,
}

impl Backend {
    /// Validates the configuration and loads the TLS files `backend.uri`
    /// names (or the system's CA certificates for `tls=true` without
    /// `tlsCAFile`); does no network I/O. Errors name `backend.uri`,
    /// `backend.auth_source` or `backend.connect_timeout_ms`.
    pub fn new(config: &BackendConfig) -> Result<Backend, ConfigError> {
        let settings = BackendSettings::parse(&config.uri)?;
        if config.auth_source.is_empty() {
            return Err(ConfigError::new(
                "backend.auth_source",
                "must not be empty: name the database the backend users are defined in \
                 (usually admin)",
            ));
        }
        if config.connect_timeout_ms == 0 {
            return Err(ConfigError::new(
                "backend.connect_timeout_ms",
                "must be at least 1",
            ));
        }
        let tls = settings.tls.as_ref().map(build_tls_config).transpose()?;
        // connectTimeoutMS in the URI, if given, is the more specific setting.
        let ms = settings
            .connect_timeout_ms
            .unwrap_or(config.connect_timeout_ms);
        Ok(Backend {
            settings,
            auth_source: config.auth_source.clone(),
            connect_timeout: Duration::from_millis(ms),
            tls,
            discovered: arc_swap::ArcSwapOption::empty(),
            discovering: tokio::sync::Mutex::new(()),
            scram_cache: Arc::new(SaltedPasswordCache::new()),
            pools: upstream::Pools::new(pool::PoolSettings::from(&config.pool)),
        })
    }

    pub fn settings(&self) -> &BackendSettings {
        &self.settings
    }

    pub fn auth_source(&self) -> &str {
        &self.auth_source
    }

    /// The backend's limits and build info, probed once (unauthenticated
    /// `hello` then `buildInfo` on the primary) and cached; a failed probe is
    /// not cached, so the next call tries again.
    pub async fn server_info(&self) -> Result<Arc<ServerInfo>, BackendError> {
        Ok(Arc::clone(&self.discover().await?.info))
    }

    /// Readiness: a fresh unauthenticated `hello`, never answered from the
    /// cache. It asks the primary found before; when there is none yet, or
    /// that one stopped answering, it looks for one across the seed list
    /// (caching it only when nothing was cached, as [`Backend::server_info`]
    /// would). The whole check is bounded by the connect timeout.
    pub async fn health_check(&self) -> Result<(), BackendError> {
        let check = async {
            let known = self.discovered.load().as_ref().map(|d| d.primary.clone());
            match known {
                Some((host, port)) => match self.probe(&host, port).await {
                    Ok(_) => Ok(()),
                    Err(_) => self.find_primary().await.map(|_| ()),
                },
                None => self.discover().await.map(|_| ()),
            }
        };
        let ms = self.connect_timeout.as_millis() as u64;
        tokio::time::timeout(self.connect_timeout, check)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::ConnectTimeout {
                    addr: self.seed_list(),
                    ms,
                })
            })
    }

    fn seed_list(&self) -> String {
        let hosts: Vec<String> = self
            .settings
            .hosts
            .iter()
            .map(|(h, p)| HostPort(h, *p).to_string())
            .collect();
        hosts.join(",")
    }

    /// `host:port` of the primary (discovering it if needed), for logs and health checks.
    pub async fn primary(&self) -> Result<String, BackendError> {
        let d = self.discover().await?;
        Ok(HostPort(&d.primary.0, d.primary.1).to_string())
    }

    /// Opens a connection to the primary authenticated as `user` with
    /// SCRAM-SHA-256 against `backend.auth_source`. If the cached primary
    /// cannot be reached or is no longer primary, rediscovers once.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<BackendConnection, BackendError> {
        self.connect_for(user, password, None).await
    }

    /// [`Backend::connect_as`] whose hello names an application
    /// (`appName`), which the backend's logs and `$currentOp` show.
    pub async fn connect_for(
        &self,
        user: &str,
        password: &str,
        app_name: Option<&str>,
    ) -> Result<BackendConnection, BackendError> {
        let mut retried = false;
        loop {
            let d = self.discover().await?;
            match self.open_authenticated(&d, user, password, app_name).await {
                Err(e) if !retried && e.is_topology() => {
                    tracing::info!(error = %e, "backend primary unreachable; rediscovering");
                    self.forget(&d);
                    retried = true;
                }
                other => return other,
            }
        }
    }

    /// Drops the discovery `d` unless another task already replaced it.
    fn forget(&self, d: &Arc<Discovered>) {
        self.discovered.compare_and_swap(d, None);
    }

    async fn open_authenticated(
        &self,
        d: &Discovered,
        user: &str,
        password: &str,
        app_name: Option<&str>,
    ) -> Result<BackendConnection, BackendError> {
        let (host, port) = (&d.primary.0, d.primary.1);
        let mut conn = self.open(host, port).await?;
        let ms = self.connect_timeout.as_millis() as u64;
        let addr = conn.addr().to_string();
        let handshake = async {
            let hello = hello(&mut conn, app_name).await?;
            if !hello.writable_primary && !self.settings.direct_connection {
                return Err(BackendError::NotPrimary {
                    addr: conn.addr().to_string(),
                });
            }
            conn.authenticate_scram_sha256(user, password, &self.auth_source, &self.scram_cache)
                .await
        };
        tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| BackendError::HandshakeTimeout { addr, ms })??;
        Ok(conn)
    }

    async fn open(&self, host: &str, port: u16) -> Result<BackendConnection, BackendError> {
        BackendConnection::connect(host, port, self.tls.as_ref(), self.connect_timeout).await
    }

    async fn discover(&self) -> Result<Arc<Discovered>, BackendError> {
        if let Some(d) = self.discovered.load_full() {
            return Ok(d);
        }
        let _one_probe = self.discovering.lock().await;
        // Another caller may have finished a discovery while this one waited.
        if let Some(d) = self.discovered.load_full() {
            return Ok(d);
        }
        let d = Arc::new(self.find_primary().await?);
        self.discovered.store(Some(Arc::clone(&d)));
        Ok(d)
    }

    /// Tries the seed hosts in order: a writable primary wins; otherwise the
    /// member's `primary` field is followed. Errors list what each host said.
    async fn find_primary(&self) -> Result<Discovered, BackendError> {
        let mut notes = Vec::new();
        for (host, port) in &self.settings.hosts {
            let addr = HostPort(host, *port).to_string();
            let (mut conn, hello) = match self.probe(host, *port).await {
                Ok(x) => x,
                Err(e) => {
                    notes.push(e.to_string());
                    continue;
                }
            };
            if let Err(note) = self.check_set_name(&addr, &hello) {
                notes.push(note);
                continue;
            }
            if hello.writable_primary || self.settings.direct_connection {
                return self.finish(&mut conn, hello, (host.clone(), *port)).await;
            }
            let described = format!("{addr}: {}", hello.describe());
            let Some(primary) = hello.primary.as_deref() else {
                notes.push(described);
                continue;
            };
            let Some((phost, pport)) = info::split_host_port(primary) else {
                notes.push(format!("{described} (unparseable primary address)"));
                continue;
            };
            if (&phost, pport) == (host, *port) {
                notes.push(format!("{described} (names itself but is not writable)"));
                continue;
            }
            drop(conn);
            match self.probe(&phost, pport).await {
                Ok((mut pconn, phello)) if phello.writable_primary => {
                    let paddr = HostPort(&phost, pport).to_string();
                    if let Err(note) = self.check_set_name(&paddr, &phello) {
                        notes.push(note);
                        continue;
                    }
                    return self.finish(&mut pconn, phello, (phost, pport)).await;
                }
                Ok((_, phello)) => notes.push(format!(
                    "{described}; but {primary} is {}",
                    phello.describe()
                )),
                Err(e) => notes.push(format!("{described}; but {e}")),
            }
        }
        Err(BackendError::NoPrimary(notes.join("; ")))
    }

    fn check_set_name(&self, addr: &str, hello: &Hello) -> Result<(), String> {
        match (&self.settings.replica_set, &hello.set_name) {
            (Some(want), Some(got)) if want != got => Err(format!(
                "{addr}: belongs to replica set '{got}', but backend.uri says replicaSet={want}"
            )),
            (Some(want), None) => Err(format!(
                "{addr}: is not a replica set member, but backend.uri says replicaSet={want}"
            )),
            _ => Ok(()),
        }
    }

    async fn probe(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(BackendConnection, Hello), BackendError> {
        let mut conn = self.open(host, port).await?;
        let addr = conn.addr().to_string();
        let ms = self.connect_timeout.as_millis() as u64;
        let hello = tokio::time::timeout(self.connect_timeout, hello(&mut conn, None))
            .await
            .map_err(|_| BackendError::HandshakeTimeout { addr, ms })??;
        Ok((conn, hello))
    }

    async fn finish(
        &self,
        conn: &mut BackendConnection,
        hello: Hello,
        primary: (String, u16),
    ) -> Result<Discovered, BackendError> {
        let addr = conn.addr().to_string();
        let ms = self.connect_timeout.as_millis() as u64;
        let build_info = tokio::time::timeout(
            self.connect_timeout,
            conn.command(&rawdoc! { "buildInfo": 1, "$db": "admin" }),
        )
        .await
        .map_err(|_| BackendError::HandshakeTimeout { addr, ms })??;
        tracing::info!(
            primary = %HostPort(&primary.0, primary.1),
            max_wire_version = hello.limits.max_wire_version,
            version = build_info.get_str("version").unwrap_or("?"),
            "backend discovered"
        );
        Ok(Discovered {
            primary,
            info: Arc::new(hello.into_server_info(build_info)),
        })
    }
}

/// The client metadata of the proxy's hello, as drivers send theirs: the
/// proxy as the driver, and the application of the client session the
/// connection serves, if it named one.
pub fn client_metadata(app_name: Option<&str>) -> RawDocumentBuf {
    let mut doc = RawDocumentBuf::new();
    if let Some(name) = app_name {
        doc.append(cstr!("application"), rawdoc! { "name": name });
    }
    doc.append(
        cstr!("driver"),
        rawdoc! { "name": "mongo-oidc-proxy", "version": env!("CARGO_PKG_VERSION") },
    );
    // The names drivers use, so server-side tooling groups them alike.
    let os_type = match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        other => other,
    };
    doc.append(
        cstr!("os"),
        rawdoc! { "type": os_type, "architecture": std::env::consts::ARCH },
    );
    doc.append(cstr!("platform"), "Rust, tokio, rustls");
    doc
}

/// `hello` with the client metadata, falling back to `isMaster` on servers
/// that predate it (< 4.4.2), then raises the connection's read limit to
/// what the server allows.
async fn hello(
    conn: &mut BackendConnection,
    app_name: Option<&str>,
) -> Result<Hello, BackendError> {
    let client = client_metadata(app_name);
    let hello = rawdoc! { "hello": 1, "client": client.clone(), "$db": "admin" };
    let reply = match conn.command(&hello).await {
        Err(e) if e.code() == Some(COMMAND_NOT_FOUND) => {
            conn.command(&rawdoc! { "isMaster": 1, "client": client, "$db": "admin" })
                .await?
        }
        other => other?,
    };
    let hello = Hello::parse(conn.addr(), &reply)?;
    conn.set_max_message_size(hello.limits.max_message_size_bytes as usize);
    Ok(hello)
}

/// A refusal of a TLS option in `backend.uri`.
fn tls_err(message: String) -> ConfigError {
    ConfigError::new("backend.uri", message)
}

/// What went wrong reading a PEM file, without pem's "I/O error: " prefix.
fn pem_problem(e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => e.to_string(),
        e => e.to_string(),
    }
}

fn pem_certificates(
    option: &str,
    path: &Path,
    holds: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            tls_err(format!(
                "{option} '{shown}' cannot be read: {}",
                pem_problem(e)
            ))
        })?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "{option} '{shown}' holds no PEM certificate; it must hold {holds}"
        )));
    }
    Ok(certs)
}

fn build_tls_config(opts: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match &opts.ca_file {
        Some(path) => {
            let holds = "the CA certificates that sign the backend's certificate, in PEM";
            for c in pem_certificates("tlsCAFile", path, holds)? {
                roots.add(c).map_err(|e| {
                    tls_err(format!(
                        "tlsCAFile '{}' holds a certificate that is not a usable CA: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A bad system certificate is skipped, as every TLS client does.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(tls_err(
                    "tls is on but no system CA certificates were found; add \
                     tlsCAFile=/path/to/ca.pem naming the CA that signs the backend's certificate"
                        .into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots);
    let cfg = match &opts.cert_key_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let shown = path.display();
            let holds = "the client certificate and its private key, in PEM";
            let certs = pem_certificates("tlsCertificateKeyFile", path, holds)?;
            let key = PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
                pem::Error::NoItemsFound => tls_err(format!(
                    "tlsCertificateKeyFile '{shown}' holds no PEM private key; it must hold {holds}"
                )),
                e => tls_err(format!(
                    "tlsCertificateKeyFile '{shown}' cannot be read: {}",
                    pem_problem(e)
                )),
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                tls_err(format!(
                    "tlsCertificateKeyFile '{shown}': the certificate and key do not form a \
                     usable TLS identity: {e}"
                ))
            })?
        }
    };
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(uri: &str) -> BackendConfig {
        BackendConfig {
            uri: uri.into(),
            auth_source: "admin".into(),
            connect_timeout_ms: 300,
            pool: Default::default(),
        }
    }

    #[test]
    fn new_validates_the_uri_without_io() {
        let b = Backend::new(&config("mongodb://127.0.0.1:1/?connectTimeoutMS=50")).unwrap();
        assert_eq!(b.connect_timeout, Duration::from_millis(50));
        let e = Backend::new(&config("mongodb://h/?foo=1")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("backend.uri: unknown option 'foo'"));
    }

    #[tokio::test]
    async fn refused_connection_names_the_host_and_what_to_check() {
        // Bind then drop to get a loopback port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let b = Backend::new(&config(&format!("mongodb://127.0.0.1:{port}/"))).unwrap();
        let e = b.server_info().await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "backend: no writable primary found; backend 127.0.0.1:{port}: connection refused; \
                 is mongod running and is backend.uri right?"
            )
        );
        let e = b
            .connect_as("u", "secret-pw")
            .await
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret-pw"));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let _accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let b = Backend::new(&config(&format!("mongodb://127.0.0.1:{port}/"))).unwrap();
        let e = b.server_info().await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "backend: no writable primary found; backend 127.0.0.1:{port}: the handshake \
                 (hello and authentication) did not finish within 300 ms; is the server overloaded?"
            )
        );
    }

    /// Unlike `server_info`, every health check talks to the server.
    #[tokio::test]
    async fn health_checks_ask_the_server_every_time() {
        let hellos = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hellos.clone();
        let hello = mock::hello(rawdoc! { "isWritablePrimary": true });
        let port = mock::serve(Arc::new(move |name, _| match name {
            "hello" => {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                mock::MockReply::Doc(hello.clone())
            }
            "buildInfo" => mock::MockReply::Doc(rawdoc! { "version": "7.0.0", "ok": 1 }),
            _ => mock::MockReply::Close,
        }))
        .await;
        let b = Backend::new(&config(&format!("mongodb://127.0.0.1:{port}/"))).unwrap();
        b.health_check().await.unwrap();
        b.server_info().await.unwrap();
        b.health_check().await.unwrap();
        b.health_check().await.unwrap();
        assert_eq!(hellos.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_silent_server_fails_the_health_check_at_the_connect_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let _accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let b = Backend::new(&config(&format!("mongodb://127.0.0.1:{port}/"))).unwrap();
        let started = std::time::Instant::now();
        let e = b.health_check().await.unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert_eq!(
            e,
            format!(
                "backend: no writable primary found; backend 127.0.0.1:{port}: the handshake \
                 (hello and authentication) did not finish within 300 ms; is the server overloaded?"
            )
        );
    }

    fn rs_member(extra: bson::RawDocumentBuf) -> mock::Handler {
        let hello = mock::hello(extra);
        Arc::new(move |name, _| match name {
            "hello" => mock::MockReply::Doc(hello.clone()),
            "buildInfo" => mock::MockReply::Doc(rawdoc! { "version": "7.0.0", "ok": 1 }),
            _ => mock::MockReply::Close,
        })
    }

    #[tokio::test]
    async fn follows_a_secondary_to_the_primary() {
        let b_port = mock::serve(rs_member(
            rawdoc! { "isWritablePrimary": true, "setName": "rs" },
        ))
        .await;
        let a_port = mock::serve(rs_member(rawdoc! {
            "isWritablePrimary": false, "secondary": true, "setName": "rs",
            "primary": format!("127.0.0.1:{b_port}"),
        }))
        .await;
        let b = Backend::new(&config(&format!(
            "mongodb://127.0.0.1:{a_port}/?replicaSet=rs"
        )))
        .unwrap();
        let info = b.server_info().await.unwrap();
        assert!(info.is_replica_set);
        assert_eq!(info.limits.max_wire_version, 21);
        assert_eq!(info.build_info.get_str("version").unwrap(), "7.0.0");
        assert_eq!(b.primary().await.unwrap(), format!("127.0.0.1:{b_port}"));
    }

    #[tokio::test]
    async fn no_primary_lists_what_each_host_said() {
        let a_port = mock::serve(rs_member(rawdoc! {
            "isWritablePrimary": false, "secondary": true, "setName": "rs",
        }))
        .await;
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let b = Backend::new(&config(&format!(
            "mongodb://127.0.0.1:{a_port},127.0.0.1:{dead}/"
        )))
        .unwrap();
        let e = b.server_info().await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "backend: no writable primary found; 127.0.0.1:{a_port}: secondary of replica set 'rs', \
                 no primary known; backend 127.0.0.1:{dead}: connection refused; is mongod running \
                 and is backend.uri right?"
            )
        );
        // Failures are not cached: once a primary appears, the next call finds it.
        assert!(b.server_info().await.is_err());
    }

    #[tokio::test]
    async fn falls_back_to_is_master_on_old_servers() {
        let hello = mock::hello(rawdoc! { "ismaster": true });
        let port = mock::serve(Arc::new(move |name, _| match name {
            "hello" => mock::MockReply::Doc(rawdoc! {
                "ok": 0, "code": 59, "codeName": "CommandNotFound", "errmsg": "no such command: 'hello'",
            }),
            "isMaster" => mock::MockReply::Doc(hello.clone()),
            "buildInfo" => mock::MockReply::Doc(rawdoc! { "version": "4.2.0", "ok": 1 }),
            _ => mock::MockReply::Close,
        }))
        .await;
        let b = Backend::new(&config(&format!("mongodb://127.0.0.1:{port}/"))).unwrap();
        let info = b.server_info().await.unwrap();
        assert!(!info.is_replica_set);
        assert_eq!(info.build_info.get_str("version").unwrap(), "4.2.0");
    }

    #[tokio::test]
    async fn hellos_carry_client_metadata_and_the_sessions_app_name() {
        let seen: Arc<std::sync::Mutex<Vec<RawDocumentBuf>>> = Arc::default();
        let log = Arc::clone(&seen);
        let hello = mock::hello(rawdoc! { "isWritablePrimary": true });
        let port = mock::serve(Arc::new(move |name, body| match name {
            "hello" => {
                log.lock().unwrap().push(body.to_owned());
                mock::MockReply::Doc(hello.clone())
            }
            "buildInfo" => mock::MockReply::Doc(rawdoc! { "version": "7.0.0", "ok": 1 }),
            // The SCRAM exchange is not what this test is about.
            _ => mock::MockReply::Doc(rawdoc! {
                "ok": 0, "code": 18, "codeName": "AuthenticationFailed", "errmsg": "no",
            }),
        }))
        .await;
        let b = Backend::new(&config(&format!("mongodb://127.0.0.1:{port}/"))).unwrap();
        b.server_info().await.unwrap();
        let _ = b.connect_for("u", "pw", Some("auth_oidc")).await;
        let seen = seen.lock().unwrap();
        let client = |i: usize| seen[i].get_document("client").unwrap().to_owned();
        let driver = rawdoc! { "name": "mongo-oidc-proxy", "version": env!("CARGO_PKG_VERSION") };
        assert_eq!(seen.len(), 2, "the probe's hello and the session's");
        assert_eq!(client(0).get_document("driver").unwrap(), &*driver);
        assert!(client(0).get("application").unwrap().is_none());
        assert_eq!(
            client(1).get_document("application").unwrap(),
            &*rawdoc! { "name": "auth_oidc" }
        );
        assert_eq!(client(1).get_document("driver").unwrap(), &*driver);
        let os = client(1).get_document("os").unwrap().to_owned();
        assert_eq!(os.get_str("architecture").unwrap(), std::env::consts::ARCH);
        assert!(!os.get_str("type").unwrap().is_empty());
        assert_eq!(
            client(1).get_str("platform").unwrap(),
            "Rust, tokio, rustls"
        );
    }

    #[test]
    fn refuses_empty_auth_source_and_zero_timeout() {
        let mut c = config("mongodb://h/");
        c.auth_source = String::new();
        let e = Backend::new(&c).unwrap_err();
        assert_eq!(e.field, "backend.auth_source");
        assert_eq!(
            e.to_string(),
            "backend.auth_source: must not be empty: name the database the backend users are \
             defined in (usually admin)"
        );
        let mut c = config("mongodb://h/");
        c.connect_timeout_ms = 0;
        assert_eq!(
            Backend::new(&c).unwrap_err().to_string(),
            "backend.connect_timeout_ms: must be at least 1"
        );
    }

    fn refusal(uri: &str) -> String {
        let e = Backend::new(&config(uri)).unwrap_err();
        assert_eq!(e.field, "backend.uri", "{uri}");
        e.to_string()
    }

    #[test]
    fn refuses_bad_uris_naming_backend_uri_once() {
        let cases = [
            ("not a uri", "backend.uri: must start with mongodb:// (for example mongodb://127.0.0.1:27017/)"),
            ("postgres://h/", "backend.uri: must start with mongodb:// (for example mongodb://127.0.0.1:27017/)"),
            ("mongodb://h:99999", "backend.uri: host 'h:99999': port '99999' is not a number from 1 to 65535"),
            ("mongodb://h:0", "backend.uri: host 'h:0': port '0' is not a number from 1 to 65535"),
            ("mongodb://h:abc", "backend.uri: host 'h:abc': port 'abc' is not a number from 1 to 65535"),
            ("mongodb://u:p@h/", "backend.uri: credentials in the URI are not supported; backend users and passwords come from [[grant]] backend_user and backend_password_env. Remove 'user:password@'"),
            ("mongodb://h/?foo=1", "backend.uri: unknown option 'foo'; supported: replicaSet, tls, ssl, tlsCAFile, tlsCertificateKeyFile, directConnection, connectTimeoutMS"),
        ];
        for (uri, want) in cases {
            let got = refusal(uri);
            assert_eq!(got, want, "{uri}");
            assert_eq!(got.matches("backend.uri").count(), 1, "{got}");
        }
    }

    /// Development certificates: ca.pem, and the client's certificate and key
    /// together (client.pem), alone (cert-only.pem) and key alone (key-only.pem).
    struct Pems {
        dir: tempfile::TempDir,
    }

    impl Pems {
        fn new() -> Pems {
            let dir = tempfile::tempdir().unwrap();
            let made = mongo_oidc_proxy_devkit::devcerts::generate(dir.path(), &[]).unwrap();
            let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
            let write =
                |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
            let (cert, key) = (read(&made.client_cert), read(&made.client_key));
            write("client.pem", format!("{cert}{key}"));
            write("cert-only.pem", cert);
            write("key-only.pem", key);
            Pems { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }
    }

    #[test]
    fn loads_the_tls_files_in_new() {
        let p = Pems::new();
        let (ca, client) = (p.path("ca.pem"), p.path("client.pem"));
        let b = Backend::new(&config(&format!(
            "mongodb://h/?tls=true&tlsCAFile={ca}&tlsCertificateKeyFile={client}"
        )))
        .unwrap();
        assert!(b.tls.is_some());
        assert!(Backend::new(&config("mongodb://h/")).unwrap().tls.is_none());
    }

    #[test]
    fn refuses_tls_files_that_do_not_load() {
        let p = Pems::new();
        let (ca, key_only, cert_only) = (
            p.path("ca.pem"),
            p.path("key-only.pem"),
            p.path("cert-only.pem"),
        );
        assert_eq!(
            refusal("mongodb://h/?tls=true&tlsCAFile=/nonexistent.pem"),
            "backend.uri: tlsCAFile '/nonexistent.pem' cannot be read: No such file or directory \
             (os error 2)"
        );
        assert_eq!(
            refusal(&format!("mongodb://h/?tls=true&tlsCAFile={key_only}")),
            format!(
                "backend.uri: tlsCAFile '{key_only}' holds no PEM certificate; it must hold the CA \
                 certificates that sign the backend's certificate, in PEM"
            )
        );
        assert_eq!(
            refusal(&format!("mongodb://h/?tlsCAFile={ca}&tlsCertificateKeyFile={cert_only}")),
            format!(
                "backend.uri: tlsCertificateKeyFile '{cert_only}' holds no PEM private key; it must \
                 hold the client certificate and its private key, in PEM"
            )
        );
        assert_eq!(
            refusal(&format!(
                "mongodb://h/?tlsCAFile={ca}&tlsCertificateKeyFile={key_only}"
            )),
            format!(
                "backend.uri: tlsCertificateKeyFile '{key_only}' holds no PEM certificate; it must \
                 hold the client certificate and its private key, in PEM"
            )
        );
        assert_eq!(
            refusal(&format!(
                "mongodb://h/?tlsCAFile={ca}&tlsCertificateKeyFile=/nonexistent.pem"
            )),
            "backend.uri: tlsCertificateKeyFile '/nonexistent.pem' cannot be read: No such file \
             or directory (os error 2)"
        );
    }
}
