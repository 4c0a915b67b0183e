//! The backend client against a real SecantusDB server (a MongoDB-wire
//! compatible database).
//!
//! Finds `secantusd-py` as the other tests do ($MOP_SECANTUSD, then the
//! venv of scripts/setup-tools.sh); pymongo must be in the same venv. Fails,
//! never skips, when it is missing: a skipped backend test proves nothing.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bson::{rawdoc, RawDocument};
use mongo_oidc_proxy::backend::{Backend, BackendError};
use mongo_oidc_proxy::config::BackendConfig;
use mongo_oidc_proxy::wire::{op_msg, OpMsg};

const USERS: &str = r#"
import sys, pymongo
c = pymongo.MongoClient(sys.argv[1], directConnection=True, serverSelectionTimeoutMS=10000)
c.admin.command("createUser", "dba", pwd="dba-pw", roles=["root"], mechanisms=["SCRAM-SHA-256"])
c.app.command("createUser", "writer", pwd="writer-pw", roles=[{"role": "readWrite", "db": "app"}], mechanisms=["SCRAM-SHA-256"])
"#;

fn secantusd() -> PathBuf {
    let tools = std::env::var_os("MOP_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools"));
    mongo_oidc_proxy_devkit::demo::secantus::find_secantusd(Some(&tools)).unwrap_or_else(|| {
        panic!("secantusd-py not found ($MOP_SECANTUSD, {}/venv/bin, PATH): run scripts/setup-tools.sh first", tools.display())
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// A running secantusd, killed when dropped.
struct Secantus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Secantus {
    fn start(bin: &Path, data: &Path, port: u16, extra: &[&str], log: PathBuf) -> Secantus {
        let log_file = std::fs::File::create(&log).expect("create log file");
        let child = Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--storage-path",
            ])
            .arg(data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let s = Secantus { child, port, log };
        // Wait for the log line rather than probing the port: an idle probe
        // socket blocks Secantus's TLS accept thread (SecantusDB handshakes TLS on its accept thread).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if s.log_text().contains("listening on") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "secantusd did not start within 20 s; log:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// SIGTERM and wait, so WiredTiger flushes the users to disk.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Secantus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Secantus without auth, creates the users, restarts it with `--auth` and `extra`.
fn provisioned(dir: &Path, extra: &[&str]) -> Secantus {
    let bin = secantusd();
    let python = bin.with_file_name("python");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let port = free_port();
    let s = Secantus::start(&bin, &data, port, &[], dir.join("setup.log"));
    let out = Command::new(&python)
        .args(["-c", USERS, &format!("mongodb://127.0.0.1:{port}/")])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "creating users failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop();
    let port = free_port();
    let mut args = vec!["--auth"];
    args.extend_from_slice(extra);
    Secantus::start(&bin, &data, port, &args, dir.join("auth.log"))
}

fn config(uri: String, auth_source: &str) -> BackendConfig {
    BackendConfig {
        uri,
        auth_source: auth_source.into(),
        connect_timeout_ms: 5_000,
        pool: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_scram_server_info_and_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = provisioned(dir.path(), &[]);
    let port = s.port;

    let admin = Backend::new(&config(
        format!("mongodb://127.0.0.1:{port}/?replicaSet=secantus"),
        "admin",
    ))
    .expect("valid uri");

    let info = admin.server_info().await.expect("server_info");
    assert!(info.limits.max_wire_version >= 6, "{info:?}");
    assert_eq!(info.limits.max_message_size_bytes, 48_000_000);
    assert_eq!(info.limits.max_bson_object_size, 16_777_216);
    assert_eq!(info.limits.max_write_batch_size, 100_000);
    assert_eq!(info.limits.logical_session_timeout_minutes, Some(30));
    assert!(info.is_replica_set);
    assert!(
        info.build_info.get_str("version").is_ok(),
        "{:?}",
        info.build_info
    );
    // Cached: the same Arc comes back.
    let again = admin.server_info().await.expect("server_info again");
    assert!(std::sync::Arc::ptr_eq(&info, &again));

    // Authenticated as root: a privileged command works and reports the user.
    let mut conn = admin
        .connect_as("dba", "dba-pw")
        .await
        .expect("connect_as dba");
    let status = conn
        .command(&rawdoc! { "connectionStatus": 1, "$db": "admin" })
        .await
        .expect("connectionStatus");
    let users = status
        .get_document("authInfo")
        .and_then(|a| a.get_array("authenticatedUsers"))
        .expect("authInfo.authenticatedUsers");
    let first = users
        .into_iter()
        .next()
        .and_then(|u| u.ok())
        .and_then(|u| u.as_document().map(RawDocument::to_owned))
        .expect("one user");
    assert_eq!(first.get_str("user").ok(), Some("dba"));
    conn.command(&rawdoc! { "listDatabases": 1, "$db": "admin" })
        .await
        .expect("listDatabases as root");

    // The frame-level API a relay uses: send a raw OP_MSG, read the reply frame.
    let id = conn.next_request_id();
    conn.send(&op_msg::encode(
        id,
        0,
        0,
        &rawdoc! { "ping": 1, "$db": "admin" },
    ))
    .await
    .expect("send");
    let frame = conn.recv().await.expect("recv");
    assert_eq!(frame.header.response_to, id);
    let reply = OpMsg::parse(&frame.bytes).expect("OP_MSG reply");
    assert_eq!(reply.body.get_f64("ok").ok(), Some(1.0));

    // A second connection for the same user reuses the cached PBKDF2 output.
    admin
        .connect_as("dba", "dba-pw")
        .await
        .expect("second connect_as");

    // Wrong password: the server's code 18 surfaces, the password does not.
    let err = admin
        .connect_as("dba", "not-the-password")
        .await
        .expect_err("wrong password must fail");
    assert_eq!(err.code(), Some(18), "{err}");
    assert!(matches!(err, BackendError::AuthFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains("not-the-password"), "{text}");
    assert!(
        text.contains(&format!("backend 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("'dba' on 'admin'"), "{text}");

    // A user defined on another database authenticates against it.
    let app = Backend::new(&config(format!("mongodb://127.0.0.1:{port}/"), "app")).expect("uri");
    let mut w = app.connect_as("writer", "writer-pw").await.expect("writer");
    w.command(&rawdoc! { "insert": "c", "documents": [{ "a": 1 }], "$db": "app" })
        .await
        .expect("insert as writer");
    let denied = w
        .command(&rawdoc! { "insert": "c", "documents": [{ "a": 1 }], "$db": "other" })
        .await
        .expect_err("writer may not write elsewhere");
    assert_eq!(denied.code(), Some(13), "{denied}");
    // Same user against the wrong auth source fails like a wrong password.
    let err = admin
        .connect_as("writer", "writer-pw")
        .await
        .expect_err("wrong db");
    assert_eq!(err.code(), Some(18), "{err}");

    // A wrong replica set name is reported per host.
    let wrong = Backend::new(&config(
        format!("mongodb://127.0.0.1:{port}/?replicaSet=other"),
        "admin",
    ))
    .expect("uri");
    let err = wrong
        .server_info()
        .await
        .expect_err("wrong set")
        .to_string();
    assert_eq!(
        err,
        format!(
            "backend: no writable primary found; 127.0.0.1:{port}: belongs to replica set \
             'secantus', but backend.uri says replicaSet=other"
        )
    );

    // An unreachable first seed is skipped, and the error would list it.
    let dead = free_port();
    let seeds = Backend::new(&config(
        format!("mongodb://127.0.0.1:{dead},127.0.0.1:{port}/"),
        "admin",
    ))
    .expect("uri");
    seeds
        .connect_as("dba", "dba-pw")
        .await
        .expect("second seed");

    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key"))
        .expect("ca cert");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let ca_pem = dir.path().join("ca.pem");
    let crt = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&ca_pem, ca.pem()).expect("write ca");
    std::fs::write(&crt, server.pem()).expect("write crt");
    std::fs::write(&key, server_key.serialize_pem()).expect("write key");

    let (crt_s, key_s) = (crt.display().to_string(), key.display().to_string());
    let s = provisioned(
        dir.path(),
        &["--tls-cert-file", &crt_s, "--tls-key-file", &key_s],
    );
    let port = s.port;

    let uri = format!(
        "mongodb://127.0.0.1:{port}/?tls=true&tlsCAFile={}",
        ca_pem.display()
    );
    let b = Backend::new(&config(uri, "admin")).expect("uri");
    let info = b.server_info().await.expect("server_info over TLS");
    assert_eq!(info.limits.max_message_size_bytes, 48_000_000);
    let mut conn = b
        .connect_as("dba", "dba-pw")
        .await
        .expect("connect_as over TLS");
    assert!(conn.is_tls());
    conn.command(&rawdoc! { "ping": 1, "$db": "admin" })
        .await
        .expect("ping over TLS");

    // The wrong CA (the system store, here) must fail the handshake, naming the host.
    let b = Backend::new(&config(
        format!("mongodb://127.0.0.1:{port}/?tls=true"),
        "admin",
    ))
    .expect("uri");
    let err = b
        .server_info()
        .await
        .expect_err("untrusted cert")
        .to_string();
    assert!(
        err.contains(&format!("backend 127.0.0.1:{port}: TLS handshake failed")),
        "{err}"
    );
    drop(s);
}
