//! HTTP endpoints of the development IdP.
//!
//! Parameters are parsed by hand from the raw query or form body instead of
//! through axum's `Query`/`Form` extractors so that every bad request gets an
//! OAuth error document (`{error, error_description}`, 400) rather than
//! axum's plain-text rejection, and so that repeated parameters are refused
//! (RFC 6749 §3.1: parameters must not appear more than once).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::keys::{b64, random_b64};
use super::{now_secs, DevAlg, Inner};

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Upper bound on each kind of outstanding grant (codes, device codes,
/// refresh tokens): a client looping on /authorize cannot grow memory.
const MAX_PENDING: usize = 1024;
/// Auth codes are exchanged within milliseconds by real clients; RFC 6749
/// recommends at most ten minutes.
const CODE_TTL_SECS: i64 = 120;
const DEVICE_TTL_SECS: i64 = 600;
const REFRESH_TTL_SECS: i64 = 24 * 3600;
/// Bodies are a handful of short form fields.
const MAX_BODY: usize = 16 * 1024;
/// `/demo/token?ttl=` bound (ten years), so `iat + ttl` stays meaningful.
const MAX_TTL: i64 = 10 * 365 * 24 * 3600;

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/device", post(device))
        .route("/verify-device", get(verify_device))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/demo/token", get(demo_token))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(inner)
}

// ---------- errors ----------

pub(crate) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

fn bad(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        status: StatusCode::BAD_REQUEST,
        error,
        description: description.into(),
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        tracing::debug!(error = self.error, description = %self.description, "devidp request refused");
        (
            self.status,
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({ "error": self.error, "error_description": self.description })),
        )
            .into_response()
    }
}

fn server_error(e: String) -> OAuthError {
    OAuthError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        error: "server_error",
        description: e,
    }
}

// ---------- parameters ----------

struct Params(HashMap<String, String>);

impl Params {
    fn parse(raw: &[u8]) -> Result<Params, OAuthError> {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(raw) {
            if map.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(bad("invalid_request", format!("parameter {k} repeated")));
            }
        }
        Ok(Params(map))
    }

    /// A form body; the Content-Type must say so (as real IdPs require).
    fn form(headers: &HeaderMap, body: &[u8]) -> Result<Params, OAuthError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(bad(
                "invalid_request",
                "Content-Type must be application/x-www-form-urlencoded",
            ));
        }
        Params::parse(body)
    }

    /// Present and non-empty (RFC 6749 treats empty parameters as absent).
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn require(&self, k: &str) -> Result<&str, OAuthError> {
        self.get(k)
            .ok_or_else(|| bad("invalid_request", format!("missing parameter {k}")))
    }
}

// ---------- bounded grant store ----------

#[derive(Clone)]
struct Grant {
    client_id: String,
    scope: String,
    sub: String,
    nonce: Option<String>,
    /// Auth-code only.
    redirect_uri: String,
    code_challenge: String,
}

/// Single-use handles (codes, device codes, refresh tokens) with expiry and
/// a size cap; the entry closest to expiry goes first when full, so a flood
/// only ever displaces stale grants' neighbours, never blocks new flows.
#[derive(Default)]
struct Store {
    map: HashMap<String, (i64, Grant)>,
}

enum Taken {
    Missing,
    Expired,
    Found(Grant),
}

impl Store {
    fn insert(&mut self, key: String, expires: i64, g: Grant, now: i64) {
        self.map.retain(|_, (exp, _)| *exp > now);
        while self.map.len() >= MAX_PENDING {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (exp, _))| *exp)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.map.remove(&oldest);
        }
        self.map.insert(key, (expires, g));
    }

    /// Removes on every lookup: a handle is spent by its first use, right or wrong.
    fn take(&mut self, key: &str, now: i64) -> Taken {
        match self.map.remove(key) {
            None => Taken::Missing,
            Some((exp, _)) if exp <= now => Taken::Expired,
            Some((_, g)) => Taken::Found(g),
        }
    }
}

