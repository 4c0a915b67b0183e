//! The backend connection pool (`[backend.pool]`) against a real
//! SecantusDB, with real clients:
//!
//! - 1,000 signed-in clients of one grant run finds while the backend never
//!   sees more than `max_size` connections from the proxy;
//! - pymongo's `with_transaction` and the Node driver's `withTransaction`
//!   through a pool of two while other clients keep it busy;
//! - a client killed (SIGKILL) in the middle of a transaction: the proxy
//!   aborts it, so another client's transaction can update the document;
//! - cursors and logical sessions belong to the principal that opened them;
//!   the proxy kills a cursor when the last connection that used it closes;
//! - exhaust cursors and slow (tailable, awaitData) getMores through a pool
//!   of two: nothing deadlocks;
//! - the backend stopped and started again: requests fail within the
//!   checkout timeout with 6 or 89 (retryable writes labelled), and work
//!   again without a proxy restart;
//! - `max_waiters`, the checkout timeout, the idle timeout and the pool's
//!   metrics.
//!
//! Most tests share one SecantusDB (started once per binary, with a `root`
//! user for `serverStatus` and `currentOp`); the connection-count test and
//! the outage test each have one of their own, as they count every
//! connection or stop the server.

// Test code may panic: that is how it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bson::{rawdoc, RawBsonRef, RawDocumentBuf};
use mongo_oidc_proxy_devkit::demo::secantus::BackendUser;
use serde_json::Value;
use support::proxy_env::{self, dev_idp_options, ProxyEnv, READER, WRITER};
use support::wire_client::{is_ok, WireClient};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A backend user with SecantusDB's `root` role: `serverStatus` and
/// `currentOp` need cluster privileges. The proxy never uses it.
const OPS: (&str, &str) = ("pool_ops", "pool-ops-password");

/// The proxy's own backend connections outside the pool: the readiness
/// probe opens a fresh unauthenticated connection every 2 s (one at a time,
/// closed at once, but SecantusDB may count it a moment longer) and the
/// discovery at start-up another one. Both are short-lived; two covers a
/// probe that overlaps one SecantusDB has not reaped yet.
const PROXY_OWN_CONNECTIONS: i64 = 2;

fn users() -> Vec<BackendUser> {
    vec![
        BackendUser::new(WRITER.0, WRITER.1, &[("readWrite", "app")]),
        BackendUser::new(READER.0, READER.1, &[("read", "app")]),
        BackendUser::new(OPS.0, OPS.1, &[("root", "admin")]),
    ]
}

/// The SecantusDB shared by this binary's tests (with [`OPS`]).
fn shared_backend() -> &'static str {
    static URI: OnceLock<String> = OnceLock::new();
    URI.get_or_init(|| proxy_env::backend_for_binary(users()))
}

/// Tests that open cursors on the shared backend hold it shared; the cursor
/// test, which counts every open cursor of the server, holds it alone.
static BACKEND_CURSORS: LazyLock<tokio::sync::RwLock<()>> =
    LazyLock::new(|| tokio::sync::RwLock::new(()));

/// A proxy in front of `backend` with `extra` TOML (its `[backend.pool]`).
async fn proxy(backend: &str, extra: &str) -> ProxyEnv {
    ProxyEnv::launch(dev_idp_options(), |issuer| {
        proxy_env::config_for(issuer, backend, "", "", extra)
    })
    .await
}

/// `[metrics]` on a free port.
const METRICS: &str = "[metrics]\naddress = \"127.0.0.1:0\"\n";

/// A collection name no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

// ---------------------------------------------------------------------------
// The backend seen by an administrator (Rust driver, root user)
// ---------------------------------------------------------------------------

/// One root connection to the backend through the Rust driver: a poll-mode
/// monitor and at most one pooled connection, so its own share of
/// `connections.current` is fixed (and measured as the baseline).
struct Monitor {
    client: mongodb::Client,
}

impl Monitor {
    async fn connect(backend_uri: &str) -> Monitor {
        use mongodb::options::{AuthMechanism, ClientOptions, Credential, ServerMonitoringMode};
        let mut opts = ClientOptions::parse(backend_uri)
            .await
            .expect("backend uri");
        opts.direct_connection = Some(true);
        opts.max_pool_size = Some(1);
        opts.min_pool_size = Some(0);
        opts.server_monitoring_mode = Some(ServerMonitoringMode::Poll);
        opts.server_selection_timeout = Some(Duration::from_secs(10));
        opts.credential = Some(
            Credential::builder()
                .username(OPS.0.to_string())
                .password(OPS.1.to_string())
                .source("admin".to_string())
                .mechanism(AuthMechanism::ScramSha256)
                .build(),
        );
        let client = mongodb::Client::with_options(opts).expect("monitor client");
        let m = Monitor { client };
        m.command(mongodb::bson::doc! { "ping": 1 }).await;
        m
    }

    async fn command(&self, cmd: mongodb::bson::Document) -> mongodb::bson::Document {
        self.client
            .database("admin")
            .run_command(cmd.clone())
            .await
            .unwrap_or_else(|e| panic!("{cmd} as {} on the backend: {e}", OPS.0))
    }

    async fn server_status(&self) -> mongodb::bson::Document {
        self.command(mongodb::bson::doc! { "serverStatus": 1 })
            .await
    }

    /// `serverStatus.connections.current`: every connection, this one included.
    async fn connections(&self) -> i64 {
        let s = self.server_status().await;
        number(
            s.get_document("connections")
                .expect("connections")
                .get("current"),
        )
    }

    /// `serverStatus.metrics.cursor.open.total`.
    async fn open_cursors(&self) -> i64 {
        let s = self.server_status().await;
        let open = s
            .get_document("metrics")
            .and_then(|m| m.get_document("cursor"))
            .and_then(|c| c.get_document("open"))
            .unwrap_or_else(|e| panic!("serverStatus has no metrics.cursor.open: {e}: {s}"));
        number(open.get("total"))
    }

    /// The ids of the idle cursors `currentOp` lists.
    async fn idle_cursors(&self) -> Vec<i64> {
        let r = self.command(mongodb::bson::doc! { "currentOp": 1 }).await;
        r.get_array("inprog")
            .expect("inprog")
            .iter()
            .filter_map(|op| op.as_document())
            .filter(|op| op.get_str("type").ok() == Some("idleCursor"))
            .map(|op| number(op.get("cursorId")))
            .collect()
    }
}

