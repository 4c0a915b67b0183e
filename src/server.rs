//! The process: builds the [`Runtime`] from the config, listens, accepts TCP
//! within the connection limit, completes TLS within a deadline, runs one
//! [`Session`] per client, and handles the signals: SIGHUP reloads, SIGTERM
//! and SIGINT drain, SIGUSR1 reopens the audit file, SIGUSR2 and SIGALRM
//! are logged and ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn, Instrument};

use crate::admin::http::Reload;
use crate::admission::Refusal;
use crate::audit::Audit;
use crate::config::{Config, ConfigError};
use crate::metrics::{self, Endpoints, Metrics, MetricsSink};
use crate::readiness::Health;
pub use crate::runtime::Reloaded;
use crate::runtime::{Runtime, Shared, Stage, CLOSE_GRACE};
use crate::session::events::{LogSink, OperatorEvent, RateLimit, Sinks};
use crate::session::Session;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Refused config: the same words `check` prints (exit code 2).
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("listen.address: cannot listen on {addr}: {detail}")]
    Listen { addr: SocketAddr, detail: String },
    #[error("metrics.address: cannot listen on {addr}: {detail}")]
    Metrics { addr: SocketAddr, detail: String },
}

/// A started proxy.
pub struct Running {
    pub local_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// What `/readyz` reports.
    pub health: Arc<Health>,
    /// The audit sink: reloads reconfigure it, SIGUSR1 reopens its file.
    pub audit: Arc<Audit>,
    shared: Arc<Shared>,
    stage: watch::Sender<Stage>,
    task: tokio::task::JoinHandle<()>,
    /// The operator endpoints and the backend probe, ended with the proxy.
    background: Vec<tokio::task::JoinHandle<()>>,
    /// SIGHUP and `POST /admin/reload` both reload through it.
    reloader: Arc<Reloader>,
}

/// Re-reads and swaps in the config, one reload at a time.
struct Reloader {
    shared: Arc<Shared>,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    /// The file reloads re-read; `None` when started from parsed text.
    config_path: Option<PathBuf>,
    reloading: Mutex<()>,
}

impl Running {
    /// Stops at once: no drain period (tests, and a second SIGTERM).
    pub async fn shutdown(self) {
        let _ = self.stage.send(Stage::Closing);
        let _ = self.task.await;
        self.audit.flush().await;
        self.background.iter().for_each(|t| t.abort());
    }

    /// mongos's quiesce mode: stop accepting, answer hello with
    /// ShutdownInProgress, keep serving open connections for the drain
    /// period, then interrupt what still runs and close everything.
    pub async fn drain(self) {
        let drain = self.shared.runtime.load().drain;
        info!(
            drain_secs = drain.as_secs(),
            "draining: no new connections; hello answers ShutdownInProgress (91)"
        );
        // From here /readyz answers 503: the stage is what it reads.
        let _ = self.stage.send(Stage::Draining);
        let mut task = self.task;
        if tokio::time::timeout(drain, &mut task).await.is_err() {
            info!("drain period over; interrupting what still runs (11600) and closing");
            let _ = self.stage.send(Stage::Closing);
            let _ = task.await;
        }
        // The sessions' last records are queued; the process exits next.
        self.audit.flush().await;
        self.background.iter().for_each(|t| t.abort());
        info!("stopped");
    }

    /// Runs until SIGTERM or SIGINT, reloading on SIGHUP; then drains.
    pub async fn run_until_signal(self) {
        Signals::wait_for_termination(&self).await;
        self.drain().await;
    }

    /// Re-reads the config file and swaps it in, or keeps the running one
    /// and says why not.
    pub async fn reload(&self) -> Result<Reloaded, ConfigError> {
        self.reloader.reload().await
    }

    /// Validates `config` through the runtime builder and swaps it in whole.
    pub async fn reload_with(&self, config: Config) -> Result<Reloaded, ConfigError> {
        self.reloader.reload_with(config).await
    }

