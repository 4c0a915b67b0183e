//! mongod's key-management commands, answered by the proxy for sessions
//! whose grant has `admin = true`: `oidcListKeys` and `oidcRefreshKeys`.
//!
//! [`parse`] reads a command's arguments as mongod's IDL would (the decide
//! step calls it, so a malformed command is refused before any rule that
//! reads the session); the reply builders are pure; [`refresh_keys`] is the
//! one step that fetches.

use bson::raw::{cstr, RawBsonRef};
use bson::spec::ElementType;
use bson::{RawArrayBuf, RawDocument, RawDocumentBuf};

use crate::auth::jwks::{JwksCache, JwksError, KeySet};
use crate::auth::IdpRegistry;
use crate::errors::MongoError;

/// An administrative command, with its arguments read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// `{oidcListKeys: 1, identityProviders?: [<issuer>, ...]}`
    ListKeys { issuers: Option<Vec<String>> },
    /// `{oidcRefreshKeys: 1, identityProviders?: [...], invalidateOnFailure?: bool}`
    RefreshKeys {
        issuers: Option<Vec<String>>,
        /// mongod's default is true: a failed forced refresh drops the
        /// issuer's keys and ends its sessions.
        invalidate_on_failure: bool,
    },
}

pub const LIST_KEYS: &str = "oidcListKeys";
pub const REFRESH_KEYS: &str = "oidcRefreshKeys";

/// Whether `name` is one of the administrative commands (names are
/// case-sensitive, as on mongod).
pub fn is_admin_command(name: &str) -> bool {
    name == LIST_KEYS || name == REFRESH_KEYS
}

impl AdminCommand {
    pub fn name(&self) -> &'static str {
        match self {
            AdminCommand::ListKeys { .. } => LIST_KEYS,
            AdminCommand::RefreshKeys { .. } => REFRESH_KEYS,
        }
    }

    /// The issuers the command is limited to, if any.
    pub fn issuers(&self) -> Option<&[String]> {
        match self {
            AdminCommand::ListKeys { issuers } | AdminCommand::RefreshKeys { issuers, .. } => {
                issuers.as_deref()
            }
        }
    }
}

/// mongod's name for a BSON type, as its IDL errors print it.
fn type_name(t: ElementType) -> &'static str {
    match t {
        ElementType::Double => "double",
        ElementType::String => "string",
        ElementType::EmbeddedDocument => "object",
        ElementType::Array => "array",
        ElementType::Binary => "binData",
        ElementType::Undefined => "undefined",
        ElementType::ObjectId => "objectId",
        ElementType::Boolean => "bool",
        ElementType::DateTime => "date",
        ElementType::Null => "null",
        ElementType::RegularExpression => "regex",
        ElementType::DbPointer => "dbPointer",
        ElementType::JavaScriptCode => "javascript",
        ElementType::Symbol => "symbol",
        ElementType::JavaScriptCodeWithScope => "javascriptWithScope",
        ElementType::Int32 => "int",
        ElementType::Timestamp => "timestamp",
        ElementType::Int64 => "long",
        ElementType::Decimal128 => "decimal",
        ElementType::MaxKey => "maxKey",
        ElementType::MinKey => "minKey",
    }
}

fn wrong_type(field: &str, got: ElementType, want: &str) -> MongoError {
    MongoError::type_mismatch(format!(
        "BSON field '{field}' is the wrong type '{}', expected type '{want}'",
        type_name(got)
    ))
}

