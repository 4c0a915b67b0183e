//! The server side of the MONGODB-OIDC SASL conversation: parsing
//! `saslStart`/`saslContinue`, the one-step (machine) and two-step (human)
//! flows, and the replies, as mongod sends them (docs/protocol.md).

use std::borrow::Cow;

use base64::Engine;
use bson::raw::RawBsonRef;
use bson::spec::BinarySubtype;
use bson::{rawdoc, RawDocument, RawDocumentBuf};

use super::idp::Step1;
use super::{AuthFailure, Identity, IdpRegistry};
use crate::errors::MongoError;

pub const MECHANISM: &str = "MONGODB-OIDC";
pub const EXTERNAL_DB: &str = "$external";
/// mongod numbers every conversation 1.
pub const CONVERSATION_ID: i32 = 1;

/// The reply mirrors the encoding of the request's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadEncoding {
    Binary,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslPayload<'a> {
    pub bytes: Cow<'a, [u8]>,
    pub encoding: PayloadEncoding,
}

/// A parsed `saslStart` command (or the body of `speculativeAuthenticate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslStart<'a> {
    pub mechanism: &'a str,
    pub payload: SaslPayload<'a>,
}

/// A parsed `saslContinue` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslContinue<'a> {
    pub conversation_id: i64,
    pub payload: SaslPayload<'a>,
}

/// What the client's payload asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStep<'a> {
    /// Two-step flow, step 1: `{n?: principal-name hint}`.
    Principal { hint: Option<&'a str> },
    /// One-step flow, or step 2: `{jwt}`.
    Jwt(&'a str),
}

/// The result of one successful SASL step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Step 1 of the human flow: the IdP document for the client, `done:
    /// false`, and what step 2 is checked against.
    Challenge {
        reply: RawDocumentBuf,
        pending: Pending,
    },
    /// The token was verified, `done: true`.
    Authenticated(Identity),
}

/// What step 1 of the human flow chose, kept until `saslContinue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub idp: usize,
    pub hint: Option<String>,
}

/// Runs `saslStart` (or a speculative one): a `{jwt}` signs in at once, a
/// `{n?}` starts the human flow.
pub async fn start(
    registry: &IdpRegistry,
    step: ClientStep<'_>,
) -> Result<StepOutcome, AuthFailure> {
    match step {
        ClientStep::Jwt(token) => registry
            .verify(token, None)
            .await
            .map(StepOutcome::Authenticated),
        ClientStep::Principal { hint } => {
            let idp = registry.select_for_hint(hint)?;
            let info = registry.info(idp).ok_or_else(|| {
                AuthFailure::NoIdentityProvider(format!("identity provider {idp} vanished"))
            })?;
            let mut reply = rawdoc! { "issuer": info.issuer };
            if let Some(client_id) = info.client_id {
                reply.append(bson::raw::cstr!("clientId"), client_id);
            }
            if !info.request_scopes.is_empty() {
                let mut scopes = bson::RawArrayBuf::new();
                for s in info.request_scopes {
                    scopes.push(s.as_str());
                }
                reply.append(bson::raw::cstr!("requestScopes"), scopes);
            }
            let pending = Pending {
                idp,
                hint: hint.map(str::to_owned),
            };
            Ok(StepOutcome::Challenge { reply, pending })
        }
    }
}

/// Runs `saslContinue` after a step-1 challenge: only a `{jwt}` is valid.
pub async fn resume(
    registry: &IdpRegistry,
    pending: &Pending,
    step: ClientStep<'_>,
) -> Result<Identity, AuthFailure> {
    match step {
        ClientStep::Jwt(token) => {
            registry
                .verify(
                    token,
                    Some(Step1 {
                        idp: pending.idp,
                        hint: pending.hint.as_deref(),
                    }),
                )
                .await
        }
        ClientStep::Principal { .. } => Err(AuthFailure::BadPayload(
            "step 2 payload has no 'jwt' field".into(),
        )),
    }
}

/// Parses the client's payload document. Like mongod, unknown fields are
/// ignored and bytes after the document's declared length are tolerated.
pub fn parse_payload(payload: &[u8]) -> Result<ClientStep<'_>, AuthFailure> {
    let bad = |why: &str| AuthFailure::BadPayload(why.to_owned());
    let len_bytes: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("shorter than a BSON document"))?;
    let len = i32::from_le_bytes(len_bytes);
    let doc_bytes = usize::try_from(len)
        .ok()
        .and_then(|n| payload.get(..n))
        .ok_or_else(|| bad("BSON length exceeds the payload"))?;
    let doc = RawDocument::from_bytes(doc_bytes).map_err(|e| bad(&format!("invalid BSON: {e}")))?;
    let (mut jwt, mut hint) = (None, None);
    for element in doc.iter() {
        let (key, value) = element.map_err(|e| bad(&format!("invalid BSON: {e}")))?;
        let slot = match key.as_str() {
            "jwt" => &mut jwt,
            "n" => &mut hint,
            _ => continue,
        };
        if slot.is_some() {
            return Err(bad(&format!("duplicate field '{}'", key.as_str())));
        }
        match value {
            RawBsonRef::String(s) => *slot = Some(s),
            other => {
                return Err(bad(&format!(
                    "field '{}' must be a string, not {:?}",
                    key.as_str(),
                    other.element_type()
                )))
            }
        }
    }
    Ok(match jwt {
        Some(token) => ClientStep::Jwt(token),
        None => ClientStep::Principal { hint },
    })
}

