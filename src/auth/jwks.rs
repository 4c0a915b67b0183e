//! JWKS discovery, fetching and caching, one [`JwksCache`] per issuer.
//!
//! Verification reads the current [`KeySet`] through an `ArcSwap`, so it never
//! waits on the network; only a token whose `kid` is unknown may trigger a
//! just-in-time fetch, at most once per quiesce period.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde_json::Value;

use super::AuthFailure;

/// Smallest RSA modulus accepted, as MongoDB does.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus the `rsa` crate verifies with.
pub const MAX_RSA_BITS: usize = RsaPublicKey::MAX_SIZE;
/// Cap on a discovery or JWKS response body.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);

// JWK members are specified unpadded, but some IdPs pad them anyway.
const JWK_B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not valid: {0}")]
    Format(String),
    #[error("JWKS key '{kid}' is not valid: {message}")]
    Key { kid: String, message: String },
    #[error("JWKS has duplicate kid '{0}'")]
    DuplicateKid(String),
    #[error("URL '{url}' is not allowed: {message}")]
    Url { url: String, message: String },
    #[error("fetching '{url}' failed: {message}")]
    Http { url: String, message: String },
    #[error("discovery document at '{url}' is not valid: {message}")]
    Discovery { url: String, message: String },
}

/// Which curve or family a key belongs to; decides which `alg`s it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa { bits: usize },
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// Whether a token signed with `alg` may be checked with this key. The
    /// token's `alg` never picks the key type; the key's `kty`/`crv` does.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa { .. } => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// One usable verification key, converted once per load.
#[derive(Debug)]
pub struct Key {
    pub kid: String,
    pub kind: KeyKind,
    pub decoding: DecodingKey,
    /// The JWK exactly as fetched (for listing keys).
    pub jwk: Value,
}

/// The keys of one issuer, by `kid`.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, Arc<Key>>,
    order: Vec<Arc<Key>>,
}

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.get(kid)
    }
    pub fn len(&self) -> usize {
        self.order.len()
    }
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Key>> {
        self.order.iter()
    }
    /// `{keys:[...]}` with every usable JWK as fetched.
    pub fn to_jwks_json(&self) -> Value {
        let keys = self.order.iter().map(|k| k.jwk.clone()).collect();
        serde_json::json!({ "keys": Value::Array(keys) })
    }
    /// True when a key of `self` is missing from `new` or differs there:
    /// tokens verified with it can no longer be trusted.
    pub fn lost_keys_in(&self, new: &KeySet) -> bool {
        self.order
            .iter()
            .any(|k| new.get(&k.kid).is_none_or(|n| n.jwk != k.jwk))
    }
}

/// Parses a JWKS document key by key. Unsupported key types are skipped; any
/// invalid supported key, or a duplicate `kid`, fails the whole set.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeySet, JwksError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<Value>,
    }
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|e| JwksError::Format(format!("expected an object with a 'keys' array: {e}")))?;
    let mut set = KeySet::default();
    let mut seen = std::collections::HashSet::new();
    for (i, jwk) in doc.keys.into_iter().enumerate() {
        let (kty, kid) = kty_and_kid(&jwk, i)?;
        if !seen.insert(kid.to_owned()) {
            return Err(JwksError::DuplicateKid(kid.to_owned()));
        }
        let Some((kind, decoding)) = convert_key(&jwk, kty, kid)? else {
            continue;
        };
        let key = Arc::new(Key {
            kid: kid.to_owned(),
            kind,
            decoding,
            jwk: jwk.clone(),
        });
        set.keys.insert(key.kid.clone(), key.clone());
        set.order.push(key);
    }
    Ok(set)
}

fn kty_and_kid(jwk: &Value, index: usize) -> Result<(&str, &str), JwksError> {
    let missing = |what: &str| JwksError::Format(format!("key #{index}: {what}"));
    if !jwk.is_object() {
        return Err(missing("is not an object"));
    }
    let kty = jwk
        .get("kty")
        .and_then(Value::as_str)
        .ok_or_else(|| missing("'kty' is missing or not a string"))?;
    let kid = jwk
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| missing("'kid' is missing or not a string"))?;
    if kid.is_empty() {
        return Err(missing("'kid' is empty"));
    }
    Ok((kty, kid))
}

type Converted = Option<(KeyKind, DecodingKey)>;

