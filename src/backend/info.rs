//! What the backend says about itself in `hello` and `buildInfo`.

use bson::{RawBsonRef, RawDocument, RawDocumentBuf};

use super::BackendError;

/// The oldest wire version with OP_MSG (MongoDB 3.6), which the proxy relays.
pub const MIN_SUPPORTED_WIRE_VERSION: i32 = 6;
/// A ceiling on `maxMessageSizeBytes` we are willing to buffer (mongod uses 48 MB).
pub const MAX_ACCEPTED_MESSAGE_SIZE: i32 = 128 * 1024 * 1024;

/// The backend's wire versions and size limits, as its `hello` reports them
/// and the proxy's own `hello` passes them on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_wire_version: i32,
    pub min_wire_version: i32,
    pub max_bson_object_size: i32,
    pub max_message_size_bytes: i32,
    pub max_write_batch_size: i32,
    pub logical_session_timeout_minutes: Option<i32>,
}

/// Limits and identity of the backend, as reported to the proxy's clients.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    pub limits: Limits,
    pub build_info: RawDocumentBuf,
    pub is_replica_set: bool,
}

/// The parts of a `hello` reply that topology discovery needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub writable_primary: bool,
    pub secondary: bool,
    pub set_name: Option<String>,
    /// The `primary` field: `host:port` of the primary as this member sees it.
    pub primary: Option<String>,
    pub limits: Limits,
}

fn int(doc: &RawDocument, key: &str) -> Option<i64> {
    doc.get(key)
        .ok()
        .flatten()
        .and_then(crate::wire::bson_integer)
}

fn flag(doc: &RawDocument, key: &str) -> bool {
    matches!(doc.get(key), Ok(Some(RawBsonRef::Boolean(true))))
}

impl Hello {
    pub fn parse(addr: &str, doc: &RawDocument) -> Result<Hello, BackendError> {
        let bad = |detail: String| BackendError::Protocol {
            addr: addr.to_string(),
            detail: format!("hello reply: {detail}"),
        };
        // Required fields are required: guessing wire versions would let the
        // proxy promise clients features the backend lacks.
        let field =
            |key: &str, lo: i64, hi: i64, default: Option<i64>| -> Result<i32, BackendError> {
                let v = match (int(doc, key), default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => d,
                    (None, None) => return Err(bad(format!("missing integer field {key}"))),
                };
                if v < lo || v > hi {
                    return Err(bad(format!("{key} = {v} is outside {lo}..={hi}")));
                }
                Ok(v as i32)
            };
        let max_wire_version = field("maxWireVersion", 0, 1000, None)?;
        if max_wire_version < MIN_SUPPORTED_WIRE_VERSION {
            return Err(BackendError::Unsupported {
                addr: addr.to_string(),
                detail: format!(
                    "maxWireVersion {max_wire_version} is below {MIN_SUPPORTED_WIRE_VERSION}; \
                     the proxy needs MongoDB 3.6 or newer (OP_MSG)"
                ),
            });
        }
        let min_wire_version = field("minWireVersion", 0, max_wire_version.into(), Some(0))?;
        // Defaults are the ones MongoDB's server discovery specification prescribes.
        let max_bson_object_size = field(
            "maxBsonObjectSize",
            1024,
            MAX_ACCEPTED_MESSAGE_SIZE.into(),
            Some(16 * 1024 * 1024),
        )?;
        let max_message_size_bytes = field(
            "maxMessageSizeBytes",
            max_bson_object_size.into(),
            MAX_ACCEPTED_MESSAGE_SIZE.into(),
            Some(48_000_000),
        )?;
        let max_write_batch_size = field("maxWriteBatchSize", 1, 100_000_000, Some(100_000))?;
        let logical_session_timeout_minutes = match int(doc, "logicalSessionTimeoutMinutes") {
            Some(v) if (0..=i64::from(i32::MAX)).contains(&v) => Some(v as i32),
            Some(v) => {
                return Err(bad(format!(
                    "logicalSessionTimeoutMinutes = {v} is negative or too large"
                )))
            }
            None => None,
        };
        Ok(Hello {
            writable_primary: flag(doc, "isWritablePrimary") || flag(doc, "ismaster"),
            secondary: flag(doc, "secondary"),
            set_name: doc.get_str("setName").ok().map(str::to_string),
            primary: doc.get_str("primary").ok().map(str::to_string),
            limits: Limits {
                max_wire_version,
                min_wire_version,
                max_bson_object_size,
                max_message_size_bytes,
                max_write_batch_size,
                logical_session_timeout_minutes,
            },
        })
    }

    /// What this member is, for the "no primary" error.
    pub fn describe(&self) -> String {
        let role = if self.writable_primary {
            "writable primary"
        } else if self.secondary {
            "secondary"
        } else {
            "not primary or secondary"
        };
        match (&self.set_name, &self.primary) {
            (Some(set), Some(p)) => format!("{role} of replica set '{set}', primary {p}"),
            (Some(set), None) => format!("{role} of replica set '{set}', no primary known"),
            (None, _) => role.to_string(),
        }
    }

    pub fn into_server_info(self, build_info: RawDocumentBuf) -> ServerInfo {
        ServerInfo {
            limits: self.limits,
            build_info,
            is_replica_set: self.set_name.is_some(),
        }
    }
}

/// Splits a `host:port` as members report them (`[v6]:port` for IPv6).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        s.rsplit_once(':')?
    };
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    if host.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn parses_a_secantus_hello() {
        let doc = rawdoc! {
            "isWritablePrimary": true, "ismaster": true, "setName": "secantus",
            "primary": "127.0.0.1:27100", "maxWireVersion": 27, "minWireVersion": 0,
            "maxBsonObjectSize": 16777216, "maxMessageSizeBytes": 48000000,
            "maxWriteBatchSize": 100000, "logicalSessionTimeoutMinutes": 30, "ok": 1.0,
        };
        let h = Hello::parse("h:1", &doc).unwrap();
        assert!(h.writable_primary);
        assert_eq!(
            h.describe(),
            "writable primary of replica set 'secantus', primary 127.0.0.1:27100"
        );
        let info = h.into_server_info(rawdoc! { "version": "8.2.11" });
        assert_eq!(info.limits.max_wire_version, 27);
        assert_eq!(info.limits.max_message_size_bytes, 48_000_000);
        assert_eq!(info.limits.logical_session_timeout_minutes, Some(30));
        assert!(info.is_replica_set);
    }

    #[test]
    fn refuses_missing_or_absurd_limits() {
        let e = Hello::parse("h:1", &rawdoc! { "ok": 1 })
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "backend h:1: unexpected reply: hello reply: missing integer field maxWireVersion"
        );
        let e = Hello::parse("h:1", &rawdoc! { "maxWireVersion": 5 })
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "backend h:1: not supported: maxWireVersion 5 is below 6; the proxy needs MongoDB 3.6 or newer (OP_MSG)"
        );
        let e = Hello::parse(
            "h:1",
            &rawdoc! { "maxWireVersion": 21, "maxMessageSizeBytes": i64::MAX },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "backend h:1: unexpected reply: hello reply: maxMessageSizeBytes = 9223372036854775807 is outside 16777216..=134217728"
        );
    }

    #[test]
    fn splits_member_addresses() {
        assert_eq!(split_host_port("a:1"), Some(("a".into(), 1)));
        assert_eq!(split_host_port("[::1]:27017"), Some(("::1".into(), 27017)));
        assert_eq!(split_host_port("a"), None);
        assert_eq!(split_host_port(":1"), None);
        assert_eq!(split_host_port("a:0"), None);
    }
}
