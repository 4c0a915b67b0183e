//! Operator control, with real parts (SecantusDB, the development IdP, the
//! real binary for reloads): mongod's `oidcListKeys` and `oidcRefreshKeys`
//! over the wire for admin grants, and the `/admin/...` HTTP endpoints on the
//! metrics address — reload, JWKS refresh and revocation, the list of open
//! sessions and closing one.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bson::{rawdoc, RawDocumentBuf};
use mongo_oidc_proxy_devkit::devidp::DevAlg;
use serde_json::{json, Value};
use support::free_port;
use support::proxy_env::{self, shared_files, ProxyEnv};
use support::proxy_process::ProxyProcess;
use support::wire_client::{error_of, is_ok, WireClient};

const TOKEN: &str = "admin-token-for-the-tests-0123456789";

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A grant for group `admins` with `admin = true`.
fn admin_grant() -> String {
    format!(
        "[[grant]]\nrole = \"test/admins\"\nbackend_user = \"app_rw\"\nbackend_password_file = {}\nadmin = true\n\n",
        toml_str(&shared_files().join("rw.password").display().to_string())
    )
}

/// `[metrics]` on a free port, and `[admin]` with a token file in `dir`.
fn admin_section(dir: &Path, token: &str) -> String {
    let path = dir.join("admin.token");
    std::fs::write(&path, format!("{token}\n")).expect("token file");
    format!(
        "[metrics]\naddress = \"127.0.0.1:0\"\n\n[admin]\ntoken_file = {}\n",
        toml_str(&path.display().to_string())
    )
}

async fn signed_in(env: &ProxyEnv, sub: &str, groups: &[&str]) -> (WireClient, String) {
    let mut c = env.client().await;
    let token = env.token(sub, groups, 600);
    let r = c.sign_in(&token).await;
    assert!(is_ok(&r), "sign-in of {sub} failed: {r:?}");
    (c, token)
}

async fn find(c: &mut WireClient) -> RawDocumentBuf {
    c.command(rawdoc! { "find": "things", "$db": "app" }).await
}

fn bson_to_json(doc: &RawDocumentBuf) -> Value {
    let doc = bson::Document::try_from(doc.as_ref()).expect("document");
    serde_json::to_value(doc).expect("JSON")
}

