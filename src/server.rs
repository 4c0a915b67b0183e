//! The listener: accepts TCP, enforces the connection limit, completes TLS
//! within a deadline, and runs one [`Session`] per client. Also wires the
//! configuration into live parts ([`start`]) and stops them ([`Running`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn, Instrument};

use crate::auth::IdpRegistry;
use crate::authz::{Grants, Secrets};
use crate::backend::Backend;
use crate::config::{Config, ConfigError};
use crate::metrics::{self, Metrics};
use crate::session::{Context, Session};

/// How long open sessions get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("backend.uri: {0}")]
    Backend(String),
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
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets sessions finish for a grace period, then stops.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Runs until SIGINT or SIGTERM, then shuts down.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        info!("shutdown requested; no new connections are accepted");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Builds every part from a validated config and starts listening.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let tls = TlsAcceptor::from(crate::tls::server_config(&config.listen)?);
    let grants = Arc::new(Grants::from_config(&config.grant, Secrets::Resolve)?);
    let registry = Arc::new(IdpRegistry::new(&config.identity_provider)?);
    let backend =
        Arc::new(Backend::new(&config.backend).map_err(|e| StartError::Backend(e.to_string()))?);
    let metrics = Arc::new(Metrics::new());

    let listener = TcpListener::bind(config.listen.address)
        .await
        .map_err(|e| StartError::Listen {
            addr: config.listen.address,
            detail: e.to_string(),
        })?;
    let local_addr = listener.local_addr().map_err(|e| StartError::Listen {
        addr: config.listen.address,
        detail: e.to_string(),
    })?;
    let metrics_addr = match &config.metrics {
        Some(m) => {
            let (addr, _task) = metrics::serve(m.address, metrics.clone())
                .await
                .map_err(|e| StartError::Metrics {
                    addr: m.address,
                    detail: e.to_string(),
                })?;
            Some(addr)
        }
        None => None,
    };

    registry.load_all().await;
    spawn_readiness_probe(backend.clone(), metrics.clone());

    let ctx = Arc::new(Context::new(
        registry,
        grants,
        backend,
        metrics.clone(),
        config.limits.max_message_size,
        Duration::from_secs(config.limits.auth_timeout_secs),
    ));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let limits = Arc::new(Semaphore::new(config.limits.max_connections));
    let handshake_timeout = Duration::from_secs(config.limits.auth_timeout_secs);
    let task = tokio::spawn(accept_loop(
        listener,
        tls,
        ctx,
        limits,
        handshake_timeout,
        shutdown_rx,
    ));
    info!(address = %local_addr, metrics = ?metrics_addr, "mongo-oidc-proxy listening");
    Ok(Running {
        local_addr,
        metrics_addr,
        metrics,
        shutdown,
        task,
    })
}

/// Drivers cannot connect until the backend answers a probe; keep trying in
/// the background so `/readyz` reflects it.
fn spawn_readiness_probe(backend: Arc<Backend>, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match backend.server_info().await {
                Ok(_) => {
                    metrics.set_ready(true);
                    info!("backend answered; ready");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "backend not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    });
}

async fn accept_loop(
    listener: TcpListener,
    tls: TlsAcceptor,
    ctx: Arc<Context>,
    limits: Arc<Semaphore>,
    handshake_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                ctx.metrics.connections_accepted.inc();
                let Ok(permit) = limits.clone().try_acquire_owned() else {
                    ctx.metrics.connections_rejected.with_label_values(&["connection_limit"]).inc();
                    warn!(%peer, "connection limit reached; refusing connection");
                    continue;
                };
                let ctx = ctx.clone();
                let tls = tls.clone();
                sessions.spawn(async move {
                    serve_connection(tcp, peer, tls, ctx, handshake_timeout).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sessions.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!(
            open = sessions.len(),
            "closing sessions still open after the shutdown grace period"
        );
        sessions.abort_all();
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    ctx: Arc<Context>,
    handshake_timeout: Duration,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(handshake_timeout, tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            ctx.metrics
                .connections_rejected
                .with_label_values(&["tls_handshake"])
                .inc();
            info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            ctx.metrics
                .connections_rejected
                .with_label_values(&["tls_timeout"])
                .inc();
            info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let session = Session::new(stream, peer, ctx.clone());
    let span = tracing::info_span!("session", conn = session.connection_id(), %peer);
    async {
        ctx.metrics.connections_active.inc();
        let reason = session.run().await;
        ctx.metrics.connections_active.dec();
        ctx.metrics
            .connections_closed
            .with_label_values(&[reason.label()])
            .inc();
        tracing::debug!(reason = reason.label(), "session closed");
    }
    .instrument(span)
    .await;
}