fn number(v: Option<&mongodb::bson::Bson>) -> i64 {
    use mongodb::bson::Bson;
    match v {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(f)) => *f as i64,
        other => panic!("not a number: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Raw wire helpers
// ---------------------------------------------------------------------------

/// A connection signed in as `test/<sub>`, a writer.
async fn signed_in(env: &ProxyEnv, sub: &str) -> WireClient {
    let mut c = env.client().await;
    let reply = c.sign_in(&env.token(sub, &["writers"], 600)).await;
    assert_eq!(
        reply.get_bool("done").ok(),
        Some(true),
        "sign-in of {sub}: {reply}",
        reply = reply.show()
    );
    c
}

/// Replies in failure messages as documents, not hex.
trait Show {
    fn show(&self) -> String;
}

impl Show for bson::RawDocument {
    fn show(&self) -> String {
        match bson::Document::try_from(self) {
            Ok(d) => d.to_string(),
            Err(_) => format!("{self:?}"),
        }
    }
}

impl Show for RawDocumentBuf {
    fn show(&self) -> String {
        self.as_ref().show()
    }
}

impl<T: Show> Show for Option<T> {
    fn show(&self) -> String {
        match self {
            Some(r) => r.show(),
            None => "no reply: the proxy closed the connection".into(),
        }
    }
}

impl Show for (Option<RawDocumentBuf>, Duration) {
    fn show(&self) -> String {
        format!("after {:?}: {}", self.1, self.0.show())
    }
}

impl<T: Show + ?Sized> Show for &T {
    fn show(&self) -> String {
        (**self).show()
    }
}

impl<T: Show> Show for Vec<T> {
    fn show(&self) -> String {
        let items: Vec<String> = self.iter().map(Show::show).collect();
        format!("[{}]", items.join(", "))
    }
}

/// An integer field of a reply, whatever its BSON type.
fn int(reply: &RawDocumentBuf, key: &str) -> Option<i64> {
    match reply.get(key) {
        Ok(Some(RawBsonRef::Int32(n))) => Some(i64::from(n)),
        Ok(Some(RawBsonRef::Int64(n))) => Some(n),
        Ok(Some(RawBsonRef::Double(f))) => Some(f as i64),
        _ => None,
    }
}

/// The `code` of an error reply.
fn code(reply: &RawDocumentBuf) -> Option<i32> {
    reply.get_i32("code").ok()
}

fn labels(reply: &RawDocumentBuf) -> Vec<String> {
    reply
        .get_array("errorLabels")
        .map(|a| {
            a.into_iter()
                .filter_map(|v| v.ok().and_then(|v| v.as_str().map(str::to_string)))
                .collect()
        })
        .unwrap_or_default()
}

/// A new logical session id, as drivers make them (UUID, subtype 4).
fn lsid() -> RawDocumentBuf {
    rawdoc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: rand::random::<[u8; 16]>().to_vec() } }
}

fn cursor_id(reply: &RawDocumentBuf) -> i64 {
    reply
        .get_document("cursor")
        .and_then(|c| c.get_i64("id"))
        .unwrap_or_else(|e| panic!("no cursor id ({e}) in {reply}", reply = reply.show()))
}

/// The `i` fields of a reply's `firstBatch` or `nextBatch`.
fn batch(reply: &RawDocumentBuf) -> Vec<i32> {
    let cursor = reply
        .get_document("cursor")
        .unwrap_or_else(|e| panic!("no cursor ({e}) in {reply}", reply = reply.show()));
    let docs = cursor
        .get_array("firstBatch")
        .or_else(|_| cursor.get_array("nextBatch"))
        .unwrap_or_else(|e| panic!("no batch ({e}) in {reply}", reply = reply.show()));
    docs.into_iter()
        .map(|d| {
            let d = d.expect("batch element");
            let d = d.as_document().expect("a document");
            match d.get("i") {
                Ok(Some(RawBsonRef::Int32(i))) => i,
                Ok(Some(RawBsonRef::Int64(i))) => i as i32,
                other => panic!("no i in {d}: {other:?}", d = d.show()),
            }
        })
        .collect()
}

fn find_sorted(coll: &str, batch_size: i32) -> RawDocumentBuf {
    rawdoc! { "find": coll, "filter": {}, "sort": { "i": 1 }, "projection": { "_id": 0, "i": 1 }, "batchSize": batch_size, "$db": "app" }
}

fn get_more(coll: &str, id: i64, batch_size: i32) -> RawDocumentBuf {
    rawdoc! { "getMore": id, "collection": coll, "batchSize": batch_size, "$db": "app" }
}

fn kill_cursors(coll: &str, id: i64) -> RawDocumentBuf {
    rawdoc! { "killCursors": coll, "cursors": [id], "$db": "app" }
}

/// Inserts documents `{i: 0..n}` into `coll`.
async fn fill(c: &mut WireClient, coll: &str, n: i32) {
    let mut docs = bson::RawArrayBuf::new();
    for i in 0..n {
        docs.push(rawdoc! { "i": i });
    }
    let reply = c
        .command(rawdoc! { "insert": coll, "documents": docs, "$db": "app" })
        .await;
    assert!(
        is_ok(&reply),
        "insert into {coll}: {reply}",
        reply = reply.show()
    );
}

/// A panic inside a spawned task, as text.
fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

async fn scrape(env: &ProxyEnv) -> String {
    let addr = env.running().metrics_addr.expect("[metrics] configured");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    http.get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of one exact series (`name` or `name{labels}`), if present.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The sum of every series of `name` (any labels).
fn sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = if rest.starts_with('{') {
                &rest[rest.find('}')? + 1..]
            } else {
                rest
            };
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .sum()
}

const POOL_CONNECTIONS: &str = "mongo_oidc_proxy_backend_pool_connections";

/// Backend connections the pool holds (idle and in use), from `/metrics`;
/// `None` without both `state` series.
fn pool_size(metrics: &str) -> Option<f64> {
    let has = |state: &str| {
        metrics.lines().any(|l| {
            l.starts_with(&format!("{POOL_CONNECTIONS}{{"))
                && l.contains(&format!("state=\"{state}\""))
        })
    };
    (has("idle") && has("in_use")).then(|| sum(metrics, POOL_CONNECTIONS))
}

/// The pool's lines of a scrape, for failure messages.
fn pool_lines(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.contains("_pool_") || l.contains("_tracked"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Scrapes `/metrics` every 100 ms until finished; keeps the largest pool
/// size seen (`None` when the pool's series were missing).
struct PoolSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Option<f64>, usize)>,
}

