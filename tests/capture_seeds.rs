//! Captures real client traffic as fuzz seeds (fuzz/seeds/<target>/). Not
//! part of the test suite: run it by hand when the clients or the proxy
//! change what goes over the wire, then `cargo fuzz cmin` and commit.
//!
//! ```text
//! MOP_TOOLS=/path/to/.tools cargo test --test capture_seeds -- --ignored --nocapture
//! # MOP_CAPTURE_DIR=/tmp/seeds writes elsewhere (default: fuzz/seeds)
//! ```
//!
//! Each client runs through a tee that records every message the client
//! sends, in order, per connection:
//! - plaintext in front of SecantusDB with SCRAM-SHA-256 users: pymongo, the
//!   Node driver, mongosh and the Rust `mongodb` driver (handshakes, SCRAM,
//!   CRUD, getMore, killCursors, endSessions);
//! - TLS-terminating in front of the proxy (same development certificate,
//!   so the clients' CA checks pass): pymongo, the Node driver and the Rust
//!   driver signing in with MONGODB-OIDC machine callbacks, and mongosh's
//!   device flow against MongoDB's oidc-mock-provider (saslStart `{n}` and
//!   saslContinue `{jwt}`).
//!
//! The OIDC shapes the clients above do not send (base64 string payloads, a
//! speculative `{jwt}` in an OP_QUERY hello, a hinted step 1) are built
//! with the tests' helpers, as source `helpers`. Files are named
//! `<source>-<sha256 prefix>`; content already present under any name is
//! not written again.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{rawdoc, RawDocument, RawDocumentBuf};
use futures::{FutureExt, TryStreamExt};
use mongo_oidc_proxy::auth::oidc;
use mongo_oidc_proxy::fuzzing;
use mongo_oidc_proxy::wire::{self, MsgHeader, Request};
use sha2::{Digest, Sha256};
use support::proxy_env::{self, ProxyEnv};
use support::wire_client::{binary, sasl_continue, sasl_start, tls_connector};
use support::{clients_dir, run_mongosh, run_node, run_python, MockIdp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Connections = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// What one tee recorded: the client's bytes of every connection.
struct Tee {
    addr: SocketAddr,
    conns: Connections,
}

impl Tee {
    /// Every connection's messages, split at the headers' lengths.
    fn take(&self) -> Vec<Vec<Vec<u8>>> {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        conns
            .iter()
            .map(|c| split_messages(&c.lock().unwrap()))
            .filter(|m| !m.is_empty())
            .collect()
    }
}

fn split_messages(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Ok(h) = MsgHeader::parse(bytes, usize::MAX) {
        let Some((m, rest)) = bytes.split_at_checked(h.message_length as usize) else {
            break;
        };
        out.push(m.to_vec());
        bytes = rest;
    }
    out
}

/// Copies both ways; the client's bytes are also appended to `log`.
async fn pump<C, S>(client: C, server: S, log: Arc<Mutex<Vec<u8>>>)
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let up = async move {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match cr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    log.lock().unwrap().extend_from_slice(&chunk[..n]);
                    if sw.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// A tee in front of `upstream`; with `tls`, it terminates TLS with the
/// development certificate and speaks TLS to the upstream.
async fn tee(upstream: SocketAddr, tls: bool) -> Tee {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tee");
    let addr = listener.local_addr().expect("tee address");
    let conns: Connections = Arc::default();
    let files = proxy_env::shared_files();
    let acceptor = tls.then(|| {
        let listen = mongo_oidc_proxy::config::ListenConfig {
            address: addr,
            tls_cert: files.join("server.pem"),
            tls_key: files.join("server.key"),
            client_ca: None,
            client_cert_mode: None,
        };
        tokio_rustls::TlsAcceptor::from(
            mongo_oidc_proxy::tls::server_config(&listen).expect("tee TLS config"),
        )
    });
    let connector = tls_connector(&files.join("ca.pem"));
    let all = conns.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let log: Arc<Mutex<Vec<u8>>> = Arc::default();
            all.lock().unwrap().push(log.clone());
            let acceptor = acceptor.clone();
            let connector = connector.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                match acceptor {
                    None => pump(client, server, log).await,
                    Some(acceptor) => {
                        let Ok(client) = acceptor.accept(client).await else {
                            return;
                        };
                        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                        let Ok(server) = connector.connect(name, server).await else {
                            return;
                        };
                        pump(client, server, log).await
                    }
                }
            });
        }
    });
    Tee { addr, conns }
}

