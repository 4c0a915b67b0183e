//! Helpers shared by the integration tests (`mod support;` in each test file).
//!
//! They run REAL third-party software installed by `scripts/setup-tools.sh`
//! into `.tools/` (or `$MOP_TOOLS`): SecantusDB as the backend (started with
//! `mongo_oidc_proxy_devkit::demo::secantus`), pymongo and the Node `mongodb` driver
//! through the scripts in `tests/clients/`, mongosh, and MongoDB's
//! `@mongodb-js/oidc-mock-provider` as the identity provider. Missing tools
//! make the tests FAIL with a hint, never skip.
//!
//! Everything binds 127.0.0.1 on ports picked at run time; every child
//! process is killed on drop or when its timeout passes.
//!
//! The runners are `async` so a test can run the proxy in the same tokio
//! runtime while a client talks to it.
//!
//! mongosh against the proxy needs no script; the human (device-auth) flow
//! completes on its own because the mock IdP grants device codes on the first
//! poll:
//!
//! ```text
//! mongosh "mongodb://localhost:PORT/?authMechanism=MONGODB-OIDC&tls=true&tlsCAFile=CA" \
//!   --oidcFlows=device-auth --quiet --eval 'JSON.stringify(db.runCommand({connectionStatus:1}))'
//! ```
//!
//! i.e. `run_mongosh(&[&uri, "--oidcFlows=device-auth", "--quiet", "--eval", JS], &[]).await`;
//! the proxy's IdP entry must then name the mock IdP's issuer, and the
//! proxy's `client_id` is what mongosh sends to the IdP.

#![allow(dead_code)]

pub mod proxy_env;
pub mod proxy_process;
pub mod wire_client;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// How long one client run (python, node, mongosh) may take before it is killed.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

const SETUP_HINT: &str = "run scripts/setup-tools.sh (or the README's test command) first";

/// The tools directory: `$MOP_TOOLS`, else `<repo>/.tools`. Panics when it is
/// missing or incomplete.
pub fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("MOP_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools"));
    for needed in [
        "venv/bin/python",
        "venv/bin/secantusd-py",
        "npm/node_modules/.bin/mongosh",
        "npm/node_modules/mongodb/package.json",
        "npm/node_modules/@mongodb-js/oidc-mock-provider/package.json",
    ] {
        assert!(
            dir.join(needed).exists(),
            "test tools missing: {} does not exist; {SETUP_HINT}",
            dir.join(needed).display()
        );
    }
    dir
}

/// The `secantusd-py` the tests use.
pub fn secantusd() -> PathBuf {
    let tools = tools_dir();
    mongo_oidc_proxy_devkit::demo::secantus::find_secantusd(Some(&tools))
        .unwrap_or_else(|| panic!("secantusd-py not found; {SETUP_HINT}"))
}

/// The directory of the client scripts (`tests/clients`).
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients")
}

/// A free port on 127.0.0.1 (bound and released; a tiny race is possible).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0")
}

// ---------------------------------------------------------------------------
// Running client programs
// ---------------------------------------------------------------------------

/// What a client program did. `Display` shows everything, for panic messages.
#[derive(Debug)]
pub struct RunOutput {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for RunOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n  exit: {}\n  --- stdout ---\n{}\n  --- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The last stdout line that parses as JSON (the client scripts print one).
    pub fn json(&self) -> Value {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .unwrap_or_else(|| panic!("no JSON line in the output of {self}"))
    }

    /// Asserts exit code 0 and returns the JSON result line.
    pub fn expect_ok(&self) -> Value {
        assert!(self.success(), "expected success from {self}");
        let v = self.json();
        assert!(v.get("error").is_none(), "client reported an error: {self}");
        v
    }

    /// Asserts a non-zero exit with an `{"error", "code"}` line and returns it.
    pub fn expect_error(&self) -> Value {
        assert!(!self.success(), "expected a failure from {self}");
        let v = self.json();
        assert!(v.get("error").is_some(), "no error object in {self}");
        v
    }

    /// Asserts a failure with the given MongoDB error code.
    pub fn expect_error_code(&self, code: i64) -> Value {
        let v = self.expect_error();
        assert_eq!(
            v.get("code").and_then(Value::as_i64),
            Some(code),
            "expected error code {code} from {self}"
        );
        v
    }
}

