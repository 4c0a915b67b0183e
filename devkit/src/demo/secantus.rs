//! Launches a SecantusDB server (`secantusd-py`, PyPI `SecantusDB`) as a
//! MongoDB-compatible backend for the demo and the integration tests.
//!
//! SecantusDB enables authentication like mongod does: users are created on a
//! server started without `--auth`, which is then restarted with `--auth` on
//! the same storage directory. [`start`] does exactly that, sending the
//! `createUser` commands itself over OP_MSG with this crate's wire codec, so no
//! Python client is needed for provisioning.
//!
//! The server runs in `--standalone` mode: its `hello` then carries no replica
//! set fields and its replies no `$clusterTime`, so a proxy in front of it
//! sees the simplest topology. (Replica-set mode was tried as well; both work
//! behind a proxy, and users and data survive the restart in both.)

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::raw::{cstr, CStr};
use bson::{rawdoc, RawArrayBuf, RawBsonRef, RawDocumentBuf};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use mongo_oidc_proxy::wire::{self, OpCode, OpMsg};

/// How long to wait for the server to accept connections after a start.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM gets before SIGKILL: an idle SecantusDB needs ~2 s, a
/// loaded machine more, and a SIGKILL during its restart-with-users step has
/// left WiredTiger asking for salvage.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Timeout of one provisioning command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of the server's stderr is kept for error messages.
const LOG_TAIL_BYTES: usize = 64 * 1024;
/// Attempts when the port is picked here and another process takes it first.
const PORT_ATTEMPTS: usize = 3;

const SETUP_HINT: &str = "run scripts/setup-tools.sh (it installs SecantusDB into .tools/venv), \
                          or point $MOP_SECANTUSD at a secantusd-py binary";

/// A SCRAM-SHA-256 user created on the backend before auth is switched on.
#[derive(Debug, Clone)]
pub struct BackendUser {
    pub name: String,
    pub password: String,
    /// `(role, db)` pairs, e.g. `("readWrite", "app")`.
    pub roles: Vec<(String, String)>,
}

