//! The identity-provider registry: IdP selection for step 1 (as mongod
//! does), the IdP lookup for a token (§1.3), and full token verification with
//! a cache of verified tokens for pooled drivers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use regex::Regex;
use sha2::{Digest, Sha256};

use super::jwks::{self, CaBundle, JwksCache};
use super::jwt::{self, ClaimRules, Claims};
use super::{AuthFailure, Identity};
use crate::config::{ConfigError, IdentityProviderConfig};

/// What a human-flow client is told in the step-1 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpInfo<'a> {
    pub issuer: &'a str,
    /// `None` for machine (supports_human_flows = false) IdPs.
    pub client_id: Option<&'a str>,
    pub request_scopes: &'a [String],
}

/// What step 1 of the human flow decided, checked again at step 2.
#[derive(Debug, Clone, Copy)]
pub struct Step1<'a> {
    pub idp: usize,
    pub hint: Option<&'a str>,
}

/// Verified tokens kept at most; a pooled driver reuses one token per connection.
pub const TOKEN_CACHE_CAPACITY: usize = 10_000;

struct Provider {
    config: IdentityProviderConfig,
    pattern: Option<Regex>,
    jwks: Arc<JwksCache>,
    /// Hash of the whole config: a reload that keeps it keeps the provider's
    /// sessions, one that changes it ends them (391).
    fingerprint: u64,
}

struct CachedToken {
    identity: Identity,
    nbf: Option<f64>,
    generation: u64,
}

/// Lookups in the verified-token cache. Shared by the registries a reload
/// builds, so the counts run on across reloads.
#[derive(Debug, Default)]
pub struct TokenCacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl TokenCacheStats {
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

pub struct IdpRegistry {
    providers: Vec<Provider>,
    /// One cache per distinct issuer, shared by its providers.
    caches: Vec<Arc<JwksCache>>,
    verified: DashMap<[u8; 32], CachedToken>,
    token_cache_stats: Arc<TokenCacheStats>,
    max_token_size: usize,
    /// Signature checks running at once: a flood of forged tokens occupies
    /// at most these runtime threads, so relays keep being served.
    verifying: tokio::sync::Semaphore,
}

/// All but one of the runtime's threads may verify signatures at once.
fn verification_slots() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

fn field(i: usize, name: &str) -> String {
    format!("identity_provider[{i}].{name}")
}

impl IdpRegistry {
    pub fn new(configs: &[IdentityProviderConfig]) -> Result<IdpRegistry, ConfigError> {
        Self::rebuild(configs, None)
    }

    /// Builds the registry of a reloaded config: issuers whose key source,
    /// quiesce and poll period are unchanged keep their JWKS cache (keys,
    /// generation, poller).
    pub fn rebuild(
        configs: &[IdentityProviderConfig],
        previous: Option<&IdpRegistry>,
    ) -> Result<IdpRegistry, ConfigError> {
        let client = jwks::http_client().map_err(|m| ConfigError::new("identity_provider", m))?;
        Self::build(configs, client, previous)
    }

    /// As [`IdpRegistry::new`], with a caller-built HTTP client.
    pub fn with_client(
        configs: &[IdentityProviderConfig],
        client: reqwest::Client,
    ) -> Result<IdpRegistry, ConfigError> {
        Self::build(configs, client, None)
    }

