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

/// Messages at least this large are read into an anonymous memory mapping
/// of their own instead of the shared buffer.
///
/// Freed heap memory is not always given back: glibc raises its mmap
/// threshold (up to 32 MiB) each time it frees a mapped block, after which
/// blocks of a few MiB come from arenas and stay resident once freed. Ten
/// idle connections kept 150 MiB after sending 12 MB messages that way. A
/// mapping is unmapped when the frame is dropped, whatever the allocator
/// did before, and its pages become resident only as bytes are written, so
/// a large declared length still costs memory only as its bytes arrive.
/// At 1 MiB the mmap/munmap pair is small next to copying the message.
pub const OWN_MAPPING: usize = 1 << 20;

/// Reads the rest of the message `buf` holds the start of into a mapping of
/// exactly its length. Cancelled half way, the bytes read so far are lost;
/// every caller closes the connection then.
async fn read_into_mapping<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    header: MsgHeader,
) -> Result<Frame, WireError> {
    let len = header.message_length as usize;
    let io = |e: std::io::Error| WireError::Io(e.to_string());
    let mut map = memmap2::MmapMut::map_anon(len).map_err(io)?;
    let mut filled = buf.len().min(len);
    if let (Some(dst), Some(src)) = (map.get_mut(..filled), buf.get(..filled)) {
        dst.copy_from_slice(src);
    }
    buf.clear();
    while filled < len {
        let n = reader
            .read(map.get_mut(filled..).unwrap_or_default())
            .await
            .map_err(io)?;
        if n == 0 {
            return Err(WireError::UnexpectedEof);
        }
        filled += n;
    }
    Ok(Frame {
        header,
        bytes: Bytes::from_owner(map),
    })
}

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
                if len >= OWN_MAPPING {
                    return read_into_mapping(reader, buf, header).await.map(Some);
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
    async fn a_large_message_gets_a_mapping_of_its_own_and_the_buffer_stays_small() {
        let body: Vec<u8> = (0..2 * OWN_MAPPING).map(|i| (i % 251) as u8).collect();
        let len = (HEADER_LEN + body.len()) as i32;
        let mut input = message(len, &body);
        input.extend(message(20, b"next"));
        // A reader that hands out at most 1000 bytes per read, as a socket might.
        let (mut tx, mut rx) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&input).await.unwrap();
        });
        let mut buf = BytesMut::new();
        let max = 4 * OWN_MAPPING;
        let f = read_frame(&mut rx, &mut buf, max).await.unwrap().unwrap();
        assert_eq!(f.bytes.len(), len as usize);
        assert!(f.body() == &body[..], "the body arrives intact");
        assert!(buf.capacity() <= READ_CHUNK, "{}", buf.capacity());
        let next = read_frame(&mut rx, &mut buf, max).await.unwrap().unwrap();
        assert_eq!(next.body(), b"next");
        writer.await.unwrap();
        assert!(read_frame(&mut rx, &mut buf, max).await.unwrap().is_none());

        let truncated = message(len, &body[..1000]);
        let mut r = &truncated[..];
        assert_eq!(
            read_frame(&mut r, &mut BytesMut::new(), max)
                .await
                .unwrap_err(),
            WireError::UnexpectedEof
        );
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
