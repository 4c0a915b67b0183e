//! A raw MongoDB wire-protocol client over TLS, for tests that must see
//! exactly what the proxy sends (no driver in between).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bson::{rawdoc, RawDocumentBuf};
use bytes::BytesMut;
use mongo_oidc_proxy::wire::{self, Frame, OpCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub struct WireClient {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    next_id: i32,
}

/// A TLS client configuration trusting only `ca`.
pub fn tls_connector(ca: &Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA file") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

impl WireClient {
    /// Connects, or says why the TCP connection or TLS handshake failed.
    pub async fn try_connect(addr: SocketAddr, ca: &Path) -> Result<WireClient, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").expect("server name");
        let stream = tls_connector(ca)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        Ok(WireClient {
            stream,
            buf: BytesMut::new(),
            next_id: 100,
        })
    }

    /// Connects from a chosen loopback address (127.0.0.2, ...), so a test
    /// can be two clients from two addresses.
    pub async fn connect_from(
        local: std::net::IpAddr,
        addr: SocketAddr,
        ca: &Path,
    ) -> Result<WireClient, String> {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(local, 0))
            .map_err(|e| format!("bind: {e}"))?;
        let tcp = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").expect("server name");
        let stream = tls_connector(ca)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        Ok(WireClient {
            stream,
            buf: BytesMut::new(),
            next_id: 100,
        })
    }

    pub async fn connect(addr: SocketAddr, ca: &Path) -> WireClient {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let name = ServerName::try_from("localhost").expect("server name");
        let stream = tls_connector(ca)
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the proxy");
        WireClient {
            stream,
            buf: BytesMut::new(),
            next_id: 100,
        }
    }

    fn id(&mut self) -> i32 {
        self.next_id += 1;
        self.next_id
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to the proxy");
        self.stream.flush().await.expect("flush");
    }

    /// The next message from the proxy, or `None` if it closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        let read = wire::read_frame(&mut self.stream, &mut self.buf, 64 << 20);
        match tokio::time::timeout(std::time::Duration::from_secs(30), read).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => None,
            Err(_) => panic!("the proxy did not answer within 30 s"),
        }
    }

    /// Sends an OP_MSG with `flags` and returns the request id.
    pub async fn send_msg(&mut self, flags: u32, body: &RawDocumentBuf) -> i32 {
        let id = self.id();
        let bytes = wire::op_msg::encode(id, 0, flags, body);
        self.send_raw(&bytes).await;
        id
    }

    /// One OP_MSG round trip; checks the reply answers this request.
    pub async fn command(&mut self, body: RawDocumentBuf) -> RawDocumentBuf {
        let id = self.send_msg(0, &body).await;
        let reply = self
            .recv()
            .await
            .expect("the proxy closed the connection instead of replying");
        assert_eq!(
            reply.header.response_to, id,
            "reply answers another request"
        );
        assert_eq!(reply.header.op_code, OpCode::Msg);
        let msg = wire::OpMsg::parse(&reply.bytes).expect("a well-formed OP_MSG reply");
        msg.body.to_owned()
    }

    /// The legacy handshake the Node driver and mongosh send.
    pub async fn legacy_command(
        &mut self,
        namespace: &str,
        query: RawDocumentBuf,
    ) -> RawDocumentBuf {
        let id = self.id();
        self.send_raw(&wire::op_query::encode_query(id, namespace, &query))
            .await;
        let reply = self
            .recv()
            .await
            .expect("the proxy closed the connection instead of replying");
        assert_eq!(
            reply.header.op_code,
            OpCode::Reply,
            "OP_QUERY must be answered with OP_REPLY"
        );
        assert_eq!(reply.header.response_to, id);
        wire::op_query::parse_reply(&reply.bytes)
            .expect("a well-formed OP_REPLY")
            .to_owned()
    }

    /// One-step MONGODB-OIDC sign-in with `jwt`.
    pub async fn sign_in(&mut self, jwt: &str) -> RawDocumentBuf {
        self.command(sasl_start(&rawdoc! { "jwt": jwt })).await
    }

    /// Closes cleanly (TLS close_notify), as a driver closing its pool does:
    /// the proxy sees the client close, not an I/O error.
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

pub fn binary(doc: &RawDocumentBuf) -> bson::Binary {
    bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes: doc.as_bytes().to_vec(),
    }
}

pub fn sasl_start(payload: &RawDocumentBuf) -> RawDocumentBuf {
    rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": binary(payload), "$db": "$external" }
}

pub fn sasl_continue(payload: &RawDocumentBuf) -> RawDocumentBuf {
    rawdoc! { "saslContinue": 1, "conversationId": 1, "payload": binary(payload), "$db": "$external" }
}

/// `(code, errmsg)` of an error reply, or panics if it was not one.
pub fn error_of(reply: &RawDocumentBuf) -> (i32, String) {
    assert_eq!(
        reply.get_f64("ok").ok(),
        Some(0.0),
        "expected an error reply, got {reply:?}"
    );
    (
        reply.get_i32("code").expect("code"),
        reply.get_str("errmsg").expect("errmsg").to_string(),
    )
}

pub fn is_ok(reply: &RawDocumentBuf) -> bool {
    match reply.get("ok") {
        Ok(Some(bson::raw::RawBsonRef::Double(v))) => v == 1.0,
        Ok(Some(bson::raw::RawBsonRef::Int32(v))) => v == 1,
        _ => false,
    }
}
