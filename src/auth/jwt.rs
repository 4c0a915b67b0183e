//! JWT parsing and verification.
//!
//! The token is split without copying; header and claims are decoded once and
//! deserialised borrowing from the decoded bytes. Signatures go through
//! `jsonwebtoken::crypto::verify` only: every claim rule is ours, because the
//! crate's `Validation` defaults (leeway, optional iss/aud) are not.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::jwks::Key;
use super::{AuthFailure, Identity};

/// Tokens longer than this are refused before any parsing.
pub const DEFAULT_MAX_TOKEN_SIZE: usize = 64 * 1024;
/// Clock skew tolerated on `nbf` only (none on `exp`), as MongoDB does.
pub const NBF_LEEWAY_SECS: u64 = 60;

fn malformed(reason: impl Into<String>) -> AuthFailure {
    AuthFailure::MalformedToken(reason.into())
}

/// The three parts of a compact JWS, borrowed from the token.
#[derive(Debug, Clone, Copy)]
pub struct CompactJws<'t> {
    pub header_b64: &'t str,
    pub payload_b64: &'t str,
    pub signature_b64: &'t str,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'t str,
}

/// Splits a compact JWS after the size cap.
pub fn split(token: &str, max_size: usize) -> Result<CompactJws<'_>, AuthFailure> {
    if token.len() > max_size {
        return Err(AuthFailure::TokenTooLarge(max_size));
    }
    let mut dots = token.match_indices('.').map(|(i, _)| i);
    let (Some(first), Some(second)) = (dots.next(), dots.next()) else {
        return Err(malformed("missing JWS delimiter"));
    };
    if dots.next().is_some() {
        return Err(malformed("too many delimiters in JWS token"));
    }
    let part = |r: std::ops::Range<usize>| token.get(r).unwrap_or_default();
    let jws = CompactJws {
        header_b64: part(0..first),
        payload_b64: part(first + 1..second),
        signature_b64: part(second + 1..token.len()),
        signing_input: part(0..second),
    };
    if !is_b64url(jws.signature_b64) || jws.signature_b64.is_empty() {
        return Err(malformed("signature is not base64url"));
    }
    Ok(jws)
}

fn is_b64url(s: &str) -> bool {
    s.len() % 4 != 1
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_part(b64: &str, what: &str) -> Result<Vec<u8>, AuthFailure> {
    URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| malformed(format!("{what} is not base64url")))
}

impl CompactJws<'_> {
    pub fn decode_header(&self) -> Result<Vec<u8>, AuthFailure> {
        decode_part(self.header_b64, "header")
    }
    pub fn decode_payload(&self) -> Result<Vec<u8>, AuthFailure> {
        decode_part(self.payload_b64, "payload")
    }
}

/// The JOSE header, borrowed from the decoded header bytes.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    pub alg: Algorithm,
    pub kid: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow, default)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    typ: Option<Cow<'a, str>>,
}

/// Maps an `alg` onto the allow-list. `none` and HS* are refused here, before
/// any key is looked up, so a public key can never become an HMAC secret.
pub fn allowed_alg(alg: &str) -> Result<Algorithm, AuthFailure> {
    use Algorithm::*;
    let a = match alg {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        other => {
            return Err(AuthFailure::Algorithm(format!(
                "Unknown hashing algorithm: '{other}'"
            )))
        }
    };
    Ok(a)
}

fn typ_ok(typ: &str) -> bool {
    ["JWT", "at+jwt", "application/at+jwt"]
        .iter()
        .any(|t| typ.eq_ignore_ascii_case(t))
}

pub fn parse_header(bytes: &[u8]) -> Result<Header<'_>, AuthFailure> {
    let raw: RawHeader<'_> = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("header is not a valid JOSE header: {e}")))?;
    let alg = raw.alg.ok_or_else(|| malformed("header has no 'alg'"))?;
    let alg = allowed_alg(&alg)?;
    if let Some(typ) = raw.typ.as_deref().filter(|t| !typ_ok(t)) {
        return Err(malformed(format!("Unknown type of token '{typ}'")));
    }
    let kid = raw.kid.ok_or_else(|| malformed("header has no 'kid'"))?;
    if kid.is_empty() {
        return Err(malformed("header 'kid' is empty"));
    }
    Ok(Header { alg, kid })
}