impl PoolSampler {
    fn start(env: &ProxyEnv) -> PoolSampler {
        let addr = env.running().metrics_addr.expect("[metrics] configured");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let (mut max, mut n) = (Some(0.0f64), 0usize);
            while !flag.load(Ordering::Relaxed) {
                if let Ok(r) = http.get(format!("http://{addr}/metrics")).send().await {
                    if let Ok(text) = r.text().await {
                        max = match (max, pool_size(&text)) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            _ => None,
                        };
                        n += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (max, n)
        });
        PoolSampler { stop, task }
    }

    /// Asserts the pool never held more than `max_size` connections.
    async fn finish(self, max_size: f64) {
        self.stop.store(true, Ordering::Relaxed);
        let (max, samples) = self
            .task
            .await
            .unwrap_or_else(|e| panic!("{}", panic_text(e)));
        println!("pool: at most {max:?} backend connections over {samples} samples");
        assert!(samples > 0, "/metrics was never scraped");
        let max = max.unwrap_or_else(|| {
            panic!("/metrics has no {POOL_CONNECTIONS}{{state=\"idle\"|\"in_use\"}}")
        });
        assert!(
            max <= max_size,
            "the pool held {max} backend connections with max_size = {max_size}"
        );
    }
}

// ---------------------------------------------------------------------------
// A client script that talks line by line and can be killed
// ---------------------------------------------------------------------------

struct Script {
    what: String,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: Arc<Mutex<String>>,
}

impl Script {
    fn python(script: &str, args: &[&str]) -> Script {
        let python = support::tools_dir().join("venv/bin/python");
        let path: PathBuf = support::clients_dir().join(script);
        let mut child = tokio::process::Command::new(&python)
            .arg(&path)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut s = String::new();
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        *sink.lock().unwrap() = s.clone();
                    }
                }
            }
        });
        Script {
            what: format!("{script} {}", args.first().copied().unwrap_or_default()),
            stdin: child.stdin.take(),
            lines: BufReader::new(child.stdout.take().expect("stdout")).lines(),
            child,
            stderr,
        }
    }

    /// The next line the script prints; panics (with its stderr) when it
    /// exits or says nothing within a minute.
    async fn line(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(60), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "{} ended without the expected line; stderr:\n{}",
                    self.what,
                    self.stderr.lock().unwrap()
                )
            }
            Err(_) => panic!(
                "{} printed nothing for 60 s; stderr:\n{}",
                self.what,
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// The next line, as JSON without an `error` field.
    async fn json(&mut self) -> Value {
        let line = self.line().await;
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.what));
        assert!(v.get("error").is_none(), "{} failed: {v}", self.what);
        v
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the script");
        stdin.flush().await.expect("flush");
    }

    /// SIGKILL: the client gets no chance to end anything.
    async fn kill9(&mut self) {
        self.child.kill().await.expect("kill -9 the script");
    }
}

