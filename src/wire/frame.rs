//! Reading whole messages from a stream into a bounded buffer.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{MsgHeader, WireError, HEADER_LEN};

/// One complete message: its parsed header and all of its bytes, header included.
#[derive(Debug, Clone)]
pub struct Frame {
    pub header: MsgHeader,
    pub bytes: Bytes,
}

impl Frame {
    /// Splits a complete message held in `bytes` (used by tests and fuzzers).
    pub fn from_bytes(bytes: Bytes, max: usize) -> Result<Frame, WireError> {
        let header = MsgHeader::parse(&bytes, max)?;
        if bytes.len() != header.message_length as usize {
            return Err(WireError::Truncated {
                what: "message",
                need: header.message_length as usize,
                have: bytes.len(),
            });
        }
        Ok(Frame { header, bytes })
    }

    /// Everything after the 16-byte header.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or_default()
    }
}

/// Reads one message. `Ok(None)` means the peer closed cleanly between
/// messages. The declared length is checked against `max` before the body is
/// read, so a hostile length never allocates.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, WireError> {
    buf.clear();
    buf.resize(HEADER_LEN, 0);
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = reader
            .read(&mut buf[filled..HEADER_LEN])
            .await
            .map_err(|e| WireError::Io(e.to_string()))?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(WireError::UnexpectedEof)
            };
        }
        filled += n;
    }
    let header = MsgHeader::parse(buf, max)?;
    let len = header.message_length as usize;
    buf.resize(len, 0);
    reader
        .read_exact(&mut buf[HEADER_LEN..len])
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => WireError::UnexpectedEof,
            _ => WireError::Io(e.to_string()),
        })?;
    Ok(Some(Frame {
        header,
        bytes: buf.split().freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: i32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&1i32.to_le_bytes());
        v.extend_from_slice(&0i32.to_le_bytes());
        v.extend_from_slice(&2013i32.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn reads_consecutive_frames_then_clean_eof() {
        let mut input = message(20, b"abcd");
        input.extend(message(16, b""));
        let mut r = &input[..];
        let mut buf = BytesMut::new();
        let f = read_frame(&mut r, &mut buf, 100).await.unwrap().unwrap();
        assert_eq!(f.body(), b"abcd");
        let f = read_frame(&mut r, &mut buf, 100).await.unwrap().unwrap();
        assert_eq!(f.bytes.len(), 16);
        assert!(read_frame(&mut r, &mut buf, 100).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn eof_inside_header_or_body_is_an_error() {
        let input = message(20, b"ab");
        let mut r = &input[..];
        let mut buf = BytesMut::new();
        assert_eq!(
            read_frame(&mut r, &mut buf, 100).await.unwrap_err(),
            WireError::UnexpectedEof
        );
        let mut r = &input[..5];
        assert_eq!(
            read_frame(&mut r, &mut buf, 100).await.unwrap_err(),
            WireError::UnexpectedEof
        );
    }

    #[tokio::test]
    async fn oversized_length_is_refused_without_reading_the_body() {
        let input = message(1_000_000, b"");
        let mut r = &input[..];
        let mut buf = BytesMut::new();
        let err = read_frame(&mut r, &mut buf, 1000).await.unwrap_err();
        assert_eq!(
            err,
            WireError::LengthTooLarge {
                len: 1_000_000,
                max: 1000
            }
        );
        assert!(buf.capacity() < 1000);
    }
}