    /// Hands freed memory back to the system after connections close or
    /// large messages pass ([`crate::memory`]); the binary calls this with
    /// the allocator's call.
    pub fn release_freed_memory(&mut self, release: crate::memory::Release) {
        let task = crate::memory::release_after_frees(
            self.shared.memory_freed.clone(),
            release,
            self.metrics.memory_release_duration.clone(),
        );
        self.background.push(tokio::spawn(task));
    }

    /// SIGUSR1 (logrotate's `postrotate`): the audit file is opened again at
    /// its path; records queued before go to the file that was open.
    pub async fn reopen_audit(&self) {
        self.audit.reopen().await;
    }
}

impl Reloader {
    async fn reload(&self) -> Result<Reloaded, ConfigError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ConfigError::new(
                "config",
                "the proxy was started without a config file; nothing to reload",
            ));
        };
        let result = match Config::load(&path) {
            Ok(config) => self.reload_with(config).await,
            Err(e) => Err(e),
        };
        let detail = match &result {
            Ok(r) => r.changes.clone(),
            Err(e) => e.to_string(),
        };
        self.shared.sinks.operator(&OperatorEvent::Reload {
            ok: result.is_ok(),
            path: &path.display().to_string(),
            detail: &detail,
        });
        result
    }

    async fn reload_with(&self, config: Config) -> Result<Reloaded, ConfigError> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.shared.runtime.load_full();
        current.check_reloadable(&config)?;
        let next = Runtime::build(config, Some(&current))?;
        // New identity providers' keys load before any session can use them.
        next.registry.load_all().await;
        self.audit.reconfigure(next.config.audit.as_ref()).await?;
        let changes = current.changes(&next);
        let test_commands = next.test_commands;
        let setup_user = next
            .setup_user
            .as_ref()
            .map(|s| s.credentials.user().to_owned());
        resolve_sign_in_series(&self.metrics, &next);
        self.shared.runtime.store(Arc::new(next));
        if test_commands {
            warn_test_commands(setup_user.as_deref());
        } else {
            // Turned off: a fail point set earlier must not fire if they come back.
            self.shared
                .failpoints
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
        Ok(Reloaded { changes })
    }
}

impl Reload for Reloader {
    fn reload(&self) -> crate::admin::http::ReloadFuture<'_> {
        Box::pin(Reloader::reload(self))
    }
}

/// Test commands let an admin-granted session make the proxy fail commands
/// and close connections: said at start-up and at every reload while on.
fn warn_test_commands(setup_user: Option<&str>) {
    warn!(
        "test commands are enabled ([testing] enable_test_commands = true): sessions whose \
         grant has admin = true may run configureFailPoint to fail commands and close \
         connections; never enable this in production"
    );
    if let Some(user) = setup_user {
        warn!(
            setup_user = user,
            "a SCRAM-SHA-256 set-up user is enabled ([testing] setup_user): it signs in with a \
             password, without the identity provider, and gets the admin grant \
             [testing] setup_grant names; never enable this in production"
        );
    }
}

/// Starts with a config loaded from `path`, which reloads re-read.
pub async fn start_from_file(config: Config, path: &Path) -> Result<Running, StartError> {
    start_at(config, Some(path.to_path_buf())).await
}

/// Builds every part from a config and starts listening.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_at(config, None).await
}

