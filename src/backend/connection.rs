//! One connection to a backend mongod: the stream (plain or TLS), a reusable
//! read buffer, request ids, and the proxy's own commands on it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bson::spec::BinarySubtype;
use bson::{rawdoc, RawBsonRef, RawDocument, RawDocumentBuf};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::scram::{SaltedPasswordCache, ScramError, ScramSha256};
use super::BackendError;
use crate::wire::{self, op_msg, Frame, OpCode, OpMsg, DEFAULT_MAX_MESSAGE_SIZE};

/// The SASL exchange has three round trips; anything longer is a broken server.
const MAX_SASL_STEPS: usize = 4;

/// The byte stream to a backend: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// How much of a large reply is read before it is passed on.
const FORWARD_CHUNK: usize = 64 * 1024;
/// The least a read from the backend asks for is the length of the last
/// reply, within these bounds: the next reply of a workload whole in one read
/// (one syscall on plain TCP), however short the part still missing, while
/// the small replies of a sign-in take small buffers. (At 16 KiB for every
/// connection, a burst of 1,000 sign-ins left 1.7 KiB more per connection
/// resident.)
const MIN_READ: usize = 1024;
const MAX_LEAST_READ: usize = 16 * 1024;

/// What [`BackendConnection::forward_reply`] passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedReply {
    pub bytes: usize,
    /// An exhaust stream: another reply to the same request follows.
    pub more_to_come: bool,
    /// `ok` and the error code, when asked for and the reply's first section
    /// was already buffered whole ([`wire::op_msg::reply_status`]).
    pub status: Option<wire::op_msg::ReplyStatus>,
}

/// Why forwarding a reply stopped: which side failed.
#[derive(Debug)]
pub enum ForwardError {
    Backend(BackendError),
    Client(io::Error),
}

/// An open connection to one backend host.
#[derive(Debug)]
pub struct BackendConnection {
    stream: BackendStream,
    /// `host:port` for error messages.
    addr: String,
    read_buf: BytesMut,
    /// The least the next read asks for ([`MIN_READ`]).
    least_read: usize,
    next_request_id: i32,
    max_message_size: usize,
}

