//! Proves the test environment works: SecantusDB with SCRAM users started by
//! `demo::secantus`, the venv's pymongo and the Node driver against it, and the
//! mock IdP's discovery document and JWKS.

mod support;

use mongo_oidc_proxy_devkit::demo::secantus::BackendUser;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secantus_with_scram_users_and_real_clients() {
    let backend = start_secantus(vec![
        BackendUser::new("writer", "writer-pw", &[("readWrite", "app")]),
        BackendUser::new("reader", "reader-pw", &[("read", "app")]),
    ])
    .await;
    assert!(backend.uri.starts_with("mongodb://127.0.0.1:"));
    let script = clients_dir().join("pymongo_client.py");
    let uri = backend.uri.as_str();

    // The writer runs the whole CRUD scenario, with several getMore batches.
    let crud = run_python(&script, &["crud", uri, "--scram", "writer:writer-pw"], &[])
        .await
        .expect_ok();
    assert_eq!(crud["inserted"], 25, "{crud}");
    assert_eq!(crud["found"], 25, "{crud}");
    assert!(crud["getmores"].as_i64().unwrap_or(0) >= 5, "{crud}");
    assert_eq!(crud["groups"], json!({"0": 9, "1": 8, "2": 8}), "{crud}");
    assert_eq!(crud["users"], json!([{"user": "writer", "db": "admin"}]));
    assert_eq!(crud["roles"], json!([{"role": "readWrite", "db": "app"}]));

    // RBAC holds: the reader may read but not write (13 Unauthorized).
    run_python(&script, &["write", uri, "--scram", "reader:reader-pw"], &[])
        .await
        .expect_error_code(13);
    run_python(
        &script,
        &["read", uri, "--scram", "reader:reader-pw", "--coll", "x"],
        &[],
    )
    .await
    .expect_ok();

    // A wrong password fails with 18 AuthenticationFailed.
    run_python(&script, &["ping", uri, "--scram", "writer:wrong"], &[])
        .await
        .expect_error_code(18);

    // The Node driver works too.
    let node = run_node(
        &clients_dir().join("node_client.js"),
        &["crud", uri, "--scram", "writer:writer-pw"],
        &[],
    )
    .await
    .expect_ok();
    assert_eq!(node["found"], 3, "{node}");

    // And mongosh (the proxy tests use it with --oidcFlows=device-auth).
    let sh_uri = format!(
        "mongodb://writer:writer-pw@127.0.0.1:{}/?authSource=admin",
        backend.port
    );
    let sh = run_mongosh(
        &[
            &sh_uri,
            "--quiet",
            "--eval",
            "JSON.stringify(db.runCommand({connectionStatus:1}).authInfo)",
        ],
        &[],
    )
    .await;
    assert!(sh.success(), "{sh}");
    assert_eq!(
        sh.json()["authenticatedUsers"],
        json!([{"user": "writer", "db": "admin"}]),
        "{sh}"
    );

    backend.shutdown().await;
}

#[tokio::test]
async fn mock_idp_serves_discovery_jwks_and_tokens() {
    let idp = MockIdp::start(
        json!({"sub": "alice@example.com", "aud": "api://mongodb", "groups": ["dba"]}),
        600,
    )
    .await;
    let issuer = idp.issuer();
    assert_eq!(issuer, format!("http://127.0.0.1:{}", idp.port));

    let discovery = idp.get_json("/.well-known/openid-configuration").await;
    assert_eq!(discovery["issuer"], json!(issuer), "{discovery}");
    let jwks_uri = discovery["jwks_uri"].as_str().expect("jwks_uri");
    assert_eq!(jwks_uri, format!("{issuer}/jwks"));

    let jwks = idp.get_json("/jwks").await;
    let keys = jwks["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["kty"], "RSA", "{jwks}");
    assert_eq!(keys[0]["alg"], "RS256", "{jwks}");
    assert!(keys[0]["kid"].as_str().is_some_and(|k| !k.is_empty()));

    // A token with no browser, carrying the payload's claims.
    let token = idp.token("test-client").await;
    let claims = jwt_claims(&token);
    assert_eq!(claims["iss"], json!(issuer), "{claims}");
    assert_eq!(claims["sub"], "alice@example.com");
    assert_eq!(claims["aud"], "api://mongodb");
    assert_eq!(claims["groups"], json!(["dba"]));
    let lifetime = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
    assert_eq!(lifetime, 600, "{claims}");
}

#[tokio::test]
async fn secantus_launcher_reports_clear_errors() {
    use mongo_oidc_proxy_devkit::demo::secantus::{start, SecantusError, SecantusOptions};
    let missing = start(SecantusOptions {
        secantusd: "/nonexistent/secantusd-py".into(),
        users: vec![],
        data_dir: None,
        port: None,
    })
    .await
    .expect_err("a missing binary must fail");
    assert!(
        matches!(missing, SecantusError::NotFound { .. }),
        "{missing}"
    );
    let msg = missing.to_string();
    assert!(msg.contains("/nonexistent/secantusd-py"), "{msg}");
    assert!(msg.contains("scripts/setup-tools.sh"), "{msg}");

    // A taken port: the server dies at once and its stderr is in the error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let died = start(SecantusOptions {
        secantusd: secantusd(),
        users: vec![],
        data_dir: None,
        port: Some(port),
    })
    .await
    .expect_err("a taken port must fail");
    let msg = died.to_string();
    assert!(matches!(died, SecantusError::Died { .. }), "{msg}");
    assert!(msg.contains("Address already in use"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secantus_data_dir_survives_restarts_and_users_are_updated() {
    use mongo_oidc_proxy_devkit::demo::secantus::{start, SecantusOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let script = clients_dir().join("pymongo_client.py");
    let opts = |pw: &str| SecantusOptions {
        secantusd: secantusd(),
        users: vec![BackendUser::new("app", pw, &[("readWrite", "app")])],
        data_dir: Some(dir.path().to_path_buf()),
        port: None,
    };
    let first = start(opts("pw-1")).await.expect("first start");
    let uri = first.uri.clone();
    run_python(
        &script,
        &["write", &uri, "--scram", "app:pw-1", "--coll", "kept"],
        &[],
    )
    .await
    .expect_ok();
    first.shutdown().await;

    // Same directory again: the existing user is updated (new password).
    let second = start(opts("pw-2")).await.expect("second start");
    let uri = second.uri.clone();
    let read = run_python(
        &script,
        &["read", &uri, "--scram", "app:pw-2", "--coll", "kept"],
        &[],
    )
    .await
    .expect_ok();
    assert_eq!(read["count"], 1, "{read}");
    run_python(&script, &["ping", &uri, "--scram", "app:pw-1"], &[])
        .await
        .expect_error_code(18);
    drop(second); // drop stops the server too
}
