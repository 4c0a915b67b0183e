//! The network between the proxy and its identity providers: an IdP behind
//! a private CA (`tls_ca_file`), behind a real forward proxy (tinyproxy,
//! `HTTPS_PROXY`, `NO_PROXY`), and IdPs that hang, trickle or lie, which
//! must fail a sign-in with 18 within the fetch timeout.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use mongo_oidc_proxy::config::{Config, ListenConfig};
use mongo_oidc_proxy::server::{self, Running};
use mongo_oidc_proxy_devkit::devidp::{DevAlg, DevIdp};
use serde_json::{json, Value};
use support::proxy_env;
use support::proxy_process::ProxyProcess;
use support::wire_client::{error_of, is_ok, WireClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_rustls::TlsAcceptor;

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A development IdP's keys, to sign tokens for an issuer served elsewhere.
async fn signer() -> DevIdp {
    DevIdp::start("127.0.0.1:0".parse().unwrap(), proxy_env::dev_idp_options())
        .await
        .unwrap()
}

/// A token for `issuer` signed with the development IdP's current RSA key
/// (`kid` as the IdP publishes it, unless `kid` is given).
fn token_for(dev: &DevIdp, issuer: &str, kid: Option<&str>) -> String {
    let mut claims = dev.claims("erin", Some(&["writers"]), 300);
    claims["iss"] = json!(issuer);
    match kid {
        None => dev.sign(DevAlg::Rs256, &claims),
        Some(kid) => dev.sign_with_header(
            &json!({"alg": "RS256", "kid": kid, "typ": "JWT"}),
            &claims,
            DevAlg::Rs256,
        ),
    }
}

// ---------------------------------------------------------------------------
// An IdP over HTTPS, its certificate from a test CA
// ---------------------------------------------------------------------------

/// TLS on top of a TCP listener, for axum.
struct TlsListener {
    tcp: TcpListener,
    tls: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                continue;
            };
            // A client that does not trust the CA fails here; keep serving.
            if let Ok(stream) = self.tls.accept(tcp).await {
                return (stream, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Discovery and JWKS at `https://localhost:PORT`, with the development
/// IdP's keys; the certificate is signed by the CA in `certs`.
struct HttpsIdp {
    issuer: String,
    port: u16,
    hits: Arc<AtomicUsize>,
    ca: PathBuf,
    _certs: tempfile::TempDir,
}

async fn https_idp(dev: &DevIdp) -> HttpsIdp {
    let certs = tempfile::tempdir().unwrap();
    let paths = mongo_oidc_proxy_devkit::devcerts::generate(certs.path(), &[]).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let issuer = format!("https://localhost:{port}");
    let config = mongo_oidc_proxy::tls::server_config(&ListenConfig {
        address: tcp.local_addr().unwrap(),
        tls_cert: paths.server_cert.clone(),
        tls_key: paths.server_key.clone(),
        client_ca: None,
        client_cert_mode: None,
    })
    .unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
    let jwks = dev.jwks();
    let (h1, h2) = (hits.clone(), hits.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                h1.fetch_add(1, Ordering::SeqCst);
                let d = discovery.clone();
                async move { axum::Json(d) }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                h2.fetch_add(1, Ordering::SeqCst);
                let k: Value = jwks.clone();
                async move { axum::Json(k) }
            }),
        );
    let listener = TlsListener {
        tcp,
        tls: TlsAcceptor::from(config),
    };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    HttpsIdp {
        issuer,
        port,
        hits,
        ca: paths.ca_cert,
        _certs: certs,
    }
}

/// The default test config for `issuer`, `fields` added to its table,
/// listening on `port` (0: any).
fn config_for(issuer: &str, fields: &str, port: u16) -> String {
    proxy_env::config_text(issuer, fields, "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
}

async fn start_in_process(text: &str) -> Running {
    let config = Config::parse(text).unwrap_or_else(|e| panic!("config refused: {e}\n{text}"));
    server::start(config).await.unwrap()
}

async fn client(addr: SocketAddr) -> WireClient {
    WireClient::connect(addr, &proxy_env::shared_files().join("ca.pem")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_behind_a_private_ca_is_trusted_through_tls_ca_file_only() {
    let dev = signer().await;
    let idp = https_idp(&dev).await;
    let token = token_for(&dev, &idp.issuer, None);

    // Without the CA the keys never load, and sign-ins fail.
    let without = start_in_process(&config_for(&idp.issuer, "", 0)).await;
    let mut c = client(without.local_addr).await;
    assert_eq!(
        error_of(&c.sign_in(&token).await),
        (18, "Authentication failed.".into())
    );
    let body = without.health.verdict().body;
    assert!(
        body.contains(&format!(
            "identity provider {}: keys never loaded (last error: fetching '{}/.well-known/openid-configuration' failed: ",
            idp.issuer, idp.issuer
        )),
        "{body}"
    );
    assert!(body.contains("UnknownIssuer"), "{body}");
    assert_eq!(idp.hits.load(Ordering::SeqCst), 0, "no request got through");
    without.shutdown().await;

    // With it, discovery and JWKS load over TLS and the token signs in.
    let fields = format!("tls_ca_file = {}", toml_str(&idp.ca.display().to_string()));
    let with = start_in_process(&config_for(&idp.issuer, &fields, 0)).await;
    let mut c = client(with.local_addr).await;
    let reply = c.sign_in(&token).await;
    assert!(is_ok(&reply), "{reply:?}");
    assert_eq!(idp.hits.load(Ordering::SeqCst), 2, "discovery, then JWKS");
    with.shutdown().await;
}

#[tokio::test]
async fn check_refuses_an_unusable_tls_ca_file_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (ca, says) in [
        (
            missing.clone(),
            format!("cannot read '{}': No such file", missing.display()),
        ),
        (
            not_pem.clone(),
            format!(
                "'{}' holds no certificate: give a PEM file with the CA certificate(s) \
                 (-----BEGIN CERTIFICATE-----) that issued the IdP's server certificate",
                not_pem.display()
            ),
        ),
    ] {
        let fields = format!("tls_ca_file = {}", toml_str(&ca.display().to_string()));
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, config_for("https://idp.example.com", &fields, 0)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mongo-oidc-proxy"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "error: {}: identity_provider[0].tls_ca_file: {says}",
                path.display()
            )),
            "{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------
// Through a forward proxy: tinyproxy
// ---------------------------------------------------------------------------

/// tinyproxy on a free loopback port with its own config and log, killed on drop.
struct Tinyproxy {
    port: u16,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    async fn start(allow_port: u16) -> Tinyproxy {
        let binary = which("tinyproxy").unwrap_or_else(|| {
            panic!("tinyproxy not found on PATH; run scripts/setup-tools.sh as root (apt-get install -y tinyproxy)")
        });
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 16\nAllow 127.0.0.1\n\
                 ConnectPort {allow_port}\nLogLevel Connect\nLogFile \"{}\"\nPidFile \"{}\"\n",
                log.display(),
                dir.path().join("tinyproxy.pid").display()
            ),
        )
        .unwrap();
        let mut child = Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tinyproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tinyproxy exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Tinyproxy {
            port,
            log,
            child,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The real binary with `env`, its config in `dir`, trusting the IdP's CA.
async fn proxy_process(dir: &Path, idp: &HttpsIdp, env: &[(&str, &str)]) -> ProxyProcess {
    let port = support::free_port();
    let fields = format!("tls_ca_file = {}", toml_str(&idp.ca.display().to_string()));
    let path = dir.join(format!("proxy-{port}.toml"));
    std::fs::write(&path, config_for(&idp.issuer, &fields, port)).unwrap();
    ProxyProcess::start_with(&path, port, &["--log-format", "json"], env).await
}

async fn sign_in_to(port: u16, token: &str) -> bson::RawDocumentBuf {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    client(addr).await.sign_in(token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_fetches_go_through_https_proxy_unless_no_proxy_names_the_host() {
    let dev = signer().await;
    let idp = https_idp(&dev).await;
    let token = token_for(&dev, &idp.issuer, None);
    let tiny = Tinyproxy::start(idp.port).await;
    let dir = tempfile::tempdir().unwrap();
    let connect = format!("CONNECT localhost:{}", idp.port);

    let proxied = proxy_process(dir.path(), &idp, &[("HTTPS_PROXY", &tiny.url())]).await;
    let reply = sign_in_to(proxied.port, &token).await;
    assert!(is_ok(&reply), "{reply:?}\n{}", proxied.log());
    let log = tiny.log();
    eprintln!("tinyproxy log:\n{log}");
    // Discovery and JWKS, through one tunnel or two (kept alive or not).
    let tunnels = log.matches(&connect).count();
    assert!(tunnels >= 1, "no CONNECT to the IdP:\n{log}");
    assert_eq!(idp.hits.load(Ordering::SeqCst), 2);
    drop(proxied);

    // The lower-case spelling works too, and NO_PROXY sends it direct.
    let direct = proxy_process(
        dir.path(),
        &idp,
        &[("https_proxy", &tiny.url()), ("NO_PROXY", "localhost")],
    )
    .await;
    let reply = sign_in_to(direct.port, &token).await;
    assert!(is_ok(&reply), "{reply:?}\n{}", direct.log());
    assert_eq!(
        idp.hits.load(Ordering::SeqCst),
        4,
        "the IdP was asked again"
    );
    assert_eq!(
        tiny.log().matches(&connect).count(),
        tunnels,
        "but not through the proxy:\n{}",
        tiny.log()
    );
}

// ---------------------------------------------------------------------------
// IdPs that hang, trickle or lie
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Accepts, reads the request, never answers.
    Hang,
    /// Sends the headers, then one byte of body every 200 ms.
    Trickle,
    /// 200 OK with a body that is not JSON.
    Garbage,
    /// 200 OK with an endless chunked body, as fast as it can.
    Huge,
}

/// A loopback HTTP server that misbehaves on every request; returns its URL.
async fn misbehaving_idp(how: Misbehaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = answer(&mut sock, how).await;
            });
        }
    });
    base
}