impl BackendConnection {
    /// Opens TCP (and TLS when `tls` is given) to `host:port` within `timeout`.
    pub async fn connect(
        host: &str,
        port: u16,
        tls: Option<&Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<BackendConnection, BackendError> {
        let addr = super::uri::HostPort(host, port).to_string();
        let timeout_ms = timeout.as_millis() as u64;
        let fut = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| BackendError::connect(&addr, &e))?;
            // Commands are small request/response pairs; Nagle only adds latency.
            tcp.set_nodelay(true).map_err(|e| BackendError::Io {
                addr: addr.clone(),
                detail: e.to_string(),
            })?;
            let stream =
                match tls {
                    None => BackendStream::Plain(tcp),
                    Some(cfg) => {
                        let name = rustls::pki_types::ServerName::try_from(host.to_string())
                            .map_err(|e| BackendError::Tls {
                                addr: addr.clone(),
                                detail: format!("'{host}' is not a valid TLS server name: {e}"),
                            })?;
                        let tls = tokio_rustls::TlsConnector::from(Arc::clone(cfg))
                            .connect(name, tcp)
                            .await
                            .map_err(|e| BackendError::Tls {
                                addr: addr.clone(),
                                detail: e.to_string(),
                            })?;
                        BackendStream::Tls(Box::new(tls))
                    }
                };
            Ok::<_, BackendError>(stream)
        };
        let stream = tokio::time::timeout(timeout, fut).await.map_err(|_| {
            BackendError::ConnectTimeout {
                addr: addr.clone(),
                ms: timeout_ms,
            }
        })??;
        Ok(BackendConnection {
            stream,
            addr,
            // Allocated by the first read, released when the session is idle.
            read_buf: BytesMut::new(),
            least_read: MIN_READ,
            next_request_id: 1,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        })
    }

    /// Gives back the read buffer when nothing is buffered, so an idle
    /// connection holds none; the next reply allocates it again.
    pub fn release_idle(&mut self) {
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
        }
    }

    /// `host:port` of the peer, for logs.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, BackendStream::Tls(_))
    }

    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Sets the read limit, normally to the server's `maxMessageSizeBytes`.
    pub fn set_max_message_size(&mut self, max: usize) {
        self.max_message_size = max;
    }

    /// A fresh request id for a message this proxy originates.
    pub fn next_request_id(&mut self) -> i32 {
        let id = self.next_request_id;
        // Wraps to 1, never 0 or negative: some servers treat 0 specially.
        self.next_request_id = if id == i32::MAX { 1 } else { id + 1 };
        id
    }

    /// Writes a complete message.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| BackendError::Io {
                addr: self.addr.clone(),
                detail: e.to_string(),
            })?;
        self.stream.flush().await.map_err(|e| BackendError::Io {
            addr: self.addr.clone(),
            detail: e.to_string(),
        })
    }

    /// Reads one complete message, bounded by the max message size.
    pub async fn recv(&mut self) -> Result<Frame, BackendError> {
        match wire::read_frame(&mut self.stream, &mut self.read_buf, self.max_message_size).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(BackendError::Closed {
                addr: self.addr.clone(),
            }),
            Err(source) => Err(BackendError::Wire {
                addr: self.addr.clone(),
                source,
            }),
        }
    }

    /// Copies the next reply to `client` as its bytes arrive, without holding
    /// the whole message: only the header is parsed (for the size limit and
    /// the moreToCome flag of exhaust streams). `writing` is set just before
    /// the first byte goes to the client: from then on an interrupted reply
    /// cannot be replaced by an error reply.
    pub async fn forward_reply<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        writing: &mut bool,
    ) -> Result<ForwardedReply, ForwardError> {
        self.forward_reply_inspecting(client, writing, false, None)
            .await
    }

    /// [`BackendConnection::forward_reply`], also reading the reply's status
    /// when `inspect` is set — from the bytes already buffered only, so the
    /// relay never waits for or holds more of a reply than it would anyway —
    /// and showing every byte passed on to `scanner` (which keeps only what
    /// it needs of them).
    pub async fn forward_reply_inspecting<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        writing: &mut bool,
        inspect: bool,
        mut scanner: Option<&mut wire::reply_scan::ReplyScanner>,
    ) -> Result<ForwardedReply, ForwardError> {
        let header = loop {
            if let Some(head) = self.read_buf.get(..wire::HEADER_LEN) {
                let header =
                    wire::MsgHeader::parse(head, self.max_message_size).map_err(|source| {
                        ForwardError::Backend(BackendError::Wire {
                            addr: self.addr.clone(),
                            source,
                        })
                    })?;
                // The OP_MSG flags follow the header; a shorter message is all header.
                let need = (header.message_length as usize).min(wire::HEADER_LEN + 4);
                if self.read_buf.len() >= need {
                    break header;
                }
            }
            self.fill(wire::HEADER_LEN + 4)
                .await
                .map_err(ForwardError::Backend)?;
        };
        let len = header.message_length as usize;
        self.least_read = len.clamp(MIN_READ, MAX_LEAST_READ);
        let more_to_come = header.op_code == OpCode::Msg
            && self
                .read_buf
                .get(wire::HEADER_LEN..)
                .and_then(wire::le_u32)
                .is_some_and(|f| f & wire::OpMsgFlags::MORE_TO_COME != 0);
        let status = if inspect && header.op_code == OpCode::Msg {
            let buffered = self.read_buf.len().min(len);
            self.read_buf
                .get(..buffered)
                .and_then(wire::op_msg::reply_status)
        } else {
            None
        };
        let mut remaining = len;
        *writing = true;
        loop {
            let take = self.read_buf.len().min(remaining);
            if take > 0 {
                let chunk = self.read_buf.get(..take).unwrap_or_default();
                if let Some(s) = scanner.as_deref_mut() {
                    s.feed(chunk);
                }
                client
                    .write_all(chunk)
                    .await
                    .map_err(ForwardError::Client)?;
                bytes::Buf::advance(&mut self.read_buf, take);
                remaining -= take;
            }
            if remaining == 0 {
                break;
            }
            self.fill(remaining.min(FORWARD_CHUNK))
                .await
                .map_err(ForwardError::Backend)?;
        }
        client.flush().await.map_err(ForwardError::Client)?;
        Ok(ForwardedReply {
            bytes: len,
            more_to_come,
            status,
        })
    }

    /// One read of at most about `want` more bytes; the peer closing is an error.
    async fn fill(&mut self, want: usize) -> Result<(), BackendError> {
        use tokio::io::AsyncReadExt;
        self.read_buf.reserve(want.max(self.least_read));
        let n = self
            .stream
            .read_buf(&mut self.read_buf)
            .await
            .map_err(|e| BackendError::Io {
                addr: self.addr.clone(),
                detail: e.to_string(),
            })?;
        if n == 0 {
            return Err(BackendError::Closed {
                addr: self.addr.clone(),
            });
        }
        Ok(())
    }

    /// The stream, for a relay loop that reads and writes frames itself.
    pub fn stream_mut(&mut self) -> &mut BackendStream {
        &mut self.stream
    }

    /// The stream and its read buffer, for a relay that owns them from now on.
    pub fn into_parts(self) -> (BackendStream, BytesMut) {
        (self.stream, self.read_buf)
    }

    /// Runs one of the proxy's own commands (the body must carry `$db`) and
    /// returns the reply body. `ok: 0` becomes [`BackendError::Command`].
    pub async fn command(&mut self, body: &RawDocument) -> Result<RawDocumentBuf, BackendError> {
        let name = op_msg::first_key(body)
            .map(str::to_string)
            .unwrap_or_else(|_| "<empty>".into());
        let request_id = self.next_request_id();
        let msg = op_msg::encode(request_id, 0, 0, body);
        self.send(&msg).await?;
        let frame = self.recv().await?;
        let protocol = |detail: String| BackendError::Protocol {
            addr: self.addr.clone(),
            detail,
        };
        if frame.header.op_code != OpCode::Msg {
            return Err(protocol(format!(
                "reply to {name} has opcode {}, expected OP_MSG",
                frame.header.op_code.as_i32()
            )));
        }
        if frame.header.response_to != request_id {
            return Err(protocol(format!(
                "reply to {name} answers request {} instead of {request_id}",
                frame.header.response_to
            )));
        }
        let parsed = OpMsg::parse(&frame.bytes).map_err(|source| BackendError::Wire {
            addr: self.addr.clone(),
            source,
        })?;
        if parsed.flags.more_to_come() {
            return Err(protocol(format!(
                "reply to {name} unexpectedly sets moreToCome"
            )));
        }
        let reply = parsed.body.to_owned();
        check_ok(&self.addr, &name, &reply)?;
        Ok(reply)
    }

    /// Signs in with SCRAM-SHA-256 as drivers do: `saslStart` with
    /// `skipEmptyExchange`, then `saslContinue` until the server says done,
    /// verifying the server's signature on the way.
    pub async fn authenticate_scram_sha256(
        &mut self,
        user: &str,
        password: &str,
        auth_source: &str,
        cache: &Arc<SaltedPasswordCache>,
    ) -> Result<(), BackendError> {
        let addr = self.addr.clone();
        let scram_err = |source| BackendError::Scram {
            addr: addr.clone(),
            user: user.to_string(),
            db: auth_source.to_string(),
            source,
        };
        let conv = ScramSha256::new(user, password).map_err(scram_err)?;
        let start = rawdoc! {
            "saslStart": 1,
            "mechanism": "SCRAM-SHA-256",
            "payload": bson::Binary { subtype: BinarySubtype::Generic, bytes: conv.client_first() },
            "options": { "skipEmptyExchange": true },
            "$db": auth_source,
        };
        let reply = self
            .command(&start)
            .await
            .map_err(|e| e.into_auth(user, auth_source))?;
        let mut step = SaslReply::parse(&self.addr, &reply)?;
        if step.done {
            // Success before we proved anything or the server did: not SCRAM.
            return Err(BackendError::Protocol {
                addr: self.addr.clone(),
                detail: "saslStart reply says done before the SCRAM exchange".into(),
            });
        }
        let server_first = SaslReply::payload(&self.addr, &reply)?;
        let mut conv = conv;
        let mut next = match conv.client_final_if_cached(server_first, cache) {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                let (c, r) = self
                    .derive_client_final(conv, server_first.to_vec(), cache)
                    .await?;
                conv = c;
                r.map_err(scram_err)?
            }
            Err(e) => return Err(scram_err(e)),
        };
        for _ in 0..MAX_SASL_STEPS {
            let cont = rawdoc! {
                "saslContinue": 1,
                "conversationId": step.conversation_id,
                "payload": bson::Binary { subtype: BinarySubtype::Generic, bytes: std::mem::take(&mut next) },
                "$db": auth_source,
            };
            let reply = self
                .command(&cont)
                .await
                .map_err(|e| e.into_auth(user, auth_source))?;
            step = SaslReply::parse(&self.addr, &reply)?;
            let payload = SaslReply::payload(&self.addr, &reply)?;
            if !conv.is_done() {
                conv.verify_server_final(payload).map_err(scram_err)?;
            } else if !payload.is_empty() {
                return Err(BackendError::Protocol {
                    addr: self.addr.clone(),
                    detail: "saslContinue after the server signature carried a payload".into(),
                });
            }
            if step.done {
                return if conv.is_done() {
                    Ok(())
                } else {
                    Err(BackendError::Protocol {
                        addr: self.addr.clone(),
                        detail: "the server ended SCRAM without proving its identity".into(),
                    })
                };
            }
            // Without skipEmptyExchange honoured, the server wants one empty round.
            next = Vec::new();
        }
        Err(BackendError::Protocol {
            addr: self.addr.clone(),
            detail: format!("SCRAM did not finish within {MAX_SASL_STEPS} saslContinue steps"),
        })
    }
}

