//! Tokens shaped as real identity providers document them, signed with test
//! keys and checked through [`IdpRegistry`] with the configuration an operator
//! would write for that IdP (parsed by [`Config::parse`], so every config rule
//! applies too).
//!
//! Each IdP gets two runs:
//! - its real `https://` issuer with `jwks_uri` pointing at a loopback server
//!   that serves the keys at the IdP's own JWKS path (the "direct JWK URI"
//!   configuration; discovery on the real host cannot run in a test);
//! - a loopback issuer with the IdP's path layout (`/oauth2/default`,
//!   `/{tenant}/v2.0`, `/realms/corp`, ...) found through discovery, as an
//!   operator's config without `jwks_uri` does.
//!
//! Sources for the shapes: Okta "Access token" reference (custom authorization
//! server), Microsoft identity platform "Access token claims reference" (v2.0),
//! Google "Verify a Google ID token" / metadata-server identity tokens,
//! Keycloak server admin guide (realm tokens, group membership mapper),
//! PingOne "Access tokens" reference, and `@mongodb-js/oidc-mock-provider`
//! 0.13.18.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{StatusCode, Uri};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use super::idp::{IdpRegistry, Step1};
use super::jwks::testkit::{client, rsa_key, sign_raw, TestKey};
use super::{AuthFailure, Identity};
use crate::config::Config;

const NOW: u64 = 1_700_000_000;

