use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use std::time::Instant;

const LOCAL: &str = "127.0.0.1:0";

async fn idp() -> DevIdp {
    DevIdp::start(LOCAL.parse().unwrap(), DevIdpOptions::default())
        .await
        .unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Verifies `token` against the JWKS the IdP serves, as the proxy will.
async fn verify(
    idp: &DevIdp,
    token: &str,
    aud: &str,
) -> Result<Value, jsonwebtoken::errors::Error> {
    let jwks: Value = http()
        .get(idp.jwks_uri())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.clone().unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
    let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = DecodingKey::from_jwk(&jwk)?;
    let mut v = Validation::new(header.alg);
    v.set_audience(&[aud]);
    v.set_issuer(&[idp.issuer()]);
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    Ok(jsonwebtoken::decode::<Value>(token, &key, &v)?.claims)
}

fn pkce() -> (String, String) {
    let verifier = keys::random_b64(32); // 43 chars
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

async fn post_form(idp: &DevIdp, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = http()
        .post(format!("{}{path}", idp.issuer()))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn key_generation_is_fast_enough() {
    // Measured, not asserted tightly: RSA-2048 generation time varies with
    // luck in the prime search. Deps are built at opt-level 2.
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        DevKey::generate(DevAlg::Rs256).unwrap();
        times.push(t.elapsed().as_millis());
    }
    let t = Instant::now();
    DevKey::generate(DevAlg::Es256).unwrap();
    let ec = t.elapsed().as_micros();
    eprintln!("RSA-2048 keygen ms: {times:?}; P-256 keygen µs: {ec}");
    let t = Instant::now();
    let i = idp().await;
    eprintln!("DevIdp::start: {} ms", t.elapsed().as_millis());
    drop(i);
    assert!(times.iter().all(|&ms| ms < 20_000));
}

#[tokio::test]
async fn refuses_non_loopback_bind() {
    let r = DevIdp::start("0.0.0.0:0".parse().unwrap(), DevIdpOptions::default()).await;
    assert!(matches!(r, Err(DevIdpError::NotLoopback(_))));
}

#[tokio::test]
async fn discovery_and_jwks() {
    let idp = idp().await;
    assert!(idp.issuer().starts_with("http://127.0.0.1:"));
    let d: Value = http()
        .get(format!("{}/.well-known/openid-configuration", idp.issuer()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["issuer"], idp.issuer());
    assert_eq!(d["jwks_uri"], idp.jwks_uri());
    assert_eq!(d["token_endpoint"], format!("{}/token", idp.issuer()));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(d["response_types_supported"], json!(["code"]));

    assert_eq!(idp.jwks_fetch_count(), 0);
    let j: Value = http()
        .get(d["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(idp.jwks_fetch_count(), 1);
    let keys = j["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let rsa = keys.iter().find(|k| k["kty"] == "RSA").unwrap();
    assert_eq!(rsa["alg"], "RS256");
    assert_eq!(rsa["use"], "sig");
    assert_eq!(rsa["e"], "AQAB");
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(rsa["n"].as_str().unwrap())
            .unwrap()
            .len(),
        256
    );
    let ec = keys.iter().find(|k| k["kty"] == "EC").unwrap();
    assert_eq!(ec["crv"], "P-256");
    assert_eq!(ec["alg"], "ES256");
    assert_eq!(ec["kid"], idp.current_kid(DevAlg::Es256));
    // Every key must parse with jsonwebtoken's own JWK type.
    for k in keys {
        let jwk: Jwk = serde_json::from_value(k.clone()).unwrap();
        DecodingKey::from_jwk(&jwk).unwrap();
    }
}

#[tokio::test]
async fn signed_tokens_verify_against_served_jwks() {
    let idp = idp().await;
    let aud = idp.options().audience.clone();
    for alg in [DevAlg::Rs256, DevAlg::Es256] {
        let claims = idp.claims("alice", Some(&["dba", "ops"]), 600);
        let t = idp.sign(alg, &claims);
        let h = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(h.kid.as_deref(), Some(idp.current_kid(alg).as_str()));
        assert_eq!(h.typ.as_deref(), Some("JWT"));
        let c = verify(&idp, &t, &aud).await.unwrap();
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["groups"], json!(["dba", "ops"]));
        assert_eq!(c["client_id"], idp.options().client_id);
        assert!(c["jti"].is_string());
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
    }
    // token(): RS256, and negative ttl gives an expired token.
    let expired = idp.token("bob", &[], -120);
    let e = verify(&idp, &expired, &aud).await.unwrap_err();
    assert!(matches!(
        e.kind(),
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
    ));
    // Wrong audience is detectable.
    assert!(verify(&idp, &idp.token("bob", &[], 60), "other")
        .await
        .is_err());
    // A tampered payload fails.
    let t = idp.token("bob", &[], 60);
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = URL_SAFE_NO_PAD
        .encode(json!({"sub":"root","iss":idp.issuer(),"aud":aud,"exp":now_secs()+60}).to_string());
    parts[1] = &forged;
    assert!(verify(&idp, &parts.join("."), &aud).await.is_err());
}

#[tokio::test]
async fn forged_headers_and_unsigned() {
    let idp = idp().await;
    let claims = idp.claims("eve", None, 60);
    // Default groups come from default_claims.
    assert_eq!(claims["groups"], json!(["demo"]));
    let t = idp.sign_with_header(
        &json!({"alg":"RS256","kid":"no-such-kid","typ":"at+jwt"}),
        &claims,
        DevAlg::Rs256,
    );
    let h = jsonwebtoken::decode_header(&t).unwrap();
    assert_eq!(h.kid.as_deref(), Some("no-such-kid"));
    assert_eq!(h.typ.as_deref(), Some("at+jwt"));
    assert!(verify(&idp, &t, &idp.options().audience).await.is_err());

    let u = DevIdp::unsigned(&json!({"alg":"none"}), &claims);
    assert!(u.ends_with('.'));
    assert_eq!(u.split('.').count(), 3);
    let hdr: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(u.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(hdr, json!({"alg":"none"}));
}

#[tokio::test]
async fn rotation_changes_jwks() {
    let idp = idp().await;
    let aud = idp.options().audience.clone();
    let old = idp.current_kid(DevAlg::Rs256);
    let old_token = idp.token("alice", &[], 60);
    let new = idp.rotate(DevAlg::Rs256);
    assert_ne!(old, new);
    assert_eq!(idp.current_kid(DevAlg::Rs256), new);
    let kids = |j: &Value| -> Vec<String> {
        j["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kids(&idp.jwks()).len(), 3);
    // Both old and new tokens verify while both keys are published.
    verify(&idp, &old_token, &aud).await.unwrap();
    let new_token = idp.token("alice", &[], 60);
    verify(&idp, &new_token, &aud).await.unwrap();
    assert!(idp.remove_key(&old));
    assert!(!idp.remove_key(&old));
    assert!(!kids(&idp.jwks()).contains(&old));
    assert!(verify(&idp, &old_token, &aud).await.is_err());
    verify(&idp, &new_token, &aud).await.unwrap();
    // Withdrawing the current key: it still signs, but nobody can verify it.
    assert!(idp.remove_key(&new));
    let orphan = idp.token("alice", &[], 60);
    assert!(verify(&idp, &orphan, &aud).await.is_err());
    let es = idp.rotate(DevAlg::Es256);
    assert!(kids(&idp.jwks()).contains(&es));
    // One fetch per verify() above; rotate/remove/jwks() do not count.
    assert_eq!(idp.jwks_fetch_count(), 5);
}

#[tokio::test]
async fn device_flow() {
    let idp = idp().await;
    let cid = idp.options().client_id.clone();
    let (st, d) = post_form(
        &idp,
        "/device",
        &[
            ("client_id", &cid),
            ("scope", "openid offline_access"),
            ("login_hint", "carol"),
        ],
    )
    .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["interval"], 1);
    assert_eq!(
        d["verification_uri"],
        format!("{}/verify-device", idp.issuer())
    );
    let uc = d["user_code"].as_str().unwrap();
    assert_eq!(uc.len(), 9);
    let code = d["device_code"].as_str().unwrap().to_string();

    let (st, t) = post_form(
        &idp,
        "/token",
        &[
            ("grant_type", DEVICE_GRANT_URN),
            ("device_code", &code),
            ("client_id", &cid),
        ],
    )
    .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    let c = verify(
        &idp,
        t["access_token"].as_str().unwrap(),
        &idp.options().audience,
    )
    .await
    .unwrap();
    assert_eq!(c["sub"], "carol");
    assert_eq!(c["scope"], "openid offline_access");
    assert_eq!(c["groups"], json!(["demo"]));
    let id = verify(&idp, t["id_token"].as_str().unwrap(), &cid)
        .await
        .unwrap();
    assert_eq!(id["sub"], "carol");

    // Single use.
    let (st, e) = post_form(
        &idp,
        "/token",
        &[
            ("grant_type", DEVICE_GRANT_URN),
            ("device_code", &code),
            ("client_id", &cid),
        ],
    )
    .await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));

    // Refresh grant works, rotates the refresh token, and is single use too.
    let rt = t["refresh_token"].as_str().unwrap().to_string();
    let (st, r) = post_form(
        &idp,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", &cid),
        ],
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_ne!(r["refresh_token"], json!(rt));
    let c = verify(
        &idp,
        r["access_token"].as_str().unwrap(),
        &idp.options().audience,
    )
    .await
    .unwrap();
    assert_eq!(c["sub"], "carol");
    let (st, e) = post_form(
        &idp,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", &cid),
        ],
    )
    .await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));

    // Default principal without login_hint; unknown client refused.
    let (_, d) = post_form(&idp, "/device", &[("client_id", &cid)]).await;
    let (_, t) = post_form(
        &idp,
        "/token",
        &[
            ("grant_type", DEVICE_GRANT_URN),
            ("device_code", d["device_code"].as_str().unwrap()),
            ("client_id", &cid),
        ],
    )
    .await;
    let c = verify(
        &idp,
        t["access_token"].as_str().unwrap(),
        &idp.options().audience,
    )
    .await
    .unwrap();
    assert_eq!(c["sub"], "demo-user");
    let (st, e) = post_form(&idp, "/device", &[("client_id", "intruder")]).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_client")));
}

const DEVICE_GRANT_URN: &str = "urn:ietf:params:oauth:grant-type:device_code";

async fn authorize(idp: &DevIdp, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut u = url::Url::parse(&format!("{}/authorize", idp.issuer())).unwrap();
    u.query_pairs_mut().extend_pairs(extra);
    http().get(u).send().await.unwrap()
}

fn location(r: &reqwest::Response) -> url::Url {
    url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap()
}

fn qp(u: &url::Url, k: &str) -> Option<String> {
    u.query_pairs()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn auth_code_pkce_flow() {
    let idp = idp().await;
    let cid = idp.options().client_id.clone();
    let redirect = "http://localhost:27097/redirect";
    let (verifier, challenge) = pkce();
    let r = authorize(
        &idp,
        &[
            ("response_type", "code"),
            ("client_id", &cid),
            ("redirect_uri", redirect),
            ("state", "st8"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("nonce", "n0nce"),
            ("scope", "openid offline_access"),
            ("login_hint", "dave"),
        ],
    )
    .await;
    assert_eq!(r.status().as_u16(), 307);
    let loc = location(&r);
    assert!(loc.as_str().starts_with(redirect));
    assert_eq!(qp(&loc, "state").as_deref(), Some("st8"));
    let code = qp(&loc, "code").unwrap();

    let exchange = |code: String, verifier: String| {
        let idp = &idp;
        let cid = cid.clone();
        async move {
            post_form(
                idp,
                "/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", redirect),
                    ("client_id", &cid),
                    ("code_verifier", &verifier),
                ],
            )
            .await
        }
    };
    let (st, t) = exchange(code.clone(), verifier.clone()).await;
    assert_eq!(st, 200, "{t}");
    let c = verify(
        &idp,
        t["access_token"].as_str().unwrap(),
        &idp.options().audience,
    )
    .await
    .unwrap();
    assert_eq!(c["sub"], "dave");
    let id = verify(&idp, t["id_token"].as_str().unwrap(), &cid)
        .await
        .unwrap();
    assert_eq!(id["nonce"], "n0nce");
    assert_eq!(id["aud"], json!(cid));

    // Reused code.
    let (st, e) = exchange(code, verifier).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));

    // Wrong verifier, and the code is spent by the failed attempt.
    let (_, challenge) = pkce();
    let r = authorize(
        &idp,
        &[
            ("response_type", "code"),
            ("client_id", &cid),
            ("redirect_uri", redirect),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    let loc = location(&r);
    assert_eq!(qp(&loc, "state"), None);
    let code = qp(&loc, "code").unwrap();
    let (other_verifier, _) = pkce();
    let (st, e) = exchange(code.clone(), other_verifier).await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{e}"
    );
    assert_eq!(e["error_description"], "PKCE verification failed");
}

