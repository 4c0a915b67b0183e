//! What an operator's monitoring sees: `/readyz` following a real
//! SecantusDB going away and coming back, an identity provider whose keys
//! never loaded, the drain; `/metrics` after a pymongo sign-in (names,
//! labels, a normal close counted as such); and plain logs on a pipe.

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

use mongo_oidc_proxy_devkit::demo::secantus::{self, BackendUser, SecantusOptions};
use support::proxy_env::{self, ProxyEnv, READER, WRITER};
use support::proxy_process::ProxyProcess;

/// `[metrics]` on a free port, and a drain short enough for a test.
const OPERATOR: &str = "[metrics]\naddress = \"127.0.0.1:0\"\n\n[shutdown]\ndrain_secs = 4\n";
/// Readiness must follow the backend within this (the task's promise).
const FOLLOW: Duration = Duration::from_secs(15);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn users() -> Vec<BackendUser> {
    vec![
        BackendUser::new(WRITER.0, WRITER.1, &[("readWrite", "app")]),
        BackendUser::new(READER.0, READER.1, &[("read", "app")]),
    ]
}

/// `(status, body)` of `/readyz`.
async fn readyz(env: &ProxyEnv) -> (u16, String) {
    let addr = env.running().metrics_addr.expect("metrics configured");
    get(&format!("http://{addr}/readyz")).await
}