async fn start_at(config: Config, config_path: Option<PathBuf>) -> Result<Running, StartError> {
    let runtime = Runtime::build(config, None)?;
    if runtime.test_commands {
        let setup_user = runtime.setup_user.as_ref().map(|s| s.credentials.user());
        warn_test_commands(setup_user);
    }
    let metrics = Arc::new(Metrics::new());
    resolve_sign_in_series(&metrics, &runtime);
    let listen = runtime.config.listen.address;
    let metrics_config = runtime.config.metrics.clone();
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| StartError::Listen {
            addr: listen,
            detail: e.to_string(),
        })?;
    let local_addr = listener.local_addr().map_err(|e| StartError::Listen {
        addr: listen,
        detail: e.to_string(),
    })?;
    let audit = Audit::start(runtime.config.audit.as_ref(), &metrics.registry)?;
    let (stage, stage_rx) = watch::channel(Stage::Serving);
    let sinks = Sinks::new(vec![
        Arc::new(MetricsSink(metrics.clone())),
        Arc::new(LogSink::default()),
        audit.clone(),
    ]);
    let shared = Arc::new(Shared::new(runtime, sinks, stage_rx));
    let health = Health::new(&shared);
    metrics.watch(health.clone());
    let reloader = Arc::new(Reloader {
        shared: shared.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
        config_path,
        reloading: Mutex::new(()),
    });
    let mut background = Vec::new();
    // Served before the keys load, so /healthz answers during start-up.
    let metrics_addr = match &metrics_config {
        Some(m) => {
            let endpoints = Endpoints {
                metrics: metrics.clone(),
                health: health.clone(),
            };
            // The admin endpoints answer 404 unless the runtime has [admin].
            let admin = crate::admin::http::router(shared.clone(), reloader.clone());
            let (addr, task) = metrics::serve_with(m.address, endpoints, admin)
                .await
                .map_err(|e| StartError::Metrics {
                    addr: m.address,
                    detail: e.to_string(),
                })?;
            background.push(task);
            Some(addr)
        }
        None => None,
    };
    shared.runtime.load().registry.load_all().await;
    metrics.stamp_config_loaded();
    background.push(health.spawn_probe());
    let task = tokio::spawn(accept_loop(
        listener,
        shared.clone(),
        metrics.clone(),
        health.listening(),
    ));
    info!(address = %local_addr, metrics = ?metrics_addr, "mongo-oidc-proxy listening");
    Ok(Running {
        local_addr,
        metrics_addr,
        metrics,
        health,
        audit,
        shared,
        stage,
        task,
        background,
        reloader,
    })
}

/// Sign-ins are counted by IdP: the series of the runtime's IdPs are
/// resolved before any session can use it.
fn resolve_sign_in_series(metrics: &Metrics, runtime: &Runtime) {
    let idps = &runtime.registry;
    metrics.sign_ins.resolve(
        (0..idps.len())
            .filter_map(|i| idps.describe(i))
            .map(|(prefix, _)| prefix),
    );
}