#[derive(Default)]
pub(crate) struct Flows {
    codes: Store,
    devices: Store,
    refresh: Store,
}

impl Inner {
    fn flows(&self) -> std::sync::MutexGuard<'_, Flows> {
        // No invariant spans more than one map operation, so poison is harmless.
        self.flows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// ---------- handlers ----------

async fn discovery(State(s): State<Arc<Inner>>) -> Response {
    let i = &s.issuer;
    Json(json!({
        "issuer": i,
        "jwks_uri": format!("{i}/jwks"),
        "token_endpoint": format!("{i}/token"),
        "authorization_endpoint": format!("{i}/authorize"),
        "device_authorization_endpoint": format!("{i}/device"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "subject_types_supported": ["public"],
        "token_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": ["openid", "offline_access"],
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<Inner>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Json(s.jwks()).into_response()
}

async fn verify_device() -> &'static str {
    "Development IdP: device codes are approved automatically on the first poll; nothing to do here.\n"
}

fn check_client(s: &Inner, p: &Params) -> Result<String, OAuthError> {
    let client_id = p.require("client_id")?;
    if client_id != s.opts.client_id {
        return Err(bad(
            "invalid_client",
            format!("unknown client_id {client_id:?}"),
        ));
    }
    Ok(client_id.to_string())
}

async fn device(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let p = Params::form(&headers, &body)?;
    let client_id = check_client(&s, &p)?;
    let grant = Grant {
        client_id,
        scope: p.get("scope").unwrap_or("openid").to_string(),
        sub: p
            .get("login_hint")
            .unwrap_or(&s.opts.default_sub)
            .to_string(),
        nonce: None,
        redirect_uri: String::new(),
        code_challenge: String::new(),
    };
    let device_code = random_b64(32);
    let now = now_secs();
    s.flows()
        .devices
        .insert(device_code.clone(), now + DEVICE_TTL_SECS, grant, now);
    Ok(Json(json!({
        "device_code": device_code,
        "user_code": user_code(),
        "verification_uri": format!("{}/verify-device", s.issuer),
        "expires_in": DEVICE_TTL_SECS,
        "interval": 1,
    }))
    .into_response())
}

/// `XXXX-XXXX` from consonants only, as RFC 8628 §6.1 suggests (no vowels:
/// no accidental words; no digits: nothing to confuse with letters).
fn user_code() -> String {
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut rng = rand::rngs::OsRng;
    let mut out = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            out.push('-');
        }
        out.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    out
}

/// Only loopback redirect targets: this IdP hands a code to anyone who asks,
/// so it must not be usable to send codes (or users) elsewhere.
fn loopback_redirect(raw: &str) -> Result<url::Url, OAuthError> {
    let u =
        url::Url::parse(raw).map_err(|e| bad("invalid_request", format!("redirect_uri: {e}")))?;
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !matches!(u.scheme(), "http" | "https") || !loopback || u.fragment().is_some() {
        return Err(bad(
            "invalid_request",
            "redirect_uri must be an http(s) URL on a loopback host without a fragment",
        ));
    }
    Ok(u)
}

fn redirect(to: url::Url) -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, to.to_string())],
    )
        .into_response()
}

