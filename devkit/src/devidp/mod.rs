//! A built-in development OpenID Connect identity provider, loopback only.
//!
//! It serves what MongoDB clients and the proxy need from an IdP, shaped like
//! MongoDB's `@mongodb-js/oidc-mock-provider` so that
//! mongosh, the drivers and the proxy's JWKS cache can be exercised without
//! Node or a real IdP:
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | discovery document |
//! | `GET /jwks` | public keys (counted, see [`DevIdp::jwks_fetch_count`]) |
//! | `POST /device` | device authorisation; granted on the first poll |
//! | `GET /authorize` | auth-code + PKCE S256; redirects straight back (no login page) |
//! | `POST /token` | `authorization_code`, device code and `refresh_token` grants |
//! | `GET /demo/token?sub=&groups=a,b&ttl=&alg=&aud=` | a plain-text access token for scripts |
//! | `GET /verify-device` | a placeholder page for the device flow's `verification_uri` |
//!
//! Nobody logs in: whoever can reach the port gets tokens. That is why
//! [`DevIdp::start`] refuses anything but a loopback address and why the proxy
//! must never be configured to trust this issuer outside development.
//!
//! Tests also use it as a token factory ([`DevIdp::sign`],
//! [`DevIdp::sign_with_header`], [`DevIdp::unsigned`], [`DevIdp::token`]) and
//! to drive key rotation ([`DevIdp::rotate`], [`DevIdp::remove_key`]).
//!
//! Checked against the real `@mongodb-js/oidc-plugin` 2.2.0 (mongosh's OIDC
//! client, openid-client 6.9): device-auth, auth-code + PKCE, id-token-as-access-token
//! and refresh all succeed; `oidc-plugin-check.js` beside this file reproduces it.

mod http;
mod keys;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use keys::DevAlg;
use keys::DevKey;

/// Settings of a [`DevIdp`].
#[derive(Debug, Clone)]
pub struct DevIdpOptions {
    /// OAuth client id the human flows accept and the id_token's `aud`.
    pub client_id: String,
    /// `aud` of access tokens: the proxy's configured `audience`.
    pub audience: String,
    /// Claims merged into every access and id token after the standard ones
    /// (so they may override `iss`/`aud`/`exp`, as the mock provider's
    /// `--payload` does), before `sub` and explicit groups. Typically `{"groups": [...]}`.
    pub default_claims: Value,
    /// Lifetime of issued tokens; negative gives already-expired tokens.
    pub token_ttl_secs: i64,
    /// `sub` of tokens from the device and auth-code flows unless the request
    /// carries a `login_hint`.
    pub default_sub: String,
    /// Algorithm of access tokens from the flows and `/demo/token` (id_tokens
    /// are always RS256, the default openid-client insists on).
    pub flow_alg: DevAlg,
}

impl Default for DevIdpOptions {
    fn default() -> Self {
        DevIdpOptions {
            client_id: "mongo-oidc-proxy-demo".into(),
            audience: "api://mongo-oidc-proxy-demo".into(),
            default_claims: json!({ "groups": ["demo"] }),
            token_ttl_secs: 3600,
            default_sub: "demo-user".into(),
            flow_alg: DevAlg::Rs256,
        }
    }
}

/// Why a [`DevIdp`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    #[error("the development IdP only binds loopback addresses, not {0}")]
    NotLoopback(SocketAddr),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("key generation failed: {0}")]
    KeyGen(String),
    #[error("invalid option: {0}")]
    Options(&'static str),
}

/// Keys: all published ones, plus the current signing key per algorithm.
/// The current key stays usable for signing even after [`DevIdp::remove_key`]
/// withdrew it from the JWKS, so tests can produce tokens whose `kid` the
/// JWKS no longer has.
struct KeyRing {
    published: Vec<Arc<DevKey>>,
    current_rs: Arc<DevKey>,
    current_es: Arc<DevKey>,
}

impl KeyRing {
    fn current(&self, alg: DevAlg) -> Arc<DevKey> {
        match alg {
            DevAlg::Rs256 => self.current_rs.clone(),
            DevAlg::Es256 => self.current_es.clone(),
        }
    }
}

