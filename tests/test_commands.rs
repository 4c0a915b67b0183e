//! Test commands (`[testing] enable_test_commands`): mongod's
//! `configureFailPoint` / `failCommand` answered by the proxy on commands it
//! answers itself and on relayed ones, who may set it, `getParameter`'s
//! proxy-owned parameters, and the client metadata backend connections
//! carry — byte for byte over TLS against SecantusDB.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::time::{Duration, Instant};

use bson::{rawdoc, RawDocumentBuf};
use support::proxy_env::{self, shared_files, ProxyEnv, WRITER};
use support::proxy_process::ProxyProcess;
use support::wire_client::{error_of, is_ok, WireClient};

const FAILED: &str = "Failing command via 'failCommand' failpoint";

/// A backend user with SecantusDB's `root` role, for commands that need
/// cluster privileges (`getParameter: "*"`, `currentOp`).
const OPS: (&str, &str) = ("ops", "ops-password");

/// Test commands on or off, and a grant with `admin = true` for user
/// `test/root` (a token with no groups, so no earlier grant matches it) as
/// backend user `backend_user`.
fn extra(on: bool, backend_user: (&str, &str)) -> String {
    let pw = shared_files().join(format!("{}.password", backend_user.0));
    std::fs::write(&pw, backend_user.1).expect("password file");
    format!(
        "[testing]\nenable_test_commands = {on}\n\n\
         [[grant]]\nuser = \"test/root\"\nbackend_user = {user:?}\nbackend_password_file = {pw:?}\nadmin = true\n",
        user = backend_user.0,
        pw = pw.display().to_string(),
    )
}

fn testing_extra(on: bool) -> String {
    extra(on, WRITER)
}

async fn proxy(on: bool) -> ProxyEnv {
    ProxyEnv::start_with(&testing_extra(on)).await
}

/// A SecantusDB of its own with the usual users and [`OPS`].
async fn privileged_backend() -> mongo_oidc_proxy_devkit::demo::secantus::RunningSecantus {
    use mongo_oidc_proxy_devkit::demo::secantus::BackendUser;
    support::start_secantus(vec![
        BackendUser::new(WRITER.0, WRITER.1, &[("readWrite", "app")]),
        BackendUser::new(proxy_env::READER.0, proxy_env::READER.1, &[("read", "app")]),
        BackendUser::new(OPS.0, OPS.1, &[("root", "admin")]),
    ])
    .await
}

/// A signed-in connection whose first hello named `app` (if any).
async fn session(env: &ProxyEnv, sub: &str, groups: &[&str], app: Option<&str>) -> WireClient {
    let mut c = env.client().await;
    let mut hello = rawdoc! { "hello": 1, "$db": "admin" };
    if let Some(name) = app {
        hello.append(
            bson::raw::cstr!("client"),
            rawdoc! { "application": { "name": name }, "driver": { "name": "raw-wire-test", "version": "1" } },
        );
    }
    assert!(is_ok(&c.command(hello).await));
    let reply = c.sign_in(&env.token(sub, groups, 600)).await;
    assert!(reply.get_bool("done").unwrap_or(false), "{reply:?}");
    c
}

async fn admin(env: &ProxyEnv) -> WireClient {
    session(env, "root", &[], None).await
}

async fn writer(env: &ProxyEnv, app: Option<&str>) -> WireClient {
    session(env, "alice", &["writers"], app).await
}

async fn set(
    admin: &mut WireClient,
    mode: impl Into<bson::RawBson>,
    data: RawDocumentBuf,
) -> RawDocumentBuf {
    let mut cmd = rawdoc! { "configureFailPoint": "failCommand" };
    cmd.append(bson::raw::cstr!("mode"), mode.into());
    cmd.append(bson::raw::cstr!("data"), data);
    cmd.append(bson::raw::cstr!("$db"), "admin");
    let reply = admin.command(cmd).await;
    assert!(is_ok(&reply), "configureFailPoint refused: {reply:?}");
    reply
}

async fn off(admin: &mut WireClient) -> RawDocumentBuf {
    admin
        .command(rawdoc! { "configureFailPoint": "failCommand", "mode": "off", "$db": "admin" })
        .await
}

fn ping() -> RawDocumentBuf {
    rawdoc! { "ping": 1, "$db": "admin" }
}

