//! One client message decoded once into what the session decides on.
//!
//! [`Request::decode`] walks the command document a single time and keeps the
//! fields every rule reads: the command name, `$db`, `lsid`, `txnNumber`,
//! the transaction flags and the cursor ids of `getMore`/`killCursors`. A
//! repeated name, `$db`, `lsid` or transaction field is refused: `RawDocument`
//! lookups return the first match while a server may read another, and the
//! proxy must never forward a document whose security-relevant keys the two
//! could read differently. The original bytes are kept to be forwarded as
//! they came.

use bson::raw::{RawArray, RawBsonRef};
use bson::RawDocument;

use super::{MsgHeader, OpCode, OpMsg, OpMsgFlags, OpQuery, Reader, WireError, HEADER_LEN};

/// What kind of message it was, as far as the reply framing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Msg,
    /// OP_QUERY; `command` is false for a namespace other than `db.$cmd`.
    Query {
        command: bool,
    },
    /// OP_COMPRESSED wrapping `original`.
    Compressed {
        original: OpCode,
    },
    /// Any other opcode: there is no reply for it.
    Other(OpCode),
}

/// The cursor ids a command names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cursors<'a> {
    None,
    /// `getMore: <id>`
    One(i64),
    /// `killCursors: <coll>, cursors: [<id>, ...]`
    Many(&'a RawArray),
}

impl Cursors<'_> {
    /// Every id, for the cursor rules; an element that is not a long ends the walk
    /// (decoding already refused such arrays).
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        let (one, many) = match self {
            Cursors::None => (None, None),
            Cursors::One(id) => (Some(*id), None),
            Cursors::Many(array) => (None, Some(array.into_iter())),
        };
        one.into_iter()
            .chain(many.into_iter().flatten().map_while(|v| v.ok()?.as_i64()))
    }
}

/// A command: the body of an OP_MSG, or the query of an OP_QUERY on `db.$cmd`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Command<'a> {
    /// The first key of the document.
    pub name: &'a str,
    /// The first key's value when it is a string (the collection of `find`,
    /// `insert`, `killCursors`...).
    pub target: Option<&'a str>,
    pub body: &'a RawDocument,
    /// `$db`, or for OP_QUERY the database of the `db.$cmd` namespace.
    pub db: Option<&'a str>,
    pub lsid: Option<&'a RawDocument>,
    pub txn_number: Option<i64>,
    pub autocommit: Option<bool>,
    pub start_transaction: Option<bool>,
    pub cursors: Cursors<'a>,
}

impl Command<'_> {
    /// A write a 4.4+ driver may retry when the error carries
    /// `RetryableWriteError`: a retryable write (txnNumber outside a
    /// transaction), or the commit or abort of a transaction.
    pub fn is_retryable_write(&self) -> bool {
        match self.name {
            "commitTransaction" | "abortTransaction" => true,
            "insert" | "update" | "delete" | "findAndModify" | "findandmodify" | "bulkWrite" => {
                self.txn_number.is_some() && self.autocommit.is_none()
            }
            _ => false,
        }
    }
}

/// One decoded client message, borrowing from its frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request<'a> {
    pub request_id: i32,
    pub op: Op,
    /// OP_MSG moreToCome: the client expects no reply.
    pub more_to_come: bool,
    /// OP_MSG exhaustAllowed.
    pub exhaust_allowed: bool,
    /// `None` for OP_COMPRESSED and other opcodes, and for OP_QUERY on a
    /// collection namespace.
    pub command: Option<Command<'a>>,
    /// The whole message, header included, to forward unchanged.
    pub bytes: &'a [u8],
}

/// A message that could not be decoded, with what is needed to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub request_id: i32,
    pub op: Op,
    /// The client expects no reply (or the flags could not even be read).
    pub more_to_come: bool,
    pub error: WireError,
}

/// Fields whose repetition is refused, by bit.
const GUARDED: [&str; 6] = [
    "$db",
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "cursors",
];

