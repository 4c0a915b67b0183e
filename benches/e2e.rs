//! End-to-end benchmark: what the relay itself costs. One run measures three
//! paths side by side against two backends:
//!
//! 1. `direct`  — plain TCP + SCRAM-SHA-256 to the backend;
//! 2. `haproxy` — haproxy `mode tcp`, one thread, terminating TLS 1.3 with the
//!    dev certificate; SCRAM end to end;
//! 3. `proxy`   — the release `mongo-oidc-proxy` binary in its own process:
//!    TLS + MONGODB-OIDC, relaying as the granted SCRAM user.
//!
//! The main backend is `canned` (a benchmark stand-in that answers from
//! pre-encoded replies, see `e2e/canned.rs`), so the relays' cost is what
//! shows; SecantusDB is the smaller "real backend" table. The relay (haproxy
//! or the proxy) is pinned to CPU 0, this process (load generator, canned
//! backend, dev IdP) to CPU 1. Parts: the round-trip matrix, connection
//! storms, memory per idle signed-in connection, the SecantusDB table.
//! `cargo bench --bench e2e` runs it; see `benches/README.md` for the knobs.

// Test code may panic: that is how it fails. The bench pins processes,
// raises its descriptor limit and reads the clock tick rate through libc.
#![allow(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

#[path = "e2e/canned.rs"]
mod canned;
#[path = "e2e/svg.rs"]
mod svg;

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{rawdoc, RawDocumentBuf};
use futures::StreamExt as _;
use mongo_oidc_proxy::backend::{BackendConnection, BackendStream, SaltedPasswordCache};
use mongo_oidc_proxy_devkit::demo::secantus::{self, BackendUser, SecantusOptions};
use mongo_oidc_proxy_devkit::devidp::{DevIdp, DevIdpOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const USER: &str = "bench_rw";
const PASSWORD: &str = "bench-rw-password";
const DB: &str = "bench";
const AUDIENCE: &str = "api://mop-bench";
const PREFIX: &str = "bench";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Any single operation slower than this is reported as a failure.
const OP_TIMEOUT: Duration = Duration::from_secs(60);
const SMALL_DOCS: i32 = 100;
const STORM_CONCURRENCY: usize = 16;
/// Connections opened at once while filling the memory test.
const OPEN_CONCURRENCY: usize = 32;
/// Descriptors besides the connections: listeners, logs, the runtime, haproxy's extras.
const FD_SPARE: u64 = 400;
const RELAY_CPU: usize = 0;
const LOAD_CPU: usize = 1;

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------- documents

/// `{_id: i32, pad: string}` of exactly 128 bytes of BSON.
pub fn small_doc(i: i32) -> RawDocumentBuf {
    // 4 + (1+4+4) + (1+4+4+103+1) + 1 = 127 + ... : 24 + len = 128.
    rawdoc! { "_id": i, "pad": "p".repeat(104) }
}

/// `{_id: name, data: BinData}` of exactly `size` bytes of BSON.
pub struct Blob {
    name: &'static str,
    size: usize,
}

pub const BLOB_DOC: Blob = Blob {
    name: "16k",
    size: 16 * 1024,
};
/// One message of about 16 MiB each way (the document stays under maxBsonObjectSize).
pub const BIG_DOC: Blob = Blob {
    name: "16m",
    size: 16 * 1024 * 1024 - 1024,
};

impl Blob {
    pub fn doc(&self) -> RawDocumentBuf {
        // 4 + (1+4+4+len+1) + (1+5+4+1+n) + 1 = 26 + len + n
        let n = self.size - 26 - self.name.len();
        let data = bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: vec![0x5a; n],
        };
        rawdoc! { "_id": self.name, "data": data }
    }
}

// ---------------------------------------------------------------- settings

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `cargo test`: every part once, tiny, to prove the paths work.
    Smoke,
    Quick,
    Full,
}

struct Settings {
    mode: Mode,
    /// Timed length of one cell in one round.
    cell: Duration,
    /// Untimed warm-up per cell and round.
    warm: Duration,
    rounds: usize,
    concurrency: Vec<usize>,
    workloads: Vec<Workload>,
    /// Connections per storm variant and round.
    storm: usize,
    /// Connection counts for the memory test (empty: skipped).
    mem: Vec<usize>,
    mem_cycles: usize,
    /// Pause after opening or closing many connections before reading RSS.
    settle: Duration,
    /// Connections that carry one 16 MiB message each way in the memory test.
    mem_big: usize,
    real_concurrency: Vec<usize>,
    real_rounds: usize,
    parts: Vec<String>,
    pin: bool,
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

fn env_list(name: &str, default: &[usize], max: usize) -> Res<Vec<usize>> {
    match std::env::var(name) {
        Ok(v) if v.trim() == "none" || v.trim().is_empty() => Ok(Vec::new()),
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&c| (1..=max).contains(&c))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("{name}={v:?}: want e.g. 1,16 (1..={max})")),
        Err(_) => Ok(default.to_vec()),
    }
}