/// Counts open connections against the runtime's `max_connections`.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        let mut now = open.load(Ordering::Relaxed);
        loop {
            if now >= max {
                return None;
            }
            match open.compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Slot(open.clone())),
                Err(actual) => now = actual,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    listening: crate::readiness::ListeningGuard,
) {
    let mut sessions = JoinSet::new();
    let mut stage = shared.stage.clone();
    let open = Arc::new(AtomicUsize::new(0));
    let accept_failures = RateLimit::default();
    loop {
        tokio::select! {
            _ = reached(&mut stage, |s| *s != Stage::Serving) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning, and
                        // log a few lines a second, not one per attempt.
                        metrics.rejected.accept_failed.inc();
                        if let Some(suppressed) = accept_failures.admit(unix_secs()) {
                            warn!(error = %e, suppressed_before = suppressed, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                metrics.connections_accepted.inc();
                let rt = shared.runtime.load_full();
                let Some(slot) = Slot::take(&open, rt.limits.max_connections) else {
                    metrics.rejected.connection_limit.inc();
                    debug!(%peer, "connection limit reached; refusing connection");
                    continue;
                };
                if let Err(refusal) = shared.admission.admit(peer.ip(), rt.limits.max_connections_per_ip) {
                    let (reason, counter) = match refusal {
                        Refusal::ConnectionsPerIp => ("connections_per_ip", &metrics.rejected.connections_per_ip),
                        Refusal::TooManyAddresses => ("too_many_addresses", &metrics.rejected.too_many_addresses),
                    };
                    counter.inc();
                    debug!(%peer, reason, "refusing connection");
                    continue;
                }
                let (shared, metrics) = (shared.clone(), metrics.clone());
                sessions.spawn(async move {
                    serve_connection(tcp, peer, rt, shared.clone(), metrics).await;
                    shared.admission.release(peer.ip());
                    drop(slot);
                    shared.memory_freed.notify_one();
                });
            }
        }
    }
    // Dropping the listener refuses new connections at once.
    drop(listener);
    drop(listening);
    // Draining: sessions end as their clients leave, or at the close.
    let all_ended = async { while sessions.join_next().await.is_some() {} };
    tokio::select! {
        _ = all_ended => return,
        _ = reached(&mut stage, |s| *s == Stage::Closing) => {}
    }
    let all_ended = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_GRACE, all_ended).await.is_err() {
        warn!(
            open = sessions.len(),
            "closing sessions that did not end after the drain"
        );
        sessions.abort_all();
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Resolves once the stage satisfies `want` (or nobody can change it).
async fn reached(stage: &mut watch::Receiver<Stage>, want: impl FnMut(&Stage) -> bool) {
    let _ = stage.wait_for(want).await.is_ok();
}

/// One connection: the TLS handshake, then the session. The task lives as
/// long as the connection and is as large as its largest state, so both
/// phases are boxed: the handshake's state is freed once it is done, and the
/// session's is held once (a local that an `.await` moves from keeps its
/// space in the task).
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    rt: Arc<Runtime>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
) {
    let session = {
        let Some(stream) = Box::pin(accept_tls(tcp, peer, rt, &metrics)).await else {
            return;
        };
        Box::pin(run_session(stream, peer, shared, metrics))
    };
    session.await;
}

async fn accept_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    rt: Arc<Runtime>,
    metrics: &Metrics,
) -> Option<TlsStream<TcpStream>> {
    let _ = tcp.set_nodelay(true);
    let deadline = Duration::from_secs(rt.limits.auth_timeout_secs);
    // New handshakes use the certificate of the runtime current at accept.
    let stream = match tokio::time::timeout(deadline, rt.tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            metrics.rejected.tls_handshake.inc();
            info!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            metrics.rejected.tls_timeout.inc();
            info!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let [full, resumed_count] = &metrics.tls_handshakes;
    if resumed { resumed_count } else { full }.inc();
    Some(stream)
}

/// Not `async`: the session moves straight into the returned future, which
/// then holds it once.
fn run_session(
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
) -> impl std::future::Future<Output = ()> + Send {
    let mut session = Session::new(stream, peer, shared);
    let span = tracing::info_span!("session", conn = session.connection_id(), %peer);
    async move {
        metrics.connections_active.inc();
        session.run().await;
        drop(session);
        metrics.connections_active.dec();
    }
    .instrument(span)
}

/// The signals the proxy handles. Registering a handler replaces the default
/// action, which for SIGHUP, SIGUSR1, SIGUSR2 and SIGALRM is to terminate.
struct Signals;

impl Signals {
    #[cfg(unix)]
    async fn wait_for_termination(running: &Running) {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
            SignalKind::alarm(),
        ];
        let mut streams = Vec::new();
        for kind in kinds {
            match signal(kind) {
                Ok(s) => streams.push(s),
                Err(e) => warn!(error = %e, "cannot handle a signal"),
            }
        }
        let [term, int, hup, usr1, usr2, alrm] = &mut streams[..] else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => { info!(signal = "SIGTERM", "shutdown requested"); return; }
                _ = int.recv() => { info!(signal = "SIGINT", "shutdown requested"); return; }
                _ = hup.recv() => {
                    info!(signal = "SIGHUP", "reloading the configuration");
                    let _ = running.reload().await;
                }
                _ = usr1.recv() => {
                    info!(signal = "SIGUSR1", "reopening the audit file");
                    running.reopen_audit().await;
                }
                _ = usr2.recv() => info!(signal = "SIGUSR2", "signal received and ignored"),
                _ = alrm.recv() => info!(signal = "SIGALRM", "signal received and ignored"),
            }
        }
    }

    #[cfg(not(unix))]
    async fn wait_for_termination(_running: &Running) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
