//! MongoDB's own `oidcIdentityProviders` setting, accepted as JSON so an
//! operator can paste their mongod value unchanged (mongod's field names and rules):
//!
//! ```toml
//! # a TOML literal string: ''' when the JSON spans several lines
//! identity_providers_json = '[{"issuer": "https://idp.example.com", ...}]'
//! # or, resolved against the config file's directory:
//! identity_providers_file = "oidc-identity-providers.json"
//! ```
//!
//! Parsing is as strict as mongod's IDL: unknown fields, repeated fields and
//! wrong JSON types are refused, naming the element and field
//! (`identity_providers_json[0].serverCAFile`). Either key, not both, and
//! never together with `[[identity_provider]]` tables.
//! The mapped entries then go through the same rules as `[[identity_provider]]`
//! tables; those errors are renamed to the JSON spelling
//! (`identity_providers_json[1].matchPattern`).
//!
//! Differences from the TOML tables, all following mongod:
//! - `authorizationClaim` has no default: it is required while
//!   `useAuthorizationClaim` is true (its default).
//! - `JWKSPollSecs` defaults to 86400 (mongod's default), not 0.
//! - `jwks_uri` and `jwks_min_quiesce_secs` cannot be set (mongod has no such
//!   IdP fields): keys come from discovery, the quiesce period is 60 s.
//! - Percona Server for MongoDB's `serverCAFile` is accepted as `tls_ca_file`
//!   (relative paths are resolved against the config file's directory).

use std::collections::HashSet;
use std::path::Path;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{ConfigError, IdentityProviderConfig};

pub(super) const JSON_KEY: &str = "identity_providers_json";
pub(super) const FILE_KEY: &str = "identity_providers_file";

/// mongod's default `JWKSPollSecs`.
pub(crate) const MONGOD_DEFAULT_POLL_SECS: u64 = 86_400;

/// Every field of mongod's GA `OIDCIdentityProviderConfig` (and Percona's
/// `serverCAFile`), with the `IdentityProviderConfig` field it maps onto.
const FIELDS: [(&str, &str); 13] = [
    ("issuer", "issuer"),
    ("audience", "audience"),
    ("authNamePrefix", "auth_name_prefix"),
    ("matchPattern", "match_pattern"),
    ("clientId", "client_id"),
    ("requestScopes", "request_scopes"),
    ("principalName", "principal_name"),
    ("authorizationClaim", "authorization_claim"),
    ("useAuthorizationClaim", "use_authorization_claim"),
    ("supportsHumanFlows", "supports_human_flows"),
    ("JWKSPollSecs", "jwks_poll_secs"),
    ("logClaims", "log_claims"),
    ("serverCAFile", "tls_ca_file"),
];

/// Parses the JSON text of `identity_providers_json` (or the file's contents;
/// `source` is the config key it came from) into validated IdP configs.
pub(super) fn parse(text: &str, source: &str) -> Result<Vec<IdentityProviderConfig>, ConfigError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ConfigError::new(
            source,
            format!(
                "is not valid JSON ({e}): paste MongoDB's oidcIdentityProviders value, \
                 a JSON array of objects"
            ),
        )
    })?;
    let Value::Array(items) = value else {
        return Err(ConfigError::new(
            source,
            "OIDC configuration must be an array",
        ));
    };
    if items.is_empty() {
        return Err(ConfigError::new(
            source,
            "is an empty array: configure at least one identity provider; without one nobody can sign in",
        ));
    }
    // The same elements unparsed, to find repeated names a `Value` hides.
    let raw: Vec<&RawValue> = serde_json::from_str(text).unwrap_or_default();
    let mut configs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(ConfigError::new(
                format!("{source}[{i}]"),
                "OIDC configuration must be an array of objects",
            ));
        };
        let el = Element { source, index: i };
        if let Some(name) = raw.get(i).and_then(|r| repeated_name(r)) {
            return Err(el.err(
                &name,
                "is given more than once: keep one (mongod refuses duplicate fields)",
            ));
        }
        configs.push(map_one(&el, obj)?);
    }
    super::identity_provider::validate(&configs).map_err(|e| rename(e, source))?;
    Ok(configs)
}

/// Reads and parses `identity_providers_file`.
pub(super) fn load_file(path: &Path) -> Result<Vec<IdentityProviderConfig>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(FILE_KEY, format!("cannot read '{}': {e}", path.display()))
    })?;
    parse(&text, FILE_KEY)
}

/// Names one element's fields in errors.
struct Element<'s> {
    source: &'s str,
    index: usize,
}