fn convert_key(jwk: &Value, kty: &str, kid: &str) -> Result<Converted, JwksError> {
    let bad = |message: String| JwksError::Key {
        kid: kid.to_owned(),
        message,
    };
    match kty {
        "RSA" => rsa_key(jwk).map(Some).map_err(bad),
        "EC" => ec_key(jwk).map(Some).map_err(bad),
        "OKP" => okp_key(jwk, kid).map_err(bad),
        other => {
            tracing::warn!(kid, kty = other, "skipping JWK of unsupported key type");
            Ok(None)
        }
    }
}

fn member(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("'{name}' is missing or not a string"))?;
    JWK_B64
        .decode(text)
        .map_err(|_| format!("'{name}' is not base64url"))
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

fn bit_len(be: &[u8]) -> usize {
    match be.first() {
        Some(first) => be.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

fn rsa_key(jwk: &Value) -> Result<(KeyKind, DecodingKey), String> {
    let n_raw = member(jwk, "n")?;
    let e_raw = member(jwk, "e")?;
    let (n, e) = (strip_zeros(&n_raw), strip_zeros(&e_raw));
    let bits = bit_len(n);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "Key scale is smaller ({bits} bits) than minimum required: {MIN_RSA_BITS}"
        ));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!(
            "RSA key of {bits} bits is larger than the supported {MAX_RSA_BITS}"
        ));
    }
    let e_big = BigUint::from_bytes_be(e);
    if e_big <= BigUint::from(2u8) {
        return Err("Public key component invalid: exponent must be greater than 2".into());
    }
    // Same checks the verifier will make, done once here instead of failing every token.
    let public = RsaPublicKey::new(BigUint::from_bytes_be(n), e_big)
        .map_err(|e| format!("Public key component invalid: {e}"))?;
    let key = DecodingKey::from_rsa_raw_components(&public.n().to_bytes_be(), e);
    Ok((KeyKind::Rsa { bits }, key))
}

fn ec_key(jwk: &Value) -> Result<(KeyKind, DecodingKey), String> {
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
    let (kind, size) = match crv {
        "P-256" => (KeyKind::EcP256, 32),
        "P-384" => (KeyKind::EcP384, 48),
        other => {
            return Err(format!(
                "EC curve '{other}' is not supported (P-256, P-384)"
            ))
        }
    };
    let (x, y) = (member(jwk, "x")?, member(jwk, "y")?);
    if x.len() != size || y.len() != size {
        return Err(format!("'{crv}' coordinates must be {size} bytes each"));
    }
    let mut sec1 = Vec::with_capacity(1 + 2 * size);
    sec1.push(0x04);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    if kind == KeyKind::EcP256 && p256::PublicKey::from_sec1_bytes(&sec1).is_err() {
        return Err("P-256 point is not on the curve".into());
    }
    Ok((kind, DecodingKey::from_ec_der(&sec1)))
}

fn okp_key(jwk: &Value, kid: &str) -> Result<Converted, String> {
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
    if crv != "Ed25519" {
        tracing::warn!(kid, crv, "skipping OKP JWK of unsupported curve");
        return Ok(None);
    }
    let x = member(jwk, "x")?;
    // jsonwebtoken's EdDSA verifier slices the first 32 bytes without a check.
    if x.len() != 32 {
        return Err("'Ed25519' public key must be 32 bytes".into());
    }
    Ok(Some((KeyKind::Ed25519, DecodingKey::from_ed_der(&x))))
}

/// Accepts `https://` anywhere and `http://` only for loopback hosts.
pub fn check_url(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => Err("must use https (http is only allowed for loopback hosts)".into()),
        other => Err(format!("scheme '{other}' is not allowed, use https")),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The HTTP client shared by every issuer's cache.
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TOTAL_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `{issuer}/.well-known/openid-configuration` → `jwks_uri`.
    Discovery,
    Uri(String),
}

struct FetchState {
    last_attempt: Option<Instant>,
}

/// The cached key set of one issuer.
pub struct JwksCache {
    issuer: String,
    source: JwksSource,
    client: reqwest::Client,
    quiesce: Duration,
    max_body: usize,
    keys: ArcSwap<KeySet>,
    fetch: tokio::sync::Mutex<FetchState>,
    generation: AtomicU64,
    fetches: AtomicU64,
}