/// Reads an administrative command's arguments. Other fields (`$db`,
/// `lsid`, `$clusterTime`, ... that drivers add) are ignored.
pub fn parse(name: &str, body: &RawDocument) -> Result<AdminCommand, MongoError> {
    let refresh = match name {
        LIST_KEYS => false,
        REFRESH_KEYS => true,
        other => {
            return Err(MongoError::command_not_found(format!(
                "no such command: '{other}'"
            )))
        }
    };
    let mut issuers: Option<Vec<String>> = None;
    let mut invalidate: Option<bool> = None;
    for element in body.iter() {
        let (key, value) = element.map_err(|e| MongoError::invalid_bson(e.to_string()))?;
        let key = key.as_str();
        let field = format!("{name}.{key}");
        let duplicate = || {
            MongoError::idl_duplicate_field(format!("BSON field '{field}' is a duplicate field"))
        };
        match key {
            "identityProviders" => {
                if issuers.is_some() {
                    return Err(duplicate());
                }
                let RawBsonRef::Array(array) = value else {
                    return Err(wrong_type(&field, value.element_type(), "array"));
                };
                let mut list = Vec::new();
                for (i, item) in array.into_iter().enumerate() {
                    let item = item.map_err(|e| MongoError::invalid_bson(e.to_string()))?;
                    match item {
                        RawBsonRef::String(s) => list.push(s.to_owned()),
                        other => {
                            return Err(wrong_type(
                                &format!("{field}.{i}"),
                                other.element_type(),
                                "string",
                            ))
                        }
                    }
                }
                issuers = Some(list);
            }
            "invalidateOnFailure" if refresh => {
                if invalidate.is_some() {
                    return Err(duplicate());
                }
                match value {
                    RawBsonRef::Boolean(b) => invalidate = Some(b),
                    other => return Err(wrong_type(&field, other.element_type(), "bool")),
                }
            }
            _ => {}
        }
    }
    Ok(if refresh {
        AdminCommand::RefreshKeys {
            issuers,
            invalidate_on_failure: invalidate.unwrap_or(true),
        }
    } else {
        AdminCommand::ListKeys { issuers }
    })
}

/// The caches a command addresses: every issuer's, or the listed ones that
/// exist (unknown issuers are skipped, as on mongod).
pub fn selected<'a>(
    caches: &'a [std::sync::Arc<JwksCache>],
    issuers: Option<&'a [String]>,
) -> impl Iterator<Item = &'a std::sync::Arc<JwksCache>> + 'a {
    caches
        .iter()
        .filter(move |c| issuers.is_none_or(|list| list.iter().any(|i| i == c.issuer())))
}

/// `{keys: [<JWK as fetched>, ...]}` of one issuer.
pub fn key_set_document(keys: &KeySet) -> RawDocumentBuf {
    let mut array = RawArrayBuf::new();
    for key in keys.iter() {
        // The text was parsed as a JSON object when the set was loaded.
        match serde_json::from_str::<bson::Document>(key.jwk_text.get())
            .ok()
            .and_then(|d| RawDocumentBuf::try_from(&d).ok())
        {
            Some(doc) => array.push(doc),
            None => {
                tracing::warn!(kid = %key.kid, "a JWK could not be shown as BSON; left out of oidcListKeys")
            }
        }
    }
    let mut doc = RawDocumentBuf::new();
    doc.append(cstr!("keys"), array);
    doc
}

/// The `oidcListKeys` reply: `{keySets: {"<issuer>": {keys: [...]}, ...}, ok: 1}`.
pub fn list_keys_reply(registry: &IdpRegistry, issuers: Option<&[String]>) -> RawDocumentBuf {
    let mut sets = RawDocumentBuf::new();
    for cache in selected(registry.jwks_caches(), issuers) {
        let Ok(issuer) = bson::raw::CString::try_from(cache.issuer()) else {
            continue;
        };
        sets.append(issuer, key_set_document(&cache.keys()));
    }
    let mut doc = RawDocumentBuf::new();
    doc.append(cstr!("keySets"), sets);
    doc.append(cstr!("ok"), 1.0);
    doc
}

/// The error of a refresh that failed for some issuers, worded as mongod's.
pub fn refresh_error(failures: &[(String, JwksError)]) -> Option<MongoError> {
    let operation_failed = |m: String| MongoError::with_code(96, "OperationFailed", m);
    match failures {
        [] => None,
        [(issuer, e)] => Some(operation_failed(format!(
            "Failed to refresh IdentityProvider '{issuer}' :: caused by :: {e}"
        ))),
        many => {
            let parts: String = many
                .iter()
                .map(|(issuer, e)| format!(" '{issuer}' : {{OperationFailed: {e}}},"))
                .collect();
            Some(operation_failed(format!(
                "One or more IDPs failed to refresh properly: [{parts} ]"
            )))
        }
    }
}

