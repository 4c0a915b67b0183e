//! The backend killed and restarted under a live write load: clients get
//! errors their drivers retry, the proxy recovers without a restart, and no
//! acknowledged write is lost (SecantusDB runs with --sync-on-commit, so an
//! acknowledged write is on disk).

mod support;

use std::time::Duration;

use mongo_oidc_proxy_devkit::demo::secantus::BackendUser;
use support::proxy_env::{ProxyEnv, READER, WRITER};
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