/// Seeds by target, each with the source it came from.
#[derive(Default)]
struct Seeds(BTreeMap<&'static str, Vec<(String, Vec<u8>)>>);

/// At most this many seeds of one kind from one source: handshakes repeat
/// on every monitoring connection with only the request id changed.
const PER_KIND: usize = 3;

impl Seeds {
    fn add(&mut self, target: &'static str, source: &str, bytes: Vec<u8>) {
        let list = self.0.entry(target).or_default();
        if !list.iter().any(|(_, b)| *b == bytes) {
            list.push((source.to_owned(), bytes));
        }
    }

    /// Every message of every connection, into the targets that read it.
    fn connections(&mut self, source: &str, conns: &[Vec<Vec<u8>>]) {
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        let mut sessions = 0;
        let mut conns: Vec<&Vec<Vec<u8>>> = conns.iter().collect();
        // The richest connections first: they carry the sign-in and the CRUD.
        conns.sort_by_key(|c| std::cmp::Reverse(c.len()));
        for conn in conns {
            if sessions < PER_KIND {
                sessions += 1;
                let stream: Vec<u8> = conn.concat();
                let mut frames = vec![5u8, 0];
                frames.extend_from_slice(&stream);
                self.add("frames", source, frames);
                let mut trickled = vec![4u8, 0x80 | 7];
                trickled.extend_from_slice(&stream);
                self.add("frames", source, trickled);
                self.add(
                    "session",
                    source,
                    fuzzing::session_input(conn.iter().map(Vec::as_slice)),
                );
            }
            for m in conn {
                let kind = message_kind(m);
                let n = kinds.entry(kind).or_default();
                if *n >= PER_KIND {
                    continue;
                }
                *n += 1;
                self.message(source, m);
            }
        }
    }

    /// One client message into wire, request, and where it is one, hello,
    /// sasl and jwt.
    fn message(&mut self, source: &str, m: &[u8]) {
        self.add("wire", source, m.to_vec());
        self.add("request", source, m.to_vec());
        let Ok(req) = Request::decode(m) else {
            return;
        };
        let Some(c) = req.command else {
            return;
        };
        match c.name {
            n if mongo_oidc_proxy::session::decide::is_handshake(n) => {
                let mut hello = vec![0u8];
                hello.extend_from_slice(c.body.as_bytes());
                self.add("hello", source, hello);
                if let Ok(spec) = c.body.get_document("speculativeAuthenticate") {
                    self.sasl_command(source, spec);
                }
            }
            "saslStart" | "saslContinue" => self.sasl_command(source, c.body),
            _ => {}
        }
    }

    fn sasl_command(&mut self, source: &str, body: &RawDocument) {
        self.add("sasl", source, body.as_bytes().to_vec());
        let payload = oidc::parse_sasl_start(body, "$external")
            .map(|s| s.payload)
            .or_else(|_| oidc::parse_sasl_continue(body).map(|c| c.payload));
        let Ok(payload) = payload else {
            return;
        };
        self.add("sasl", source, payload.bytes.to_vec());
        if let Ok(oidc::ClientStep::Jwt(token)) = oidc::parse_payload(&payload.bytes) {
            self.token(source, token);
        }
    }

    /// A token as is, and its header and claims to be signed with the
    /// jwt target's fixed keys.
    fn token(&mut self, source: &str, token: &str) {
        let mut as_is = vec![0u8];
        as_is.extend_from_slice(token.as_bytes());
        self.add("jwt", source, as_is);
        let Ok(jws) = mongo_oidc_proxy::auth::jwt::split(token, usize::MAX) else {
            return;
        };
        let (Ok(header), Ok(claims)) = (jws.decode_header(), jws.decode_payload()) else {
            return;
        };
        let mut signed = vec![1u8 | (3 << 2)];
        signed.extend_from_slice(&header);
        signed.push(0xff);
        signed.extend_from_slice(&claims);
        self.add("jwt", source, signed);
        let mut claims_only = vec![2u8 | (1 << 2)];
        claims_only.extend_from_slice(&claims);
        self.add("jwt", source, claims_only);
    }

    fn write(&self, dir: &Path) {
        for (target, seeds) in &self.0 {
            let folder = dir.join(target);
            std::fs::create_dir_all(&folder).expect("seed folder");
            let existing: Vec<Vec<u8>> = std::fs::read_dir(&folder)
                .expect("read seed folder")
                .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect();
            let mut written = 0;
            for (source, bytes) in seeds {
                if existing.contains(bytes) {
                    continue;
                }
                let hash = hex(&Sha256::digest(bytes)[..6]);
                std::fs::write(folder.join(format!("{source}-{hash}")), bytes).expect("write seed");
                written += 1;
            }
            println!("{target}: {written} new of {} captured", seeds.len());
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The command name (or opcode) of a message, for [`PER_KIND`].
fn message_kind(m: &[u8]) -> String {
    match Request::decode(m) {
        Ok(req) => match req.command {
            Some(c) => format!("{:?}/{}", req.op, c.name),
            None => format!("{:?}", req.op),
        },
        Err(e) => format!("malformed/{}", e.error.kind()),
    }
}

fn host_port(uri: &str) -> SocketAddr {
    let rest = uri.strip_prefix("mongodb://").expect("a mongodb:// URI");
    let host = rest.split(['/', '?']).next().expect("host");
    let host = host.replace("localhost", "127.0.0.1");
    host.parse().expect("host:port")
}

async fn rust_driver(uri: String, token: Option<String>) -> Result<(), mongodb::error::Error> {
    use mongodb::bson::{doc, Document};
    use mongodb::options::{oidc as moidc, AuthMechanism, ClientOptions, Tls, TlsOptions};
    let mut opts = ClientOptions::parse(uri).await?;
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    if let Some(token) = token {
        opts.tls = Some(Tls::Enabled(
            TlsOptions::builder()
                .ca_file_path(proxy_env::shared_files().join("ca.pem"))
                .build(),
        ));
        let mut cred = opts.credential.take().unwrap_or_default();
        cred.mechanism = Some(AuthMechanism::MongoDbOidc);
        cred.oidc_callback = moidc::Callback::machine(move |_| {
            let jwt = token.clone();
            async move {
                Ok(moidc::IdpServerResponse::builder()
                    .access_token(jwt)
                    .build())
            }
            .boxed()
        });
        opts.credential = Some(cred);
    }
    let client = mongodb::Client::with_options(opts)?;
    let coll = client
        .database("app")
        .collection::<Document>("capture_rust");
    coll.insert_many((0..9).map(|i| doc! { "i": i })).await?;
    let found: Vec<Document> = coll
        .find(doc! {})
        .batch_size(2)
        .await?
        .try_collect()
        .await?;
    assert!(found.len() >= 9);
    coll.update_one(doc! { "i": 1 }, doc! { "$set": { "j": 2 } })
        .await?;
    coll.delete_many(doc! { "i": { "$gt": 5 } }).await?;
    let mut cursor = coll.find(doc! {}).batch_size(1).await?;
    let _ = cursor.try_next().await?;
    drop(cursor);
    client
        .database("admin")
        .run_command(doc! { "connectionStatus": 1 })
        .await?;
    client.shutdown().await;
    Ok(())
}

/// Waits until the tee's connections have gone quiet.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Messages the clients above do not send, built with the tests' helpers.
fn helper_messages(token: &str) -> Vec<Vec<u8>> {
    let msg = |doc: RawDocumentBuf| wire::op_msg::encode(1, 0, 0, &doc);
    let b64 = |doc: &RawDocumentBuf| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(doc.as_bytes())
    };
    let jwt = rawdoc! { "jwt": token };
    let hint = rawdoc! { "n": "alice@example.com" };
    let spec = rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": binary(&jwt), "db": "$external" };
    vec![
        msg(sasl_start(&hint)),
        msg(sasl_start(&rawdoc! {})),
        msg(sasl_continue(&jwt)),
        msg(
            rawdoc! { "saslStart": 1, "mechanism": "MONGODB-OIDC", "payload": b64(&jwt), "$db": "$external" },
        ),
        msg(
            rawdoc! { "saslContinue": 1, "conversationId": 1, "payload": b64(&jwt), "$db": "$external" },
        ),
        msg(
            rawdoc! { "hello": 1, "helloOk": true, "speculativeAuthenticate": spec.clone(), "$db": "admin" },
        ),
        wire::op_query::encode_query(
            1,
            "admin.$cmd",
            &rawdoc! { "isMaster": 1, "helloOk": true, "speculativeAuthenticate": spec },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "captures fuzz seeds; run by hand, see the file's docs"]
async fn capture_client_traffic_as_fuzz_seeds() {
    let dir = std::env::var_os("MOP_CAPTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds"));
    let mut seeds = Seeds::default();
    let scripts = clients_dir();
    let (user, password) = proxy_env::WRITER;
    let scram = format!("{user}:{password}");

    // SCRAM clients straight to SecantusDB, through a plaintext tee.
    let backend = tee(host_port(proxy_env::backend_uri()), false).await;
    let uri = format!("mongodb://localhost:{}/", backend.addr.port());
    run_python(
        &scripts.join("pymongo_client.py"),
        &["crud", &uri, "--scram", &scram],
        &[],
    )
    .await
    .expect_ok();
    settle().await;
    seeds.connections("pymongo-scram", &backend.take());
    run_node(
        &scripts.join("node_client.js"),
        &["crud", &uri, "--scram", &scram],
        &[],
    )
    .await
    .expect_ok();
    settle().await;
    seeds.connections("node-scram", &backend.take());
    let sh_uri = format!(
        "mongodb://{user}:{password}@localhost:{}/app?authSource=admin",
        backend.addr.port()
    );
    let js = "db.capture_sh.insertMany([{a: 1}, {a: 2}, {a: 3}]); \
              db.capture_sh.find().batchSize(1).toArray(); \
              db.capture_sh.aggregate([{$group: {_id: null, n: {$sum: 1}}}]).toArray(); \
              db.capture_sh.updateOne({a: 1}, {$set: {b: 1}}); db.capture_sh.deleteMany({a: {$gt: 1}}); \
              print(JSON.stringify(db.runCommand({connectionStatus: 1})))";
    run_mongosh(&[&sh_uri, "--quiet", "--eval", js], &[])
        .await
        .expect_ok();
    settle().await;
    seeds.connections("mongosh-scram", &backend.take());
    let rust_uri = format!(
        "mongodb://{user}:{password}@localhost:{}/?authSource=admin&directConnection=true",
        backend.addr.port()
    );
    rust_driver(rust_uri, None)
        .await
        .expect("Rust driver with SCRAM");
    settle().await;
    seeds.connections("rust-scram", &backend.take());

    // MONGODB-OIDC clients through a TLS-terminating tee in front of the proxy.
    let env = ProxyEnv::start().await;
    let proxy = tee(env.addr(), true).await;
    let uri = format!("mongodb://localhost:{}/", proxy.addr.port());
    let ca = env.ca().display().to_string();
    let token = env.token("alice@example.com", &["writers"], 3600);
    run_python(
        &scripts.join("pymongo_client.py"),
        &["crud", &uri, "--ca", &ca, "--token", &token],
        &[],
    )
    .await
    .expect_ok();
    settle().await;
    seeds.connections("pymongo-oidc", &proxy.take());
    let token = env.token("nora", &["writers"], 3600);
    run_node(
        &scripts.join("node_client.js"),
        &["crud", &uri, "--ca", &ca, "--token", &token],
        &[],
    )
    .await
    .expect_ok();
    settle().await;
    seeds.connections("node-oidc", &proxy.take());
    let token = env.token("rusty", &["writers"], 3600);
    rust_driver(
        format!(
            "mongodb://localhost:{}/?authMechanism=MONGODB-OIDC",
            proxy.addr.port()
        ),
        Some(token.clone()),
    )
    .await
    .expect("Rust driver with MONGODB-OIDC");
    settle().await;
    seeds.connections("rust-oidc", &proxy.take());
    let jwks = env.idp.jwks().to_string();
    seeds.add("jwks", "devidp", jwks.into_bytes());
    let mut config = vec![0u8];
    config.extend_from_slice(env.config_text.as_bytes());
    seeds.add("config", "tests", config);
    let helpers = helper_messages(&token);
    seeds.connections("helpers", std::slice::from_ref(&helpers));
    for m in &helpers {
        seeds.message("helpers", m);
    }
    env.stop().await;

    // mongosh's device flow (human, two steps) against the mock IdP.
    let mock = MockIdp::start(
        serde_json::json!({ "sub": "mia", "groups": ["mockers"], "aud": "resource-server-audience-value" }),
        3600,
    )
    .await;
    let extra = format!(
        "[[identity_provider]]\nissuer = {issuer:?}\naudience = \"resource-server-audience-value\"\nauth_name_prefix = \"mock\"\n\
         client_id = \"mongosh-test\"\nrequest_scopes = [\"mongodb-api\"]\njwks_min_quiesce_secs = 0\n\n\
         [[grant]]\nrole = \"mock/mockers\"\nbackend_user = \"app_rw\"\nbackend_password_file = {pw:?}\n",
        issuer = mock.issuer(),
        pw = proxy_env::shared_files().join("rw.password").display().to_string(),
    );
    let env = ProxyEnv::start_custom("supports_human_flows = false", &extra).await;
    let proxy = tee(env.addr(), true).await;
    let sh_uri = format!(
        "mongodb://localhost:{}/app?authMechanism=MONGODB-OIDC&tls=true&tlsCAFile={}",
        proxy.addr.port(),
        env.ca().display()
    );
    let js = "db.capture_sh.insertOne({ok: true}); print(JSON.stringify(db.runCommand({connectionStatus: 1})))";
    run_mongosh(
        &[&sh_uri, "--oidcFlows=device-auth", "--quiet", "--eval", js],
        &[],
    )
    .await
    .expect_ok();
    settle().await;
    seeds.connections("mongosh-oidc", &proxy.take());
    seeds.add(
        "jwks",
        "oidc-mock-provider",
        mock.get_json("/jwks").await.to_string().into_bytes(),
    );
    let mut config = vec![0u8];
    config.extend_from_slice(env.config_text.as_bytes());
    seeds.add("config", "tests", config);
    env.stop().await;

    let example = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"))
        .expect("config.example.toml");
    seeds.add("config", "example", [&[0u8][..], &example].concat());
    seeds.write(&dir);
}