/// `URI --ca CA --token JWT` for the client scripts.
fn script_args(env: &ProxyEnv, token: &str) -> Vec<String> {
    vec![
        env.plain_uri(),
        "--ca".into(),
        env.ca().display().to_string(),
        "--token".into(),
        token.to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------
// 1. A thousand clients, max_size backend connections
// ---------------------------------------------------------------------------

/// 1,000 signed-in clients of one grant each run two finds, all at once,
/// through a pool of 20: every find succeeds, and the backend never counts
/// more than 20 connections from the proxy. Without a pool each client held
/// its own backend connection (and SecantusDB's 1,000-connection cap would
/// not even let them all in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_of_one_grant_use_at_most_max_size_backend_connections() {
    const CLIENTS: usize = 1000;
    const MAX_SIZE: i64 = 20;
    const SUBJECTS: usize = 10;
    const SIGN_IN_AT_ONCE: usize = 100;

    let db = support::start_secantus(users()).await;
    let monitor = Arc::new(Monitor::connect(&db.uri).await);
    // The monitor's own connections (its poll-mode monitor and one pooled
    // connection): everything else the backend counts is the proxy's.
    let baseline = monitor.connections().await;
    let bound = baseline + MAX_SIZE + PROXY_OWN_CONNECTIONS;

    let env = ProxyEnv::launch(dev_idp_options(), |issuer| {
        proxy_env::config_for(
            issuer,
            &db.uri,
            "",
            // All the clients come from 127.0.0.1 (1,000 is the default cap).
            "max_connections_per_ip = 1100\n",
            // Every request may wait: 1,000 at once queue for 20 connections.
            &format!(
                "[backend.pool]\nmax_size = {MAX_SIZE}\nmax_waiters = 2000\ncheckout_timeout_ms = 60000\n"
            ),
        )
    })
    .await;
    let env = Arc::new(env);

    let coll = "many_clients";
    let mut seed = signed_in(&env, "seed").await;
    let reply = seed
        .command(rawdoc! { "insert": coll, "documents": [{ "_id": 1, "i": 1 }], "$db": "app" })
        .await;
    assert!(is_ok(&reply), "{reply}", reply = reply.show());
    seed.close().await;

    // Samples the backend's connection count until the end.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (monitor, sampling) = (monitor.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                samples.push(monitor.connections().await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };

    let started = Instant::now();
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..SUBJECTS)
            .map(|i| env.token(&format!("user{i}"), &["writers"], 600))
            .collect(),
    );
    let mut failures: Vec<String> = Vec::new();
    let mut clients: Vec<WireClient> = Vec::with_capacity(CLIENTS);
    let gate = Arc::new(tokio::sync::Semaphore::new(SIGN_IN_AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..CLIENTS {
        let (env, tokens, gate) = (env.clone(), tokens.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let mut c = WireClient::try_connect(env.addr(), &env.ca())
                .await
                .map_err(|e| format!("client {n}: {e}"))?;
            let reply = c.sign_in(&tokens[n % SUBJECTS]).await;
            if reply.get_bool("done").ok() != Some(true) {
                return Err(format!(
                    "client {n}: sign-in: {reply}",
                    reply = reply.show()
                ));
            }
            Ok(c)
        });
    }
    while let Some(r) = tasks.join_next().await {
        match r.map_err(panic_text) {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(e)) | Err(e) => failures.push(e),
        }
    }
    let signed_in_after = started.elapsed();

    let find = rawdoc! { "find": coll, "filter": {}, "$db": "app" };
    for round in 0..2 {
        let mut tasks = tokio::task::JoinSet::new();
        for (n, mut c) in clients.drain(..).enumerate() {
            let find = find.clone();
            tasks.spawn(async move {
                let reply = c.command(find).await;
                if is_ok(&reply) && batch(&reply) == [1] {
                    Ok(c)
                } else {
                    Err(format!(
                        "round {round}, client {n}: {reply}",
                        reply = reply.show()
                    ))
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            match r.map_err(panic_text) {
                Ok(Ok(c)) => clients.push(c),
                Ok(Err(e)) | Err(e) => failures.push(e),
            }
        }
    }
    let finds_after = started.elapsed();
    // A few samples after the traffic, with every client still connected.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler
        .await
        .unwrap_or_else(|e| panic!("{}", panic_text(e)));
    let after = monitor.connections().await;
    let max = samples.iter().copied().max().unwrap_or(0).max(after);
    eprintln!(
        "{} clients signed in after {signed_in_after:?}, finds done after {finds_after:?}; \
         backend connections: baseline {baseline}, max {max} over {} samples, {after} after",
        clients.len(),
        samples.len()
    );
    assert!(
        samples.len() >= 3,
        "the backend was sampled only {} times",
        samples.len()
    );
    assert!(
        max <= bound,
        "the backend counted up to {max} connections (after: {after}); the pool allows \
         max_size {MAX_SIZE} + the monitor's {baseline} + {PROXY_OWN_CONNECTIONS} of the proxy's \
         own probes = {bound}; {} of {CLIENTS} clients were served, first failures: {:?}",
        clients.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(clients.len(), CLIENTS);
    assert!(
        max > baseline,
        "the proxy used no backend connection at all?"
    );

    for c in clients {
        c.close().await;
    }
    Arc::try_unwrap(env)
        .unwrap_or_else(|_| panic!("the proxy env is still shared"))
        .stop()
        .await;
    db.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. Driver transactions through a pool of two
// ---------------------------------------------------------------------------

fn assert_transactions(who: &str, v: &Value, txns: u64, busy: usize) {
    assert_eq!(v["committed"], txns, "{who}: {v}");
    assert_eq!(
        v["docs"],
        2 * txns,
        "{who}: every committed insert is there: {v}"
    );
    assert_eq!(
        v["counter"], txns,
        "{who}: every committed update is there: {v}"
    );
    assert_eq!(
        v["read_own_writes"], txns,
        "{who}: reads inside the transaction see its writes: {v}"
    );
    assert_eq!(
        v["aborted_visible"], false,
        "{who}: the aborted insert is gone: {v}"
    );
    assert_eq!(v["busy_errors"], serde_json::json!([]), "{who}: {v}");
    let finds = v["busy_finds"].as_array().expect("busy_finds");
    assert_eq!(finds.len(), busy, "{who}: {v}");
    assert!(
        finds.iter().all(|n| n.as_u64().unwrap_or(0) > 0),
        "{who}: every busy client ran finds during the transactions: {v}"
    );
}

/// pymongo's `with_transaction` and the Node driver's `withTransaction`,
/// at the same time, through `max_size = 2` while four more clients of each
/// run finds in a loop: every transaction commits (its documents and its
/// counter update are there), reads see their own writes, an aborted one
/// leaves nothing, and the pool never holds more than two connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_transactions_commit_through_a_pool_of_two_while_others_are_busy() {
    let _shared = BACKEND_CURSORS.read().await;
    let env = proxy(
        shared_backend(),
        &format!("[backend.pool]\nmax_size = 2\n\n{METRICS}"),
    )
    .await;
    let sampler = PoolSampler::start(&env);
    let txns = 5u64;

    let py_coll = unique("pool_txn_py");
    let mut py_args = script_args(&env, &env.token("alice", &["writers"], 600));
    py_args.extend([
        "--coll".into(),
        py_coll,
        "--txns".into(),
        txns.to_string(),
        "--busy".into(),
        "4".into(),
    ]);
    let js_coll = unique("pool_txn_js");
    let mut js_args = script_args(&env, &env.token("nora", &["writers"], 600));
    js_args.extend([
        "--coll".into(),
        js_coll,
        "--txns".into(),
        txns.to_string(),
        "--busy".into(),
        "4".into(),
    ]);
    let (py_script, js_script) = (
        support::clients_dir().join("pool_txn.py"),
        support::clients_dir().join("pool_txn.js"),
    );
    let (py_args, js_args) = (strs(&py_args), strs(&js_args));
    let (py, js) = tokio::join!(
        support::run_python(&py_script, &py_args, &[]),
        support::run_node(&js_script, &js_args, &[]),
    );

    let py = py.expect_ok();
    let js = js.expect_ok();
    println!("pymongo: {py}\nnode: {js}");
    assert_transactions("pymongo", &py, txns, 4);
    assert_transactions("node", &js, txns, 4);
    sampler.finish(2.0).await;
    env.stop().await;
}

// ---------------------------------------------------------------------------
// 3. A client killed in the middle of a transaction
// ---------------------------------------------------------------------------

/// One attempt at a transaction updating `{_id: id}`: `Ok` once committed,
/// `Err(reply)` with the refusal (the attempt is then aborted).
async fn try_transaction(
    c: &mut WireClient,
    coll: &str,
    id: &str,
    session: &RawDocumentBuf,
    txn: i64,
) -> Result<(), RawDocumentBuf> {
    let update = rawdoc! {
        "update": coll,
        "updates": [{ "q": { "_id": id }, "u": { "$set": { "holder": "bob" } } }],
        "lsid": session.clone(),
        "txnNumber": txn,
        "startTransaction": true,
        "autocommit": false,
        "$db": "app",
    };
    let reply = c.command(update).await;
    let end = |verb: &str| {
        let key: &bson::raw::CStr = verb.try_into().unwrap();
        let mut cmd = RawDocumentBuf::new();
        cmd.append(key, 1);
        cmd.append(bson::raw::cstr!("lsid"), session.clone());
        cmd.append(bson::raw::cstr!("txnNumber"), txn);
        cmd.append(bson::raw::cstr!("autocommit"), false);
        cmd.append(bson::raw::cstr!("$db"), "admin");
        cmd
    };
    if !is_ok(&reply) || int(&reply, "n") != Some(1) {
        let _ = c.command(end("abortTransaction")).await;
        return Err(reply);
    }
    let commit = c.command(end("commitTransaction")).await;
    if is_ok(&commit) {
        Ok(())
    } else {
        Err(commit)
    }
}

/// pymongo updates a document inside a transaction and is killed with
/// SIGKILL before it commits: within 5 s the proxy aborts the abandoned
/// transaction, so another client's transaction on the same document
/// commits (SecantusDB alone would answer WriteConflict for over a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_by_a_killed_client_is_aborted() {
    let _shared = BACKEND_CURSORS.read().await;
    let env = proxy(shared_backend(), "[backend.pool]\nmax_size = 2\n").await;
    let coll = unique("pool_abandoned");
    let mut bob = signed_in(&env, "bob").await;
    let reply = bob
        .command(rawdoc! { "insert": coll.as_str(), "documents": [{ "_id": "doc", "holder": "nobody" }], "$db": "app" })
        .await;
    assert!(is_ok(&reply), "{reply}", reply = reply.show());

    let mut args = script_args(&env, &env.token("alice", &["writers"], 600));
    args.extend(["--coll".into(), coll.clone(), "--id".into(), "doc".into()]);
    let mut victim = Script::python("pool_hold.py", &strs(&args));
    assert_eq!(victim.line().await, "ready");

    // The open transaction holds the document: the test would prove nothing otherwise.
    let session = lsid();
    let mut txn = 1i64;
    let refused = try_transaction(&mut bob, &coll, "doc", &session, txn)
        .await
        .expect_err("the victim's open transaction must hold the document");
    assert_eq!(
        code(&refused),
        Some(112),
        "WriteConflict expected: {refused}",
        refused = refused.show()
    );

    victim.kill9().await;
    let killed = Instant::now();
    let last = loop {
        txn += 1;
        match try_transaction(&mut bob, &coll, "doc", &session, txn).await {
            Ok(()) => break None,
            Err(reply) if killed.elapsed() > Duration::from_secs(6) => break Some(reply),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if let Some(reply) = last {
        panic!(
            "6 s after the client was killed its transaction still holds the document; \
             the last attempt got {reply}",
            reply = reply.show()
        );
    }
    eprintln!(
        "the abandoned transaction was gone {:?} after the kill",
        killed.elapsed()
    );
    let reply = bob
        .command(rawdoc! { "find": coll.as_str(), "filter": { "_id": "doc" }, "$db": "app" })
        .await;
    let doc = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .ok()
        .and_then(|b| b.into_iter().next())
        .and_then(|d| d.ok())
        .and_then(|d| d.as_document().map(|d| d.to_owned()))
        .unwrap_or_else(|| panic!("the document is gone: {reply}", reply = reply.show()));
    assert_eq!(
        doc.get_str("holder").ok(),
        Some("bob"),
        "the victim's update was aborted: {doc}",
        doc = doc.show()
    );
    bob.close().await;
    env.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Cursors and sessions belong to their principal
// ---------------------------------------------------------------------------

/// Cursors belong to the principal that opened them (and are killed when
/// the last connection that used them closes); logical sessions too;
/// `endSessions` before sign-in never reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_and_sessions_belong_to_their_principal() {
    // Alone on the shared backend: this test counts all its open cursors.
    let _alone = BACKEND_CURSORS.write().await;
    let backend = shared_backend();
    let monitor = Monitor::connect(backend).await;
    let cursors_before = monitor.open_cursors().await;

    let env = proxy(backend, "[backend.pool]\nmax_size = 2\n").await;
    let coll = unique("pool_cursors");
    let mut alice = signed_in(&env, "alice").await;
    let mut alice2 = signed_in(&env, "alice").await;
    let mut bob = signed_in(&env, "bob").await;
    fill(&mut alice, &coll, 10).await;

    // pymongo (alice) opens a cursor and takes its first batch.
    let mut args = script_args(&env, &env.token("alice", &["writers"], 600));
    args.extend(["--coll".into(), coll.clone()]);
    let mut py = Script::python("pool_cursor.py", &strs(&args));
    let opened = py.json().await;
    assert_eq!(opened["first"], serde_json::json!([0, 1]), "{opened}");
    let py_cursor: i64 = opened["cursor_id"].as_str().unwrap().parse().unwrap();
    assert_ne!(py_cursor, 0, "{opened}");

    // Another connection of alice's continues it.
    let reply = alice2.command(get_more(&coll, py_cursor, 2)).await;
    assert!(
        is_ok(&reply),
        "alice's other connection may continue her cursor: {reply}",
        reply = reply.show()
    );
    assert_eq!(batch(&reply), [2, 3]);

    // bob (same grant, same backend user) may neither continue nor kill it,
    // and neither attempt reaches the backend.
    let reply = bob.command(get_more(&coll, py_cursor, 2)).await;
    assert_eq!(
        code(&reply),
        Some(43),
        "bob's getMore on alice's cursor: {reply}",
        reply = reply.show()
    );
    let reply = bob.command(kill_cursors(&coll, py_cursor)).await;
    assert_eq!(
        code(&reply),
        Some(43),
        "bob's killCursors on alice's cursor: {reply}",
        reply = reply.show()
    );

    // pymongo reads the rest: nothing was taken or killed by bob.
    py.send("continue").await;
    let rest = py.json().await;
    assert_eq!(
        rest["rest"],
        serde_json::json!([4, 5, 6, 7, 8, 9]),
        "{rest}"
    );

    // A cursor of the raw connections: opened on one, continued on the other.
    let reply = alice.command(find_sorted(&coll, 2)).await;
    assert_eq!(batch(&reply), [0, 1], "{reply}", reply = reply.show());
    let cursor = cursor_id(&reply);
    let reply = alice2.command(get_more(&coll, cursor, 2)).await;
    assert_eq!(batch(&reply), [2, 3], "{reply}", reply = reply.show());
    let reply = bob.command(get_more(&coll, cursor, 2)).await;
    assert_eq!(code(&reply), Some(43), "{reply}", reply = reply.show());
    let reply = alice.command(get_more(&coll, cursor, 2)).await;
    assert_eq!(
        batch(&reply),
        [4, 5],
        "alice's cursor still works after bob's attempt: {reply}",
        reply = reply.show()
    );

    // Logical sessions: bob may not use alice's.
    let session = lsid();
    let mut find = rawdoc! { "find": coll.as_str(), "filter": { "i": 0 }, "$db": "app" };
    find.append(bson::raw::cstr!("lsid"), session.clone());
    let reply = alice.command(find.clone()).await;
    assert!(is_ok(&reply), "{reply}", reply = reply.show());
    let mut insert =
        rawdoc! { "insert": coll.as_str(), "documents": [{ "i": 100, "by": "bob" }], "$db": "app" };
    insert.append(bson::raw::cstr!("lsid"), session.clone());
    let reply = bob.command(insert).await;
    assert_eq!(
        code(&reply),
        Some(13),
        "bob's command with alice's lsid: {reply}",
        reply = reply.show()
    );
    let reply = bob.command(find.clone()).await;
    assert_eq!(code(&reply), Some(13), "{reply}", reply = reply.show());
    let reply = alice.command(find).await;
    assert!(
        is_ok(&reply),
        "alice keeps her session: {reply}",
        reply = reply.show()
    );
    let reply = alice
        .command(rawdoc! { "count": coll.as_str(), "query": { "by": "bob" }, "$db": "app" })
        .await;
    assert_eq!(
        int(&reply, "n"),
        Some(0),
        "bob's refused insert reached the backend: {reply}",
        reply = reply.show()
    );

    // endSessions before sign-in is answered by the proxy: alice's
    // transaction in that session still commits.
    let txn_session = lsid();
    let mut insert = rawdoc! { "insert": coll.as_str(), "documents": [{ "_id": "in-txn", "i": 200 }], "txnNumber": 1i64, "startTransaction": true, "autocommit": false, "$db": "app" };
    insert.append(bson::raw::cstr!("lsid"), txn_session.clone());
    let reply = alice.command(insert).await;
    assert!(is_ok(&reply), "{reply}", reply = reply.show());
    let mut anonymous = env.client().await;
    let mut sessions = bson::RawArrayBuf::new();
    sessions.push(txn_session.clone());
    let reply = anonymous
        .command(rawdoc! { "endSessions": sessions, "$db": "admin" })
        .await;
    assert!(
        is_ok(&reply),
        "endSessions before sign-in: {reply}",
        reply = reply.show()
    );
    anonymous.close().await;
    let mut commit =
        rawdoc! { "commitTransaction": 1, "txnNumber": 1i64, "autocommit": false, "$db": "admin" };
    commit.append(bson::raw::cstr!("lsid"), txn_session);
    let reply = alice.command(commit).await;
    assert!(
        is_ok(&reply),
        "the anonymous endSessions ended alice's backend session: {reply}",
        reply = reply.show()
    );
    let reply = alice
        .command(rawdoc! { "count": coll.as_str(), "query": { "_id": "in-txn" }, "$db": "app" })
        .await;
    assert_eq!(int(&reply, "n"), Some(1), "{reply}", reply = reply.show());

    // pymongo opens one more cursor and is killed holding it; the raw
    // cursor stays open while one connection that used it is left.
    let held = py.json().await;
    let held_cursor: i64 = held["held_cursor_id"].as_str().unwrap().parse().unwrap();
    assert_ne!(held_cursor, 0, "{held}");
    let open = monitor.idle_cursors().await;
    assert!(
        open.contains(&cursor) && open.contains(&held_cursor),
        "{open:?}"
    );
    py.kill9().await;
    alice.close().await;
    // alice's other connection used the cursor too: it still works.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = alice2.command(get_more(&coll, cursor, 2)).await;
    assert_eq!(
        batch(&reply),
        [6, 7],
        "the cursor survives while a connection that used it is open: {reply}",
        reply = reply.show()
    );
    alice2.close().await;

    // With every connection that used them closed, the proxy kills both on
    // the backend (SecantusDB alone keeps them ten minutes).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = monitor.idle_cursors().await;
        let total = monitor.open_cursors().await;
        let left: Vec<i64> = [cursor, held_cursor]
            .into_iter()
            .filter(|c| open.contains(c))
            .collect();
        if left.is_empty() && total <= cursors_before {
            eprintln!("backend cursors back to {total} (before: {cursors_before})");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "5 s after alice's connections closed the backend still has cursors {left:?} open; \
             metrics.cursor.open.total = {total}, {cursors_before} before the test"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bob.close().await;
    env.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Exhaust cursors and slow operations through a pool of two
// ---------------------------------------------------------------------------

/// Four tailable awaitData cursors, each waiting for data twice (one
/// second per empty getMore, holding a backend connection) and two EXHAUST
/// cursors (a stream that keeps its connection until its last batch), six
/// pymongo clients at once through `max_size = 2`: all of them complete.
/// (SecantusDB run standalone has no change streams: `$changeStream` is
/// refused with 40573, so tailable cursors are the slow operations here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaust_cursors_and_slow_getmores_share_a_pool_of_two_without_deadlock() {
    let _shared = BACKEND_CURSORS.read().await;
    let env = proxy(
        shared_backend(),
        &format!("[backend.pool]\nmax_size = 2\ncheckout_timeout_ms = 30000\n\n{METRICS}"),
    )
    .await;
    let sampler = PoolSampler::start(&env);
    let mut args = script_args(&env, &env.token("alice", &["writers"], 600));
    args.extend([
        "--coll".into(),
        unique("pool_slow"),
        "--slow".into(),
        "4".into(),
        "--exhaust".into(),
        "2".into(),
        "--docs".into(),
        "200".into(),
    ]);
    let out = support::run_python(
        &support::clients_dir().join("pool_slow.py"),
        &strs(&args),
        &[],
    )
    .await;
    let v = out.json();
    println!("{v}");
    assert_eq!(
        v["stuck"], 0,
        "operations did not finish within 90 s: {out}"
    );
    assert_eq!(v["errors"], serde_json::json!([]), "{out}");
    assert!(out.success(), "{out}");
    assert_eq!(v["exhaust"], serde_json::json!([200, 200]), "{out}");
    let waits = v["waits_ms"].as_array().expect("waits_ms");
    assert_eq!(waits.len(), 4, "{out}");
    for w in waits {
        for ms in w.as_array().expect("two waits") {
            // The server really waited (else nothing held a connection).
            assert!(
                ms.as_u64().unwrap_or(0) >= 500,
                "an empty awaitData getMore returned at once: {out}"
            );
        }
    }
    sampler.finish(2.0).await;
    env.stop().await;
}

// ---------------------------------------------------------------------------
// 6. The backend stopped and started again
// ---------------------------------------------------------------------------

/// One command: its reply (`None`: the proxy closed the connection
/// instead) and how long it took.
async fn timed(c: &mut WireClient, cmd: RawDocumentBuf) -> (Option<RawDocumentBuf>, Duration) {
    let t = Instant::now();
    let id = c.send_msg(0, &cmd).await;
    let reply = c.recv().await.map(|frame| {
        assert_eq!(
            frame.header.response_to, id,
            "the reply answers another request"
        );
        mongo_oidc_proxy::wire::OpMsg::parse(&frame.bytes)
            .expect("a well-formed OP_MSG reply")
            .body
            .to_owned()
    });
    (reply, t.elapsed())
}

/// With the backend stopped, 50 finds on signed-in connections each fail
/// within `checkout_timeout_ms` (1 s) + 1 s with HostUnreachable (6) or
/// NetworkTimeout (89), a retryable insert is labelled RetryableWriteError;
/// once the backend is back on its port, requests succeed again without a
/// proxy restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_fails_requests_within_the_checkout_timeout_and_its_return_is_noticed() {
    const CLIENTS: usize = 50;
    let checkout = Duration::from_millis(1000);
    let mut db = support::start_secantus(users()).await;
    let env = proxy(
        &db.uri,
        &format!(
            "[backend.pool]\nmax_size = 10\ncheckout_timeout_ms = {}\n\n{METRICS}",
            checkout.as_millis()
        ),
    )
    .await;
    let find = rawdoc! { "find": "outage", "filter": {}, "$db": "app" };
    let mut clients = futures::future::join_all((0..CLIENTS).map(|n| {
        let env = &env;
        async move { signed_in(env, &format!("user{}", n % 5)).await }
    }))
    .await;
    let replies =
        futures::future::join_all(clients.iter_mut().map(|c| c.command(find.clone()))).await;
    assert!(
        replies.iter().all(is_ok),
        "finds before the outage: {replies}",
        replies = replies.show()
    );
    let mut writer = signed_in(&env, "writer").await;

    db.kill().await;
    let results =
        futures::future::join_all(clients.iter_mut().map(|c| timed(c, find.clone()))).await;
    let limit = checkout + Duration::from_secs(1);
    for (n, (reply, took)) in results.iter().enumerate() {
        assert!(
            matches!(reply.as_ref().and_then(code), Some(6 | 89)),
            "find {n} with the backend down: expected code 6 or 89, got {reply}",
            reply = reply.show()
        );
        assert!(
            *took <= limit,
            "find {n} took {took:?} to fail (limit {limit:?}): {reply}",
            reply = reply.show()
        );
    }
    let slowest = results.iter().map(|(_, t)| *t).max().unwrap_or_default();
    eprintln!("{CLIENTS} finds failed, the slowest after {slowest:?}");

    // A retryable write (lsid + txnNumber) is labelled for the driver's retry.
    let session = lsid();
    let mut insert = rawdoc! { "insert": "outage", "documents": [{ "_id": "retried" }], "txnNumber": 1i64, "$db": "app" };
    insert.append(bson::raw::cstr!("lsid"), session.clone());
    let (reply, took) = timed(&mut writer, insert.clone()).await;
    let reply = reply
        .unwrap_or_else(|| panic!("the proxy closed the connection instead of failing the insert"));
    assert!(
        matches!(code(&reply), Some(6 | 89)),
        "{reply}",
        reply = reply.show()
    );
    assert!(
        took <= limit,
        "the insert took {took:?} to fail: {reply}",
        reply = reply.show()
    );
    assert!(
        labels(&reply).iter().any(|l| l == "RetryableWriteError"),
        "a retryable write failing for want of a backend connection carries RetryableWriteError: {reply}", reply = reply.show()
    );

    let m = scrape(&env).await;
    assert!(
        sum(&m, "mongo_oidc_proxy_backend_pool_checkout_failures_total") >= 1.0,
        "the failed checkouts are counted:\n{m}",
        m = pool_lines(&m)
    );

    // Back on the same port and data: the proxy notices without a restart.
    db.restart_with(&[])
        .await
        .unwrap_or_else(|e| panic!("SecantusDB did not restart: {e}"));
    let back = Instant::now();
    loop {
        let reply = clients[0].command(find.clone()).await;
        if is_ok(&reply) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "10 s after the backend came back finds still fail: {reply}",
            reply = reply.show()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("finds work again {:?} after the restart", back.elapsed());
    let replies =
        futures::future::join_all(clients.iter_mut().map(|c| c.command(find.clone()))).await;
    for (n, reply) in replies.iter().enumerate() {
        assert!(
            is_ok(reply),
            "find {n} after the backend came back: {reply}",
            reply = reply.show()
        );
    }
    // The driver's retry of the insert (same lsid and txnNumber) succeeds.
    let reply = writer.command(insert).await;
    assert!(
        is_ok(&reply),
        "the retried insert: {reply}",
        reply = reply.show()
    );
    let reply = writer
        .command(rawdoc! { "count": "outage", "query": { "_id": "retried" }, "$db": "app" })
        .await;
    assert_eq!(int(&reply, "n"), Some(1), "{reply}", reply = reply.show());

    for c in clients {
        c.close().await;
    }
    writer.close().await;
    env.stop().await;
    db.shutdown().await;
}

// ---------------------------------------------------------------------------
// 7. max_waiters, the idle timeout and the metrics
// ---------------------------------------------------------------------------

/// Every pool metric the feature promises, by name.
const POOL_METRICS: [&str; 8] = [
    "mongo_oidc_proxy_backend_pool_connections",
    "mongo_oidc_proxy_backend_pool_waiters",
    "mongo_oidc_proxy_backend_pool_checkout_wait_seconds",
    "mongo_oidc_proxy_backend_pool_connections_created_total",
    "mongo_oidc_proxy_backend_pool_connections_closed_total",
    "mongo_oidc_proxy_backend_pool_checkout_failures_total",
    "mongo_oidc_proxy_cursors_tracked",
    "mongo_oidc_proxy_logical_sessions_tracked",
];

/// With `max_size = 1`, `max_waiters = 1` and `checkout_timeout_ms =
/// 1500`, while a slow getMore holds the only connection: of three more
/// finds one waits and succeeds, the other two fail at once; a find that
/// would wait longer than the checkout timeout fails when it passes. The
/// metrics count it all, track the open cursor and session, and show the
/// idle connection closed after `idle_timeout_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_waiters_checkout_timeout_idle_timeout_and_the_pool_metrics() {
    const CHECKOUT: Duration = Duration::from_millis(1500);
    let _shared = BACKEND_CURSORS.read().await;
    let env = proxy(
        shared_backend(),
        &format!(
            "[backend.pool]\nmax_size = 1\nmax_waiters = 1\nidle_timeout_secs = 1\n\
             checkout_timeout_ms = {}\n\n{METRICS}",
            CHECKOUT.as_millis()
        ),
    )
    .await;
    let coll = unique("pool_metrics");
    let capped = format!("{coll}_capped");
    let mut alice = signed_in(&env, "alice").await;
    let mut others = Vec::new();
    for n in 0..3 {
        others.push(signed_in(&env, &format!("user{n}")).await);
    }
    fill(&mut alice, &coll, 3).await;
    let reply = alice
        .command(rawdoc! { "create": capped.as_str(), "capped": true, "size": 1_048_576i64, "$db": "app" })
        .await;
    assert!(is_ok(&reply), "{reply}", reply = reply.show());
    let reply = alice
        .command(rawdoc! { "insert": capped.as_str(), "documents": [{ "i": 0 }], "$db": "app" })
        .await;
    assert!(is_ok(&reply), "{reply}", reply = reply.show());

    // A tailable awaitData cursor in a session of alice's.
    let session = lsid();
    let mut find = rawdoc! { "find": capped.as_str(), "filter": {}, "tailable": true, "awaitData": true, "$db": "app" };
    find.append(bson::raw::cstr!("lsid"), session.clone());
    let reply = alice.command(find).await;
    assert_eq!(batch(&reply), [0], "{reply}", reply = reply.show());
    let tailing = cursor_id(&reply);
    let m = scrape(&env).await;
    assert!(
        sum(&m, "mongo_oidc_proxy_cursors_tracked") >= 1.0,
        "alice's open cursor is tracked:\n{m}",
        m = pool_lines(&m)
    );
    assert!(
        sum(&m, "mongo_oidc_proxy_logical_sessions_tracked") >= 1.0,
        "alice's session is tracked:\n{m}",
        m = pool_lines(&m)
    );

    // Round 1: its getMore waits 1 s for data, holding the pool's only
    // connection; of three finds sent meanwhile one waits (and gets the
    // connection within the checkout timeout), two fail at once.
    let hold = |ms: i64| {
        let mut get_more = rawdoc! { "getMore": tailing, "collection": capped.as_str(), "maxTimeMS": ms, "$db": "app" };
        get_more.append(bson::raw::cstr!("lsid"), session.clone());
        get_more
    };
    let held = alice.send_msg(0, &hold(1000)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let find = rawdoc! { "find": coll.as_str(), "filter": {}, "$db": "app" };
    let results =
        futures::future::join_all(others.iter_mut().map(|c| timed(c, find.clone()))).await;
    let reply = alice.recv().await.expect("the getMore's reply");
    assert_eq!(reply.header.response_to, held);
    eprintln!("round 1: {results}", results = results.show());
    let ok = results
        .iter()
        .filter(|(r, _)| r.as_ref().is_some_and(is_ok))
        .count();
    let refused: Vec<_> = results
        .iter()
        .filter(|(r, _)| r.as_ref().is_some_and(|r| !is_ok(r)))
        .collect();
    assert_eq!(
        ok,
        1,
        "one find waits for the connection and gets it: {results}",
        results = results.show()
    );
    assert_eq!(
        refused.len(),
        2,
        "the finds beyond max_waiters fail: {results}",
        results = results.show()
    );
    for (reply, took) in &refused {
        assert!(
            *took < CHECKOUT,
            "a find beyond max_waiters fails at once, without waiting as long as a waiter may \
             ({took:?}): {reply}",
            reply = reply.show()
        );
    }

    // Round 2: a getMore holding the connection 3 s; a find waiting for it
    // fails when the checkout timeout passes, not when the getMore ends.
    let held = alice.send_msg(0, &hold(3000)).await;
    let hold_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (reply, took) = timed(&mut others[0], find.clone()).await;
    let waited_until = hold_started.elapsed();
    let get_more = alice.recv().await.expect("the getMore's reply");
    assert_eq!(get_more.header.response_to, held);
    eprintln!("round 2: {}", (reply.clone(), took).show());
    assert!(
        reply.as_ref().is_some_and(|r| !is_ok(r)),
        "a find waiting longer than checkout_timeout_ms fails: {reply}",
        reply = reply.show()
    );
    assert!(
        took >= CHECKOUT - Duration::from_millis(100)
            && took <= CHECKOUT + Duration::from_secs(1)
            && waited_until < Duration::from_secs(3),
        "a find waiting for a connection fails after checkout_timeout_ms = {CHECKOUT:?} \
         (+ a little), not at once nor when the 3 s getMore ends: it took {took:?}"
    );
    let m = scrape(&env).await;
    assert!(
        value(
            &m,
            "mongo_oidc_proxy_backend_pool_checkout_failures_total{reason=\"max_waiters\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "the refused checkouts are counted as max_waiters:\n{m}",
        m = pool_lines(&m)
    );
    assert!(
        value(
            &m,
            "mongo_oidc_proxy_backend_pool_checkout_failures_total{reason=\"timeout\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "the checkout that timed out is counted as timeout:\n{m}",
        m = pool_lines(&m)
    );
    assert_eq!(
        sum(&m, "mongo_oidc_proxy_backend_pool_waiters"),
        0.0,
        "{m}",
        m = pool_lines(&m)
    );
    assert!(
        pool_size(&m).is_some_and(|n| n <= 1.0),
        "max_size = 1:\n{}",
        pool_lines(&m)
    );
    assert!(
        sum(
            &m,
            "mongo_oidc_proxy_backend_pool_checkout_wait_seconds_count"
        ) >= 5.0,
        "every checkout is timed:\n{m}",
        m = pool_lines(&m)
    );
    let created = sum(
        &m,
        "mongo_oidc_proxy_backend_pool_connections_created_total",
    );
    assert!(created >= 1.0, "{m}", m = pool_lines(&m));

    // Left idle, the connection is closed once idle_timeout_secs (1 s)
    // passes (the pool may check every second): the pool is empty, and the
    // next find opens a new connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(&env).await;
        if sum(&m, "mongo_oidc_proxy_backend_pool_connections_closed_total") >= 1.0
            && pool_size(&m) == Some(0.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle connection was not closed within 5 s with idle_timeout_secs = 1:\n{m}",
            m = pool_lines(&m)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reply = others[0].command(find.clone()).await;
    assert!(is_ok(&reply), "{reply}", reply = reply.show());
    let m = scrape(&env).await;
    assert!(
        sum(
            &m,
            "mongo_oidc_proxy_backend_pool_connections_created_total"
        ) > created,
        "the find after the idle close opened a new connection:\n{m}",
        m = pool_lines(&m)
    );
    for name in POOL_METRICS {
        assert!(
            m.contains(name),
            "{name} is missing from /metrics:\n{m}",
            m = pool_lines(&m)
        );
    }
    assert!(
        pool_size(&m).is_some(),
        "{POOL_CONNECTIONS}{{state=\"idle\"|\"in_use\"}}:\n{}",
        pool_lines(&m)
    );

    // alice leaves: her cursor is no longer tracked (and is killed).
    alice.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(&env).await;
        if m.contains("mongo_oidc_proxy_cursors_tracked")
            && sum(&m, "mongo_oidc_proxy_cursors_tracked") == 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice's cursor is still tracked 5 s after she left:\n{m}",
            m = pool_lines(&m)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in others {
        c.close().await;
    }
    env.stop().await;
}
