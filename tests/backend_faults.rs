//! The backend killed and restarted under a live write load: clients get
//! errors their drivers retry, the proxy recovers without a restart, and no
//! acknowledged write is lost (SecantusDB runs with --sync-on-commit, so an
//! acknowledged write is on disk); and a backend that holds one grant's
//! sessions leaves the sessions of another grant as fast as before.

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

use bson::rawdoc;
use mongo_oidc_proxy_devkit::demo::secantus::BackendUser;
use support::proxy_env::{ProxyEnv, READER, WRITER};
use support::wire_client::{is_ok, WireClient};
use support::{clients_dir, run_python};

/// What pymongo may raise while the backend is down: network errors and
/// the proxy's HostUnreachable, all retryable kinds.
const RETRYABLE: &[&str] = &[
    "AutoReconnect",
    "NetworkTimeout",
    "ConnectionFailure",
    "ServerSelectionTimeoutError",
    "OperationFailure: mongo-oidc-proxy cannot reach its backend",
];

#[tokio::test]
async fn a_backend_killed_and_restarted_loses_no_acknowledged_write() {
    let mut backend = support::start_secantus(vec![
        BackendUser::new(WRITER.0, WRITER.1, &[("readWrite", "app")]),
        BackendUser::new(READER.0, READER.1, &[("read", "app")]),
    ])
    .await;
    backend
        .restart_with(&["--sync-on-commit"])
        .await
        .expect("restart with --sync-on-commit");
    let env = ProxyEnv::start_full(&backend.uri, "", "").await;
    let uri = env.plain_uri();
    let ca = env.ca().display().to_string();
    let token = env.token("alice", &["writers"], 600);
    let script = clients_dir().join("failover.py");
    let args = [
        uri.as_str(),
        "--ca",
        &ca,
        "--token",
        &token,
        "--seconds",
        "10",
    ];
    let run = run_python(&script, &args, &[]);
    let faults = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        backend.kill().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        backend
            .restart_with(&["--sync-on-commit"])
            .await
            .expect("the backend restarts");
    };
    let (out, ()) = tokio::join!(run, faults);
    let v = out.expect_ok();
    println!("backend killed and restarted: {v}");
    assert_eq!(
        v["missing"],
        serde_json::json!([]),
        "an acknowledged write was lost: {out}"
    );
    for e in v["errors"].as_array().into_iter().flatten() {
        let e = e.as_str().unwrap_or_default();
        assert!(
            RETRYABLE.iter().any(|r| e.starts_with(r)),
            "an error of a kind drivers do not retry reached the application: {e}"
        );
        assert!(
            !e.contains("127.0.0.1:"),
            "a backend address reached a client: {e}"
        );
    }
    // The proxy recovered without a restart: a new client writes at once.
    let write = run_python(
        &clients_dir().join("pymongo_client.py"),
        &["write", &env.uri(), "--token", &token],
        &[],
    )
    .await;
    write.expect_ok();
    env.stop().await;
}

/// A client of the proxy that names its application in the handshake (the
/// proxy passes the name on in its backend hello), then signs in.
async fn signed_in(env: &ProxyEnv, app: &str, groups: &[&str]) -> WireClient {
    let mut c = env.client().await;
    let hello =
        rawdoc! { "hello": 1, "client": { "application": { "name": app } }, "$db": "admin" };
    assert!(is_ok(&c.command(hello).await));
    let token = env.token(&format!("{app}-user"), groups, 600);
    assert!(is_ok(&c.sign_in(&token).await));
    c
}

/// One fresh session of the healthy grant: connect, sign in, and the first
/// relayed command (which opens its backend connection).
async fn fresh_session_find(env: &ProxyEnv, app: &str) -> Duration {
    let started = Instant::now();
    let mut c = signed_in(env, app, &["writers"]).await;
    let r = c.command(rawdoc! { "find": "slow", "$db": "app" }).await;
    assert!(is_ok(&r), "{r:?}");
    started.elapsed()
}

#[tokio::test]
async fn a_slow_backend_session_of_one_grant_does_not_slow_another_grant() {
    const OPERATOR: (&str, &str) = ("operator", "operator-password");
    let mut backend = support::start_secantus(vec![
        BackendUser::new(WRITER.0, WRITER.1, &[("readWrite", "app")]),
        BackendUser::new(READER.0, READER.1, &[("read", "app")]),
        BackendUser::new(OPERATOR.0, OPERATOR.1, &[("root", "admin")]),
    ])
    .await;
    backend
        .restart_with(&["--enable-test-commands"])
        .await
        .expect("restart with test commands");
    let env = ProxyEnv::start_full(&backend.uri, "", "").await;
    let baseline: Vec<Duration> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(fresh_session_find(&env, "healthy").await);
        }
        v
    };
    let mut open = signed_in(&env, "healthy", &["writers"]).await;
    assert!(is_ok(
        &open.command(rawdoc! { "find": "slow", "$db": "app" }).await
    ));

    // The readers' sessions: SecantusDB holds every find they send for 5 s
    // (failCommand with blockConnection, scoped to the application name of
    // the readers' pool, which names its backend user), as a long-running
    // query would.
    let operator = mongodb::Client::with_uri_str(format!(
        "mongodb://{}:{}@127.0.0.1:{}/?directConnection=true&authSource=admin",
        OPERATOR.0, OPERATOR.1, backend.port
    ))
    .await
    .expect("operator client");
    operator
        .database("admin")
        .run_command(mongodb::bson::doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": {
                "failCommands": ["find"],
                "blockConnection": true,
                "blockTimeMS": 5_000,
                "appName": format!("mongo-oidc-proxy:{}", READER.0),
            },
        })
        .await
        .expect("configureFailPoint on SecantusDB");
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let mut c = signed_in(&env, "slow-grant", &["readers"]).await;
        stuck.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = c.command(rawdoc! { "find": "slow", "$db": "app" }).await;
            (started.elapsed(), is_ok(&r))
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Meanwhile the writers' sessions, old and new, are served as before.
    let mut during = Vec::new();
    for _ in 0..3 {
        let took = fresh_session_find(&env, "healthy").await;
        during.push(took);
        assert!(
            took < Duration::from_secs(2),
            "a session of another grant waited {took:?} behind the slow one"
        );
    }
    let started = Instant::now();
    assert!(is_ok(
        &open.command(rawdoc! { "find": "slow", "$db": "app" }).await
    ));
    let open_took = started.elapsed();
    assert!(open_took < Duration::from_secs(2), "{open_took:?}");
    assert!(
        stuck.iter().all(|t| !t.is_finished()),
        "the slow grant's finds were not held by the backend"
    );
    let mut held = Vec::new();
    for t in stuck {
        let (took, ok) = t.await.expect("stuck session");
        assert!(ok, "the held find completes after the block");
        held.push(took);
    }
    println!(
        "another grant's fresh session (connect, sign in, first find): baseline {baseline:?}, \
         while 4 sessions of the slow grant were held by the backend {during:?} \
         (a find on its session opened before: {open_took:?}); \
         the held finds took {held:?}"
    );
    env.stop().await;
    backend.shutdown().await;
}