impl Settings {
    fn from_env() -> Res<Settings> {
        let quick = std::env::var("E2E_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
        // `cargo test` runs bench binaries without `--bench`: then this is a
        // smoke test that every path still works, not a measurement.
        let mode = if !std::env::args().any(|a| a == "--bench") {
            Mode::Smoke
        } else if quick {
            Mode::Quick
        } else {
            Mode::Full
        };
        let ms = |v: u64| Duration::from_millis(v);
        let (cell, warm, rounds, conc, storm, mem, big, real_c, real_r): (
            _,
            _,
            _,
            &[usize],
            _,
            &[usize],
            _,
            &[usize],
            _,
        ) = match mode {
            Mode::Smoke => (ms(100), ms(20), 1, &[1, 4], 8, &[10], 1, &[1], 1),
            Mode::Quick => (
                ms(300),
                ms(60),
                1,
                &[1, 16, 64, 256],
                200,
                &[1000],
                10,
                &[1, 16],
                1,
            ),
            Mode::Full => (
                ms(700),
                ms(150),
                3,
                &[1, 16, 64, 256],
                1000,
                &[1000, 10_000],
                50,
                &[1, 16],
                2,
            ),
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
        let parts = std::env::var("E2E_PARTS")
            .unwrap_or_else(|_| "matrix,storms,memory,real".into())
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        Ok(Settings {
            mode,
            cell: ms(
                env_usize("E2E_CELL_MS", cell.as_millis() as usize)?.clamp(10, 600_000) as u64,
            ),
            warm: ms(env_usize("E2E_WARM_MS", warm.as_millis() as usize)?.min(60_000) as u64),
            rounds: env_usize("E2E_ROUNDS", rounds)?.clamp(1, 20),
            concurrency: env_list("E2E_CONCURRENCY", conc, 1024)?,
            workloads,
            storm: env_usize("E2E_STORM", storm)?.min(100_000),
            mem: env_list("E2E_MEM", mem, 50_000)?,
            mem_cycles: env_usize("E2E_MEM_CYCLES", if mode == Mode::Smoke { 1 } else { 3 })?
                .min(20),
            settle: ms(if mode == Mode::Smoke { 50 } else { 500 }),
            mem_big: env_usize("E2E_MEM_BIG", big)?,
            real_concurrency: env_list("E2E_REAL_CONCURRENCY", real_c, 1024)?,
            real_rounds: env_usize("E2E_REAL_ROUNDS", real_r)?.clamp(1, 20),
            parts,
            pin: std::env::var("E2E_PIN").map_or(true, |v| v != "0"),
        })
    }

    fn part(&self, name: &str) -> bool {
        self.parts.iter().any(|p| p == name)
    }
}

// ---------------------------------------------------------------- workloads

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Find128,
    Find16K,
    Insert16K,
}

static NEXT_INSERT_ID: AtomicI64 = AtomicI64::new(1);

impl Workload {
    const ALL: [Workload; 3] = [Workload::Find128, Workload::Find16K, Workload::Insert16K];

    fn name(self) -> &'static str {
        match self {
            Workload::Find128 => "find_128b",
            Workload::Find16K => "find_16k",
            Workload::Insert16K => "insert_16k",
        }
    }

    fn command(self, i: usize, pad: &[u8]) -> RawDocumentBuf {
        match self {
            Workload::Find128 => {
                let id = (i % SMALL_DOCS as usize) as i32;
                rawdoc! { "find": "small", "filter": { "_id": id }, "limit": 1, "singleBatch": true, "$db": DB }
            }
            Workload::Find16K => {
                rawdoc! { "find": "blobs", "filter": { "_id": BLOB_DOC.name }, "limit": 1, "singleBatch": true, "$db": DB }
            }
            Workload::Insert16K => {
                // A fresh `_id` per insert so SecantusDB accepts every one;
                // the canned backend ignores it.
                let id = NEXT_INSERT_ID.fetch_add(1, Ordering::Relaxed);
                let data = bson::Binary {
                    subtype: bson::spec::BinarySubtype::Generic,
                    bytes: pad.to_vec(),
                };
                rawdoc! { "insert": "ins", "documents": [ { "_id": id, "data": data } ], "$db": DB }
            }
        }
    }

    fn check(self, reply: &RawDocumentBuf) -> Res<()> {
        check_reply(self.name(), self == Workload::Insert16K, reply)
    }
}

fn check_reply(what: &str, insert: bool, reply: &RawDocumentBuf) -> Res<()> {
    if insert {
        return match reply.get_i32("n") {
            Ok(1) => Ok(()),
            _ => Err(format!("{what} reply without n: 1: {reply:?}")),
        };
    }
    let n = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .map(|b| b.into_iter().count())
        .map_err(|e| format!("{what} reply has no cursor.firstBatch ({e})"))?;
    if n != 1 {
        return Err(format!("{what} returned {n} documents, expected 1"));
    }
    Ok(())
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
    /// The relay's process (haproxy or the proxy), for CPU and RSS.
    relay_pid: Option<u32>,
}

/// How a connection signs in.
#[derive(Clone, Copy)]
enum Auth<'a> {
    Scram(&'a Arc<SaltedPasswordCache>),
    Oidc(&'a str),
}

/// Connect, TLS when the path has it, `hello`, sign-in.
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
        conn.command(&rawdoc! { "hello": 1, "$db": "admin" })
            .await
            .map_err(|e| format!("{path}: hello: {e}"))?;
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

fn auth_for<'a>(target: &Target, env: &'a Env) -> Auth<'a> {
    match target.kind {
        PathKind::Proxy => Auth::Oidc(&env.token),
        _ => Auth::Scram(&env.scram_cache),
    }
}

async fn command(
    conn: &mut BackendConnection,
    body: &RawDocumentBuf,
    path: &str,
) -> Res<RawDocumentBuf> {
    let name = mongo_oidc_proxy::wire::op_msg::first_key(body)
        .unwrap_or("?")
        .to_string();
    tokio::time::timeout(OP_TIMEOUT, conn.command(body))
        .await
        .map_err(|_| format!("{path}: {name} took more than {OP_TIMEOUT:?}"))?
        .map_err(|e| format!("{path}: {name}: {e}"))
}

async fn run_op(
    conn: &mut BackendConnection,
    w: Workload,
    i: usize,
    path: &str,
    pad: &[u8],
) -> Res<()> {
    let reply = command(conn, &w.command(i, pad), path).await?;
    w.check(&reply).map_err(|e| format!("{path}: {e}"))
}

async fn find_small(conn: &mut BackendConnection, path: &str) -> Res<()> {
    let reply = command(conn, &Workload::Find128.command(0, &[]), path).await?;
    check_reply("find", false, &reply).map_err(|e| format!("{path}: {e}"))
}

// ---------------------------------------------------------------- processes

/// CPU time of a whole process, exited threads included (utime + stime, in ns;
/// clock-tick resolution, 10 ms: a cell's three rounds add up to 2.1 s).
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

/// Resident set size in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn cpus_available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread (and every thread or child it starts later) to `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; the libc macros only write inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Enough descriptors for 2 × the largest memory test in this process and in the children.
fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    if soft >= want {
        return soft;
    }
    let hard = if hard < want && rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_ok() {
        want
    } else {
        hard
    };
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, want.min(hard), hard);
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(soft, |(s, _)| s)
}

