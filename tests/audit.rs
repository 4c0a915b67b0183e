//! The audit trail as an operator gets it: the real binary (or the proxy in
//! process) with the real SecantusDB and the development IdP. A scripted run
//! writes exactly the expected records and no token or password reaches the
//! audit file or the log; `commands = true` adds one record per relayed
//! command with the backend's error code; SIGUSR1 reopens the file after a
//! rotation; a reload switches files; `-` writes to standard output; `check`
//! and start-up refuse a file that cannot be written, naming `audit.path`.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bson::rawdoc;
use mongo_oidc_proxy_devkit::devidp::DevIdp;
use serde_json::{json, Value};
use support::free_port;
use support::proxy_env::{self, dev_idp_options, shared_files, ProxyEnv, READER, WRITER};
use support::proxy_process::ProxyProcess;
use support::wire_client::{error_of, is_ok, WireClient};

const WAIT: Duration = Duration::from_secs(15);

/// A config file for the binary: the default test config on a fixed port
/// with a metrics endpoint, plus `extra`.
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

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Logs at debug: every log line the proxy can write is searched for
    /// secrets, and `session ended` (debug) tells when a session is over.
    fn write(&self, issuer: &str, extra: &str) {
        let extra = format!("{extra}\n[log]\nlevel = \"debug\"\n");
        let text = proxy_env::config_text(issuer, "", &extra)
            .replace(
                "address = \"127.0.0.1:0\"",
                &format!("address = \"127.0.0.1:{}\"", self.port),
            )
            .replace(
                "[limits]",
                &format!(
                    "[shutdown]\ndrain_secs = 2\n\n[metrics]\naddress = \"127.0.0.1:{}\"\n\n[limits]",
                    self.metrics
                ),
            );
        std::fs::write(self.path(), text).expect("write config");
    }

    async fn client(&self) -> WireClient {
        let addr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        WireClient::connect(addr, &shared_files().join("ca.pem")).await
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

fn audit_extra(path: &str, commands: bool) -> String {
    format!(
        "[audit]\npath = {}\ncommands = {commands}\n",
        toml::Value::String(path.into())
    )
}

/// Every line of an audit file as JSON; panics on a line that is not.
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{text}")))
        .collect()
}

fn types(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["type"].as_str().unwrap_or("?"))
        .collect()
}

/// Waits until the file holds at least `n` records.
async fn wait_for_records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = records(path);
        if got.len() >= n || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `time` is RFC 3339 UTC with milliseconds, and records come in time order.