    fn build(
        configs: &[IdentityProviderConfig],
        client: reqwest::Client,
        previous: Option<&IdpRegistry>,
    ) -> Result<IdpRegistry, ConfigError> {
        let mut caches: Vec<Arc<JwksCache>> = Vec::new();
        let mut providers = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let pattern = c
                .match_pattern
                .as_deref()
                .map(Regex::new)
                .transpose()
                .map_err(|e| ConfigError::new(field(i, "match_pattern"), e.to_string()))?;
            let shared = caches.iter().find(|j| j.issuer() == c.issuer).cloned();
            let jwks = match shared {
                Some(shared) => shared,
                None => {
                    let ca_error = |m| ConfigError::new(field(i, "tls_ca_file"), m);
                    let ca = c
                        .tls_ca_file
                        .as_deref()
                        .map(CaBundle::read)
                        .transpose()
                        .map_err(ca_error)?;
                    let digest = ca.as_ref().map(|b| b.digest);
                    let timeout = Duration::from_secs(c.jwks_fetch_timeout_secs);
                    let cache = match previous.and_then(|p| p.cache_for(c, timeout, digest)) {
                        Some(kept) => kept.clone(),
                        None => {
                            // A client's trust roots are fixed when it is built.
                            let client = match &ca {
                                Some(bundle) => {
                                    jwks::http_client_trusting(&bundle.certs).map_err(ca_error)?
                                }
                                None => client.clone(),
                            };
                            let cache = JwksCache::new(
                                &c.issuer,
                                c.jwks_uri.as_deref(),
                                c.jwks_min_quiesce_secs,
                                c.jwks_poll_secs,
                                client,
                            )
                            .map_err(|e| ConfigError::new(field(i, "issuer"), e.to_string()))?;
                            Arc::new(cache.with_fetch_timeout(timeout).with_ca_digest(digest))
                        }
                    };
                    caches.push(cache.clone());
                    cache
                }
            };
            providers.push(Provider {
                config: c.clone(),
                pattern,
                jwks,
                fingerprint: fingerprint(c),
            });
        }
        Ok(IdpRegistry {
            providers,
            caches,
            verified: DashMap::new(),
            token_cache_stats: previous
                .map(|p| p.token_cache_stats.clone())
                .unwrap_or_default(),
            max_token_size: jwt::DEFAULT_MAX_TOKEN_SIZE,
            verifying: tokio::sync::Semaphore::new(verification_slots()),
        })
    }

    /// The cache an IdP config may keep from this registry.
    fn cache_for(
        &self,
        c: &IdentityProviderConfig,
        timeout: Duration,
        ca_digest: Option<[u8; 32]>,
    ) -> Option<&Arc<JwksCache>> {
        self.caches.iter().find(|cache| {
            cache.serves(
                &c.issuer,
                c.jwks_uri.as_deref(),
                c.jwks_min_quiesce_secs,
                c.jwks_poll_secs,
            ) && cache.fetches_like(timeout, ca_digest)
        })
    }

    /// Hits and misses of the verified-token cache.
    pub fn token_cache_stats(&self) -> &TokenCacheStats {
        &self.token_cache_stats
    }

    /// The fingerprint of IdP `idp`'s config.
    pub fn fingerprint(&self, idp: usize) -> Option<u64> {
        self.providers.get(idp).map(|p| p.fingerprint)
    }

    /// Where an IdP with this config fingerprint is now, if it still exists.
    pub fn position_of(&self, fingerprint: u64) -> Option<usize> {
        self.providers
            .iter()
            .position(|p| p.fingerprint == fingerprint)
    }

    /// The configured prefix and issuer of IdP `idp` (for logs and events).
    pub fn describe(&self, idp: usize) -> Option<(&str, &str)> {
        self.providers
            .get(idp)
            .map(|p| (p.config.auth_name_prefix.as_str(), p.config.issuer.as_str()))
    }

    /// Overrides the token size cap.
    pub fn with_max_token_size(mut self, max: usize) -> IdpRegistry {
        self.max_token_size = max;
        self
    }