/// Kills and reaps a child on drop.
struct ChildGuard {
    child: Child,
    name: &'static str,
    log: Option<PathBuf>,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            })
            .unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` pinned to the relay CPU (when pinning) and dying with this process.
fn spawn_relay(mut cmd: Command, name: &'static str, log: &Path, pin: bool) -> Res<ChildGuard> {
    use std::os::unix::process::CommandExt;
    let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    // SAFETY: prctl and sched_setaffinity are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if pin {
                pin_to(RELAY_CPU)?;
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    Ok(ChildGuard {
        child,
        name,
        log: Some(log.to_path_buf()),
    })
}

/// Waits until `probe` succeeds, failing early if the child exits.
async fn wait_ready<F, Fut>(guard: &mut ChildGuard, mut probe: F) -> Res<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Res<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = guard.child.try_wait() {
            return Err(format!(
                "{} exited with {status}:\n{}",
                guard.name,
                guard.log_tail()
            ));
        }
        let last = match probe().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "{} not ready within 20 s: {last}\n{}",
                guard.name,
                guard.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> Res<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
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

/// The proxy's command, under `E2E_PROXY_WRAPPER` when set (a profiler, e.g.
/// `heaptrack -o /tmp/proxy`; the memory figures are then the wrapper's).
fn proxy_command() -> Command {
    let bin = env!("CARGO_BIN_EXE_mongo-oidc-proxy");
    let wrapper = std::env::var("E2E_PROXY_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let Some(first) = words.next() else {
        return Command::new(bin);
    };
    let mut cmd = Command::new(first);
    cmd.args(words).arg(bin);
    cmd
}

fn command_line(bin: &str, args: &[&str]) -> String {
    Command::new(bin)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::trim).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// haproxy in the foreground, one thread: TLS 1.3 AES-256-GCM with the dev
/// certificate, plain TCP to the backend.
fn haproxy_config(dir: &Path, port: u16, backend_port: u16, maxconn: usize) -> Res<String> {
    let certs = dir.join("certs");
    let mut pem = std::fs::read(certs.join("server.pem")).map_err(|e| e.to_string())?;
    pem.extend(std::fs::read(certs.join("server.key")).map_err(|e| e.to_string())?);
    let pem_path = dir.join("haproxy.pem");
    std::fs::write(&pem_path, pem).map_err(|e| e.to_string())?;
    Ok(format!(
        "global\n    nbthread 1\n    maxconn {maxconn}\n    ssl-default-bind-ciphersuites TLS_AES_256_GCM_SHA384\n    ssl-default-bind-options ssl-min-ver TLSv1.3\n\n\
         defaults\n    mode tcp\n    maxconn {maxconn}\n    timeout connect 5s\n    timeout client 600s\n    timeout server 600s\n\n\
         frontend fe\n    bind 127.0.0.1:{port} ssl crt {pem}{extra}\n    default_backend be\n\n\
         backend be\n    server s1 127.0.0.1:{backend_port} maxconn {maxconn}\n",
        pem = pem_path.display(),
        // For experiments, e.g. E2E_HAPROXY_BIND=" no-tls-tickets".
        extra = std::env::var("E2E_HAPROXY_BIND").unwrap_or_default(),
    ))
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn proxy_config(dir: &Path, port: u16, backend_port: u16, issuer: &str, max: usize) -> String {
    let certs = dir.join("certs");
    format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\ntls_cert = {cert}\ntls_key = {key}\n\n\
         [backend]\nuri = \"mongodb://127.0.0.1:{backend_port}/\"\n\n\
         [limits]\nauth_timeout_secs = 30\nmax_connections = {max}\nmax_connections_per_ip = {max}\n\n\
         [[identity_provider]]\nissuer = {issuer}\naudience = {aud}\nauth_name_prefix = {PREFIX:?}\nclient_id = \"bench-client\"\n\n\
         [[grant]]\nrole = \"{PREFIX}/writers\"\nbackend_user = {user}\nbackend_password_file = {pwf}\n",
        cert = toml_str(&certs.join("server.pem").display().to_string()),
        key = toml_str(&certs.join("server.key").display().to_string()),
        issuer = toml_str(issuer),
        aud = toml_str(AUDIENCE),
        user = toml_str(USER),
        pwf = toml_str(&dir.join("rw.password").display().to_string()),
    )
}

/// The relays in front of one backend, each in its own process.
struct Relays {
    haproxy: Option<ChildGuard>,
    haproxy_port: u16,
    proxy: ChildGuard,
    proxy_port: u16,
}

async fn start_relays(env: &Env, backend_port: u16, tag: &str) -> Res<Relays> {
    let dir = env.dir.as_path();
    let mut haproxy = None;
    let mut haproxy_port = 0;
    if let Some(bin) = &env.haproxy_bin {
        haproxy_port = free_port()?;
        let cfg = haproxy_config(dir, haproxy_port, backend_port, env.max_conns)?;
        let cfg_path = dir.join(format!("haproxy-{tag}.cfg"));
        std::fs::write(&cfg_path, &cfg).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.arg("-f").arg(&cfg_path).arg("-db");
        let mut g = spawn_relay(
            cmd,
            "haproxy",
            &dir.join(format!("haproxy-{tag}.log")),
            env.pin,
        )?;
        let t = env.target(PathKind::Haproxy, haproxy_port, None);
        wait_ready(&mut g, || async {
            open(&t, Auth::Scram(&env.scram_cache)).await.map(drop)
        })
        .await?;
        haproxy = Some(g);
    }
    let proxy_port = free_port()?;
    let cfg_path = dir.join(format!("proxy-{tag}.toml"));
    std::fs::write(
        &cfg_path,
        proxy_config(dir, proxy_port, backend_port, &env.issuer, env.max_conns),
    )
    .map_err(|e| e.to_string())?;
    let mut cmd = proxy_command();
    // The shipped default log level (info), to a file: its cost is part of the relay's.
    cmd.arg("--config").arg(&cfg_path);
    let mut proxy = spawn_relay(
        cmd,
        "mongo-oidc-proxy",
        &dir.join(format!("proxy-{tag}.log")),
        env.pin,
    )?;
    let t = env.target(PathKind::Proxy, proxy_port, None);
    wait_ready(&mut proxy, || async {
        let mut c = open(&t, Auth::Oidc(&env.token)).await?;
        find_small(&mut c, "proxy").await
    })
    .await?;
    Ok(Relays {
        haproxy,
        haproxy_port,
        proxy,
        proxy_port,
    })
}

impl Relays {
    fn targets(&self, env: &Env, backend_port: u16) -> Vec<Target> {
        let mut t = vec![env.target(PathKind::Direct, backend_port, None)];
        if let Some(h) = &self.haproxy {
            t.push(env.target(PathKind::Haproxy, self.haproxy_port, Some(h.pid())));
        }
        t.push(env.target(PathKind::Proxy, self.proxy_port, Some(self.proxy.pid())));
        t
    }
}

// ---------------------------------------------------------------- environment

struct Env {
    dir: PathBuf,
    /// One client TLS config per relay: rustls keys its session cache by
    /// server name only, and both relays are `127.0.0.1`, so a shared cache
    /// would offer one relay's tickets to the other.
    tls_haproxy: Arc<rustls::ClientConfig>,
    tls_proxy: Arc<rustls::ClientConfig>,
    scram_cache: Arc<SaltedPasswordCache>,
    /// The token every load connection signs in with.
    token: String,
    issuer: String,
    haproxy_bin: Option<PathBuf>,
    pin: bool,
    /// Both relays' connection limits: the memory test's largest N and some.
    max_conns: usize,
    /// Payload of a 16 KiB insert: 4 + (1+4+8) + (1+5+4+1+n) + 1 = 16 KiB.
    pad: Rc<Vec<u8>>,
}

impl Env {
    fn target(&self, kind: PathKind, port: u16, relay_pid: Option<u32>) -> Target {
        Target {
            kind,
            port,
            tls: match kind {
                PathKind::Direct => None,
                PathKind::Haproxy => Some(Arc::clone(&self.tls_haproxy)),
                PathKind::Proxy => Some(Arc::clone(&self.tls_proxy)),
            },
            relay_pid,
        }
    }
}

/// TLS 1.3 with AES-256-GCM only, so both relays run the same cipher.
fn client_tls(ca: &Path) -> Res<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Resumption on is rustls's default (and the Rust driver's); drivers on
    // OpenSSL (pymongo, node) do not resume across connections.
    if std::env::var("E2E_TLS_RESUME").is_ok_and(|v| v == "0") {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
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

fn resumed(conn: &mut BackendConnection) -> bool {
    match conn.stream_mut() {
        BackendStream::Tls(s) => matches!(
            s.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        ),
        BackendStream::Plain(_) => false,
    }
}

// ---------------------------------------------------------------- measurement

#[derive(Default)]
struct Sample {
    /// Per-operation latency, ns.
    lat: Vec<u64>,
    ops: usize,
    wall: Duration,
    relay_cpu: u64,
    resumed: usize,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.lat.extend(other.lat);
        self.ops += other.ops;
        self.wall += other.wall;
        self.relay_cpu += other.relay_cpu;
        self.resumed += other.resumed;
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

    fn relay_us_per_op(&self) -> f64 {
        self.relay_cpu as f64 / 1000.0 / self.ops.max(1) as f64
    }
}

fn relay_cpu(target: &Target) -> u64 {
    target.relay_pid.map_or(0, process_cpu_ns)
}

/// One cell: `c` connections signed in, warmed up, then round trips on every
/// connection until `cell` has passed, all starting together.
async fn run_cell(env: &Env, target: &Target, w: Workload, c: usize, s: &Settings) -> Res<Sample> {
    let path = target.kind.name();
    let mut conns = Vec::with_capacity(c);
    for _ in 0..c {
        conns.push(open(target, auth_for(target, env)).await?);
    }
    let barrier = Rc::new(tokio::sync::Barrier::new(c + 1));
    let mut tasks = tokio::task::JoinSet::new();
    let (warm, cell) = (s.warm, s.cell);
    for (k, mut conn) in conns.into_iter().enumerate() {
        let barrier = Rc::clone(&barrier);
        let pad = Rc::clone(&env.pad);
        tasks.spawn_local(async move {
            // The proxy opens its backend connection on the first relayed command: warm-up pays it.
            let warm_end = Instant::now() + warm;
            let mut i = k * 7919;
            run_op(&mut conn, w, i, path, &pad).await?;
            while Instant::now() < warm_end {
                i += 1;
                run_op(&mut conn, w, i, path, &pad).await?;
            }
            barrier.wait().await;
            let end = Instant::now() + cell;
            let mut lat = Vec::with_capacity(4096);
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                i += 1;
                run_op(&mut conn, w, i, path, &pad).await?;
                lat.push(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, String>(lat)
        });
    }
    // An error before the barrier would leave the others waiting: race it.
    let cpu0 = relay_cpu(target);
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
    let t0 = Instant::now();
    let mut sample = Sample::default();
    while let Some(r) = tasks.join_next().await {
        let lat = r.map_err(|e| format!("{path}: load task failed: {e}"))??;
        sample.ops += lat.len();
        sample.lat.extend(lat);
    }
    sample.wall = t0.elapsed();
    sample.relay_cpu = relay_cpu(target).saturating_sub(cpu0);
    Ok(sample)
}

/// `n` connections, 16 at a time: connect, TLS, hello, sign-in, one `find`,
/// close. `tokens`: one per connection (fresh), or empty for the repeated one.
async fn run_storm(env: &Env, target: &Target, n: usize, tokens: &[String]) -> Res<Sample> {
    let path = target.kind.name();
    let next = Rc::new(Cell::new(0usize));
    let cpu0 = relay_cpu(target);
    let t0 = Instant::now();
    let workers = (0..STORM_CONCURRENCY).map(|_| {
        let next = Rc::clone(&next);
        async move {
            let mut lat = Vec::new();
            let mut resumed_n = 0;
            loop {
                let i = next.get();
                if i >= n {
                    return Ok::<_, String>((lat, resumed_n));
                }
                next.set(i + 1);
                let t = Instant::now();
                let auth = match (target.kind, tokens.get(i)) {
                    (PathKind::Proxy, Some(jwt)) => Auth::Oidc(jwt),
                    _ => auth_for(target, env),
                };
                let mut conn = open(target, auth).await?;
                find_small(&mut conn, path).await?;
                resumed_n += usize::from(resumed(&mut conn));
                drop(conn);
                lat.push(t.elapsed().as_nanos() as u64);
            }
        }
    });
    let results = futures::future::join_all(workers).await;
    let mut sample = Sample {
        wall: t0.elapsed(),
        relay_cpu: relay_cpu(target).saturating_sub(cpu0),
        ..Sample::default()
    };
    for r in results {
        let (lat, res) = r?;
        sample.ops += lat.len();
        sample.lat.extend(lat);
        sample.resumed += res;
    }
    Ok(sample)
}

/// Rotates the path order by round, so each path runs first, middle and last.
fn order(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round) % n.max(1)).collect()
}

// ---------------------------------------------------------------- the parts

struct CellRow {
    workload: &'static str,
    c: usize,
    path: PathKind,
    ops_s: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    relay_us: f64,
}

async fn matrix(
    env: &Env,
    targets: &[Target],
    workloads: &[Workload],
    conc: &[usize],
    rounds: usize,
    s: &Settings,
    started: Instant,
) -> Res<Vec<CellRow>> {
    let mut rows = Vec::new();
    for &w in workloads {
        for &c in conc {
            let mut samples: Vec<Sample> = targets.iter().map(|_| Sample::default()).collect();
            for round in 0..rounds {
                for i in order(targets.len(), round) {
                    samples[i].add(run_cell(env, &targets[i], w, c, s).await?);
                }
            }
            for (t, mut smp) in targets.iter().zip(samples) {
                rows.push(CellRow {
                    workload: w.name(),
                    c,
                    path: t.kind,
                    ops_s: smp.ops_per_sec(),
                    p50: smp.pct_us(0.50),
                    p99: smp.pct_us(0.99),
                    p999: smp.pct_us(0.999),
                    relay_us: smp.relay_us_per_op(),
                });
            }
            eprintln!("e2e: {} C={c} done ({:.0?})", w.name(), started.elapsed());
        }
    }
    Ok(rows)
}

struct StormRow {
    label: &'static str,
    conns_s: f64,
    p50: f64,
    p99: f64,
    relay_us: f64,
    resumed: f64,
}

async fn storms(env: &Env, targets: &[Target], s: &Settings, idp: &DevIdp) -> Res<Vec<StormRow>> {
    // Pre-minted, one per proxy connection of every round, so the proxy
    // verifies an RS256 signature per connection (JWKS cache warm).
    let t = Instant::now();
    let fresh: Vec<String> = (0..s.storm * s.rounds)
        .map(|i| idp.token(&format!("bench-storm-{i}"), &["writers"], 3600))
        .collect();
    eprintln!("e2e: minted {} tokens in {:.1?}", fresh.len(), t.elapsed());
    // (label, target index, fresh tokens)
    let mut variants: Vec<(&'static str, usize, bool)> = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        match t.kind {
            PathKind::Direct => variants.push(("direct: TCP + SCRAM + find", i, false)),
            PathKind::Haproxy => variants.push(("haproxy: TLS + SCRAM + find", i, false)),
            PathKind::Proxy => {
                variants.push(("proxy: TLS + OIDC, repeated token + find", i, false));
                variants.push(("proxy: TLS + OIDC, fresh token + find", i, true));
            }
        }
    }
    let mut samples: Vec<Sample> = variants.iter().map(|_| Sample::default()).collect();
    for round in 0..s.rounds {
        for v in order(variants.len(), round) {
            let (_, ti, is_fresh) = variants[v];
            let toks = if is_fresh {
                &fresh[round * s.storm..(round + 1) * s.storm]
            } else {
                &[][..]
            };
            samples[v].add(run_storm(env, &targets[ti], s.storm, toks).await?);
        }
    }
    Ok(variants
        .iter()
        .zip(samples)
        .map(|(&(label, ..), mut smp)| StormRow {
            label,
            conns_s: smp.ops_per_sec(),
            p50: smp.pct_us(0.5),
            p99: smp.pct_us(0.99),
            relay_us: smp.relay_us_per_op(),
            resumed: smp.resumed as f64 / smp.ops.max(1) as f64,
        })
        .collect())
}

struct MemRow {
    path: PathKind,
    n: usize,
    base_mib: f64,
    open_kib: f64,
    cycles_kib: f64,
    closed_kib: f64,
    big_kib: Option<f64>,
    /// The most backend connections open at once while the N were opened,
    /// cycled and held.
    backend_peak: usize,
}

async fn open_many(env: &Env, target: &Target, n: usize) -> Res<Vec<BackendConnection>> {
    let path = target.kind.name();
    futures::stream::iter(0..n)
        .map(|_| async move {
            let mut c = open(target, auth_for(target, env)).await?;
            find_small(&mut c, path).await?;
            Ok::<_, String>(c)
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

async fn memory_one(
    env: &Env,
    target: &Target,
    n: usize,
    s: &Settings,
    backend: &canned::Canned,
) -> Res<MemRow> {
    let pid = target.relay_pid.ok_or("memory: relay without a pid")?;
    let path = target.kind.name();
    // Warm the lazily built parts (JWKS, pools, allocator arenas) outside the baseline.
    drop(open_many(env, target, OPEN_CONCURRENCY).await?);
    tokio::time::sleep(s.settle).await;
    let base = rss_kib(pid);
    let per = |rss: u64| (rss as f64 - base as f64) / n as f64;
    backend.reset_peak();
    let mut conns = open_many(env, target, n).await?;
    tokio::time::sleep(s.settle).await;
    let open_kib = per(rss_kib(pid));
    for _ in 0..s.mem_cycles {
        drop(conns);
        tokio::time::sleep(s.settle).await;
        conns = open_many(env, target, n).await?;
        tokio::time::sleep(s.settle).await;
    }
    let cycles_kib = per(rss_kib(pid));
    let backend_peak = backend.peak.load(std::sync::atomic::Ordering::SeqCst);
    let mut big_kib = None;
    let sample = s.mem_big.min(n);
    if sample > 0 {
        let insert = rawdoc! { "insert": "ins", "documents": [BIG_DOC.doc()], "$db": DB };
        let find =
            rawdoc! { "find": "huge", "filter": {}, "limit": 1, "singleBatch": true, "$db": DB };
        for c in conns.iter_mut().take(sample) {
            let r = command(c, &insert, path).await?;
            check_reply("16 MiB insert", true, &r)?;
            let r = command(c, &find, path).await?;
            check_reply("16 MiB find", false, &r)?;
        }
        tokio::time::sleep(s.settle).await;
        big_kib = Some(per(rss_kib(pid)));
    }
    drop(conns);
    tokio::time::sleep(s.settle).await;
    Ok(MemRow {
        path: target.kind,
        n,
        base_mib: base as f64 / 1024.0,
        open_kib,
        cycles_kib,
        closed_kib: per(rss_kib(pid)),
        big_kib,
        backend_peak,
    })
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

fn matrix_table(title: &str, rows: &[CellRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| workload | C | path | ops/s | p50 µs | p99 µs | p99.9 µs | added p50 vs direct | relay CPU µs/op | ops/s proxy / haproxy |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let other = |k: PathKind| {
            rows.iter()
                .find(|o| o.workload == r.workload && o.c == r.c && o.path == k)
        };
        let added = match (r.path, other(PathKind::Direct)) {
            (PathKind::Direct, _) | (_, None) => String::new(),
            (_, Some(d)) => format!("{:+.0} µs", r.p50 - d.p50),
        };
        let ratio = match (r.path, other(PathKind::Haproxy)) {
            (PathKind::Proxy, Some(h)) if h.ops_s > 0.0 => format!("{:.2}×", r.ops_s / h.ops_s),
            _ => String::new(),
        };
        let relay = if r.path == PathKind::Direct {
            "-".into()
        } else {
            format!("{:.1}", r.relay_us)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {added} | {relay} | {ratio} |",
            r.workload,
            r.c,
            r.path.name(),
            r.ops_s,
            fmt_us(r.p50),
            fmt_us(r.p99),
            fmt_us(r.p999),
        );
    }
    out
}

/// One line per cell: the two round-trip targets.
fn summary_table(rows: &[CellRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Summary: proxy against haproxy (canned backend)\n"
    );
    let _ = writeln!(
        out,
        "| workload | C | ops/s proxy / haproxy | added p50 proxy | added p50 haproxy | relay CPU µs/op proxy / haproxy |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for p in rows.iter().filter(|r| r.path == PathKind::Proxy) {
        let find = |k: PathKind| {
            rows.iter()
                .find(|o| o.workload == p.workload && o.c == p.c && o.path == k)
        };
        let (Some(d), Some(h)) = (find(PathKind::Direct), find(PathKind::Haproxy)) else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.2}× | {:+.0} µs | {:+.0} µs | {:.1} / {:.1} |",
            p.workload,
            p.c,
            p.ops_s / h.ops_s.max(1e-9),
            p.p50 - d.p50,
            h.p50 - d.p50,
            p.relay_us,
            h.relay_us
        );
    }
    out
}

fn storm_table(rows: &[StormRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Connection storms ({STORM_CONCURRENCY} concurrent; each: connect, TLS, hello, sign-in, one find, close)\n"
    );
    let _ = writeln!(
        out,
        "| variant | conns/s | p50 µs | p99 µs | relay CPU µs/conn | TLS resumed | vs haproxy |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let h = rows
        .iter()
        .find(|r| r.label.starts_with("haproxy"))
        .map(|r| r.conns_s);
    for r in rows {
        let vs = match h {
            Some(h) if r.label.starts_with("proxy") && h > 0.0 => format!("{:.2}×", r.conns_s / h),
            _ => String::new(),
        };
        let relay = if r.label.starts_with("direct") {
            "-".into()
        } else {
            format!("{:.0}", r.relay_us)
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {relay} | {:.0}% | {vs} |",
            r.label,
            r.conns_s,
            fmt_us(r.p50),
            fmt_us(r.p99),
            r.resumed * 100.0
        );
    }
    out
}

fn memory_table(rows: &[MemRow], s: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Memory per idle signed-in connection (relay RSS growth / N, KiB)\n"
    );
    let _ = writeln!(
        out,
        "Each connection: TLS, sign-in, one find, then idle. `after {c} cycles`: closed and reopened {c} times. \
         `after 16 MiB`: {b} of the N connections then sent one 16 MiB insert and received one 16 MiB find reply; \
         the column is the growth per connection over all N, and in brackets per connection that carried the messages.\n",
        c = s.mem_cycles,
        b = s.mem_big
    );
    let _ = writeln!(
        out,
        "| relay | N | RSS before (MiB) | open | after {} cycles | after 16 MiB | after closing all | backend connections (most at once) |",
        s.mem_cycles
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let big = r.big_kib.map_or("-".into(), |b| {
            let sample = s.mem_big.min(r.n).max(1) as f64;
            format!(
                "{b:.1} ({:.0} per carrier)",
                (b - r.cycles_kib) * r.n as f64 / sample
            )
        });
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {big} | {:.1} | {} |",
            r.path.name(),
            r.n,
            r.base_mib,
            r.open_kib,
            r.cycles_kib,
            r.closed_kib,
            r.backend_peak
        );
    }
    out
}

fn plot(rows: &[CellRow], title: &str) -> String {
    let colour = |k: PathKind| match k {
        PathKind::Direct => "#888888",
        PathKind::Haproxy => "#1f77b4",
        PathKind::Proxy => "#d62728",
    };
    let mut workloads: Vec<&str> = rows.iter().map(|r| r.workload).collect();
    workloads.dedup();
    let panels = workloads
        .iter()
        .map(|&w| svg::Panel {
            title: w.to_string(),
            series: [PathKind::Direct, PathKind::Haproxy, PathKind::Proxy]
                .iter()
                .filter_map(|&k| {
                    let points: Vec<(usize, f64)> = rows
                        .iter()
                        .filter(|r| r.workload == w && r.path == k)
                        .map(|r| (r.c, r.ops_s))
                        .collect();
                    (!points.is_empty()).then(|| svg::Series {
                        label: k.name().into(),
                        colour: colour(k),
                        points,
                    })
                })
                .collect(),
        })
        .collect::<Vec<_>>();
    svg::chart(title, &panels)
}

fn machine(haproxy: Option<&Path>, cpus: usize) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|k| k.parse::<u64>().ok())
        .map_or("?".into(), |k| format!("{:.0} GiB", k as f64 / 1048576.0));
    let rev = command_line("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    format!(
        "- date: {}\n- commit: {rev}{}\n- machine: {} × {cpu}, {mem} RAM; {os}, kernel {}\n- {}; haproxy: {}\n",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        if dirty { " (with uncommitted changes)" } else { "" },
        cpus,
        kernel.trim(),
        command_line("rustc", &["--version"]),
        haproxy.map_or("absent".into(), |b| command_line(&b.display().to_string(), &["-v"])),
    )
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

fn run(mut settings: Settings) -> Res<()> {
    let started = Instant::now();
    // Before any thread exists, so every thread of this process inherits it.
    let cpus = cpus_available();
    settings.pin = settings.pin && cpus >= 2 && pin_to(LOAD_CPU).is_ok();
    let wanted = settings.mem.iter().copied().max().unwrap_or(0);
    // This process holds both ends of N connections (client and canned
    // backend); each relay holds 2 N and inherits this limit.
    let nofile = raise_nofile(4 * wanted as u64 + 16_384);
    // Without CAP_SYS_RESOURCE the hard limit stays: the largest N that fits.
    let fits = (nofile.saturating_sub(FD_SPARE) / 2) as usize;
    let mut mem_note = String::new();
    if wanted > fits {
        mem_note = format!(
            "- memory N lowered from {wanted} to {fits}: RLIMIT_NOFILE is {nofile} and could not be raised (no CAP_SYS_RESOURCE); each side holds 2 N descriptors\n"
        );
        eprint!("e2e: {mem_note}");
        for n in &mut settings.mem {
            *n = (*n).min(fits);
        }
        settings.mem.dedup();
    }
    let max_mem = settings.mem.iter().copied().max().unwrap_or(0);
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let certs = dir.path().join("certs");
    mongo_oidc_proxy_devkit::devcerts::generate(&certs, &[])
        .map_err(|e| format!("dev certs: {e}"))?;
    std::fs::write(dir.path().join("rw.password"), PASSWORD).map_err(|e| e.to_string())?;

    // Canned backend, IdP, SecantusDB's launcher: one worker thread. The load generator: this thread.
    let infra = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-infra")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
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
    let haproxy_bin = find_haproxy();
    if haproxy_bin.is_none() {
        eprintln!(
            "e2e: haproxy not found; the haproxy path is skipped. Install it with \
             `apt-get install -y haproxy` (Debian/Ubuntu, as root) or set E2E_HAPROXY=/path/to/haproxy (E2E_HAPROXY=none skips it)."
        );
    }
    let env = Env {
        dir: dir.path().to_path_buf(),
        tls_haproxy: client_tls(&certs.join("ca.pem"))?,
        tls_proxy: client_tls(&certs.join("ca.pem"))?,
        scram_cache: Arc::new(SaltedPasswordCache::new()),
        token: idp.token("bench-load", &["writers"], 3600),
        issuer: idp.issuer().to_string(),
        haproxy_bin: haproxy_bin.clone(),
        pin: settings.pin,
        max_conns: (max_mem + 2 * OPEN_CONCURRENCY).max(1000),
        pad: Rc::new(vec![0x5a; 16 * 1024 - 29]),
    };
    let s = &settings;
    let mut out = String::new();
    let _ = writeln!(out, "# mongo-oidc-proxy end-to-end benchmark\n");
    out += &machine(haproxy_bin.as_deref(), cpus);
    let _ = writeln!(
        out,
        "- mode: {}; {} ms per cell and round after {} ms warm-up, {} rounds (path order rotated), concurrency {:?}; storms {} connections per variant and round; memory N {:?}\n- pinning: {}\n",
        match s.mode {
            Mode::Smoke => "smoke (cargo test; not a measurement)",
            Mode::Quick => "QUICK (E2E_QUICK=1; short cells, one round: not a measurement)",
            Mode::Full => "full",
        },
        s.cell.as_millis(),
        s.warm.as_millis(),
        s.rounds,
        s.concurrency,
        s.storm,
        s.mem,
        if s.pin {
            "relay (haproxy or proxy) on CPU 0; load generator, canned backend, IdP (and SecantusDB) on CPU 1"
        } else {
            "off (fewer than 2 CPUs or E2E_PIN=0)"
        }
    );
    out += &mem_note;
    print!("{out}");
    eprintln!("e2e: {}", estimate(s));
    let mut svg_out = None;

    let canned = infra.block_on(async { canned::start(USER, PASSWORD).await });
    let result = client_rt.block_on(tokio::task::LocalSet::new().run_until(async {
        if s.part("matrix") || s.part("storms") {
            let relays = start_relays(&env, canned.port, "canned").await?;
            let targets = relays.targets(&env, canned.port);
            for t in &targets {
                let mut c = open(t, auth_for(t, &env)).await?;
                let line = format!("- {} TLS: {}\n", t.kind.name(), cipher_of(&mut c));
                print!("{line}");
                out += &line;
            }
            if s.part("matrix") {
                let rows = matrix(&env, &targets, &s.workloads, &s.concurrency, s.rounds, s, started).await?;
                let t = matrix_table("Round trips, canned backend", &rows);
                print!("{t}");
                out += &t;
                let t = summary_table(&rows);
                print!("{t}");
                out += &t;
                svg_out = Some(plot(&rows, "Round trips against the canned backend: ops/s by connections (relay pinned to one core)"));
            }
            if s.part("storms") {
                let t = storm_table(&storms(&env, &targets, s, &idp).await?);
                eprintln!("e2e: storms done ({:.0?})", started.elapsed());
                print!("{t}");
                out += &t;
            }
        }
        if s.part("memory") && !s.mem.is_empty() {
            let mut mem_rows = Vec::new();
            for &n in &s.mem {
                // Fresh relays per N, so one test's leftovers are not the next one's baseline.
                let relays = start_relays(&env, canned.port, &format!("mem{n}")).await?;
                for t in relays.targets(&env, canned.port).iter().filter(|t| t.kind != PathKind::Direct) {
                    mem_rows.push(memory_one(&env, t, n, s, &canned).await?);
                    eprintln!("e2e: memory {} N={n} done ({:.0?})", t.kind.name(), started.elapsed());
                }
            }
            let t = memory_table(&mem_rows, s);
            print!("{t}");
            out += &t;
        }
        if s.part("real") && !s.real_concurrency.is_empty() {
            let t = real_backend(&env, s, &infra, started).await?;
            print!("{t}");
            out += &t;
        }
        Ok::<_, String>(())
    }));
    drop(client_rt);
    infra.block_on(idp.shutdown());
    result?;
    let _ = writeln!(out, "\ntotal bench time: {:.0?}", started.elapsed());
    write_results(s, &out, svg_out.as_deref())?;
    eprintln!("e2e: finished in {:.1?}", started.elapsed());
    Ok(())
}

/// A rough forecast from the settings, so a long run can be planned; rates
/// are this 2-core machine's (handshakes about 1,500/s, cells as set).
fn estimate(s: &Settings) -> String {
    let cell = (s.cell + s.warm).as_secs_f64() + 0.05;
    let w = s.workloads.len() as f64;
    let open: f64 = s.concurrency.iter().map(|&c| c as f64 / 1500.0).sum();
    let m = if s.part("matrix") {
        w * 3.0 * s.rounds as f64 * (s.concurrency.len() as f64 * cell + open)
    } else {
        0.0
    };
    let st = if s.part("storms") {
        4.0 * (s.rounds * s.storm) as f64 / 700.0
    } else {
        0.0
    };
    let mem = if s.part("memory") {
        s.mem
            .iter()
            .map(|&n| {
                2.0 * (n + OPEN_CONCURRENCY) as f64 * (s.mem_cycles + 2) as f64 / 1500.0
                    + 2.0 * (s.mem_cycles as f64 * 2.0 + 4.0) * s.settle.as_secs_f64()
                    + 2.0 * 0.1 * s.mem_big.min(n) as f64
            })
            .sum()
    } else {
        0.0
    };
    let real = if s.part("real") {
        5.0 + w * 3.0 * (s.real_rounds * s.real_concurrency.len()) as f64 * cell
    } else {
        0.0
    };
    format!(
        "expected run time about {:.0} s: matrix {m:.0} s, storms {st:.0} s (+ minting), memory {mem:.0} s, SecantusDB {real:.0} s",
        m + st + mem + real
    )
}

/// SecantusDB behind the same three paths: fewer cells, the database's cost included.
async fn real_backend(
    env: &Env,
    s: &Settings,
    infra: &tokio::runtime::Runtime,
    started: Instant,
) -> Res<String> {
    let tools = std::env::var_os("MOP_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools"));
    let secantusd = secantus::find_secantusd(Some(&tools)).ok_or_else(|| {
        "secantusd-py not found: run scripts/setup-tools.sh (or set MOP_TOOLS / MOP_SECANTUSD; E2E_PARTS without `real` skips it)"
            .to_string()
    })?;
    let backend = infra
        .spawn(secantus::start(SecantusOptions {
            secantusd,
            users: vec![BackendUser::new(USER, PASSWORD, &[("readWrite", DB)])],
            data_dir: None,
            port: None,
        }))
        .await
        .map_err(|e| format!("SecantusDB: {e}"))?
        .map_err(|e| format!("SecantusDB: {e}"))?;
    let result = async {
        seed(env, backend.port).await?;
        let relays = start_relays(env, backend.port, "secantus").await?;
        let targets = relays.targets(env, backend.port);
        let rows = matrix(env, &targets, &s.workloads, &s.real_concurrency, s.real_rounds, s, started).await?;
        drop(relays);
        Ok::<_, String>(matrix_table(
            &format!(
                "Round trips, SecantusDB {} (a real backend, Python: its cost dominates; {} rounds)",
                backend.port, s.real_rounds
            ),
            &rows,
        )
        .replace(&format!("SecantusDB {} ", backend.port), "SecantusDB "))
    }
    .await;
    let _ = infra.spawn(backend.shutdown()).await;
    result
}

/// 100 small documents of 128 B and the 16 KiB one.
async fn seed(env: &Env, port: u16) -> Res<()> {
    let t = env.target(PathKind::Direct, port, None);
    let mut conn = open(&t, Auth::Scram(&env.scram_cache)).await?;
    let mut docs = bson::RawArrayBuf::new();
    for i in 0..SMALL_DOCS {
        docs.push(small_doc(i));
    }
    let cmds = [
        rawdoc! { "insert": "small", "documents": docs, "$db": DB },
        rawdoc! { "insert": "blobs", "documents": [BLOB_DOC.doc()], "$db": DB },
    ];
    for cmd in &cmds {
        command(&mut conn, cmd, "direct")
            .await
            .map_err(|e| format!("seeding the backend: {e}"))?;
    }
    Ok(())
}

/// Full and quick runs write `benches/results/{latest,quick}.{md,svg}`
/// (or `E2E_RESULTS`); smoke runs only `E2E_OUT`.
fn write_results(s: &Settings, md: &str, svg: Option<&str>) -> Res<()> {
    if let Ok(path) = std::env::var("E2E_OUT") {
        std::fs::write(&path, md).map_err(|e| format!("{path}: {e}"))?;
    }
    let stem = match s.mode {
        Mode::Smoke => return Ok(()),
        Mode::Quick => "quick",
        Mode::Full => "latest",
    };
    let dir = std::env::var_os("E2E_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let md_path = dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    eprintln!("e2e: wrote {}", md_path.display());
    if let Some(svg) = svg {
        let p = dir.join(format!("{stem}.svg"));
        std::fs::write(&p, svg).map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("e2e: wrote {}", p.display());
    }
    Ok(())
}
