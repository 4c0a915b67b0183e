//! JWKS discovery, fetching and caching, one [`JwksCache`] per issuer.
//!
//! Verification reads the current [`KeySet`] through an `ArcSwap`, so it never
//! waits on the network; only a token whose `kid` is unknown may trigger a
//! just-in-time fetch, at most once per quiesce period. One fetch (discovery
//! and JWKS together) is bounded by the issuer's fetch timeout, and so is
//! everything an unknown-`kid` sign-in waits for, a refresh already running
//! included. Fetch outcomes are kept on the cache ([`JwksCache::stats`]) for
//! readiness and metrics to read; this module knows neither.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde_json::value::RawValue;
use serde_json::Value;

use rustls_pki_types::CertificateDer;

use super::AuthFailure;

/// Smallest RSA modulus accepted, as MongoDB does.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus the `rsa` crate verifies with.
pub const MAX_RSA_BITS: usize = RsaPublicKey::MAX_SIZE;
/// Cap on a discovery or JWKS response body.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on one key fetch (config `jwks_fetch_timeout_secs`).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A per-request safety net at the largest configurable fetch timeout; each
/// cache bounds its fetches by its own, shorter, timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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
    #[error("fetching the keys of '{issuer}' did not finish within {ms} ms")]
    Timeout { issuer: String, ms: u128 },
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
    /// The JWK's text as fetched, members in the IdP's order (`Value`
    /// sorts them), for `oidcListKeys`.
    pub jwk_text: Box<RawValue>,
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
        keys: Vec<Box<RawValue>>,
    }
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|e| JwksError::Format(format!("expected an object with a 'keys' array: {e}")))?;
    let mut set = KeySet::default();
    let mut seen = std::collections::HashSet::new();
    for (i, jwk_text) in doc.keys.into_iter().enumerate() {
        // Already parsed once as JSON: this cannot fail, but is not unwrapped.
        let jwk: Value = serde_json::from_str(jwk_text.get())
            .map_err(|e| JwksError::Format(format!("key #{i}: {e}")))?;
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
            jwk_text,
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
        "RSA" => convert_rsa(jwk).map(Some).map_err(bad),
        "EC" => convert_ec(jwk).map(Some).map_err(bad),
        "OKP" => convert_okp(jwk, kid).map_err(bad),
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

fn convert_rsa(jwk: &Value) -> Result<(KeyKind, DecodingKey), String> {
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

fn convert_ec(jwk: &Value) -> Result<(KeyKind, DecodingKey), String> {
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

fn convert_okp(jwk: &Value, kid: &str) -> Result<Converted, String> {
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

/// The HTTP client of issuers that trust the system's roots only.
pub fn http_client() -> Result<reqwest::Client, String> {
    http_client_trusting(&[])
}

/// An HTTP client for IdP fetches that also trusts `extra_roots`. Like any
/// reqwest client it goes through `HTTPS_PROXY`/`https_proxy` (and
/// `HTTP_PROXY` for loopback `http://` IdPs) unless `NO_PROXY` names the
/// host; the variables are read when the client is built.
pub fn http_client_trusting(
    extra_roots: &[CertificateDer<'static>],
) -> Result<reqwest::Client, String> {
    crate::tls::install_default_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(redirect_policy());
    for der in extra_roots {
        let cert = reqwest::Certificate::from_der(der)
            .map_err(|e| format!("cannot use a CA certificate: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// A PEM bundle of CA certificates an IdP's server certificate may chain to.
#[derive(Debug, Clone)]
pub struct CaBundle {
    pub certs: Vec<CertificateDer<'static>>,
    /// SHA-256 of the file: a reload keeps a cache only while it is unchanged.
    pub digest: [u8; 32],
}

impl CaBundle {
    /// Reads `path`; refuses a file that cannot be read, is not PEM, or holds
    /// no certificate. The message says what to do.
    pub fn read(path: &Path) -> Result<CaBundle, String> {
        use rustls_pki_types::pem::PemObject;
        use sha2::{Digest, Sha256};
        let shown = path.display();
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read '{shown}': {e}"))?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("'{shown}' is not a valid PEM file: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "'{shown}' holds no certificate: give a PEM file with the CA certificate(s) \
                 (-----BEGIN CERTIFICATE-----) that issued the IdP's server certificate"
            ));
        }
        Ok(CaBundle {
            certs,
            digest: Sha256::digest(&bytes).into(),
        })
    }
}

/// A few redirects, never to a URL we would refuse to be configured with
/// (an https → http downgrade would let a network attacker serve keys).
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        match check_url(attempt.url().as_str()) {
            Ok(_) => attempt.follow(),
            Err(m) => attempt.error(format!("redirect refused: {m}")),
        }
    })
}

const MAX_REDIRECTS: usize = 3;

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

/// What the fetches of one issuer did, for readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FetchStats {
    pub attempts: u64,
    pub successes: u64,
    pub failures: u64,
    /// Keys in the current set.
    pub keys: usize,
    /// Unix time of the last successful fetch; `None` until one succeeded.
    pub last_success_unix: Option<f64>,
    /// Why the last fetch failed, when it did (cleared by a success).
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Outcomes {
    successes: u64,
    failures: u64,
    last_success_unix: Option<f64>,
    last_error: Option<String>,
}

/// The cached key set of one issuer.
pub struct JwksCache {
    issuer: String,
    source: JwksSource,
    client: reqwest::Client,
    quiesce: Duration,
    max_body: usize,
    poll: Duration,
    fetch_timeout: Duration,
    /// Digest of the extra CA bundle the client trusts, if any.
    ca_digest: Option<[u8; 32]>,
    keys: ArcSwap<KeySet>,
    fetch: tokio::sync::Mutex<FetchState>,
    generation: AtomicU64,
    fetches: AtomicU64,
    outcomes: Mutex<Outcomes>,
    poller: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for JwksCache {
    fn drop(&mut self) {
        if let Some(p) = self.poller.get() {
            p.abort();
        }
    }
}

impl JwksCache {
    pub fn new(
        issuer: &str,
        jwks_uri: Option<&str>,
        quiesce_secs: u64,
        poll_secs: u64,
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
            poll: Duration::from_secs(poll_secs),
            max_body: DEFAULT_MAX_BODY,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            ca_digest: None,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetch: tokio::sync::Mutex::new(FetchState { last_attempt: None }),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            outcomes: Mutex::new(Outcomes::default()),
            poller: std::sync::OnceLock::new(),
        })
    }

    /// Bounds each fetch, and each unknown-`kid` wait, by `timeout`.
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> JwksCache {
        self.fetch_timeout = timeout;
        self
    }

    /// Records which extra CA bundle the client trusts ([`JwksCache::fetches_like`]).
    pub fn with_ca_digest(mut self, digest: Option<[u8; 32]>) -> JwksCache {
        self.ca_digest = digest;
        self
    }

    /// Whether a reloaded IdP config fetches the same way (same timeout,
    /// same extra CA bundle), so that it may keep this cache.
    pub fn fetches_like(&self, timeout: Duration, ca_digest: Option<[u8; 32]>) -> bool {
        self.fetch_timeout == timeout && self.ca_digest == ca_digest
    }

    /// The fetches' outcomes so far and the current key count.
    pub fn stats(&self) -> FetchStats {
        let o = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        FetchStats {
            attempts: self.fetch_count(),
            successes: o.successes,
            failures: o.failures,
            keys: self.keys.load().len(),
            last_success_unix: o.last_success_unix,
            last_error: o.last_error.clone(),
        }
    }

    /// Whether a reloaded IdP config may keep this cache.
    pub fn serves(
        &self,
        issuer: &str,
        jwks_uri: Option<&str>,
        quiesce_secs: u64,
        poll_secs: u64,
    ) -> bool {
        let source = match jwks_uri {
            Some(uri) => JwksSource::Uri(uri.to_owned()),
            None => JwksSource::Discovery,
        };
        self.issuer == issuer
            && self.source == source
            && self.quiesce == Duration::from_secs(quiesce_secs)
            && self.poll == Duration::from_secs(poll_secs)
    }

    /// Whether a fetch was ever attempted (a reload loads only new caches).
    pub fn attempted(&self) -> bool {
        self.fetch_count() > 0
    }

    /// Starts the periodic refresh, once, when a poll period is set.
    pub fn ensure_poller(self: &Arc<Self>) {
        if !self.poll.is_zero() {
            self.poller.get_or_init(|| self.spawn_poller(self.poll));
        }
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
        self.fetch_and_swap(&mut state, self.fetch_timeout).await
    }

    /// `oidcRefreshKeys`: fetches now, ignoring the quiesce period. A failed
    /// fetch keeps the old keys, unless `invalidate_on_failure`: then the
    /// keys are dropped as by [`JwksCache::flush`], as mongod does.
    pub async fn refresh_now(&self, invalidate_on_failure: bool) -> Result<(), JwksError> {
        let mut state = self.fetch.lock().await;
        let result = self.fetch_and_swap(&mut state, self.fetch_timeout).await;
        if result.is_err() && invalidate_on_failure {
            self.drop_keys();
        }
        result
    }

    /// Forgets every key and bumps the generation, so that every session
    /// and cached token verified with them stops holding (391). Sign-ins
    /// fail until a fetch succeeds.
    pub async fn flush(&self) {
        let _state = self.fetch.lock().await;
        self.drop_keys();
    }

    /// Revokes the cached keys (MongoDB Atlas's "Revoke JWKS"): drops them
    /// and bumps the generation even when the IdP still serves the same
    /// keys, then fetches anew. Every session signed in before gets 391; on
    /// a failed fetch no key is trusted until a later fetch succeeds.
    pub async fn revoke(&self) -> Result<Arc<KeySet>, JwksError> {
        let mut state = self.fetch.lock().await;
        self.drop_keys();
        self.fetch_and_swap(&mut state, self.fetch_timeout).await?;
        Ok(self.keys())
    }

    /// Callers hold the fetch lock, so no fetch in flight stores old keys after.
    fn drop_keys(&self) {
        self.keys.store(Arc::new(KeySet::default()));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The key for `kid`, refreshing just in time when it is unknown and the
    /// last attempted fetch is older than the quiesce period. Waits at most
    /// the fetch timeout in all: a fetch already running (a poll, another
    /// sign-in's refresh) is waited for within the same deadline, so
    /// overlapping refreshes never add up.
    pub async fn key_for(&self, kid: &str) -> Result<Arc<Key>, AuthFailure> {
        if let Some(key) = self.keys.load().get(kid) {
            return Ok(key.clone());
        }
        let deadline = tokio::time::Instant::now() + self.fetch_timeout;
        let Ok(mut state) = tokio::time::timeout_at(deadline, self.fetch.lock()).await else {
            return self.known(kid).ok_or_else(|| {
                AuthFailure::UnknownKey(format!(
                    "Unknown JWT keyId '{kid}'; a JWKS refresh was still running after {} ms",
                    self.fetch_timeout.as_millis()
                ))
            });
        };
        // A concurrent miss may have fetched while this task waited.
        if let Some(key) = self.known(kid) {
            return Ok(key);
        }
        let quiet = state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.quiesce);
        if quiet {
            return Err(AuthFailure::UnknownKey(format!(
                "Unknown JWT keyId '{kid}'; skipping refresh due to IdP quiesce"
            )));
        }
        let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(e) = self.fetch_and_swap(&mut state, budget).await {
            tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed, keeping the old keys");
        }
        self.known(kid)
            .ok_or_else(|| AuthFailure::UnknownKey(format!("Unknown JWT keyId '{kid}'")))
    }

    fn known(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys.load().get(kid).cloned()
    }

    /// One fetch within `budget`; its outcome is recorded for [`JwksCache::stats`].
    async fn fetch_and_swap(
        &self,
        state: &mut FetchState,
        budget: Duration,
    ) -> Result<(), JwksError> {
        state.last_attempt = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched = match tokio::time::timeout(budget, self.fetch_keys()).await {
            Ok(result) => result,
            Err(_) => Err(JwksError::Timeout {
                issuer: self.issuer.clone(),
                ms: budget.as_millis(),
            }),
        };
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let new = match fetched {
            Ok(new) => {
                outcomes.successes += 1;
                outcomes.last_success_unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64());
                outcomes.last_error = None;
                new
            }
            Err(e) => {
                outcomes.failures += 1;
                outcomes.last_error = Some(e.to_string());
                return Err(e);
            }
        };
        drop(outcomes);
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
        .map_err(|e| fail(causes(&e)))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP status {}", resp.status())));
    }
    let too_large = || fail(format!("response is larger than {max} bytes"));
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(causes(&e)))? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes: reqwest's own text ("error sending request")
/// leaves out what the operator needs (refused, certificate, proxy).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Keys, signed tokens and a local IdP for the auth tests.
#[cfg(test)]
pub(crate) mod testkit {
    use std::sync::{Arc, Mutex, OnceLock};

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    use serde_json::{json, Value};

    /// A signing key and its public JWK.
    #[derive(Clone)]
    pub struct TestKey {
        pub kid: String,
        pub alg: Algorithm,
        pub enc: Arc<EncodingKey>,
        pub jwk: Value,
    }

    fn rsa_private() -> &'static rsa::RsaPrivateKey {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap())
    }

    pub fn rsa_key(kid: &str, alg: Algorithm) -> TestKey {
        let private = rsa_private();
        let der = private.to_pkcs1_der().unwrap();
        TestKey {
            kid: kid.into(),
            alg,
            enc: Arc::new(EncodingKey::from_rsa_der(der.as_bytes())),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig",
                "n": B64.encode(private.n().to_bytes_be()),
                "e": B64.encode(private.e().to_bytes_be())}),
        }
    }

    pub fn p256_key(kid: &str) -> TestKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut rand::thread_rng());
        let point = secret.public_key().to_encoded_point(false);
        let der = secret.to_pkcs8_der().unwrap();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            enc: Arc::new(EncodingKey::from_ec_der(der.as_bytes())),
            jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256",
                "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap())}),
        }
    }

    pub fn p384_key(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let raw = pair.public_key_raw();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES384,
            enc: Arc::new(EncodingKey::from_ec_der(&pair.serialize_der())),
            jwk: json!({"kty": "EC", "kid": kid, "crv": "P-384",
                "x": B64.encode(&raw[1..49]), "y": B64.encode(&raw[49..97])}),
        }
    }

    pub fn ed25519_key(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            enc: Arc::new(EncodingKey::from_ed_der(&pair.serialize_der())),
            jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519",
                "x": B64.encode(pair.public_key_raw())}),
        }
    }

    pub fn jwks_of(keys: &[&TestKey]) -> String {
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
    }

    /// Signs arbitrary header and payload JSON text, so malformed tokens can be built.
    pub fn sign_raw(key: &TestKey, alg: Algorithm, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.enc, alg).unwrap();
        format!("{input}.{sig}")
    }

    /// A well-formed token signed by `key` with its own alg and kid.
    pub fn sign(key: &TestKey, claims: &Value) -> String {
        let header = json!({"alg": key.alg, "kid": key.kid, "typ": "JWT"});
        sign_raw(key, key.alg, &header.to_string(), &claims.to_string())
    }

    /// What the local IdP serves; tests change it between requests.
    pub struct IdpState {
        pub jwks: String,
        pub jwks_status: u16,
        /// `None`: the discovery document names the server's own base URL.
        pub discovery_issuer: Option<String>,
        pub base: String,
        pub discovery_hits: usize,
        pub jwks_hits: usize,
    }

    pub type Shared = Arc<Mutex<IdpState>>;

    async fn discovery(State(s): State<Shared>) -> impl IntoResponse {
        let mut s = s.lock().unwrap();
        s.discovery_hits += 1;
        let issuer = s.discovery_issuer.clone().unwrap_or_else(|| s.base.clone());
        axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{}/jwks", s.base)}))
    }

    async fn jwks(State(s): State<Shared>) -> impl IntoResponse {
        let mut s = s.lock().unwrap();
        s.jwks_hits += 1;
        (StatusCode::from_u16(s.jwks_status).unwrap(), s.jwks.clone())
    }

    /// Serves discovery at `/.well-known/openid-configuration` and keys at
    /// `/jwks` on 127.0.0.1; the issuer is the base URL.
    pub async fn serve_idp(jwks_body: String) -> (String, Shared) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(IdpState {
            jwks: jwks_body,
            jwks_status: 200,
            discovery_issuer: None,
            base: base.clone(),
            discovery_hits: 0,
            jwks_hits: 0,
        }));
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (base, state)
    }

    pub fn client() -> reqwest::Client {
        super::http_client().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    fn parse(v: Value) -> Result<KeySet, JwksError> {
        parse_jwks(v.to_string().as_bytes())
    }

    fn key_err(kid: &str, message: &str) -> Result<(), JwksError> {
        Err(JwksError::Key {
            kid: kid.into(),
            message: message.into(),
        })
    }

    fn rsa_jwk(kid: &str, n: &[u8], e: &[u8]) -> Value {
        json!({"kty": "RSA", "kid": kid, "n": B64.encode(n), "e": B64.encode(e)})
    }

    #[test]
    fn parses_every_supported_key_type() {
        let (r, e2, e3, ed) = (
            rsa_key("r", Algorithm::RS256),
            p256_key("e2"),
            p384_key("e3"),
            ed25519_key("ed"),
        );
        let set = parse_jwks(jwks_of(&[&r, &e2, &e3, &ed]).as_bytes()).unwrap();
        assert_eq!(set.len(), 4);
        assert_eq!(set.get("r").unwrap().kind, KeyKind::Rsa { bits: 2048 });
        assert_eq!(set.get("e2").unwrap().kind, KeyKind::EcP256);
        assert_eq!(set.get("e3").unwrap().kind, KeyKind::EcP384);
        assert_eq!(set.get("ed").unwrap().kind, KeyKind::Ed25519);
        assert_eq!(set.to_jwks_json()["keys"][0], r.jwk);
    }

    #[test]
    fn key_rules() {
        let big_n = [0xc5u8; 256];
        let p256 = p256_key("p").jwk;
        let mut small_x = p256.clone();
        small_x["x"] = json!(B64.encode([1u8; 31]));
        let mut off_curve = p256.clone();
        off_curve["y"] = json!(B64.encode([1u8; 32]));
        let mut zero_padded = vec![0u8];
        zero_padded.extend_from_slice(&[0xffu8; 255]);
        let cases: Vec<(&str, Value, Result<(), JwksError>)> = vec![
            (
                "unsupported kty skipped",
                json!({"kty": "oct", "kid": "s", "k": "AAAA"}),
                Ok(()),
            ),
            (
                "unknown kty skipped",
                json!({"kty": "XYZ", "kid": "u"}),
                Ok(()),
            ),
            (
                "X25519 skipped",
                json!({"kty": "OKP", "kid": "x", "crv": "X25519", "x": "AA"}),
                Ok(()),
            ),
            (
                "missing kty",
                json!({"kid": "a"}),
                Err(JwksError::Format(
                    "key #0: 'kty' is missing or not a string".into(),
                )),
            ),
            (
                "missing kid",
                json!({"kty": "RSA"}),
                Err(JwksError::Format(
                    "key #0: 'kid' is missing or not a string".into(),
                )),
            ),
            (
                "empty kid",
                json!({"kty": "RSA", "kid": ""}),
                Err(JwksError::Format("key #0: 'kid' is empty".into())),
            ),
            (
                "not an object",
                json!("k"),
                Err(JwksError::Format("key #0: is not an object".into())),
            ),
            (
                "RSA 1024 bits",
                rsa_jwk("r", &[0xc5u8; 128], &[1, 0, 1]),
                key_err(
                    "r",
                    "Key scale is smaller (1024 bits) than minimum required: 2048",
                ),
            ),
            (
                "RSA leading zeros stripped",
                rsa_jwk("r", &zero_padded, &[1, 0, 1]),
                key_err(
                    "r",
                    "Key scale is smaller (2040 bits) than minimum required: 2048",
                ),
            ),
            (
                "RSA exponent 2",
                rsa_jwk("r", &big_n, &[2]),
                key_err(
                    "r",
                    "Public key component invalid: exponent must be greater than 2",
                ),
            ),
            (
                "RSA exponent 1",
                rsa_jwk("r", &big_n, &[0, 1]),
                key_err(
                    "r",
                    "Public key component invalid: exponent must be greater than 2",
                ),
            ),
            (
                "RSA missing n",
                json!({"kty": "RSA", "kid": "r", "e": "AQAB"}),
                key_err("r", "'n' is missing or not a string"),
            ),
            (
                "RSA n not base64",
                json!({"kty": "RSA", "kid": "r", "n": "!!", "e": "AQAB"}),
                key_err("r", "'n' is not base64url"),
            ),
            (
                "EC P-521",
                json!({"kty": "EC", "kid": "e", "crv": "P-521", "x": "AA", "y": "AA"}),
                key_err("e", "EC curve 'P-521' is not supported (P-256, P-384)"),
            ),
            (
                "EC short x",
                small_x,
                key_err("p", "'P-256' coordinates must be 32 bytes each"),
            ),
            (
                "EC off curve",
                off_curve,
                key_err("p", "P-256 point is not on the curve"),
            ),
            (
                "Ed25519 short",
                json!({"kty": "OKP", "kid": "d", "crv": "Ed25519", "x": B64.encode([1u8; 31])}),
                key_err("d", "'Ed25519' public key must be 32 bytes"),
            ),
        ];
        for (name, jwk, want) in cases {
            let got = parse(json!({"keys": [jwk]})).map(|set| assert!(set.is_empty(), "{name}"));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn document_rules() {
        let k = rsa_key("a", Algorithm::RS256).jwk;
        assert_eq!(
            parse(json!({"keys": [k.clone(), k]})).unwrap_err(),
            JwksError::DuplicateKid("a".into())
        );
        for bad in [&b"[]"[..], b"{}", b"{\"keys\": 1}", b"not json"] {
            assert!(matches!(parse_jwks(bad), Err(JwksError::Format(_))));
        }
        assert!(parse(json!({"keys": []})).unwrap().is_empty());
    }

    #[test]
    fn alg_must_fit_key_kind() {
        use Algorithm::*;
        let rsa = KeyKind::Rsa { bits: 2048 };
        assert!(rsa.fits(RS256) && rsa.fits(PS512) && !rsa.fits(ES256) && !rsa.fits(HS256));
        assert!(KeyKind::EcP256.fits(ES256) && !KeyKind::EcP256.fits(ES384));
        assert!(KeyKind::EcP384.fits(ES384) && !KeyKind::EcP384.fits(ES256));
        assert!(KeyKind::Ed25519.fits(EdDSA) && !KeyKind::Ed25519.fits(ES256));
    }

    #[test]
    fn url_rules() {
        for ok in [
            "https://idp.example.com",
            "http://127.0.0.1:8080/x",
            "http://127.5.0.1",
            "http://[::1]:80",
            "http://localhost:9000",
            "http://LOCALHOST",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com",
            "http://10.0.0.1",
            "ftp://x",
            "not a url",
            "http://localhost.evil.com",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            JwksCache::new("http://idp.example.com", None, 60, 0, client()),
            Err(JwksError::Url { .. })
        ));
        assert!(matches!(
            JwksCache::new(
                "https://idp.example.com",
                Some("http://idp.example.com/k"),
                60,
                0,
                client()
            ),
            Err(JwksError::Url { .. })
        ));
    }

    #[tokio::test]
    async fn discovery_then_jwks() {
        let a = rsa_key("a", Algorithm::RS256);
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        let cache = JwksCache::new(&base, None, 60, 0, client()).unwrap();
        cache.load().await.unwrap();
        assert!(cache.key_for("a").await.is_ok());
        let s = state.lock().unwrap();
        assert_eq!(
            (s.discovery_hits, s.jwks_hits, cache.fetch_count()),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn issuer_with_trailing_slash_discovers_without_double_slash() {
        let a = rsa_key("a", Algorithm::RS256);
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        let issuer = format!("{base}/");
        state.lock().unwrap().discovery_issuer = Some(issuer.clone());
        let cache = JwksCache::new(&issuer, None, 60, 0, client()).unwrap();
        cache.load().await.unwrap();
        assert_eq!(cache.keys().len(), 1);
    }

    #[tokio::test]
    async fn configured_jwks_uri_skips_discovery() {
        let a = rsa_key("a", Algorithm::RS256);
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        let uri = format!("{base}/jwks");
        let cache = JwksCache::new("https://issuer.example", Some(&uri), 60, 0, client()).unwrap();
        cache.load().await.unwrap();
        assert_eq!(cache.keys().len(), 1);
        assert_eq!(state.lock().unwrap().discovery_hits, 0);
    }

    #[tokio::test]
    async fn discovery_issuer_mismatch_fails() {
        let a = rsa_key("a", Algorithm::RS256);
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        state.lock().unwrap().discovery_issuer = Some("https://other.example".into());
        let cache = JwksCache::new(&base, None, 60, 0, client()).unwrap();
        let err = cache.load().await.unwrap_err();
        assert!(
            matches!(&err, JwksError::Discovery { message, .. }
            if message.contains("does not equal the configured")),
            "{err}"
        );
        assert!(cache.keys().is_empty());
        assert_eq!(state.lock().unwrap().jwks_hits, 0);
    }

    #[tokio::test]
    async fn rotation_refreshes_just_in_time_once() {
        let (a, b) = (
            rsa_key("a", Algorithm::RS256),
            rsa_key("b", Algorithm::RS256),
        );
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        let cache = JwksCache::new(&base, None, 0, 0, client()).unwrap();
        cache.load().await.unwrap();
        let gen0 = cache.generation();
        state.lock().unwrap().jwks = jwks_of(&[&b]);
        assert_eq!(cache.key_for("b").await.unwrap().kid, "b");
        assert_eq!(cache.fetch_count(), 2);
        assert!(cache.keys().get("a").is_none());
        assert_eq!(
            cache.generation(),
            gen0 + 1,
            "a removed key bumps the generation"
        );
        assert!(cache.key_for("b").await.is_ok());
        assert_eq!(cache.fetch_count(), 2, "known kid never fetches");
    }

    #[test]
    fn the_fetched_text_of_each_key_is_kept_in_order() {
        let text = r#"{"keys": [{"kty": "EC", "kid": "p", "crv": "P-256", "x": "X", "y": "Y"}]}"#;
        let mut k = p256_key("p").jwk;
        let body = text
            .replace("\"X\"", &k["x"].to_string())
            .replace("\"Y\"", &k["y"].to_string());
        let set = parse_jwks(body.as_bytes()).unwrap();
        let key = set.get("p").unwrap();
        let (x, y) = (k["x"].take(), k["y"].take());
        assert_eq!(
            key.jwk_text.get(),
            format!(r#"{{"kty": "EC", "kid": "p", "crv": "P-256", "x": {x}, "y": {y}}}"#)
        );
    }

    #[tokio::test]
    async fn revoke_drops_the_keys_bumps_the_generation_and_refetches() {
        let (a, b) = (
            rsa_key("a", Algorithm::RS256),
            rsa_key("b", Algorithm::RS256),
        );
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        // A long quiesce period: revoking ignores it.
        let cache = JwksCache::new(&base, None, 3600, 0, client()).unwrap();
        cache.load().await.unwrap();
        let gen0 = cache.generation();
        // The same keys still served: the generation moves all the same.
        let kept = cache.revoke().await.unwrap();
        assert!(kept.get("a").is_some());
        assert_eq!(cache.generation(), gen0 + 1);
        // Rotated at the IdP: only the new key is trusted.
        state.lock().unwrap().jwks = jwks_of(&[&b]);
        let now = cache.revoke().await.unwrap();
        assert_eq!(
            now.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(cache.generation(), gen0 + 2);
        assert_eq!(cache.fetch_count(), 3);
        // The IdP is down: nothing is trusted until it answers.
        state.lock().unwrap().jwks_status = 500;
        let err = cache.revoke().await.unwrap_err();
        assert!(
            matches!(&err, JwksError::Http { message, .. } if message == "HTTP status 500 Internal Server Error"),
            "{err}"
        );
        assert!(cache.keys().is_empty());
        assert_eq!(cache.generation(), gen0 + 3);
    }

    #[tokio::test]
    async fn refresh_now_ignores_the_quiesce_period_and_invalidates_on_failure_when_asked() {
        let (a, b) = (
            rsa_key("a", Algorithm::RS256),
            rsa_key("b", Algorithm::RS256),
        );
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        let cache = JwksCache::new(&base, None, 3600, 0, client()).unwrap();
        cache.load().await.unwrap();
        state.lock().unwrap().jwks = jwks_of(&[&a, &b]);
        cache.refresh_now(true).await.unwrap();
        assert_eq!((cache.keys().len(), cache.generation()), (2, 0));
        state.lock().unwrap().jwks_status = 500;
        assert!(cache.refresh_now(false).await.is_err());
        assert_eq!((cache.keys().len(), cache.generation()), (2, 0), "kept");
        assert!(cache.refresh_now(true).await.is_err());
        assert_eq!((cache.keys().len(), cache.generation()), (0, 1), "flushed");
        state.lock().unwrap().jwks_status = 200;
        cache.refresh_now(true).await.unwrap();
        assert_eq!((cache.keys().len(), cache.generation()), (2, 1));
        cache.flush().await;
        assert_eq!((cache.keys().len(), cache.generation()), (0, 2));
    }

    #[tokio::test]
    async fn unknown_kid_flood_fetches_at_most_once_per_quiesce() {
        let a = rsa_key("a", Algorithm::RS256);
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        let cache = Arc::new(JwksCache::new(&base, None, 60, 0, client()).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100 {
            let cache = cache.clone();
            tasks.spawn(async move { cache.key_for(&format!("nope-{i}")).await });
        }
        while let Some(r) = tasks.join_next().await {
            assert!(matches!(r.unwrap(), Err(AuthFailure::UnknownKey(_))));
        }
        assert_eq!(cache.fetch_count(), 1);
        assert_eq!(state.lock().unwrap().jwks_hits, 1);
        let err = cache.key_for("b").await.unwrap_err();
        assert!(err.to_string().contains("quiesce"), "{err}");
        assert_eq!(cache.key_for("a").await.unwrap().kid, "a");
    }

    #[tokio::test]
    async fn fetch_failure_keeps_old_keys() {
        let a = rsa_key("a", Algorithm::RS256);
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        let cache = JwksCache::new(&base, None, 0, 0, client()).unwrap();
        cache.load().await.unwrap();
        state.lock().unwrap().jwks_status = 500;
        assert!(matches!(
            cache.key_for("b").await,
            Err(AuthFailure::UnknownKey(_))
        ));
        let err = cache.load().await.unwrap_err();
        assert!(matches!(&err, JwksError::Http { message, .. } if message.contains("500")));
        assert!(cache.key_for("a").await.is_ok());
        // An invalid set is refused whole, too.
        state.lock().unwrap().jwks_status = 200;
        state.lock().unwrap().jwks = json!({"keys": [{"kty": "RSA", "kid": ""}]}).to_string();
        assert!(cache.load().await.is_err());
        assert!(cache.key_for("a").await.is_ok());
    }

    #[tokio::test]
    async fn body_size_is_capped() {
        let a = rsa_key("a", Algorithm::RS256);
        let (base, _state) = serve_idp(jwks_of(&[&a])).await;
        let cache = JwksCache::new(&base, Some(&format!("{base}/jwks")), 60, 0, client())
            .unwrap()
            .with_max_body(100);
        let err = cache.load().await.unwrap_err();
        assert!(
            matches!(&err, JwksError::Http { message, .. }
            if message == "response is larger than 100 bytes"),
            "{err}"
        );
    }

    /// A chunked body has no Content-Length: the cap must hold while streaming.
    #[tokio::test]
    async fn chunked_body_size_is_capped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..20 {
                resp.extend_from_slice(b"40\r\n");
                resp.extend_from_slice(&[b' '; 64]);
                resp.extend_from_slice(b"\r\n");
            }
            resp.extend_from_slice(b"0\r\n\r\n");
            let _ = sock.write_all(&resp).await;
        });
        let err = get_capped(&client(), &url, 1000).await.unwrap_err();
        assert!(
            matches!(&err, JwksError::Http { message, .. }
            if message == "response is larger than 1000 bytes"),
            "{err}"
        );
    }

    /// An HTTP server on 127.0.0.1 that reads each request and then runs
    /// `answer` on the socket (hang, trickle, ...); returns its base URL.
    async fn raw_server<F, Fut>(answer: F) -> String
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    answer(sock).await;
                });
            }
        });
        base
    }

    async fn hang(sock: tokio::net::TcpStream) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(sock);
    }

    #[tokio::test]
    async fn a_hanging_idp_fails_the_fetch_at_the_timeout() {
        let base = raw_server(hang).await;
        let cache = JwksCache::new(&base, None, 0, 0, client())
            .unwrap()
            .with_fetch_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let err = cache.load().await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            err,
            JwksError::Timeout {
                issuer: base.clone(),
                ms: 300
            }
        );
        assert!(took < Duration::from_millis(600), "took {took:?}");
        let stats = cache.stats();
        assert_eq!((stats.attempts, stats.successes, stats.failures), (1, 0, 1));
        assert_eq!(
            stats.last_error.as_deref(),
            Some(format!("fetching the keys of '{base}' did not finish within 300 ms").as_str())
        );
        assert_eq!(stats.last_success_unix, None);
    }

    /// A body that trickles in a byte at a time never ends the fetch by
    /// itself: the total time is what bounds it.
    #[tokio::test]
    async fn a_trickling_idp_is_bounded_in_total_time() {
        use tokio::io::AsyncWriteExt;
        let base = raw_server(|mut sock| async move {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for _ in 0..100_000 {
                if sock.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let cache = JwksCache::new(&base, Some(&format!("{base}/jwks")), 0, 0, client())
            .unwrap()
            .with_fetch_timeout(Duration::from_millis(500));
        let started = Instant::now();
        assert!(matches!(
            cache.load().await,
            Err(JwksError::Timeout { ms: 500, .. })
        ));
        assert!(started.elapsed() < Duration::from_millis(900));
    }

    /// A poll holding the fetch lock used to make an unknown-kid sign-in
    /// wait for it and then for a fetch of its own: two timeouts.
    #[tokio::test]
    async fn an_unknown_kid_waits_one_timeout_in_all_behind_a_running_fetch() {
        let base = raw_server(hang).await;
        let timeout = Duration::from_millis(1000);
        let cache = Arc::new(
            JwksCache::new(&base, None, 0, 0, client())
                .unwrap()
                .with_fetch_timeout(timeout),
        );
        let poll = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.load().await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let err = cache.key_for("k").await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, AuthFailure::UnknownKey(_)), "{err}");
        assert!(
            took <= timeout + Duration::from_millis(300),
            "took {took:?}"
        );
        assert!(poll.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn stats_count_successes_and_keys() {
        let a = rsa_key("a", Algorithm::RS256);
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        let cache = JwksCache::new(&base, None, 0, 0, client()).unwrap();
        cache.load().await.unwrap();
        state.lock().unwrap().jwks = "garbage".into();
        assert!(matches!(cache.load().await, Err(JwksError::Format(_))));
        let stats = cache.stats();
        assert_eq!(
            (stats.attempts, stats.successes, stats.failures, stats.keys),
            (2, 1, 1, 1)
        );
        assert!(stats.last_success_unix.is_some_and(|t| t > 1.7e9));
        assert!(stats
            .last_error
            .is_some_and(|e| e.starts_with("JWKS is not valid")));
        state.lock().unwrap().jwks = jwks_of(&[&a]);
        cache.load().await.unwrap();
        assert_eq!(cache.stats().last_error, None, "a success clears the error");
    }

    #[test]
    fn ca_bundles_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let paths = mongo_oidc_proxy_devkit::devcerts::generate(dir.path(), &[]).unwrap();
        let bundle = CaBundle::read(&paths.ca_cert).unwrap();
        assert_eq!(bundle.certs.len(), 1);
        assert!(http_client_trusting(&bundle.certs).is_ok());
        let missing = dir.path().join("missing.pem");
        assert!(CaBundle::read(&missing)
            .unwrap_err()
            .starts_with(&format!("cannot read '{}': ", missing.display())));
        let key_only = CaBundle::read(&paths.server_key).unwrap_err();
        assert_eq!(
            key_only,
            format!(
                "'{}' holds no certificate: give a PEM file with the CA certificate(s) \
                 (-----BEGIN CERTIFICATE-----) that issued the IdP's server certificate",
                paths.server_key.display()
            )
        );
    }

    #[tokio::test]
    async fn poller_picks_up_new_keys() {
        let (a, b) = (
            rsa_key("a", Algorithm::RS256),
            rsa_key("b", Algorithm::RS256),
        );
        let (base, state) = serve_idp(jwks_of(&[&a])).await;
        let cache = Arc::new(JwksCache::new(&base, None, 60, 0, client()).unwrap());
        cache.load().await.unwrap();
        state.lock().unwrap().jwks = jwks_of(&[&a, &b]);
        let poller = cache.spawn_poller(Duration::from_millis(50));
        for _ in 0..100 {
            if cache.keys().get("b").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        poller.abort();
        assert!(cache.keys().get("b").is_some());
        assert_eq!(cache.generation(), 0, "adding a key is not a change");
    }

    #[tokio::test]
    async fn redirects_only_to_acceptable_urls() {
        use axum::response::Redirect;
        let a = rsa_key("a", Algorithm::RS256);
        let (base, _state) = serve_idp(jwks_of(&[&a])).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = format!("http://{}", listener.local_addr().unwrap());
        let target = format!("{base}/jwks");
        let app = axum::Router::new()
            .route(
                "/ok",
                axum::routing::get(move || async move { Redirect::temporary(&target) }),
            )
            .route(
                "/bad",
                axum::routing::get(|| async { Redirect::temporary("http://example.com/jwks") }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        assert!(
            get_capped(&client(), &format!("{front}/ok"), DEFAULT_MAX_BODY)
                .await
                .is_ok()
        );
        let err = get_capped(&client(), &format!("{front}/bad"), DEFAULT_MAX_BODY)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("redirect"), "{err}");
    }
}
