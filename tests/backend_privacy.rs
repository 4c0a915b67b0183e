//! What a client learns when the backend fails: that the proxy cannot reach
//! it or cannot sign in to it — never its address, the backend user or the
//! auth source, before or after sign-in. The details go to the log and to
//! `mongo_oidc_proxy_backend_errors_total{kind}`.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use bson::{rawdoc, RawDocumentBuf};
use support::proxy_env::{config_text, dev_idp_options, ProxyEnv, WRITER};
use support::wire_client::{error_of, is_ok};

/// Every string in a reply, so nothing can hide in another field.
fn text_of(reply: &RawDocumentBuf) -> String {
    format!(
        "{:?}",
        bson::Document::try_from(reply.as_ref()).expect("a BSON reply")
    )
}

fn assert_private(reply: &RawDocumentBuf, secrets: &[&str]) {
    let text = text_of(reply);
    for s in secrets {
        assert!(!text.contains(s), "a client saw {s:?}: {text}");
    }
}

#[tokio::test]
async fn a_backend_that_is_down_is_not_named_before_or_after_sign_in() {
    let port = support::free_port();
    let dead = format!("mongodb://127.0.0.1:{port}/");
    let env = ProxyEnv::start_full(&dead, "", "").await;
    let secrets = [&port.to_string()[..], "127.0.0.1", WRITER.0, "admin."];
    let mut c = env.client().await;
    // Before sign-in: the handshake needs the backend's limits.
    let hello = c.command(rawdoc! { "hello": 1, "$db": "admin" }).await;
    assert_eq!(
        error_of(&hello),
        (6, "mongo-oidc-proxy cannot reach its backend".to_string())
    );
    assert_private(&hello, &secrets);
    let build = c.command(rawdoc! { "buildInfo": 1, "$db": "admin" }).await;
    assert_eq!(error_of(&build).0, 6);
    assert_private(&build, &secrets);
    // After sign-in: the first relayed command opens the backend connection.
    assert!(is_ok(
        &c.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    let find = c.command(rawdoc! { "find": "x", "$db": "app" }).await;
    assert_eq!(
        error_of(&find),
        (6, "mongo-oidc-proxy cannot reach its backend".to_string())
    );
    assert_private(&find, &secrets);
    let m = env.running().metrics.render();
    assert!(
        m.contains("mongo_oidc_proxy_backend_errors_total{kind=\"probe\"}"),
        "{m}"
    );
    assert!(
        m.contains("mongo_oidc_proxy_backend_errors_total{kind=\"connect\"}"),
        "{m}"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_wrong_backend_password_shows_neither_the_user_nor_the_auth_source() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let env = ProxyEnv::launch(dev_idp_options(), |issuer| {
        let text = config_text(issuer, "", "");
        let right = support::proxy_env::shared_files().join("rw.password");
        text.replacen(
            &right.display().to_string(),
            &wrong.display().to_string(),
            1,
        )
    })
    .await;
    let mut c = env.client().await;
    assert!(is_ok(
        &c.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    let r = c
        .command(rawdoc! { "insert": "x", "documents": [{ "a": 1 }], "$db": "app" })
        .await;
    assert_eq!(
        error_of(&r),
        (
            6,
            "mongo-oidc-proxy cannot sign in to its backend as the granted user".to_string()
        )
    );
    assert_private(
        &r,
        &[
            WRITER.0,
            "not-the-password",
            "SCRAM",
            "auth_source",
            "'admin'",
        ],
    );
    env.stop().await;
}

/// What pymongo's test harness asks of a server (`usersInfo`, `createUser`,
/// `getCmdLineOpts`, `serverStatus`) is relayed as the session's backend
/// user: a session whose grant is an ordinary backend user (no `admin`)
/// gets the backend's 13 and sees no backend user's name. (The test-only
/// SCRAM set-up user relays them as its admin grant's backend user:
/// tests/pymongo_suite.rs.)
#[tokio::test]
async fn a_session_without_admin_sees_no_backend_users() {
    let env = ProxyEnv::start().await;
    let mut c = env.client().await;
    assert!(is_ok(
        &c.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    let secrets = [support::proxy_env::READER.0, "root"];
    let cases = [
        (
            rawdoc! { "usersInfo": 1, "$db": "admin" },
            "not authorized on admin to execute command (action: viewUser)",
        ),
        (
            rawdoc! { "usersInfo": 1, "$db": "app" },
            "not authorized on app to execute command (action: viewUser)",
        ),
        (
            rawdoc! { "getCmdLineOpts": 1, "$db": "admin" },
            "not authorized on cluster to execute command (action: getCmdLineOpts)",
        ),
        (
            rawdoc! { "serverStatus": 1, "$db": "admin" },
            "not authorized on cluster to execute command (action: serverStatus)",
        ),
    ];
    for (cmd, errmsg) in cases {
        let reply = c.command(cmd).await;
        assert_private(&reply, &secrets);
        assert_eq!(error_of(&reply), (13, errmsg.to_owned()));
    }
    let create = c
        .command(
            rawdoc! { "createUser": "intruder", "pwd": "pw", "roles": ["root"], "$db": "admin" },
        )
        .await;
    assert_eq!(error_of(&create).0, 13, "{}", text_of(&create));
    env.stop().await;
}
