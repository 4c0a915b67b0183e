//! End-to-end benchmark, one run, three paths side by side:
//!
//! 1. `direct`  — plain TCP + SCRAM-SHA-256 to SecantusDB;
//! 2. `haproxy` — TLS terminated by haproxy (`mode tcp`) → plain TCP to SecantusDB, SCRAM end to end;
//! 3. `proxy`   — TLS + MONGODB-OIDC to mongo-oidc-proxy (in-process, its own runtime) → SecantusDB.
//!
//! The load generator is the same code for every path: this crate's
//! `BackendConnection` (raw OP_MSG, `read_frame`) on a current-thread tokio
//! runtime. Run with `cargo bench --bench e2e`; see `benches/README.md` for
//! the knobs (`E2E_OPS`, `E2E_QUICK`, ...).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{rawdoc, RawDocumentBuf};
use mongo_oidc_proxy::backend::{BackendConnection, BackendStream, SaltedPasswordCache};
use mongo_oidc_proxy::config::Config;
use mongo_oidc_proxy::server::{self, Running};
use mongo_oidc_proxy_devkit::demo::secantus::{
    self, BackendUser, RunningSecantus, SecantusOptions,
};
use mongo_oidc_proxy_devkit::devidp::{DevIdp, DevIdpOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const USER: &str = "bench_rw";
const PASSWORD: &str = "bench-rw-password";
const DB: &str = "bench";
const AUDIENCE: &str = "api://mop-bench";
const PREFIX: &str = "bench";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Any single operation slower than this is reported as a failure.
const OP_TIMEOUT: Duration = Duration::from_secs(30);
const SMALL_DOCS: i32 = 100;

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------- settings

struct Settings {
    /// Timed operations per (workload, concurrency, path), over all rounds and connections.
    ops: usize,
    /// Untimed warm-up operations per cell and round, split over the connections.
    warmup: usize,
    /// Sequential connection set-ups per path.
    setups: usize,
    /// Rounds; the path order alternates between rounds to cancel drift.
    rounds: usize,
    concurrency: Vec<usize>,
    workloads: Vec<Workload>,
}

fn env_usize(name: &str, default: usize) -> Res<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a non-negative integer")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Res<Settings> {
        let quick = std::env::var("E2E_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
        // `cargo test --all-targets` runs bench binaries without `--bench`:
        // then this is a smoke test that every path still works, not a measurement.
        let smoke = !std::env::args().any(|a| a == "--bench");
        let (ops, warmup, setups, rounds) = if smoke {
            (20, 5, 5, 1)
        } else if quick {
            (400, 40, 40, 1)
        } else {
            (5000, 300, 400, 2)
        };
        let concurrency = match std::env::var("E2E_CONCURRENCY") {
            Ok(v) => v
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&c| (1..=256).contains(&c))
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("E2E_CONCURRENCY={v:?}: want e.g. 1,8 (1..=256)"))?,
            Err(_) => vec![1, 8],
        };
        let workloads = match std::env::var("E2E_WORKLOADS") {
            Ok(v) => v
                .split(',')
                .map(|s| {
                    Workload::ALL
                        .iter()
                        .copied()
                        .find(|w| w.name() == s.trim())
                        .ok_or_else(|| format!("E2E_WORKLOADS: unknown workload {s:?}"))
                })
                .collect::<Res<Vec<_>>>()?,
            Err(_) => Workload::ALL.to_vec(),
        };
        let s = Settings {
            ops: env_usize("E2E_OPS", ops)?.clamp(1, 1_000_000),
            warmup: env_usize("E2E_WARMUP", warmup)?.min(100_000),
            setups: env_usize("E2E_SETUPS", setups)?.min(100_000),
            rounds: env_usize("E2E_ROUNDS", rounds)?.clamp(1, 20),
            concurrency,
            workloads,
        };
        Ok(s)
    }
}

// ---------------------------------------------------------------- workloads

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Ping,
    FindOne,
    Insert,
    Find16K,
    Find1M,
}

static NEXT_INSERT_ID: AtomicI64 = AtomicI64::new(1);

