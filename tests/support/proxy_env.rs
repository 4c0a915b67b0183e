//! A proxy wired to real parts for one test: the shared SecantusDB backend,
//! a fresh development IdP, shared development certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mongo_oidc_proxy::config::Config;
use mongo_oidc_proxy::server::{self, Running};
use mongo_oidc_proxy_devkit::demo::secantus::BackendUser;
use mongo_oidc_proxy_devkit::devidp::{DevIdp, DevIdpOptions};

use super::wire_client::WireClient;

pub const AUDIENCE: &str = "api://proxy-tests";
pub const PREFIX: &str = "test";
/// Backend users every test environment can grant.
pub const WRITER: (&str, &str) = ("app_rw", "app-rw-password");
pub const READER: (&str, &str) = ("app_ro", "app-ro-password");

/// One backend per test binary: SecantusDB (or `$MONGOD_URI`) with the
/// [`WRITER`] and [`READER`] users. The process ends with the test binary.
pub fn backend_uri() -> &'static str {
    static URI: OnceLock<String> = OnceLock::new();
    URI.get_or_init(|| {
        std::env::var("MONGOD_URI").unwrap_or_else(|_| {
            backend_for_binary(vec![
                BackendUser::new(WRITER.0, WRITER.1, &[("readWrite", "app")]),
                BackendUser::new(READER.0, READER.1, &[("read", "app")]),
            ])
        })
    })
}

/// Starts a SecantusDB with `users` on a thread of its own, so it outlives
/// every test's runtime, and returns its URI. Its data lives in a fixed
/// folder per test binary, emptied first: the server is never dropped, so
/// it could not clean a temporary one.
pub fn backend_for_binary(users: Vec<BackendUser>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let exe = std::env::current_exe().ok();
            let name = exe
                .as_ref()
                .and_then(|p| p.file_stem())
                .map_or("tests".into(), |s| s.to_string_lossy().into_owned());
            let data_dir =
                Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("shared-backend-{name}"));
            let _ = std::fs::remove_dir_all(&data_dir);
            std::fs::create_dir_all(&data_dir).expect("backend data dir");
            let opts = mongo_oidc_proxy_devkit::demo::secantus::SecantusOptions {
                secantusd: super::secantusd(),
                users,
                data_dir: Some(data_dir),
                port: None,
            };
            let running = mongo_oidc_proxy_devkit::demo::secantus::start(opts)
                .await
                .unwrap_or_else(|e| panic!("SecantusDB did not start: {e}"));
            let _ = tx.send(running.uri.clone());
            // Hold the server for the life of the test binary.
            std::future::pending::<()>().await;
            drop(running);
        });
    });
    rx.recv()
        .expect("the backend thread died before SecantusDB was up")
}

/// Development certificates and password files shared by the binary's tests.
pub fn shared_files() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        mongo_oidc_proxy_devkit::devcerts::generate(dir.path(), &[])
            .expect("development certificates");
        std::fs::write(dir.path().join("rw.password"), WRITER.1).expect("password file");
        std::fs::write(dir.path().join("ro.password"), READER.1).expect("password file");
        dir
    })
    .path()
}

/// The development IdP the default test config trusts.
pub fn dev_idp_options() -> DevIdpOptions {
    DevIdpOptions {
        audience: AUDIENCE.into(),
        client_id: "test-client".into(),
        ..DevIdpOptions::default()
    }
}