/// `aud`: one string or an array of strings.
#[derive(Debug, Clone)]
pub enum Audience<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl Audience<'_> {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Audience::One(a) => (Some(a.as_ref()), &[][..]),
            Audience::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter().map(|c| c.as_ref()))
    }
}

impl fmt::Display for Audience<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<&str> = self.iter().collect();
        write!(f, "{}", all.join(", "))
    }
}

/// Registered claims, plus every member as raw JSON for the principal,
/// authorization and log claims.
#[derive(Debug, Clone)]
pub struct Claims<'a> {
    pub iss: Cow<'a, str>,
    pub sub: Cow<'a, str>,
    pub aud: Audience<'a>,
    pub exp: f64,
    pub nbf: Option<f64>,
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

#[derive(Deserialize)]
#[serde(transparent)]
struct BorrowedStr<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
#[serde(transparent)]
struct BorrowedStrs<'a>(#[serde(borrow)] Vec<BorrowedStr<'a>>);

/// A JSON object as its members, refusing duplicate names so that we and any
/// other parser can never read different values for the same claim.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                while let Some(BorrowedStr(k)) = map.next_key()? {
                    if out.iter().any(|(n, _)| *n == k) {
                        return Err(serde::de::Error::custom(format!("duplicate claim '{k}'")));
                    }
                    out.push((k, map.next_value()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Claims<'a> {
    /// A claim's raw JSON, if present.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// A claim as a string, `Err` if present with another type.
    pub fn get_str(&self, name: &str) -> Option<Result<Cow<'a, str>, ()>> {
        self.get(name).map(|raw| str_of(raw).ok_or(()))
    }
}

fn str_of(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<BorrowedStr<'_>>(raw.get())
        .ok()
        .map(|s| s.0)
}

fn required<'a>(
    members: &[(Cow<'a, str>, &'a RawValue)],
    name: &str,
) -> Result<&'a RawValue, AuthFailure> {
    members
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| malformed(format!("claim '{name}' is missing")))
}

fn string_claim<'a>(raw: &'a RawValue, name: &str) -> Result<Cow<'a, str>, AuthFailure> {
    str_of(raw).ok_or_else(|| malformed(format!("claim '{name}' must be a string")))
}

/// A NumericDate; a wrong JSON type is malformed, never "absent"
/// (the flaw behind CVE-2026-25537).
fn number_claim(raw: &RawValue, name: &str) -> Result<f64, AuthFailure> {
    serde_json::from_str::<serde_json::Number>(raw.get())
        .ok()
        .and_then(|n| n.as_f64())
        .ok_or_else(|| malformed(format!("claim '{name}' must be a number")))
}

fn audience_claim(raw: &RawValue) -> Result<Audience<'_>, AuthFailure> {
    if let Some(one) = str_of(raw) {
        return Ok(Audience::One(one));
    }
    let many = serde_json::from_str::<BorrowedStrs<'_>>(raw.get())
        .map_err(|_| malformed("claim 'aud' must be a string or an array of strings"))?;
    Ok(Audience::Many(many.0.into_iter().map(|s| s.0).collect()))
}

pub fn parse_claims(bytes: &[u8]) -> Result<Claims<'_>, AuthFailure> {
    let Members(members) = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("payload is not a JSON object: {e}")))?;
    let iss = string_claim(required(&members, "iss")?, "iss")?;
    let sub = string_claim(required(&members, "sub")?, "sub")?;
    let aud = audience_claim(required(&members, "aud")?)?;
    let exp = number_claim(required(&members, "exp")?, "exp")?;
    let nbf = match members.iter().find(|(n, _)| n == "nbf") {
        Some((_, raw)) => Some(number_claim(raw, "nbf")?),
        None => None,
    };
    Ok(Claims {
        iss,
        sub,
        aud,
        exp,
        nbf,
        members,
    })
}

/// Checks the signature with a key whose family must fit `alg`.
pub fn verify_signature(
    jws: &CompactJws<'_>,
    alg: Algorithm,
    key: &Key,
) -> Result<(), AuthFailure> {
    if !key.kind.fits(alg) {
        return Err(AuthFailure::Algorithm(format!(
            "algorithm {alg:?} does not fit key '{}' ({:?})",
            key.kid, key.kind
        )));
    }
    let ok = jsonwebtoken::crypto::verify(
        jws.signature_b64,
        jws.signing_input.as_bytes(),
        &key.decoding,
        alg,
    )
    .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(AuthFailure::BadSignature)
    }
}