/// A loopback HTTP server answering fixed paths with fixed JSON bodies.
struct Site {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Site {
    /// Binds first, so `routes` can name the server's own base URL.
    async fn start(routes: impl FnOnce(&str) -> Vec<(String, Value)>) -> Site {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let bodies: Arc<HashMap<String, String>> = Arc::new(
            routes(&base)
                .into_iter()
                .map(|(p, v)| (p, v.to_string()))
                .collect(),
        );
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let counted = hits.clone();
        let app = axum::Router::new().fallback(move |uri: Uri| {
            let (bodies, hits) = (bodies.clone(), counted.clone());
            async move {
                let path = uri.path().to_string();
                *hits.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                match bodies.get(&path) {
                    Some(body) => (StatusCode::OK, body.clone()),
                    None => (StatusCode::NOT_FOUND, String::new()),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Site { base, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// One IdP's documented shape.
struct Shape {
    name: &'static str,
    /// The real issuer.
    issuer: &'static str,
    /// The issuer's path (`""` for a bare host), for the discovery run.
    issuer_path: &'static str,
    /// Where the IdP publishes its keys (path part).
    keys_path: &'static str,
    key: TestKey,
    /// Members the IdP adds to each JWK, besides kty/kid/n/e.
    jwk_extra: Value,
    /// The JOSE header exactly as the IdP writes it.
    header: Value,
    /// The access token's claims; `iss` is filled in per run.
    claims: Value,
    /// The `[[identity_provider]]` fields after issuer (and jwks_uri).
    config: &'static str,
    user: &'static str,
    roles: &'static [&'static str],
}

impl Shape {
    fn jwk(&self) -> Value {
        let mut jwk = self.key.jwk.clone();
        if let (Some(jwk), Some(extra)) = (jwk.as_object_mut(), self.jwk_extra.as_object()) {
            for (k, v) in extra {
                // null: the IdP leaves out a member the test key has ("use").
                if v.is_null() {
                    jwk.remove(k);
                } else {
                    jwk.insert(k.clone(), v.clone());
                }
            }
        }
        jwk
    }

    fn token_for(&self, iss: &str, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.claims.clone();
        claims["iss"] = json!(iss);
        edit(&mut claims);
        sign_raw(
            &self.key,
            self.key.alg,
            &self.header.to_string(),
            &claims.to_string(),
        )
    }

    /// Serves the discovery document at `{issuer_path}/.well-known/...` and
    /// the keys at `keys_path`.
    async fn site(&self) -> Site {
        let jwks = json!({ "keys": [self.jwk()] });
        let (issuer_path, keys_path) = (self.issuer_path, self.keys_path);
        Site::start(|base| {
            vec![
                (
                    format!("{issuer_path}/.well-known/openid-configuration"),
                    json!({"issuer": format!("{base}{issuer_path}"),
                           "jwks_uri": format!("{base}{keys_path}")}),
                ),
                (keys_path.to_string(), jwks),
            ]
        })
        .await
    }
}

/// A whole proxy config around one IdP table, as `Config::parse` sees it.
fn registry(idp_tables: &str) -> IdpRegistry {
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert = \"s.pem\"\ntls_key = \"s.key\"\n\
         [backend]\nuri = \"mongodb://127.0.0.1:27018/\"\n\n{idp_tables}\n\
         [[grant]]\nuser = \"x\"\nbackend_user = \"app\"\nbackend_password_env = \"P\"\n"
    );
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    IdpRegistry::with_client(&config.identity_provider, client()).unwrap()
}

/// The operator's config with the real issuer and a direct `jwks_uri`.
async fn with_jwks_uri(shape: &Shape, site: &Site) -> IdpRegistry {
    let r = registry(&format!(
        "[[identity_provider]]\nissuer = {:?}\njwks_uri = \"{}{}\"\n{}",
        shape.issuer, site.base, shape.keys_path, shape.config
    ));
    r.load_all().await;
    r
}

/// The operator's config without `jwks_uri`, the issuer on loopback.
async fn with_discovery(shape: &Shape, site: &Site) -> (IdpRegistry, String) {
    let issuer = format!("{}{}", site.base, shape.issuer_path);
    let r = registry(&format!(
        "[[identity_provider]]\nissuer = {issuer:?}\n{}",
        shape.config
    ));
    r.load_all().await;
    (r, issuer)
}

fn expect(shape: &Shape, id: &Identity) {
    assert_eq!(id.user, shape.user, "{}", shape.name);
    assert_eq!(id.roles, shape.roles, "{}", shape.name);
    assert_eq!(id.expires_at, NOW + 3600, "{}", shape.name);
}

/// Both runs succeed with the expected identity; returns the direct-URI
/// registry for the shape's own refusal.
async fn accepted(shape: &Shape) -> IdpRegistry {
    let site = shape.site().await;
    let r = with_jwks_uri(shape, &site).await;
    let token = shape.token_for(shape.issuer, |_| {});
    let id = r.verify_at(&token, None, NOW).await.unwrap();
    expect(shape, &id);
    assert_eq!(site.hits(shape.keys_path), 1, "{}", shape.name);

    let (d, issuer) = with_discovery(shape, &site).await;
    let id = d
        .verify_at(&shape.token_for(&issuer, |_| {}), None, NOW)
        .await
        .unwrap_or_else(|e| panic!("{} via discovery: {e}", shape.name));
    expect(shape, &id);
    let well_known = format!("{}/.well-known/openid-configuration", shape.issuer_path);
    assert_eq!(site.hits(&well_known), 1, "{}", shape.name);
    r
}

fn okta() -> Shape {
    let key = rsa_key(
        "eY6Cyq7-tSdwuIuX8RwFQ9JjKQx6iVu6EWq1hj4q5YE",
        Algorithm::RS256,
    );
    Shape {
        name: "Okta custom authorization server",
        issuer: "https://dev-123.okta.com/oauth2/default",
        issuer_path: "/oauth2/default",
        keys_path: "/oauth2/default/v1/keys",
        header: json!({"kid": key.kid, "alg": "RS256"}),
        jwk_extra: json!({"alg": "RS256", "use": "sig"}),
        claims: json!({
            "ver": 1,
            "jti": "AT.6mVt2Bv4pmO1vGeIaFqgkMZ8bPOxeSs0kNrBT5zlK6I",
            "aud": "api://default",
            "iat": NOW - 60,
            "exp": NOW + 3600,
            "cid": "0oa1abcdEFGH2345ijk6",
            "uid": "00u1abcdEFGH2345ijk6",
            "scp": ["openid", "profile", "mongodb"],
            "auth_time": NOW - 120,
            "sub": "alice@example.com",
            "groups": ["Everyone", "mongodb-dba"]
        }),
        key,
        config: "audience = \"api://default\"\nauth_name_prefix = \"okta\"\n\
                 client_id = \"0oa1abcdEFGH2345ijk6\"\nrequest_scopes = [\"mongodb\"]\n\
                 match_pattern = \"@example\\\\.com$\"\n",
        user: "okta/alice@example.com",
        roles: &["okta/Everyone", "okta/mongodb-dba"],
    }
}

const TENANT: &str = "c96563a8-841b-4ef9-af16-33548de0c958";
const ENTRA_APP: &str = "e3ba89aa-c1f5-4a13-a4b9-1f1b7e3a1b8d";

fn entra() -> Shape {
    let key = rsa_key("nOo3ZDrODXEK1jKWhXslHR_KXEg", Algorithm::RS256);
    Shape {
        name: "Microsoft Entra ID v2",
        issuer: "https://login.microsoftonline.com/c96563a8-841b-4ef9-af16-33548de0c958/v2.0",
        issuer_path: "/c96563a8-841b-4ef9-af16-33548de0c958/v2.0",
        keys_path: "/c96563a8-841b-4ef9-af16-33548de0c958/discovery/v2.0/keys",
        header: json!({"typ": "JWT", "alg": "RS256", "x5t": key.kid, "kid": key.kid}),
        jwk_extra: json!({"use": "sig", "x5t": key.kid,
            "x5c": ["MIIC/jCCAeagAwIBAgIJAOCJOVRxNKcNMA0GCSqGSIb3DQEBCwUAMC0xKzApBgNVBAMTImFjY291bnRzLmFjY2Vzc2NvbnRyb2wud2luZG93cy5uZXQ="],
            "issuer": format!("https://login.microsoftonline.com/{TENANT}/v2.0")}),
        claims: json!({
            "aud": ENTRA_APP,
            "iat": NOW - 300,
            "nbf": NOW - 300,
            "exp": NOW + 3600,
            "aio": "AXQAi/8UAAAA",
            "azp": "6e74172b-be56-4843-9ff4-e66a39bb12e3",
            "azpacr": "0",
            "groups": ["0b2a5ee7-9b58-4a26-9e1b-0f3e9b9a3d11", "f27ac1ef-3d6c-4d5f-9b3a-62b0e2b0a9c4"],
            "name": "Alice Example",
            "oid": "690222be-ff1a-4d56-abd1-7e4f7d38e474",
            "preferred_username": "alice@contoso.com",
            "rh": "I",
            "scp": "access_as_user",
            "sub": "MF4f-ggWMEji12KynJUNQZphaUTvLcQug5jdF2nl01Q",
            "tid": TENANT,
            "upn": "alice@contoso.com",
            "uti": "fqiBqXLPj0eQa82S-IYFAA",
            "ver": "2.0"
        }),
        key,
        config:
            "audience = \"e3ba89aa-c1f5-4a13-a4b9-1f1b7e3a1b8d\"\nauth_name_prefix = \"entra\"\n\
                 client_id = \"6e74172b-be56-4843-9ff4-e66a39bb12e3\"\n\
                 request_scopes = [\"api://e3ba89aa-c1f5-4a13-a4b9-1f1b7e3a1b8d/access_as_user\"]\n\
                 principal_name = \"upn\"\nmatch_pattern = \"@contoso\\\\.com$\"\n",
        user: "entra/alice@contoso.com",
        roles: &[
            "entra/0b2a5ee7-9b58-4a26-9e1b-0f3e9b9a3d11",
            "entra/f27ac1ef-3d6c-4d5f-9b3a-62b0e2b0a9c4",
        ],
    }
}

fn google() -> Shape {
    let key = rsa_key("6f7254101f56e41cf35c9926de84a2d552b4c6f1", Algorithm::RS256);
    Shape {
        name: "Google workload identity",
        issuer: "https://accounts.google.com",
        issuer_path: "",
        keys_path: "/oauth2/v3/certs",
        header: json!({"alg": "RS256", "kid": key.kid, "typ": "JWT"}),
        jwk_extra: json!({"alg": "RS256", "use": "sig"}),
        claims: json!({
            "aud": "mongodb://prod-cluster",
            "azp": "113774264463038321964",
            "email": "mongo-client@my-project.iam.gserviceaccount.com",
            "email_verified": true,
            "exp": NOW + 3600,
            "iat": NOW,
            "sub": "113774264463038321964"
        }),
        key,
        config: "audience = \"mongodb://prod-cluster\"\nauth_name_prefix = \"gcp\"\n\
                 supports_human_flows = false\nuse_authorization_claim = false\n\
                 log_claims = [\"iss\", \"sub\", \"email\"]\n",
        user: "gcp/113774264463038321964",
        roles: &[],
    }
}

fn keycloak() -> Shape {
    let key = rsa_key("Q2h0b3B0bWFnaWNLZXlJZA", Algorithm::RS256);
    Shape {
        name: "Keycloak",
        issuer: "https://kc.example.com/realms/corp",
        issuer_path: "/realms/corp",
        keys_path: "/realms/corp/protocol/openid-connect/certs",
        header: json!({"alg": "RS256", "typ": "JWT", "kid": key.kid}),
        jwk_extra: json!({"use": "sig", "alg": "RS256", "x5t": "x5tThumbprint",
            "x5t#S256": "x5tS256Thumbprint", "x5c": ["MIICmzCCAYMCBgGM"]}),
        claims: json!({
            "exp": NOW + 3600,
            "iat": NOW - 10,
            "auth_time": NOW - 20,
            "jti": "onrtac:4f7b2c8e-0d5b-4a7c-9d33-6f0a1b2c3d4e",
            "aud": ["mongodb", "account"],
            "sub": "8a5c6f1e-2b3d-4e5f-9a8b-7c6d5e4f3a2b",
            "typ": "Bearer",
            "azp": "mongodb-cli",
            "sid": "d3c8f1a2-7b6e-4c5d-8e9f-0a1b2c3d4e5f",
            "acr": "1",
            "allowed-origins": ["/*"],
            "realm_access": {"roles": ["offline_access", "uma_authorization", "default-roles-corp"]},
            "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
            "scope": "openid profile email",
            "email_verified": true,
            "name": "Alice Example",
            "groups": ["dba", "readers"],
            "preferred_username": "alice",
            "given_name": "Alice",
            "family_name": "Example",
            "email": "alice@corp.example"
        }),
        key,
        config: "audience = \"mongodb\"\nauth_name_prefix = \"kc\"\nclient_id = \"mongodb-cli\"\n\
                 principal_name = \"preferred_username\"\nmatch_pattern = \"^[a-z]+$\"\n",
        user: "kc/alice",
        roles: &["kc/dba", "kc/readers"],
    }
}

fn ping() -> Shape {
    let key = rsa_key("default", Algorithm::RS256);
    Shape {
        name: "PingOne",
        issuer: "https://auth.pingone.com/5f3c9a2e-1b4d-4c6e-8f7a-9b0c1d2e3f4a/as",
        issuer_path: "/5f3c9a2e-1b4d-4c6e-8f7a-9b0c1d2e3f4a/as",
        keys_path: "/5f3c9a2e-1b4d-4c6e-8f7a-9b0c1d2e3f4a/as/jwks",
        header: json!({"kid": key.kid, "alg": "RS256"}),
        jwk_extra: json!({"use": "sig", "alg": "RS256", "x5t": "pingX5t"}),
        claims: json!({
            "client_id": "7d4e2f1a-3b5c-4d6e-9f8a-0b1c2d3e4f5a",
            "jti": "c9a0b1d2-e3f4-4a5b-8c6d-7e8f9a0b1c2d",
            "iat": NOW,
            "exp": NOW + 3600,
            "aud": ["mongodb-resource"],
            "scope": "mongodb:access",
            "sub": "svc-reporting",
            "env": "5f3c9a2e-1b4d-4c6e-8f7a-9b0c1d2e3f4a",
            "org": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            "groups": ["reporting"]
        }),
        key,
        config: "audience = \"mongodb-resource\"\nauth_name_prefix = \"ping\"\n\
                 supports_human_flows = false\n",
        user: "ping/svc-reporting",
        roles: &["ping/reporting"],
    }
}

/// `@mongodb-js/oidc-mock-provider`: loopback http issuer, discovery at the
/// root, keys at `/jwks` without `use`, a new 16-hex `kid` per start.
fn mock() -> Shape {
    let key = rsa_key("9a3f5e1c7b2d4068", Algorithm::RS256);
    Shape {
        name: "oidc-mock-provider",
        issuer: "http://127.0.0.1:28200",
        issuer_path: "",
        keys_path: "/jwks",
        header: json!({"alg": "RS256", "typ": "JWT", "kid": key.kid}),
        jwk_extra: json!({"alg": "RS256", "use": null}),
        claims: json!({
            "jti": "2eaeffe5e395fc1e",
            "iat": NOW,
            "exp": NOW + 3600,
            "client_id": "test-client",
            "scope": "openid offline_access",
            "aud": "resource-server-audience-value",
            "groups": ["testgroup"],
            "sub": "testuser"
        }),
        key,
        config: "audience = \"resource-server-audience-value\"\nauth_name_prefix = \"mock\"\n\
                 client_id = \"test-client\"\n",
        user: "mock/testuser",
        roles: &["mock/testgroup"],
    }
}

#[tokio::test]
async fn okta_custom_authorization_server() {
    let shape = okta();
    let r = accepted(&shape).await;
    // Step 1 picks Okta by the user name, step 2 checks the principal.
    let idp = r.select_for_hint(Some("alice@example.com")).unwrap();
    let token = shape.token_for(shape.issuer, |_| {});
    let step = |hint| Some(Step1 { idp, hint });
    assert!(r
        .verify_at(&token, step(Some("alice@example.com")), NOW)
        .await
        .is_ok());
    // A token of the org authorization server (no /oauth2/...) is another issuer.
    let org = shape.token_for("https://dev-123.okta.com", |c| {
        c["aud"] = json!("https://dev-123.okta.com");
    });
    assert_eq!(
        r.verify_at(&org, None, NOW).await,
        Err(AuthFailure::Issuer(
            "Unknown Identity Provider 'https://dev-123.okta.com'".into()
        ))
    );
}

#[tokio::test]
async fn entra_id_v2() {
    let shape = entra();
    let r = accepted(&shape).await;
    // A v1 token (sts.windows.net issuer, ver 1.0) against the v2 config.
    let v1 = shape.token_for(&format!("https://sts.windows.net/{TENANT}/"), |c| {
        c["ver"] = json!("1.0");
        c["aud"] = json!(format!("api://{ENTRA_APP}"));
    });
    assert_eq!(
        r.verify_at(&v1, None, NOW).await,
        Err(AuthFailure::Issuer(format!(
            "Unknown Identity Provider 'https://sts.windows.net/{TENANT}/'"
        )))
    );
    // An app-only (client credentials) token has no upn.
    let app_only = shape.token_for(shape.issuer, |c| {
        let c = c.as_object_mut().unwrap();
        c.remove("upn");
        c.remove("scp");
        c.insert("roles".into(), json!(["Mongo.Read"]));
    });
    assert_eq!(
        r.verify_at(&app_only, None, NOW).await,
        Err(AuthFailure::Claim(
            "Unable to find principal claim 'upn' in token body".into()
        ))
    );
}

#[tokio::test]
async fn google_workload_identity() {
    let shape = google();
    let r = accepted(&shape).await;
    // An ID token minted for another audience (e.g. another service).
    let other = shape.token_for(shape.issuer, |c| {
        c["aud"] = json!("https://reports.example.com");
    });
    assert_eq!(
        r.verify_at(&other, None, NOW).await,
        Err(AuthFailure::Audience(
            "Unknown audience name 'https://reports.example.com' for Identity Provider 'https://accounts.google.com'".into()
        ))
    );
}

#[tokio::test]
async fn keycloak_realm() {
    let shape = keycloak();
    let r = accepted(&shape).await;
    assert_eq!(r.select_for_hint(Some("alice")), Ok(0));
    // Without the group membership mapper only realm_access.roles is there.
    let no_groups = shape.token_for(shape.issuer, |c| {
        c.as_object_mut().unwrap().remove("groups");
    });
    assert_eq!(
        r.verify_at(&no_groups, None, NOW).await,
        Err(AuthFailure::Claim(
            "Claim 'groups' not found on OIDC token".into()
        ))
    );
    // The mapper with "Full group path" on gives "/dba": kept as is.
    let full_path = shape.token_for(shape.issuer, |c| c["groups"] = json!(["/corp/dba"]));
    assert_eq!(
        r.verify_at(&full_path, None, NOW).await.unwrap().roles,
        ["kc//corp/dba"]
    );
}

#[tokio::test]
async fn pingone() {
    let shape = ping();
    let r = accepted(&shape).await;
    // A token for PingOne's own management API, not for MongoDB.
    let api = shape.token_for(shape.issuer, |c| {
        c["aud"] = json!(["https://api.pingone.com"]);
    });
    assert_eq!(
        r.verify_at(&api, None, NOW).await,
        Err(AuthFailure::Audience(format!(
            "Unknown audience name 'https://api.pingone.com' for Identity Provider '{}'",
            shape.issuer
        )))
    );
}

#[tokio::test]
async fn oidc_mock_provider() {
    let shape = mock();
    let site = shape.site().await;
    // The mock's issuer is loopback http, so its real config uses discovery.
    let (r, issuer) = with_discovery(&shape, &site).await;
    let id = r
        .verify_at(&shape.token_for(&issuer, |_| {}), None, NOW)
        .await
        .unwrap();
    expect(&shape, &id);
    assert_eq!(site.hits("/jwks"), 1);
    assert_eq!(site.hits("/.well-known/openid-configuration"), 1);
    // Its id_token (aud = client_id, with a nonce) sent as the access token.
    let id_token = shape.token_for(&issuer, |c| {
        c["aud"] = json!("test-client");
        c["nonce"] = json!("q8Zb1fd0");
    });
    assert_eq!(
        r.verify_at(&id_token, None, NOW).await,
        Err(AuthFailure::Audience(format!(
            "Unknown audience name 'test-client' for Identity Provider '{issuer}'"
        )))
    );
}

/// All six in one config, as a proxy fronting several IdPs would have them:
/// each token finds its own IdP by (iss, aud), and step 1 picks by user name.
#[tokio::test]
async fn all_shapes_in_one_config() {
    let shapes = [okta(), entra(), keycloak(), mock(), google(), ping()];
    let mut sites = Vec::new();
    let mut tables = String::new();
    for shape in &shapes {
        let site = shape.site().await;
        let mut config = shape.config.to_string();
        if shape.name == "oidc-mock-provider" {
            config.push_str("match_pattern = \"@mock\\\\.example$\"\n");
        }
        tables.push_str(&format!(
            "[[identity_provider]]\nissuer = {:?}\njwks_uri = \"{}{}\"\n{config}\n",
            shape.issuer, site.base, shape.keys_path
        ));
        sites.push(site);
    }
    let r = registry(&tables);
    r.load_all().await;
    for (i, shape) in shapes.iter().enumerate() {
        let id = r
            .verify_at(&shape.token_for(shape.issuer, |_| {}), None, NOW)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", shape.name));
        assert_eq!(id.idp, i, "{}", shape.name);
        expect(shape, &id);
    }
    // Patterns in order; the first IdP without one (Google) takes the rest.
    let hints = [
        ("bob@example.com", 0),
        ("bob@contoso.com", 1),
        ("bob", 2),
        ("bob@mock.example", 3),
        ("svc-reporting", 4),
        ("Bob@Other.example", 4),
    ];
    for (hint, want) in hints {
        assert_eq!(r.select_for_hint(Some(hint)), Ok(want), "{hint}");
    }
    // Keycloak's token carries two audiences; only "mongodb" is configured.
    assert_eq!(shapes[2].claims["aud"], json!(["mongodb", "account"]));
}