async fn authorize(
    State(s): State<Arc<Inner>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuthError> {
    let p = Params::parse(q.unwrap_or_default().as_bytes())?;
    // Errors about the client or redirect target are shown here, never
    // redirected (RFC 6749 §4.1.2.1).
    let client_id = check_client(&s, &p)?;
    let redirect_uri = p.require("redirect_uri")?.to_string();
    let mut target = loopback_redirect(&redirect_uri)?;

    // Everything else goes back to the client as `?error=..&state=..`.
    let state = p.get("state").map(str::to_string);
    let fail = |mut to: url::Url, error: &str, description: &str| {
        {
            let mut qp = to.query_pairs_mut();
            qp.append_pair("error", error)
                .append_pair("error_description", description);
            if let Some(st) = &state {
                qp.append_pair("state", st);
            }
        }
        redirect(to)
    };
    match p.get("response_type") {
        Some("code") => {}
        None => return Ok(fail(target, "invalid_request", "missing response_type")),
        Some(_) => {
            return Ok(fail(
                target,
                "unsupported_response_type",
                "only response_type=code",
            ))
        }
    }
    let Some(challenge) = p.get("code_challenge") else {
        return Ok(fail(
            target,
            "invalid_request",
            "PKCE code_challenge required",
        ));
    };
    if p.get("code_challenge_method") != Some("S256") {
        return Ok(fail(
            target,
            "invalid_request",
            "code_challenge_method must be S256",
        ));
    }
    if challenge.len() != 43 || !challenge.bytes().all(is_b64url) {
        return Ok(fail(
            target,
            "invalid_request",
            "code_challenge is not a base64url SHA-256",
        ));
    }
    let grant = Grant {
        client_id,
        scope: p.get("scope").unwrap_or("openid").to_string(),
        sub: p
            .get("login_hint")
            .unwrap_or(&s.opts.default_sub)
            .to_string(),
        nonce: p.get("nonce").map(str::to_string),
        redirect_uri,
        code_challenge: challenge.to_string(),
    };
    let code = random_b64(32);
    let now = now_secs();
    s.flows()
        .codes
        .insert(code.clone(), now + CODE_TTL_SECS, grant, now);
    {
        let mut qp = target.query_pairs_mut();
        qp.append_pair("code", &code);
        if let Some(st) = &state {
            qp.append_pair("state", st);
        }
    }
    Ok(redirect(target))
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// RFC 7636 §4.1: 43..128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn taken(t: Taken, what: &str) -> Result<Grant, OAuthError> {
    match t {
        Taken::Found(g) => Ok(g),
        Taken::Missing => Err(bad(
            "invalid_grant",
            format!("{what} unknown or already used"),
        )),
        Taken::Expired => Err(bad("invalid_grant", format!("{what} expired"))),
    }
}

async fn token(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let p = Params::form(&headers, &body)?;
    let grant_type = p.require("grant_type")?;
    let now = now_secs();
    let grant = match grant_type {
        "authorization_code" => {
            let code = p.require("code")?;
            let client_id = p.require("client_id")?;
            let g = taken(s.flows().codes.take(code, now), "code")?;
            if g.client_id != client_id {
                return Err(bad("invalid_grant", "code was issued to another client"));
            }
            if p.get("redirect_uri") != Some(g.redirect_uri.as_str()) {
                return Err(bad(
                    "invalid_grant",
                    "redirect_uri differs from the authorization request",
                ));
            }
            let verifier = p.require("code_verifier")?;
            if !valid_verifier(verifier)
                || b64(Sha256::digest(verifier.as_bytes())) != g.code_challenge
            {
                return Err(bad("invalid_grant", "PKCE verification failed"));
            }
            g
        }
        DEVICE_GRANT => {
            let code = p.require("device_code")?;
            let client_id = p.require("client_id")?;
            let g = match s.flows().devices.take(code, now) {
                // RFC 8628 §3.5 names this case.
                Taken::Expired => return Err(bad("expired_token", "device_code expired")),
                t => taken(t, "device_code")?,
            };
            if g.client_id != client_id {
                return Err(bad(
                    "invalid_grant",
                    "device_code was issued to another client",
                ));
            }
            g
        }
        "refresh_token" => {
            let rt = p.require("refresh_token")?;
            let client_id = p.require("client_id")?;
            let mut g = taken(s.flows().refresh.take(rt, now), "refresh_token")?;
            if g.client_id != client_id {
                return Err(bad(
                    "invalid_grant",
                    "refresh_token was issued to another client",
                ));
            }
            // OIDC Core §12.2: a refreshed id_token carries no new nonce.
            g.nonce = None;
            g
        }
        other => {
            return Err(bad(
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported"),
            ))
        }
    };
    issue(&s, grant, now).map(|j| {
        (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::PRAGMA, "no-cache"),
            ],
            Json(j),
        )
            .into_response()
    })
}