pub struct ProxyEnv {
    pub idp: DevIdp,
    pub running: Option<Running>,
    pub config_text: String,
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The default test config: the dev IdP (prefix `test`), writers and readers
/// granted the two backend users. `extra` is appended verbatim (more IdPs or grants).
pub fn config_text(issuer: &str, dev_idp_fields: &str, extra: &str) -> String {
    config_for(issuer, backend_uri(), dev_idp_fields, "", extra)
}

/// [`config_text`] in front of `backend`, with `limits` added to `[limits]`.
pub fn config_for(
    issuer: &str,
    backend: &str,
    dev_idp_fields: &str,
    limits: &str,
    extra: &str,
) -> String {
    let files = shared_files();
    format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert = {cert}\ntls_key = {key}\n\n\
         [backend]\nuri = {backend}\n\n\
         [limits]\nauth_timeout_secs = 5\n{limits}\n\n\
         [[identity_provider]]\nissuer = {issuer}\naudience = {aud}\nauth_name_prefix = {PREFIX:?}\nclient_id = \"test-client\"\njwks_min_quiesce_secs = 0\n{dev_idp_fields}\n\n\
         [[grant]]\nrole = \"test/writers\"\nbackend_user = {rw}\nbackend_password_file = {rwf}\n\n\
         [[grant]]\nrole = \"test/readers\"\nbackend_user = {ro}\nbackend_password_file = {rof}\n\n{extra}",
        cert = toml_str(&files.join("server.pem").display().to_string()),
        key = toml_str(&files.join("server.key").display().to_string()),
        backend = toml_str(backend),
        issuer = toml_str(issuer),
        aud = toml_str(AUDIENCE),
        rw = toml_str(WRITER.0),
        rwf = toml_str(&files.join("rw.password").display().to_string()),
        ro = toml_str(READER.0),
        rof = toml_str(&files.join("ro.password").display().to_string()),
    )
}

impl ProxyEnv {
    pub async fn start() -> ProxyEnv {
        ProxyEnv::start_with("").await
    }

    /// Starts a proxy whose config is the default plus `extra` TOML.
    pub async fn start_with(extra: &str) -> ProxyEnv {
        ProxyEnv::start_custom("", extra).await
    }

    /// `dev_idp_fields` are added to the development IdP's table (e.g.
    /// `supports_human_flows = false`), `extra` after everything.
    pub async fn start_custom(dev_idp_fields: &str, extra: &str) -> ProxyEnv {
        ProxyEnv::start_full(backend_uri(), dev_idp_fields, extra).await
    }

    /// Like [`ProxyEnv::start_custom`] in front of another backend, which
    /// must have the [`WRITER`] and [`READER`] users.
    pub async fn start_full(backend: &str, dev_idp_fields: &str, extra: &str) -> ProxyEnv {
        ProxyEnv::launch(dev_idp_options(), |issuer| {
            config_for(issuer, backend, dev_idp_fields, "", extra)
        })
        .await
    }

    /// The general form: a development IdP started with `opts`, and the
    /// config text `make` writes for its issuer.
    pub async fn launch(opts: DevIdpOptions, make: impl FnOnce(&str) -> String) -> ProxyEnv {
        let idp = DevIdp::start("127.0.0.1:0".parse().expect("addr"), opts)
            .await
            .expect("development IdP");
        let config_text = make(idp.issuer());
        let config = Config::parse(&config_text)
            .unwrap_or_else(|e| panic!("test config refused: {e}\n{config_text}"));
        let running = server::start(config)
            .await
            .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
        ProxyEnv {
            idp,
            running: Some(running),
            config_text,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("proxy running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.running().local_addr
    }

    pub fn ca(&self) -> PathBuf {
        shared_files().join("ca.pem")
    }

    /// A connection string for drivers (host `localhost`, as the certificate and
    /// the drivers' OIDC ALLOWED_HOSTS defaults want).
    pub fn uri(&self) -> String {
        format!(
            "mongodb://localhost:{}/?tls=true&tlsCAFile={}&authMechanism=MONGODB-OIDC",
            self.addr().port(),
            self.ca().display()
        )
    }

    /// The bare address for drivers that take TLS options separately.
    pub fn plain_uri(&self) -> String {
        format!("mongodb://localhost:{}/", self.addr().port())
    }

    pub async fn client(&self) -> WireClient {
        WireClient::connect(self.addr(), &self.ca()).await
    }

    /// A valid token for `sub` with these groups (without the prefix).
    pub fn token(&self, sub: &str, groups: &[&str], ttl_secs: i64) -> String {
        self.idp.token(sub, groups, ttl_secs)
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}