impl Element<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(format!("{}[{}].{field}", self.source, self.index), message)
    }

    fn string(&self, obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ConfigError> {
        match obj.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => {
                Err(self.err(name, format!("must be a string, got {}", type_name(other))))
            }
        }
    }

    fn required(&self, obj: &Map<String, Value>, name: &str) -> Result<String, ConfigError> {
        self.string(obj, name)?.ok_or_else(|| {
            self.err(
                name,
                format!(
                    "is missing: oidcIdentityProviders entries require issuer, audience and \
                     authNamePrefix{}",
                    issuer_note(obj)
                ),
            )
        })
    }

    fn boolean(&self, obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, ConfigError> {
        match obj.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(
                name,
                format!(
                    "must be a boolean (true or false), got {}",
                    type_name(other)
                ),
            )),
        }
    }

    fn strings(
        &self,
        obj: &Map<String, Value>,
        name: &str,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let items = match obj.get(name) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.err(
                    name,
                    format!("must be an array of strings, got {}", type_name(other)),
                ))
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => {
                    return Err(self.err(
                        &format!("{name}[{j}]"),
                        format!("must be a string, got {}", type_name(other)),
                    ))
                }
            }
        }
        Ok(Some(out))
    }

    fn seconds(&self, obj: &Map<String, Value>, name: &str) -> Result<Option<u64>, ConfigError> {
        match obj.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(other) => Err(self.err(
                name,
                format!(
                    "must be a whole number of seconds, 0 or at least 10, got {}",
                    match other {
                        Value::Number(n) => n.to_string(),
                        v => type_name(v).to_string(),
                    }
                ),
            )),
        }
    }
}