/// Fields of a SASL command that decide what happens and so must appear once.
const GUARDED_FIELDS: &[&str] = &[
    "saslStart",
    "saslContinue",
    "mechanism",
    "payload",
    "conversationId",
    "$db",
    "db",
];

struct SaslFields<'a> {
    mechanism: Option<&'a str>,
    payload: Option<SaslPayload<'a>>,
    conversation_id: Option<i64>,
}

fn read_sasl_fields<'a>(
    cmd: &'static str,
    body: &'a RawDocument,
) -> Result<SaslFields<'a>, MongoError> {
    let mut seen: u8 = 0;
    let mut fields = SaslFields {
        mechanism: None,
        payload: None,
        conversation_id: None,
    };
    for element in body.iter() {
        let (key, value) = element.map_err(|e| MongoError::invalid_bson(e.to_string()))?;
        let key = key.as_str();
        if let Some(i) = GUARDED_FIELDS.iter().position(|f| *f == key) {
            if seen & (1 << i) != 0 {
                return Err(MongoError::idl_duplicate_field(format!(
                    "BSON field '{cmd}.{key}' is a duplicate field"
                )));
            }
            seen |= 1 << i;
        }
        let type_error = |want: &str| {
            MongoError::with_code(
                14,
                "TypeMismatch",
                format!(
                    "BSON field '{cmd}.{key}' is the wrong type '{:?}', expected type '{want}'",
                    value.element_type()
                ),
            )
        };
        match key {
            "mechanism" => {
                fields.mechanism = Some(value.as_str().ok_or_else(|| type_error("string"))?)
            }
            "payload" => {
                fields.payload =
                    Some(read_payload(value).ok_or_else(|| type_error("binData or string"))?)
            }
            "conversationId" => {
                fields.conversation_id =
                    Some(crate::wire::bson_integer(value).ok_or_else(|| type_error("int"))?)
            }
            _ => {}
        }
    }
    Ok(fields)
}

fn missing(cmd: &str, field: &str) -> MongoError {
    MongoError::idl_failed_to_parse(format!(
        "BSON field '{cmd}.{field}' is missing but a required field"
    ))
}

/// Parses `saslStart`, checking the mechanism and database as mongod does.
pub fn parse_sasl_start<'a>(body: &'a RawDocument, db: &str) -> Result<SaslStart<'a>, MongoError> {
    let start = parse_sasl_start_any(body)?;
    check_mechanism(start.mechanism, db)?;
    Ok(start)
}

/// Parses `saslStart` whatever its mechanism: the caller chooses it.
pub fn parse_sasl_start_any(body: &RawDocument) -> Result<SaslStart<'_>, MongoError> {
    let fields = read_sasl_fields("saslStart", body)?;
    let mechanism = fields
        .mechanism
        .ok_or_else(|| missing("saslStart", "mechanism"))?;
    let payload = fields
        .payload
        .ok_or_else(|| missing("saslStart", "payload"))?;
    Ok(SaslStart { mechanism, payload })
}

/// Parses `saslContinue`.
pub fn parse_sasl_continue(body: &RawDocument) -> Result<SaslContinue<'_>, MongoError> {
    let fields = read_sasl_fields("saslContinue", body)?;
    let conversation_id = fields
        .conversation_id
        .ok_or_else(|| missing("saslContinue", "conversationId"))?;
    let payload = fields
        .payload
        .ok_or_else(|| missing("saslContinue", "payload"))?;
    Ok(SaslContinue {
        conversation_id,
        payload,
    })
}

/// MONGODB-OIDC is the only mechanism, and only on `$external`.
pub fn check_mechanism(mechanism: &str, db: &str) -> Result<(), MongoError> {
    if mechanism != MECHANISM {
        return Err(MongoError::mechanism_unavailable(format!(
            "Received authentication for mechanism {mechanism} which is not enabled"
        )));
    }
    if db != EXTERNAL_DB {
        return Err(MongoError::mechanism_unavailable(format!(
            "Unsupported mechanism '{MECHANISM}' on authentication database '{db}'"
        )));
    }
    Ok(())
}

