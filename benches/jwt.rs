//! JWT verification cost: the full pipeline with a cached key against bare
//! `jsonwebtoken::crypto::verify` (RS256, ES256), and the registry's
//! verified-token cache hit against a miss.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mongo_oidc_proxy::auth::jwks::{parse_jwks, KeySet};
use mongo_oidc_proxy::auth::jwt::{self, ClaimRules};
use mongo_oidc_proxy::auth::IdpRegistry;
use mongo_oidc_proxy::config::IdentityProviderConfig;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

const NOW: u64 = 1_700_000_000;
const ISS: &str = "http://127.0.0.1";
const AUD: &str = "api://mongodb";

struct Signer {
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Value,
}

fn rsa_signer() -> Signer {
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    Signer {
        alg: Algorithm::RS256,
        enc: EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes()),
        jwk: json!({"kty": "RSA", "kid": "rs", "n": B64.encode(key.n().to_bytes_be()),
            "e": B64.encode(key.e().to_bytes_be())}),
    }
}

fn ec_signer() -> Signer {
    let key = p256::SecretKey::random(&mut rand::thread_rng());
    let point = key.public_key().to_encoded_point(false);
    Signer {
        alg: Algorithm::ES256,
        enc: EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes()),
        jwk: json!({"kty": "EC", "kid": "es", "crv": "P-256",
            "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap())}),
    }
}

fn token(s: &Signer, issuer: &str, sub: &str) -> String {
    let mut header = Header::new(s.alg);
    header.kid = s.jwk["kid"].as_str().map(String::from);
    let claims = json!({"iss": issuer, "sub": sub, "aud": AUD, "exp": NOW + 3600,
        "groups": ["dba", "readers"]});
    jsonwebtoken::encode(&header, &claims, &s.enc).unwrap()
}

fn config(issuer: &str) -> IdentityProviderConfig {
    IdentityProviderConfig {
        issuer: issuer.into(),
        audience: AUD.into(),
        auth_name_prefix: "okta".into(),
        client_id: None,
        jwks_uri: None,
        match_pattern: None,
        request_scopes: vec![],
        principal_name: "sub".into(),
        authorization_claim: "groups".into(),
        use_authorization_claim: true,
        supports_human_flows: false,
        jwks_poll_secs: 0,
        jwks_min_quiesce_secs: 60,
        log_claims: vec!["iss".into(), "sub".into()],
        tls_ca_file: None,
        jwks_fetch_timeout_secs: 5,
    }
}

/// Everything `IdpRegistry::verify` does after the key lookup.
fn full_verify(tok: &str, keys: &KeySet, rules: &ClaimRules<'_>) {
    let jws = jwt::split(tok, jwt::DEFAULT_MAX_TOKEN_SIZE).unwrap();
    let hb = jws.decode_header().unwrap();
    let header = jwt::parse_header(&hb).unwrap();
    let pb = jws.decode_payload().unwrap();
    let claims = jwt::parse_claims(&pb).unwrap();
    let key = keys.get(&header.kid).unwrap();
    jwt::verify_signature(&jws, header.alg, key).unwrap();
    jwt::check_claims(&claims, rules, 0, NOW).unwrap();
}

fn bench_verify(c: &mut Criterion) {
    let cfg = config(ISS);
    let rules = ClaimRules::from_config(&cfg);
    for signer in [rsa_signer(), ec_signer()] {
        let keys = parse_jwks(json!({"keys": [signer.jwk]}).to_string().as_bytes()).unwrap();
        let tok = token(&signer, ISS, "alice");
        let (input, sig) = tok.rsplit_once('.').unwrap();
        let key = keys.iter().next().unwrap().clone();
        let name = format!("{:?}", signer.alg);
        c.bench_function(&format!("{name}/full_verify_cached_key"), |b| {
            b.iter(|| full_verify(&tok, &keys, &rules))
        });
        c.bench_function(&format!("{name}/bare_crypto_verify"), |b| {
            b.iter(|| {
                assert!(jsonwebtoken::crypto::verify(
                    sig,
                    input.as_bytes(),
                    &key.decoding,
                    signer.alg
                )
                .unwrap())
            })
        });
    }
}

/// A registry whose issuer is a local JWKS server, keys loaded.
fn registry(rt: &tokio::runtime::Runtime, signer: &Signer) -> (Arc<IdpRegistry>, String) {
    let jwks = json!({"keys": [signer.jwk]}).to_string();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let doc = json!({"issuer": base, "jwks_uri": format!("{base}/jwks")});
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(doc) }),
            )
            .route("/jwks", axum::routing::get(move || async move { jwks }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let r = IdpRegistry::new(&[config(&base)]).unwrap();
        r.load_all().await;
        (Arc::new(r), base)
    })
}

fn bench_token_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let signer = rsa_signer();
    let (r, base) = registry(&rt, &signer);
    let tok = token(&signer, &base, "alice");
    rt.block_on(r.verify_at(&tok, None, NOW)).unwrap();
    c.bench_function("RS256/registry_token_cache_hit", |b| {
        b.iter(|| rt.block_on(r.verify_at(&tok, None, NOW)).unwrap())
    });
    c.bench_function("RS256/registry_token_cache_miss", |b| {
        b.iter(|| {
            r.forget_verified_tokens();
            rt.block_on(r.verify_at(&tok, None, NOW)).unwrap()
        })
    });
}

criterion_group!(benches, bench_verify, bench_token_cache);
criterion_main!(benches);
