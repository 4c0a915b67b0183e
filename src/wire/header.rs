//! The 16-byte standard message header.

use super::{Reader, WireError};

pub const HEADER_LEN: usize = 16;

/// The opcodes this proxy understands. Everything else is [`OpCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Reply,
    Query,
    Compressed,
    Msg,
    Other(i32),
}

impl OpCode {
    pub fn from_i32(v: i32) -> OpCode {
        match v {
            1 => OpCode::Reply,
            2004 => OpCode::Query,
            2012 => OpCode::Compressed,
            2013 => OpCode::Msg,
            other => OpCode::Other(other),
        }
    }

    pub fn as_i32(self) -> i32 {
        match self {
            OpCode::Reply => 1,
            OpCode::Query => 2004,
            OpCode::Compressed => 2012,
            OpCode::Msg => 2013,
            OpCode::Other(v) => v,
        }
    }

    /// A stable label for metrics (no unbounded cardinality from `Other`).
    pub fn label(self) -> &'static str {
        match self {
            OpCode::Reply => "op_reply",
            OpCode::Query => "op_query",
            OpCode::Compressed => "op_compressed",
            OpCode::Msg => "op_msg",
            OpCode::Other(_) => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgHeader {
    pub message_length: i32,
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: OpCode,
}

impl MsgHeader {
    /// Parses a header and checks the declared length against `max` before
    /// anyone allocates for the body.
    pub fn parse(bytes: &[u8], max: usize) -> Result<MsgHeader, WireError> {
        let mut r = Reader::new(bytes, "message header");
        let message_length = r.i32()?;
        let request_id = r.i32()?;
        let response_to = r.i32()?;
        let op_code = OpCode::from_i32(r.i32()?);
        if message_length < HEADER_LEN as i32 {
            return Err(WireError::LengthTooSmall(message_length));
        }
        if message_length as usize > max {
            return Err(WireError::LengthTooLarge {
                len: message_length as i64,
                max,
            });
        }
        Ok(MsgHeader {
            message_length,
            request_id,
            response_to,
            op_code,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.message_length.to_le_bytes());
        out.extend_from_slice(&self.request_id.to_le_bytes());
        out.extend_from_slice(&self.response_to.to_le_bytes());
        out.extend_from_slice(&self.op_code.as_i32().to_le_bytes());
    }
}

/// Writes a header with a placeholder length, returning where the length
/// goes so [`finish_message`] can patch it.
pub(crate) fn start_message(
    out: &mut Vec<u8>,
    request_id: i32,
    response_to: i32,
    op: OpCode,
) -> usize {
    let at = out.len();
    MsgHeader {
        message_length: 0,
        request_id,
        response_to,
        op_code: op,
    }
    .encode(out);
    at
}

/// Writes the message length into the header started at `at`.
pub(crate) fn finish_message(out: &mut [u8], at: usize) {
    let len = out.len().saturating_sub(at) as i32;
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&len.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: i32, op: i32) -> Vec<u8> {
        let mut v = Vec::new();
        MsgHeader {
            message_length: len,
            request_id: 7,
            response_to: 0,
            op_code: OpCode::from_i32(op),
        }
        .encode(&mut v);
        v
    }

    #[test]
    fn parses_a_valid_header() {
        let h = MsgHeader::parse(&header(21, 2013), 100).unwrap();
        assert_eq!(h.message_length, 21);
        assert_eq!(h.request_id, 7);
        assert_eq!(h.op_code, OpCode::Msg);
    }

    #[test]
    fn refuses_length_below_header() {
        assert_eq!(
            MsgHeader::parse(&header(15, 2013), 100),
            Err(WireError::LengthTooSmall(15))
        );
        assert_eq!(
            MsgHeader::parse(&header(-1, 2013), 100),
            Err(WireError::LengthTooSmall(-1))
        );
    }

    #[test]
    fn refuses_length_above_maximum_before_reading_body() {
        assert_eq!(
            MsgHeader::parse(&header(101, 2013), 100),
            Err(WireError::LengthTooLarge { len: 101, max: 100 })
        );
        assert_eq!(
            MsgHeader::parse(&header(i32::MAX, 2013), 48_000_000)
                .unwrap_err()
                .to_string(),
            "message length 2147483647 exceeds the maximum message size 48000000"
        );
    }

    #[test]
    fn refuses_a_short_header() {
        assert_eq!(
            MsgHeader::parse(&[1, 2, 3], 100),
            Err(WireError::Truncated {
                what: "message header",
                need: 4,
                have: 3
            })
        );
    }

    #[test]
    fn unknown_opcodes_are_kept_not_guessed() {
        assert_eq!(
            MsgHeader::parse(&header(16, 2002), 100).unwrap().op_code,
            OpCode::Other(2002)
        );
    }
}