fn find() -> RawDocumentBuf {
    rawdoc! { "find": "failpoints", "filter": {}, "$db": "app" }
}

fn failed(code: i32, code_name: &str) -> RawDocumentBuf {
    rawdoc! { "ok": 0.0, "errmsg": FAILED, "code": code, "codeName": code_name }
}

fn strings(items: &[&str]) -> bson::RawArrayBuf {
    let mut a = bson::RawArrayBuf::new();
    for i in items {
        a.push(*i);
    }
    a
}

/// Sends `body` and expects the proxy to close the connection unanswered.
async fn expect_closed(c: &mut WireClient, body: RawDocumentBuf) {
    c.send_msg(0, &body).await;
    assert!(c.recv().await.is_none(), "expected the connection closed");
}

#[tokio::test]
async fn configure_fail_point_needs_test_commands_and_an_admin_grant() {
    // Off (the default): the command does not exist, as on mongod without
    // enableTestCommands, even for an admin session.
    let env = proxy(false).await;
    let mut root = admin(&env).await;
    let cfp = || rawdoc! { "configureFailPoint": "failCommand", "mode": "alwaysOn", "data": { "failCommands": ["ping"], "errorCode": 2 }, "$db": "admin" };
    let reply = root.command(cfp()).await;
    assert_eq!(
        reply,
        rawdoc! { "ok": 0.0, "errmsg": "no such command: 'configureFailPoint'", "code": 59, "codeName": "CommandNotFound" }
    );
    assert!(is_ok(&root.command(ping()).await));
    env.stop().await;

    let env = proxy(true).await;
    let mut anonymous = env.client().await;
    assert_eq!(
        error_of(&anonymous.command(cfp()).await),
        (
            13,
            "Command configureFailPoint requires authentication".into()
        )
    );
    let mut alice = writer(&env, None).await;
    assert_eq!(
        error_of(&alice.command(cfp()).await),
        (
            13,
            "not authorized on admin to execute command configureFailPoint: the grant that \
             signed this session in does not have admin = true"
                .into()
        )
    );
    let mut root = admin(&env).await;
    let on_app = rawdoc! { "configureFailPoint": "failCommand", "mode": "off", "$db": "app" };
    assert_eq!(
        error_of(&root.command(on_app).await),
        (
            13,
            "configureFailPoint may only be run against the admin database.".into()
        )
    );
    // mongod's refusals of a bad mode or another fail point.
    assert_eq!(
        root.command(rawdoc! { "configureFailPoint": "failCommand", "$db": "admin" })
            .await,
        rawdoc! { "ok": 0.0, "errmsg": "When setting a failpoint, you must supply a 'mode'", "code": 20, "codeName": "IllegalOperation" }
    );
    assert_eq!(
        error_of(
            &root
                .command(rawdoc! { "configureFailPoint": "hangBeforeListDatabases", "mode": "off", "$db": "admin" })
                .await
        ),
        (266, "hangBeforeListDatabases not found".into())
    );
    // Nobody's refused attempt set anything.
    assert!(is_ok(&alice.command(ping()).await));
    assert_eq!(
        root.command(cfp()).await,
        rawdoc! { "count": 0i64, "ok": 1.0 }
    );
    // The fail point is process-wide: it fires on every connection.
    assert_eq!(alice.command(ping()).await, failed(2, "BadValue"));
    assert_eq!(
        env.client().await.command(ping()).await,
        failed(2, "BadValue")
    );
    // configureFailPoint itself never fails, and `off` clears it.
    assert_eq!(off(&mut root).await, rawdoc! { "count": 2i64, "ok": 1.0 });
    assert!(is_ok(&alice.command(ping()).await));
    env.stop().await;
}

#[tokio::test]
async fn error_code_on_answered_and_relayed_commands_with_times() {
    let env = proxy(true).await;
    let mut root = admin(&env).await;
    let mut alice = writer(&env, None).await;
    set(
        &mut root,
        rawdoc! { "times": 3 },
        rawdoc! { "failCommands": ["ping", "find"], "errorCode": 391 },
    )
    .await;
    let reauth = failed(391, "ReauthenticationRequired");
    // ping is answered by the proxy, find is relayed: both fail alike.
    assert_eq!(alice.command(ping()).await, reauth);
    assert_eq!(alice.command(find()).await, reauth);
    // Commands not listed neither fail nor count.
    assert!(is_ok(
        &alice
            .command(rawdoc! { "insert": "failpoints", "documents": [{ "x": 1 }], "$db": "app" })
            .await
    ));
    assert_eq!(alice.command(find()).await, reauth);
    // Three firings: the fail point turned itself off.
    assert!(is_ok(&alice.command(find()).await));
    assert!(is_ok(&alice.command(ping()).await));
    assert_eq!(off(&mut root).await, rawdoc! { "count": 3i64, "ok": 1.0 });
    // The session is not expired by an injected 391: re-authentication works.
    assert!(alice
        .sign_in(&env.token("alice", &["writers"], 600))
        .await
        .get_bool("done")
        .unwrap());
    env.stop().await;
}