fn assert_times(records: &[Value]) {
    let mut last = SystemTime::UNIX_EPOCH;
    for r in records {
        let t = r["time"].as_str().unwrap_or_else(|| panic!("no time: {r}"));
        assert_eq!(t.len(), "2024-05-06T07:08:09.123Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
        let at = humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert!(at >= last, "records out of order: {records:?}");
        last = at;
    }
}

async fn signed_in(s: &Setup, idp: &DevIdp, sub: &str, groups: &[&str]) -> WireClient {
    let mut c = s.client().await;
    let r = c.sign_in(&idp.token(sub, groups, 600)).await;
    assert!(is_ok(&r), "sign-in failed: {r:?}");
    c
}

/// Sends a signal and waits for the log line it leads to.
async fn signal_and_wait(p: &ProxyProcess, sig: &str, expect: &str) {
    let before = p.count(expect);
    p.signal(sig);
    assert!(
        p.wait_for_more(expect, before, WAIT).await,
        "no '{expect}' after SIG{sig}:\n{}",
        p.log()
    );
}

/// Closes a client and waits until the proxy logged its session's end.
async fn close(p: &ProxyProcess, c: WireClient) {
    let before = p.count("session ended");
    c.close().await;
    assert!(
        p.wait_for_more("session ended", before, WAIT).await,
        "{}",
        p.log()
    );
}

/// SIGTERM, and the drain's final flush: the file is complete afterwards.
async fn stop(p: &mut ProxyProcess) {
    p.signal("TERM");
    let status = p.wait_exit(WAIT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        p.log()
    );
    // Let the readers of the closed pipes collect the last bytes.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// A token's parts that must never be written anywhere: the whole token,
/// its payload and its signature.
fn secret_parts(token: &str) -> Vec<String> {
    let mut parts = vec![token.to_string()];
    parts.extend(token.split('.').skip(1).map(str::to_string));
    parts
}

#[tokio::test]
async fn a_scripted_run_writes_exactly_the_expected_records_and_no_secret() {
    let idp = idp().await;
    let s = Setup::new();
    // A relative path, against the config's folder.
    s.write(idp.issuer(), &audit_extra("audit.log", false));
    let mut p = ProxyProcess::start(&s.path(), s.port).await;
    let expired = idp.token("alice", &["writers"], -120);
    let first = idp.token("alice", &["writers"], 600);
    let second = idp.token("alice", &["writers"], 900);

    let mut c = s.client().await;
    let refused = c
        .command(rawdoc! { "find": "audit_script", "$db": "app" })
        .await;
    assert_eq!(error_of(&refused).0, 13);
    assert_eq!(
        error_of(&c.sign_in(&expired).await),
        (18, "Authentication failed.".to_string())
    );
    assert!(is_ok(&c.sign_in(&first).await));
    let insert = rawdoc! { "insert": "audit_script", "documents": [{ "note": "doc-content-7f3a" }], "$db": "app" };
    assert!(is_ok(&c.command(insert).await));
    assert!(is_ok(&c.sign_in(&second).await));
    signal_and_wait(&p, "HUP", "configuration reloaded").await;
    close(&p, c).await;

    // Written and counted before the process stops.
    let audit = s.file("audit.log");
    assert_eq!(wait_for_records(&audit, 6).await.len(), 6);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("mongo_oidc_proxy_audit_records_total{result=\"written\"} 6")
            && metrics.contains("mongo_oidc_proxy_audit_records_total{result=\"dropped\"} 0"),
        "{metrics}"
    );
    stop(&mut p).await;
    let log = p.log();

    let got = records(&audit);
    assert_eq!(
        types(&got),
        [
            "refused",
            "sign_in_failed",
            "sign_in",
            "sign_in",
            "reload",
            "session_end"
        ],
        "{got:#?}"
    );
    assert_times(&got);
    let conn = &got[0]["connection_id"];
    let client = got[0]["client_address"].as_str().unwrap_or_default();
    assert!(
        conn.is_i64() && client.starts_with("127.0.0.1:"),
        "{got:#?}"
    );
    for r in [&got[0], &got[1], &got[2], &got[3], &got[5]] {
        assert_eq!(
            (&r["connection_id"], r["client_address"].as_str()),
            (conn, Some(client))
        );
    }
    let strip = |r: &Value| {
        let mut r = r.clone();
        for k in ["time", "connection_id", "client_address"] {
            r.as_object_mut().map(|o| o.remove(k));
        }
        r
    };
    assert_eq!(
        strip(&got[0]),
        json!({ "type": "refused", "command": "find", "database": "app", "code": 13, "reason": "refused_unauthenticated" })
    );
    assert_eq!(
        strip(&got[1]),
        json!({ "type": "sign_in_failed", "flow": "machine", "reason": "expired" })
    );
    let sign_in = |reauthentication: bool| {
        json!({
            "type": "sign_in",
            "issuer": idp.issuer(),
            "user": "test/alice",
            "roles": ["test/writers"],
            "claims": { "iss": idp.issuer(), "sub": "alice" },
            "flow": "machine",
            "grant": 0,
            "backend_user": WRITER.0,
            "reauthentication": reauthentication,
            "app_name": null,
        })
    };
    assert_eq!(strip(&got[2]), sign_in(false));
    assert_eq!(strip(&got[3]), sign_in(true));
    let reload = &got[4];
    assert!(reload.get("connection_id").is_none(), "{reload}");
    assert_eq!(
        (&reload["ok"], reload["config"].as_str()),
        (&json!(true), Some(s.path().display().to_string().as_str()))
    );
    assert!(
        reload["changes"]
            .as_str()
            .is_some_and(|c| c.contains("2 grant(s), was 2")),
        "{reload}"
    );
    let end = &got[5];
    assert_eq!(
        (&end["reason"], &end["user"], &end["commands"]),
        (&json!("client_closed"), &json!("test/alice"), &json!(5))
    );
    for k in ["bytes_from_client", "bytes_to_client"] {
        assert!(end[k].as_u64().is_some_and(|n| n > 100), "{end}");
    }
    assert!(
        end["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{end}"
    );

    // No token, token part or password anywhere; no document content either.
    let text = std::fs::read_to_string(&audit).expect("audit file");
    let mut secrets: Vec<String> = [&expired, &first, &second]
        .iter()
        .flat_map(|t| secret_parts(t))
        .collect();
    secrets.extend([WRITER.1.to_string(), READER.1.to_string()]);
    assert!(
        log.contains("signed in") && log.contains("authentication failed"),
        "{log}"
    );
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "the audit file holds {secret}:\n{text}"
        );
        assert!(
            !log.contains(secret.as_str()),
            "the log holds {secret}:\n{log}"
        );
    }
    assert!(!text.contains("doc-content-7f3a"), "{text}");
}