/// Token response for a granted flow; the refresh token is rotated (single use).
fn issue(s: &Inner, g: Grant, now: i64) -> Result<Value, OAuthError> {
    let ttl = s.opts.token_ttl_secs;
    let access = s.access_claims(&g.sub, None, &g.scope, ttl);
    let mut id = access.clone();
    id.insert("aud".into(), json!(g.client_id));
    id.remove("scope");
    if let Some(n) = &g.nonce {
        id.insert("nonce".into(), json!(n));
    }
    let access_token = s
        .sign(s.opts.flow_alg, &Value::Object(access))
        .map_err(server_error)?;
    let id_token = s
        .sign(DevAlg::Rs256, &Value::Object(id))
        .map_err(server_error)?;
    let refresh_token = random_b64(32);
    let scope = g.scope.clone();
    s.flows()
        .refresh
        .insert(refresh_token.clone(), now + REFRESH_TTL_SECS, g, now);
    Ok(json!({
        "access_token": access_token,
        "id_token": id_token,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": scope,
    }))
}

async fn demo_token(
    State(s): State<Arc<Inner>>,
    RawQuery(q): RawQuery,
) -> Result<Response, OAuthError> {
    let p = Params::parse(q.unwrap_or_default().as_bytes())?;
    let sub = p.get("sub").unwrap_or(&s.opts.default_sub).to_string();
    // `groups=` present but empty means "no groups"; absent means the defaults.
    let groups = p.0.get("groups").map(|g| {
        g.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    let ttl = match p.get("ttl") {
        None => s.opts.token_ttl_secs,
        Some(t) => match t.parse::<i64>() {
            Ok(n) if n.abs() <= MAX_TTL => n,
            _ => {
                return Err(bad(
                    "invalid_request",
                    format!("ttl must be an integer within ±{MAX_TTL}"),
                ))
            }
        },
    };
    let alg = match p.get("alg") {
        None => s.opts.flow_alg,
        Some(a) => a.parse::<DevAlg>().map_err(|e| bad("invalid_request", e))?,
    };
    let mut claims = s.access_claims(&sub, groups, "openid", ttl);
    if let Some(aud) = p.get("aud") {
        claims.insert("aud".into(), json!(aud));
    }
    let tok = s.sign(alg, &Value::Object(claims)).map_err(server_error)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        tok,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            client_id: "c".into(),
            scope: "openid".into(),
            sub: "s".into(),
            nonce: None,
            redirect_uri: String::new(),
            code_challenge: String::new(),
        }
    }

    #[test]
    fn store_is_bounded_single_use_and_expires() {
        let mut st = Store::default();
        for i in 0..(MAX_PENDING as i64 * 3) {
            st.insert(format!("k{i}"), 1_000 + i, grant(), 0);
        }
        assert_eq!(st.map.len(), MAX_PENDING);
        // The ones closest to expiry were evicted; the newest survive.
        assert!(matches!(st.take("k0", 0), Taken::Missing));
        let last = format!("k{}", MAX_PENDING * 3 - 1);
        assert!(matches!(st.take(&last, 0), Taken::Found(_)));
        assert!(matches!(st.take(&last, 0), Taken::Missing));
        // Expired entries report as such once, and are purged on insert.
        let mut st = Store::default();
        st.insert("a".into(), 10, grant(), 0);
        st.insert("b".into(), 10, grant(), 0);
        assert!(matches!(st.take("a", 10), Taken::Expired));
        st.insert("c".into(), 100, grant(), 50);
        assert_eq!(st.map.len(), 1);
    }

    #[test]
    fn pkce_and_codes() {
        assert!(!valid_verifier("short"));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(valid_verifier(&"a~._-".repeat(10)));
        assert!(!valid_verifier(&"a+".repeat(30)));
        let uc = user_code();
        assert_eq!(uc.len(), 9);
        assert_eq!(uc.as_bytes()[4], b'-');
    }
}
