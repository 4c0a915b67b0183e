//! Real MongoDB clients through the proxy over TLS: pymongo and the Node
//! driver with machine callbacks, mongosh's device flow against MongoDB's own
//! oidc-mock-provider. The backend is SecantusDB (or $MONGOD_URI).

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use serde_json::json;
use support::proxy_env::ProxyEnv;
use support::{clients_dir, names, run_mongosh, run_node, run_python, MockIdp};

#[tokio::test]
async fn pymongo_signs_in_with_oidc_callback_and_works_against_the_backend() {
    let env = ProxyEnv::start().await;
    let script = clients_dir().join("pymongo_client.py");
    let ca = env.ca().display().to_string();
    let uri = env.plain_uri();

    let token = env.token("alice@example.com", &["writers"], 600);
    let out = run_python(
        &script,
        &["crud", &uri, "--ca", &ca, "--token", &token],
        &[],
    )
    .await
    .expect_ok();
    assert_eq!(out["inserted"], 25, "{out}");
    assert_eq!(out["found"], 25, "{out}");
    assert!(
        out["getmores"].as_u64().unwrap_or(0) >= 3,
        "several getMore batches: {out}"
    );
    assert_eq!(out["groups"], json!({ "0": 9, "1": 8, "2": 8 }), "{out}");
    assert_eq!(names(&out["users"], "user"), ["test/alice@example.com"]);
    assert_eq!(names(&out["users"], "db"), ["$external"]);
    assert_eq!(names(&out["roles"], "role"), ["test/writers"]);

    // A reader may read but the backend refuses its write with 13.
    let reader = env.token("rita", &["readers"], 600);
    let out = run_python(
        &script,
        &["read", &uri, "--ca", &ca, "--token", &reader],
        &[],
    )
    .await
    .expect_ok();
    assert!(out["count"].is_u64(), "{out}");
    run_python(
        &script,
        &["write", &uri, "--ca", &ca, "--token", &reader],
        &[],
    )
    .await
    .expect_error_code(13);

    // A token the proxy refuses surfaces as pymongo's authentication failure.
    let expired = env.token("alice", &["writers"], -60);
    let out = run_python(
        &script,
        &["ping", &uri, "--ca", &ca, "--token", &expired],
        &[],
    )
    .await
    .expect_error_code(18);
    assert!(
        out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Authentication failed."),
        "{out}"
    );
    env.stop().await;
}

#[tokio::test]
async fn node_driver_signs_in_with_a_machine_callback() {
    let env = ProxyEnv::start().await;
    let token = env.token("nora", &["writers"], 600);
    let out = run_node(
        &clients_dir().join("node_client.js"),
        &[
            "crud",
            &env.plain_uri(),
            "--ca",
            &env.ca().display().to_string(),
            "--token",
            &token,
        ],
        &[],
    )
    .await
    .expect_ok();
    assert_eq!(out["inserted"], 3, "{out}");
    assert_eq!(out["found"], 3, "{out}");
    assert_eq!(names(&out["users"], "user"), ["test/nora"]);
    assert_eq!(names(&out["roles"], "role"), ["test/writers"]);
    env.stop().await;
}

#[tokio::test]
async fn mongosh_device_flow_with_the_oidc_mock_provider() {
    let mock = MockIdp::start(
        json!({ "sub": "mia", "groups": ["mockers"], "aud": "resource-server-audience-value" }),
        3600,
    )
    .await;
    // The mock is the only human-flow IdP, so mongosh's `{}` step 1 selects it.
    let extra = format!(
        "[[identity_provider]]\nissuer = {issuer:?}\naudience = \"resource-server-audience-value\"\nauth_name_prefix = \"mock\"\n\
         client_id = \"mongosh-test\"\nrequest_scopes = [\"mongodb-api\"]\njwks_min_quiesce_secs = 0\n\n\
         [[grant]]\nrole = \"mock/mockers\"\nbackend_user = \"app_rw\"\nbackend_password_file = {pw:?}\n",
        issuer = mock.issuer(),
        pw = support::proxy_env::shared_files().join("rw.password").display().to_string(),
    );
    let env = ProxyEnv::start_custom("supports_human_flows = false", &extra).await;
    let uri = format!(
        "mongodb://localhost:{}/app?authMechanism=MONGODB-OIDC&tls=true&tlsCAFile={}",
        env.addr().port(),
        env.ca().display()
    );
    let js = "db.mongosh_things.insertOne({ok: true}); print(JSON.stringify({status: db.runCommand({connectionStatus: 1}), count: db.mongosh_things.countDocuments({})}))";
    let out = run_mongosh(
        &[&uri, "--oidcFlows=device-auth", "--quiet", "--eval", js],
        &[],
    )
    .await;
    let v = out.expect_ok();
    let info = &v["status"]["authInfo"];
    assert_eq!(
        names(&info["authenticatedUsers"], "user"),
        ["mock/mia"],
        "{out}"
    );
    assert_eq!(
        names(&info["authenticatedUserRoles"], "role"),
        ["mock/mockers"],
        "{out}"
    );
    assert!(v["count"].as_u64().unwrap_or(0) >= 1, "{out}");
    env.stop().await;
}