impl JwksCache {
    pub fn new(
        issuer: &str,
        jwks_uri: Option<&str>,
        quiesce_secs: u64,
        client: reqwest::Client,
    ) -> Result<JwksCache, JwksError> {
        let url_err = |url: &str, message| JwksError::Url {
            url: url.to_owned(),
            message,
        };
        check_url(issuer).map_err(|m| url_err(issuer, m))?;
        let source = match jwks_uri {
            Some(uri) => {
                check_url(uri).map_err(|m| url_err(uri, m))?;
                JwksSource::Uri(uri.to_owned())
            }
            None => JwksSource::Discovery,
        };
        Ok(JwksCache {
            issuer: issuer.to_owned(),
            source,
            client,
            quiesce: Duration::from_secs(quiesce_secs),
            max_body: DEFAULT_MAX_BODY,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetch: tokio::sync::Mutex::new(FetchState { last_attempt: None }),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        })
    }

    /// Overrides the response size cap (tests, tuning).
    pub fn with_max_body(mut self, max_body: usize) -> JwksCache {
        self.max_body = max_body;
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The current key set; never waits.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Bumped whenever a refresh removes or changes a key.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fetches attempted so far (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Start-up load and forced refresh: ignores the quiesce period.
    pub async fn load(&self) -> Result<(), JwksError> {
        let mut state = self.fetch.lock().await;
        self.fetch_and_swap(&mut state).await
    }

    /// The key for `kid`, refreshing just in time when it is unknown and the
    /// last attempted fetch is older than the quiesce period.
    pub async fn key_for(&self, kid: &str) -> Result<Arc<Key>, AuthFailure> {
        if let Some(key) = self.keys.load().get(kid) {
            return Ok(key.clone());
        }
        let mut state = self.fetch.lock().await;
        // A concurrent miss may have fetched while this task waited.
        if let Some(key) = self.keys.load().get(kid) {
            return Ok(key.clone());
        }
        let quiet = state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.quiesce);
        if quiet {
            return Err(AuthFailure::UnknownKey(format!(
                "Unknown JWT keyId '{kid}'; skipping refresh due to IdP quiesce"
            )));
        }
        if let Err(e) = self.fetch_and_swap(&mut state).await {
            tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed, keeping the old keys");
        }
        let keys = self.keys.load();
        keys.get(kid)
            .cloned()
            .ok_or_else(|| AuthFailure::UnknownKey(format!("Unknown JWT keyId '{kid}'")))
    }

    async fn fetch_and_swap(&self, state: &mut FetchState) -> Result<(), JwksError> {
        state.last_attempt = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let new = self.fetch_keys().await?;
        let old = self.keys.load();
        if old.lost_keys_in(&new) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        tracing::info!(issuer = %self.issuer, keys = new.len(), "JWKS loaded");
        self.keys.store(Arc::new(new));
        Ok(())
    }

    async fn fetch_keys(&self) -> Result<KeySet, JwksError> {
        let uri = match &self.source {
            JwksSource::Uri(uri) => uri.clone(),
            JwksSource::Discovery => self.discover().await?,
        };
        let body = get_capped(&self.client, &uri, self.max_body).await?;
        parse_jwks(&body)
    }

    async fn discover(&self) -> Result<String, JwksError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = get_capped(&self.client, &url, self.max_body).await?;
        let bad = |message: String| JwksError::Discovery {
            url: url.clone(),
            message,
        };
        let doc: Value = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        let issuer = doc.get("issuer").and_then(Value::as_str);
        if issuer != Some(self.issuer.as_str()) {
            return Err(bad(format!(
                "issuer {issuer:?} does not equal the configured '{}'",
                self.issuer
            )));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("'jwks_uri' is missing or not a string".into()))?;
        check_url(jwks_uri).map_err(|m| bad(format!("jwks_uri: {m}")))?;
        Ok(jwks_uri.to_owned())
    }

    /// Refreshes every `every` until the cache is dropped.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<JwksCache> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(cache) = weak.upgrade() else { return };
                if let Err(e) = cache.load().await {
                    tracing::warn!(issuer = %cache.issuer, error = %e, "periodic JWKS refresh failed, keeping the old keys");
                }
            }
        })
    }
}

/// GET with a body cap enforced while streaming, so a hostile or broken IdP
/// cannot make the proxy buffer an unbounded response.
pub async fn get_capped(
    client: &reqwest::Client,
    url: &str,
    max: usize,
) -> Result<Vec<u8>, JwksError> {
    let fail = |message: String| JwksError::Http {
        url: url.to_owned(),
        message,
    };
    let mut resp = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP status {}", resp.status())));
    }
    let too_large = || fail(format!("response is larger than {max} bytes"));
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