impl BackendConnection {
    /// PBKDF2 (15000 iterations by default) takes milliseconds on a cache
    /// miss; run it off the async workers so other sessions keep moving.
    async fn derive_client_final(
        &self,
        mut conv: ScramSha256,
        server_first: Vec<u8>,
        cache: &Arc<SaltedPasswordCache>,
    ) -> Result<(ScramSha256, Result<Vec<u8>, ScramError>), BackendError> {
        let cache = Arc::clone(cache);
        cache.count_blocking_task();
        tokio::task::spawn_blocking(move || {
            let r = conv.client_final(&server_first, &cache);
            (conv, r)
        })
        .await
        .map_err(|e| BackendError::Io {
            addr: self.addr.clone(),
            detail: format!("SCRAM key derivation task failed: {e}"),
        })
    }
}

struct SaslReply {
    conversation_id: i32,
    done: bool,
}

impl SaslReply {
    fn parse(addr: &str, reply: &RawDocument) -> Result<SaslReply, BackendError> {
        let bad = |detail: &str| BackendError::Protocol {
            addr: addr.to_string(),
            detail: format!("SASL reply {detail}"),
        };
        let conversation_id = match reply.get("conversationId") {
            Ok(Some(RawBsonRef::Int32(n))) => n,
            Ok(Some(RawBsonRef::Int64(n))) => {
                i32::try_from(n).map_err(|_| bad("has an out-of-range conversationId"))?
            }
            _ => return Err(bad("has no integer conversationId")),
        };
        let done = match reply.get("done") {
            Ok(Some(RawBsonRef::Boolean(b))) => b,
            _ => return Err(bad("has no boolean done")),
        };
        Ok(SaslReply {
            conversation_id,
            done,
        })
    }