#[tokio::test]
async fn authorize_refusals() {
    let idp = idp().await;
    let cid = idp.options().client_id.clone();
    let (_, challenge) = pkce();
    // Unknown client / foreign redirect: 400 JSON, never a redirect.
    let r = authorize(
        &idp,
        &[
            ("response_type", "code"),
            ("client_id", "x"),
            ("redirect_uri", "http://localhost/cb"),
        ],
    )
    .await;
    assert_eq!(r.status().as_u16(), 400);
    let r = authorize(
        &idp,
        &[
            ("response_type", "code"),
            ("client_id", &cid),
            ("redirect_uri", "https://evil.example/cb"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "invalid_request");
    // Missing PKCE or plain method: redirected back with an error.
    for extra in [
        vec![],
        vec![
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "plain"),
        ],
    ] {
        let mut q = vec![
            ("response_type", "code"),
            ("client_id", cid.as_str()),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("state", "s"),
        ];
        q.extend(extra);
        let r = authorize(&idp, &q).await;
        assert_eq!(r.status().as_u16(), 307);
        let loc = location(&r);
        assert_eq!(qp(&loc, "error").as_deref(), Some("invalid_request"));
        assert_eq!(qp(&loc, "state").as_deref(), Some("s"));
        assert_eq!(qp(&loc, "code"), None);
    }
    let r = authorize(
        &idp,
        &[
            ("response_type", "token"),
            ("client_id", &cid),
            ("redirect_uri", "http://[::1]:9/cb"),
        ],
    )
    .await;
    assert_eq!(
        qp(&location(&r), "error").as_deref(),
        Some("unsupported_response_type")
    );
    let r = authorize(
        &idp,
        &[
            ("client_id", &cid),
            ("redirect_uri", "http://localhost:9/cb"),
        ],
    )
    .await;
    assert_eq!(
        qp(&location(&r), "error").as_deref(),
        Some("invalid_request")
    );
    // Repeated parameters are refused outright.
    let r = http()
        .get(format!(
            "{}/authorize?client_id={cid}&client_id={cid}&redirect_uri=http://localhost:9/cb",
            idp.issuer()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn token_endpoint_bad_requests() {
    let idp = idp().await;
    let cid = idp.options().client_id.clone();
    for (form, want) in [
        (vec![("code", "x")], "invalid_request"),
        (vec![("grant_type", "password")], "unsupported_grant_type"),
        (
            vec![("grant_type", "authorization_code")],
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", "nope"),
                ("client_id", &cid),
            ],
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", DEVICE_GRANT_URN),
                ("device_code", "nope"),
                ("client_id", &cid),
            ],
            "invalid_grant",
        ),
        (
            vec![("grant_type", "refresh_token"), ("client_id", &cid)],
            "invalid_request",
        ),
    ] {
        let (st, e) = post_form(&idp, "/token", &form).await;
        assert_eq!(st, 400, "{form:?}");
        assert_eq!(e["error"], want, "{form:?}");
        assert!(e["error_description"].is_string());
    }
    // Wrong content type: JSON instead of a form.
    let r = http()
        .post(format!("{}/token", idp.issuer()))
        .json(&json!({"grant_type": "refresh_token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "invalid_request");
    // Repeated parameter.
    let r = http()
        .post(format!("{}/token", idp.issuer()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=refresh_token&grant_type=password")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Oversized body: refused without reading it all into memory.
    let r = http()
        .post(format!("{}/token", idp.issuer()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 1 << 20])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
}

#[tokio::test]
async fn demo_token_endpoint() {
    let idp = idp().await;
    let aud = idp.options().audience.clone();
    let get = |q: &str| {
        let u = format!("{}/demo/token?{q}", idp.issuer());
        async move { http().get(u).send().await.unwrap() }
    };
    let r = get("sub=alice&groups=a,b&ttl=120&alg=ES256").await;
    assert_eq!(r.status().as_u16(), 200);
    let t = r.text().await.unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().alg,
        Algorithm::ES256
    );
    let c = verify(&idp, &t, &aud).await.unwrap();
    assert_eq!(
        (c["sub"].clone(), c["groups"].clone()),
        (json!("alice"), json!(["a", "b"]))
    );
    let t = get("").await.text().await.unwrap();
    let c = verify(&idp, &t, &aud).await.unwrap();
    assert_eq!(
        (c["sub"].clone(), c["groups"].clone()),
        (json!("demo-user"), json!(["demo"]))
    );
    let t = get("groups=").await.text().await.unwrap();
    assert_eq!(verify(&idp, &t, &aud).await.unwrap()["groups"], json!([]));
    let t = get("aud=elsewhere").await.text().await.unwrap();
    assert!(verify(&idp, &t, &aud).await.is_err());
    for q in ["alg=HS256", "ttl=abc", "ttl=99999999999999", "alg=none"] {
        let r = get(q).await;
        assert_eq!(r.status().as_u16(), 400, "{q}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "invalid_request");
    }
}

#[tokio::test]
async fn shutdown_releases_port() {
    let first = idp().await;
    let addr = first.local_addr();
    first.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // Drop stops it too.
    let idp2 = idp().await;
    let addr = idp2.local_addr();
    drop(idp2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Manual checks against real clients (mongosh's oidc-plugin, curl):
/// `DEVIDP_SERVE_SECS=300 DEVIDP_ISSUER_FILE=/tmp/issuer cargo test --lib
/// devidp::tests::serve_for_manual_checks -- --ignored --nocapture`
#[tokio::test]
#[ignore = "serves until DEVIDP_SERVE_SECS pass; for manual client checks"]
async fn serve_for_manual_checks() {
    let secs: u64 = std::env::var("DEVIDP_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let ttl: i64 = std::env::var("DEVIDP_TTL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600);
    let idp = DevIdp::start(
        LOCAL.parse().unwrap(),
        DevIdpOptions {
            token_ttl_secs: ttl,
            ..DevIdpOptions::default()
        },
    )
    .await
    .unwrap();
    eprintln!("issuer: {}", idp.issuer());
    if let Ok(f) = std::env::var("DEVIDP_ISSUER_FILE") {
        std::fs::write(f, idp.issuer()).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    eprintln!("jwks fetches: {}", idp.jwks_fetch_count());
}