async fn answer(sock: &mut TcpStream, how: Misbehaviour) -> std::io::Result<()> {
    match how {
        Misbehaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        Misbehaviour::Trickle => {
            sock.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n",
            )
            .await?;
            for _ in 0..4096 {
                sock.write_all(b" ").await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Misbehaviour::Garbage => {
            let body = "<html>Service Unavailable</html>";
            sock.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
        }
        Misbehaviour::Huge => {
            sock.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await?;
            let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
            // Bounded: 64 MiB at most, far past the 1 MiB cap.
            for _ in 0..4096 {
                sock.write_all(chunk.as_bytes()).await?;
            }
        }
    }
    Ok(())
}

const FETCH_TIMEOUT_SECS: u64 = 2;

/// Signs in with an unknown `kid` against a misbehaving IdP: 18, within the
/// fetch timeout (asserted with the slack of a second timeout).
async fn signs_in_within_the_bound(how: Misbehaviour) {
    let dev = signer().await;
    let issuer = misbehaving_idp(how).await;
    let fields = format!("jwks_fetch_timeout_secs = {FETCH_TIMEOUT_SECS}");
    let text = config_for(&issuer, &fields, 0);
    // Start-up loads the keys: bounded by the same timeout.
    let started = Instant::now();
    let running = start_in_process(&text).await;
    let start_up = started.elapsed();
    let bound = Duration::from_secs(2 * FETCH_TIMEOUT_SECS);
    assert!(start_up < bound, "{how:?}: start-up took {start_up:?}");
    let token = token_for(&dev, &issuer, Some("rotated-key"));
    // Several at once: with quiesce 0 each may refresh, and none may queue
    // behind another's fetch.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (addr, token) = (running.local_addr, token.clone());
        tasks.spawn(async move {
            let mut c = client(addr).await;
            let started = Instant::now();
            let reply = c.sign_in(&token).await;
            (started.elapsed(), error_of(&reply))
        });
    }
    let mut took = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (elapsed, error) = r.unwrap();
        assert_eq!(error, (18, "Authentication failed.".into()), "{how:?}");
        took.push(elapsed);
    }
    eprintln!(
        "{how:?}: start-up {start_up:?}, sign-ins failed after {took:?} (fetch timeout {FETCH_TIMEOUT_SECS} s)"
    );
    for t in &took {
        assert!(*t < bound, "{how:?}: a sign-in took {t:?}, bound {bound:?}");
    }
    let body = running.health.verdict().body;
    assert!(body.contains("keys never loaded (last error: "), "{body}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_idp_fails_sign_ins_within_the_fetch_timeout() {
    signs_in_within_the_bound(Misbehaviour::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_idp_fails_sign_ins_within_the_fetch_timeout() {
    signs_in_within_the_bound(Misbehaviour::Trickle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_answering_garbage_fails_sign_ins_at_once() {
    signs_in_within_the_bound(Misbehaviour::Garbage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_answering_an_endless_body_fails_sign_ins_at_the_size_cap() {
    signs_in_within_the_bound(Misbehaviour::Huge).await;
}