    fn payload<'a>(addr: &str, reply: &'a RawDocument) -> Result<&'a [u8], BackendError> {
        match reply.get("payload") {
            Ok(Some(RawBsonRef::Binary(b))) => Ok(b.bytes),
            _ => Err(BackendError::Protocol {
                addr: addr.to_string(),
                detail: "SASL reply has no binary payload".into(),
            }),
        }
    }
}

/// Turns `ok: 0` into an error; `ok` may be any numeric type or a boolean.
pub(crate) fn check_ok(addr: &str, command: &str, reply: &RawDocument) -> Result<(), BackendError> {
    let ok = match reply.get("ok") {
        Ok(Some(RawBsonRef::Double(d))) => d == 1.0,
        Ok(Some(RawBsonRef::Int32(n))) => n == 1,
        Ok(Some(RawBsonRef::Int64(n))) => n == 1,
        Ok(Some(RawBsonRef::Boolean(b))) => b,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let code = reply
        .get("code")
        .ok()
        .flatten()
        .and_then(wire::bson_integer)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(-1);
    let text = |key: &str| match reply.get_str(key) {
        // Bounded: the message ends up in logs and error replies.
        Ok(s) => s.chars().take(500).collect(),
        Err(_) => String::new(),
    };
    Err(BackendError::Command {
        addr: addr.to_string(),
        command: command.to_string(),
        code,
        code_name: text("codeName"),
        errmsg: text("errmsg"),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bson::rawdoc;

    use super::*;
    use crate::backend::mock::{self, MockReply};

    async fn conn_to(handler: mock::Handler) -> BackendConnection {
        let port = mock::serve(handler).await;
        BackendConnection::connect("127.0.0.1", port, None, Duration::from_secs(2))
            .await
            .unwrap()
    }

    async fn ping_err(reply: fn() -> MockReply) -> String {
        let mut c = conn_to(Arc::new(move |_, _| reply())).await;
        c.command(&rawdoc! { "ping": 1, "$db": "admin" })
            .await
            .unwrap_err()
            .to_string()
            .replace(c.addr(), "ADDR")
    }

    #[tokio::test]
    async fn command_errors_are_reported_with_code_and_host() {
        assert_eq!(
            ping_err(|| MockReply::Doc(rawdoc! {
                "ok": 0.0, "code": 13, "codeName": "Unauthorized", "errmsg": "command ping requires authentication",
            }))
            .await,
            "backend ADDR: command ping failed: command ping requires authentication (Unauthorized, code 13)"
        );
        assert_eq!(
            ping_err(|| MockReply::WrongResponseTo(rawdoc! { "ok": 1 })).await,
            "backend ADDR: unexpected reply: reply to ping answers request 101 instead of 1"
        );
        assert_eq!(
            ping_err(|| MockReply::WrongOpcode).await,
            "backend ADDR: unexpected reply: reply to ping has opcode 1, expected OP_MSG"
        );
        assert_eq!(
            ping_err(|| MockReply::Close).await,
            "backend ADDR: the server closed the connection"
        );
        // No ok field at all is a failure, not a success.
        assert_eq!(
            ping_err(|| MockReply::Doc(rawdoc! { "x": 1 })).await,
            "backend ADDR: command ping failed:  (, code -1)"
        );
    }

    /// Answers saslStart with `first(client_nonce)` and saslContinue with `fin`.
    fn sasl(first: fn(&str) -> RawDocumentBuf, fin: fn() -> RawDocumentBuf) -> mock::Handler {
        Arc::new(move |name, body| match name {
            "saslStart" => {
                let payload = body.get_binary("payload").map(|b| b.bytes).unwrap_or(&[]);
                let text = String::from_utf8_lossy(payload);
                let nonce = text.rsplit("r=").next().unwrap_or("").to_string();
                MockReply::Doc(first(&nonce))
            }
            "saslContinue" => MockReply::Doc(fin()),
            _ => MockReply::Close,
        })
    }

    fn sasl_reply(done: bool, payload: &str) -> RawDocumentBuf {
        rawdoc! {
            "conversationId": 1, "done": done,
            "payload": bson::Binary { subtype: BinarySubtype::Generic, bytes: payload.as_bytes().to_vec() },
            "ok": 1.0,
        }
    }

    async fn auth_err(handler: mock::Handler) -> String {
        let mut c = conn_to(handler).await;
        c.authenticate_scram_sha256(
            "u",
            "secret-pw",
            "admin",
            &Arc::new(SaltedPasswordCache::new()),
        )
        .await
        .unwrap_err()
        .to_string()
        .replace(c.addr(), "ADDR")
    }

    #[tokio::test]
    async fn bad_sasl_conversations_fail_clearly() {
        let ok_first = |n: &str| sasl_reply(false, &format!("r={n}srv,s=c2FsdA==,i=4096"));
        assert_eq!(
            auth_err(sasl(
                |_| rawdoc! { "ok": 0, "code": 18, "codeName": "AuthenticationFailed", "errmsg": "authentication failed" },
                || rawdoc! {}
            ))
            .await,
            "backend ADDR: authentication as 'u' on 'admin' failed: authentication failed \
             (AuthenticationFailed, code 18); check the grant's backend_user and backend_password_env, \
             backend.auth_source, and that the user has SCRAM-SHA-256 credentials"
        );
        assert_eq!(
            auth_err(sasl(|_| sasl_reply(true, ""), || rawdoc! {})).await,
            "backend ADDR: unexpected reply: saslStart reply says done before the SCRAM exchange"
        );
        assert_eq!(
            auth_err(sasl(
                |_| sasl_reply(false, "r=other,s=c2FsdA==,i=4096"),
                || rawdoc! {}
            ))
            .await,
            "backend ADDR: SCRAM-SHA-256 as 'u' on 'admin': the server nonce does not extend the \
             client nonce; the reply is not for this conversation"
        );
        assert_eq!(
            auth_err(sasl(ok_first, || sasl_reply(true, "v=AAAA"))).await,
            "backend ADDR: SCRAM-SHA-256 as 'u' on 'admin': the server signature does not match; \
             the server does not know this user's credentials"
        );
        assert_eq!(
            auth_err(sasl(
                ok_first,
                || rawdoc! { "conversationId": 1, "done": true, "ok": 1 }
            ))
            .await,
            "backend ADDR: unexpected reply: SASL reply has no binary payload"
        );
        assert_eq!(
            auth_err(sasl(|_| rawdoc! { "done": false, "ok": 1 }, || rawdoc! {})).await,
            "backend ADDR: unexpected reply: SASL reply has no integer conversationId"
        );
        let e = auth_err(sasl(ok_first, || sasl_reply(true, "v=AAAA"))).await;
        assert!(!e.contains("secret-pw"));
    }

    /// A SCRAM-SHA-256 server that knows user "u" with password "secret-pw"
    /// and proves it, so the conversation succeeds.
    fn scram_server() -> mock::Handler {
        use crate::backend::scram::hmac;
        use base64::engine::general_purpose::STANDARD as B64;
        use base64::Engine as _;
        use sha2::Sha256;
        let first_bare = Arc::new(std::sync::Mutex::new(String::new()));
        Arc::new(move |name, body| {
            let payload = body.get_binary("payload").map(|b| b.bytes).unwrap_or(&[]);
            let text = String::from_utf8_lossy(payload).to_string();
            let server_first = |bare: &str| {
                let nonce = bare.rsplit("r=").next().unwrap_or("");
                format!("r={nonce}srv,s=c2FsdA==,i=4096")
            };
            match name {
                "saslStart" => {
                    let bare = text.trim_start_matches("n,,").to_string();
                    let reply = sasl_reply(false, &server_first(&bare));
                    *first_bare.lock().unwrap() = bare;
                    MockReply::Doc(reply)
                }
                "saslContinue" if text.is_empty() => MockReply::Doc(sasl_reply(true, "")),
                "saslContinue" => {
                    let bare = first_bare.lock().unwrap().clone();
                    let without_proof = text.split(",p=").next().unwrap_or("");
                    let auth = format!("{bare},{},{without_proof}", server_first(&bare));
                    let mut salted = [0u8; 32];
                    pbkdf2::pbkdf2_hmac::<Sha256>(b"secret-pw", b"salt", 4096, &mut salted);
                    let server_key = hmac(&salted, b"Server Key");
                    let sig = B64.encode(hmac(&server_key, auth.as_bytes()));
                    MockReply::Doc(sasl_reply(true, &format!("v={sig}")))
                }
                _ => MockReply::Close,
            }
        })
    }

    #[tokio::test]
    async fn a_cached_salted_password_skips_the_blocking_pool() {
        let port = mock::serve(scram_server()).await;
        let cache = Arc::new(SaltedPasswordCache::new());
        for _ in 0..3 {
            let mut c = BackendConnection::connect("127.0.0.1", port, None, Duration::from_secs(2))
                .await
                .unwrap();
            c.authenticate_scram_sha256("u", "secret-pw", "admin", &cache)
                .await
                .unwrap();
        }
        // Only the first sign-in derived (on the blocking pool); the other
        // two computed their proofs inline from the cached salted password.
        assert_eq!(cache.blocking_tasks(), 1);
        let mut c = BackendConnection::connect("127.0.0.1", port, None, Duration::from_secs(2))
            .await
            .unwrap();
        let e = c
            .authenticate_scram_sha256("u", "other-pw", "admin", &cache)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("the server signature does not match"), "{e}");
        assert_eq!(cache.blocking_tasks(), 2);
    }

    /// A raw server that writes `bytes` to the first connection, then closes.
    async fn serve_raw(bytes: Vec<u8>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            // Dribble it out so the forwarder sees many partial reads.
            for chunk in bytes.chunks(50_000) {
                sock.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        addr
    }

    async fn connect_to(addr: std::net::SocketAddr) -> BackendConnection {
        BackendConnection::connect("127.0.0.1", addr.port(), None, Duration::from_secs(5))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn forwards_large_and_exhaust_replies_byte_for_byte() {
        let big = rawdoc! { "blob": bson::Binary { subtype: BinarySubtype::Generic, bytes: vec![7u8; 1 << 20] }, "ok": 1.0 };
        let first = op_msg::encode(1, 9, wire::OpMsgFlags::MORE_TO_COME, &big);
        let last = op_msg::encode(2, 9, 0, &rawdoc! { "ok": 1.0 });
        let addr = serve_raw([first.clone(), last.clone()].concat()).await;
        let mut conn = connect_to(addr).await;
        let mut out = Vec::new();
        let r = conn.forward_reply(&mut out, &mut false).await.unwrap();
        assert_eq!(
            r,
            ForwardedReply {
                bytes: first.len(),
                more_to_come: true,
                status: None,
            }
        );
        let r = conn.forward_reply(&mut out, &mut false).await.unwrap();
        assert_eq!(
            r,
            ForwardedReply {
                bytes: last.len(),
                more_to_come: false,
                status: None,
            }
        );
        assert_eq!(out, [first, last].concat());
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer() {
        let reply = op_msg::encode(1, 9, 0, &rawdoc! { "ok": 1.0 });
        let addr = serve_raw(reply.clone()).await;
        let mut conn = connect_to(addr).await;
        assert_eq!(conn.read_buf.capacity(), 0);
        let mut out = Vec::new();
        conn.forward_reply(&mut out, &mut false).await.unwrap();
        assert_eq!(out, reply);
        // One read of at least MIN_READ took the reply whole.
        assert!(conn.read_buf.capacity() > 0);
        conn.release_idle();
        assert_eq!(conn.read_buf.capacity(), 0);
    }

    #[tokio::test]
    async fn reads_are_as_large_as_the_last_reply() {
        let small = op_msg::encode(1, 9, 0, &rawdoc! { "ok": 1.0 });
        let doc = rawdoc! { "blob": bson::Binary { subtype: BinarySubtype::Generic, bytes: vec![7u8; 12_000] }, "ok": 1.0 };
        let large = op_msg::encode(2, 9, 0, &doc);
        let huge = op_msg::encode(
            3,
            9,
            0,
            &rawdoc! { "blob": bson::Binary { subtype: BinarySubtype::Generic, bytes: vec![7u8; 100_000] } },
        );
        let addr = serve_raw([small.clone(), large.clone(), huge.clone()].concat()).await;
        let mut conn = connect_to(addr).await;
        assert_eq!(conn.least_read, MIN_READ);
        let mut out = Vec::new();
        conn.forward_reply(&mut out, &mut false).await.unwrap();
        assert_eq!(conn.least_read, MIN_READ, "after a small reply");
        conn.forward_reply(&mut out, &mut false).await.unwrap();
        assert_eq!(conn.least_read, large.len(), "after a 12 KB reply");
        conn.forward_reply(&mut out, &mut false).await.unwrap();
        assert_eq!(conn.least_read, MAX_LEAST_READ, "after a 100 KB reply");
        assert_eq!(out, [small, large, huge].concat());
    }

    #[tokio::test]
    async fn reads_the_status_of_a_buffered_reply_only_when_asked() {
        let failed = op_msg::encode(1, 9, 0, &rawdoc! { "ok": 0.0, "code": 13, "errmsg": "no" });
        let addr = serve_raw([failed.clone(), failed.clone()].concat()).await;
        let mut conn = connect_to(addr).await;
        let mut out = Vec::new();
        let r = conn
            .forward_reply_inspecting(&mut out, &mut false, true, None)
            .await
            .unwrap();
        let want = wire::op_msg::ReplyStatus {
            ok: false,
            code: Some(13),
        };
        assert_eq!(r.status, Some(want));
        let r = conn.forward_reply(&mut out, &mut false).await.unwrap();
        assert_eq!(r.status, None);
        assert_eq!(out, [failed.clone(), failed].concat());
    }

    #[tokio::test]
    async fn a_backend_closing_mid_reply_is_a_backend_error() {
        let reply = op_msg::encode(1, 9, 0, &rawdoc! { "pad": "x".repeat(200_000), "ok": 1.0 });
        let addr = serve_raw(reply[..150_000].to_vec()).await;
        let mut conn = connect_to(addr).await;
        let mut out = Vec::new();
        let err = conn.forward_reply(&mut out, &mut false).await.unwrap_err();
        assert!(
            matches!(err, ForwardError::Backend(BackendError::Closed { .. })),
            "{err:?}"
        );
        assert_eq!(out.len(), 150_000, "what arrived was passed on");
        // Closed before any byte.
        let addr = serve_raw(Vec::new()).await;
        let mut conn = connect_to(addr).await;
        let err = conn
            .forward_reply(&mut Vec::new(), &mut false)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ForwardError::Backend(BackendError::Closed { .. })),
            "{err:?}"
        );
        // A reply over the limit is refused before it is forwarded.
        let addr = serve_raw(op_msg::encode(1, 9, 0, &big_doc())).await;
        let mut conn = connect_to(addr).await;
        conn.set_max_message_size(1000);
        let mut out = Vec::new();
        let err = conn.forward_reply(&mut out, &mut false).await.unwrap_err();
        assert!(
            matches!(err, ForwardError::Backend(BackendError::Wire { .. })),
            "{err:?}"
        );
        assert!(out.is_empty());
    }

    fn big_doc() -> RawDocumentBuf {
        rawdoc! { "pad": "y".repeat(5000) }
    }
}
