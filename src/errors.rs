//! MongoDB error replies: the codes and names clients and drivers act on.

use bson::{rawdoc, RawDocumentBuf};

/// A command failure as mongod reports it: `{ok: 0, errmsg, code, codeName}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code_name} ({code}): {errmsg}")]
pub struct MongoError {
    pub code: i32,
    pub code_name: &'static str,
    pub errmsg: String,
    /// `errorLabels`, e.g. `RetryableWriteError`, which tells 4.4+ drivers a
    /// write may be retried.
    pub labels: &'static [&'static str],
}

macro_rules! codes {
    ($($fn:ident => $code:literal, $name:literal;)*) => {
        impl MongoError {
            $(pub fn $fn(errmsg: impl Into<String>) -> MongoError {
                MongoError { code: $code, code_name: $name, errmsg: errmsg.into(), labels: &[] }
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
    cursor_not_found => 43, "CursorNotFound";
    network_timeout => 89, "NetworkTimeout";
    too_many_logical_sessions => 261, "TooManyLogicalSessions";
    command_not_supported => 115, "CommandNotSupported";
    not_implemented => 238, "NotImplemented";
    mechanism_unavailable => 334, "MechanismUnavailable";
    unsupported_op_query_command => 352, "UnsupportedOpQueryCommand";
    reauthentication_required => 391, "ReauthenticationRequired";
    idl_duplicate_field => 40413, "IDLDuplicateField";
    idl_failed_to_parse => 40414, "IDLFailedToParse";
    interrupted_at_shutdown => 11600, "InterruptedAtShutdown";
    shutdown_in_progress => 91, "ShutdownInProgress";
    type_mismatch => 14, "TypeMismatch";
}

/// The label drivers look for before retrying a write (server 4.4+).
pub const RETRYABLE_WRITE_ERROR: &str = "RetryableWriteError";
/// The label that tells drivers to retry a whole transaction.
pub const TRANSIENT_TRANSACTION_ERROR: &str = "TransientTransactionError";

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
            labels: &[],
        }
    }

    /// Shutdown, state-change and network-class errors the proxy sends
    /// itself; mongod and mongos label them retryable on retryable writes.
    pub fn is_retryable_class(&self) -> bool {
        matches!(
            self.code,
            6 | 7 | 89 | 91 | 189 | 11600 | 11602 | 10107 | 13435 | 13436
        )
    }

    /// Adds `RetryableWriteError` when `retryable_write` and the code is of
    /// the retryable class; otherwise returns the error unchanged.
    pub fn labelled_for(mut self, retryable_write: bool) -> MongoError {
        if retryable_write && self.is_retryable_class() {
            self.labels = &[RETRYABLE_WRITE_ERROR];
        }
        self
    }

    /// Adds `TransientTransactionError` to a network-class error of a
    /// transaction's statement: the driver retries the whole transaction.
    pub fn labelled_in_transaction(mut self) -> MongoError {
        if matches!(self.code, 6 | 89) {
            self.labels = &[TRANSIENT_TRANSACTION_ERROR];
        }
        self
    }

    pub fn to_document(&self) -> RawDocumentBuf {
        let mut doc = rawdoc! {
            "ok": 0.0,
            "errmsg": self.errmsg.as_str(),
            "code": self.code,
            "codeName": self.code_name,
        };
        if !self.labels.is_empty() {
            let mut labels = bson::RawArrayBuf::new();
            for l in self.labels {
                labels.push(*l);
            }
            doc.append(bson::raw::cstr!("errorLabels"), labels);
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_label_only_on_retryable_writes_and_codes() {
        let e = MongoError::shutdown_in_progress("quiesce").labelled_for(true);
        let doc = e.to_document();
        let labels: Vec<&str> = doc
            .get_array("errorLabels")
            .unwrap()
            .into_iter()
            .map(|v| v.unwrap().as_str().unwrap())
            .collect();
        assert_eq!(labels, ["RetryableWriteError"]);
        assert!(MongoError::shutdown_in_progress("q")
            .labelled_for(false)
            .to_document()
            .get("errorLabels")
            .unwrap()
            .is_none());
        assert!(MongoError::unauthorized("no")
            .labelled_for(true)
            .labels
            .is_empty());
        assert_eq!(
            MongoError::interrupted_at_shutdown("x")
                .labelled_for(true)
                .labels,
            ["RetryableWriteError"]
        );
        assert_eq!(
            MongoError::host_unreachable("x").labelled_for(true).labels,
            ["RetryableWriteError"]
        );
    }
}