type Buf = Arc<Mutex<Vec<u8>>>;

fn drain<R: tokio::io::AsyncRead + Unpin + Send + 'static>(mut r: R) -> Buf {
    let buf: Buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    buf
}

fn take(buf: &Buf) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// Runs `cmd` to completion with a timeout; kills it and panics (with all its
/// output) when the timeout passes.
pub async fn run_command(mut cmd: Command, what: String, timeout: Duration) -> RunOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child: Child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}; {SETUP_HINT}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => s.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!(
                "{what} did not finish within {timeout:?} and was killed\n  --- stdout ---\n{}\n  --- stderr ---\n{}",
                take(&out),
                take(&err)
            );
        }
    };
    // Let the readers collect the last bytes after the pipes closed.
    for _ in 0..50 {
        if Arc::strong_count(&out) == 1 && Arc::strong_count(&err) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    RunOutput {
        what,
        status,
        stdout: take(&out),
        stderr: take(&err),
    }
}

fn describe(program: &Path, args: &[&str]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs a Python script with the venv's python (pymongo available).
pub async fn run_python(script: &Path, args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let python = tools_dir().join("venv/bin/python");
    let mut cmd = Command::new(&python);
    cmd.arg(script).args(args);
    cmd.env("PYTHONUNBUFFERED", "1");
    cmd.envs(env.iter().copied());
    let what = describe(&python, &[&[script.to_str().unwrap_or("?")], args].concat());
    run_command(cmd, what, RUN_TIMEOUT).await
}

/// Runs a Node script; `require('mongodb')` resolves from `.tools/npm`
/// (NODE_PATH), and `$MOP_TOOLS` is set for the scripts.
pub async fn run_node(script: &Path, args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let tools = tools_dir();
    let mut cmd = Command::new("node");
    cmd.arg(script).args(args);
    cmd.env("NODE_PATH", tools.join("npm/node_modules"))
        .env("MOP_TOOLS", &tools);
    cmd.envs(env.iter().copied());
    let what = describe(
        Path::new("node"),
        &[&[script.to_str().unwrap_or("?")], args].concat(),
    );
    run_command(cmd, what, RUN_TIMEOUT).await
}

/// Runs mongosh from `.tools/npm` with a throw-away `HOME` and telemetry off.
pub async fn run_mongosh(args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let mongosh = tools_dir().join("npm/node_modules/.bin/mongosh");
    let home = tempfile::tempdir().expect("temp HOME for mongosh");
    let mut cmd = Command::new(&mongosh);
    cmd.args(args)
        .env("HOME", home.path())
        .env("MONGOSH_FORCE_DISABLE_TELEMETRY_FOR_TESTING", "1")
        .env("MONGOSH_NO_TELEMETRY", "1");
    cmd.envs(env.iter().copied());
    let what = describe(&mongosh, args);
    let out = run_command(cmd, what, RUN_TIMEOUT).await;
    drop(home);
    out
}

// ---------------------------------------------------------------------------
// Mock identity provider
// ---------------------------------------------------------------------------

/// MongoDB's `@mongodb-js/oidc-mock-provider` on 127.0.0.1, killed on drop.
/// It makes a new RSA key (and `kid`) at every start, so fetch its JWKS at run
/// time. It grants device codes on the first poll, so [`MockIdp::token`] gets
/// an access token with no browser. Refresh-token grants are not implemented
/// by the mock (HTTP 500).
pub struct MockIdp {
    pub port: u16,
    child: Child,
    log: Buf,
}

impl MockIdp {
    /// Starts the mock with `-P payload` (merged last into the access-token
    /// claims: `sub`, `aud`, `groups`, even `iss`/`exp` can be overridden) and
    /// `-e expiry_secs` (negative = already-expired tokens).
    pub async fn start(payload: Value, expiry_secs: i64) -> MockIdp {
        MockIdp::start_with_args(payload, expiry_secs, &[]).await
    }

    /// Like [`MockIdp::start`], with extra CLI flags such as
    /// `--skip-refresh-token` or `--no-log-requests` (which logs each request).
    pub async fn start_with_args(payload: Value, expiry_secs: i64, extra: &[&str]) -> MockIdp {
        let tools = tools_dir();
        let pkg = tools.join("npm/node_modules/@mongodb-js/oidc-mock-provider");
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(pkg.join("package.json")).expect("read mock package.json"),
        )
        .expect("parse mock package.json");
        let bin = manifest["bin"]["oidc-mock-provider"]
            .as_str()
            .expect("mock package.json has bin.oidc-mock-provider");
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let mut cmd = Command::new("node");
            cmd.arg(pkg.join(bin))
                .arg("--host")
                .arg("127.0.0.1")
                .arg(format!("--port={port}"))
                .arg(format!("--payload={payload}"))
                .arg(format!("--expiry={expiry_secs}"))
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start node for the mock IdP: {e}"));
            let log = drain(child.stdout.take().expect("stdout"));
            let err = drain(child.stderr.take().expect("stderr"));
            let mut idp = MockIdp {
                port,
                child,
                log: log.clone(),
            };
            match idp.wait_ready(Duration::from_secs(20)).await {
                Ok(()) => return idp,
                Err(e) => {
                    last_err = format!(
                        "{e}\n  --- stdout ---\n{}\n  --- stderr ---\n{}",
                        take(&log),
                        take(&err)
                    );
                    if !last_err.contains("EADDRINUSE") {
                        break;
                    }
                }
            }
        }
        panic!("the mock IdP did not start: {last_err}");
    }

    /// Ready = the CLI printed its issuer line (the mock listens before its
    /// RSA key exists and answers `/jwks` with 500 until then) and discovery
    /// answers.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer());
        let http = http_client();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the mock IdP exited with {status}"));
            }
            if take(&self.log).contains("server issuer:") {
                if let Ok(r) = http.get(&url).send().await {
                    if r.status().is_success() {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{url} did not answer within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash), the tokens' `iss`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the mock printed on stdout (request log with `--no-log-requests`).
    pub fn log(&self) -> String {
        take(&self.log)
    }

    /// GETs a JSON document from the mock (`/.well-known/openid-configuration`, `/jwks`).
    pub async fn get_json(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.issuer());
        let r = http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(r.status().is_success(), "GET {url}: {}", r.status());
        r.json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
    }

    /// Gets an access token with the device flow (no browser): `POST /device`,
    /// then one `POST /token`, which the mock grants at once.
    pub async fn token(&self, client_id: &str) -> String {
        self.token_response(client_id).await["access_token"]
            .as_str()
            .expect("token response has access_token")
            .to_string()
    }

    /// The whole `/token` response: `{access_token, id_token, refresh_token, token_type, expires_in}`.
    pub async fn token_response(&self, client_id: &str) -> Value {
        let http = http_client();
        let device_url = format!("{}/device", self.issuer());
        let r = http
            .post(&device_url)
            .form(&[("client_id", client_id), ("scope", "openid offline_access")])
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {device_url}: {e}"));
        assert!(r.status().is_success(), "POST {device_url}: {}", r.status());
        let device: Value = r.json().await.expect("device response is JSON");
        let code = device["device_code"]
            .as_str()
            .unwrap_or_else(|| panic!("no device_code in {device}"));
        let token_url = format!("{}/token", self.issuer());
        let r = http
            .post(&token_url)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", code),
                ("client_id", client_id),
            ])
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {token_url}: {e}"));
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {token_url}: {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("token response {body}: {e}"))
    }
}

impl Drop for MockIdp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// Decodes a JWT's claims without verifying it (for assertions).
/// The `field` of every object in a JSON list (user or role names from
/// `connectionStatus`).
pub fn names(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v[field].as_str().unwrap_or_default().to_string())
        .collect()
}

pub fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    let part = jwt
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {jwt}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("JWT payload is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT payload is not JSON: {e}"))
}

// ---------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------

/// Starts SecantusDB (temporary data dir, free port) with these SCRAM users
/// in `admin` and `--auth` on; panics with the server's log on failure.
pub async fn start_secantus(
    users: Vec<mongo_oidc_proxy_devkit::demo::secantus::BackendUser>,
) -> mongo_oidc_proxy_devkit::demo::secantus::RunningSecantus {
    let opts = mongo_oidc_proxy_devkit::demo::secantus::SecantusOptions {
        secantusd: secantusd(),
        users,
        data_dir: None,
        port: None,
    };
    mongo_oidc_proxy_devkit::demo::secantus::start(opts)
        .await
        .unwrap_or_else(|e| panic!("SecantusDB did not start: {e}"))
}
