//! Identity providers end to end: real mongosh, MongoDB's oidc-mock-provider
//! and the development IdP through the proxy to SecantusDB.
//!
//! - two human-flow IdPs, `match_pattern` choosing by the user name mongosh
//!   sends, with the device flow and with the auth-code flow (a `--browser`
//!   script that follows the redirects with curl);
//! - key rotation: a new `kid` costs exactly one JWKS fetch, and a flood of
//!   unknown `kid`s within the quiesce period costs at most one;
//! - MongoDB's `oidcIdentityProviders` JSON pasted into the config.

mod support;

use std::sync::Arc;

use bson::rawdoc;
use mongo_oidc_proxy_devkit::devidp::{DevAlg, DevIdpOptions};
use serde_json::json;
use support::proxy_env::{self, ProxyEnv, AUDIENCE};
use support::wire_client::{error_of, is_ok, WireClient};
use support::{clients_dir, free_port, names, run_mongosh, MockIdp, RunOutput};

const MOCK_AUD: &str = "resource-server-audience-value";
const MOCK_USER: &str = "alice@mock.example";
const DEV_USER: &str = "dave@dev.example";

/// A proxy over a development IdP started with `opts`; `edit` may rewrite
/// the default test config text (from [`proxy_env::config_text`]).
async fn start_env(
    opts: DevIdpOptions,
    dev_idp_fields: &str,
    extra: &str,
    edit: impl Fn(String) -> String,
) -> ProxyEnv {
    ProxyEnv::launch(opts, |issuer| {
        edit(proxy_env::config_text(issuer, dev_idp_fields, extra))
    })
    .await
}

fn dev_options(default_sub: &str) -> DevIdpOptions {
    DevIdpOptions {
        audience: AUDIENCE.into(),
        client_id: "test-client".into(),
        default_sub: default_sub.into(),
        default_claims: json!({ "groups": ["writers"] }),
        ..DevIdpOptions::default()
    }
}

/// Two human-flow IdPs: the dev IdP for `@dev.example` users (listed first,
/// prefix `test`) and the mock for `@mock.example` users (prefix `mock`).
async fn two_idps() -> (ProxyEnv, MockIdp) {
    let mock = MockIdp::start(
        json!({ "sub": MOCK_USER, "groups": ["mockers"], "aud": MOCK_AUD }),
        3600,
    )
    .await;
    let extra = format!(
        "[[identity_provider]]\nissuer = {issuer:?}\naudience = {MOCK_AUD:?}\nauth_name_prefix = \"mock\"\n\
         client_id = \"mongosh-test\"\nmatch_pattern = \"@mock\\\\.example$\"\njwks_min_quiesce_secs = 0\n\n\
         [[grant]]\nrole = \"mock/mockers\"\nbackend_user = \"app_rw\"\nbackend_password_file = {pw:?}\n",
        issuer = mock.issuer(),
        pw = proxy_env::shared_files()
            .join("rw.password")
            .display()
            .to_string(),
    );
    let env = start_env(
        dev_options(DEV_USER),
        "match_pattern = \"@dev\\\\.example$\"",
        &extra,
        |t| t,
    )
    .await;
    (env, mock)
}

const STATUS_JS: &str = "db.idp_flows.insertOne({ok: true}); \
    print(JSON.stringify({status: db.runCommand({connectionStatus: 1}), \
    count: db.idp_flows.countDocuments({})}))";

fn mongosh_uri(env: &ProxyEnv) -> String {
    format!(
        "mongodb://localhost:{}/app?authMechanism=MONGODB-OIDC&tls=true&tlsCAFile={}",
        env.addr().port(),
        env.ca().display()
    )
}

/// Asserts mongosh signed in as `user` with `roles` and could write.
fn assert_signed_in(out: &RunOutput, user: &str, roles: &[&str]) {
    let v = out.expect_ok();
    let info = &v["status"]["authInfo"];
    assert_eq!(names(&info["authenticatedUsers"], "user"), [user], "{out}");
    assert_eq!(names(&info["authenticatedUsers"], "db"), ["$external"]);
    assert_eq!(
        names(&info["authenticatedUserRoles"], "role"),
        roles,
        "{out}"
    );
    assert!(v["count"].as_u64().unwrap_or(0) >= 1, "{out}");
}

fn assert_auth_failed(out: &RunOutput) {
    assert!(!out.success(), "expected mongosh to fail: {out}");
    assert!(
        out.stderr.contains("Authentication failed")
            || out.stdout.contains("Authentication failed"),
        "expected 'Authentication failed' (code 18): {out}"
    );
}

