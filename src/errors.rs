//! MongoDB error replies: the codes and names clients and drivers act on.

use bson::{rawdoc, RawDocumentBuf};

/// A command failure as mongod reports it: `{ok: 0, errmsg, code, codeName}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code_name} ({code}): {errmsg}")]
pub struct MongoError {
    pub code: i32,
    pub code_name: &'static str,
    pub errmsg: String,
}

macro_rules! codes {
    ($($fn:ident => $code:literal, $name:literal;)*) => {
        impl MongoError {
            $(pub fn $fn(errmsg: impl Into<String>) -> MongoError {
                MongoError { code: $code, code_name: $name, errmsg: errmsg.into() }
            })*
        }
    };
}

codes! {
    bad_value => 2, "BadValue";
    unauthorized => 13, "Unauthorized";
    protocol_error => 17, "ProtocolError";
    authentication_failed => 18, "AuthenticationFailed";
    invalid_bson => 22, "InvalidBSON";
    command_not_found => 59, "CommandNotFound";
    host_unreachable => 6, "HostUnreachable";
    command_not_supported => 115, "CommandNotSupported";
    not_implemented => 238, "NotImplemented";
    mechanism_unavailable => 334, "MechanismUnavailable";
    unsupported_op_query_command => 352, "UnsupportedOpQueryCommand";
    reauthentication_required => 391, "ReauthenticationRequired";
    idl_duplicate_field => 40413, "IDLDuplicateField";
    idl_failed_to_parse => 40414, "IDLFailedToParse";
    interrupted_at_shutdown => 11600, "InterruptedAtShutdown";
}

impl MongoError {
    /// What every token or payload failure looks like to the client: no reason given.
    pub fn generic_authentication_failure() -> MongoError {
        MongoError::authentication_failed("Authentication failed.")
    }

    pub fn with_code(code: i32, code_name: &'static str, errmsg: impl Into<String>) -> MongoError {
        MongoError {
            code,
            code_name,
            errmsg: errmsg.into(),
        }
    }

    pub fn to_document(&self) -> RawDocumentBuf {
        rawdoc! {
            "ok": 0.0,
            "errmsg": self.errmsg.as_str(),
            "code": self.code,
            "codeName": self.code_name,
        }
    }
}