#[tokio::test]
async fn skip_lets_the_first_commands_through() {
    let env = proxy(true).await;
    let mut root = admin(&env).await;
    let mut alice = writer(&env, None).await;
    set(
        &mut root,
        rawdoc! { "skip": 2 },
        rawdoc! { "failCommands": ["find"], "errorCode": 2 },
    )
    .await;
    assert!(is_ok(&alice.command(find()).await));
    assert!(is_ok(&alice.command(ping()).await));
    assert!(is_ok(&alice.command(find()).await));
    for _ in 0..3 {
        assert_eq!(alice.command(find()).await, failed(2, "BadValue"));
    }
    off(&mut root).await;
    env.stop().await;
}

#[tokio::test]
async fn error_labels_replace_the_retryable_write_label() {
    let env = proxy(true).await;
    let mut root = admin(&env).await;
    let mut alice = writer(&env, None).await;
    let retryable_insert = |n: i64| {
        rawdoc! {
            "insert": "failpoints", "documents": [{ "n": n }], "$db": "app",
            "lsid": { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] } },
            "txnNumber": n,
        }
    };
    set(
        &mut root,
        "alwaysOn",
        rawdoc! { "failCommands": ["insert"], "errorCode": 91 },
    )
    .await;
    let shutdown = failed(91, "ShutdownInProgress");
    let mut labelled = shutdown.clone();
    labelled.append(
        bson::raw::cstr!("errorLabels"),
        strings(&["RetryableWriteError"]),
    );
    // As mongod: RetryableWriteError on a retryable write only.
    assert_eq!(alice.command(retryable_insert(1)).await, labelled);
    assert_eq!(
        alice
            .command(rawdoc! { "insert": "failpoints", "documents": [{}], "$db": "app" })
            .await,
        shutdown
    );
    set(
        &mut root,
        "alwaysOn",
        rawdoc! { "failCommands": ["insert", "ping"], "errorCode": 91, "errorLabels": [] },
    )
    .await;
    assert_eq!(alice.command(retryable_insert(2)).await, shutdown);
    set(
        &mut root,
        "alwaysOn",
        rawdoc! { "failCommands": ["insert", "ping"], "errorCode": 251, "errorLabels": ["TransientTransactionError"] },
    )
    .await;
    let mut transient = failed(251, "NoSuchTransaction");
    transient.append(
        bson::raw::cstr!("errorLabels"),
        strings(&["TransientTransactionError"]),
    );
    assert_eq!(alice.command(retryable_insert(3)).await, transient);
    assert_eq!(alice.command(ping()).await, transient);
    off(&mut root).await;
    env.stop().await;
}

#[tokio::test]
async fn close_connection_on_answered_and_relayed_commands() {
    let env = proxy(true).await;
    let mut root = admin(&env).await;
    set(
        &mut root,
        rawdoc! { "times": 2 },
        rawdoc! { "failCommands": ["ping", "find"], "closeConnection": true, "errorCode": 2 },
    )
    .await;
    let mut a = writer(&env, None).await;
    expect_closed(&mut a, ping()).await;
    let mut b = writer(&env, None).await;
    expect_closed(&mut b, find()).await;
    let mut c = writer(&env, None).await;
    assert!(is_ok(&c.command(find()).await), "two closes, then off");
    // Before sign-in too: the fail point comes before every other rule.
    set(
        &mut root,
        rawdoc! { "times": 1 },
        rawdoc! { "failCommands": ["hello"], "closeConnection": true },
    )
    .await;
    let mut d = env.client().await;
    expect_closed(&mut d, rawdoc! { "isMaster": 1, "$db": "admin" }).await;
    env.stop().await;
}

