//! Prometheus metrics and the operator HTTP endpoints (`/metrics`,
//! `/healthz`, `/readyz`). On the relay path only atomic counters are touched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the proxy exports, registered in its own registry.
pub struct Metrics {
    pub registry: Registry,
    pub connections_accepted: IntCounter,
    pub connections_active: IntGauge,
    pub connections_rejected: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub auth_attempts: IntCounterVec,
    pub auth_duration: Histogram,
    pub sessions_refused: IntCounter,
    pub reauthentications: IntCounter,
    pub expired_sessions: IntCounter,
    commands: [IntCounter; Disposition::ALL.len()],
    pub wire_errors: IntCounterVec,
    /// Resolved once: the relay path touches only these atomics.
    pub relay: RelayCounters,
    pub backend_connect_duration: Histogram,
    pub backend_errors: IntCounterVec,
    ready: AtomicBool,
}

const NS: &str = "mongo_oidc_proxy";

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace(NS))
        .expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels)
        .expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(
        HistogramOpts::new(name, help)
            .namespace(NS)
            .buckets(buckets),
    )
    .expect("static metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric names are unique");
    h
}

/// How the proxy handled a client command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Local,
    Relayed,
    RefusedUnauthenticated,
    RefusedNoGrant,
    ReauthenticationRequired,
    RefusedOpQuery,
}

impl Disposition {
    const ALL: [Disposition; 6] = [
        Disposition::Local,
        Disposition::Relayed,
        Disposition::RefusedUnauthenticated,
        Disposition::RefusedNoGrant,
        Disposition::ReauthenticationRequired,
        Disposition::RefusedOpQuery,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Disposition::Local => "local",
            Disposition::Relayed => "relayed",
            Disposition::RefusedUnauthenticated => "refused_unauthenticated",
            Disposition::RefusedNoGrant => "refused_no_grant",
            Disposition::ReauthenticationRequired => "reauthentication_required",
            Disposition::RefusedOpQuery => "refused_op_query",
        }
    }
}

/// Per-direction relay counters, with their labels resolved up front.
pub struct RelayCounters {
    pub to_backend_messages: IntCounter,
    pub to_backend_bytes: IntCounter,
    pub to_client_messages: IntCounter,
    pub to_client_bytes: IntCounter,
}

impl RelayCounters {
    fn new(r: &Registry) -> RelayCounters {
        let messages = counter_vec(
            r,
            "relayed_messages_total",
            "Messages relayed, by direction.",
            &["direction"],
        );
        let bytes = counter_vec(
            r,
            "relayed_bytes_total",
            "Bytes relayed, by direction.",
            &["direction"],
        );
        RelayCounters {
            to_backend_messages: messages.with_label_values(&["to_backend"]),
            to_backend_bytes: bytes.with_label_values(&["to_backend"]),
            to_client_messages: messages.with_label_values(&["to_client"]),
            to_client_bytes: bytes.with_label_values(&["to_client"]),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let seconds = prometheus::exponential_buckets(0.0005, 2.0, 14).unwrap_or_default();
        let active = IntGauge::with_opts(
            Opts::new("connections_active", "Client connections open now.").namespace(NS),
        )
        .expect("static metric definition");
        r.register(Box::new(active.clone()))
            .expect("metric names are unique");
        Metrics {
            connections_accepted: counter(
                &r,
                "connections_accepted_total",
                "Client TCP connections accepted.",
            ),
            connections_active: active,
            connections_rejected: counter_vec(
                &r,
                "connections_rejected_total",
                "Client connections refused before a session started.",
                &["reason"],
            ),
            connections_closed: counter_vec(
                &r,
                "connections_closed_total",
                "Client sessions ended, by why.",
                &["reason"],
            ),
            auth_attempts: counter_vec(
                &r,
                "auth_attempts_total",
                "MONGODB-OIDC sign-in attempts, by result and failure reason.",
                &["result", "reason"],
            ),
            auth_duration: histogram(
                &r,
                "auth_duration_seconds",
                "Time to verify a token, including any JWKS fetch.",
                seconds.clone(),
            ),
            sessions_refused: counter(
                &r,
                "sessions_refused_total",
                "Signed-in sessions refused because no grant matched.",
            ),
            reauthentications: counter(
                &r,
                "reauthentications_total",
                "Successful re-authentications on an existing connection.",
            ),
            expired_sessions: counter(
                &r,
                "expired_sessions_total",
                "Sessions whose token expired (clients got 391).",
            ),
            commands: {
                let vec = counter_vec(
                    &r,
                    "commands_total",
                    "Client commands, by how the proxy handled them.",
                    &["disposition"],
                );
                Disposition::ALL.map(|d| vec.with_label_values(&[d.label()]))
            },
            wire_errors: counter_vec(
                &r,
                "wire_errors_total",
                "Malformed or refused client messages, by kind.",
                &["kind"],
            ),
            relay: RelayCounters::new(&r),
            backend_connect_duration: histogram(
                &r,
                "backend_connect_duration_seconds",
                "Time to connect and sign in to the backend.",
                seconds,
            ),
            backend_errors: counter_vec(
                &r,
                "backend_errors_total",
                "Backend connection and sign-in failures, by kind.",
                &["kind"],
            ),
            registry: r,
            ready: AtomicBool::new(false),
        }
    }

    /// Counts one command; the label was resolved at start-up.
    pub fn count_command(&self, d: Disposition) {
        if let Some(c) = self.commands.get(d as usize) {
            c.inc();
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The operator endpoints as an axum router.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(metrics)
}

async fn render(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
}

async fn ready(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the backend has not answered yet\n",
        )
    }
}

/// Serves the operator endpoints until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(metrics)).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_names() {
        let m = Metrics::new();
        m.auth_attempts
            .with_label_values(&["failure", "expired"])
            .inc();
        m.connections_accepted.inc();
        let text = m.render();
        assert!(
            text.contains(
                "mongo_oidc_proxy_auth_attempts_total{reason=\"expired\",result=\"failure\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mongo_oidc_proxy_connections_accepted_total counter"),
            "{text}"
        );
        assert!(
            text.contains("mongo_oidc_proxy_connections_active 0"),
            "{text}"
        );
    }
}