    /// Loads the keys of every issuer not loaded before, concurrently; an
    /// unreachable IdP is logged and start-up continues. Starts the periodic
    /// pollers.
    pub async fn load_all(&self) {
        let mut tasks = tokio::task::JoinSet::new();
        for cache in self.caches.iter().filter(|c| !c.attempted()) {
            let cache = cache.clone();
            tasks.spawn(async move {
                if let Err(e) = cache.load().await {
                    tracing::warn!(issuer = %cache.issuer(), error = %e,
                        "cannot load the identity provider's keys; its tokens fail until it is reachable");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        for cache in &self.caches {
            cache.ensure_poller();
        }
    }

    /// The JWKS cache of an issuer (for admin commands and tests).
    pub fn jwks_for_issuer(&self, issuer: &str) -> Option<&Arc<JwksCache>> {
        self.caches.iter().find(|c| c.issuer() == issuer)
    }

    /// All distinct issuers' caches, in config order.
    pub fn jwks_caches(&self) -> &[Arc<JwksCache>] {
        &self.caches
    }

    /// The key-set generation of the IdP's issuer: it changes when a refresh
    /// removes or changes a key, which ends sessions signed in before (391).
    pub fn key_generation(&self, idp: usize) -> Option<u64> {
        self.providers.get(idp).map(|p| p.jwks.generation())
    }

    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Step-1 IdP selection as mongod does it. Machine IdPs are
    /// selectable by hint too (docs/protocol.md lists this departure).
    pub fn select_for_hint(&self, hint: Option<&str>) -> Result<usize, AuthFailure> {
        let fail = |m: String| Err(AuthFailure::NoIdentityProvider(m));
        if self.providers.is_empty() {
            return fail("No identity providers registered".into());
        }
        let Some(hint) = hint else {
            let mut human = self
                .providers
                .iter()
                .enumerate()
                .filter(|(_, p)| p.config.supports_human_flows);
            return match (human.next(), human.next()) {
                (Some((i, _)), None) => Ok(i),
                (Some(_), Some(_)) => fail(
                    "Unable to determine identity provider, because multiple providers are known"
                        .into(),
                ),
                (None, _) => fail(
                    "Unable to determine identity provider, no provider supported human flows"
                        .into(),
                ),
            };
        };
        self.providers
            .iter()
            .position(|p| p.pattern.as_ref().is_none_or(|re| re.is_match(hint)))
            .map_or_else(
                || {
                    fail(format!(
                        "No identity provider found using the hint '{hint}' provided"
                    ))
                },
                Ok,
            )
    }

    pub fn info(&self, idp: usize) -> Option<IdpInfo<'_>> {
        let c = &self.providers.get(idp)?.config;
        Some(IdpInfo {
            issuer: &c.issuer,
            client_id: c.client_id.as_deref().filter(|_| c.supports_human_flows),
            request_scopes: &c.request_scopes,
        })
    }

    /// Verifies a token at the current time.
    pub async fn verify(
        &self,
        token: &str,
        step1: Option<Step1<'_>>,
    ) -> Result<Identity, AuthFailure> {
        self.verify_at(token, step1, unix_now()).await
    }

    /// Verifies a token as of `now` (Unix seconds).
    pub async fn verify_at(
        &self,
        token: &str,
        step1: Option<Step1<'_>>,
        now: u64,
    ) -> Result<Identity, AuthFailure> {
        if token.len() > self.max_token_size {
            return Err(AuthFailure::TokenTooLarge(self.max_token_size));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.cached(&digest, step1, now);
        let counter = match &cached {
            Ok(None) => &self.token_cache_stats.misses,
            _ => &self.token_cache_stats.hits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(identity) = cached? {
            return Ok(identity);
        }
        let (identity, nbf) = self.verify_uncached(token, step1, now).await?;
        self.remember(digest, &identity, nbf);
        Ok(identity)
    }

    async fn verify_uncached(
        &self,
        token: &str,
        step1: Option<Step1<'_>>,
        now: u64,
    ) -> Result<(Identity, Option<f64>), AuthFailure> {
        let jws = jwt::split(token, self.max_token_size)?;
        let header_bytes = jws.decode_header()?;
        let header = jwt::parse_header(&header_bytes)?;
        let payload = jws.decode_payload()?;
        let claims = jwt::parse_claims(&payload)?;
        let idx = self.provider_for(&claims, step1)?;
        let provider = self.providers.get(idx).ok_or_else(no_such_idp)?;
        // Cheap refusals first, so an expired token never triggers a JWKS fetch.
        jwt::check_times(claims.exp, claims.nbf, now)?;
        let key = provider.jwks.key_for(&header.kid).await?;
        {
            // The semaphore is never closed, so acquiring cannot fail.
            let _slot = self.verifying.acquire().await.ok();
            jwt::verify_signature(&jws, header.alg, &key)?;
        }
        let identity = jwt::check_claims(
            &claims,
            &ClaimRules::from_config(&provider.config),
            idx,
            now,
        )?;
        check_hint(&identity, step1)?;
        Ok((identity, claims.nbf))
    }

    /// The provider a token belongs to: the step-1 choice, else by (iss, aud).
    fn provider_for(
        &self,
        claims: &Claims<'_>,
        step1: Option<Step1<'_>>,
    ) -> Result<usize, AuthFailure> {
        if let Some(step1) = step1 {
            let c = &self
                .providers
                .get(step1.idp)
                .ok_or_else(no_such_idp)?
                .config;
            if claims.iss != c.issuer {
                return Err(AuthFailure::Issuer(format!(
                    "Token issuer '{}' does not match that inferred from principal name hint '{}'",
                    claims.iss, c.issuer
                )));
            }
            if !claims.aud.contains(&c.audience) {
                return Err(AuthFailure::Audience(format!(
                    "Token audience '{}' does not match that inferred from principal name hint '{}'",
                    claims.aud, c.audience
                )));
            }
            return Ok(step1.idp);
        }
        let mut same_issuer = self
            .providers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.config.issuer == claims.iss)
            .peekable();
        if same_issuer.peek().is_none() {
            return Err(AuthFailure::Issuer(format!(
                "Unknown Identity Provider '{}'",
                claims.iss
            )));
        }
        same_issuer
            .find(|(_, p)| claims.aud.contains(&p.config.audience))
            .map(|(i, _)| i)
            .ok_or_else(|| {
                AuthFailure::Audience(format!(
                    "Unknown audience name '{}' for Identity Provider '{}'",
                    claims.aud, claims.iss
                ))
            })
    }

    fn cached(
        &self,
        digest: &[u8; 32],
        step1: Option<Step1<'_>>,
        now: u64,
    ) -> Result<Option<Identity>, AuthFailure> {
        let Some(entry) = self.verified.get(digest) else {
            return Ok(None);
        };
        let current = self
            .providers
            .get(entry.identity.idp)
            .map(|p| p.jwks.generation());
        let stale = current != Some(entry.generation) || entry.identity.expires_at <= now;
        let for_other_idp = step1.is_some_and(|s| s.idp != entry.identity.idp);
        if stale || for_other_idp {
            drop(entry);
            // The full path gives the precise failure (expired, issuer, ...).
            self.verified.remove(digest);
            return Ok(None);
        }
        jwt::check_times(f64::MAX, entry.nbf, now)?;
        check_hint(&entry.identity, step1)?;
        Ok(Some(entry.identity.clone()))
    }

    fn remember(&self, digest: [u8; 32], identity: &Identity, nbf: Option<f64>) {
        let Some(provider) = self.providers.get(identity.idp) else {
            return;
        };
        if self.verified.len() >= TOKEN_CACHE_CAPACITY {
            self.evict(unix_now());
        }
        self.verified.insert(
            digest,
            CachedToken {
                identity: identity.clone(),
                nbf,
                generation: provider.jwks.generation(),
            },
        );
    }

    /// Drops expired entries; if the cache is still full, drops everything
    /// (a re-verification is only a signature check away).
    fn evict(&self, now: u64) {
        self.verified.retain(|_, e| e.identity.expires_at > now);
        if self.verified.len() >= TOKEN_CACHE_CAPACITY {
            self.verified.clear();
        }
    }

    /// Forgets every verified token, e.g. after keys were revoked.
    pub fn forget_verified_tokens(&self) {
        self.verified.clear();
    }

    /// Entries in the verified-token cache (tests, metrics).
    pub fn cached_tokens(&self) -> usize {
        self.verified.len()
    }
}

fn check_hint(identity: &Identity, step1: Option<Step1<'_>>) -> Result<(), AuthFailure> {
    match step1.and_then(|s| s.hint) {
        Some(hint) if hint != identity.principal => Err(AuthFailure::PrincipalChanged {
            hint: hint.to_owned(),
            principal: identity.principal.clone(),
        }),
        _ => Ok(()),
    }
}

fn fingerprint(c: &IdentityProviderConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    c.hash(&mut h);
    h.finish()
}

fn no_such_idp() -> AuthFailure {
    AuthFailure::NoIdentityProvider("step 1 chose an identity provider that does not exist".into())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::testkit::*;
    use jsonwebtoken::Algorithm;
    use serde_json::{json, Value};

    const NOW: u64 = 1_700_000_000;
    const AUD: &str = "api://mongodb";

    fn idp(issuer: &str, pattern: Option<&str>, human: bool) -> IdentityProviderConfig {
        IdentityProviderConfig {
            issuer: issuer.into(),
            audience: AUD.into(),
            auth_name_prefix: "okta".into(),
            client_id: Some("client-1".into()),
            jwks_uri: None,
            match_pattern: pattern.map(Into::into),
            request_scopes: vec!["openid".into()],
            principal_name: "sub".into(),
            authorization_claim: "groups".into(),
            use_authorization_claim: true,
            supports_human_flows: human,
            jwks_poll_secs: 0,
            jwks_min_quiesce_secs: 60,
            log_claims: vec!["iss".into(), "sub".into()],
            tls_ca_file: None,
            jwks_fetch_timeout_secs: 5,
        }
    }

    fn registry(configs: &[IdentityProviderConfig]) -> IdpRegistry {
        IdpRegistry::with_client(configs, client()).unwrap()
    }

    fn claims(iss: &str) -> Value {
        json!({"iss": iss, "sub": "alice@example.com", "aud": AUD, "exp": NOW + 300, "groups": ["dba"]})
    }

    fn no_idp(s: &str) -> Result<usize, AuthFailure> {
        Err(AuthFailure::NoIdentityProvider(s.into()))
    }

    #[test]
    fn selection_for_hint() {
        let a = || idp("https://a.example", Some("@a\\.com$"), true);
        let b = || idp("https://b.example", Some("@b\\.com$"), true);
        let machine = || idp("https://m.example", Some("^svc-"), false);
        let fallback = || idp("https://f.example", None, true);
        type Case<'h> = (
            Vec<IdentityProviderConfig>,
            Option<&'h str>,
            Result<usize, AuthFailure>,
        );
        let cases: Vec<Case<'_>> = vec![
            (vec![], None, no_idp("No identity providers registered")),
            (
                vec![],
                Some("x"),
                no_idp("No identity providers registered"),
            ),
            (vec![a()], None, Ok(0)),
            (vec![machine(), a()], None, Ok(1)),
            (
                vec![a(), b()],
                None,
                no_idp(
                    "Unable to determine identity provider, because multiple providers are known",
                ),
            ),
            (
                vec![machine()],
                None,
                no_idp("Unable to determine identity provider, no provider supported human flows"),
            ),
            (vec![a(), b()], Some("bob@b.com"), Ok(1)),
            (
                vec![a(), b()],
                Some("bob@a.com.evil"),
                no_idp("No identity provider found using the hint 'bob@a.com.evil' provided"),
            ),
            (vec![a(), machine()], Some("svc-backup"), Ok(1)),
            (vec![a(), fallback()], Some("carol@c.com"), Ok(1)),
            (vec![a(), fallback()], Some("x@a.com"), Ok(0)),
        ];
        for (configs, hint, want) in cases {
            assert_eq!(
                registry(&configs).select_for_hint(hint),
                want,
                "{hint:?} over {}",
                configs.len()
            );
        }
    }

    #[test]
    fn info_hides_client_id_of_machine_idps() {
        let r = registry(&[
            idp("https://a.example", Some("a"), true),
            idp("https://m.example", None, false),
        ]);
        assert_eq!(
            r.info(0),
            Some(IdpInfo {
                issuer: "https://a.example",
                client_id: Some("client-1"),
                request_scopes: &["openid".to_string()]
            })
        );
        assert_eq!(r.info(1).unwrap().client_id, None);
        assert_eq!(r.info(2), None);
    }

    #[test]
    fn new_refuses_bad_pattern_and_insecure_issuer() {
        let err = IdpRegistry::with_client(&[idp("https://a.example", Some("("), true)], client())
            .err()
            .unwrap();
        assert_eq!(err.field, "identity_provider[0].match_pattern");
        let err = IdpRegistry::with_client(&[idp("http://a.example", None, true)], client())
            .err()
            .unwrap();
        assert_eq!(err.field, "identity_provider[0].issuer");
    }

    #[test]
    fn configs_with_one_issuer_share_a_cache() {
        let mut second = idp("https://a.example", None, false);
        second.audience = "other".into();
        let r = registry(&[
            idp("https://a.example", Some("x"), true),
            second,
            idp("https://b.example", None, false),
        ]);
        assert_eq!(r.jwks_caches().len(), 2);
    }

    /// A registry over one local IdP whose JWKS holds `key`.
    async fn served(
        key: &TestKey,
        configs: impl Fn(&str) -> Vec<IdentityProviderConfig>,
    ) -> (IdpRegistry, String, Shared) {
        let (base, state) = serve_idp(jwks_of(&[key])).await;
        let r = registry(&configs(&base));
        r.load_all().await;
        (r, base, state)
    }

    #[tokio::test]
    async fn machine_flow_end_to_end() {
        let key = rsa_key("k1", Algorithm::RS256);
        let (r, base, _) = served(&key, |b| vec![idp(b, None, false)]).await;
        let id = r
            .verify_at(&sign(&key, &claims(&base)), None, NOW)
            .await
            .unwrap();
        assert_eq!(id.idp, 0);
        assert_eq!(id.user, "okta/alice@example.com");
        assert_eq!(id.roles, vec!["okta/dba"]);
        assert_eq!(id.expires_at, NOW + 300);
        assert_eq!(id.log_claims[0], ("iss".to_string(), base.clone()));
    }

    #[tokio::test]
    async fn lookup_by_issuer_and_audience() {
        let key = p256_key("k1");
        let (r, base, _) = served(&key, |b| {
            let mut second = idp(b, None, false);
            second.audience = "second".into();
            second.auth_name_prefix = "two".into();
            vec![idp(b, None, false), second]
        })
        .await;
        let mut c = claims(&base);
        c["aud"] = json!(["unrelated", "second"]);
        let id = r.verify_at(&sign(&key, &c), None, NOW).await.unwrap();
        assert_eq!((id.idp, id.user.as_str()), (1, "two/alice@example.com"));
        c["aud"] = json!("nobody");
        assert_eq!(
            r.verify_at(&sign(&key, &c), None, NOW).await,
            Err(AuthFailure::Audience(format!(
                "Unknown audience name 'nobody' for Identity Provider '{base}'"
            )))
        );
        let c = claims("https://unknown.example");
        assert_eq!(
            r.verify_at(&sign(&key, &c), None, NOW).await,
            Err(AuthFailure::Issuer(
                "Unknown Identity Provider 'https://unknown.example'".into()
            ))
        );
    }

    #[tokio::test]
    async fn step1_rules() {
        let key = rsa_key("k1", Algorithm::PS256);
        let (r, base, _) = served(&key, |b| {
            vec![
                idp(b, Some("@example\\.com$"), true),
                idp("https://other.example", None, true),
            ]
        })
        .await;
        let token = sign(&key, &claims(&base));
        let step = |idp, hint| Some(Step1 { idp, hint });
        assert!(r
            .verify_at(&token, step(0, Some("alice@example.com")), NOW)
            .await
            .is_ok());
        assert!(r.verify_at(&token, step(0, None), NOW).await.is_ok());
        assert_eq!(
            r.verify_at(&token, step(0, Some("bob@example.com")), NOW)
                .await,
            Err(AuthFailure::PrincipalChanged {
                hint: "bob@example.com".into(),
                principal: "alice@example.com".into()
            })
        );
        assert_eq!(
            r.verify_at(&token, step(1, None), NOW).await,
            Err(AuthFailure::Issuer(format!(
                "Token issuer '{base}' does not match that inferred from principal name hint 'https://other.example'"
            )))
        );
        let mut c = claims(&base);
        c["aud"] = json!("elsewhere");
        assert_eq!(
            r.verify_at(&sign(&key, &c), step(0, None), NOW).await,
            Err(AuthFailure::Audience(format!(
                "Token audience 'elsewhere' does not match that inferred from principal name hint '{AUD}'"
            )))
        );
    }

    #[tokio::test]
    async fn refusals_before_any_key_lookup() {
        let key = rsa_key("k1", Algorithm::RS256);
        let (base, state) = serve_idp(jwks_of(&[&key])).await;
        let r = registry(&[idp(&base, None, false)]).with_max_token_size(4096);
        let c = claims(&base).to_string();
        let none = sign_raw(&key, Algorithm::RS256, r#"{"alg":"none","kid":"zz"}"#, &c);
        assert!(matches!(
            r.verify_at(&none, None, NOW).await,
            Err(AuthFailure::Algorithm(_))
        ));
        let hs = sign_raw(&key, Algorithm::RS256, r#"{"alg":"HS256","kid":"zz"}"#, &c);
        assert!(matches!(
            r.verify_at(&hs, None, NOW).await,
            Err(AuthFailure::Algorithm(_))
        ));
        assert_eq!(
            r.verify_at(&"a".repeat(4097), None, NOW).await,
            Err(AuthFailure::TokenTooLarge(4096))
        );
        let expired = sign(&rsa_key("zz", Algorithm::RS256), &claims(&base));
        assert_eq!(
            r.verify_at(&expired, None, NOW + 301).await,
            Err(AuthFailure::Expired)
        );
        assert_eq!(
            state.lock().unwrap().jwks_hits,
            0,
            "nothing above may fetch keys"
        );
    }

    #[tokio::test]
    async fn wrong_key_and_bad_signature() {
        let key = rsa_key("k1", Algorithm::RS256);
        let (r, base, _) = served(&key, |b| vec![idp(b, None, false)]).await;
        let other = p256_key("k1");
        let forged = sign(&other, &claims(&base));
        assert!(matches!(
            r.verify_at(&forged, None, NOW).await,
            Err(AuthFailure::Algorithm(_))
        ));
        let token = sign(&key, &claims(&base));
        let tampered = format!("{}A", token.trim_end_matches(|c| c != '.'));
        assert!(r.verify_at(&tampered, None, NOW).await.is_err());
        let unknown = sign(&rsa_key("k9", Algorithm::RS256), &claims(&base));
        assert!(matches!(
            r.verify_at(&unknown, None, NOW).await,
            Err(AuthFailure::UnknownKey(_))
        ));
    }

    #[tokio::test]
    async fn unreachable_idp_does_not_stop_start_up() {
        let r = registry(&[idp("http://127.0.0.1:9", None, false)]);
        r.load_all().await;
        assert!(r
            .jwks_for_issuer("http://127.0.0.1:9")
            .unwrap()
            .keys()
            .is_empty());
    }

    #[tokio::test]
    async fn verified_tokens_are_cached_and_rechecked() {
        let key = rsa_key("k1", Algorithm::RS256);
        let (base, state) = serve_idp(jwks_of(&[&key])).await;
        let mut config = idp(&base, Some("@example\\.com$"), true);
        config.jwks_min_quiesce_secs = 0;
        let r2 = registry(&[config]);
        r2.load_all().await;
        let token = sign(&key, &claims(&base));
        let first = r2.verify_at(&token, None, NOW).await.unwrap();
        assert_eq!(r2.cached_tokens(), 1);
        assert_eq!(r2.verify_at(&token, None, NOW + 10).await.unwrap(), first);
        assert_eq!(r2.cached_tokens(), 1);
        let stats = r2.token_cache_stats();
        assert_eq!((stats.hits(), stats.misses()), (1, 1));
        // A reload's registry counts on.
        let r3 = IdpRegistry::rebuild(&[idp(&base, None, true)], Some(&r2)).unwrap();
        assert_eq!(r3.token_cache_stats().hits(), 1);
        let hint = Some(Step1 {
            idp: 0,
            hint: Some("eve@example.com"),
        });
        assert!(matches!(
            r2.verify_at(&token, hint, NOW).await,
            Err(AuthFailure::PrincipalChanged { .. })
        ));
        assert_eq!(
            r2.verify_at(&token, None, NOW + 300).await,
            Err(AuthFailure::Expired)
        );
        assert_eq!(r2.cached_tokens(), 0, "an expired entry is dropped");
        // Re-cache, then rotate the key away: the entry must not outlive its key.
        r2.verify_at(&token, None, NOW).await.unwrap();
        state.lock().unwrap().jwks = jwks_of(&[&rsa_key("k2", Algorithm::RS256)]);
        r2.jwks_for_issuer(&base).unwrap().load().await.unwrap();
        assert!(matches!(
            r2.verify_at(&token, None, NOW).await,
            Err(AuthFailure::UnknownKey(_))
        ));
    }

    #[test]
    fn tls_ca_file_is_read_when_the_registry_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let certs = mongo_oidc_proxy_devkit::devcerts::generate(dir.path(), &[]).unwrap();
        let with_ca = |path: &std::path::Path| {
            let mut c = idp("https://idp.example.com", None, true);
            c.tls_ca_file = Some(path.to_path_buf());
            IdpRegistry::rebuild(&[c], None)
        };
        assert!(with_ca(&certs.ca_cert).is_ok());
        let missing = dir.path().join("nope.pem");
        let err = with_ca(&missing).err().unwrap();
        assert_eq!(err.field, "identity_provider[0].tls_ca_file");
        assert!(
            err.message
                .starts_with(&format!("cannot read '{}'", missing.display())),
            "{err}"
        );
        let err = with_ca(&certs.server_key).err().unwrap();
        assert_eq!(err.field, "identity_provider[0].tls_ca_file");
        assert!(err.message.contains("holds no certificate"), "{err}");
    }

    #[tokio::test]
    async fn a_reload_keeps_the_cache_only_while_fetching_is_unchanged() {
        let mut c = idp("https://idp.example.com", None, true);
        let first = IdpRegistry::rebuild(std::slice::from_ref(&c), None).unwrap();
        let same = IdpRegistry::rebuild(std::slice::from_ref(&c), Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.caches[0], &same.caches[0]));
        c.jwks_fetch_timeout_secs = 9;
        let slower = IdpRegistry::rebuild(std::slice::from_ref(&c), Some(&first)).unwrap();
        assert!(!Arc::ptr_eq(&first.caches[0], &slower.caches[0]));
        let dir = tempfile::tempdir().unwrap();
        let certs = mongo_oidc_proxy_devkit::devcerts::generate(dir.path(), &[]).unwrap();
        c.tls_ca_file = Some(certs.ca_cert.clone());
        let with_ca = IdpRegistry::rebuild(std::slice::from_ref(&c), Some(&slower)).unwrap();
        assert!(!Arc::ptr_eq(&slower.caches[0], &with_ca.caches[0]));
        let again = IdpRegistry::rebuild(std::slice::from_ref(&c), Some(&with_ca)).unwrap();
        assert!(Arc::ptr_eq(&with_ca.caches[0], &again.caches[0]));
    }

    #[tokio::test]
    async fn token_cache_is_bounded() {
        let key = p256_key("k1");
        let (r, base, _) = served(&key, |b| vec![idp(b, None, false)]).await;
        let id = r
            .verify_at(&sign(&key, &claims(&base)), None, NOW)
            .await
            .unwrap();
        for i in 0..(TOKEN_CACHE_CAPACITY as u64 + 5) {
            r.remember(Sha256::digest(i.to_be_bytes()).into(), &id, None);
            assert!(r.cached_tokens() <= TOKEN_CACHE_CAPACITY);
        }
    }

    #[tokio::test]
    async fn unknown_kid_flood_after_start_up_fetches_nothing_more() {
        let key = rsa_key("k1", Algorithm::RS256);
        let (r, base, state) = served(&key, |b| vec![idp(b, None, false)]).await;
        let r = Arc::new(r);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100 {
            let (r, token) = (
                r.clone(),
                sign(&rsa_key(&format!("x{i}"), Algorithm::RS256), &claims(&base)),
            );
            tasks.spawn(async move { r.verify_at(&token, None, NOW).await });
        }
        while let Some(res) = tasks.join_next().await {
            assert!(matches!(res.unwrap(), Err(AuthFailure::UnknownKey(_))));
        }
        // The start-up load was the last attempt, less than a quiesce period ago.
        assert_eq!(state.lock().unwrap().jwks_hits, 1);
        assert!(r
            .verify_at(&sign(&key, &claims(&base)), None, NOW)
            .await
            .is_ok());
    }
}