/// Shared between the handle and the HTTP handlers.
pub(crate) struct Inner {
    issuer: String,
    opts: DevIdpOptions,
    keys: RwLock<KeyRing>,
    jwks_fetches: AtomicU64,
    flows: Mutex<http::Flows>,
}

/// A running development IdP. Stops when dropped or on [`DevIdp::shutdown`].
pub struct DevIdp {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp")
            .field("issuer", &self.inner.issuer)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl DevIdp {
    /// Generates the keys (one RSA-2048, one P-256), binds `bind` (loopback
    /// only; port 0 picks one) and serves in a background task.
    pub async fn start(bind: SocketAddr, opts: DevIdpOptions) -> Result<DevIdp, DevIdpError> {
        if !bind.ip().is_loopback() {
            return Err(DevIdpError::NotLoopback(bind));
        }
        if opts.client_id.is_empty() {
            return Err(DevIdpError::Options("client_id is empty"));
        }
        if !(opts.default_claims.is_object() || opts.default_claims.is_null()) {
            return Err(DevIdpError::Options("default_claims must be a JSON object"));
        }
        // RSA generation is CPU work of a few hundred ms: keep it off the
        // async workers (and generate both keys in parallel with the bind).
        let keygen = tokio::task::spawn_blocking(|| {
            Ok::<_, String>((
                DevKey::generate(DevAlg::Rs256)?,
                DevKey::generate(DevAlg::Es256)?,
            ))
        });
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| DevIdpError::Bind { addr: bind, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| DevIdpError::Bind { addr: bind, source })?;
        let (rs, es) = keygen
            .await
            .map_err(|e| DevIdpError::KeyGen(e.to_string()))?
            .map_err(DevIdpError::KeyGen)?;
        let (rs, es) = (Arc::new(rs), Arc::new(es));
        // `SocketAddr`'s Display brackets IPv6, giving a valid URL authority.
        let issuer = format!("http://{local_addr}");
        let inner = Arc::new(Inner {
            issuer,
            opts,
            keys: RwLock::new(KeyRing {
                published: vec![rs.clone(), es.clone()],
                current_rs: rs,
                current_es: es,
            }),
            jwks_fetches: AtomicU64::new(0),
            flows: Mutex::new(http::Flows::default()),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = http::router(inner.clone());
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "development IdP server stopped with an error");
            }
        });
        tracing::info!(issuer = %inner.issuer, "development IdP listening");
        Ok(DevIdp {
            inner,
            local_addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://<bound address>`, e.g. `http://127.0.0.1:41234`: the `iss` of
    /// every token and the proxy's `issuer` setting.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `{issuer}/jwks`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.inner.issuer)
    }

    /// The options it was started with.
    pub fn options(&self) -> &DevIdpOptions {
        &self.inner.opts
    }

    /// How many times `/jwks` has been fetched.
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The JWKS document as served right now.
    pub fn jwks(&self) -> Value {
        self.inner.jwks()
    }

    /// `kid` of the current signing key for `alg`.
    pub fn current_kid(&self, alg: DevAlg) -> String {
        self.inner.read_keys().current(alg).kid.clone()
    }

    /// Adds a fresh key for `alg`, publishes it and makes it the signing key
    /// for that algorithm; the previous key stays published until
    /// [`remove_key`](Self::remove_key). Returns the new `kid`. Blocks for the
    /// key generation (RSA: typically well under a second).
    ///
    /// # Panics
    /// If the OS random source fails (test helper).
    pub fn rotate(&self, alg: DevAlg) -> String {
        let key = match DevKey::generate(alg) {
            Ok(k) => Arc::new(k),
            Err(e) => panic!("devidp: {e}"),
        };
        let kid = key.kid.clone();
        let mut ring = self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        ring.published.push(key.clone());
        match alg {
            DevAlg::Rs256 => ring.current_rs = key,
            DevAlg::Es256 => ring.current_es = key,
        }
        kid
    }

    /// Withdraws the key `kid` from the JWKS; returns whether it was published.
    /// A withdrawn key that is still the current one for its algorithm keeps
    /// signing until the next [`rotate`](Self::rotate).
    pub fn remove_key(&self, kid: &str) -> bool {
        let mut ring = self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = ring.published.len();
        ring.published.retain(|k| k.kid != kid);
        ring.published.len() != before
    }

    /// Standard access-token claims for `sub`: `iss`, `aud` (the configured
    /// audience), `iat`, `exp = iat + ttl_secs`, `jti`, `client_id`, `scope`,
    /// then `default_claims`, then `sub` and (when given) `groups`.
    /// Tests tweak the result and pass it to [`sign`](Self::sign).
    pub fn claims(&self, sub: &str, groups: Option<&[&str]>, ttl_secs: i64) -> Value {
        let groups = groups.map(|g| g.iter().map(|s| s.to_string()).collect());
        Value::Object(self.inner.access_claims(sub, groups, "openid", ttl_secs))
    }

    /// An RS256 access token for `sub` with `groups`, valid for `ttl_secs`
    /// (negative: already expired).
    pub fn token(&self, sub: &str, groups: &[&str], ttl_secs: i64) -> String {
        self.sign(DevAlg::Rs256, &self.claims(sub, Some(groups), ttl_secs))
    }

    /// Signs `claims` with the current key for `alg`, header `{alg, typ:"JWT", kid}`.
    ///
    /// # Panics
    /// If signing fails, which needs a broken random source (test helper;
    /// the HTTP handlers use the fallible path).
    pub fn sign(&self, alg: DevAlg, claims: &Value) -> String {
        let key = self.inner.read_keys().current(alg);
        let header = json!({ "alg": alg.as_str(), "typ": "JWT", "kid": key.kid });
        match key.sign_compact(&header, claims) {
            Ok(t) => t,
            Err(e) => panic!("devidp: {e}"),
        }
    }

    /// Signs with the current key for `alg`, using `header` verbatim (it may
    /// name another `kid`, `typ` or even `alg`: tests forge these).
    ///
    /// # Panics
    /// As [`sign`](Self::sign).
    pub fn sign_with_header(&self, header: &Value, claims: &Value, alg: DevAlg) -> String {
        let key = self.inner.read_keys().current(alg);
        match key.sign_compact(header, claims) {
            Ok(t) => t,
            Err(e) => panic!("devidp: {e}"),
        }
    }

    /// `b64url(header).b64url(claims).`: an unsigned token, for `alg: none` tests.
    pub fn unsigned(header: &Value, claims: &Value) -> String {
        keys::unsigned_compact(header, claims)
    }

    /// Stops serving and waits (at most 5 s) for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("development IdP did not stop within 5 s");
            }
        }
    }
}

