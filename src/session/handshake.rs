//! The proxy's own `hello`/`isMaster` reply: mongos-like, with limits and
//! wire versions from the backend and nothing of its topology.

use bson::raw::{cstr, RawBsonRef};
use bson::{RawDocument, RawDocumentBuf};

use crate::backend::ServerInfo;
use crate::errors::MongoError;

/// What the client's hello asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct HelloRequest<'a> {
    /// `hello` (true) answers `isWritablePrimary`; the legacy names answer `ismaster`.
    pub is_hello: bool,
    pub hello_ok: bool,
    pub load_balanced: bool,
    /// `saslSupportedMechs: "<db>.<user>"`: whose mechanisms to list.
    pub sasl_supported_mechs: Option<&'a str>,
    pub speculative: Option<&'a RawDocument>,
    /// `client.application.name`: the client's `appName`.
    pub app_name: Option<&'a str>,
}

/// mongod's limit on `client.application.name`.
pub const MAX_APP_NAME_BYTES: usize = 128;

/// `client.application.name` of a hello, if it has one of at most
/// [`MAX_APP_NAME_BYTES`]; malformed metadata counts as none.
pub fn client_app_name(body: &RawDocument) -> Option<&str> {
    let client = body.get_document("client").ok()?;
    let name = client
        .get_document("application")
        .ok()?
        .get_str("name")
        .ok()?;
    (name.len() <= MAX_APP_NAME_BYTES).then_some(name)
}

/// Reads the fields of a hello that change the reply, with mongod's checks on
/// `speculativeAuthenticate`.
pub fn parse_hello<'a>(name: &str, body: &'a RawDocument) -> Result<HelloRequest<'a>, MongoError> {
    let mut req = HelloRequest {
        is_hello: name == "hello",
        ..Default::default()
    };
    for element in body.iter() {
        let (key, value) = element.map_err(|e| MongoError::invalid_bson(e.to_string()))?;
        match key.as_str() {
            "helloOk" => req.hello_ok = truthy(value),
            "loadBalanced" => req.load_balanced = truthy(value),
            "saslSupportedMechs" => req.sasl_supported_mechs = Some(value.as_str().unwrap_or("")),
            "client" => req.app_name = app_name(value)?,
            "speculativeAuthenticate" => match value {
                RawBsonRef::Document(doc) if doc.iter().next().is_some() => {
                    req.speculative = Some(doc)
                }
                _ => {
                    return Err(MongoError::bad_value(format!(
                        "{}.speculativeAuthenticate must be a non-empty Object",
                        if req.is_hello { "hello" } else { "isMaster" }
                    )))
                }
            },
            _ => {}
        }
    }
    Ok(req)
}

fn app_name(client: RawBsonRef<'_>) -> Result<Option<&str>, MongoError> {
    let RawBsonRef::Document(client) = client else {
        return Ok(None);
    };
    let Ok(name) = client
        .get_document("application")
        .and_then(|a| a.get_str("name"))
    else {
        return Ok(None);
    };
    if name.len() > MAX_APP_NAME_BYTES {
        return Err(MongoError::with_code(
            184,
            "ClientMetadataAppNameTooLarge",
            format!(
                "The 'client.application.name' field must be less than or equal to \
                 {MAX_APP_NAME_BYTES} bytes in length"
            ),
        ));
    }
    Ok(Some(name))
}

fn truthy(v: RawBsonRef<'_>) -> bool {
    match v {
        RawBsonRef::Boolean(b) => b,
        RawBsonRef::Int32(i) => i != 0,
        RawBsonRef::Int64(i) => i != 0,
        RawBsonRef::Double(d) => d != 0.0,
        _ => false,
    }
}

/// Per-process values that stay the same across connections.
#[derive(Debug, Clone)]
pub struct ProxyIdentity<'a> {
    /// Returned as `serviceId` to load-balanced clients.
    pub service_id: bson::oid::ObjectId,
    /// The largest message the proxy accepts from a client.
    pub max_message_size: usize,
    /// `[testing] setup_user`, the one user that signs in with SCRAM.
    pub setup_user: Option<&'a str>,
}

/// The mechanisms `saslSupportedMechs: "<db>.<user>"` lists: SCRAM-SHA-256
/// for the test-only set-up user on `admin`, MONGODB-OIDC for everyone else
/// (the proxy knows no other users; listing OIDC is its design, where
/// mongod omits it).
pub fn supported_mechs(requested: &str, setup_user: Option<&str>) -> &'static str {
    let setup = setup_user.is_some_and(|user| {
        requested
            .strip_prefix(crate::auth::scram_server::DB)
            .and_then(|rest| rest.strip_prefix('.'))
            == Some(user)
    });
    if setup {
        crate::auth::scram_server::MECHANISM
    } else {
        crate::auth::oidc::MECHANISM
    }
}