/// `saslContinue` errors that are the conversation's, not the mechanism's.
pub fn check_continue(cmd: &SaslContinue<'_>, active: bool) -> Result<(), MongoError> {
    if !active {
        return Err(MongoError::protocol_error("No SASL session state found"));
    }
    if cmd.conversation_id != i64::from(CONVERSATION_ID) {
        return Err(MongoError::protocol_error(
            "sasl: Mismatched conversation id",
        ));
    }
    Ok(())
}

fn read_payload(value: RawBsonRef<'_>) -> Option<SaslPayload<'_>> {
    match value {
        RawBsonRef::Binary(b) => Some(SaslPayload {
            bytes: Cow::Borrowed(b.bytes),
            encoding: PayloadEncoding::Binary,
        }),
        RawBsonRef::String(s) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
            Some(SaslPayload {
                bytes: Cow::Owned(bytes),
                encoding: PayloadEncoding::Base64,
            })
        }
        _ => None,
    }
}

/// The reply to a successful step: `{conversationId: 1, done, payload, ok: 1}`.
pub fn step_reply(
    outcome_payload: Option<&RawDocument>,
    done: bool,
    encoding: PayloadEncoding,
) -> RawDocumentBuf {
    let mut doc = speculative_reply(outcome_payload, done, encoding);
    doc.append(bson::raw::cstr!("ok"), 1.0);
    doc
}

/// The `speculativeAuthenticate` section of a hello reply: a step reply
/// without `ok`.
pub fn speculative_reply(
    outcome_payload: Option<&RawDocument>,
    done: bool,
    encoding: PayloadEncoding,
) -> RawDocumentBuf {
    let mut doc = rawdoc! { "conversationId": CONVERSATION_ID, "done": done };
    let bytes = outcome_payload
        .map(RawDocument::as_bytes)
        .unwrap_or_default();
    append_payload(&mut doc, bytes, encoding);
    doc
}