/// An HTTP client for the admin endpoints.
struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    fn new(addr: SocketAddr) -> Http {
        Http {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    fn of(env: &ProxyEnv) -> Http {
        Http::new(env.running().metrics_addr.expect("metrics address"))
    }

    /// `(status, JSON body)`; `auth` is the whole Authorization header.
    async fn send(&self, method: &str, path: &str, auth: Option<&str>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn admin(&self, method: &str, path: &str) -> (u16, Value) {
        self.send(method, path, Some(&format!("Bearer {TOKEN}")))
            .await
    }

    async fn text(&self, method: &str, path: &str) -> String {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .expect("admin request")
            .text()
            .await
            .expect("body")
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics")
    }
}

fn session_of<'a>(list: &'a Value, user: &str) -> &'a Value {
    list["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .find(|s| s["user"] == json!(user))
        .unwrap_or_else(|| panic!("no session of {user} in {list}"))
}

// ---- the wire commands ----

#[tokio::test]
async fn oidc_list_keys_and_refresh_keys_answer_an_admin_grant_as_mongod_does() {
    let env = ProxyEnv::start_with(&admin_grant()).await;
    let (mut admin, _) = signed_in(&env, "root", &["admins"]).await;
    let issuer = env.idp.issuer().to_owned();

    let r = admin
        .command(rawdoc! { "oidcListKeys": 1, "$db": "admin" })
        .await;
    let json = bson_to_json(&r);
    assert_eq!(json["ok"], json!(1.0), "{json}");
    let sets = json["keySets"].as_object().expect("keySets");
    assert_eq!(sets.keys().collect::<Vec<_>>(), [&issuer]);
    assert_eq!(
        json["keySets"][&issuer]["keys"],
        env.idp.jwks()["keys"],
        "every JWK as the IdP serves it"
    );

    let only = admin
        .command(rawdoc! { "oidcListKeys": 1, "identityProviders": [issuer.as_str(), "https://nowhere.example"], "$db": "admin" })
        .await;
    assert_eq!(
        bson_to_json(&only)["keySets"][&issuer]["keys"],
        env.idp.jwks()["keys"]
    );
    let none = admin
        .command(rawdoc! { "oidcListKeys": 1, "identityProviders": ["https://nowhere.example"], "$db": "admin" })
        .await;
    assert_eq!(none, rawdoc! { "keySets": {}, "ok": 1.0 });

    let fetches = env.idp.jwks_fetch_count();
    assert_eq!(
        admin
            .command(rawdoc! { "oidcRefreshKeys": 1, "$db": "admin" })
            .await,
        rawdoc! { "ok": 1.0 }
    );
    assert_eq!(
        admin
            .command(rawdoc! { "oidcRefreshKeys": 1, "identityProviders": [issuer.as_str()], "invalidateOnFailure": false, "$db": "admin" })
            .await,
        rawdoc! { "ok": 1.0 }
    );
    assert_eq!(
        env.idp.jwks_fetch_count(),
        fetches + 2,
        "each refresh fetched at once, quiesce period or not"
    );
    let bad = admin
        .command(
            rawdoc! { "oidcRefreshKeys": 1, "identityProviders": issuer.as_str(), "$db": "admin" },
        )
        .await;
    assert_eq!(
        error_of(&bad),
        (
            14,
            "BSON field 'oidcRefreshKeys.identityProviders' is the wrong type 'string', expected type 'array'".into()
        )
    );
    let m = env.running().metrics.render();
    for line in [
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"oidcListKeys\",result=\"ok\"} 3",
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"oidcRefreshKeys\",result=\"ok\"} 2",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    env.stop().await;
}

#[tokio::test]
async fn admin_commands_are_refused_with_13_to_everyone_else_and_off_the_admin_database() {
    let env = ProxyEnv::start_with(&admin_grant()).await;
    let not_authorized = |name: &str| {
        (
            13,
            format!("not authorized on admin to execute command {{ {name}: 1 }}"),
        )
    };
    let mut anonymous = env.client().await;
    for name in ["oidcListKeys", "oidcRefreshKeys"] {
        let mut cmd = RawDocumentBuf::new();
        cmd.append(bson::raw::CString::try_from(name).unwrap(), 1);
        cmd.append(bson::raw::cstr!("$db"), "admin");
        assert_eq!(
            error_of(&anonymous.command(cmd).await),
            (13, format!("Command {name} requires authentication"))
        );
    }
    let (mut writer, _) = signed_in(&env, "alice", &["writers"]).await;
    let (mut nobody, _) = signed_in(&env, "nemo", &["nobody"]).await;
    for c in [&mut writer, &mut nobody] {
        assert_eq!(
            error_of(
                &c.command(rawdoc! { "oidcListKeys": 1, "$db": "admin" })
                    .await
            ),
            not_authorized("oidcListKeys")
        );
        assert_eq!(
            error_of(
                &c.command(rawdoc! { "oidcRefreshKeys": 1, "$db": "admin" })
                    .await
            ),
            not_authorized("oidcRefreshKeys")
        );
    }
    let (mut admin, _) = signed_in(&env, "root", &["admins"]).await;
    assert_eq!(
        error_of(
            &admin
                .command(rawdoc! { "oidcListKeys": 1, "$db": "app" })
                .await
        ),
        (
            13,
            "oidcListKeys may only be run against the admin database.".into()
        )
    );
    assert!(is_ok(
        &admin
            .command(rawdoc! { "oidcListKeys": 1, "$db": "admin" })
            .await
    ));
    let m = env.running().metrics.render();
    assert!(
        m.contains("mongo_oidc_proxy_commands_total{disposition=\"refused_not_admin\"} 4"),
        "{m}"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_refresh_after_the_idp_withdraws_a_key_ends_its_sessions_and_a_fresh_token_signs_in() {
    let env = ProxyEnv::start_with(&admin_grant()).await;
    let old_kid = env.idp.current_kid(DevAlg::Rs256);
    let (mut alice, old_token) = signed_in(&env, "alice", &["writers"]).await;
    let (mut admin, _) = signed_in(&env, "root", &["admins"]).await;
    assert!(is_ok(&find(&mut alice).await));

    let new_kid = env.idp.rotate(DevAlg::Rs256);
    assert!(env.idp.remove_key(&old_kid));
    assert!(is_ok(&find(&mut alice).await), "nothing told the proxy yet");

    assert_eq!(
        admin
            .command(rawdoc! { "oidcRefreshKeys": 1, "$db": "admin" })
            .await,
        rawdoc! { "ok": 1.0 }
    );
    let reauth = (
        391,
        "Command find requires reauthentication since the current authorization session has expired. Please re-auth.".to_string(),
    );
    assert_eq!(error_of(&find(&mut alice).await), reauth);
    assert_eq!(
        error_of(&find(&mut admin).await),
        reauth,
        "the admin's own token was signed with the withdrawn key too"
    );
    assert_eq!(
        error_of(&alice.sign_in(&old_token).await),
        (18, "Authentication failed.".into())
    );
    assert!(is_ok(
        &alice.sign_in(&env.token("alice", &["writers"], 600)).await
    ));
    assert!(is_ok(&find(&mut alice).await));
    assert!(is_ok(
        &admin.sign_in(&env.token("root", &["admins"], 600)).await
    ));
    let listed = bson_to_json(
        &admin
            .command(rawdoc! { "oidcListKeys": 1, "$db": "admin" })
            .await,
    );
    let kids: Vec<&str> = listed["keySets"][env.idp.issuer()]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(
        kids.contains(&new_kid.as_str()) && !kids.contains(&old_kid.as_str()),
        "{kids:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_failed_refresh_names_the_issuer_and_drops_only_its_keys() {
    let down = format!("http://127.0.0.1:{}", free_port());
    let extra = format!(
        "{}[[identity_provider]]\nissuer = {}\naudience = \"api://down\"\nauth_name_prefix = \"down\"\nsupports_human_flows = false\n\n",
        admin_grant(),
        toml_str(&down)
    );
    let env = ProxyEnv::start_with(&extra).await;
    let (mut admin, _) = signed_in(&env, "root", &["admins"]).await;
    let r = admin
        .command(
            rawdoc! { "oidcRefreshKeys": 1, "identityProviders": [down.as_str()], "$db": "admin" },
        )
        .await;
    let (code, message) = error_of(&r);
    assert_eq!(
        (code, r.get_str("codeName").ok()),
        (96, Some("OperationFailed"))
    );
    let prefix = format!(
        "Failed to refresh IdentityProvider '{down}' :: caused by :: fetching '{down}/.well-known/openid-configuration' failed: "
    );
    assert!(message.starts_with(&prefix), "{message}");
    // Every issuer: one failed, so the command fails; the dev IdP's keys
    // (and the admin's session, signed with them) stay.
    let (code, message) = error_of(
        &admin
            .command(rawdoc! { "oidcRefreshKeys": 1, "$db": "admin" })
            .await,
    );
    assert_eq!(code, 96);
    assert!(message.starts_with(&prefix), "{message}");
    assert!(is_ok(&find(&mut admin).await));
    let m = env.running().metrics.render();
    assert!(
        m.contains("mongo_oidc_proxy_admin_requests_total{endpoint=\"oidcRefreshKeys\",result=\"failed\"} 2"),
        "{m}"
    );
    env.stop().await;
}

// ---- the HTTP endpoints ----

#[tokio::test]
async fn the_admin_endpoints_are_404_without_admin_and_401_without_the_token() {
    let off = ProxyEnv::start_with("[metrics]\naddress = \"127.0.0.1:0\"\n").await;
    let http = Http::of(&off);
    for (method, path) in [
        ("GET", "/admin/sessions"),
        ("POST", "/admin/reload"),
        ("POST", "/admin/jwks/revoke"),
    ] {
        let (status, body) = http.admin(method, path).await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(
            body,
            json!({"error": "the admin endpoints are off: set [admin] token_env or token_file in the config"})
        );
    }
    off.stop().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let env = ProxyEnv::start_with(&admin_section(dir.path(), TOKEN)).await;
    let http = Http::of(&env);
    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    for auth in [None, Some(wrong.as_str()), Some(basic.as_str())] {
        let (status, body) = http.send("GET", "/admin/sessions", auth).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(
            body,
            json!({"error": "send Authorization: Bearer <the token of [admin]>"})
        );
    }
    let (status, _) = http.send("POST", "/admin/jwks/refresh", None).await;
    assert_eq!(status, 401);
    let unauthorized = reqwest::Client::new()
        .post(format!("{}/admin/reload", http.base))
        .send()
        .await
        .expect("request");
    assert_eq!(
        unauthorized
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let (status, body) = http.admin("GET", "/admin/sessions").await;
    assert_eq!((status, body), (200, json!({"sessions": []})));
    let m = http.metrics().await;
    for line in [
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"sessions\",result=\"unauthorized\"} 3",
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"jwks_refresh\",result=\"unauthorized\"} 1",
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"reload\",result=\"unauthorized\"} 1",
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"sessions\",result=\"ok\"} 1",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    env.stop().await;
}

#[tokio::test]
async fn sessions_lists_who_is_signed_in_without_tokens_and_close_ends_one_connection() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = ProxyEnv::start_with(&admin_section(dir.path(), TOKEN)).await;
    let http = Http::of(&env);
    let (mut alice, alice_token) = signed_in(&env, "alice", &["writers"]).await;
    let (mut bob, bob_token) = signed_in(&env, "bob", &["readers"]).await;
    let mut anonymous = env.client().await;
    assert!(is_ok(
        &anonymous
            .command(rawdoc! { "hello": 1, "$db": "admin" })
            .await
    ));
    assert!(is_ok(&find(&mut alice).await));

    let body = http.text("GET", "/admin/sessions").await;
    for secret in [
        alice_token.as_str(),
        alice_token.rsplit('.').next().expect("signature"),
        bob_token.as_str(),
        bob_token.rsplit('.').next().expect("signature"),
        proxy_env::WRITER.1,
        proxy_env::READER.1,
    ] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }
    let list: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(3), "{list}");
    let a = session_of(&list, "test/alice");
    assert_eq!(a["roles"], json!(["test/writers"]));
    assert_eq!(a["issuer"], json!(env.idp.issuer()));
    assert_eq!(
        (
            &a["grant"],
            &a["backend_user"],
            &a["flow"],
            &a["admin"],
            &a["expired"]
        ),
        (
            &json!(0),
            &json!("app_rw"),
            &json!("machine"),
            &json!(false),
            &json!(false)
        )
    );
    assert_eq!(a["commands"], json!(2), "sign-in and find");
    assert!(a["bytes_from_client"].as_u64().unwrap_or(0) > 0, "{a}");
    assert!(a["bytes_to_client"].as_u64().unwrap_or(0) > 0, "{a}");
    for field in ["connected_at", "signed_in_at", "token_expires_at"] {
        let t = a[field].as_str().unwrap_or_default();
        assert!(humantime::parse_rfc3339(t).is_ok(), "{field}: {t}");
    }
    let b = session_of(&list, "test/bob");
    assert_eq!(
        (&b["grant"], &b["backend_user"]),
        (&json!(1), &json!("app_ro"))
    );
    let anon = list["sessions"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["user"].is_null()))
        .expect("the anonymous connection is listed");
    assert_eq!(anon["commands"], json!(1));

    let id = a["id"].as_i64().expect("id");
    let (status, body) = http
        .admin("POST", &format!("/admin/sessions/{id}/close"))
        .await;
    assert_eq!((status, body), (200, json!({"closed": id})));
    assert!(alice.recv().await.is_none(), "alice's client sees EOF");
    assert!(is_ok(&find(&mut bob).await), "bob's session goes on");
    let (status, body) = http
        .admin("POST", &format!("/admin/sessions/{id}/close"))
        .await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"error": format!("no open session has id '{id}'")})
        )
    );
    let (status, _) = http.admin("POST", "/admin/sessions/abc/close").await;
    assert_eq!(status, 404);
    let mut gone = false;
    for _ in 0..50 {
        let (_, list) = http.admin("GET", "/admin/sessions").await;
        if list["sessions"].as_array().map(Vec::len) == Some(2) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the closed session leaves the list");
    let m = http.metrics().await;
    for line in [
        "mongo_oidc_proxy_connections_closed_total{reason=\"closed_by_operator\"} 1",
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"session_close\",result=\"ok\"} 1",
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"session_close\",result=\"not_found\"} 2",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    env.stop().await;
}

#[tokio::test]
async fn revoke_ends_the_sessions_of_withdrawn_keys_and_new_tokens_sign_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = ProxyEnv::start_with(&admin_section(dir.path(), TOKEN)).await;
    let http = Http::of(&env);
    let issuer = env.idp.issuer().to_owned();
    let old_kid = env.idp.current_kid(DevAlg::Rs256);
    let (mut alice, _) = signed_in(&env, "alice", &["writers"]).await;

    // Rotated at the IdP, then revoked at the proxy.
    let new_kid = env.idp.rotate(DevAlg::Rs256);
    assert!(env.idp.remove_key(&old_kid));
    assert!(is_ok(&find(&mut alice).await));
    let (status, body) = http
        .admin(
            "POST",
            &format!("/admin/jwks/revoke?issuer={}", urlencode(&issuer)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let result = &body["issuers"][0];
    assert_eq!(
        (&result["issuer"], &result["ok"]),
        (&json!(issuer), &json!(true))
    );
    let kids: Vec<&str> = result["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        kids.contains(&new_kid.as_str()) && !kids.contains(&old_kid.as_str()),
        "{kids:?}"
    );
    assert_eq!(error_of(&find(&mut alice).await).0, 391);
    let fresh = env.token("alice", &["writers"], 600);
    assert!(is_ok(&alice.sign_in(&fresh).await));
    assert!(is_ok(&find(&mut alice).await));

    // Revoking every issuer while the IdP still serves the same keys ends
    // every session all the same; the same token then signs in again.
    let (status, body) = http.admin("POST", "/admin/jwks/revoke").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(error_of(&find(&mut alice).await).0, 391);
    assert!(is_ok(&alice.sign_in(&fresh).await));
    assert!(is_ok(&find(&mut alice).await));

    let (status, body) = http
        .admin(
            "POST",
            "/admin/jwks/revoke?issuer=https%3A%2F%2Fnowhere.example",
        )
        .await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"error": "no identity provider has issuer 'https://nowhere.example'"})
        )
    );
    let fetches = env.idp.jwks_fetch_count();
    let (status, body) = http.admin("POST", "/admin/jwks/refresh").await;
    assert_eq!(
        (status, &body["issuers"][0]["ok"]),
        (200, &json!(true)),
        "{body}"
    );
    assert_eq!(env.idp.jwks_fetch_count(), fetches + 1);
    assert!(
        is_ok(&find(&mut alice).await),
        "a refresh that changes nothing ends nothing"
    );
    let m = http.metrics().await;
    for line in [
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"jwks_revoke\",result=\"ok\"} 2",
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"jwks_revoke\",result=\"not_found\"} 1",
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"jwks_refresh\",result=\"ok\"} 1",
        "mongo_oidc_proxy_sessions_expired_total{reason=\"key_withdrawn\"} 2",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    env.stop().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---- reload over HTTP, with the real binary ----

struct Files {
    dir: tempfile::TempDir,
    port: u16,
    metrics: u16,
}

impl Files {
    fn config(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    fn write(&self, issuer: &str, edit: impl Fn(String) -> String) {
        let text = proxy_env::config_text(issuer, "", "")
            .replace(
                "address = \"127.0.0.1:0\"",
                &format!("address = \"127.0.0.1:{}\"", self.port),
            )
            .replace(
                "[limits]",
                &format!(
                    "[metrics]\naddress = \"127.0.0.1:{}\"\n\n[admin]\ntoken_file = \"admin.token\"\n\n[limits]",
                    self.metrics
                ),
            );
        std::fs::write(self.config(), edit(text)).expect("write config");
    }

    fn token(&self, token: &str) {
        std::fs::write(self.dir.path().join("admin.token"), format!("{token}\n")).expect("token");
    }

    async fn client(&self) -> WireClient {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        WireClient::connect(addr, &shared_files().join("ca.pem")).await
    }
}

#[tokio::test]
async fn post_reload_applies_a_changed_grant_and_refuses_a_broken_file() {
    let idp = mongo_oidc_proxy_devkit::devidp::DevIdp::start(
        "127.0.0.1:0".parse().expect("addr"),
        proxy_env::dev_idp_options(),
    )
    .await
    .expect("development IdP");
    let files = Files {
        dir: tempfile::tempdir().expect("temp dir"),
        port: free_port(),
        metrics: free_port(),
    };
    files.token(TOKEN);
    files.write(idp.issuer(), |t| t);
    let p = ProxyProcess::start(&files.config(), files.port).await;
    let http = Http::new(
        format!("127.0.0.1:{}", files.metrics)
            .parse()
            .expect("addr"),
    );
    let insert = rawdoc! { "insert": "admin_reload", "documents": [{ "x": 1 }], "$db": "app" };

    let mut before = files.client().await;
    assert!(is_ok(
        &before.sign_in(&idp.token("alice", &["writers"], 600)).await
    ));
    assert!(is_ok(&before.command(insert.clone()).await));

    // Writers get the read-only backend user from now on.
    files.write(idp.issuer(), |t| {
        t.replacen("backend_user = \"app_rw\"", "backend_user = \"app_ro\"", 1)
            .replacen("rw.password", "ro.password", 1)
    });
    let (status, body) = http.admin("POST", "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["changes"]
            .as_str()
            .unwrap_or_default()
            .contains("2 grant(s), was 2"),
        "{body}"
    );
    let mut after = files.client().await;
    assert!(is_ok(
        &after.sign_in(&idp.token("alice", &["writers"], 600)).await
    ));
    assert_eq!(
        error_of(&after.command(insert.clone()).await).0,
        13,
        "the backend refuses the read-only user's write"
    );
    assert!(
        is_ok(&before.command(insert.clone()).await),
        "the open session keeps its backend user"
    );
    let (_, list) = http.admin("GET", "/admin/sessions").await;
    let users: Vec<&Value> = list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| &s["backend_user"])
        .collect();
    assert_eq!(users, [&json!("app_rw"), &json!("app_ro")], "{list}");

    // A broken file is refused with the field named; the old one serves on.
    files.write(idp.issuer(), |t| {
        t.replace("auth_timeout_secs = 5", "auth_timeout_secs = 0")
    });
    let (status, body) = http.admin("POST", "/admin/reload").await;
    assert_eq!(
        (status, body),
        (
            422,
            json!({
                "error": "limits.auth_timeout_secs: must be at least 1",
                "field": "limits.auth_timeout_secs",
                "kept": "the running configuration keeps serving"
            })
        )
    );
    assert!(is_ok(
        &after.command(rawdoc! { "ping": 1, "$db": "admin" }).await
    ));

    // The token is read again at each reload.
    files.write(idp.issuer(), |t| t);
    files.token("a-new-admin-token");
    let (status, _) = http.admin("POST", "/admin/reload").await;
    assert_eq!(status, 200);
    let (status, _) = http.admin("GET", "/admin/sessions").await;
    assert_eq!(status, 401, "the old token no longer works");
    let (status, _) = http
        .send("GET", "/admin/sessions", Some("Bearer a-new-admin-token"))
        .await;
    assert_eq!(status, 200);

    let m = http.metrics().await;
    for line in [
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"reload\",result=\"ok\"} 2",
        "mongo_oidc_proxy_admin_requests_total{endpoint=\"reload\",result=\"failed\"} 1",
        "mongo_oidc_proxy_config_reloads_total{result=\"failure\"} 1",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    let log = p.log();
    assert!(log.contains("admin request"), "{log}");
    assert!(log.contains("admin token changed"), "{log}");
    assert!(
        !log.contains(TOKEN) && !log.contains("a-new-admin-token"),
        "a token was logged:\n{log}"
    );
}

#[tokio::test]
async fn check_refuses_a_missing_admin_token_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("proxy.toml");
    let text = format!(
        "{}[metrics]\naddress = \"127.0.0.1:0\"\n\n[admin]\ntoken_file = \"missing.token\"\n",
        proxy_env::config_text("https://idp.example.com", "", "")
    );
    std::fs::write(&path, text).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mongo-oidc-proxy"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "admin.token_file: cannot read {}: ",
        dir.path().join("missing.token").display()
    );
    assert!(stderr.contains(&want), "{stderr}");
}

