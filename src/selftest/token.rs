//! `mongo-oidc-proxy token`: an access token from a configured identity
//! provider, for testing one's own setup.
//!
//! Discovery (`{issuer}/.well-known/openid-configuration`) gives the
//! `device_authorization_endpoint` and `token_endpoint`. The device flow
//! (RFC 8628) shows the verification URL and user code, then polls the
//! token endpoint every `interval` seconds, five more after each
//! `slow_down`, until the person has signed in or the code expires. The
//! client-credentials grant (RFC 6749 §4.4) authenticates with a secret from
//! an environment variable. The IdP's `client_id` and `request_scopes` come
//! from the config, as mongosh would get them from the proxy.
//!
//! The decisions — which IdP, what the discovery document says, what to do
//! after each poll — are pure functions with unit tests; [`obtain`] only
//! does the HTTP.

use std::time::Duration;

use serde_json::Value;

use crate::auth::jwks;
use crate::config::IdentityProviderConfig;

use super::MAX_RESPONSE;

pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8628 §3.2: the polling interval when the IdP names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// RFC 8628 §3.5: each `slow_down` adds five seconds to the interval.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Polling never waits longer than this between two polls, whatever the
/// IdP asks, nor for longer in all than [`MAX_WAIT`].
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 60);
/// When the device authorization names no `expires_in`.
pub const DEFAULT_DEVICE_EXPIRY: Duration = Duration::from_secs(600);

/// How the token is obtained.
#[derive(Clone)]
pub enum Grant {
    /// A person signs in on another device (RFC 8628).
    Device,
    /// The client authenticates with its own secret (RFC 6749 §4.4).
    ClientCredentials { secret: String },
}

impl std::fmt::Debug for Grant {
    // The secret never reaches a log line or a panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::Device => f.write_str("Device"),
            Grant::ClientCredentials { .. } => f.write_str("ClientCredentials"),
        }
    }
}

/// One token request, resolved from the config and the command line.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `identity_provider[idp]` in the config.
    pub idp: usize,
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub grant: Grant,
}

/// Why no token was obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The config or the command line cannot make a request (exit 2).
    #[error("{0}")]
    Config(String),
    /// The IdP could not be reached, or refused (exit 1).
    #[error("{0}")]
    Refused(String),
}