impl BackendUser {
    pub fn new(name: &str, password: &str, roles: &[(&str, &str)]) -> BackendUser {
        BackendUser {
            name: name.to_string(),
            password: password.to_string(),
            roles: roles
                .iter()
                .map(|(r, d)| (r.to_string(), d.to_string()))
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SecantusOptions {
    /// The `secantusd-py` executable (see [`find_secantusd`]).
    pub secantusd: PathBuf,
    /// Users to create (all in `admin`). With none, the server runs without `--auth`.
    pub users: Vec<BackendUser>,
    /// Storage directory; `None` = a temporary directory removed on drop.
    pub data_dir: Option<PathBuf>,
    /// Port on 127.0.0.1; `None` = a free port picked at start.
    pub port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecantusError {
    #[error("SecantusDB server binary {} not found ({SETUP_HINT})", binary.display())]
    NotFound { binary: PathBuf },
    #[error("cannot start {}: {source} ({SETUP_HINT})", binary.display())]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exited with {status} before accepting connections on port {port}; its stderr:\n{stderr}", binary.display())]
    Died {
        binary: PathBuf,
        port: u16,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{} did not accept connections on 127.0.0.1:{port} within {timeout:?}; its stderr:\n{stderr}", binary.display())]
    StartTimeout {
        binary: PathBuf,
        port: u16,
        timeout: Duration,
        stderr: String,
    },
    #[error("createUser {user} on 127.0.0.1:{port} failed: {reason}")]
    CreateUser {
        user: String,
        port: u16,
        reason: String,
    },
    #[error("I/O error while {doing}: {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },
}

/// A SecantusDB server that is stopped (SIGTERM, then SIGKILL after 5 s) by
/// [`RunningSecantus::shutdown`] or on drop. A temporary data directory is
/// removed once the process has exited.
#[derive(Debug)]
pub struct RunningSecantus {
    /// `mongodb://127.0.0.1:PORT/`
    pub uri: String,
    pub port: u16,
    pub data_dir: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<u8>>>,
    temp_dir: Option<TempDir>,
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> std::io::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("secantus-{}-{nanos:08x}-{n}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl RunningSecantus {
    /// The last 64 KiB the server wrote to stderr (its log).
    pub fn log_tail(&self) -> String {
        tail_string(&self.stderr)
    }

    /// The `secantusd-py` executable this server runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Kills the server at once (SIGKILL), as a crash would; its data stays.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port and storage, with auth and
    /// `extra` flags (e.g. `--sync-on-commit`); stops it first if it runs.
    pub async fn restart_with(&mut self, extra: &[&str]) -> Result<(), SecantusError> {
        if let Some(child) = self.child.take() {
            stop_async(child).await;
        }
        let (child, stderr) = spawn(&self.binary, self.port, &self.data_dir, true, extra)?;
        let child = wait_ready(&self.binary, child, &stderr, self.port).await?;
        self.child = Some(child);
        self.stderr = stderr;
        Ok(())
    }

    /// Stops the server and waits for it to exit.
    pub async fn shutdown(mut self) {
        if let Some(child) = self.child.take() {
            stop_async(child).await;
        }
        // Drop removes the temporary directory.
    }
}

impl Drop for RunningSecantus {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_blocking(child);
        }
        // The process has exited (or been killed), so the directory can go.
        drop(self.temp_dir.take());
    }
}

/// Finds `secantusd-py`: `$MOP_SECANTUSD`, then `<tools>/venv/bin/secantusd-py`
/// (`tools` defaults to `$MOP_TOOLS`), then `PATH`.
pub fn find_secantusd(tools_dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOP_SECANTUSD") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    let tools = tools_dir
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("MOP_TOOLS").map(PathBuf::from));
    if let Some(tools) = tools {
        let p = tools.join("venv").join("bin").join("secantusd-py");
        if p.is_file() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("secantusd-py"))
        .find(|p| p.is_file())
}

/// Starts SecantusDB on 127.0.0.1, creates `opts.users`, and restarts it with
/// `--auth` (when there are users). Returns once the authenticated server
/// accepts connections.
pub async fn start(opts: SecantusOptions) -> Result<RunningSecantus, SecantusError> {
    if !opts.secantusd.is_file() {
        return Err(SecantusError::NotFound {
            binary: opts.secantusd.clone(),
        });
    }
    let (temp_dir, data_dir) = match &opts.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| SecantusError::Io {
                doing: format!("creating {}", d.display()),
                source: e,
            })?;
            (None, d.clone())
        }
        None => {
            let t = TempDir::create().map_err(|e| SecantusError::Io {
                doing: "creating a temporary data directory".into(),
                source: e,
            })?;
            let p = t.0.clone();
            (Some(t), p)
        }
    };

    let (child, stderr, port) = launch(&opts, &data_dir, false, opts.port).await?;
    if opts.users.is_empty() {
        return Ok(running(opts, data_dir, temp_dir, child, stderr, port));
    }
    for user in &opts.users {
        if let Err(e) = create_user(port, user).await {
            stop_async(child).await;
            return Err(e);
        }
    }
    // Auth is switched on by restarting on the same storage directory, on the
    // same port unless another process took it meanwhile.
    stop_async(child).await;
    let (child, stderr, port) = launch(&opts, &data_dir, true, Some(port)).await?;
    Ok(running(opts, data_dir, temp_dir, child, stderr, port))
}

fn running(
    opts: SecantusOptions,
    data_dir: PathBuf,
    temp_dir: Option<TempDir>,
    child: Child,
    stderr: LogBuf,
    port: u16,
) -> RunningSecantus {
    RunningSecantus {
        uri: format!("mongodb://127.0.0.1:{port}/"),
        port,
        data_dir,
        binary: opts.secantusd,
        child: Some(child),
        stderr,
        temp_dir,
    }
}