#[tokio::test]
async fn sessions_show_the_cursors_and_logical_sessions_each_connection_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = ProxyEnv::start_with(&admin_section(dir.path(), TOKEN)).await;
    let http = Http::of(&env);
    let (mut alice, _) = signed_in(&env, "alice", &["writers"]).await;
    let lsid = rawdoc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: rand::random::<[u8; 16]>().to_vec() } };
    let coll = format!("pins_{:08x}", rand::random::<u32>());
    assert!(is_ok(
        &alice
            .command(rawdoc! { "insert": coll.as_str(), "documents": [{ "i": 1 }, { "i": 2 }, { "i": 3 }], "$db": "app" })
            .await
    ));
    let pins = |list: &Value| {
        let a = session_of(list, "test/alice");
        (
            a["cursors"].clone(),
            a["logical_sessions"].clone(),
            a["in_transaction"].clone(),
        )
    };
    let list: Value = serde_json::from_str(&http.text("GET", "/admin/sessions").await).unwrap();
    assert_eq!(pins(&list), (json!(0), json!(0), json!(false)));

    // A cursor left open, in a transaction of a logical session.
    let r = alice
        .command(rawdoc! {
            "find": coll.as_str(), "batchSize": 1, "lsid": lsid.clone(), "txnNumber": 1_i64,
            "autocommit": false, "startTransaction": true, "$db": "app",
        })
        .await;
    assert!(is_ok(&r), "{r:?}");
    let list: Value = serde_json::from_str(&http.text("GET", "/admin/sessions").await).unwrap();
    assert_eq!(pins(&list), (json!(1), json!(1), json!(true)));

    let r = alice
        .command(rawdoc! {
            "commitTransaction": 1, "lsid": lsid, "txnNumber": 1_i64, "autocommit": false, "$db": "admin",
        })
        .await;
    assert!(is_ok(&r), "{r:?}");
    let list: Value = serde_json::from_str(&http.text("GET", "/admin/sessions").await).unwrap();
    assert_eq!(pins(&list), (json!(1), json!(1), json!(false)));
    env.stop().await;
}
