//! The Rust `mongodb` driver through the proxy: the machine callback, CRUD
//! with several getMore batches, and the driver's own reaction to 391 —
//! it calls the callback again, re-authenticates on the same connection and
//! retries the operation.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, TryStreamExt};
use mongodb::bson::{doc, Document};
use mongodb::options::{oidc, AuthMechanism, ClientOptions, Tls, TlsOptions};
use mongodb::Client;
use support::proxy_env::ProxyEnv;

/// A client whose machine callback hands out `token(n)` on its n-th call.
async fn client(
    env: &ProxyEnv,
    token: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (Client, Arc<AtomicUsize>) {
    let mut opts = ClientOptions::parse(format!(
        "mongodb://localhost:{}/?authMechanism=MONGODB-OIDC",
        env.addr().port()
    ))
    .await
    .expect("connection string");
    opts.tls = Some(Tls::Enabled(
        TlsOptions::builder().ca_file_path(env.ca()).build(),
    ));
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let token = Arc::new(token);
    let callback = move |_ctx: oidc::CallbackContext| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let jwt = token(n);
        async move { Ok(oidc::IdpServerResponse::builder().access_token(jwt).build()) }.boxed()
    };
    let mut cred = opts.credential.take().unwrap_or_default();
    cred.mechanism = Some(AuthMechanism::MongoDbOidc);
    cred.oidc_callback = oidc::Callback::machine(callback);
    opts.credential = Some(cred);
    (Client::with_options(opts).expect("client"), calls)
}

fn users_and_roles(status: &Document) -> (Vec<String>, Vec<String>) {
    let info = status.get_document("authInfo").expect("authInfo");
    let pick = |list: &str, field: &str| -> Vec<String> {
        info.get_array(list)
            .expect(list)
            .iter()
            .filter_map(|v| {
                v.as_document()
                    .and_then(|d| d.get_str(field).ok())
                    .map(str::to_string)
            })
            .collect()
    };
    (
        pick("authenticatedUsers", "user"),
        pick("authenticatedUserRoles", "role"),
    )
}

#[tokio::test]
async fn rust_driver_signs_in_and_runs_crud() {
    let env = ProxyEnv::start().await;
    let token = env.token("rusty", &["writers"], 600);
    let (client, calls) = client(&env, move |_| token.clone()).await;
    let coll = client
        .database("app")
        .collection::<Document>(&format!("rust_{}", std::process::id()));
    coll.insert_many((0..25).map(|i| doc! { "i": i }))
        .await
        .expect("insert_many");
    let found: Vec<Document> = coll
        .find(doc! {})
        .batch_size(4)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("cursor");
    assert_eq!(found.len(), 25);
    let status = client
        .database("admin")
        .run_command(doc! { "connectionStatus": 1 })
        .await
        .expect("connectionStatus");
    assert_eq!(
        users_and_roles(&status),
        (
            vec!["test/rusty".to_string()],
            vec!["test/writers".to_string()]
        )
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one token for the whole pool"
    );
    env.stop().await;
}

#[tokio::test]
async fn rust_driver_reauthenticates_after_391_and_retries() {
    let env = ProxyEnv::start().await;
    let first = env.token("rusty", &["writers"], 2);
    let fresh = env.token("rusty", &["writers"], 600);
    let (client, calls) = client(
        &env,
        move |n| if n == 1 { first.clone() } else { fresh.clone() },
    )
    .await;
    let coll = client.database("app").collection::<Document>("rust_reauth");
    coll.insert_one(doc! { "x": 1 })
        .await
        .expect("insert before expiry");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The proxy answers 391; the driver fetches a new token, signs in again and retries.
    coll.insert_one(doc! { "x": 2 })
        .await
        .expect("insert after expiry");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the callback ran again for the re-authentication"
    );
    let m = env.running().metrics.render();
    assert!(
        m.contains("mongo_oidc_proxy_reauthentications_total 1"),
        "{m}"
    );
    assert!(
        m.contains("mongo_oidc_proxy_commands_total{disposition=\"reauthentication_required\"} 1"),
        "{m}"
    );
    env.stop().await;
}