/// Spawns the server and waits until it is ready. When the port was picked
/// here (`opts.port` is `None`) and turns out to be taken, retries on another.
async fn launch(
    opts: &SecantusOptions,
    data_dir: &Path,
    auth: bool,
    first_port: Option<u16>,
) -> Result<(Child, LogBuf, u16), SecantusError> {
    let mut next = first_port;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = match next.take() {
            Some(p) => p,
            None => free_port()?,
        };
        let (child, stderr) = spawn(&opts.secantusd, port, data_dir, auth, &[])?;
        match wait_ready(&opts.secantusd, child, &stderr, port).await {
            Ok(child) => return Ok((child, stderr, port)),
            Err(SecantusError::Died { stderr: log, .. })
                if opts.port.is_none()
                    && attempt < PORT_ATTEMPTS
                    && log.contains("Address already in use") => {}
            Err(e) => return Err(e),
        }
    }
}

fn free_port() -> Result<u16, SecantusError> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| SecantusError::Io {
            doing: "picking a free loopback port".into(),
            source: e,
        })
}

type LogBuf = Arc<Mutex<Vec<u8>>>;

/// The daemon must not outlive the process that started it, even when that
/// process never runs its destructors (a test binary's shared backend, a
/// killed demo): Linux delivers SIGTERM to the child when its parent thread ends.
#[cfg(target_os = "linux")]
fn stop_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn stop_with_parent(_cmd: &mut Command) {}

fn spawn(
    binary: &Path,
    port: u16,
    data_dir: &Path,
    auth: bool,
    extra: &[&str],
) -> Result<(Child, LogBuf), SecantusError> {
    let mut cmd = Command::new(binary);
    cmd.arg("--host")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        .arg("--storage-path")
        .arg(data_dir)
        .arg("--standalone");
    if auth {
        cmd.arg("--auth");
    }
    cmd.args(extra);
    // The daemon auto-discovers ./secantusd.toml; run it where there is none.
    cmd.current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    stop_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| SecantusError::Spawn {
        binary: binary.to_path_buf(),
        source: e,
    })?;
    let buf: LogBuf = Arc::new(Mutex::new(Vec::new()));
    if let Some(mut pipe) = child.stderr.take() {
        let buf = buf.clone();
        // Drains the log for the process's whole life so it never blocks on a
        // full pipe; keeps only the tail.
        tokio::spawn(async move {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut b) = buf.lock() {
                            b.extend_from_slice(&chunk[..n]);
                            if b.len() > LOG_TAIL_BYTES {
                                let cut = b.len() - LOG_TAIL_BYTES;
                                b.drain(..cut);
                            }
                        }
                    }
                }
            }
        });
    }
    Ok((child, buf))
}

fn tail_string(buf: &LogBuf) -> String {
    match buf.lock() {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    }
}