#[tokio::test]
async fn block_connection_delays_then_runs_the_command() {
    let env = proxy(true).await;
    let mut root = admin(&env).await;
    let mut alice = writer(&env, None).await;
    set(
        &mut root,
        "alwaysOn",
        rawdoc! { "failCommands": ["ping", "find"], "blockConnection": true, "blockTimeMS": 300 },
    )
    .await;
    for body in [ping(), find()] {
        let started = Instant::now();
        let reply = alice.command(body).await;
        assert!(is_ok(&reply), "{reply:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
    // Blocked, then the error.
    set(
        &mut root,
        "alwaysOn",
        rawdoc! { "failCommands": ["find"], "blockConnection": true, "blockTimeMS": 200, "errorCode": 50 },
    )
    .await;
    let started = Instant::now();
    assert_eq!(alice.command(find()).await, failed(50, "MaxTimeMSExpired"));
    assert!(started.elapsed() >= Duration::from_millis(200));
    // Without blockTimeMS the command fails, as on mongod.
    set(
        &mut root,
        "alwaysOn",
        rawdoc! { "failCommands": ["ping"], "blockConnection": true },
    )
    .await;
    assert_eq!(
        alice.command(ping()).await,
        rawdoc! { "ok": 0.0, "errmsg": "must specify 'blockTimeMS' when 'blockConnection' is true", "code": 72, "codeName": "InvalidOptions" }
    );
    off(&mut root).await;
    env.stop().await;
}

#[tokio::test]
async fn write_concern_error_on_a_relayed_write() {
    let env = proxy(true).await;
    let mut root = admin(&env).await;
    let mut alice = writer(&env, None).await;
    let wce = rawdoc! { "code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out", "errInfo": { "wtimeout": true } };
    set(
        &mut root,
        rawdoc! { "times": 1 },
        rawdoc! { "failCommands": ["insert", "ping"], "writeConcernError": wce.clone() },
    )
    .await;
    // A command the proxy answers takes no write concern: nothing is added.
    assert_eq!(alice.command(ping()).await, rawdoc! { "ok": 1.0 });
    let marker = bson::oid::ObjectId::new();
    let reply = alice
        .command(rawdoc! { "insert": "failpoints", "documents": [{ "_id": marker }], "$db": "app" })
        .await;
    assert_eq!(reply.get_i32("n").ok(), Some(1), "{reply:?}");
    assert!(is_ok(&reply));
    assert_eq!(reply.get_document("writeConcernError").unwrap(), &*wce);
    // The write happened: the error is about the write concern only.
    let found = alice
        .command(rawdoc! { "find": "failpoints", "filter": { "_id": marker }, "$db": "app" })
        .await;
    let batch = found
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .expect("a cursor");
    assert_eq!(batch.into_iter().count(), 1);
    // {times: 1}: the next write is plain.
    let reply = alice
        .command(rawdoc! { "insert": "failpoints", "documents": [{}], "$db": "app" })
        .await;
    assert!(
        reply.get("writeConcernError").unwrap().is_none(),
        "{reply:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn app_name_limits_the_fail_point_to_one_application() {
    let env = proxy(true).await;
    let mut root = admin(&env).await;
    let mut app1 = writer(&env, Some("app1")).await;
    let mut app2 = writer(&env, Some("app2")).await;
    let mut unnamed = writer(&env, None).await;
    set(
        &mut root,
        "alwaysOn",
        rawdoc! { "failCommands": ["find", "saslStart", "hello"], "errorCode": 2, "appName": "app1" },
    )
    .await;
    assert_eq!(app1.command(find()).await, failed(2, "BadValue"));
    assert!(is_ok(&app2.command(find()).await));
    assert!(is_ok(&unnamed.command(find()).await));
    assert!(is_ok(&root.command(find()).await));
    // A new connection's first hello names the application it is checked against.
    let mut c = env.client().await;
    assert_eq!(
        c.command(
            rawdoc! { "hello": 1, "client": { "application": { "name": "app1" } }, "$db": "admin" }
        )
        .await,
        failed(2, "BadValue")
    );
    // The proxy's own saslStart fails the same way; speculative sign-in in
    // a hello is not a saslStart.
    let mut c = env.client().await;
    let reply = c
        .command(
            rawdoc! { "hello": 1, "client": { "application": { "name": "app2" } }, "$db": "admin" },
        )
        .await;
    assert!(is_ok(&reply));
    assert!(c
        .sign_in(&env.token("alice", &["writers"], 600))
        .await
        .get_bool("done")
        .unwrap());
    let mut c = env.client().await;
    set(
        &mut root,
        "alwaysOn",
        rawdoc! { "failCommands": ["saslStart"], "errorCode": 18, "appName": "" },
    )
    .await;
    assert_eq!(
        c.sign_in(&env.token("alice", &["writers"], 600)).await,
        failed(18, "AuthenticationFailed")
    );
    off(&mut root).await;
    assert!(c
        .sign_in(&env.token("alice", &["writers"], 600))
        .await
        .get_bool("done")
        .unwrap());
    env.stop().await;
}

#[tokio::test]
async fn get_parameter_answers_the_proxys_own_parameters() {
    let backend = privileged_backend().await;
    let env = ProxyEnv::start_full(&backend.uri, "", &extra(true, OPS)).await;
    // A backend user without the privilege for getParameter: the proxy's
    // own parameters need none.
    let mut alice = writer(&env, None).await;
    assert_eq!(
        alice
            .command(rawdoc! { "getParameter": 1, "authenticationMechanisms": 1, "$db": "admin" })
            .await,
        rawdoc! { "authenticationMechanisms": ["MONGODB-OIDC"], "ok": 1.0 }
    );
    assert_eq!(
        alice
            .command(rawdoc! { "getParameter": 1, "enableTestCommands": 1, "$db": "admin" })
            .await,
        rawdoc! { "enableTestCommands": true, "ok": 1.0 }
    );
    // Everything: the backend's list, with the proxy's values in place of its own.
    let mut root = admin(&env).await;
    let all = root
        .command(rawdoc! { "getParameter": "*", "$db": "admin" })
        .await;
    assert!(is_ok(&all), "{all:?}");
    assert_eq!(
        all.get_array("authenticationMechanisms")
            .unwrap()
            .into_iter()
            .map(|v| v.unwrap().as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
        ["MONGODB-OIDC"]
    );
    assert_eq!(all.get_bool("enableTestCommands").ok(), Some(true));
    assert!(
        all.get("featureCompatibilityVersion").unwrap().is_some(),
        "the backend's parameters are there: {all:?}"
    );
    // Other parameters are the backend's.
    let log_level = root
        .command(rawdoc! { "getParameter": 1, "logLevel": 1, "authenticationMechanisms": 1, "$db": "admin" })
        .await;
    assert!(
        log_level.get("logLevel").unwrap().is_some(),
        "{log_level:?}"
    );
    assert_eq!(
        log_level.get_array("authenticationMechanisms").unwrap(),
        &*strings(&["MONGODB-OIDC"])
    );
    // Before sign-in, as on mongod: refused.
    let mut anonymous = env.client().await;
    assert_eq!(
        error_of(
            &anonymous
                .command(
                    rawdoc! { "getParameter": 1, "authenticationMechanisms": 1, "$db": "admin" }
                )
                .await
        ),
        (13, "Command getParameter requires authentication".into())
    );
    // buildInfo says test commands are on.
    let build = alice
        .command(rawdoc! { "buildInfo": 1, "$db": "admin" })
        .await;
    assert_eq!(build.get_bool("testCommandsEnabled").ok(), Some(true));
    env.stop().await;

    let env = proxy(false).await;
    let mut alice = writer(&env, None).await;
    assert_eq!(
        alice
            .command(rawdoc! { "getParameter": 1, "enableTestCommands": 1, "$db": "admin" })
            .await,
        rawdoc! { "enableTestCommands": false, "ok": 1.0 }
    );
    let build = alice
        .command(rawdoc! { "buildInfo": 1, "$db": "admin" })
        .await;
    assert!(build.get("testCommandsEnabled").unwrap().is_none());
    env.stop().await;
}

#[tokio::test]
async fn pooled_backend_connections_name_the_proxy_and_their_backend_user() {
    let secantus = privileged_backend().await;
    let env = ProxyEnv::start_full(&secantus.uri, "", &extra(false, OPS)).await;
    let mut alice = writer(&env, Some("inventory-service")).await;
    assert!(is_ok(&alice.command(find()).await));
    // SecantusDB lists every connection's client metadata in currentOp.
    let backend =
        mongo_oidc_proxy::backend::Backend::new(&mongo_oidc_proxy::config::BackendConfig {
            uri: secantus.uri.clone(),
            auth_source: "admin".into(),
            connect_timeout_ms: 5000,
            pool: Default::default(),
        })
        .expect("backend config");
    let mut direct = backend
        .connect_as(OPS.0, OPS.1)
        .await
        .expect("a direct backend connection");
    let ops = direct
        .command(&rawdoc! { "currentOp": 1, "$all": true, "$db": "admin" })
        .await
        .expect("currentOp");
    let metadata: Vec<bson::Document> = ops
        .get_array("inprog")
        .expect("inprog")
        .into_iter()
        .filter_map(|op| op.ok()?.as_document()?.get_document("clientMetadata").ok())
        .filter_map(|m| bson::Document::try_from(m).ok())
        .collect();
    let session = metadata
        .iter()
        .find(|m| {
            m.get_document("application")
                .and_then(|a| a.get_str("name"))
                .is_ok_and(|n| n == format!("mongo-oidc-proxy:{}", proxy_env::WRITER.0))
        })
        .unwrap_or_else(|| panic!("no backend connection names its pool's user: {metadata:?}"));
    // A pooled connection serves many clients: none is named for one of them.
    assert!(
        !format!("{metadata:?}").contains("inventory-service"),
        "{metadata:?}"
    );
    assert_eq!(
        session.get_document("driver").unwrap(),
        &bson::doc! { "name": "mongo-oidc-proxy", "version": env!("CARGO_PKG_VERSION") }
    );
    assert_eq!(
        session
            .get_document("os")
            .and_then(|o| o.get_str("architecture"))
            .unwrap(),
        std::env::consts::ARCH
    );
    assert_eq!(session.get_str("platform").unwrap(), "Rust, tokio, rustls");
    env.stop().await;
}

#[tokio::test]
async fn reload_warns_while_on_and_clears_fail_points_when_turned_off() {
    let idp = mongo_oidc_proxy_devkit::devidp::DevIdp::start(
        "127.0.0.1:0".parse().expect("addr"),
        proxy_env::dev_idp_options(),
    )
    .await
    .expect("IdP");
    let dir = tempfile::tempdir().expect("temp dir");
    let port = support::free_port();
    let path = dir.path().join("proxy.toml");
    let write = |on: bool| {
        let text = proxy_env::config_text(idp.issuer(), "", &testing_extra(on)).replace(
            "address = \"127.0.0.1:0\"",
            &format!("address = \"127.0.0.1:{port}\""),
        );
        std::fs::write(&path, text).expect("write config");
    };
    const WARNING: &str = "test commands are enabled ([testing] enable_test_commands = true)";
    write(true);
    let proxy = ProxyProcess::start(&path, port).await;
    assert_eq!(proxy.count(WARNING), 1, "{}", proxy.log());
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let ca = shared_files().join("ca.pem");
    let mut root = WireClient::connect(addr, &ca).await;
    let hello = rawdoc! { "hello": 1, "client": { "application": { "name": "ops-console" } }, "$db": "admin" };
    assert!(is_ok(&root.command(hello).await));
    root.sign_in(&idp.token("root", &[], 600)).await;
    // The sign-in's log line names the client's application.
    assert!(
        proxy
            .wait_for_log("ops-console", Duration::from_secs(10))
            .await
    );
    let log = proxy.log();
    assert!(
        log.lines()
            .any(|l| l.contains("\"signed in\"") && l.contains("ops-console")),
        "{log}"
    );
    set(
        &mut root,
        "alwaysOn",
        rawdoc! { "failCommands": ["ping"], "errorCode": 2 },
    )
    .await;
    assert_eq!(root.command(ping()).await, failed(2, "BadValue"));

    let wait = Duration::from_secs(15);
    proxy.signal("HUP");
    assert!(proxy.wait_for_more("configuration reloaded", 0, wait).await);
    assert_eq!(
        proxy.count(WARNING),
        2,
        "said again at the reload:\n{}",
        proxy.log()
    );

    write(false);
    proxy.signal("HUP");
    assert!(proxy.wait_for_more("configuration reloaded", 1, wait).await);
    assert!(proxy
        .log()
        .contains("test commands turned off (fail points cleared)"));
    assert_eq!(proxy.count(WARNING), 2);
    assert!(
        is_ok(&root.command(ping()).await),
        "the fail point was cleared"
    );
    assert_eq!(
        error_of(
            &root
                .command(
                    rawdoc! { "configureFailPoint": "failCommand", "mode": "off", "$db": "admin" }
                )
                .await
        ),
        (59, "no such command: 'configureFailPoint'".into())
    );
    // On again: what was set before does not come back.
    write(true);
    proxy.signal("HUP");
    assert!(proxy.wait_for_more("configuration reloaded", 2, wait).await);
    assert!(is_ok(&root.command(ping()).await));
}

/// `[testing]` with the SCRAM set-up user `setup`, mapped to the admin grant.
fn setup_user_extra(password_file: &std::path::Path) -> String {
    testing_extra(true)
        .replace("[[grant]]\n", "[[grant]]\nname = \"setup-admin\"\n")
        .replace(
            "enable_test_commands = true\n",
            &format!(
                "enable_test_commands = true\nsetup_user = \"setup\"\nsetup_password_file = {:?}\nsetup_grant = \"setup-admin\"\n",
                password_file.display().to_string()
            ),
        )
}

fn scram_start(payload: &[u8], skip_empty_exchange: bool) -> RawDocumentBuf {
    rawdoc! {
        "saslStart": 1, "mechanism": "SCRAM-SHA-256",
        "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: payload.to_vec() },
        "autoAuthorize": 1, "options": { "skipEmptyExchange": skip_empty_exchange }, "$db": "admin",
    }
}

fn scram_continue(payload: &[u8]) -> RawDocumentBuf {
    rawdoc! {
        "saslContinue": 1, "conversationId": 1,
        "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: payload.to_vec() },
        "$db": "admin",
    }
}

fn payload_of(reply: &RawDocumentBuf) -> Vec<u8> {
    reply
        .get_binary("payload")
        .unwrap_or_else(|_| panic!("no payload: {reply:?}"))
        .bytes
        .to_vec()
}

/// Runs client-first and client-final; returns the client and the reply to
/// client-final.
async fn scram_exchange(
    c: &mut WireClient,
    password: &str,
    skip: bool,
) -> (
    mongo_oidc_proxy::backend::scram::ScramSha256,
    Vec<u8>,
    RawDocumentBuf,
) {
    use mongo_oidc_proxy::backend::scram::{SaltedPasswordCache, ScramSha256};
    let mut client = ScramSha256::new("setup", password).unwrap();
    let first = c.command(scram_start(&client.client_first(), skip)).await;
    assert_eq!(first.get_bool("done").ok(), Some(false), "{first:?}");
    let last = client
        .client_final(&payload_of(&first), &SaltedPasswordCache::new())
        .unwrap();
    let reply = c.command(scram_continue(&last)).await;
    (client, last, reply)
}

#[tokio::test]
async fn the_scram_set_up_user_signs_in_with_the_admin_grant() {
    let idp = mongo_oidc_proxy_devkit::devidp::DevIdp::start(
        "127.0.0.1:0".parse().expect("addr"),
        proxy_env::dev_idp_options(),
    )
    .await
    .expect("IdP");
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("setup.password");
    std::fs::write(&password_file, "setup-password\n").expect("password file");
    let port = support::free_port();
    let path = dir.path().join("proxy.toml");
    let text = proxy_env::config_text(idp.issuer(), "", &setup_user_extra(&password_file)).replace(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&path, text).expect("write config");
    let proxy = ProxyProcess::start(&path, port).await;
    assert_eq!(
        proxy.count("a SCRAM-SHA-256 set-up user is enabled ([testing] setup_user)"),
        1,
        "{}",
        proxy.log()
    );
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let ca = shared_files().join("ca.pem");

    // hello lists SCRAM-SHA-256 for the set-up user only.
    let mut c = WireClient::connect(addr, &ca).await;
    for (asked, mechanism) in [
        ("admin.setup", "SCRAM-SHA-256"),
        ("admin.someone", "MONGODB-OIDC"),
        ("$external.setup", "MONGODB-OIDC"),
    ] {
        let reply = c
            .command(rawdoc! { "hello": 1, "saslSupportedMechs": asked, "$db": "admin" })
            .await;
        let mechs = reply.get_array("saslSupportedMechs").unwrap();
        let listed: Vec<&str> = mechs.into_iter().filter_map(|m| m.ok()?.as_str()).collect();
        assert_eq!(listed, vec![mechanism], "{asked}");
    }

    // A wrong password: the generic 18, and the log never quotes the proof.
    let (_, last, reply) = scram_exchange(&mut c, "wrong-password", true).await;
    assert_eq!(error_of(&reply), (18, "Authentication failed.".into()));
    let proof = std::str::from_utf8(&last)
        .unwrap()
        .rsplit_once(",p=")
        .unwrap()
        .1
        .to_owned();
    assert!(
        proxy
            .wait_for_log("client proof does not match", Duration::from_secs(10))
            .await,
        "{}",
        proxy.log()
    );
    assert!(!proxy.log().contains(&proof), "{}", proxy.log());
    // An unknown user and a wrong database fail the same way.
    let unknown = c
        .command(scram_start(b"n,,n=someone,r=abcdefghijklmnop", true))
        .await;
    assert_eq!(error_of(&unknown), (18, "Authentication failed.".into()));
    let on_test = rawdoc! {
        "saslStart": 1, "mechanism": "SCRAM-SHA-256",
        "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: b"n,,n=setup,r=abcdefghijklmnop".to_vec() },
        "$db": "test",
    };
    assert_eq!(
        error_of(&c.command(on_test).await),
        (18, "Authentication failed.".into())
    );
    assert_eq!(
        error_of(&c.command(find()).await),
        (13, "Command find requires authentication".into())
    );

    // The right password, skipEmptyExchange: done at server-final, whose
    // signature proves the proxy holds the credentials.
    let (mut client, last, reply) = scram_exchange(&mut c, "setup-password", true).await;
    assert_eq!(reply.get_bool("done").ok(), Some(true), "{reply:?}");
    client.verify_server_final(&payload_of(&reply)).unwrap();
    // A replayed client-final finds no conversation.
    assert_eq!(
        c.command(scram_continue(&last)).await,
        rawdoc! { "ok": 0.0, "errmsg": "No SASL session state found", "code": 17, "codeName": "ProtocolError" }
    );
    // Signed in with the admin grant: fail points, and relayed commands as
    // its backend user.
    assert_eq!(
        c.command(rawdoc! { "configureFailPoint": "failCommand", "mode": "off", "$db": "admin" })
            .await,
        rawdoc! { "count": 0i64, "ok": 1.0 }
    );
    assert!(is_ok(&c.command(find()).await));
    let status = c
        .command(rawdoc! { "connectionStatus": 1, "$db": "admin" })
        .await;
    assert_eq!(
        status,
        rawdoc! { "authInfo": { "authenticatedUsers": [{ "user": "setup", "db": "admin" }], "authenticatedUserRoles": [] }, "ok": 1.0 }
    );
    assert!(
        proxy.log().lines().any(|l| l.contains("\"signed in\"")
            && l.contains("scram_setup_user")
            && l.contains(WRITER.0)),
        "{}",
        proxy.log()
    );

    // Without skipEmptyExchange: server-final with done false, then an
    // empty message ends the conversation.
    let mut c = WireClient::connect(addr, &ca).await;
    let (mut client, _, reply) = scram_exchange(&mut c, "setup-password", false).await;
    assert_eq!(reply.get_bool("done").ok(), Some(false), "{reply:?}");
    client.verify_server_final(&payload_of(&reply)).unwrap();
    let done = c.command(scram_continue(b"")).await;
    assert_eq!(done.get_bool("done").ok(), Some(true), "{done:?}");
    assert!(is_ok(&c.command(find()).await));
}

#[tokio::test]
async fn scram_is_refused_as_before_without_a_set_up_user() {
    let start = || scram_start(b"n,,n=setup,r=abcdefghijklmnop", true);
    let not_enabled = (
        334,
        "Received authentication for mechanism SCRAM-SHA-256 which is not enabled".to_owned(),
    );
    for on in [false, true] {
        let env = proxy(on).await;
        let mut c = env.client().await;
        assert_eq!(error_of(&c.command(start()).await), not_enabled, "{on}");
        let reply = c
            .command(rawdoc! { "hello": 1, "saslSupportedMechs": "admin.setup", "$db": "admin" })
            .await;
        assert_eq!(
            reply
                .get_array("saslSupportedMechs")
                .unwrap()
                .get_str(0)
                .ok(),
            Some("MONGODB-OIDC")
        );
        env.stop().await;
    }
}