/// Builds the hello reply. `speculative` is the answer to a
/// `speculativeAuthenticate` that succeeded, if any.
pub fn hello_reply(
    req: &HelloRequest<'_>,
    info: &ServerInfo,
    proxy: &ProxyIdentity<'_>,
    connection_id: i32,
    speculative: Option<RawDocumentBuf>,
) -> RawDocumentBuf {
    let max_message =
        (info.limits.max_message_size_bytes.max(0) as usize).min(proxy.max_message_size) as i32;
    let mut doc = RawDocumentBuf::new();
    if req.hello_ok {
        doc.append(cstr!("helloOk"), true);
    }
    doc.append(
        if req.is_hello {
            cstr!("isWritablePrimary")
        } else {
            cstr!("ismaster")
        },
        true,
    );
    doc.append(cstr!("msg"), "isdbgrid");
    doc.append(cstr!("maxBsonObjectSize"), info.limits.max_bson_object_size);
    doc.append(cstr!("maxMessageSizeBytes"), max_message);
    doc.append(cstr!("maxWriteBatchSize"), info.limits.max_write_batch_size);
    doc.append(cstr!("localTime"), bson::DateTime::now());
    if let Some(minutes) = info.limits.logical_session_timeout_minutes {
        doc.append(cstr!("logicalSessionTimeoutMinutes"), minutes);
    }
    doc.append(cstr!("connectionId"), connection_id);
    doc.append(cstr!("minWireVersion"), info.limits.min_wire_version);
    doc.append(cstr!("maxWireVersion"), info.limits.max_wire_version);
    doc.append(cstr!("readOnly"), false);
    if req.load_balanced {
        doc.append(cstr!("serviceId"), proxy.service_id);
    }
    if let Some(requested) = req.sasl_supported_mechs {
        let mut mechs = bson::RawArrayBuf::new();
        mechs.push(supported_mechs(requested, proxy.setup_user));
        doc.append(cstr!("saslSupportedMechs"), mechs);
    }
    if let Some(spec) = speculative {
        doc.append(cstr!("speculativeAuthenticate"), spec);
    }
    doc.append(cstr!("ok"), 1.0);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn reads_the_application_name_from_client_metadata() {
        let body = rawdoc! {
            "hello": 1,
            "client": { "driver": { "name": "PyMongo", "version": "4.20.0" }, "application": { "name": "auth_oidc" } },
        };
        assert_eq!(
            parse_hello("hello", &body).unwrap().app_name,
            Some("auth_oidc")
        );
        assert_eq!(client_app_name(&body), Some("auth_oidc"));
        for without in [
            rawdoc! { "hello": 1 },
            rawdoc! { "hello": 1, "client": { "driver": { "name": "x" } } },
            rawdoc! { "hello": 1, "client": "not a document" },
            rawdoc! { "hello": 1, "client": { "application": { "name": 7 } } },
        ] {
            assert_eq!(parse_hello("hello", &without).unwrap().app_name, None);
            assert_eq!(client_app_name(&without), None);
        }
        let long = rawdoc! { "hello": 1, "client": { "application": { "name": "a".repeat(129) } } };
        let e = parse_hello("hello", &long).unwrap_err();
        assert_eq!(
            (e.code, e.code_name),
            (184, "ClientMetadataAppNameTooLarge")
        );
        assert_eq!(
            e.errmsg,
            "The 'client.application.name' field must be less than or equal to 128 bytes in length"
        );
        assert_eq!(client_app_name(&long), None);
    }

    #[test]
    fn scram_is_listed_for_the_set_up_user_only() {
        for (requested, setup, want) in [
            ("admin.setup", Some("setup"), "SCRAM-SHA-256"),
            ("admin.setup", None, "MONGODB-OIDC"),
            ("admin.other", Some("setup"), "MONGODB-OIDC"),
            ("test.setup", Some("setup"), "MONGODB-OIDC"),
            ("admin.setupx", Some("setup"), "MONGODB-OIDC"),
            ("adminsetup", Some("setup"), "MONGODB-OIDC"),
            ("$external.setup", Some("setup"), "MONGODB-OIDC"),
            ("", Some("setup"), "MONGODB-OIDC"),
        ] {
            assert_eq!(
                supported_mechs(requested, setup),
                want,
                "{requested} {setup:?}"
            );
        }
        let body = rawdoc! { "hello": 1, "saslSupportedMechs": "admin.setup" };
        let req = parse_hello("hello", &body).unwrap();
        assert_eq!(req.sasl_supported_mechs, Some("admin.setup"));
    }
}