#[tokio::test]
async fn device_flow_match_pattern_picks_the_idp_by_user_name() {
    let (env, mock) = two_idps().await;
    let uri = mongosh_uri(&env);
    let device = |user: &'static str| {
        let uri = uri.clone();
        async move {
            run_mongosh(
                &[
                    &uri,
                    "--username",
                    user,
                    "--oidcFlows=device-auth",
                    "--quiet",
                    "--eval",
                    STATUS_JS,
                ],
                &[],
            )
            .await
        }
    };
    let out = device(MOCK_USER).await;
    assert_signed_in(&out, "mock/alice@mock.example", &["mock/mockers"]);
    let out = device(DEV_USER).await;
    assert_signed_in(&out, "test/dave@dev.example", &["test/writers"]);

    // The pattern picks the dev IdP, whose token says dave: principal changed → 18.
    let out = device("eve@dev.example").await;
    assert_auth_failed(&out);
    // No pattern matches and every IdP has one: step 1 fails → 18.
    let out = device("bob@elsewhere.example").await;
    assert_auth_failed(&out);
    drop(mock);
    env.stop().await;
}

#[tokio::test]
async fn auth_code_flow_with_a_redirect_following_browser() {
    let (env, mock) = two_idps().await;
    let uri = mongosh_uri(&env);
    let browser = clients_dir().join("browser.sh");
    let logs = tempfile::tempdir().expect("temp dir");
    for (user, want_user, want_roles) in [
        (MOCK_USER, "mock/alice@mock.example", "mock/mockers"),
        (DEV_USER, "test/dave@dev.example", "test/writers"),
    ] {
        let log = logs.path().join(format!("{user}.log"));
        let redirect = format!(
            "--oidcRedirectUri=http://127.0.0.1:{}/redirect",
            free_port()
        );
        let out = run_mongosh(
            &[
                &uri,
                "--username",
                user,
                "--oidcFlows=auth-code",
                &format!("--browser={}", browser.display()),
                &redirect,
                "--quiet",
                "--eval",
                STATUS_JS,
            ],
            &[("MOP_BROWSER_LOG", &log.display().to_string())],
        )
        .await;
        assert_signed_in(&out, want_user, &[want_roles]);
        let trace = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            trace.contains("browser invoked with: http://127.0.0.1:")
                && trace.contains("status=200"),
            "the browser script did not follow the flow to a 200 page:\n{trace}\n{out}"
        );
    }
    drop(mock);
    env.stop().await;
}

async fn sign_in(env: &ProxyEnv, token: &str) -> WireClient {
    let mut c = env.client().await;
    let r = c.sign_in(token).await;
    assert!(is_ok(&r), "sign-in refused: {r:?}");
    c
}

async fn user_of(c: &mut WireClient) -> String {
    let r = c
        .command(rawdoc! { "connectionStatus": 1, "$db": "admin" })
        .await;
    let info = r.get_document("authInfo").expect("authInfo");
    let users = info.get_array("authenticatedUsers").expect("users");
    let first = users.into_iter().next().expect("one user").expect("bson");
    first
        .as_document()
        .expect("user document")
        .get_str("user")
        .expect("user name")
        .to_string()
}

async fn refused_with_18(env: &ProxyEnv, token: &str) {
    let mut c = env.client().await;
    let r = c.sign_in(token).await;
    assert_eq!(error_of(&r), (18, "Authentication failed.".to_string()));
}

#[tokio::test]
async fn a_rotated_key_signs_in_after_exactly_one_jwks_fetch() {
    // The default test config has jwks_min_quiesce_secs = 0: every unknown kid may refetch.
    let env = ProxyEnv::start().await;
    let at_start = env.idp.jwks_fetch_count();
    assert_eq!(at_start, 1, "the start-up load");
    let mut c = sign_in(&env, &env.token("old@example.com", &["writers"], 600)).await;
    assert_eq!(user_of(&mut c).await, "test/old@example.com");
    assert_eq!(env.idp.jwks_fetch_count(), at_start, "known kid: no fetch");

    let old_kid = env.idp.current_kid(DevAlg::Rs256);
    let new_kid = env.idp.rotate(DevAlg::Rs256);
    assert_ne!(old_kid, new_kid);
    let rotated = env.token("new@example.com", &["writers"], 600);
    let mut c = sign_in(&env, &rotated).await;
    assert_eq!(user_of(&mut c).await, "test/new@example.com");
    assert_eq!(
        env.idp.jwks_fetch_count(),
        at_start + 1,
        "one fetch for the new kid"
    );
    // Further tokens with the new kid, and the old one still published, cost nothing.
    sign_in(&env, &env.token("new2@example.com", &["readers"], 600)).await;
    assert_eq!(env.idp.jwks_fetch_count(), at_start + 1);

    // The old key withdrawn: the next periodic or JIT load drops it.
    assert!(env.idp.remove_key(&old_kid));
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "never-published"});
    let claims = env.idp.claims("x@example.com", Some(&["writers"]), 600);
    refused_with_18(
        &env,
        &env.idp.sign_with_header(&header, &claims, DevAlg::Rs256),
    )
    .await;
    assert_eq!(
        env.idp.jwks_fetch_count(),
        at_start + 2,
        "quiesce 0: one fetch per unknown kid"
    );
    env.stop().await;
}

