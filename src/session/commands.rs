//! Commands the proxy answers itself rather than relaying.

use bson::raw::cstr;
use bson::{rawdoc, RawDocumentBuf};

use crate::auth::Identity;
use crate::backend::ServerInfo;

pub fn ok() -> RawDocumentBuf {
    rawdoc! { "ok": 1.0 }
}

/// `buildInfo`, as the backend reported it when probed.
pub fn build_info(info: &ServerInfo) -> RawDocumentBuf {
    info.build_info.clone()
}

/// `connectionStatus`, reporting the signed-in user as mongod would.
pub fn connection_status(identity: Option<&Identity>) -> RawDocumentBuf {
    let mut users = bson::RawArrayBuf::new();
    let mut roles = bson::RawArrayBuf::new();
    if let Some(id) = identity {
        users.push(rawdoc! { "user": id.user.as_str(), "db": crate::auth::oidc::EXTERNAL_DB });
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
