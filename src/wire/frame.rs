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

/// How much the buffer grows per read: a message declaring a large length
/// only gets memory as its bytes actually arrive.
const READ_CHUNK: usize = 64 * 1024;

/// Reads one message. `Ok(None)` means the peer closed cleanly between
/// messages. `buf` must be kept between calls: bytes read past the end of one
/// message (a pipelined next message) stay in it. The declared length is
/// checked against `max` before the buffer grows for the body.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, WireError> {
    loop {
        let wanted = match buf.get(..HEADER_LEN) {
            Some(head) => {
                let header = MsgHeader::parse(head, max)?;
                let len = header.message_length as usize;
                if buf.len() >= len {
                    return Ok(Some(Frame {
                        header,
                        bytes: buf.split_to(len).freeze(),
                    }));
                }
                len - buf.len()
            }
            None => HEADER_LEN - buf.len(),
        };
        buf.reserve(wanted.clamp(HEADER_LEN, READ_CHUNK));
        let n = match reader.read_buf(buf).await {
            Ok(n) => n,
            // A TLS peer that closes its socket without close_notify (as
            // drivers do when they close) surfaces as UnexpectedEof from
            // rustls: between messages that is a clean close like any other.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && buf.is_empty() => 0,
            Err(e) => return Err(WireError::Io(e.to_string())),
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(WireError::UnexpectedEof)
            };
        }
    }
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
        let mut buf = BytesMut::new();
        assert_eq!(
            read_frame(&mut r, &mut buf, 100).await.unwrap_err(),
            WireError::UnexpectedEof
        );
    }

    /// Reads `data`, then fails the way rustls does when the peer closes
    /// without a close_notify.
    struct EofAfter<'a>(&'a [u8]);

    impl AsyncRead for EofAfter<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0.is_empty() {
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            let n = self.0.len().min(out.remaining());
            out.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn close_without_close_notify_between_messages_is_clean() {
        let input = message(20, b"abcd");
        let mut r = EofAfter(&input);
        let mut buf = BytesMut::new();
        assert!(read_frame(&mut r, &mut buf, 100).await.unwrap().is_some());
        assert!(read_frame(&mut r, &mut buf, 100).await.unwrap().is_none());
        // Inside a message it is still an I/O error.
        let mut r = EofAfter(&input[..7]);
        let mut buf = BytesMut::new();
        assert_eq!(
            read_frame(&mut r, &mut buf, 100).await.unwrap_err(),
            WireError::Io("peer closed connection without sending TLS close_notify".into())
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