/// Polls until the server logs that it listens and the port accepts; fails if the process exits first or the
/// timeout passes (the process is then stopped).
async fn wait_ready(
    binary: &Path,
    mut child: Child,
    stderr: &LogBuf,
    port: u16,
) -> Result<Child, SecantusError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listening = format!("listening on 127.0.0.1:{port}");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // Give the log reader a moment to collect the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(SecantusError::Died {
                binary: binary.to_path_buf(),
                port,
                status,
                stderr: tail_string(stderr),
            });
        }
        // The log line proves the port is this server's, not another
        // process's; the connect proves it accepts.
        if tail_string(stderr).contains(&listening)
            && matches!(
                tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await,
                Ok(Ok(_))
            )
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            stop_async(child).await;
            return Err(SecantusError::StartTimeout {
                binary: binary.to_path_buf(),
                port,
                timeout: START_TIMEOUT,
                stderr: tail_string(stderr),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the user, or updates its password and roles when a reused data
/// directory already has it (code 51003).
async fn create_user(port: u16, user: &BackendUser) -> Result<(), SecantusError> {
    match user_command(port, user, "createUser").await {
        Err(UserCmdError::Server { code: 51003, .. }) => user_command(port, user, "updateUser")
            .await
            .map_err(|e| e.into_error(port, user)),
        other => other.map_err(|e| e.into_error(port, user)),
    }
}

enum UserCmdError {
    Server { code: i32, errmsg: String },
    Other(String),
}

impl UserCmdError {
    fn into_error(self, port: u16, user: &BackendUser) -> SecantusError {
        let reason = match self {
            UserCmdError::Server { code, errmsg } => {
                format!("server replied code {code}: {errmsg}")
            }
            UserCmdError::Other(s) => s,
        };
        SecantusError::CreateUser {
            user: user.name.clone(),
            port,
            reason,
        }
    }
}

async fn user_command(port: u16, user: &BackendUser, verb: &str) -> Result<(), UserCmdError> {
    let mut roles = RawArrayBuf::new();
    for (role, db) in &user.roles {
        roles.push(rawdoc! { "role": role.as_str(), "db": db.as_str() });
    }
    let mut mechanisms = RawArrayBuf::new();
    mechanisms.push("SCRAM-SHA-256");
    let verb_key: &CStr = verb
        .try_into()
        .map_err(|e| UserCmdError::Other(format!("{verb}: {e}")))?;
    let mut cmd = RawDocumentBuf::new();
    cmd.append(verb_key, user.name.as_str());
    cmd.append(cstr!("pwd"), user.password.as_str());
    cmd.append(cstr!("roles"), roles);
    cmd.append(cstr!("mechanisms"), mechanisms);
    cmd.append(cstr!("$db"), "admin");
    let reply = tokio::time::timeout(COMMAND_TIMEOUT, command(port, &cmd))
        .await
        .map_err(|_| UserCmdError::Other(format!("{verb}: no reply within {COMMAND_TIMEOUT:?}")))?
        .map_err(|e| UserCmdError::Other(format!("{verb}: {e}")))?;
    let ok = match reply.get("ok") {
        Ok(Some(RawBsonRef::Double(v))) => v == 1.0,
        Ok(Some(RawBsonRef::Int32(v))) => v == 1,
        Ok(Some(RawBsonRef::Int64(v))) => v == 1,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(UserCmdError::Server {
            code: reply.get_i32("code").unwrap_or(0),
            errmsg: format!(
                "{verb}: {}",
                reply.get_str("errmsg").unwrap_or("(no errmsg)")
            ),
        })
    }
}

/// Sends one OP_MSG command and returns the reply body.
async fn command(port: u16, cmd: &RawDocumentBuf) -> Result<RawDocumentBuf, String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request_id = 1;
    stream
        .write_all(&wire::op_msg::encode(request_id, 0, 0, cmd))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = BytesMut::new();
    let frame = wire::read_frame(&mut stream, &mut buf, wire::DEFAULT_MAX_MESSAGE_SIZE)
        .await
        .map_err(|e| format!("reading the reply: {e}"))?
        .ok_or_else(|| "the server closed the connection without a reply".to_string())?;
    if frame.header.op_code != OpCode::Msg {
        return Err(format!(
            "reply has opcode {}, expected OP_MSG",
            frame.header.op_code.label()
        ));
    }
    if frame.header.response_to != request_id {
        return Err(format!(
            "reply answers request {}, expected {request_id}",
            frame.header.response_to
        ));
    }
    let msg = OpMsg::parse(&frame.bytes).map_err(|e| format!("parsing the reply: {e}"))?;
    Ok(msg.body.to_owned())
}

fn sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        // std has no signal API and the crate has no libc dependency; every
        // Debian system has /bin/sh, whose `kill` is a builtin.
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {pid}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn stop_async(mut child: Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    sigterm(&child);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(STOP_GRACE, child.wait()).await;
    }
}

fn stop_blocking(mut child: Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    sigterm(&child);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.start_kill();
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