async fn get(url: &str) -> (u16, String) {
    let r = http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn metrics_of(env: &ProxyEnv) -> String {
    let addr = env.running().metrics_addr.expect("metrics configured");
    get(&format!("http://{addr}/metrics")).await.1
}

/// Polls `/readyz` until it answers `status`; returns how long that took
/// and the body. Panics with the last answer after `within`.
async fn wait_readyz(env: &ProxyEnv, status: u16, within: Duration) -> (Duration, String) {
    let started = Instant::now();
    loop {
        let (got, body) = readyz(env).await;
        if got == status {
            return (started.elapsed(), body);
        }
        assert!(
            started.elapsed() < within,
            "/readyz still {got} after {within:?} (wanted {status}): {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of one exact series line (`name{labels}`), if present.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_backend_going_away_and_coming_back() {
    let db = support::start_secantus(users()).await;
    let port = db.port;
    let env = ProxyEnv::start_full(&db.uri, "", OPERATOR).await;
    let (took, body) = wait_readyz(&env, 200, FOLLOW).await;
    eprintln!("ready after {took:?}");
    assert_eq!(body, "ready\n");
    let m = metrics_of(&env).await;
    assert_eq!(value(&m, "mongo_oidc_proxy_ready"), Some(1.0), "{m}");
    assert_eq!(value(&m, "mongo_oidc_proxy_backend_up"), Some(1.0), "{m}");

    db.shutdown().await;
    let (took, body) = wait_readyz(&env, 503, FOLLOW).await;
    eprintln!("not ready {took:?} after the backend stopped: {body}");
    assert!(
        body.starts_with("not ready: backend: no answer "),
        "names the backend: {body}"
    );
    assert!(
        body.contains(&format!(
            "(last error: backend: no writable primary found; backend 127.0.0.1:{port}: \
             connection refused; is mongod running and is backend.uri right?)"
        )),
        "{body}"
    );
    assert!(
        !body.contains(WRITER.1) && !body.contains(READER.1),
        "{body}"
    );
    let m = metrics_of(&env).await;
    assert_eq!(value(&m, "mongo_oidc_proxy_ready"), Some(0.0), "{m}");
    assert_eq!(value(&m, "mongo_oidc_proxy_backend_up"), Some(0.0), "{m}");
    // Liveness is not readiness.
    let addr = env.running().metrics_addr.unwrap();
    assert_eq!(
        get(&format!("http://{addr}/healthz")).await,
        (200, "ok\n".into())
    );

    let db = secantus::start(SecantusOptions {
        secantusd: support::secantusd(),
        users: users(),
        data_dir: None,
        port: Some(port),
    })
    .await
    .unwrap_or_else(|e| panic!("SecantusDB did not restart on port {port}: {e}"));
    let (took, body) = wait_readyz(&env, 200, FOLLOW).await;
    eprintln!("ready again {took:?} after the backend restarted");
    assert_eq!(body, "ready\n");
    assert_eq!(
        value(&metrics_of(&env).await, "mongo_oidc_proxy_backend_up"),
        Some(1.0)
    );

    // A drain makes it 503 at once, while open connections are still served.
    let mut open = env.client().await;
    let token = env.token("dana", &["writers"], 300);
    assert!(support::wire_client::is_ok(&open.sign_in(&token).await));
    let ProxyEnv {
        idp: _idp, running, ..
    } = env;
    let running = running.unwrap();
    let (health, metrics_addr) = (running.health.clone(), running.metrics_addr.unwrap());
    let drained = tokio::spawn(running.drain());
    let started = Instant::now();
    let body = loop {
        let (status, body) = get(&format!("http://{metrics_addr}/readyz")).await;
        if status == 503 {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        body,
        "not ready: draining (SIGTERM): new connections are refused\n"
    );
    assert!(!health.verdict().ready);
    drop(open);
    drained.await.unwrap();
    db.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_provider_whose_keys_never_loaded_is_named() {
    let dead = support::free_port();
    let issuer = format!("http://127.0.0.1:{dead}");
    let extra = format!(
        "{OPERATOR}\n[[identity_provider]]\nissuer = \"{issuer}\"\naudience = \"api://other\"\n\
         auth_name_prefix = \"other\"\nsupports_human_flows = false\n"
    );
    let env = ProxyEnv::start_with(&extra).await;
    wait_readyz(&env, 503, FOLLOW).await;
    let started = Instant::now();
    // The backend probe may still be on its first round: wait for the
    // verdict to be the IdP's alone.
    let body = loop {
        let (_, body) = readyz(&env).await;
        if !body.contains("backend") || started.elapsed() > FOLLOW {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        body.starts_with(&format!(
            "not ready: identity provider {issuer}: keys never loaded (last error: fetching \
             '{issuer}/.well-known/openid-configuration' failed: "
        )),
        "{body}"
    );
    // The development IdP's keys did load: only the other one is named.
    assert!(!body.contains(env.idp.issuer()), "{body}");
    let m = metrics_of(&env).await;
    assert_eq!(value(&m, "mongo_oidc_proxy_ready"), Some(0.0), "{m}");
    assert_eq!(
        value(
            &m,
            &format!("mongo_oidc_proxy_jwks_keys{{issuer=\"{issuer}\"}}")
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            &format!("mongo_oidc_proxy_jwks_last_success_timestamp_seconds{{issuer=\"{issuer}\"}}")
        ),
        Some(0.0),
        "{m}"
    );
    assert!(
        value(
            &m,
            &format!(
                "mongo_oidc_proxy_jwks_fetches_total{{issuer=\"{issuer}\",result=\"failure\"}}"
            )
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    env.stop().await;
}

/// pymongo signs in, pings and closes; every metric the dashboards use is
/// there with its labels, the close is `client_closed`, and no label holds
/// the principal or the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_pymongo_sign_in() {
    let env = ProxyEnv::start_with(OPERATOR).await;
    wait_readyz(&env, 200, FOLLOW).await;
    let token = env.token("alice-7f3a", &["writers"], 300);
    let script = support::clients_dir().join("pymongo_client.py");
    let ca = env.ca().display().to_string();
    let out = support::run_python(
        &script,
        &["ping", &env.plain_uri(), "--ca", &ca, "--token", &token],
        &[],
    )
    .await;
    assert_eq!(out.expect_ok()["ok"], 1.0, "{out}");
    // A second sign-in with the same token is a verified-token cache hit.
    let mut c = env.client().await;
    assert!(support::wire_client::is_ok(&c.sign_in(&token).await));
    drop(c);

    // pymongo's connections end without a TLS close_notify; wait until
    // every session has ended.
    let started = Instant::now();
    let m = loop {
        let m = metrics_of(&env).await;
        if value(&m, "mongo_oidc_proxy_connections_active") == Some(0.0) {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let issuer = env.idp.issuer();
    let closed = |reason: &str| {
        value(
            &m,
            &format!("mongo_oidc_proxy_connections_closed_total{{reason=\"{reason}\"}}"),
        )
    };
    let accepted = value(&m, "mongo_oidc_proxy_connections_accepted_total").unwrap_or(0.0);
    eprintln!(
        "accepted {accepted}, client_closed {:?}, client_io {:?}",
        closed("client_closed"),
        closed("client_io")
    );
    assert_eq!(closed("client_io"), Some(0.0), "{m}");
    assert_eq!(closed("client_closed"), Some(accepted), "{m}");

    let sign_ins: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("mongo_oidc_proxy_sign_ins_total{"))
        .collect();
    eprintln!("{sign_ins:?}");
    // pymongo and the wire client both sign in with saslStart {jwt}; the
    // IdP's other flows are there from the start, at 0.
    assert_eq!(
        sign_ins,
        [
            "mongo_oidc_proxy_sign_ins_total{flow=\"human\",idp=\"test\"} 0",
            "mongo_oidc_proxy_sign_ins_total{flow=\"machine\",idp=\"test\"} 2",
            "mongo_oidc_proxy_sign_ins_total{flow=\"speculative\",idp=\"test\"} 0",
        ]
    );

    for (series, want) in [
        ("mongo_oidc_proxy_ready".to_string(), 1.0),
        ("mongo_oidc_proxy_backend_up".to_string(), 1.0),
        (
            format!(
                "mongo_oidc_proxy_jwks_fetches_total{{issuer=\"{issuer}\",result=\"success\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "mongo_oidc_proxy_jwks_fetches_total{{issuer=\"{issuer}\",result=\"failure\"}}"
            ),
            0.0,
        ),
        // The development IdP publishes an RSA and a P-256 key.
        (
            format!("mongo_oidc_proxy_jwks_keys{{issuer=\"{issuer}\"}}"),
            2.0,
        ),
        (
            "mongo_oidc_proxy_token_cache_lookups_total{result=\"hit\"}".to_string(),
            1.0,
        ),
        (
            "mongo_oidc_proxy_token_cache_lookups_total{result=\"miss\"}".to_string(),
            1.0,
        ),
    ] {
        assert_eq!(value(&m, &series), Some(want), "{series}:\n{m}");
    }
    let loaded = value(
        &m,
        &format!("mongo_oidc_proxy_jwks_last_success_timestamp_seconds{{issuer=\"{issuer}\"}}"),
    )
    .unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(loaded > now - 120.0 && loaded <= now, "{loaded} vs {now}");
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(
            value(&m, name).is_some_and(|v| v > 0.0),
            "{name} missing:\n{m}"
        );
    }
    // Whole seconds: a short test may not have used one yet.
    assert!(value(&m, "process_cpu_seconds_total").is_some(), "{m}");
    for secret in ["alice-7f3a", token.as_str()] {
        assert!(!m.contains(secret), "a label carries {secret}:\n{m}");
    }
    env.stop().await;
}

/// Logs to a pipe (journald, a file, a log shipper) carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_on_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let text = proxy_env::config_text("http://127.0.0.1:9", "", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let mut p = ProxyProcess::start_with(&path, port, &["--log-format", "text"], &[]).await;
    let log = p.log();
    assert!(log.contains("mongo-oidc-proxy listening"), "{log}");
    // The unreachable IdP makes a WARN line, which a terminal shows in colour.
    assert!(log.contains("WARN"), "{log}");
    assert!(!log.contains('\u{1b}'), "ESC in the log:\n{log:?}");
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(30)).await.is_some());
}
