//! The MongoDB wire protocol as pure functions over byte slices.
//!
//! Nothing here does I/O except [`frame::read_frame`], which only fills a
//! bounded buffer. Every parser borrows from the frame it was given and
//! returns a [`WireError`] instead of panicking on any input.

pub mod frame;
pub mod header;
pub mod op_msg;
pub mod op_query;
pub mod reply_scan;
pub mod request;

pub use frame::{read_frame, Frame};
pub use header::{MsgHeader, OpCode, HEADER_LEN};
pub use op_msg::{OpMsg, OpMsgFlags, Section};
pub use op_query::OpQuery;
pub use request::{Command, Cursors, DecodeError, Op, Request};

/// The default and usual server limit for one message (mongod's `maxMessageSizeBytes`).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 48_000_000;

/// Everything that can be wrong with bytes received from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message length {0} is smaller than the 16-byte header")]
    LengthTooSmall(i32),
    #[error("message length {len} exceeds the maximum message size {max}")]
    LengthTooLarge { len: i64, max: usize },
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("OP_MSG flag bits {0:#x} are reserved and must be zero")]
    ReservedFlags(u32),
    #[error("OP_MSG has {0} body sections; exactly one is required")]
    BodyCount(usize),
    #[error("OP_MSG section kind {0} is unknown")]
    UnknownSectionKind(u8),
    #[error("OP_MSG has more than {0} document sequences")]
    TooManySequences(usize),
    #[error("OP_MSG checksum mismatch: message says {expected:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { expected: u32, computed: u32 },
    #[error("invalid BSON in {what}: {detail}")]
    InvalidBson { what: &'static str, detail: String },
    #[error("invalid C string in {0}")]
    InvalidCString(&'static str),
    #[error("document sequence identifier is not valid UTF-8")]
    InvalidIdentifier,
    #[error("BSON field '{command}.{field}' is a duplicate field")]
    DuplicateField { command: String, field: String },
    #[error("BSON field '{command}.{field}' is the wrong type, expected type '{expected}'")]
    FieldType {
        command: String,
        field: String,
        expected: &'static str,
    },
    #[error("unsupported opcode {0}")]
    UnsupportedOpCode(i32),
    #[error("the peer closed the connection in the middle of a message")]
    UnexpectedEof,
    #[error("I/O error: {0}")]
    Io(String),
}

impl WireError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::LengthTooSmall(_) => "length_too_small",
            WireError::LengthTooLarge { .. } => "length_too_large",
            WireError::Truncated { .. } => "truncated",
            WireError::ReservedFlags(_) => "reserved_flags",
            WireError::BodyCount(_) => "body_count",
            WireError::UnknownSectionKind(_) => "unknown_section_kind",
            WireError::TooManySequences(_) => "too_many_sequences",
            WireError::ChecksumMismatch { .. } => "checksum_mismatch",
            WireError::InvalidBson { .. } => "invalid_bson",
            WireError::InvalidCString(_) => "invalid_cstring",
            WireError::InvalidIdentifier => "invalid_identifier",
            WireError::DuplicateField { .. } => "duplicate_field",
            WireError::FieldType { .. } => "field_type",
            WireError::UnsupportedOpCode(_) => "unsupported_opcode",
            WireError::UnexpectedEof => "unexpected_eof",
            WireError::Io(_) => "io",
        }
    }
}

/// A BSON number as an integer, the way drivers and servers write counts and
/// codes: int32, int64, or a double with no fractional part.
pub fn bson_integer(value: bson::raw::RawBsonRef<'_>) -> Option<i64> {
    use bson::raw::RawBsonRef;
    match value {
        RawBsonRef::Int32(v) => Some(v.into()),
        RawBsonRef::Int64(v) => Some(v),
        RawBsonRef::Double(v) if v.fract() == 0.0 && v.abs() < 1e15 => Some(v as i64),
        _ => None,
    }
}

/// The little-endian `u32` at the start of `bytes`, if it has four bytes.
pub fn le_u32(bytes: &[u8]) -> Option<u32> {
    let four: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(four))
}

/// A bounds-checked little-endian reader over a borrowed slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated {
                what: self.what,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// `N` bytes as an array, for fixed-size fields.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let what = self.what;
        let have = self.buf.len();
        self.take(N)?.try_into().map_err(|_| WireError::Truncated {
            what,
            need: N,
            have,
        })
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub(crate) fn i32(&mut self) -> Result<i32, WireError> {
        self.array().map(i32::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn peek_i32(&self) -> Result<i32, WireError> {
        let mut copy = *self;
        copy.i32()
    }

    /// A NUL-terminated UTF-8 string, without its terminator.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, WireError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::InvalidCString(self.what))?;
        let s = std::str::from_utf8(self.take(end)?)
            .map_err(|_| WireError::InvalidCString(self.what))?;
        self.take(1)?;
        Ok(s)
    }

    /// One BSON document, bounded by its own length prefix.
    pub(crate) fn document(&mut self) -> Result<&'a bson::RawDocument, WireError> {
        let len = self.peek_i32()?;
        if len < 5 {
            return Err(WireError::InvalidBson {
                what: self.what,
                detail: format!("document length {len} is below 5"),
            });
        }
        let bytes = self.take(len as usize)?;
        bson::RawDocument::from_bytes(bytes).map_err(|e| WireError::InvalidBson {
            what: self.what,
            detail: e.to_string(),
        })
    }
}