#[tokio::test]
async fn unknown_kid_flood_within_the_quiesce_period_costs_at_most_one_fetch() {
    let env = start_env(dev_options("demo-user"), "", "", |t| {
        t.replace(
            "jwks_min_quiesce_secs = 0\n",
            "jwks_min_quiesce_secs = 60\n",
        )
    })
    .await;
    assert!(env.config_text.contains("jwks_min_quiesce_secs = 60\n"));
    let at_start = env.idp.jwks_fetch_count();
    assert_eq!(
        at_start, 1,
        "the start-up load is not held back by the quiesce"
    );
    let env = Arc::new(env);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let env = env.clone();
        tasks.spawn(async move {
            let header = json!({"alg": "RS256", "typ": "JWT", "kid": format!("unknown-{i}")});
            let claims = env
                .idp
                .claims(&format!("u{i}@example.com"), Some(&["writers"]), 600);
            let token = env.idp.sign_with_header(&header, &claims, DevAlg::Rs256);
            refused_with_18(&env, &token).await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("flood task");
    }
    let fetches = env.idp.jwks_fetch_count() - at_start;
    assert!(fetches <= 1, "{fetches} JWKS fetches for 100 unknown kids");
    // A genuinely new key is not fetched either until the quiesce period ends.
    env.idp.rotate(DevAlg::Rs256);
    refused_with_18(&env, &env.token("late@example.com", &["writers"], 600)).await;
    assert!(env.idp.jwks_fetch_count() - at_start <= 1);
    // Known keys keep working throughout.
    let env = Arc::into_inner(env).expect("tasks done");
    let old = env.idp.sign(
        DevAlg::Es256,
        &env.idp.claims("es@example.com", Some(&["writers"]), 600),
    );
    let mut c = sign_in(&env, &old).await;
    assert_eq!(user_of(&mut c).await, "test/es@example.com");
    env.stop().await;
}

/// MongoDB's own `oidcIdentityProviders` JSON in place of the tables: the
/// mock IdP for humans (mongosh device flow) and the dev IdP for machines.
#[tokio::test]
async fn a_pasted_mongod_setting_configures_the_proxy() {
    let mock = MockIdp::start(
        json!({ "sub": MOCK_USER, "groups": ["mockers"], "aud": MOCK_AUD }),
        3600,
    )
    .await;
    let extra = format!(
        "[[grant]]\nrole = \"mock/mockers\"\nbackend_user = \"app_rw\"\nbackend_password_file = {pw:?}\n",
        pw = proxy_env::shared_files()
            .join("rw.password")
            .display()
            .to_string(),
    );
    let mock_issuer = mock.issuer();
    let env = start_env(dev_options("demo-user"), "", &extra, |text| {
        // Drop the dev IdP's table; the JSON names both IdPs instead.
        let start = text.find("[[identity_provider]]").expect("dev IdP table");
        let end = text.find("[[grant]]").expect("grants");
        let dev_issuer = text[start..end]
            .lines()
            .find_map(|l| l.strip_prefix("issuer = "))
            .expect("dev issuer")
            .to_string();
        let setting = format!(
            r#"[
  {{"issuer": "{mock_issuer}", "audience": "{MOCK_AUD}", "authNamePrefix": "mock",
    "matchPattern": "@mock\\.example$", "clientId": "mongosh-test",
    "authorizationClaim": "groups", "logClaims": ["iss", "sub", "groups"]}},
  {{"issuer": {dev_issuer}, "audience": "{AUDIENCE}", "authNamePrefix": "test",
    "authorizationClaim": "groups", "supportsHumanFlows": false, "JWKSPollSecs": 0}}
]"#
        );
        format!(
            "identity_providers_json = '''{setting}'''\n{}{}",
            &text[..start],
            &text[end..]
        )
    })
    .await;
    assert!(!env.config_text.contains("[[identity_provider]]"));

    let out = run_mongosh(
        &[
            &mongosh_uri(&env),
            "--username",
            MOCK_USER,
            "--oidcFlows=device-auth",
            "--quiet",
            "--eval",
            STATUS_JS,
        ],
        &[],
    )
    .await;
    assert_signed_in(&out, "mock/alice@mock.example", &["mock/mockers"]);

    let mut c = sign_in(&env, &env.token("svc@example.com", &["writers"], 600)).await;
    assert_eq!(user_of(&mut c).await, "test/svc@example.com");
    drop(mock);
    env.stop().await;
}