impl<'a> Request<'a> {
    /// Decodes a whole message (header included). The frame reader has
    /// already checked the declared length against the size limit.
    pub fn decode(bytes: &'a [u8]) -> Result<Request<'a>, DecodeError> {
        let header = MsgHeader::parse(bytes, usize::MAX).map_err(|error| DecodeError {
            request_id: 0,
            op: Op::Other(OpCode::Other(0)),
            more_to_come: true,
            error,
        })?;
        let request_id = header.request_id;
        match header.op_code {
            OpCode::Msg => decode_msg(request_id, bytes),
            OpCode::Query => decode_query(request_id, bytes),
            OpCode::Compressed => Ok(Request {
                request_id,
                op: Op::Compressed {
                    original: compressed_original(bytes),
                },
                more_to_come: false,
                exhaust_allowed: false,
                command: None,
                bytes,
            }),
            other => Ok(Request {
                request_id,
                op: Op::Other(other),
                more_to_come: true,
                exhaust_allowed: false,
                command: None,
                bytes,
            }),
        }
    }
}

fn decode_msg(request_id: i32, bytes: &[u8]) -> Result<Request<'_>, DecodeError> {
    // Read the flags first: a fire-and-forget message gets no error reply.
    let flags = bytes
        .get(HEADER_LEN..HEADER_LEN + 4)
        .and_then(super::le_u32)
        .map(OpMsgFlags);
    let fail = |error| DecodeError {
        request_id,
        op: Op::Msg,
        more_to_come: flags.is_none_or(|f| f.more_to_come()),
        error,
    };
    let msg = OpMsg::parse(bytes).map_err(fail)?;
    let command = walk_command(msg.body, None).map_err(fail)?;
    Ok(Request {
        request_id,
        op: Op::Msg,
        more_to_come: msg.flags.more_to_come(),
        exhaust_allowed: msg.flags.exhaust_allowed(),
        command: Some(command),
        bytes,
    })
}

fn decode_query(request_id: i32, bytes: &[u8]) -> Result<Request<'_>, DecodeError> {
    let fail = |command, error| DecodeError {
        request_id,
        op: Op::Query { command },
        more_to_come: false,
        error,
    };
    let query = OpQuery::parse(bytes).map_err(|e| fail(true, e))?;
    let Some(db) = query.command_database() else {
        return Ok(Request {
            request_id,
            op: Op::Query { command: false },
            more_to_come: false,
            exhaust_allowed: false,
            command: None,
            bytes,
        });
    };
    // Legacy drivers may wrap the command: {$query: {...}, $readPreference: ...}.
    let doc = match query.query.get("$query") {
        Ok(Some(RawBsonRef::Document(inner))) => inner,
        _ => query.query,
    };
    let command = walk_command(doc, Some(db)).map_err(|e| fail(true, e))?;
    Ok(Request {
        request_id,
        op: Op::Query { command: true },
        more_to_come: false,
        exhaust_allowed: false,
        command: Some(command),
        bytes,
    })
}

/// The opcode inside an OP_COMPRESSED, for framing the refusal.
fn compressed_original(bytes: &[u8]) -> OpCode {
    let mut r = Reader::new(bytes.get(HEADER_LEN..).unwrap_or_default(), "OP_COMPRESSED");
    r.i32().map_or(OpCode::Msg, OpCode::from_i32)
}

/// The one walk of a command document.
fn walk_command<'a>(
    doc: &'a RawDocument,
    namespace_db: Option<&'a str>,
) -> Result<Command<'a>, WireError> {
    let mut elements = doc.iter();
    let (name, first) = match elements.next() {
        Some(Ok((key, value))) => (key.as_str(), value),
        Some(Err(e)) => return Err(invalid(e)),
        None => {
            return Err(WireError::InvalidBson {
                what: "command",
                detail: "the command document is empty".into(),
            })
        }
    };
    let mut command = Command {
        name,
        target: first.as_str(),
        body: doc,
        db: namespace_db,
        lsid: None,
        txn_number: None,
        autocommit: None,
        start_transaction: None,
        cursors: Cursors::None,
    };
    if name == "getMore" {
        command.cursors = Cursors::One(typed(name, name, first.as_i64(), "long")?);
    }
    let mut seen = 0u8;
    for element in elements {
        let (key, value) = element.map_err(invalid)?;
        let key = key.as_str();
        if key == name {
            return Err(duplicate(name, key));
        }
        let Some(bit) = GUARDED.iter().position(|g| *g == key) else {
            continue;
        };
        if seen & (1 << bit) != 0 {
            return Err(duplicate(name, key));
        }
        seen |= 1 << bit;
        match key {
            "$db" => command.db = Some(typed(name, key, value.as_str(), "string")?),
            "lsid" => command.lsid = Some(typed(name, key, value.as_document(), "object")?),
            "txnNumber" => {
                command.txn_number = Some(typed(name, key, super::bson_integer(value), "long")?)
            }
            "autocommit" => command.autocommit = Some(typed(name, key, value.as_bool(), "bool")?),
            "startTransaction" => {
                command.start_transaction = Some(typed(name, key, value.as_bool(), "bool")?)
            }
            "cursors" if name == "killCursors" => {
                let array = typed(name, key, value.as_array(), "array")?;
                for id in array {
                    typed(name, key, id.map_err(invalid)?.as_i64(), "array of longs")?;
                }
                command.cursors = Cursors::Many(array);
            }
            _ => {}
        }
    }
    Ok(command)
}