impl Workload {
    const ALL: [Workload; 5] = [
        Workload::Ping,
        Workload::FindOne,
        Workload::Insert,
        Workload::Find16K,
        Workload::Find1M,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Ping => "ping",
            Workload::FindOne => "find_one",
            Workload::Insert => "insert",
            Workload::Find16K => "find_16k",
            Workload::Find1M => "find_1m",
        }
    }

    /// Large replies cost the Python backend milliseconds each: fewer ops.
    fn ops_divisor(self) -> usize {
        match self {
            Workload::Find1M => 20,
            _ => 1,
        }
    }

    fn command(self, i: usize) -> RawDocumentBuf {
        match self {
            Workload::Ping => rawdoc! { "ping": 1, "$db": DB },
            Workload::FindOne => {
                let id = (i % SMALL_DOCS as usize) as i32;
                rawdoc! { "find": "small", "filter": { "_id": id }, "limit": 1, "singleBatch": true, "$db": DB }
            }
            Workload::Insert => {
                let id = NEXT_INSERT_ID.fetch_add(1, Ordering::Relaxed);
                // 4 + (1+4+8) + (1+4+4+100+1) + 1 = 128 bytes of BSON.
                let pad = "x".repeat(100);
                rawdoc! { "insert": "ins", "documents": [ { "_id": id, "pad": pad } ], "$db": DB }
            }
            Workload::Find16K => {
                rawdoc! { "find": "blobs", "filter": { "_id": "16k" }, "limit": 1, "singleBatch": true, "$db": DB }
            }
            Workload::Find1M => {
                rawdoc! { "find": "blobs", "filter": { "_id": "1m" }, "limit": 1, "singleBatch": true, "$db": DB }
            }
        }
    }

    fn check(self, reply: &RawDocumentBuf) -> Res<()> {
        match self {
            Workload::Ping => Ok(()),
            Workload::Insert => match reply.get_i32("n") {
                Ok(1) => Ok(()),
                _ => Err(format!("insert reply without n: 1: {reply:?}")),
            },
            _ => {
                let n = reply
                    .get_document("cursor")
                    .and_then(|c| c.get_array("firstBatch"))
                    .map(|b| b.into_iter().count())
                    .map_err(|e| format!("{} reply has no cursor.firstBatch ({e})", self.name()))?;
                if n != 1 {
                    return Err(format!(
                        "{} returned {n} documents, expected 1",
                        self.name()
                    ));
                }
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------- paths

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PathKind {
    Direct,
    Haproxy,
    Proxy,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Haproxy => "haproxy",
            PathKind::Proxy => "proxy",
        }
    }
}

struct Target {
    kind: PathKind,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// PID whose CPU time is charged to this path's relay (haproxy), if a child.
    relay_pid: Option<u32>,
}

/// How a connection signs in.
enum Auth<'a> {
    Scram(&'a Arc<SaltedPasswordCache>),
    Oidc(&'a str),
}

async fn open(target: &Target, auth: Auth<'_>) -> Res<BackendConnection> {
    let path = target.kind.name();
    let mut conn = BackendConnection::connect(
        "127.0.0.1",
        target.port,
        target.tls.as_ref(),
        CONNECT_TIMEOUT,
    )
    .await
    .map_err(|e| format!("{path}: connect: {e}"))?;
    let signed_in = async {
        match auth {
            Auth::Scram(cache) => conn
                .authenticate_scram_sha256(USER, PASSWORD, "admin", cache)
                .await
                .map_err(|e| format!("{path}: SCRAM-SHA-256 sign-in: {e}")),
            Auth::Oidc(jwt) => {
                let payload = rawdoc! { "jwt": jwt };
                let start = rawdoc! {
                    "saslStart": 1,
                    "mechanism": "MONGODB-OIDC",
                    "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: payload.into_bytes() },
                    "$db": "$external",
                };
                let reply = conn
                    .command(&start)
                    .await
                    .map_err(|e| format!("{path}: MONGODB-OIDC saslStart: {e}"))?;
                match reply.get_bool("done") {
                    Ok(true) => Ok(()),
                    _ => Err(format!(
                        "{path}: saslStart did not finish the sign-in: {reply:?}"
                    )),
                }
            }
        }
    };
    tokio::time::timeout(OP_TIMEOUT, signed_in)
        .await
        .map_err(|_| format!("{path}: sign-in took more than {OP_TIMEOUT:?}"))??;
    Ok(conn)
}

async fn run_op(conn: &mut BackendConnection, w: Workload, i: usize, path: &str) -> Res<()> {
    let body = w.command(i);
    let reply = tokio::time::timeout(OP_TIMEOUT, conn.command(&body))
        .await
        .map_err(|_| format!("{path}: {} took more than {OP_TIMEOUT:?}", w.name()))?
        .map_err(|e| format!("{path}: {}: {e}", w.name()))?;
    w.check(&reply).map_err(|e| format!("{path}: {e}"))
}

// ---------------------------------------------------------------- CPU accounting

/// Nanoseconds on CPU of this process's threads whose name starts with `prefix`
/// (`/proc/self/task/*/schedstat`; threads persist, so deltas are exact).
fn thread_cpu_ns(prefix: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for task in dir.flatten() {
        let p = task.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        total += schedstat_ns(&p.join("schedstat"));
    }
    total
}

fn schedstat_ns(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU time of a whole process, exited threads included (utime + stime, in ns;
/// clock-tick resolution, 10 ms).
fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    ticks * 1_000_000_000 / hz
}

#[derive(Clone, Copy, Default)]
struct Cpu {
    client: u64,
    relay: u64,
    backend: u64,
}

fn cpu_now(target: &Target, backend_pid: Option<u32>) -> Cpu {
    Cpu {
        client: schedstat_ns(Path::new("/proc/thread-self/schedstat")),
        relay: match (target.kind, target.relay_pid) {
            (PathKind::Proxy, _) => thread_cpu_ns("mop-proxy"),
            (_, Some(pid)) => process_cpu_ns(pid),
            _ => 0,
        },
        backend: backend_pid.map_or(0, process_cpu_ns),
    }
}

// ---------------------------------------------------------------- measurement

#[derive(Default)]
struct Sample {
    /// Per-operation latency, ns.
    lat: Vec<u64>,
    ops: usize,
    wall: Duration,
    cpu: Cpu,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.lat.extend(other.lat);
        self.ops += other.ops;
        self.wall += other.wall;
        self.cpu.client += other.cpu.client;
        self.cpu.relay += other.cpu.relay;
        self.cpu.backend += other.cpu.backend;
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn pct_us(&mut self, q: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        self.lat.sort_unstable();
        let i = ((q * self.lat.len() as f64) as usize).min(self.lat.len() - 1);
        self.lat[i] as f64 / 1000.0
    }

    fn cpu_us_per_op(&self, ns: u64) -> f64 {
        ns as f64 / 1000.0 / self.ops.max(1) as f64
    }
}

/// One cell: `c` connections signed in, warmed up, then `ops` timed round
/// trips split between them, all starting together.
async fn run_cell(
    env: &Env,
    target: &Target,
    w: Workload,
    c: usize,
    ops: usize,
    warmup: usize,
) -> Res<Sample> {
    let path = target.kind.name();
    let mut conns = Vec::with_capacity(c);
    for _ in 0..c {
        let conn = match target.kind {
            PathKind::Proxy => open(target, Auth::Oidc(&env.token)).await?,
            _ => open(target, Auth::Scram(&env.scram_cache)).await?,
        };
        conns.push(conn);
    }
    let per_conn = ops.div_ceil(c).max(1);
    let warm_per_conn = warmup.div_ceil(c);
    let barrier = Arc::new(tokio::sync::Barrier::new(c + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for (k, mut conn) in conns.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        tasks.spawn_local(async move {
            // The proxy opens its backend connection on the first relayed command: warm-up pays it.
            for i in 0..warm_per_conn {
                run_op(&mut conn, w, k * 7919 + i, path).await?;
            }
            barrier.wait().await;
            let mut lat = Vec::with_capacity(per_conn);
            for i in 0..per_conn {
                let t = Instant::now();
                run_op(&mut conn, w, k * 7919 + i, path).await?;
                lat.push(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, String>(lat)
        });
    }
    // An error before the barrier would leave the others waiting: race it.
    let started = tokio::select! {
        _ = barrier.wait() => None,
        Some(r) = tasks.join_next() => Some(r),
    };
    if let Some(r) = started {
        tasks.abort_all();
        return Err(match r {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => format!("{path}: a connection finished before the others started"),
            Err(e) => format!("{path}: load task failed: {e}"),
        });
    }
    let cpu0 = cpu_now(target, env.backend_pid);
    let t0 = Instant::now();
    let mut sample = Sample::default();
    while let Some(r) = tasks.join_next().await {
        let lat = r.map_err(|e| format!("{path}: load task failed: {e}"))??;
        sample.ops += lat.len();
        sample.lat.extend(lat);
    }
    sample.wall = t0.elapsed();
    let cpu1 = cpu_now(target, env.backend_pid);
    sample.cpu = Cpu {
        client: cpu1.client.saturating_sub(cpu0.client),
        relay: cpu1.relay.saturating_sub(cpu0.relay),
        backend: cpu1.backend.saturating_sub(cpu0.backend),
    };
    Ok(sample)
}

/// New connection + sign-in + one `find` (the proxy signs in to the backend on
/// the first relayed command, so a `find` includes that leg), sequentially.
async fn run_setups(env: &Env, target: &Target, n: usize, tokens: &[String]) -> Res<Sample> {
    let path = target.kind.name();
    let cpu0 = cpu_now(target, env.backend_pid);
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let mut conn = match target.kind {
            PathKind::Proxy => {
                let jwt = tokens.get(i % tokens.len().max(1)).unwrap_or(&env.token);
                open(target, Auth::Oidc(jwt)).await?
            }
            _ => open(target, Auth::Scram(&env.scram_cache)).await?,
        };
        run_op(&mut conn, Workload::FindOne, i, path).await?;
        lat.push(t.elapsed().as_nanos() as u64);
        drop(conn);
    }
    let wall = t0.elapsed();
    let cpu1 = cpu_now(target, env.backend_pid);
    Ok(Sample {
        ops: lat.len(),
        lat,
        wall,
        cpu: Cpu {
            client: cpu1.client.saturating_sub(cpu0.client),
            relay: cpu1.relay.saturating_sub(cpu0.relay),
            backend: cpu1.backend.saturating_sub(cpu0.backend),
        },
    })
}

// ---------------------------------------------------------------- environment

/// Kills and reaps haproxy on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    backend_pid: Option<u32>,
    scram_cache: Arc<SaltedPasswordCache>,
    /// The token every load connection signs in with.
    token: String,
}

fn free_port() -> Res<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

fn client_tls(ca: &Path) -> Res<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn find_haproxy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("E2E_HAPROXY") {
        // E2E_HAPROXY=none (or any non-file) skips the haproxy path.
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

fn haproxy_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown version".into())
}

/// haproxy in the foreground: TLS terminated with the dev certificate, plain TCP to the backend.
fn start_haproxy(bin: &Path, dir: &Path, backend_port: u16) -> Res<(ChildGuard, u16)> {
    let certs = dir.join("certs");
    let mut pem = std::fs::read(certs.join("server.pem")).map_err(|e| e.to_string())?;
    pem.extend(std::fs::read(certs.join("server.key")).map_err(|e| e.to_string())?);
    let pem_path = dir.join("haproxy.pem");
    std::fs::write(&pem_path, pem).map_err(|e| e.to_string())?;
    let port = free_port()?;
    let cfg = format!(
        "global\n    maxconn 4096\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
         frontend fe\n    bind 127.0.0.1:{port} ssl crt {pem}\n    default_backend be\n\n\
         backend be\n    server s1 127.0.0.1:{backend_port}\n",
        pem = pem_path.display()
    );
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, &cfg).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("-f")
        .arg(&cfg_path)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; haproxy dies with this process even on SIGKILL.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = guard.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = guard.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(format!(
                "haproxy exited with {status}:\n{err}\nconfig:\n{cfg}"
            ));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((guard, port));
        }
        if Instant::now() > deadline {
            return Err("haproxy did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn proxy_config(certs: &Path, password_file: &Path, backend_port: u16, issuer: &str) -> String {
    format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ntls_cert = {cert}\ntls_key = {key}\n\n\
         [backend]\nuri = \"mongodb://127.0.0.1:{backend_port}/\"\n\n\
         [limits]\nauth_timeout_secs = 10\n\n\
         [[identity_provider]]\nissuer = {issuer}\naudience = {aud}\nauth_name_prefix = {PREFIX:?}\nclient_id = \"bench-client\"\n\n\
         [[grant]]\nrole = \"{PREFIX}/writers\"\nbackend_user = {user}\nbackend_password_file = {pwf}\n",
        cert = toml_str(&certs.join("server.pem").display().to_string()),
        key = toml_str(&certs.join("server.key").display().to_string()),
        issuer = toml_str(issuer),
        aud = toml_str(AUDIENCE),
        user = toml_str(USER),
        pwf = toml_str(&password_file.display().to_string()),
    )
}

/// 100 small documents and the two large ones.
async fn seed(target: &Target, cache: &Arc<SaltedPasswordCache>) -> Res<()> {
    let mut conn = open(target, Auth::Scram(cache)).await?;
    let mut docs = bson::RawArrayBuf::new();
    for i in 0..SMALL_DOCS {
        docs.push(rawdoc! { "_id": i, "v": i, "s": format!("small document {i}") });
    }
    let cmds = [
        rawdoc! { "insert": "small", "documents": docs, "$db": DB },
        blob_insert("16k", 16 * 1024),
        blob_insert("1m", 1024 * 1024),
    ];
    for cmd in &cmds {
        conn.command(cmd)
            .await
            .map_err(|e| format!("seeding the backend: {e}"))?;
    }
    Ok(())
}

/// A document of exactly `size` bytes of BSON: `{_id: name, data: BinData}`.
fn blob_insert(name: &str, size: usize) -> RawDocumentBuf {
    // 4 + (1+4+4+len+1) + (1+5+4+1+n) + 1 = 26 + len + n
    let n = size - 26 - name.len();
    let data = bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes: vec![0x5a; n],
    };
    rawdoc! { "insert": "blobs", "documents": [ { "_id": name, "data": data } ], "$db": DB }
}

fn cipher_of(conn: &mut BackendConnection) -> String {
    match conn.stream_mut() {
        BackendStream::Tls(s) => {
            let c = s.get_ref().1;
            let version = c
                .protocol_version()
                .map_or_else(|| "?".to_string(), |v| format!("{v:?}"));
            let suite = c
                .negotiated_cipher_suite()
                .map_or_else(|| "?".to_string(), |s| format!("{:?}", s.suite()));
            format!("{version} {suite}")
        }
        BackendStream::Plain(_) => "plaintext".into(),
    }
}

// ---------------------------------------------------------------- report

fn fmt_us(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn delta(proxy: f64, other: Option<f64>) -> String {
    match other {
        Some(o) if o > 0.0 => format!("{:+.0} µs ({:+.0}%)", proxy - o, (proxy - o) / o * 100.0),
        _ => "-".into(),
    }
}

struct Row {
    label: String,
    c: usize,
    path: PathKind,
    ops_s: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    cpu: [f64; 3],
}

fn print_table(title: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| workload | C | path | ops/s | p50 µs | p90 µs | p99 µs | CPU µs/op client / relay / backend | proxy Δp50 vs direct | vs haproxy |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---|---|---|");
    for r in rows {
        let (vs_direct, vs_haproxy) = if r.path == PathKind::Proxy {
            let find = |k: PathKind| {
                rows.iter()
                    .find(|o| o.label == r.label && o.c == r.c && o.path == k)
                    .map(|o| o.p50)
            };
            (
                delta(r.p50, find(PathKind::Direct)),
                delta(r.p50, find(PathKind::Haproxy)),
            )
        } else {
            (String::new(), String::new())
        };
        let relay = if r.path == PathKind::Direct {
            "-".into()
        } else {
            format!("{:.0}", r.cpu[1])
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {:.0} / {} / {:.0} | {} | {} |",
            r.label,
            r.c,
            r.path.name(),
            r.ops_s,
            fmt_us(r.p50),
            fmt_us(r.p90),
            fmt_us(r.p99),
            r.cpu[0],
            relay,
            r.cpu[2],
            vs_direct,
            vs_haproxy
        );
    }
    print!("{out}");
    out
}

fn row(label: &str, c: usize, path: PathKind, mut s: Sample) -> Row {
    Row {
        label: label.into(),
        c,
        path,
        ops_s: s.ops_per_sec(),
        p50: s.pct_us(0.50),
        p90: s.pct_us(0.90),
        p99: s.pct_us(0.99),
        cpu: [
            s.cpu_us_per_op(s.cpu.client),
            s.cpu_us_per_op(s.cpu.relay),
            s.cpu_us_per_op(s.cpu.backend),
        ],
    }
}

// ---------------------------------------------------------------- main

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` (see `Settings::from_env`); a filter argument is not supported.
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("e2e: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ne2e: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings) -> Res<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let certs = dir.path().join("certs");
    mongo_oidc_proxy_devkit::devcerts::generate(&certs, &[])
        .map_err(|e| format!("dev certs: {e}"))?;
    let pwf = dir.path().join("rw.password");
    std::fs::write(&pwf, PASSWORD).map_err(|e| e.to_string())?;
    let tls = client_tls(&certs.join("ca.pem"))?;

    // Backend, IdP: an infrastructure runtime. The proxy: a runtime of its own,
    // two workers like the binary on this machine. The load generator: this thread.
    let infra = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-infra")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("mop-proxy")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    let tools = std::env::var_os("MOP_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools"));
    let secantusd = secantus::find_secantusd(Some(&tools)).ok_or_else(|| {
        "secantusd-py not found: run scripts/setup-tools.sh (or set MOP_TOOLS / MOP_SECANTUSD)"
            .to_string()
    })?;
    let backend: RunningSecantus = infra
        .block_on(secantus::start(SecantusOptions {
            secantusd,
            users: vec![BackendUser::new(USER, PASSWORD, &[("readWrite", DB)])],
            data_dir: None,
            port: None,
        }))
        .map_err(|e| format!("SecantusDB: {e}"))?;
    let idp: DevIdp = infra
        .block_on(DevIdp::start(
            "127.0.0.1:0"
                .parse::<SocketAddr>()
                .map_err(|e| e.to_string())?,
            DevIdpOptions {
                audience: AUDIENCE.into(),
                client_id: "bench-client".into(),
                ..DevIdpOptions::default()
            },
        ))
        .map_err(|e| format!("dev IdP: {e}"))?;
    let config_text = proxy_config(&certs, &pwf, backend.port, idp.issuer());
    let config = Config::parse(&config_text).map_err(|e| format!("proxy config: {e}"))?;
    let proxy: Running = proxy_rt
        .block_on(server::start(config))
        .map_err(|e| format!("proxy: {e}"))?;

    let haproxy_bin = find_haproxy();
    let mut haproxy = None;
    match &haproxy_bin {
        Some(bin) => {
            haproxy = Some(start_haproxy(bin, dir.path(), backend.port)?);
        }
        None => eprintln!(
            "e2e: haproxy not found; the haproxy path is skipped. Install it with \
             `apt-get install -y haproxy` (Debian/Ubuntu, as root) or set E2E_HAPROXY=/path/to/haproxy (E2E_HAPROXY=none skips it)."
        ),
    }

    let mut targets = vec![Target {
        kind: PathKind::Direct,
        port: backend.port,
        tls: None,
        relay_pid: None,
    }];
    if let Some((guard, port)) = &haproxy {
        targets.push(Target {
            kind: PathKind::Haproxy,
            port: *port,
            tls: Some(Arc::clone(&tls)),
            relay_pid: Some(guard.0.id()),
        });
    }
    targets.push(Target {
        kind: PathKind::Proxy,
        port: proxy.local_addr.port(),
        tls: Some(Arc::clone(&tls)),
        relay_pid: None,
    });

    let env = Env {
        backend_pid: backend.pid(),
        scram_cache: Arc::new(SaltedPasswordCache::new()),
        token: idp.token("bench-load", &["writers"], 3600),
    };
    // Fresh tokens for the set-up runs: a different token each time, so the
    // proxy verifies an RS256 signature per connection (JWKS cache warm).
    let tokens: Vec<String> = (0..settings.setups.clamp(1, 1000))
        .map(|i| idp.token(&format!("bench-setup-{i}"), &["writers"], 3600))
        .collect();

    let result = client_rt.block_on(tokio::task::LocalSet::new().run_until(async {
        seed(&targets[0], &env.scram_cache).await?;
        println!("# mongo-oidc-proxy end-to-end benchmark");
        println!();
        println!(
            "ops per cell {} (1 MiB: /20), warm-up {}, set-ups {}, rounds {}, concurrency {:?}",
            settings.ops, settings.warmup, settings.setups, settings.rounds, settings.concurrency
        );
        println!(
            "backend SecantusDB pid {:?} on :{}; haproxy {}; proxy on {}",
            env.backend_pid,
            backend.port,
            haproxy_bin
                .as_ref()
                .map_or("absent".to_string(), |b| haproxy_version(b)),
            proxy.local_addr
        );
        for t in &targets {
            let mut conn = match t.kind {
                PathKind::Proxy => open(t, Auth::Oidc(&env.token)).await?,
                _ => open(t, Auth::Scram(&env.scram_cache)).await?,
            };
            println!("  {:<8} TLS: {}", t.kind.name(), cipher_of(&mut conn));
        }

        let mut rows = Vec::new();
        for &w in &settings.workloads {
            for &c in &settings.concurrency {
                let mut samples: Vec<Sample> = targets.iter().map(|_| Sample::default()).collect();
                let ops = (settings.ops / w.ops_divisor()).max(c);
                let per_round = ops.div_ceil(settings.rounds);
                let warm = (settings.warmup / w.ops_divisor()).max(c);
                for round in 0..settings.rounds {
                    let order: Vec<usize> = if round % 2 == 0 {
                        (0..targets.len()).collect()
                    } else {
                        (0..targets.len()).rev().collect()
                    };
                    for i in order {
                        let s = run_cell(&env, &targets[i], w, c, per_round, warm).await?;
                        samples[i].add(s);
                    }
                }
                for (t, s) in targets.iter().zip(samples) {
                    rows.push(row(w.name(), c, t.kind, s));
                }
                eprintln!("e2e: {} C={c} done ({:.0?})", w.name(), started.elapsed());
            }
        }
        let mut out = print_table("Round trips", &rows);

        let mut setup_rows = Vec::new();
        if settings.setups > 0 {
            let mut samples: Vec<Sample> = targets.iter().map(|_| Sample::default()).collect();
            let per_round = settings.setups.div_ceil(settings.rounds);
            for round in 0..settings.rounds {
                let order: Vec<usize> = if round % 2 == 0 {
                    (0..targets.len()).collect()
                } else {
                    (0..targets.len()).rev().collect()
                };
                for i in order {
                    let s = run_setups(&env, &targets[i], per_round, &tokens).await?;
                    samples[i].add(s);
                }
            }
            for (t, s) in targets.iter().zip(samples) {
                setup_rows.push(row("connect+auth+find", 1, t.kind, s));
            }
            out += &print_table(
                "Connection set-up (sequential; direct: TCP+SCRAM, haproxy: TLS+SCRAM, proxy: TLS+OIDC jwt, then the backend SCRAM on the first find)",
                &setup_rows,
            );
        }
        Ok::<_, String>(out)
    }));

    // Tear down in reverse order whatever happened above.
    drop(haproxy);
    proxy_rt.block_on(proxy.shutdown());
    infra.block_on(idp.shutdown());
    infra.block_on(backend.shutdown());
    let out = result?;
    if let Ok(path) = std::env::var("E2E_OUT") {
        std::fs::write(&path, &out).map_err(|e| format!("{path}: {e}"))?;
    }
    eprintln!("e2e: finished in {:.1?}", started.elapsed());
    Ok(())
}