fn describe(i: usize, c: &IdentityProviderConfig) -> String {
    format!(
        "identity_provider[{i}] (auth_name_prefix {}, issuer {})",
        c.auth_name_prefix, c.issuer
    )
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The IdP `wanted` names (its issuer or its `auth_name_prefix`), or the only
/// one configured.
pub fn select_idp<'c>(
    idps: &'c [IdentityProviderConfig],
    wanted: Option<&str>,
) -> Result<(usize, &'c IdentityProviderConfig), String> {
    let listed = || {
        idps.iter()
            .enumerate()
            .map(|(i, c)| describe(i, c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(wanted) = wanted else {
        return match idps {
            [] => Err("the config has no identity provider".into()),
            [only] => Ok((0, only)),
            _ => Err(format!(
                "the config has {} identity providers; choose one with --idp ISSUER_OR_PREFIX: {}",
                idps.len(),
                listed()
            )),
        };
    };
    let by_prefix: Vec<_> = idps
        .iter()
        .enumerate()
        .filter(|(_, c)| c.auth_name_prefix == wanted)
        .collect();
    let found: Vec<_> = if by_prefix.is_empty() {
        idps.iter()
            .enumerate()
            .filter(|(_, c)| same_issuer(&c.issuer, wanted))
            .collect()
    } else {
        by_prefix
    };
    match found.as_slice() {
        [] => Err(format!(
            "no identity provider has the issuer or auth_name_prefix '{wanted}'; the config has {}",
            listed()
        )),
        [(i, c)] => Ok((*i, c)),
        several => Err(format!(
            "several identity providers match '{wanted}' ({}); name one by its auth_name_prefix",
            several
                .iter()
                .map(|(i, c)| describe(*i, c))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The request for the IdP `wanted` names: its `client_id` and
/// `request_scopes` unless the command line overrides them.
pub fn request_for(
    idps: &[IdentityProviderConfig],
    wanted: Option<&str>,
    client_id: Option<&str>,
    scopes: &[String],
    grant: Grant,
) -> Result<TokenRequest, TokenError> {
    let (idp, c) = select_idp(idps, wanted).map_err(TokenError::Config)?;
    let client_id = match client_id.or(c.client_id.as_deref()) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => {
            return Err(TokenError::Config(format!(
                "identity_provider[{idp}].client_id is not set: the token command needs the OAuth client to sign in as; set client_id, or pass --client-id"
            )))
        }
    };
    Ok(TokenRequest {
        idp,
        issuer: c.issuer.clone(),
        client_id,
        scopes: if scopes.is_empty() {
            c.request_scopes.clone()
        } else {
            scopes.to_vec()
        },
        grant,
    })
}

/// What discovery says about the IdP's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub token: String,
    pub device: Option<String>,
    /// `token_endpoint_auth_methods_supported`; empty when not given.
    pub auth_methods: Vec<String>,
}

/// The discovery URL of an issuer, as the proxy's key loader builds it.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Reads a discovery document: the issuer must be the configured one and
/// the endpoints URLs the proxy would accept for keys (https, or http on
/// loopback), so a token is never asked for from anywhere else.
pub fn parse_discovery(issuer: &str, body: &[u8]) -> Result<Endpoints, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON document: {e}"))?;
    let said = doc.get("issuer").and_then(Value::as_str);
    if said != Some(issuer) {
        return Err(format!(
            "its issuer {said:?} does not equal the configured '{issuer}'"
        ));
    }
    let url = |name: &str| -> Result<Option<String>, String> {
        match doc.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(u)) => jwks::check_url(u)
                .map(|_| Some(u.clone()))
                .map_err(|m| format!("{name}: {m}")),
            Some(_) => Err(format!("{name} is not a string")),
        }
    };
    let token = url("token_endpoint")?.ok_or("it names no token_endpoint")?;
    let auth_methods = doc
        .get("token_endpoint_auth_methods_supported")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(Endpoints {
        token,
        device: url("device_authorization_endpoint")?,
        auth_methods,
    })
}

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic`, RFC 6749's default (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the form (`client_secret_post`).
    Post,
}

/// Basic unless the IdP lists its methods and Basic is not among them.
pub fn client_auth(methods: &[String]) -> ClientAuth {
    let has = |m: &str| methods.iter().any(|x| x == m);
    if !has("client_secret_basic") && has("client_secret_post") {
        ClientAuth::Post
    } else {
        ClientAuth::Basic
    }
}

/// The `Authorization` header value for HTTP Basic client authentication:
/// id and secret each form-urlencoded first (RFC 6749 §2.3.1), so a `:` in
/// the secret survives.
pub fn basic_auth(client_id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", enc(client_id), enc(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A device authorization response (RFC 8628 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
}

pub fn parse_device_authorization(body: &[u8]) -> Result<DeviceAuthorization, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON document: {e}"))?;
    let text = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_owned);
    let secs = |name: &str| {
        doc.get(name)
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
    };
    Ok(DeviceAuthorization {
        device_code: text("device_code").ok_or("it has no device_code")?,
        user_code: text("user_code").ok_or("it has no user_code")?,
        // Google spells it verification_url.
        verification_uri: text("verification_uri")
            .or_else(|| text("verification_url"))
            .ok_or("it has no verification_uri")?,
        verification_uri_complete: text("verification_uri_complete"),
        expires_in: secs("expires_in")
            .unwrap_or(DEFAULT_DEVICE_EXPIRY)
            .min(MAX_WAIT),
        interval: secs("interval")
            .unwrap_or(DEFAULT_INTERVAL)
            .clamp(Duration::from_secs(1), MAX_INTERVAL),
    })
}

/// What the token endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenReply {
    Token {
        access_token: String,
        expires_in: Option<u64>,
    },
    /// An OAuth error document (`{error, error_description?}`).
    Error {
        error: String,
        description: Option<String>,
    },
    /// Anything else: the HTTP status and the start of the body.
    Unexpected { status: u16, body: String },
}

pub fn parse_token_reply(status: u16, body: &[u8]) -> TokenReply {
    let doc = serde_json::from_slice::<Value>(body).ok();
    let text = |name: &str| {
        doc.as_ref()
            .and_then(|d| d.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if (200..300).contains(&status) {
        if let Some(access_token) = text("access_token").filter(|t| !t.is_empty()) {
            let expires_in = doc
                .as_ref()
                .and_then(|d| d.get("expires_in"))
                .and_then(Value::as_u64);
            return TokenReply::Token {
                access_token,
                expires_in,
            };
        }
    } else if let Some(error) = text("error") {
        return TokenReply::Error {
            error,
            description: text("error_description"),
        };
    }
    let body = String::from_utf8_lossy(body);
    TokenReply::Unexpected {
        status,
        body: body.chars().take(200).collect(),
    }
}

/// What the device flow does after a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Done(String),
    /// Poll again after this interval.
    Wait(Duration),
    /// Stop with this message.
    Fail(String),
}

fn oauth_error(error: &str, description: Option<&str>) -> String {
    match description {
        Some(d) if !d.is_empty() => format!("{error}: {d}"),
        _ => error.to_owned(),
    }
}

/// RFC 8628 §3.5: `authorization_pending` keeps the interval, `slow_down`
/// adds five seconds to it, anything else ends the flow.
pub fn after_poll(reply: TokenReply, interval: Duration) -> Next {
    match reply {
        TokenReply::Token { access_token, .. } => Next::Done(access_token),
        TokenReply::Error { error, description } => match error.as_str() {
            "authorization_pending" => Next::Wait(interval),
            "slow_down" => Next::Wait((interval + SLOW_DOWN_STEP).min(MAX_INTERVAL)),
            "access_denied" => Next::Fail(
                "the sign-in was denied at the identity provider (access_denied)".into(),
            ),
            "expired_token" => Next::Fail(
                "the device code expired before the sign-in was completed (expired_token); run the command again".into(),
            ),
            _ => Next::Fail(format!(
                "the identity provider refused the device code: {}",
                oauth_error(&error, description.as_deref())
            )),
        },
        TokenReply::Unexpected { status, body } => Next::Fail(format!(
            "the token endpoint answered HTTP {status} without a token or an OAuth error: {body}"
        )),
    }
}

/// Obtains the token; `notify` gets what the person must do and progress
/// lines (the command line writes them to stderr, never to stdout).
pub async fn obtain(
    req: &TokenRequest,
    notify: &mut (dyn FnMut(&str) + Send),
) -> Result<String, TokenError> {
    let client = jwks::http_client().map_err(TokenError::Refused)?;
    let url = discovery_url(&req.issuer);
    let body = jwks::get_capped(&client, &url, MAX_RESPONSE)
        .await
        .map_err(|e| TokenError::Refused(format!("discovery failed: {e}")))?;
    let endpoints = parse_discovery(&req.issuer, &body)
        .map_err(|m| TokenError::Refused(format!("the discovery document {url}: {m}")))?;
    let scope = req.scopes.join(" ");
    match &req.grant {
        Grant::Device => device_flow(&client, req, &endpoints, &scope, notify).await,
        Grant::ClientCredentials { secret } => {
            let mut form = vec![("grant_type", "client_credentials")];
            if !scope.is_empty() {
                form.push(("scope", &scope));
            }
            let mut post = client.post(&endpoints.token);
            match client_auth(&endpoints.auth_methods) {
                ClientAuth::Basic => {
                    post = post.header(
                        reqwest::header::AUTHORIZATION,
                        basic_auth(&req.client_id, secret),
                    )
                }
                ClientAuth::Post => {
                    form.push(("client_id", &req.client_id));
                    form.push(("client_secret", secret));
                }
            }
            let (status, body) = send(post.form(&form), &endpoints.token).await?;
            match parse_token_reply(status, &body) {
                TokenReply::Token {
                    access_token,
                    expires_in,
                } => {
                    notify(&expiry_note(expires_in));
                    Ok(access_token)
                }
                TokenReply::Error { error, description } => Err(TokenError::Refused(format!(
                    "the identity provider refused the client credentials grant: {}",
                    oauth_error(&error, description.as_deref())
                ))),
                TokenReply::Unexpected { status, body } => Err(TokenError::Refused(format!(
                    "the token endpoint answered HTTP {status} without a token or an OAuth error: {body}"
                ))),
            }
        }
    }
}

fn expiry_note(expires_in: Option<u64>) -> String {
    match expires_in {
        Some(s) => format!("got an access token (expires in {s} s)"),
        None => "got an access token".into(),
    }
}

async fn device_flow(
    client: &reqwest::Client,
    req: &TokenRequest,
    endpoints: &Endpoints,
    scope: &str,
    notify: &mut (dyn FnMut(&str) + Send),
) -> Result<String, TokenError> {
    let Some(device_url) = &endpoints.device else {
        return Err(TokenError::Refused(format!(
            "the identity provider {} offers no device flow (its discovery document names no device_authorization_endpoint); use --client-credentials, or enable the device grant for client {}",
            req.issuer, req.client_id
        )));
    };
    let mut form = vec![("client_id", req.client_id.as_str())];
    if !scope.is_empty() {
        form.push(("scope", scope));
    }
    let (status, body) = send(client.post(device_url).form(&form), device_url).await?;
    if !(200..300).contains(&status) {
        let why = match parse_token_reply(status, &body) {
            TokenReply::Error { error, description } => oauth_error(&error, description.as_deref()),
            _ => format!("HTTP {status}"),
        };
        return Err(TokenError::Refused(format!(
            "the identity provider refused the device authorization for client {}: {why}",
            req.client_id
        )));
    }
    let auth = parse_device_authorization(&body).map_err(|m| {
        TokenError::Refused(format!("the device authorization from {device_url}: {m}"))
    })?;
    notify(&format!(
        "To sign in, open {} and enter the code {}",
        auth.verification_uri, auth.user_code
    ));
    if let Some(complete) = &auth.verification_uri_complete {
        notify(&format!("(or open {complete})"));
    }
    notify(&format!(
        "waiting for the sign-in (polling every {} s, for at most {} s) ...",
        auth.interval.as_secs(),
        auth.expires_in.as_secs()
    ));
    let deadline = tokio::time::Instant::now() + auth.expires_in;
    let mut interval = auth.interval;
    loop {
        if tokio::time::Instant::now() + interval > deadline {
            return Err(TokenError::Refused(format!(
                "the device code expired after {} s before the sign-in was completed; run the command again",
                auth.expires_in.as_secs()
            )));
        }
        tokio::time::sleep(interval).await;
        let poll = [
            ("grant_type", DEVICE_GRANT),
            ("device_code", auth.device_code.as_str()),
            ("client_id", req.client_id.as_str()),
        ];
        let (status, body) =
            send(client.post(&endpoints.token).form(&poll), &endpoints.token).await?;
        let reply = parse_token_reply(status, &body);
        let expires_in = match &reply {
            TokenReply::Token { expires_in, .. } => *expires_in,
            _ => None,
        };
        match after_poll(reply, interval) {
            Next::Done(token) => {
                notify(&expiry_note(expires_in));
                return Ok(token);
            }
            Next::Wait(next) => {
                if next > interval {
                    notify(&format!(
                        "the identity provider asked to poll more slowly (slow_down); polling every {} s",
                        next.as_secs()
                    ));
                }
                interval = next;
            }
            Next::Fail(m) => return Err(TokenError::Refused(m)),
        }
    }
}

/// Sends a request and reads at most [`MAX_RESPONSE`] bytes of the answer.
async fn send(req: reqwest::RequestBuilder, url: &str) -> Result<(u16, Vec<u8>), TokenError> {
    let fail = |m: String| TokenError::Refused(format!("{url}: {m}"));
    let mut resp = req
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(fail(format!(
                "the response is larger than {MAX_RESPONSE} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idp(prefix: &str, issuer: &str, client_id: Option<&str>) -> IdentityProviderConfig {
        let text = format!(
            "[[identity_provider]]\nissuer = {issuer:?}\naudience = \"a\"\nauth_name_prefix = {prefix:?}\n{}",
            client_id.map_or(String::new(), |c| format!("client_id = {c:?}\nrequest_scopes = [\"openid\", \"x\"]\n"))
        );
        #[derive(serde::Deserialize)]
        struct Only {
            identity_provider: Vec<IdentityProviderConfig>,
        }
        let mut only: Only = toml::from_str(&text).expect("idp table");
        only.identity_provider.remove(0)
    }

    #[test]
    fn the_idp_is_named_by_prefix_or_issuer_or_is_the_only_one() {
        let a = idp("okta", "https://a.example.com/", Some("ca"));
        let b = idp("entra", "https://b.example.com", Some("cb"));
        let b2 = idp("entra2", "https://b.example.com", None);
        assert_eq!(
            select_idp(std::slice::from_ref(&a), None).map(|x| x.0),
            Ok(0)
        );
        let all = [a.clone(), b.clone(), b2.clone()];
        assert_eq!(
            select_idp(&all, None).unwrap_err(),
            "the config has 3 identity providers; choose one with --idp ISSUER_OR_PREFIX: \
             identity_provider[0] (auth_name_prefix okta, issuer https://a.example.com/), \
             identity_provider[1] (auth_name_prefix entra, issuer https://b.example.com), \
             identity_provider[2] (auth_name_prefix entra2, issuer https://b.example.com)"
        );
        assert_eq!(select_idp(&all, Some("entra2")).map(|x| x.0), Ok(2));
        assert_eq!(
            select_idp(&all, Some("https://a.example.com")).map(|x| x.0),
            Ok(0)
        );
        assert_eq!(
            select_idp(&all, Some("https://b.example.com/")).unwrap_err(),
            "several identity providers match 'https://b.example.com/' (identity_provider[1] \
             (auth_name_prefix entra, issuer https://b.example.com), identity_provider[2] \
             (auth_name_prefix entra2, issuer https://b.example.com)); name one by its auth_name_prefix"
        );
        assert!(select_idp(&all, Some("google"))
            .unwrap_err()
            .starts_with("no identity provider has the issuer or auth_name_prefix 'google'; the config has identity_provider[0]"));
        assert_eq!(
            select_idp(&[], None).unwrap_err(),
            "the config has no identity provider"
        );
    }

    #[test]
    fn the_request_takes_client_id_and_scopes_from_the_config_unless_overridden() {
        let all = [
            idp("okta", "https://a.example.com", Some("ca")),
            idp("m", "https://m.example.com", None),
        ];
        let r = request_for(&all, Some("okta"), None, &[], Grant::Device).unwrap();
        assert_eq!((r.idp, r.client_id.as_str()), (0, "ca"));
        assert_eq!(r.scopes, ["openid", "x"]);
        let r = request_for(
            &all,
            Some("okta"),
            Some("svc"),
            &["mongodb".into()],
            Grant::Device,
        )
        .unwrap();
        assert_eq!(
            (r.client_id.as_str(), r.scopes.as_slice()),
            ("svc", &["mongodb".to_string()][..])
        );
        assert_eq!(
            request_for(&all, Some("m"), None, &[], Grant::Device).unwrap_err(),
            TokenError::Config("identity_provider[1].client_id is not set: the token command needs the OAuth client to sign in as; set client_id, or pass --client-id".into())
        );
        let secret = Grant::ClientCredentials {
            secret: "hunter2".into(),
        };
        assert!(
            !format!("{:?}", request_for(&all, None, Some("svc"), &[], secret)).contains("hunter2")
        );
    }

    #[test]
    fn discovery_must_name_the_issuer_and_acceptable_endpoints() {
        let ok =
            br#"{"issuer":"https://idp.example.com","token_endpoint":"https://idp.example.com/t",
            "device_authorization_endpoint":"https://idp.example.com/d",
            "token_endpoint_auth_methods_supported":["client_secret_post"]}"#;
        assert_eq!(
            parse_discovery("https://idp.example.com", ok),
            Ok(Endpoints {
                token: "https://idp.example.com/t".into(),
                device: Some("https://idp.example.com/d".into()),
                auth_methods: vec!["client_secret_post".into()],
            })
        );
        assert_eq!(
            parse_discovery("https://other.example.com", ok).unwrap_err(),
            "its issuer Some(\"https://idp.example.com\") does not equal the configured 'https://other.example.com'"
        );
        let http = br#"{"issuer":"https://i","token_endpoint":"http://evil.example.com/t"}"#;
        assert_eq!(
            parse_discovery("https://i", http).unwrap_err(),
            "token_endpoint: must use https (http is only allowed for loopback hosts)"
        );
        let none = br#"{"issuer":"https://i"}"#;
        assert_eq!(
            parse_discovery("https://i", none).unwrap_err(),
            "it names no token_endpoint"
        );
        let no_device = br#"{"issuer":"https://i","token_endpoint":"https://i/t"}"#;
        assert_eq!(
            parse_discovery("https://i", no_device).unwrap().device,
            None
        );
        assert!(parse_discovery("https://i", b"<html>")
            .unwrap_err()
            .starts_with("not a JSON document"));
    }

    #[test]
    fn client_authentication_is_basic_unless_only_post_is_offered() {
        assert_eq!(client_auth(&[]), ClientAuth::Basic);
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(client_auth(&m(&["client_secret_post"])), ClientAuth::Post);
        assert_eq!(
            client_auth(&m(&["client_secret_post", "client_secret_basic"])),
            ClientAuth::Basic
        );
        assert_eq!(client_auth(&m(&["private_key_jwt"])), ClientAuth::Basic);
        // "a b:c" → "a+b:c%3A" → base64.
        assert_eq!(basic_auth("a b", "c:"), "Basic YStiOmMlM0E=");
    }

    #[test]
    fn device_authorization_defaults_and_bounds() {
        let d = parse_device_authorization(
            br#"{"device_code":"dc","user_code":"UC","verification_url":"https://g/device"}"#,
        )
        .unwrap();
        assert_eq!(d.verification_uri, "https://g/device");
        assert_eq!(
            (d.interval, d.expires_in),
            (DEFAULT_INTERVAL, DEFAULT_DEVICE_EXPIRY)
        );
        let d = parse_device_authorization(
            br#"{"device_code":"dc","user_code":"UC","verification_uri":"https://v","interval":0,"expires_in":99999,
                 "verification_uri_complete":"https://v?c=UC"}"#,
        )
        .unwrap();
        assert_eq!(
            (d.interval, d.expires_in),
            (Duration::from_secs(1), MAX_WAIT)
        );
        assert_eq!(
            d.verification_uri_complete.as_deref(),
            Some("https://v?c=UC")
        );
        let d = parse_device_authorization(
            br#"{"device_code":"dc","user_code":"UC","verification_uri":"v","interval":600}"#,
        )
        .unwrap();
        assert_eq!(d.interval, MAX_INTERVAL);
        assert_eq!(
            parse_device_authorization(br#"{"user_code":"UC"}"#).unwrap_err(),
            "it has no device_code"
        );
    }

    #[test]
    fn polling_follows_rfc_8628() {
        let s = Duration::from_secs;
        let err = |e: &str| TokenReply::Error {
            error: e.into(),
            description: None,
        };
        assert_eq!(
            after_poll(err("authorization_pending"), s(2)),
            Next::Wait(s(2))
        );
        assert_eq!(after_poll(err("slow_down"), s(2)), Next::Wait(s(7)));
        assert_eq!(
            after_poll(err("slow_down"), s(58)),
            Next::Wait(MAX_INTERVAL)
        );
        assert_eq!(
            after_poll(err("access_denied"), s(1)),
            Next::Fail("the sign-in was denied at the identity provider (access_denied)".into())
        );
        assert_eq!(
            after_poll(err("expired_token"), s(1)),
            Next::Fail("the device code expired before the sign-in was completed (expired_token); run the command again".into())
        );
        assert_eq!(
            after_poll(
                TokenReply::Error {
                    error: "invalid_client".into(),
                    description: Some("unknown client".into())
                },
                s(1)
            ),
            Next::Fail(
                "the identity provider refused the device code: invalid_client: unknown client"
                    .into()
            )
        );
        assert_eq!(
            after_poll(
                parse_token_reply(200, br#"{"access_token":"t.o.k","expires_in":60}"#),
                s(1)
            ),
            Next::Done("t.o.k".into())
        );
        assert_eq!(
            after_poll(parse_token_reply(500, b"oops"), s(1)),
            Next::Fail(
                "the token endpoint answered HTTP 500 without a token or an OAuth error: oops"
                    .into()
            )
        );
    }

    #[test]
    fn token_replies() {
        assert_eq!(
            parse_token_reply(200, br#"{"access_token":"a","expires_in":5}"#),
            TokenReply::Token {
                access_token: "a".into(),
                expires_in: Some(5)
            }
        );
        // An error document with a success status is not a token.
        assert!(matches!(
            parse_token_reply(200, br#"{"access_token":""}"#),
            TokenReply::Unexpected { status: 200, .. }
        ));
        assert_eq!(
            parse_token_reply(400, br#"{"error":"slow_down","error_description":"easy"}"#),
            TokenReply::Error {
                error: "slow_down".into(),
                description: Some("easy".into())
            }
        );
        let long = vec![b'x'; 1000];
        match parse_token_reply(502, &long) {
            TokenReply::Unexpected { body, .. } => assert_eq!(body.len(), 200),
            other => panic!("{other:?}"),
        }
    }
}
