//! Commands the proxy answers itself rather than relaying.

use bson::raw::{cstr, RawBsonRef};
use bson::{rawdoc, RawArrayBuf, RawBson, RawDocument, RawDocumentBuf};

use crate::auth::Identity;
use crate::backend::ServerInfo;

pub fn ok() -> RawDocumentBuf {
    rawdoc! { "ok": 1.0 }
}

/// `buildInfo`, as the backend reported it when probed.
pub fn build_info(info: &ServerInfo) -> RawDocumentBuf {
    info.build_info.clone()
}

/// `buildInfo` with the proxy's own addition: `testCommandsEnabled: true`
/// while `[testing] enable_test_commands` is on, so a test can tell.
pub fn build_info_for(info: &ServerInfo, test_commands: bool) -> RawDocumentBuf {
    if !test_commands {
        return build_info(info);
    }
    let mut doc = RawDocumentBuf::new();
    for (key, value) in info.build_info.iter().flatten() {
        if key.as_str() != "ok" && key.as_str() != "testCommandsEnabled" {
            doc.append(key, RawBson::from(value));
        }
    }
    doc.append(cstr!("testCommandsEnabled"), true);
    doc.append(cstr!("ok"), 1.0);
    doc
}

/// The server parameters the proxy answers for itself, as a mongos does for
/// its own: the mechanisms it offers, and whether test commands are on.
pub const PROXY_PARAMETERS: [&str; 2] = ["authenticationMechanisms", "enableTestCommands"];

/// Command arguments that are not parameter names.
const GENERIC_ARGUMENTS: [&str; 11] = [
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "comment",
    "maxTimeMS",
    "readConcern",
    "writeConcern",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
];

/// How a `getParameter` is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum ParameterPlan {
    /// Only the proxy's own parameters were asked for: this reply.
    Local(RawDocumentBuf),
    /// Relay to the backend, then [`rewrite_parameters`] on its reply;
    /// `all` for `getParameter: "*"` / `{allParameters: true}`.
    Relay { all: bool, show_details: bool },
}

/// Reads a `getParameter` as mongod does: `getParameter: "*"` or
/// `{allParameters: true, showDetails?}` asks for everything, otherwise the
/// other fields name the parameters.
pub fn plan_get_parameter(body: &RawDocument, test_commands: bool) -> ParameterPlan {
    let (mut all, mut show_details) = (false, false);
    match body.iter().next() {
        Some(Ok((_, RawBsonRef::String("*")))) => all = true,
        Some(Ok((_, RawBsonRef::Document(spec)))) => {
            let flag = |name: &str| matches!(spec.get_bool(name), Ok(true));
            all = flag("allParameters");
            show_details = flag("showDetails");
        }
        _ => {}
    }
    if all {
        return ParameterPlan::Relay { all, show_details };
    }
    let names: Vec<&str> = body
        .iter()
        .flatten()
        .skip(1)
        .map(|(k, _)| k.as_str())
        .filter(|k| !k.starts_with('$') && !GENERIC_ARGUMENTS.contains(k))
        .collect();
    if names.is_empty() || !names.iter().all(|n| PROXY_PARAMETERS.contains(n)) {
        return ParameterPlan::Relay { all, show_details };
    }
    let mut doc = RawDocumentBuf::new();
    for name in names {
        if doc.get(name).ok().flatten().is_none() {
            if let Some(value) = parameter(name, test_commands, show_details) {
                doc.append(cstr_of(name), value);
            }
        }
    }
    doc.append(cstr!("ok"), 1.0);
    ParameterPlan::Local(doc)
}

/// The backend's `getParameter` reply with the proxy's own parameters in
/// place of the backend's (and added, when everything was asked for).
pub fn rewrite_parameters(
    reply: &RawDocument,
    test_commands: bool,
    all: bool,
    show_details: bool,
) -> RawDocumentBuf {
    if !is_ok(reply) {
        return reply.to_owned();
    }
    let mut doc = RawDocumentBuf::new();
    let mut seen = [false; PROXY_PARAMETERS.len()];
    for (key, value) in reply.iter().flatten() {
        let key_str = key.as_str();
        if key_str == "ok" {
            continue;
        }
        match PROXY_PARAMETERS.iter().position(|p| *p == key_str) {
            Some(i) => {
                if let (Some(s), Some(mine)) = (
                    seen.get_mut(i),
                    parameter(key_str, test_commands, show_details),
                ) {
                    *s = true;
                    doc.append(key, mine);
                }
            }
            None => doc.append(key, RawBson::from(value)),
        }
    }
    if all {
        for (name, seen) in PROXY_PARAMETERS.iter().zip(seen) {
            if let (false, Some(mine)) = (seen, parameter(name, test_commands, show_details)) {
                doc.append(cstr_of(name), mine);
            }
        }
    }
    doc.append(cstr!("ok"), 1.0);
    doc
}

/// `ok: 1` in any numeric type, or `true`.
pub fn is_ok(reply: &RawDocument) -> bool {
    match reply.get("ok") {
        Ok(Some(RawBsonRef::Boolean(b))) => b,
        Ok(Some(v)) => crate::wire::bson_integer(v) == Some(1),
        _ => false,
    }
}

