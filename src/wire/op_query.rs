//! OP_QUERY (2004) and OP_REPLY (1), kept only for the legacy `isMaster`
//! handshake that the Node driver and mongosh still send.

use bson::RawDocument;

use super::header::{finish_message, start_message};
use super::{OpCode, Reader, WireError, HEADER_LEN};

#[derive(Debug, Clone, Copy)]
pub struct OpQuery<'a> {
    pub flags: i32,
    pub full_collection_name: &'a str,
    pub number_to_skip: i32,
    pub number_to_return: i32,
    pub query: &'a RawDocument,
}

impl<'a> OpQuery<'a> {
    /// Parses a whole OP_QUERY message, header included.
    pub fn parse(message: &'a [u8]) -> Result<OpQuery<'a>, WireError> {
        let rest = message.get(HEADER_LEN..).ok_or(WireError::Truncated {
            what: "OP_QUERY",
            need: HEADER_LEN,
            have: message.len(),
        })?;
        let mut r = Reader::new(rest, "OP_QUERY");
        let flags = r.i32()?;
        let full_collection_name = r.cstr()?;
        let number_to_skip = r.i32()?;
        let number_to_return = r.i32()?;
        let query = r.document()?;
        if !r.is_empty() {
            // The optional returnFieldsSelector; validated, then ignored.
            r.document()?;
        }
        if !r.is_empty() {
            return Err(WireError::InvalidBson {
                what: "OP_QUERY",
                detail: "trailing bytes after the query".into(),
            });
        }
        Ok(OpQuery {
            flags,
            full_collection_name,
            number_to_skip,
            number_to_return,
            query,
        })
    }

    /// The database of a `db.$cmd` namespace, or `None` for a collection query.
    pub fn command_database(&self) -> Option<&'a str> {
        self.full_collection_name.strip_suffix(".$cmd")
    }
}

/// Encodes an OP_REPLY carrying one document.
pub fn encode_reply(request_id: i32, response_to: i32, doc: &RawDocument) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 20 + doc.as_bytes().len());
    let at = start_message(&mut out, request_id, response_to, OpCode::Reply);
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(doc.as_bytes());
    finish_message(&mut out, at);
    out
}

/// Reads the single document of an OP_REPLY (used by tests and by the backend probe).
pub fn parse_reply(message: &[u8]) -> Result<&RawDocument, WireError> {
    let rest = message.get(HEADER_LEN..).ok_or(WireError::Truncated {
        what: "OP_REPLY",
        need: HEADER_LEN,
        have: message.len(),
    })?;
    let mut r = Reader::new(rest, "OP_REPLY");
    r.take(20)?;
    r.document()
}

/// Encodes an OP_QUERY command (used by tests, as the Node driver's handshake).
pub fn encode_query(request_id: i32, namespace: &str, query: &RawDocument) -> Vec<u8> {
    let mut out = Vec::new();
    let at = start_message(&mut out, request_id, 0, OpCode::Query);
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(namespace.as_bytes());
    out.push(0);
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&(-1i32).to_le_bytes());
    out.extend_from_slice(query.as_bytes());
    finish_message(&mut out, at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn round_trips_a_legacy_ismaster() {
        let q = rawdoc! { "ismaster": 1, "helloOk": true };
        let msg = encode_query(3, "admin.$cmd", &q);
        let parsed = OpQuery::parse(&msg).unwrap();
        assert_eq!(parsed.command_database(), Some("admin"));
        assert_eq!(parsed.number_to_return, -1);
        assert_eq!(parsed.query.as_bytes(), q.as_bytes());
    }

    #[test]
    fn reply_carries_one_document() {
        let d = rawdoc! { "ok": 1.0 };
        let msg = encode_reply(1, 3, &d);
        assert_eq!(i32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]), 3);
        assert_eq!(parse_reply(&msg).unwrap().as_bytes(), d.as_bytes());
    }

    #[test]
    fn refuses_malformed_queries() {
        let q = rawdoc! { "ismaster": 1 };
        let good = encode_query(3, "admin.$cmd", &q);
        // Namespace without a terminator.
        let mut no_nul = good[..20].to_vec();
        no_nul.extend_from_slice(b"admin");
        assert_eq!(
            OpQuery::parse(&no_nul).unwrap_err(),
            WireError::InvalidCString("OP_QUERY")
        );
        // Truncated document.
        let cut = &good[..good.len() - 2];
        assert!(matches!(
            OpQuery::parse(cut),
            Err(WireError::Truncated { .. })
        ));
        // Trailing garbage after the selector.
        let mut extra = good.clone();
        extra.extend_from_slice(q.as_bytes());
        extra.push(9);
        assert!(OpQuery::parse(&extra).is_err());
    }
}
