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
    let Members(members) = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("header is not a valid JOSE header: {e}")))?;
    let field = |name: &str| -> Result<Option<Cow<'_, str>>, AuthFailure> {
        match members.iter().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, raw)) => str_of(raw)
                .map(Some)
                .ok_or_else(|| malformed(format!("header '{name}' must be a string"))),
        }
    };
    let alg = field("alg")?.ok_or_else(|| malformed("header has no 'alg'"))?;
    let alg = allowed_alg(&alg)?;
    if let Some(typ) = field("typ")?.filter(|t| !typ_ok(t)) {
        return Err(malformed(format!("Unknown type of token '{typ}'")));
    }
    let kid = field("kid")?.ok_or_else(|| malformed("header has no 'kid'"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::testkit::*;
    use crate::auth::jwks::{parse_jwks, KeySet};
    use serde_json::{json, Value};

    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://idp.example.com";
    const AUD: &str = "api://mongodb";

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "alice@example.com", "aud": AUD, "exp": NOW + 300,
            "groups": ["dba", "readers"], "email": "alice@example.com"})
    }

    fn rules(log: &[String]) -> ClaimRules<'_> {
        ClaimRules {
            issuer: ISS,
            audience: AUD,
            auth_name_prefix: "okta",
            principal_name: "sub",
            authorization_claim: Some("groups"),
            log_claims: log,
        }
    }

    fn m(s: &str) -> AuthFailure {
        AuthFailure::MalformedToken(s.into())
    }

    /// Splits, parses and checks claims with `rules`, no signature.
    fn check(token_claims: &Value, r: &ClaimRules<'_>) -> Result<Identity, AuthFailure> {
        let payload = token_claims.to_string();
        check_claims(&parse_claims(payload.as_bytes())?, r, 0, NOW)
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn header_result(header: Value) -> Result<Algorithm, AuthFailure> {
        let bytes = header.to_string();
        parse_header(bytes.as_bytes()).map(|h| h.alg)
    }

    #[test]
    fn compact_serialization_rules() {
        let h = b64(r#"{"alg":"RS256","kid":"a"}"#);
        let p = b64(r#"{}"#);
        let cases: Vec<(String, AuthFailure)> = vec![
            ("abc".into(), m("missing JWS delimiter")),
            (format!("{h}.{p}"), m("missing JWS delimiter")),
            (
                format!("{h}.{p}.c2ln.x"),
                m("too many delimiters in JWS token"),
            ),
            (format!("{h}.{p}."), m("signature is not base64url")),
            (format!("{h}.{p}.c2ln="), m("signature is not base64url")),
            (format!("{h}.{p}.c+ln"), m("signature is not base64url")),
            (format!("{h}=.{p}.c2ln"), m("header is not base64url")),
            (format!("!!.{p}.c2ln"), m("header is not base64url")),
            (format!("{h}.{p}*.c2ln"), m("payload is not base64url")),
            (
                "x".repeat(DEFAULT_MAX_TOKEN_SIZE + 1),
                AuthFailure::TokenTooLarge(DEFAULT_MAX_TOKEN_SIZE),
            ),
        ];
        for (token, want) in cases {
            assert_eq!(
                parse_unverified(&token, DEFAULT_MAX_TOKEN_SIZE).unwrap_err(),
                want,
                "{token:.40}"
            );
        }
    }

    #[test]
    fn header_rules() {
        let alg = |s: &str| AuthFailure::Algorithm(format!("Unknown hashing algorithm: '{s}'"));
        let cases: Vec<(Value, Result<Algorithm, AuthFailure>)> = vec![
            (json!({"alg": "RS256", "kid": "a"}), Ok(Algorithm::RS256)),
            (
                json!({"alg": "PS512", "kid": "a", "typ": "JWT"}),
                Ok(Algorithm::PS512),
            ),
            (
                json!({"alg": "ES384", "kid": "a", "typ": "at+jwt"}),
                Ok(Algorithm::ES384),
            ),
            (
                json!({"alg": "EdDSA", "kid": "a", "typ": "Application/AT+JWT"}),
                Ok(Algorithm::EdDSA),
            ),
            (
                json!({"alg": "ES256", "kid": "a", "typ": "jwt", "x5u": "ignored"}),
                Ok(Algorithm::ES256),
            ),
            (json!({"alg": "none", "kid": "a"}), Err(alg("none"))),
            (json!({"alg": "HS256", "kid": "a"}), Err(alg("HS256"))),
            (json!({"alg": "HS512"}), Err(alg("HS512"))),
            (json!({"alg": "rs256", "kid": "a"}), Err(alg("rs256"))),
            (json!({"kid": "a"}), Err(m("header has no 'alg'"))),
            (json!({"alg": "RS256"}), Err(m("header has no 'kid'"))),
            (
                json!({"alg": "RS256", "kid": ""}),
                Err(m("header 'kid' is empty")),
            ),
            (
                json!({"alg": "RS256", "kid": "a", "typ": "JWS"}),
                Err(m("Unknown type of token 'JWS'")),
            ),
        ];
        for (header, want) in cases {
            assert_eq!(header_result(header.clone()), want, "{header}");
        }
        assert_eq!(
            parse_header(br#"{"alg":"RS256","kid":1}"#).unwrap_err(),
            m("header 'kid' must be a string")
        );
        for bad in [
            r#"{"alg":"RS256","alg":"none","kid":"a"}"#,
            "[]",
            "{",
            "null",
        ] {
            let got = parse_header(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(&got, AuthFailure::MalformedToken(s) if s.starts_with("header is not a valid JOSE header")),
                "{bad}: {got}"
            );
        }
    }

    #[test]
    fn header_borrows_from_decoded_bytes() {
        let bytes = br#"{"alg":"RS256","kid":"key-1"}"#;
        assert!(matches!(
            parse_header(bytes).unwrap().kid,
            Cow::Borrowed("key-1")
        ));
        let claims = parse_claims(claims().to_string().as_bytes())
            .map(|c| matches!(c.iss, Cow::Borrowed(_)));
        assert_eq!(claims, Ok(true));
    }

    #[test]
    fn claim_shape_rules() {
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            c
        };
        let without = |k: &str| {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(k);
            c
        };
        let cases: Vec<(Value, AuthFailure)> = vec![
            (without("iss"), m("claim 'iss' is missing")),
            (without("sub"), m("claim 'sub' is missing")),
            (without("aud"), m("claim 'aud' is missing")),
            (without("exp"), m("claim 'exp' is missing")),
            (with("iss", json!(1)), m("claim 'iss' must be a string")),
            (with("sub", json!(null)), m("claim 'sub' must be a string")),
            (
                with("aud", json!(7)),
                m("claim 'aud' must be a string or an array of strings"),
            ),
            (
                with("aud", json!([AUD, 7])),
                m("claim 'aud' must be a string or an array of strings"),
            ),
            (
                with("exp", json!("1700000300")),
                m("claim 'exp' must be a number"),
            ),
            (with("exp", json!(null)), m("claim 'exp' must be a number")),
            (with("nbf", json!("0")), m("claim 'nbf' must be a number")),
            (with("nbf", json!({})), m("claim 'nbf' must be a number")),
        ];
        for (c, want) in cases {
            assert_eq!(
                parse_claims(c.to_string().as_bytes()).unwrap_err(),
                want,
                "{c}"
            );
        }
        let dup =
            format!(r#"{{"iss":"{ISS}","iss":"https://evil","sub":"a","aud":"{AUD}","exp":1}}"#);
        let got = parse_claims(dup.as_bytes()).unwrap_err();
        assert!(got.to_string().contains("duplicate claim 'iss'"), "{got}");
        assert!(parse_claims(b"[1]").is_err());
    }

    #[test]
    fn claim_rules() {
        let log: Vec<String> = vec!["iss".into(), "sub".into()];
        let base = rules(&log);
        let email = ClaimRules {
            principal_name: "email",
            ..base
        };
        let no_authz = ClaimRules {
            authorization_claim: None,
            ..base
        };
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            c
        };
        let without = |k: &str| {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(k);
            c
        };
        let claim = |s: &str| AuthFailure::Claim(s.into());
        let cases: Vec<(&str, Value, ClaimRules<'_>, Result<(), AuthFailure>)> = vec![
            ("valid", claims(), base, Ok(())),
            (
                "iss differs",
                with("iss", json!("https://idp.example.com/")),
                base,
                Err(AuthFailure::Issuer(format!(
                    "Token issuer 'https://idp.example.com/' does not equal '{ISS}'"
                ))),
            ),
            (
                "aud differs",
                with("aud", json!("other")),
                base,
                Err(AuthFailure::Audience(format!(
                    "Token audience 'other' does not contain '{AUD}'"
                ))),
            ),
            (
                "aud array contains",
                with("aud", json!(["x", AUD])),
                base,
                Ok(()),
            ),
            (
                "aud array lacks",
                with("aud", json!(["x", "y"])),
                base,
                Err(AuthFailure::Audience(format!(
                    "Token audience 'x, y' does not contain '{AUD}'"
                ))),
            ),
            (
                "exp == now",
                with("exp", json!(NOW)),
                base,
                Err(AuthFailure::Expired),
            ),
            (
                "exp < now",
                with("exp", json!(NOW - 1)),
                base,
                Err(AuthFailure::Expired),
            ),
            (
                "exp float future",
                with("exp", json!(NOW as f64 + 0.5)),
                base,
                Ok(()),
            ),
            (
                "exp negative",
                with("exp", json!(-5)),
                base,
                Err(AuthFailure::Expired),
            ),
            ("nbf now+60", with("nbf", json!(NOW + 60)), base, Ok(())),
            (
                "nbf now+61",
                with("nbf", json!(NOW + 61)),
                base,
                Err(AuthFailure::NotYetValid),
            ),
            ("nbf past", with("nbf", json!(NOW - 1000)), base, Ok(())),
            (
                "principal missing",
                without("email"),
                email,
                Err(claim(
                    "Unable to find principal claim 'email' in token body",
                )),
            ),
            (
                "principal wrong type",
                with("email", json!(["a"])),
                email,
                Err(claim(
                    "Principal claim 'email' in token body is invalid type",
                )),
            ),
            (
                "principal empty",
                with("email", json!("")),
                email,
                Err(claim(
                    "Invalid empty principal claim in token field 'email'",
                )),
            ),
            (
                "sub still required",
                without("sub"),
                email,
                Err(m("claim 'sub' is missing")),
            ),
            (
                "groups missing",
                without("groups"),
                base,
                Err(claim("Claim 'groups' not found on OIDC token")),
            ),
            (
                "groups string",
                with("groups", json!("dba")),
                base,
                Err(claim(
                    "Authorization claim 'groups' must be an array of strings",
                )),
            ),
            (
                "groups mixed",
                with("groups", json!(["dba", 1])),
                base,
                Err(claim(
                    "Authorization claim 'groups' must be an array of strings",
                )),
            ),
            ("groups empty", with("groups", json!([])), base, Ok(())),
            ("groups unused", without("groups"), no_authz, Ok(())),
        ];
        for (name, c, r, want) in cases {
            assert_eq!(check(&c, &r).map(|_| ()), want, "{name}");
        }
    }

    #[test]
    fn identity_names_roles_and_log_claims() {
        let log: Vec<String> = vec![
            "iss".into(),
            "sub".into(),
            "groups".into(),
            "missing".into(),
        ];
        let id = check(&claims(), &rules(&log)).unwrap();
        assert_eq!(id.principal, "alice@example.com");
        assert_eq!(id.user, "okta/alice@example.com");
        assert_eq!(id.roles, vec!["okta/dba", "okta/readers"]);
        assert_eq!(id.expires_at, NOW + 300);
        assert_eq!(
            id.log_claims,
            vec![
                ("iss".to_string(), ISS.to_string()),
                ("sub".to_string(), "alice@example.com".to_string()),
                ("groups".to_string(), r#"["dba","readers"]"#.to_string()),
            ]
        );
        let email = ClaimRules {
            principal_name: "email",
            authorization_claim: None,
            ..rules(&log)
        };
        let mut c = claims();
        c["email"] = json!("a\u{e9}@x");
        let id = check(&c, &email).unwrap();
        assert_eq!((id.user.as_str(), id.roles.len()), ("okta/a\u{e9}@x", 0));
    }

    fn set(keys: &[&TestKey]) -> KeySet {
        parse_jwks(jwks_of(keys).as_bytes()).unwrap()
    }

    fn verify_token(token: &str, keys: &KeySet) -> Result<(), AuthFailure> {
        let jws = split(token, DEFAULT_MAX_TOKEN_SIZE)?;
        let hb = jws.decode_header()?;
        let h = parse_header(&hb)?;
        let key = keys
            .get(&h.kid)
            .ok_or(AuthFailure::UnknownKey(h.kid.to_string()))?;
        verify_signature(&jws, h.alg, key)
    }

    #[test]
    fn signatures_for_every_algorithm() {
        let keys = [
            rsa_key("rs256", Algorithm::RS256),
            rsa_key("rs384", Algorithm::RS384),
            rsa_key("rs512", Algorithm::RS512),
            rsa_key("ps256", Algorithm::PS256),
            rsa_key("ps384", Algorithm::PS384),
            rsa_key("ps512", Algorithm::PS512),
            p256_key("es256"),
            p384_key("es384"),
            ed25519_key("eddsa"),
        ];
        let all = set(&keys.iter().collect::<Vec<_>>());
        for k in &keys {
            let token = sign(k, &claims());
            assert_eq!(verify_token(&token, &all), Ok(()), "{}", k.kid);
            // Flip the payload: same signature, different signed bytes.
            let mut parts: Vec<String> = token.split('.').map(String::from).collect();
            parts[1] = b64(
                &json!({"iss": ISS, "sub": "mallory", "aud": AUD, "exp": NOW + 300}).to_string(),
            );
            assert_eq!(
                verify_token(&parts.join("."), &all),
                Err(AuthFailure::BadSignature),
                "{}",
                k.kid
            );
        }
    }

    #[test]
    fn key_family_must_fit_alg() {
        let rsa = rsa_key("r", Algorithm::RS256);
        let ec = p256_key("e");
        let keys = set(&[&rsa, &ec]);
        // An RSA key named by an ES256 header, a P-256 key named by ES384.
        let header = json!({"alg": "ES256", "kid": "r"}).to_string();
        let t = sign_raw(&ec, Algorithm::ES256, &header, &claims().to_string());
        assert!(matches!(
            verify_token(&t, &keys),
            Err(AuthFailure::Algorithm(_))
        ));
        let header = json!({"alg": "ES384", "kid": "e"}).to_string();
        let p384 = p384_key("x");
        let t = sign_raw(&p384, Algorithm::ES384, &header, &claims().to_string());
        assert!(matches!(
            verify_token(&t, &keys),
            Err(AuthFailure::Algorithm(_))
        ));
        let header = json!({"alg": "PS256", "kid": "e"}).to_string();
        let t = sign_raw(&rsa, Algorithm::PS256, &header, &claims().to_string());
        assert!(matches!(
            verify_token(&t, &keys),
            Err(AuthFailure::Algorithm(_))
        ));
    }

    #[test]
    fn signature_of_wrong_length_is_bad_not_a_panic() {
        let ec = p256_key("e");
        let keys = set(&[&ec]);
        let token = sign(&ec, &claims());
        let (input, _) = token.rsplit_once('.').unwrap();
        for sig in ["AA", "AAAA", &"A".repeat(400)] {
            assert_eq!(
                verify_token(&format!("{input}.{sig}"), &keys),
                Err(AuthFailure::BadSignature)
            );
        }
    }
}