fn parameter(name: &str, test_commands: bool, show_details: bool) -> Option<RawBson> {
    let value: RawBson = match name {
        "authenticationMechanisms" => {
            let mut mechs = RawArrayBuf::new();
            mechs.push(crate::auth::oidc::MECHANISM);
            RawBson::Array(mechs)
        }
        "enableTestCommands" => RawBson::Boolean(test_commands),
        _ => return None,
    };
    if !show_details {
        return Some(value);
    }
    // Both are set at start-up only (a reload restarts nothing).
    let mut detail = RawDocumentBuf::new();
    detail.append(cstr!("value"), value);
    detail.append(cstr!("settableAtRuntime"), false);
    detail.append(cstr!("settableAtStartup"), true);
    Some(RawBson::Document(detail))
}

fn cstr_of(name: &str) -> &bson::raw::CStr {
    match name {
        "authenticationMechanisms" => cstr!("authenticationMechanisms"),
        _ => cstr!("enableTestCommands"),
    }
}

/// `connectionStatus`, reporting the signed-in user as mongod would.
/// `scram`: the test-only SCRAM set-up user, who lives on `admin`.
pub fn connection_status(identity: Option<(&Identity, bool)>) -> RawDocumentBuf {
    let mut users = bson::RawArrayBuf::new();
    let mut roles = bson::RawArrayBuf::new();
    if let Some((id, scram)) = identity {
        let db = if scram {
            crate::auth::scram_server::DB
        } else {
            crate::auth::oidc::EXTERNAL_DB
        };
        users.push(rawdoc! { "user": id.user.as_str(), "db": db });
        for role in &id.roles {
            roles.push(rawdoc! { "role": role.as_str(), "db": "admin" });
        }
    }
    let mut auth_info = RawDocumentBuf::new();
    auth_info.append(cstr!("authenticatedUsers"), users);
    auth_info.append(cstr!("authenticatedUserRoles"), roles);
    let mut doc = RawDocumentBuf::new();
    doc.append(cstr!("authInfo"), auth_info);
    doc.append(cstr!("ok"), 1.0);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(body: RawDocumentBuf, test_commands: bool) -> RawDocumentBuf {
        match plan_get_parameter(&body, test_commands) {
            ParameterPlan::Local(doc) => doc,
            other => panic!("expected a local answer, got {other:?}"),
        }
    }

    #[test]
    fn the_proxys_parameters_are_answered_locally() {
        assert_eq!(
            local(
                rawdoc! { "getParameter": 1, "authenticationMechanisms": 1, "$db": "admin", "lsid": { "id": 1 } },
                false
            ),
            rawdoc! { "authenticationMechanisms": ["MONGODB-OIDC"], "ok": 1.0 }
        );
        assert_eq!(
            local(
                rawdoc! { "getParameter": 1, "enableTestCommands": 1, "authenticationMechanisms": true },
                true
            ),
            rawdoc! { "enableTestCommands": true, "authenticationMechanisms": ["MONGODB-OIDC"], "ok": 1.0 }
        );
        assert_eq!(
            local(
                rawdoc! { "getParameter": { "showDetails": true }, "enableTestCommands": 1 },
                false
            ),
            rawdoc! { "enableTestCommands": { "value": false, "settableAtRuntime": false, "settableAtStartup": true }, "ok": 1.0 }
        );
    }

    #[test]
    fn other_parameters_and_star_are_relayed() {
        for (body, want) in [
            (
                rawdoc! { "getParameter": 1, "logLevel": 1, "authenticationMechanisms": 1 },
                ParameterPlan::Relay {
                    all: false,
                    show_details: false,
                },
            ),
            (
                rawdoc! { "getParameter": 1, "$db": "admin" },
                ParameterPlan::Relay {
                    all: false,
                    show_details: false,
                },
            ),
            (
                rawdoc! { "getParameter": "*" },
                ParameterPlan::Relay {
                    all: true,
                    show_details: false,
                },
            ),
            (
                rawdoc! { "getParameter": { "allParameters": true, "showDetails": true } },
                ParameterPlan::Relay {
                    all: true,
                    show_details: true,
                },
            ),
        ] {
            assert_eq!(plan_get_parameter(&body, false), want);
        }
    }

    #[test]
    fn relayed_replies_carry_the_proxys_values() {
        let backend = rawdoc! {
            "featureCompatibilityVersion": { "version": "8.2" },
            "enableTestCommands": false,
            "authenticationMechanisms": ["SCRAM-SHA-256"],
            "ok": 1.0,
        };
        assert_eq!(
            rewrite_parameters(&backend, true, true, false),
            rawdoc! {
                "featureCompatibilityVersion": { "version": "8.2" },
                "enableTestCommands": true,
                "authenticationMechanisms": ["MONGODB-OIDC"],
                "ok": 1.0,
            }
        );
        // Everything asked for: the proxy's parameters are added when the backend lacks them.
        assert_eq!(
            rewrite_parameters(&rawdoc! { "logLevel": 0, "ok": 1 }, false, true, false),
            rawdoc! { "logLevel": 0, "authenticationMechanisms": ["MONGODB-OIDC"], "enableTestCommands": false, "ok": 1.0 }
        );
        // Named: only what the backend answered.
        assert_eq!(
            rewrite_parameters(
                &rawdoc! { "logLevel": 0, "authenticationMechanisms": ["SCRAM-SHA-1"], "ok": 1.0 },
                false,
                false,
                false
            ),
            rawdoc! { "logLevel": 0, "authenticationMechanisms": ["MONGODB-OIDC"], "ok": 1.0 }
        );
        let failed = rawdoc! { "ok": 0.0, "errmsg": "no option found to get", "code": 72 };
        assert_eq!(rewrite_parameters(&failed, false, false, false), failed);
    }
}