fn invalid(e: bson::error::Error) -> WireError {
    WireError::InvalidBson {
        what: "command",
        detail: e.to_string(),
    }
}

fn duplicate(command: &str, field: &str) -> WireError {
    WireError::DuplicateField {
        command: command.to_owned(),
        field: field.to_owned(),
    }
}

fn typed<T>(
    command: &str,
    field: &str,
    value: Option<T>,
    expected: &'static str,
) -> Result<T, WireError> {
    value.ok_or_else(|| WireError::FieldType {
        command: command.to_owned(),
        field: field.to_owned(),
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::{finish_message, start_message};
    use crate::wire::op_msg::encode;
    use bson::{rawdoc, RawDocumentBuf};

    fn msg(flags: u32, doc: &RawDocumentBuf) -> Vec<u8> {
        // `encode` clears the checksum bit only; other flags pass through.
        encode(7, 0, flags, doc)
    }

    fn decode_err(bytes: &[u8]) -> DecodeError {
        Request::decode(bytes).unwrap_err()
    }

    #[test]
    fn decodes_every_field_of_an_op_msg_command() {
        let lsid = rawdoc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1; 16] } };
        let doc = rawdoc! {
            "insert": "things", "documents": [], "ordered": true,
            "lsid": lsid.clone(), "txnNumber": 5_i64, "autocommit": false,
            "startTransaction": true, "$db": "app",
        };
        let bytes = msg(OpMsgFlags::EXHAUST_ALLOWED, &doc);
        let req = Request::decode(&bytes).unwrap();
        assert_eq!(req.request_id, 7);
        assert_eq!(req.op, Op::Msg);
        assert!(!req.more_to_come && req.exhaust_allowed);
        assert_eq!(req.bytes, bytes.as_slice(), "the original bytes are kept");
        let c = req.command.unwrap();
        assert_eq!(
            (c.name, c.target, c.db),
            ("insert", Some("things"), Some("app"))
        );
        assert_eq!(c.lsid.unwrap().as_bytes(), lsid.as_bytes());
        assert_eq!(c.txn_number, Some(5));
        assert_eq!(
            (c.autocommit, c.start_transaction),
            (Some(false), Some(true))
        );
        assert_eq!(c.cursors, Cursors::None);
        assert!(!c.is_retryable_write(), "inside a transaction");
    }

    #[test]
    fn decodes_cursor_ids() {
        let get_more = rawdoc! { "getMore": 42_i64, "collection": "c", "$db": "app" };
        let bytes = msg(0, &get_more);
        let c = Request::decode(&bytes).unwrap().command.unwrap();
        assert_eq!(c.cursors, Cursors::One(42));
        assert_eq!(c.cursors.ids().collect::<Vec<_>>(), [42]);
        let kill = rawdoc! { "killCursors": "c", "cursors": [1_i64, 2_i64], "$db": "app" };
        let bytes = msg(0, &kill);
        let c = Request::decode(&bytes).unwrap().command.unwrap();
        assert_eq!(c.cursors.ids().collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn more_to_come_is_read() {
        let doc = rawdoc! { "endSessions": [], "$db": "admin" };
        let bytes = msg(OpMsgFlags::MORE_TO_COME, &doc);
        assert!(Request::decode(&bytes).unwrap().more_to_come);
    }

    #[test]
    fn refuses_repeated_security_relevant_fields() {
        let cases = [
            (
                rawdoc! { "find": "a", "$db": "app", "$db": "admin" },
                "find",
                "$db",
            ),
            (
                rawdoc! { "find": "a", "find": "b", "$db": "app" },
                "find",
                "find",
            ),
            (
                rawdoc! { "ping": 1, "lsid": {}, "lsid": {}, "$db": "admin" },
                "ping",
                "lsid",
            ),
            (
                rawdoc! { "insert": "a", "txnNumber": 1_i64, "txnNumber": 2_i64 },
                "insert",
                "txnNumber",
            ),
            (
                rawdoc! { "insert": "a", "autocommit": false, "autocommit": true },
                "insert",
                "autocommit",
            ),
            (
                rawdoc! { "killCursors": "a", "cursors": [1_i64], "cursors": [2_i64] },
                "killCursors",
                "cursors",
            ),
        ];
        for (doc, command, field) in cases {
            let e = decode_err(&msg(0, &doc));
            assert_eq!(
                e.error,
                WireError::DuplicateField {
                    command: command.into(),
                    field: field.into()
                }
            );
            assert_eq!(
                e.error.to_string(),
                format!("BSON field '{command}.{field}' is a duplicate field")
            );
            assert!(!e.more_to_come);
        }
    }

    #[test]
    fn refuses_wrong_types_of_the_fields_it_reads() {
        let cases = [
            (rawdoc! { "find": "a", "$db": 1 }, "BSON field 'find.$db' is the wrong type, expected type 'string'"),
            (rawdoc! { "find": "a", "lsid": "x" }, "BSON field 'find.lsid' is the wrong type, expected type 'object'"),
            (rawdoc! { "insert": "a", "txnNumber": "1" }, "BSON field 'insert.txnNumber' is the wrong type, expected type 'long'"),
            (rawdoc! { "getMore": "1", "collection": "c" }, "BSON field 'getMore.getMore' is the wrong type, expected type 'long'"),
            (rawdoc! { "killCursors": "c", "cursors": [1] }, "BSON field 'killCursors.cursors' is the wrong type, expected type 'array of longs'"),
        ];
        for (doc, want) in cases {
            assert_eq!(decode_err(&msg(0, &doc)).error.to_string(), want);
        }
    }

    #[test]
    fn malformed_messages_keep_what_the_reply_needs() {
        let empty = rawdoc! {};
        let e = decode_err(&msg(OpMsgFlags::MORE_TO_COME, &empty));
        assert!(e.more_to_come);
        assert_eq!(e.request_id, 7);
        assert_eq!(e.error.kind(), "invalid_bson");
        // Reserved flag bits: answerable, not fire-and-forget.
        let e = decode_err(&msg(1 << 5, &rawdoc! { "ping": 1 }));
        assert_eq!(e.error, WireError::ReservedFlags(1 << 5));
        assert!(!e.more_to_come);
        // Too short to hold flags: nothing can be answered.
        let mut short = Vec::new();
        let at = start_message(&mut short, 3, 0, OpCode::Msg);
        finish_message(&mut short, at);
        assert!(decode_err(&short).more_to_come);
    }

    #[test]
    fn decodes_the_legacy_handshake_and_other_opcodes() {
        let query = rawdoc! { "isMaster": 1, "helloOk": true };
        let bytes = crate::wire::op_query::encode_query(9, "admin.$cmd", &query);
        let req = Request::decode(&bytes).unwrap();
        assert_eq!(req.op, Op::Query { command: true });
        let c = req.command.unwrap();
        assert_eq!((c.name, c.db), ("isMaster", Some("admin")));
        let wrapped =
            rawdoc! { "$query": { "ismaster": 1 }, "$readPreference": { "mode": "primary" } };
        let bytes = crate::wire::op_query::encode_query(9, "admin.$cmd", &wrapped);
        assert_eq!(
            Request::decode(&bytes).unwrap().command.unwrap().name,
            "ismaster"
        );
        let bytes = crate::wire::op_query::encode_query(9, "app.things", &query);
        let req = Request::decode(&bytes).unwrap();
        assert_eq!((req.op, req.command), (Op::Query { command: false }, None));

        let mut compressed = Vec::new();
        let at = start_message(&mut compressed, 4, 0, OpCode::Compressed);
        compressed.extend_from_slice(&2004i32.to_le_bytes());
        finish_message(&mut compressed, at);
        assert_eq!(
            Request::decode(&compressed).unwrap().op,
            Op::Compressed {
                original: OpCode::Query
            }
        );
        let mut insert = Vec::new();
        let at = start_message(&mut insert, 4, 0, OpCode::Other(2002));
        finish_message(&mut insert, at);
        let req = Request::decode(&insert).unwrap();
        assert_eq!(req.op, Op::Other(OpCode::Other(2002)));
    }

    #[test]
    fn retryable_writes() {
        let retryable = |doc: RawDocumentBuf| {
            let bytes = msg(0, &doc);
            let c = Request::decode(&bytes).unwrap().command.unwrap();
            c.is_retryable_write()
        };
        assert!(retryable(rawdoc! { "insert": "a", "txnNumber": 1_i64 }));
        assert!(retryable(
            rawdoc! { "findAndModify": "a", "txnNumber": 1_i64 }
        ));
        assert!(
            !retryable(rawdoc! { "insert": "a" }),
            "no txnNumber: retryWrites is off"
        );
        assert!(
            !retryable(rawdoc! { "update": "a", "txnNumber": 1_i64, "autocommit": false }),
            "inside a transaction"
        );
        assert!(retryable(
            rawdoc! { "commitTransaction": 1, "txnNumber": 1_i64, "autocommit": false }
        ));
        assert!(!retryable(rawdoc! { "find": "a", "txnNumber": 1_i64 }));
    }
}