pub(crate) fn append_payload(doc: &mut RawDocumentBuf, bytes: &[u8], encoding: PayloadEncoding) {
    match encoding {
        PayloadEncoding::Binary => {
            doc.append(
                bson::raw::cstr!("payload"),
                bson::RawBinaryRef {
                    subtype: BinarySubtype::Generic,
                    bytes,
                },
            );
        }
        PayloadEncoding::Base64 => {
            doc.append(
                bson::raw::cstr!("payload"),
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn parses_the_spec_payloads() {
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(
            parse_payload(&b64.decode("FwAAAAJqd3QACQAAAGFiY2QxMjM0AAA=").unwrap()),
            Ok(ClientStep::Jwt("abcd1234"))
        );
        assert_eq!(
            parse_payload(&b64.decode("EgAAAAJuAAYAAABteWlkcAAA").unwrap()),
            Ok(ClientStep::Principal {
                hint: Some("myidp")
            })
        );
        assert_eq!(
            parse_payload(&hex("0500000000")),
            Ok(ClientStep::Principal { hint: None })
        );
        assert_eq!(
            parse_payload(&hex(
                "1e000000026e0012000000616c696365406578616d706c652e636f6d0000"
            )),
            Ok(ClientStep::Principal {
                hint: Some("alice@example.com")
            })
        );
        assert_eq!(
            parse_payload(&hex("14000000026a77740006000000612e622e630000")),
            Ok(ClientStep::Jwt("a.b.c"))
        );
    }

    #[test]
    fn tolerates_unknown_fields_and_trailing_bytes() {
        let doc = rawdoc! { "x": 1, "jwt": "t" };
        let mut bytes = doc.as_bytes().to_vec();
        bytes.push(0);
        assert_eq!(parse_payload(&bytes), Ok(ClientStep::Jwt("t")));
    }

    #[test]
    fn refuses_malformed_payloads() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                vec![],
                "SASL payload is not valid: shorter than a BSON document",
            ),
            (
                vec![1, 2, 3],
                "SASL payload is not valid: shorter than a BSON document",
            ),
            (
                hex("ff000000"),
                "SASL payload is not valid: BSON length exceeds the payload",
            ),
            (
                hex("ffffffff00"),
                "SASL payload is not valid: BSON length exceeds the payload",
            ),
            (
                rawdoc! { "jwt": 5 }.into_bytes(),
                "SASL payload is not valid: field 'jwt' must be a string, not Int32",
            ),
            (
                rawdoc! { "n": true }.into_bytes(),
                "SASL payload is not valid: field 'n' must be a string, not Boolean",
            ),
            (
                rawdoc! { "jwt": "a", "jwt": "b" }.into_bytes(),
                "SASL payload is not valid: duplicate field 'jwt'",
            ),
        ];
        for (bytes, want) in cases {
            let err = parse_payload(&bytes).expect_err(want);
            assert_eq!(err.to_string(), want);
        }
        // A length prefix that is right but a body that is not BSON.
        let err = parse_payload(&hex("0800000002780000")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("SASL payload is not valid: invalid BSON"),
            "{err}"
        );
    }

    fn payload(doc: &RawDocumentBuf) -> bson::Binary {
        bson::Binary {
            subtype: BinarySubtype::Generic,
            bytes: doc.as_bytes().to_vec(),
        }
    }

    #[test]
    fn parses_sasl_start() {
        let p = rawdoc! { "jwt": "t" };
        let body = rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": payload(&p), "$db": "$external" };
        let cmd = parse_sasl_start(&body, "$external").unwrap();
        assert_eq!(cmd.payload.bytes.as_ref(), p.as_bytes());
        assert_eq!(cmd.payload.encoding, PayloadEncoding::Binary);
        let b64 = rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": "BQAAAAA=" };
        let cmd = parse_sasl_start(&b64, "$external").unwrap();
        assert_eq!(cmd.payload.encoding, PayloadEncoding::Base64);
        assert_eq!(cmd.payload.bytes.as_ref(), hex("0500000000").as_slice());
    }

    #[test]
    fn refuses_bad_sasl_start_commands_with_mongods_errors() {
        let p = rawdoc! {};
        let cases = [
            (rawdoc! { "saslStart": 1, "payload": payload(&p) }, "$external", 40414, "BSON field 'saslStart.mechanism' is missing but a required field"),
            (rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC" }, "$external", 40414, "BSON field 'saslStart.payload' is missing but a required field"),
            (rawdoc! { "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": payload(&p) }, "admin", 334, "Received authentication for mechanism SCRAM-SHA-256 which is not enabled"),
            (rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": payload(&p) }, "admin", 334, "Unsupported mechanism 'MONGODB-OIDC' on authentication database 'admin'"),
            (rawdoc! { "saslStart": 1, "mechanism": 1, "payload": payload(&p) }, "$external", 14, "BSON field 'saslStart.mechanism' is the wrong type 'Int32', expected type 'string'"),
            (rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": 7 }, "$external", 14, "BSON field 'saslStart.payload' is the wrong type 'Int32', expected type 'binData or string'"),
            (rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": "not base64!" }, "$external", 14, "BSON field 'saslStart.payload' is the wrong type 'String', expected type 'binData or string'"),
            (rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "mechanism": "SCRAM-SHA-1", "payload": payload(&p) }, "$external", 40413, "BSON field 'saslStart.mechanism' is a duplicate field"),
            (rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": payload(&p), "$db": "$external", "$db": "admin" }, "$external", 40413, "BSON field 'saslStart.$db' is a duplicate field"),
        ];
        for (body, db, code, msg) in cases {
            let err = parse_sasl_start(&body, db).expect_err(msg);
            assert_eq!((err.code, err.errmsg.as_str()), (code, msg));
        }
    }

    #[test]
    fn checks_sasl_continue_state() {
        let p = rawdoc! { "jwt": "t" };
        let body = rawdoc! { "saslContinue": 1, "conversationId": 1, "payload": payload(&p) };
        let cmd = parse_sasl_continue(&body).unwrap();
        assert_eq!(
            check_continue(&cmd, false).unwrap_err().errmsg,
            "No SASL session state found"
        );
        let active = true;
        assert!(check_continue(&cmd, active).is_ok());
        let other = rawdoc! { "saslContinue": 1, "conversationId": 2_i64, "payload": payload(&p) };
        let err = check_continue(&parse_sasl_continue(&other).unwrap(), active).unwrap_err();
        assert_eq!(
            (err.code, err.errmsg.as_str()),
            (17, "sasl: Mismatched conversation id")
        );
        let none = rawdoc! { "saslContinue": 1, "payload": payload(&p) };
        assert_eq!(
            parse_sasl_continue(&none).unwrap_err().errmsg,
            "BSON field 'saslContinue.conversationId' is missing but a required field"
        );
    }

    #[test]
    fn replies_mirror_the_payload_encoding() {
        let r = step_reply(None, true, PayloadEncoding::Binary);
        assert_eq!(r.get_i32("conversationId").unwrap(), 1);
        assert!(r.get_bool("done").unwrap());
        assert_eq!(r.get_binary("payload").unwrap().bytes, b"");
        assert_eq!(r.get_f64("ok").unwrap(), 1.0);
        let idp = rawdoc! { "issuer": "https://issuer", "clientId": "abcd" };
        let r = step_reply(Some(&idp), false, PayloadEncoding::Base64);
        let text = r.get_str("payload").unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap(),
            idp.as_bytes()
        );
    }
}