#[tokio::test]
async fn commands_true_records_each_relayed_command_with_the_backend_error_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit.log");
    let env = ProxyEnv::start_with(&audit_extra(&audit.display().to_string(), true)).await;
    let mut writer = env.client().await;
    assert!(is_ok(
        &writer.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    let doc = rawdoc! { "_id": "audit-1", "note": "doc-content-91c2" };
    let insert = || rawdoc! { "insert": "audit_cmds", "documents": [doc.clone()], "$db": "app" };
    assert!(is_ok(&writer.command(insert()).await));
    let find =
        rawdoc! { "find": "audit_cmds", "filter": { "note": "doc-content-91c2" }, "$db": "app" };
    assert!(is_ok(&writer.command(find).await));
    // A duplicate key: ok 1 with a write error, whose code is recorded.
    let duplicate = writer.command(insert()).await;
    assert!(is_ok(&duplicate), "{duplicate:?}");
    assert!(duplicate.get_array("writeErrors").is_ok(), "{duplicate:?}");
    // Answered locally: no command record.
    assert!(is_ok(
        &writer.command(rawdoc! { "ping": 1, "$db": "admin" }).await
    ));
    let mut reader = env.client().await;
    assert!(is_ok(
        &reader.sign_in(&env.token("bob", &["readers"], 600)).await
    ));
    let denied = reader.command(insert()).await;
    assert_eq!(error_of(&denied).0, 13, "{denied:?}");
    writer.close().await;
    reader.close().await;
    // Both sessions' ends are emitted as the proxy sees the closes.
    wait_for_records(&audit, 8).await;
    env.stop().await;
    let got = records(&audit);

    assert_times(&got);
    assert!(
        types(&got)
            .starts_with(&["sign_in", "command", "command", "command", "sign_in", "command"]),
        "{got:#?}"
    );
    assert_eq!(types(&got).len(), 8, "{got:#?}");
    assert_eq!(types(&got)[6..], ["session_end", "session_end"], "{got:#?}");
    let command = |r: &Value| {
        (
            r["command"].clone(),
            r["database"].clone(),
            r["collection"].clone(),
            r["ok"].clone(),
            r["code"].clone(),
        )
    };
    let commands: Vec<_> = got
        .iter()
        .filter(|r| r["type"] == "command")
        .map(command)
        .collect();
    assert_eq!(
        commands,
        [
            (
                json!("insert"),
                json!("app"),
                json!("audit_cmds"),
                json!(true),
                json!(null)
            ),
            (
                json!("find"),
                json!("app"),
                json!("audit_cmds"),
                json!(true),
                json!(null)
            ),
            (
                json!("insert"),
                json!("app"),
                json!("audit_cmds"),
                json!(true),
                json!(11000)
            ),
            (
                json!("insert"),
                json!("app"),
                json!("audit_cmds"),
                json!(false),
                json!(13)
            ),
        ]
    );
    for r in got.iter().filter(|r| r["type"] == "command") {
        assert!(r["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{r}");
        assert!(r["connection_id"].is_i64(), "{r}");
    }
    let text = std::fs::read_to_string(&audit).expect("audit file");
    assert!(
        !text.contains("doc-content-91c2") && !text.contains("audit-1"),
        "{text}"
    );
}

#[tokio::test]
async fn sigusr1_reopens_the_audit_file_after_a_rotation() {
    let idp = idp().await;
    let s = Setup::new();
    s.write(idp.issuer(), &audit_extra("audit.log", false));
    let mut p = ProxyProcess::start(&s.path(), s.port).await;
    let audit = s.file("audit.log");
    let rotated = s.file("audit.log.1");
    let alice = signed_in(&s, &idp, "alice", &["writers"]).await;
    assert_eq!(wait_for_records(&audit, 1).await.len(), 1);

    std::fs::rename(&audit, &rotated).expect("rotate");
    signal_and_wait(&p, "USR1", "audit file reopened").await;
    assert!(audit.exists(), "a new file at the original path");
    let bob = signed_in(&s, &idp, "bob", &["readers"]).await;
    close(&p, alice).await;
    close(&p, bob).await;
    stop(&mut p).await;

    let old = records(&rotated);
    let new = records(&audit);
    assert_eq!(types(&old), ["sign_in"], "{old:#?}");
    assert_eq!(old[0]["user"], "test/alice");
    assert_eq!(
        types(&new),
        ["sign_in", "session_end", "session_end"],
        "{new:#?}"
    );
    assert_eq!(new[0]["user"], "test/bob");
    assert_eq!(new[1]["user"], "test/alice");
}

#[tokio::test]
async fn a_reload_switches_files_and_an_unwritable_path_is_refused() {
    let idp = idp().await;
    let s = Setup::new();
    s.write(idp.issuer(), &audit_extra("a.log", false));
    let mut p = ProxyProcess::start(&s.path(), s.port).await;
    let alice = signed_in(&s, &idp, "alice", &["writers"]).await;

    // A folder that does not exist: refused, and a.log goes on.
    s.write(idp.issuer(), &audit_extra("missing/b.log", false));
    signal_and_wait(&p, "HUP", "configuration reload refused").await;
    assert!(
        p.log().contains(&format!(
            "audit.path: the folder {} does not exist",
            s.file("missing").display()
        )),
        "{}",
        p.log()
    );
    s.write(idp.issuer(), &audit_extra("b.log", false));
    signal_and_wait(&p, "HUP", "configuration reloaded").await;
    let bob = signed_in(&s, &idp, "bob", &["readers"]).await;
    close(&p, alice).await;
    close(&p, bob).await;
    stop(&mut p).await;

    let a = records(&s.file("a.log"));
    let b = records(&s.file("b.log"));
    assert_eq!(types(&a), ["sign_in", "reload"], "{a:#?}");
    assert_eq!(a[1]["ok"], false);
    assert!(
        a[1]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("audit.path: the folder")),
        "{a:#?}"
    );
    assert_eq!(
        types(&b),
        ["reload", "sign_in", "session_end", "session_end"],
        "{b:#?}"
    );
    assert_eq!(b[0]["ok"], true);
    assert!(
        b[0]["changes"]
            .as_str()
            .is_some_and(|c| c.contains("audit changed")),
        "{b:#?}"
    );
    assert_eq!(b[1]["user"], "test/bob");
}

#[tokio::test]
async fn a_dash_writes_the_records_to_standard_output() {
    let idp = idp().await;
    let s = Setup::new();
    s.write(idp.issuer(), &audit_extra("-", false));
    let mut p = ProxyProcess::start(&s.path(), s.port).await;
    let alice = signed_in(&s, &idp, "alice", &["writers"]).await;
    signal_and_wait(&p, "USR1", "nothing to reopen").await;
    close(&p, alice).await;
    stop(&mut p).await;
    let out = p.stdout();
    let got: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(types(&got), ["sign_in", "session_end"], "{out}");
    assert_eq!(got[0]["user"], "test/alice");
    assert!(!s.file("-").exists(), "no file named -");
    assert!(
        !p.log().contains("\"type\":\"sign_in\""),
        "records stay off the log"
    );
}

#[test]
fn check_and_start_up_refuse_an_audit_file_that_cannot_be_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("proxy.toml");
    let text = proxy_env::config_text(
        "http://127.0.0.1:9",
        "",
        &audit_extra("nowhere/audit.log", false),
    );
    std::fs::write(&path, text).expect("write config");
    let want = format!(
        "error: {}: audit.path: the folder {} does not exist; create it or name a file in an existing folder",
        path.display(),
        dir.path().join("nowhere").display()
    );
    for args in [vec!["check", "--config"], vec!["--config"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mongo-oidc-proxy"))
            .args(&args)
            .arg(&path)
            .env_remove("MONGO_OIDC_PROXY_CONFIG")
            .output()
            .expect("run mongo-oidc-proxy");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end(), want, "{args:?}");
        assert!(!dir.path().join("nowhere").exists());
    }
}