/// `oidcRefreshKeys`: fetches the selected issuers' keys now, ignoring the
/// quiesce period. A refresh that drops or changes a key bumps the issuer's
/// key generation, which ends the sessions signed with it (391).
pub async fn refresh_keys(
    registry: &IdpRegistry,
    issuers: Option<&[String]>,
    invalidate_on_failure: bool,
) -> Result<(), MongoError> {
    let mut failures = Vec::new();
    for cache in selected(registry.jwks_caches(), issuers) {
        if let Err(e) = cache.refresh_now(invalidate_on_failure).await {
            failures.push((cache.issuer().to_owned(), e));
        }
    }
    refresh_error(&failures).map_or(Ok(()), Err)
}

/// The `oidcRefreshKeys` reply.
pub fn refresh_reply(result: &Result<(), MongoError>) -> RawDocumentBuf {
    match result {
        Ok(()) => bson::rawdoc! { "ok": 1.0 },
        Err(e) => e.to_document(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::parse_jwks;
    use bson::rawdoc;

    fn parsed(doc: RawDocumentBuf) -> Result<AdminCommand, MongoError> {
        let name = crate::wire::op_msg::first_key(&doc).unwrap().to_owned();
        parse(&name, &doc)
    }

    #[test]
    fn parses_the_arguments_as_mongod() {
        assert_eq!(
            parsed(rawdoc! { "oidcListKeys": 1, "$db": "admin", "lsid": { "id": 1 } }),
            Ok(AdminCommand::ListKeys { issuers: None })
        );
        assert_eq!(
            parsed(rawdoc! { "oidcListKeys": 1, "identityProviders": ["https://a", "https://b"] }),
            Ok(AdminCommand::ListKeys {
                issuers: Some(vec!["https://a".into(), "https://b".into()])
            })
        );
        assert_eq!(
            parsed(rawdoc! { "oidcRefreshKeys": 1 }),
            Ok(AdminCommand::RefreshKeys {
                issuers: None,
                invalidate_on_failure: true
            })
        );
        assert_eq!(
            parsed(
                rawdoc! { "oidcRefreshKeys": true, "identityProviders": [], "invalidateOnFailure": false }
            ),
            Ok(AdminCommand::RefreshKeys {
                issuers: Some(vec![]),
                invalidate_on_failure: false
            })
        );
    }

    #[test]
    fn refuses_malformed_arguments_as_mongod_idl_does() {
        let cases = [
            (
                rawdoc! { "oidcListKeys": 1, "identityProviders": "https://a" },
                14,
                "BSON field 'oidcListKeys.identityProviders' is the wrong type 'string', expected type 'array'",
            ),
            (
                rawdoc! { "oidcListKeys": 1, "identityProviders": ["https://a", 5] },
                14,
                "BSON field 'oidcListKeys.identityProviders.1' is the wrong type 'int', expected type 'string'",
            ),
            (
                rawdoc! { "oidcRefreshKeys": 1, "invalidateOnFailure": 1 },
                14,
                "BSON field 'oidcRefreshKeys.invalidateOnFailure' is the wrong type 'int', expected type 'bool'",
            ),
            (
                rawdoc! { "oidcRefreshKeys": 1, "identityProviders": [], "identityProviders": [] },
                40413,
                "BSON field 'oidcRefreshKeys.identityProviders' is a duplicate field",
            ),
        ];
        for (doc, code, message) in cases {
            let e = parsed(doc).unwrap_err();
            assert_eq!((e.code, e.errmsg.as_str()), (code, message));
        }
    }

    fn rsa_text(kid: &str) -> String {
        // A real 2048-bit modulus is needed for the set to load.
        let key = crate::auth::jwks::testkit::rsa_key(kid, jsonwebtoken::Algorithm::RS256);
        let n = key.jwk["n"].as_str().unwrap().to_owned();
        format!(
            r#"{{"kty": "RSA", "use": "sig", "kid": "{kid}", "n": "{n}", "e": "AQAB", "x5t": ["a", "b"]}}"#
        )
    }

    #[test]
    fn a_key_set_is_listed_as_fetched_in_order() {
        let body = format!(r#"{{"keys": [{}, {}]}}"#, rsa_text("k1"), rsa_text("k2"));
        let set = parse_jwks(body.as_bytes()).unwrap();
        let doc = key_set_document(&set);
        let keys = doc.get_array("keys").unwrap();
        let first = keys.get(0).unwrap().unwrap();
        let first = first.as_document().unwrap();
        let names: Vec<&str> = first.iter().map(|e| e.unwrap().0.as_str()).collect();
        assert_eq!(names, ["kty", "use", "kid", "n", "e", "x5t"]);
        assert_eq!(first.get_str("kid").unwrap(), "k1");
        assert_eq!(
            first
                .get_array("x5t")
                .unwrap()
                .get(1)
                .unwrap()
                .unwrap()
                .as_str(),
            Some("b")
        );
        assert_eq!(keys.into_iter().count(), 2);
    }

    #[test]
    fn refresh_errors_name_the_issuers() {
        let e = |m: &str| JwksError::Http {
            url: format!("{m}/jwks"),
            message: "HTTP status 500 Internal Server Error".into(),
        };
        assert_eq!(refresh_error(&[]), None);
        let one = refresh_error(&[("https://a".into(), e("https://a"))]).unwrap();
        assert_eq!((one.code, one.code_name), (96, "OperationFailed"));
        assert_eq!(
            one.errmsg,
            "Failed to refresh IdentityProvider 'https://a' :: caused by :: fetching 'https://a/jwks' failed: HTTP status 500 Internal Server Error"
        );
        let two = refresh_error(&[
            ("https://a".into(), e("https://a")),
            ("https://b".into(), e("https://b")),
        ])
        .unwrap();
        assert_eq!(
            two.errmsg,
            "One or more IDPs failed to refresh properly: [ 'https://a' : {OperationFailed: fetching 'https://a/jwks' failed: HTTP status 500 Internal Server Error}, 'https://b' : {OperationFailed: fetching 'https://b/jwks' failed: HTTP status 500 Internal Server Error}, ]"
        );
        assert_eq!(refresh_reply(&Err(one)).get_i32("code").unwrap(), 96);
        assert_eq!(refresh_reply(&Ok(())), rawdoc! { "ok": 1.0 });
    }

    #[tokio::test]
    async fn list_keys_lists_every_or_the_named_issuers() {
        use crate::auth::jwks::testkit::{jwks_of, rsa_key, serve_idp};
        let a = rsa_key("a", jsonwebtoken::Algorithm::RS256);
        let (one, _s1) = serve_idp(jwks_of(&[&a])).await;
        let (two, _s2) = serve_idp(jwks_of(&[&a])).await;
        let idp = |issuer: &str, prefix: &str| -> crate::config::IdentityProviderConfig {
            toml::from_str(&format!(
                "issuer = \"{issuer}\"\naudience = \"a\"\nauth_name_prefix = \"{prefix}\"\nclient_id = \"c\""
            ))
            .unwrap()
        };
        let registry = IdpRegistry::new(&[idp(&one, "one"), idp(&two, "two")]).unwrap();
        registry.load_all().await;
        let all = list_keys_reply(&registry, None);
        assert_eq!(all.get_f64("ok").unwrap(), 1.0);
        let sets = all.get_document("keySets").unwrap();
        let issuers: Vec<&str> = sets.iter().map(|e| e.unwrap().0.as_str()).collect();
        assert_eq!(issuers, [one.as_str(), two.as_str()]);
        let kid = sets
            .get_document(&one)
            .unwrap()
            .get_array("keys")
            .unwrap()
            .get(0)
            .unwrap()
            .unwrap()
            .as_document()
            .unwrap()
            .get_str("kid")
            .unwrap()
            .to_owned();
        assert_eq!(kid, "a");
        let only = list_keys_reply(&registry, Some(&[two.clone(), "https://nowhere".into()]));
        let sets = only.get_document("keySets").unwrap();
        let issuers: Vec<&str> = sets.iter().map(|e| e.unwrap().0.as_str()).collect();
        assert_eq!(issuers, [two.as_str()]);
        let none = list_keys_reply(&registry, Some(&[]));
        assert!(none.get_document("keySets").unwrap().is_empty());
    }
}