/// Time checks: no skew on `exp`, [`NBF_LEEWAY_SECS`] on `nbf`.
pub fn check_times(exp: f64, nbf: Option<f64>, now: u64) -> Result<(), AuthFailure> {
    if exp <= now as f64 {
        return Err(AuthFailure::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(NBF_LEEWAY_SECS) as f64) {
        return Err(AuthFailure::NotYetValid);
    }
    Ok(())
}

/// One identity provider's claim rules.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRules<'c> {
    pub issuer: &'c str,
    pub audience: &'c str,
    pub auth_name_prefix: &'c str,
    pub principal_name: &'c str,
    /// `Some(claim)` when `use_authorization_claim`.
    pub authorization_claim: Option<&'c str>,
    pub log_claims: &'c [String],
}

impl<'c> ClaimRules<'c> {
    pub fn from_config(c: &'c crate::config::IdentityProviderConfig) -> ClaimRules<'c> {
        ClaimRules {
            issuer: &c.issuer,
            audience: &c.audience,
            auth_name_prefix: &c.auth_name_prefix,
            principal_name: &c.principal_name,
            authorization_claim: c
                .use_authorization_claim
                .then_some(c.authorization_claim.as_str()),
            log_claims: &c.log_claims,
        }
    }
}

/// Applies every claim rule and builds the identity (`idp` = provider index).
pub fn check_claims(
    claims: &Claims<'_>,
    rules: &ClaimRules<'_>,
    idp: usize,
    now: u64,
) -> Result<Identity, AuthFailure> {
    if claims.iss != rules.issuer {
        return Err(AuthFailure::Issuer(format!(
            "Token issuer '{}' does not equal '{}'",
            claims.iss, rules.issuer
        )));
    }
    if !claims.aud.contains(rules.audience) {
        return Err(AuthFailure::Audience(format!(
            "Token audience '{}' does not contain '{}'",
            claims.aud, rules.audience
        )));
    }
    check_times(claims.exp, claims.nbf, now)?;
    let principal = principal(claims, rules.principal_name)?;
    let groups = match rules.authorization_claim {
        Some(name) => groups(claims, name)?,
        None => Vec::new(),
    };
    let prefix = rules.auth_name_prefix;
    Ok(Identity {
        idp,
        user: format!("{prefix}/{principal}"),
        roles: groups.iter().map(|g| format!("{prefix}/{g}")).collect(),
        principal,
        expires_at: claims.exp.floor() as u64,
        log_claims: log_claims(claims, rules.log_claims),
    })
}

fn principal(claims: &Claims<'_>, name: &str) -> Result<String, AuthFailure> {
    let value = match claims.get_str(name) {
        None => {
            return Err(AuthFailure::Claim(format!(
                "Unable to find principal claim '{name}' in token body"
            )))
        }
        Some(Err(())) => {
            return Err(AuthFailure::Claim(format!(
                "Principal claim '{name}' in token body is invalid type"
            )))
        }
        Some(Ok(v)) => v,
    };
    if value.is_empty() {
        return Err(AuthFailure::Claim(format!(
            "Invalid empty principal claim in token field '{name}'"
        )));
    }
    Ok(value.into_owned())
}

fn groups<'a>(claims: &Claims<'a>, name: &str) -> Result<Vec<Cow<'a, str>>, AuthFailure> {
    let raw = claims
        .get(name)
        .ok_or_else(|| AuthFailure::Claim(format!("Claim '{name}' not found on OIDC token")))?;
    serde_json::from_str::<BorrowedStrs<'a>>(raw.get())
        .map(|v| v.0.into_iter().map(|s| s.0).collect())
        .map_err(|_| {
            AuthFailure::Claim(format!(
                "Authorization claim '{name}' must be an array of strings"
            ))
        })
}

fn log_claims(claims: &Claims<'_>, names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| {
            let raw = claims.get(name)?;
            let text = str_of(raw).map_or_else(|| raw.get().to_owned(), Cow::into_owned);
            Some((name.clone(), text))
        })
        .collect()
}

/// Everything that can be checked without a key: split, header (alg
/// allow-list) and claims. Pure, for fuzzing.
pub fn parse_unverified(token: &str, max_size: usize) -> Result<(), AuthFailure> {
    let jws = split(token, max_size)?;
    let header = jws.decode_header()?;
    parse_header(&header)?;
    let payload = jws.decode_payload()?;
    parse_claims(&payload)?;
    Ok(())
}