/// The first member name a JSON object repeats (a `Value` keeps only the
/// last one, which would silently change what the operator pasted).
fn repeated_name(raw: &RawValue) -> Option<String> {
    struct Repeated(Option<String>);
    impl<'de> Deserialize<'de> for Repeated {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Repeated;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Repeated, A::Error> {
                    let mut seen = HashSet::new();
                    let mut first = None;
                    while let Some(name) = map.next_key::<String>()? {
                        map.next_value::<IgnoredAny>()?;
                        if !seen.insert(name.clone()) && first.is_none() {
                            first = Some(name);
                        }
                    }
                    Ok(Repeated(first))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Repeated>(raw.get()).ok()?.0
}

fn issuer_note(obj: &Map<String, Value>) -> String {
    match obj.get("issuer").and_then(Value::as_str) {
        Some(issuer) => format!(" (entry for issuer '{issuer}')"),
        None => String::new(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn map_one(
    el: &Element<'_>,
    obj: &Map<String, Value>,
) -> Result<IdentityProviderConfig, ConfigError> {
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.iter().any(|(f, _)| f == k)) {
        return Err(el.err(unknown, unknown_field_message(unknown)));
    }
    let use_authorization_claim = el.boolean(obj, "useAuthorizationClaim")?.unwrap_or(true);
    let authorization_claim = el.string(obj, "authorizationClaim")?;
    if use_authorization_claim && authorization_claim.is_none() {
        return Err(el.err(
            "authorizationClaim",
            format!(
                "is missing: name the claim holding the groups (often \"groups\"), or set \
                 \"useAuthorizationClaim\": false{}",
                issuer_note(obj)
            ),
        ));
    }
    Ok(IdentityProviderConfig {
        issuer: el.required(obj, "issuer")?,
        audience: el.required(obj, "audience")?,
        auth_name_prefix: el.required(obj, "authNamePrefix")?,
        client_id: el.string(obj, "clientId")?,
        jwks_uri: None,
        match_pattern: el.string(obj, "matchPattern")?,
        request_scopes: el.strings(obj, "requestScopes")?.unwrap_or_default(),
        principal_name: el
            .string(obj, "principalName")?
            .unwrap_or_else(super::default_principal_name),
        authorization_claim: authorization_claim.unwrap_or_default(),
        use_authorization_claim,
        supports_human_flows: el.boolean(obj, "supportsHumanFlows")?.unwrap_or(true),
        jwks_poll_secs: el
            .seconds(obj, "JWKSPollSecs")?
            .unwrap_or(MONGOD_DEFAULT_POLL_SECS),
        jwks_min_quiesce_secs: super::default_quiesce(),
        log_claims: el
            .strings(obj, "logClaims")?
            .unwrap_or_else(super::default_log_claims),
        tls_ca_file: el.string(obj, "serverCAFile")?.map(Into::into),
        jwks_fetch_timeout_secs: super::default_jwks_fetch_timeout_secs(),
    })
}

fn unknown_field_message(name: &str) -> String {
    let known: Vec<&str> = FIELDS.iter().map(|(f, _)| *f).collect();
    let hint = if let Some((f, _)) = FIELDS.iter().find(|(f, _)| f.eq_ignore_ascii_case(name)) {
        format!(" (field names are case-sensitive: did you mean '{f}'?)")
    } else {
        match name {
            "JWKSUri" | "jwks_uri" => " (to fetch keys from a fixed URL instead of discovery, \
                                        use an [[identity_provider]] table with jwks_uri)"
                .to_string(),
            _ => String::new(),
        }
    };
    format!(
        "unknown field '{name}'{hint}; oidcIdentityProviders fields are {}",
        known.join(", ")
    )
}

/// Renames an `identity_provider[i].snake_name` error from the shared rules
/// to the JSON spelling, in the field and in the message.
fn rename(e: ConfigError, source: &str) -> ConfigError {
    let fix = |text: &str| {
        let mut out = text.replace("identity_provider[", &format!("{source}["));
        // Longest first: "authorization_claim" is inside "use_authorization_claim".
        let mut pairs = FIELDS;
        pairs.sort_by_key(|(_, snake)| std::cmp::Reverse(snake.len()));
        // Only where a field is referred to (`x[0].snake`, `snake = true`),
        // never inside a configured value quoted in the message.
        for (camel, snake) in pairs {
            out = out
                .replace(&format!(".{snake}"), &format!(".{camel}"))
                .replace(&format!("{snake} ="), &format!("{camel} ="));
        }
        out
    };
    ConfigError::new(fix(&e.field), fix(&e.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value) -> Result<Vec<IdentityProviderConfig>, ConfigError> {
        parse(&v.to_string(), JSON_KEY)
    }

    fn refused(v: Value) -> String {
        parse_json(v).unwrap_err().to_string()
    }

    fn human(issuer: &str, pattern: Option<&str>) -> Value {
        let mut v = json!({"issuer": issuer, "audience": "api://mongodb", "authNamePrefix": "corp",
            "clientId": "client-1", "authorizationClaim": "groups"});
        if let Some(p) = pattern {
            v["matchPattern"] = json!(p);
        }
        v
    }

    /// The example of MongoDB's documentation for self-managed workforce
    /// (human) and workload (machine) identity federation, as an operator
    /// would pass it to mongod (`--setParameter oidcIdentityProviders='...'`).
    const MONGOD_SETTING: &str = r#"[
      {
        "issuer": "https://okta-test.okta.com",
        "audience": "example@kernel.mongodb.com",
        "authNamePrefix": "okta-issuer",
        "matchPattern": "@okta-test\\.com$",
        "clientId": "0oadp0hpl7q3UIehP297",
        "requestScopes": ["okta.users.read"],
        "principalName": "sub",
        "authorizationClaim": "groups",
        "supportsHumanFlows": true,
        "useAuthorizationClaim": true,
        "logClaims": ["iss", "sub", "groups"],
        "JWKSPollSecs": 86400
      },
      {
        "issuer": "https://login.microsoftonline.com/c96563a8-841b-4ef9-af16-33548de0c958/v2.0",
        "audience": "e3ba89aa-c1f5-4a13-a4b9-1f1b7e3a1b8d",
        "authNamePrefix": "azure",
        "principalName": "oid",
        "authorizationClaim": "groups",
        "supportsHumanFlows": false
      }
    ]"#;

    #[test]
    fn a_real_mongod_setting_maps_field_by_field() {
        let c = parse(MONGOD_SETTING, JSON_KEY).unwrap();
        assert_eq!(c.len(), 2);
        let okta = &c[0];
        assert_eq!(okta.issuer, "https://okta-test.okta.com");
        assert_eq!(okta.audience, "example@kernel.mongodb.com");
        assert_eq!(okta.auth_name_prefix, "okta-issuer");
        assert_eq!(okta.match_pattern.as_deref(), Some("@okta-test\\.com$"));
        assert_eq!(okta.client_id.as_deref(), Some("0oadp0hpl7q3UIehP297"));
        assert_eq!(okta.request_scopes, ["okta.users.read"]);
        assert_eq!(okta.principal_name, "sub");
        assert_eq!(okta.authorization_claim, "groups");
        assert!(okta.supports_human_flows && okta.use_authorization_claim);
        assert_eq!(okta.log_claims, ["iss", "sub", "groups"]);
        assert_eq!(okta.jwks_poll_secs, 86_400);
        assert_eq!(
            (okta.jwks_uri.as_deref(), okta.jwks_min_quiesce_secs),
            (None, 60)
        );
        let entra = &c[1];
        assert_eq!(entra.principal_name, "oid");
        assert!(!entra.supports_human_flows);
        assert_eq!(entra.client_id, None);
        assert_eq!(entra.log_claims, ["iss", "sub"], "mongod's default");
        assert_eq!(entra.jwks_poll_secs, MONGOD_DEFAULT_POLL_SECS);
    }

    #[test]
    fn percona_server_ca_file_is_the_tls_ca_file() {
        let mut e = human("https://idp.example.com", None);
        e["serverCAFile"] = json!("/etc/ssl/idp-ca.pem");
        let c = parse_json(json!([e])).unwrap();
        assert_eq!(
            c[0].tls_ca_file.as_deref(),
            Some(Path::new("/etc/ssl/idp-ca.pem"))
        );
        assert_eq!(c[0].jwks_fetch_timeout_secs, 5);
    }

    #[test]
    fn defaults_of_a_minimal_entry() {
        let c = parse_json(
            json!([{"issuer": "https://idp.example.com", "audience": "a",
            "authNamePrefix": "p", "clientId": "c", "useAuthorizationClaim": false}]),
        )
        .unwrap();
        let c = &c[0];
        assert_eq!(c.principal_name, "sub");
        assert!(!c.use_authorization_claim);
        assert!(c.supports_human_flows);
        assert!(c.request_scopes.is_empty() && c.match_pattern.is_none());
        assert_eq!(c.log_claims, ["iss", "sub"]);
        assert_eq!(c.jwks_poll_secs, 86_400);
        let zero = parse_json(
            json!([{"issuer": "https://idp.example.com", "audience": "a",
            "authNamePrefix": "p", "supportsHumanFlows": false, "authorizationClaim": "roles",
            "JWKSPollSecs": 0}]),
        )
        .unwrap();
        assert_eq!(zero[0].jwks_poll_secs, 0);
        assert_eq!(zero[0].authorization_claim, "roles");
    }

    #[test]
    fn refused_shapes_with_exact_messages() {
        let base = || human("https://idp.example.com", None);
        let with = |k: &str, v: Value| {
            let mut e = base();
            e[k] = v;
            json!([e])
        };
        let without = |k: &str| {
            let mut e = base();
            e.as_object_mut().unwrap().remove(k);
            json!([e])
        };
        let fields = "issuer, audience, authNamePrefix, matchPattern, clientId, requestScopes, \
                      principalName, authorizationClaim, useAuthorizationClaim, \
                      supportsHumanFlows, JWKSPollSecs, logClaims, serverCAFile";
        let cases: Vec<(Value, String)> = vec![
            (
                json!({"issuer": "https://idp.example.com"}),
                "identity_providers_json: OIDC configuration must be an array".into(),
            ),
            (
                json!("[]"),
                "identity_providers_json: OIDC configuration must be an array".into(),
            ),
            (
                json!([base(), "https://idp.example.com"]),
                "identity_providers_json[1]: OIDC configuration must be an array of objects".into(),
            ),
            (
                json!([]),
                "identity_providers_json: is an empty array: configure at least one identity \
                 provider; without one nobody can sign in"
                    .into(),
            ),
            (
                with("serverCAFile", json!(7)),
                "identity_providers_json[0].serverCAFile: must be a string, got a number".into(),
            ),
            (
                with("serverCAFile", json!("")),
                "identity_providers_json[0].serverCAFile: must not be empty: name a PEM file \
                 of CA certificates, or omit it to trust the system's roots only"
                    .into(),
            ),
            (
                with("clientSecret", json!("s3cret")),
                format!(
                    "identity_providers_json[0].clientSecret: unknown field 'clientSecret'; \
                     oidcIdentityProviders fields are {fields}"
                ),
            ),
            (
                with("JWKSUri", json!("https://idp.example.com/keys")),
                format!(
                    "identity_providers_json[0].JWKSUri: unknown field 'JWKSUri' (to fetch keys \
                     from a fixed URL instead of discovery, use an [[identity_provider]] table \
                     with jwks_uri); oidcIdentityProviders fields are {fields}"
                ),
            ),
            (
                with("jwksPollSecs", json!(60)),
                format!(
                    "identity_providers_json[0].jwksPollSecs: unknown field 'jwksPollSecs' \
                     (field names are case-sensitive: did you mean 'JWKSPollSecs'?); \
                     oidcIdentityProviders fields are {fields}"
                ),
            ),
            (
                with("auth_name_prefix", json!("x")),
                format!(
                    "identity_providers_json[0].auth_name_prefix: unknown field 'auth_name_prefix'; \
                     oidcIdentityProviders fields are {fields}"
                ),
            ),
            (
                with("issuer", json!(42)),
                "identity_providers_json[0].issuer: must be a string, got a number".into(),
            ),
            (
                with("clientId", Value::Null),
                "identity_providers_json[0].clientId: must be a string, got null".into(),
            ),
            (
                with("supportsHumanFlows", json!("true")),
                "identity_providers_json[0].supportsHumanFlows: must be a boolean (true or false), got a string".into(),
            ),
            (
                with("useAuthorizationClaim", json!(1)),
                "identity_providers_json[0].useAuthorizationClaim: must be a boolean (true or false), got a number".into(),
            ),
            (
                with("requestScopes", json!("openid")),
                "identity_providers_json[0].requestScopes: must be an array of strings, got a string".into(),
            ),
            (
                with("logClaims", json!(["iss", 7])),
                "identity_providers_json[0].logClaims[1]: must be a string, got a number".into(),
            ),
            (
                with("JWKSPollSecs", json!(-1)),
                "identity_providers_json[0].JWKSPollSecs: must be a whole number of seconds, 0 or at least 10, got -1".into(),
            ),
            (
                with("JWKSPollSecs", json!(60.5)),
                "identity_providers_json[0].JWKSPollSecs: must be a whole number of seconds, 0 or at least 10, got 60.5".into(),
            ),
            (
                with("JWKSPollSecs", json!("60")),
                "identity_providers_json[0].JWKSPollSecs: must be a whole number of seconds, 0 or at least 10, got a string".into(),
            ),
            (
                without("issuer"),
                "identity_providers_json[0].issuer: is missing: oidcIdentityProviders entries \
                 require issuer, audience and authNamePrefix"
                    .into(),
            ),
            (
                without("audience"),
                "identity_providers_json[0].audience: is missing: oidcIdentityProviders entries \
                 require issuer, audience and authNamePrefix (entry for issuer 'https://idp.example.com')"
                    .into(),
            ),
            (
                without("authNamePrefix"),
                "identity_providers_json[0].authNamePrefix: is missing: oidcIdentityProviders \
                 entries require issuer, audience and authNamePrefix (entry for issuer \
                 'https://idp.example.com')"
                    .into(),
            ),
            (
                without("authorizationClaim"),
                "identity_providers_json[0].authorizationClaim: is missing: name the claim \
                 holding the groups (often \"groups\"), or set \"useAuthorizationClaim\": false \
                 (entry for issuer 'https://idp.example.com')"
                    .into(),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(refused(json.clone()), want, "for {json}");
        }
    }

    #[test]
    fn a_repeated_field_is_refused() {
        let text = r#"[{"issuer": "https://idp.example.com", "audience": "a",
            "authNamePrefix": "p", "clientId": "c", "authorizationClaim": "groups"},
            {"issuer": "https://idp.example.com", "audience": "b", "audience": "c",
            "authNamePrefix": "p", "supportsHumanFlows": false, "useAuthorizationClaim": false}]"#;
        assert_eq!(
            parse(text, JSON_KEY).unwrap_err().to_string(),
            "identity_providers_json[1].audience: is given more than once: keep one \
             (mongod refuses duplicate fields)"
        );
    }

    #[test]
    fn not_json_at_all() {
        let e = parse("[{issuer: 'x'}]", JSON_KEY).unwrap_err();
        assert_eq!(e.field, "identity_providers_json");
        assert!(
            e.message
                .starts_with("is not valid JSON (key must be a string at line 1 column 3)"),
            "{e}"
        );
        assert!(e
            .message
            .ends_with("paste MongoDB's oidcIdentityProviders value, a JSON array of objects"));
    }

    /// The shared `[[identity_provider]]` rules apply after mapping, and their
    /// errors use the JSON names.
    #[test]
    fn shared_rules_in_json_spelling() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!([{"issuer": "http://idp.example.com", "audience": "a", "authNamePrefix": "p",
                    "clientId": "c", "authorizationClaim": "groups"}]),
                "identity_providers_json[0].issuer: 'http://idp.example.com' is not accepted: \
                 must use https (http is only allowed for loopback hosts)",
            ),
            (
                json!([{"issuer": "https://idp.example.com", "audience": "a", "authNamePrefix": "foo.bar",
                    "clientId": "c", "authorizationClaim": "groups"}]),
                "identity_providers_json[0].authNamePrefix: 'foo.bar' may only contain letters, \
                 digits, '_' and '-'",
            ),
            (
                json!([{"issuer": "https://idp.example.com", "audience": "", "authNamePrefix": "p",
                    "clientId": "c", "authorizationClaim": "groups"}]),
                "identity_providers_json[0].audience: must not be empty: set it to the audience \
                 ('aud') the tokens carry",
            ),
            (
                json!([{"issuer": "https://idp.example.com", "audience": "a", "authNamePrefix": "p",
                    "authorizationClaim": "groups"}]),
                "identity_providers_json[0].clientId: is required when supportsHumanFlows = true: \
                 set the OAuth client id human-flow clients use, or set supportsHumanFlows = false",
            ),
            (
                json!([human("https://a.example", Some("("))]),
                "identity_providers_json[0].matchPattern: is not a valid regular expression: \
                 regex parse error:\n    (\n    ^\nerror: unclosed group",
            ),
            (
                json!([human("https://a.example", Some("@a$")), human("https://b.example", None)]),
                "identity_providers_json[1].matchPattern: is required because 2 identity \
                 providers have supportsHumanFlows = true: add a pattern matching this IdP's user names",
            ),
            (
                json!([
                    {"issuer": "https://m.example", "audience": "a", "authNamePrefix": "m",
                     "supportsHumanFlows": false, "useAuthorizationClaim": false},
                    human("https://a.example", Some("@a$"))
                ]),
                "identity_providers_json[1].matchPattern: All IdPs without matchPatterns must be \
                 listed after those with matchPatterns: move this entry before identity_providers_json[0]",
            ),
            (
                json!([human("https://a.example", Some("@a$")), human("https://a.example", Some("@b$"))]),
                "identity_providers_json[1].audience: Duplicate configuration for issuer-audience \
                 pair ('https://a.example', 'api://mongodb'), already used by identity_providers_json[0]: \
                 remove one of them",
            ),
            (
                json!([{"issuer": "https://idp.example.com", "audience": "a", "authNamePrefix": "p",
                    "clientId": "c", "authorizationClaim": "groups", "JWKSPollSecs": 9}]),
                "identity_providers_json[0].JWKSPollSecs: must be 0 (no periodic refresh) or at \
                 least 10 seconds, got 9",
            ),
            (
                json!([
                    {"issuer": "https://a.example", "audience": "one", "authNamePrefix": "m",
                     "supportsHumanFlows": false, "useAuthorizationClaim": false},
                    {"issuer": "https://a.example", "audience": "two", "authNamePrefix": "m",
                     "supportsHumanFlows": false, "useAuthorizationClaim": false, "JWKSPollSecs": 60}
                ]),
                "identity_providers_json[1].JWKSPollSecs: must equal \
                 identity_providers_json[0].JWKSPollSecs (86400): both use issuer 'https://a.example'",
            ),
            (
                json!([{"issuer": "https://idp.example.com", "audience": "a", "authNamePrefix": "p",
                    "clientId": "c", "authorizationClaim": "groups", "requestScopes": ["openid", ""]}]),
                "identity_providers_json[0].requestScopes[1]: must not be empty: remove the empty string",
            ),
            (
                json!([{"issuer": "https://idp.example.com", "audience": "a", "authNamePrefix": "p",
                    "clientId": "c", "authorizationClaim": ""}]),
                "identity_providers_json[0].authorizationClaim: must not be empty when \
                 useAuthorizationClaim = true: name the claim holding the groups, or set \
                 useAuthorizationClaim = false",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(refused(json.clone()), want, "for {json}");
        }
    }

    #[test]
    fn file_source_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idps.json");
        std::fs::write(
            &path,
            r#"[{"issuer": "https://idp.example.com", "bogus": 1}]"#,
        )
        .unwrap();
        let e = load_file(&path).unwrap_err().to_string();
        assert!(
            e.starts_with("identity_providers_file[0].bogus: unknown field 'bogus';"),
            "{e}"
        );
        let e = load_file(&dir.path().join("missing.json")).unwrap_err();
        assert_eq!(e.field, "identity_providers_file");
        assert!(e.message.starts_with(&format!(
            "cannot read '{}':",
            dir.path().join("missing.json").display()
        )));
    }
}