impl Drop for DevIdp {
    fn drop(&mut self) {
        // Graceful shutdown also closes idle keep-alive connections, so the
        // port is released without waiting for clients to hang up.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Inner {
    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        // A panic elsewhere while holding the lock cannot leave the ring
        // half-updated (every write is a single push/assign), so ignore poison.
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn jwks(&self) -> Value {
        let ring = self.read_keys();
        let keys: Vec<Value> = ring.published.iter().map(|k| k.jwk.clone()).collect();
        json!({ "keys": keys })
    }

    /// See [`DevIdp::claims`]; `groups: None` keeps whatever `default_claims` says.
    fn access_claims(
        &self,
        sub: &str,
        groups: Option<Vec<String>>,
        scope: &str,
        ttl_secs: i64,
    ) -> Map<String, Value> {
        let iat = now_secs();
        let mut c = Map::new();
        c.insert("iss".into(), json!(self.issuer));
        c.insert("aud".into(), json!(self.opts.audience));
        c.insert("iat".into(), json!(iat));
        c.insert("exp".into(), json!(iat.saturating_add(ttl_secs)));
        c.insert("jti".into(), json!(keys::random_hex(8)));
        c.insert("client_id".into(), json!(self.opts.client_id));
        c.insert("scope".into(), json!(scope));
        if let Value::Object(extra) = &self.opts.default_claims {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        c.insert("sub".into(), json!(sub));
        if let Some(g) = groups {
            c.insert("groups".into(), json!(g));
        }
        c
    }

    /// Signs with the current key of `alg`; the fallible path for handlers.
    fn sign(&self, alg: DevAlg, claims: &Value) -> Result<String, String> {
        let key = self.read_keys().current(alg);
        let header = json!({ "alg": alg.as_str(), "typ": "JWT", "kid": key.kid });
        key.sign_compact(&header, claims)
    }
}

#[cfg(test)]
mod tests;
