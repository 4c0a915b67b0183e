//! Operating the proxy as an operator would, with the real binary, a config
//! file and signals: SIGHUP reloads (grants, certificates, identity
//! providers, a broken file), other signals never end the process, SIGTERM
//! drains like mongos's quiesce mode, and several proxies in one URI keep a
//! pymongo application writing while one of them drains.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bson::rawdoc;
use mongo_oidc_proxy_devkit::devidp::{DevIdp, DevIdpOptions};
use support::proxy_env::{self, dev_idp_options, shared_files};
use support::proxy_process::ProxyProcess;
use support::wire_client::{error_of, is_ok, WireClient};
use support::{clients_dir, free_port, run_python};

const RELOADED: &str = "configuration reloaded";
const REFUSED: &str = "configuration reload refused";
const WAIT: Duration = Duration::from_secs(15);

/// A config file for the binary: the default test config on a fixed port,
/// with a metrics endpoint.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    metrics: u16,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            metrics: free_port(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// Writes the default config for `issuer` plus `extra`, edited by `edit`.
    fn write(&self, issuer: &str, extra: &str, edit: impl Fn(String) -> String) {
        let text = proxy_env::config_text(issuer, "", extra)
            .replace(
                "address = \"127.0.0.1:0\"",
                &format!("address = \"127.0.0.1:{}\"", self.port),
            )
            .replace(
                "[limits]",
                &format!(
                    "[metrics]\naddress = \"127.0.0.1:{}\"\n\n[limits]",
                    self.metrics
                ),
            );
        std::fs::write(self.path(), edit(text)).expect("write config");
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().expect("addr")
    }

    async fn client(&self) -> WireClient {
        WireClient::connect(self.addr(), &shared_files().join("ca.pem")).await
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

async fn idp() -> DevIdp {
    DevIdp::start("127.0.0.1:0".parse().expect("addr"), dev_idp_options())
        .await
        .expect("development IdP")
}

async fn signed_in(s: &Setup, idp: &DevIdp, sub: &str, groups: &[&str]) -> WireClient {
    let mut c = s.client().await;
    let r = c.sign_in(&idp.token(sub, groups, 600)).await;
    assert!(is_ok(&r), "sign-in failed: {r:?}");
    c
}

async fn insert(c: &mut WireClient, coll: &str) -> bson::RawDocumentBuf {
    c.command(rawdoc! { "insert": coll, "documents": [{ "x": 1 }], "$db": "app" })
        .await
}

/// SIGHUP and waits for the reload's log line.
async fn reload(p: &ProxyProcess, expect: &str) {
    let before = p.count(expect);
    p.signal("HUP");
    assert!(
        p.wait_for_more(expect, before, WAIT).await,
        "no '{expect}' after SIGHUP:\n{}",
        p.log()
    );
}

#[tokio::test]
async fn a_reloaded_grant_applies_to_new_sign_ins_and_open_sessions_continue() {
    let idp = idp().await;
    let s = Setup::new();
    s.write(idp.issuer(), "", |t| t);
    let p = ProxyProcess::start(&s.path(), s.port).await;
    let mut open = signed_in(&s, &idp, "alice", &["writers"]).await;
    assert!(is_ok(&insert(&mut open, "reload_grant").await));

    // Writers now get the read-only backend user.
    s.write(idp.issuer(), "", |t| {
        t.replacen("backend_user = \"app_rw\"", "backend_user = \"app_ro\"", 1)
            .replacen("rw.password", "ro.password", 1)
    });
    reload(&p, RELOADED).await;
    assert!(p.log().contains("grant(s), was 2"), "{}", p.log());

    assert!(
        is_ok(&insert(&mut open, "reload_grant").await),
        "the open session keeps its backend identity"
    );
    let uri = format!(
        "mongodb://localhost:{}/?tls=true&tlsCAFile={}",
        s.port,
        shared_files().join("ca.pem").display()
    );
    let token = idp.token("alice", &["writers"], 600);
    let script = clients_dir().join("pymongo_client.py");
    let write = run_python(&script, &["write", &uri, "--token", &token], &[]).await;
    write.expect_error_code(13);
    let read = run_python(
        &script,
        &["read", &uri, "--token", &token, "--coll", "reload_grant"],
        &[],
    )
    .await;
    assert!(
        read.expect_ok()["count"].as_i64().unwrap_or(0) >= 2,
        "{read}"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("mongo_oidc_proxy_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("mongo_oidc_proxy_config_last_reload_success_timestamp_seconds"));
}

fn write_certs(dir: &Path) -> PathBuf {
    mongo_oidc_proxy_devkit::devcerts::generate(dir, &[]).expect("development certificates");
    dir.join("ca.pem")
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_connections() {
    let idp = idp().await;
    let s = Setup::new();
    let live = s.dir.path().join("live");
    let first_ca = write_certs(&live);
    let first_ca_copy = s.dir.path().join("first-ca.pem");
    std::fs::copy(&first_ca, &first_ca_copy).expect("copy CA");
    let shared = shared_files();
    let point_at_live = |t: String| {
        t.replace(
            &shared.join("server.pem").display().to_string(),
            &live.join("server.pem").display().to_string(),
        )
        .replace(
            &shared.join("server.key").display().to_string(),
            &live.join("server.key").display().to_string(),
        )
    };
    s.write(idp.issuer(), "", point_at_live);
    let p = ProxyProcess::start(&s.path(), s.port).await;
    let mut open = WireClient::try_connect(s.addr(), &first_ca_copy)
        .await
        .expect("first certificate");
    assert!(is_ok(
        &open.sign_in(&idp.token("alice", &["writers"], 600)).await
    ));

    // Rotate: a new CA and server certificate at the same paths.
    let second = s.dir.path().join("second");
    let second_ca = write_certs(&second);
    for f in ["server.pem", "server.key"] {
        std::fs::copy(second.join(f), live.join(f)).expect("rotate");
    }
    reload(&p, RELOADED).await;

    assert!(WireClient::try_connect(s.addr(), &second_ca).await.is_ok());
    let old = WireClient::try_connect(s.addr(), &first_ca_copy).await;
    assert!(
        old.as_ref().err().is_some_and(|e| e.starts_with("TLS:")),
        "a new connection must see the new certificate"
    );
    assert!(
        is_ok(&insert(&mut open, "reload_cert").await),
        "the open connection continues"
    );
}

#[tokio::test]
async fn a_reload_that_removes_an_identity_provider_ends_its_sessions() {
    let idp = idp().await;
    let other = DevIdp::start(
        "127.0.0.1:0".parse().expect("addr"),
        DevIdpOptions {
            audience: proxy_env::AUDIENCE.into(),
            ..DevIdpOptions::default()
        },
    )
    .await
    .expect("second IdP");
    let second_idp = format!(
        "[[identity_provider]]\nissuer = \"{}\"\naudience = \"{}\"\nauth_name_prefix = \"other\"\n\
         supports_human_flows = false\njwks_min_quiesce_secs = 0\n\n\
         [[grant]]\nrole = \"other/writers\"\nbackend_user = \"app_rw\"\nbackend_password_file = \"{}\"\n",
        other.issuer(),
        proxy_env::AUDIENCE,
        shared_files().join("rw.password").display()
    );
    let s = Setup::new();
    s.write(idp.issuer(), &second_idp, |t| t);
    let p = ProxyProcess::start(&s.path(), s.port).await;
    let mut kept = signed_in(&s, &idp, "alice", &["writers"]).await;
    let mut c = s.client().await;
    let token = other.token("bob", &["writers"], 600);
    assert!(is_ok(&c.sign_in(&token).await));
    assert!(is_ok(&insert(&mut c, "reload_idp").await));

    s.write(idp.issuer(), "", |t| t);
    reload(&p, RELOADED).await;
    assert!(
        p.log()
            .contains(&format!("identity provider {} removed", other.issuer())),
        "{}",
        p.log()
    );
    assert_eq!(error_of(&insert(&mut c, "reload_idp").await).0, 391);
    assert_eq!(
        error_of(&c.sign_in(&token).await),
        (18, "Authentication failed.".to_string())
    );
    assert!(
        is_ok(&insert(&mut kept, "reload_idp").await),
        "the other IdP's session continues"
    );
}

#[tokio::test]
async fn a_broken_config_is_refused_and_no_signal_but_term_ends_the_process() {
    let idp = idp().await;
    let s = Setup::new();
    s.write(idp.issuer(), "", |t| t);
    let mut p = ProxyProcess::start(&s.path(), s.port).await;
    let mut open = signed_in(&s, &idp, "alice", &["writers"]).await;

    s.write(idp.issuer(), "", |t| {
        t.replacen(
            "[backend]\nuri = ",
            "[backend]\nuri = \"not a uri\"\n# was ",
            1,
        )
    });
    reload(&p, REFUSED).await;
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.contains(REFUSED))
        .unwrap_or_default();
    assert!(
        line.contains("backend.uri"),
        "the refusal names the field: {line}"
    );
    assert!(is_ok(&insert(&mut open, "reload_broken").await));
    let mut fresh = signed_in(&s, &idp, "carol", &["writers"]).await;
    assert!(
        is_ok(&insert(&mut fresh, "reload_broken").await),
        "the old config still serves"
    );

    for sig in ["USR1", "USR2", "ALRM"] {
        let before = p.count(&format!("SIG{sig}"));
        p.signal(sig);
        assert!(
            p.wait_for_more(&format!("SIG{sig}"), before, WAIT).await,
            "{}",
            p.log()
        );
    }
    s.write(idp.issuer(), "", |t| t);
    reload(&p, RELOADED).await;
    assert!(
        p.alive(),
        "signals other than TERM and INT must not end the process"
    );
    assert!(is_ok(&insert(&mut open, "reload_broken").await));
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("mongo_oidc_proxy_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mongo_oidc_proxy_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_drains_like_mongos_quiesce_mode() {
    let idp = idp().await;
    let s = Setup::new();
    let drain_secs = 4;
    s.write(
        idp.issuer(),
        &format!("[shutdown]\ndrain_secs = {drain_secs}\n"),
        |t| t,
    );
    let mut p = ProxyProcess::start(&s.path(), s.port).await;
    let mut writer = signed_in(&s, &idp, "alice", &["writers"]).await;
    let mut other = signed_in(&s, &idp, "bob", &["writers"]).await;

    // A large insert in flight when SIGTERM arrives.
    let mut docs = bson::RawArrayBuf::new();
    for i in 0..3000 {
        docs.push(rawdoc! { "i": i, "pad": "x".repeat(100) });
    }
    let body = rawdoc! { "insert": "drain", "documents": docs, "$db": "app" };
    let id = writer.send_msg(0, &body).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let signalled = Instant::now();
    p.signal("TERM");
    assert!(p.wait_for_log("draining", WAIT).await, "{}", p.log());

    let reply = writer
        .recv()
        .await
        .expect("the in-flight insert is answered");
    assert_eq!(reply.header.response_to, id);
    let reply = mongo_oidc_proxy::wire::OpMsg::parse(&reply.bytes)
        .expect("OP_MSG")
        .body
        .to_owned();
    assert!(is_ok(&reply), "{reply:?}");
    assert_eq!(
        reply.get_i32("n").ok(),
        Some(3000),
        "acknowledged whole: {reply:?}"
    );

    let (code, msg) = error_of(&other.command(rawdoc! { "hello": 1, "$db": "admin" }).await);
    assert_eq!(
        (code, msg.as_str()),
        (91, "The server is in quiesce mode and will shut down")
    );
    let count = other
        .command(rawdoc! { "count": "drain", "$db": "app" })
        .await;
    assert!(
        is_ok(&count),
        "open connections are still served: {count:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(s.addr()).await.is_err(),
        "a new connection is refused"
    );

    let status = p
        .wait_exit(Duration::from_secs(drain_secs + 2))
        .await
        .expect("the proxy exits within drain_secs + 2 s");
    assert!(status.success(), "exit status {status:?}");
    let took = signalled.elapsed();
    println!("drain with an idle connection open took {took:?} (drain_secs = {drain_secs})");
    assert!(
        other.recv().await.is_none(),
        "connections are closed at the end"
    );
}

#[tokio::test]
async fn pymongo_keeps_writing_through_the_other_proxies_while_one_drains() {
    let idp = idp().await;
    let setups = [Setup::new(), Setup::new(), Setup::new()];
    let mut procs = Vec::new();
    for s in &setups {
        s.write(idp.issuer(), "[shutdown]\ndrain_secs = 2\n", |t| t);
        procs.push(ProxyProcess::start(&s.path(), s.port).await);
    }
    let hosts: Vec<String> = setups
        .iter()
        .map(|s| format!("localhost:{}", s.port))
        .collect();
    let uri = format!("mongodb://{}/", hosts.join(","));
    let ca = shared_files().join("ca.pem").display().to_string();
    let token = idp.token("alice", &["writers"], 600);
    let script = clients_dir().join("failover.py");
    let args = [
        uri.as_str(),
        "--ca",
        &ca,
        "--token",
        &token,
        "--seconds",
        "9",
    ];
    let run = run_python(&script, &args, &[]);
    let stop = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        procs[0].signal("TERM");
        tokio::time::sleep(Duration::from_secs(3)).await;
        procs[1].signal("TERM");
    };
    let (out, ()) = tokio::join!(run, stop);
    let v = out.expect_ok();
    println!("failover: {v}");
    assert_eq!(
        v["errors"],
        serde_json::json!([]),
        "no error may reach the application: {out}"
    );
    assert_eq!(
        v["missing"],
        serde_json::json!([]),
        "every acknowledged write is found"
    );
    assert!(v["acknowledged"].as_u64().unwrap_or(0) > 50, "{out}");
    assert_eq!(v["found"], v["acknowledged"]);
    for p in procs.iter_mut().take(2) {
        let status = p.wait_exit(WAIT).await.expect("drained proxy exits");
        assert!(status.success());
    }
}

#[tokio::test]
async fn at_the_end_of_the_drain_a_running_command_gets_11600() {
    let idp = idp().await;
    let s = Setup::new();
    s.write(idp.issuer(), "[shutdown]\ndrain_secs = 1\n", |t| t);
    let mut p = ProxyProcess::start(&s.path(), s.port).await;
    let mut writer = signed_in(&s, &idp, "alice", &["writers"]).await;
    // An insert the backend needs longer than the drain period for.
    let mut docs = bson::RawArrayBuf::new();
    for i in 0..60_000 {
        docs.push(rawdoc! { "i": i, "pad": "y".repeat(100) });
    }
    let lsid = rawdoc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![9; 16] } };
    let body = rawdoc! {
        "insert": "drain_interrupted", "documents": docs, "lsid": lsid, "txnNumber": 1_i64, "$db": "app",
    };
    let started = Instant::now();
    let id = writer.send_msg(0, &body).await;
    p.signal("TERM");
    let reply = writer.recv().await.expect("a reply before the close");
    let took = started.elapsed();
    assert_eq!(reply.header.response_to, id);
    let reply = mongo_oidc_proxy::wire::OpMsg::parse(&reply.bytes)
        .expect("OP_MSG")
        .body
        .to_owned();
    println!("insert interrupted after {took:?}: {reply:?}");
    let (code, msg) = error_of(&reply);
    assert_eq!(code, 11600, "{msg}");
    assert_eq!(
        reply.get_str("codeName").ok(),
        Some("InterruptedAtShutdown")
    );
    let labels: Vec<&str> = reply
        .get_array("errorLabels")
        .expect("a retryable write is labelled")
        .into_iter()
        .filter_map(|v| v.ok().and_then(|v| v.as_str()))
        .collect();
    assert_eq!(labels, ["RetryableWriteError"]);
    assert!(writer.recv().await.is_none(), "then the connection closes");
    let status = p.wait_exit(Duration::from_secs(5)).await.expect("exits");
    assert!(status.success());
}