#[tokio::test]
async fn a_session_that_does_not_take_its_replies_is_recorded_when_the_drain_ends() {
    let idp = idp().await;
    let s = Setup::new();
    let audit = s.file("audit.log");
    s.write(
        idp.issuer(),
        &audit_extra(&audit.display().to_string(), false),
    );
    let mut p = ProxyProcess::start(&s.path(), s.port).await;
    let mut c = signed_in(&s, &idp, "alice", &["writers"]).await;
    // 50,000 hellos, their replies never read: once the socket buffers are
    // full the proxy's reply write waits for good, past the drain's end.
    let hello =
        mongo_oidc_proxy::wire::op_msg::encode(7, 0, 0, &rawdoc! { "hello": 1, "$db": "admin" });
    let hellos = hello.repeat(50_000);
    let writer = tokio::spawn(async move {
        c.send_raw(&hellos).await;
        c
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop(&mut p).await;
    let got = records(&audit);
    let types = types(&got);
    // In between: the hellos read during the drain, refused with 91.
    let tail = &types[types.len().saturating_sub(3)..];
    assert_eq!(types.first(), Some(&"sign_in"), "{} records", types.len());
    assert_eq!(
        types.last(),
        Some(&"session_end"),
        "{} records, the last {tail:?}",
        types.len()
    );
    assert_eq!(got.last().map(|r| &r["reason"]), Some(&json!("shutdown")));
    writer.abort();
}
