//! Prometheus metrics and the operator HTTP endpoints (`/metrics`,
//! `/healthz`, `/readyz`). On the relay path only atomic counters are touched.
//! Event counts live here; what other parts keep themselves (readiness,
//! JWKS caches, the token cache) is read at scrape time ([`live`]).

mod live;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::readiness::Health;
use crate::session::events::{
    AdminAction, AdminOutcome, BackendStage, ConnInfo, Disposition, Event, Limit, OperatorEvent,
    Sink,
};
use crate::session::phase::{Access, Expiry};
use crate::session::{CloseReason, Refused};

const EXPIRIES: [Expiry; 5] = [
    Expiry::TokenExpired,
    Expiry::GrantExpired,
    Expiry::KeyWithdrawn,
    Expiry::IdpRemoved,
    Expiry::GrantChanged,
];
const STAGES: [BackendStage; 3] = [
    BackendStage::Probe,
    BackendStage::Connect,
    BackendStage::Relay,
];

/// Every metric the proxy exports, registered in its own registry.
pub struct Metrics {
    pub registry: Registry,
    pub connections_accepted: IntCounter,
    pub connections_active: IntGauge,
    pub connections_rejected: IntCounterVec,
    /// Completed client TLS handshakes: full, or resumed from a ticket.
    pub tls_handshakes: [IntCounter; 2],
    pub connections_closed: IntCounterVec,
    pub auth_attempts: IntCounterVec,
    pub auth_duration: Histogram,
    pub sessions_refused: IntCounter,
    pub reauthentications: IntCounter,
    sessions_expired: [IntCounter; EXPIRIES.len()],
    commands: [IntCounter; 2 + Refused::ALL.len()],
    closed: [IntCounter; CloseReason::ALL.len()],
    limits_hit: [IntCounter; Limit::ALL.len()],
    backend_errors_by_stage: [IntCounter; 3],
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: Gauge,
    pub wire_errors: IntCounterVec,
    /// Resolved once: the relay path touches only these atomics.
    pub relay: RelayCounters,
    pub backend_connect_duration: Histogram,
    pub backend_errors: IntCounterVec,
    /// Admin requests by endpoint and result, every pair created up front.
    pub admin_requests: IntCounterVec,
    /// Sign-ins by IdP (`auth_name_prefix`) and flow; bounded by the config.
    pub sign_ins: IntCounterVec,
}

const NS: &str = "mongo_oidc_proxy";

// The metric definitions below are literals: valid names, matching label
// counts, each registered once (the unit tests render them all), so the
// `expect`s cannot fire at run time.

#[allow(clippy::expect_used)]
fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace(NS))
        .expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

#[allow(clippy::expect_used)]
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels)
        .expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

#[allow(clippy::expect_used)]
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
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let r = Registry::new();
        let closed = counter_vec(
            &r,
            "connections_closed_total",
            "Client sessions ended, by why.",
            &["reason"],
        );
        let backend_errors = counter_vec(
            &r,
            "backend_errors_total",
            "Backend connection, probe and relay failures, by kind.",
            &["kind"],
        );
        let reload_ok = Gauge::with_opts(
            Opts::new(
                "config_last_reload_success_timestamp_seconds",
                "When the configuration was last loaded successfully (start-up or reload), Unix time.",
            )
            .namespace(NS),
        )
        .expect("static metric definition");
        r.register(Box::new(reload_ok.clone()))
            .expect("metric names are unique");
        let seconds = prometheus::exponential_buckets(0.0005, 2.0, 14).unwrap_or_default();
        let active = IntGauge::with_opts(
            Opts::new("connections_active", "Client connections open now.").namespace(NS),
        )
        .expect("static metric definition");
        r.register(Box::new(active.clone()))
            .expect("metric names are unique");
        // process_* (RSS, open fds, CPU): what an fd or memory alert needs.
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("metric names are unique");
        Metrics {
            sign_ins: counter_vec(
                &r,
                "sign_ins_total",
                "Successful sign-ins (re-authentications included), by identity provider \
                 (auth_name_prefix) and flow.",
                &["idp", "flow"],
            ),
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
            tls_handshakes: {
                let v = counter_vec(
                    &r,
                    "tls_handshakes_total",
                    "Completed client TLS handshakes, by kind: full, or resumed from a session ticket.",
                    &["kind"],
                );
                ["full", "resumed"].map(|k| v.with_label_values(&[k]))
            },
            connections_closed: closed.clone(),
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
            sessions_expired: {
                let vec = counter_vec(
                    &r,
                    "sessions_expired_total",
                    "Sign-ins that stopped holding (clients then get 391 until they re-authenticate), by why.",
                    &["reason"],
                );
                EXPIRIES.map(|e| vec.with_label_values(&[e.label()]))
            },
            commands: {
                let vec = counter_vec(
                    &r,
                    "commands_total",
                    "Client commands, by how the proxy handled them.",
                    &["disposition"],
                );
                let mut labels = vec!["local", "relayed"];
                labels.extend(Refused::ALL.map(Refused::label));
                std::array::from_fn(|i| {
                    vec.with_label_values(&[labels.get(i).copied().unwrap_or("other")])
                })
            },
            closed: CloseReason::ALL.map(|c| closed.with_label_values(&[c.label()])),
            limits_hit: {
                let vec = counter_vec(
                    &r,
                    "limits_hit_total",
                    "Bounds on what a client may cost before sign-in, hit, by limit.",
                    &["limit"],
                );
                Limit::ALL.map(|l| vec.with_label_values(&[l.label()]))
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
            backend_errors_by_stage: STAGES.map(|s| backend_errors.with_label_values(&[s.label()])),
            backend_errors,
            config_reloads: counter_vec(
                &r,
                "config_reloads_total",
                "Configuration reloads (SIGHUP), by result.",
                &["result"],
            ),
            config_last_reload_success: reload_ok,
            admin_requests: {
                let vec = counter_vec(
                    &r,
                    "admin_requests_total",
                    "Administrative requests (HTTP /admin/... and the oidcListKeys/oidcRefreshKeys commands), by endpoint and result.",
                    &["endpoint", "result"],
                );
                for a in AdminAction::ALL {
                    for o in AdminOutcome::ALL {
                        vec.with_label_values(&[a.label(), o.label()]);
                    }
                }
                vec
            },
            registry: r,
        }
    }

    /// Adds the metrics read from the running proxy at scrape time
    /// (readiness, JWKS caches, token cache). Once per proxy.
    pub fn watch(&self, health: Arc<Health>) {
        match live::Live::new(health) {
            Ok(live) => {
                if let Err(e) = self.registry.register(Box::new(live)) {
                    tracing::warn!(error = %e, "cannot register the live metrics");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot define the live metrics"),
        }
    }

    /// Counts one command; the label was resolved at start-up.
    pub fn count_command(&self, d: Disposition) {
        let i = match d {
            Disposition::Local => 0,
            Disposition::Relayed => 1,
            Disposition::Refused(r) => 2 + Refused::ALL.iter().position(|x| *x == r).unwrap_or(0),
        };
        if let Some(c) = self.commands.get(i) {
            c.inc();
        }
    }

    pub fn count_limit(&self, limit: Limit) {
        if let Some(c) = Limit::ALL
            .iter()
            .position(|l| *l == limit)
            .and_then(|i| self.limits_hit.get(i))
        {
            c.inc();
        }
    }

    pub fn count_closed(&self, reason: CloseReason) {
        if let Some(c) = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.closed.get(i))
        {
            c.inc();
        }
    }

    pub fn count_expired(&self, why: Expiry) {
        if let Some(c) = EXPIRIES
            .iter()
            .position(|e| *e == why)
            .and_then(|i| self.sessions_expired.get(i))
        {
            c.inc();
        }
    }

    pub fn count_backend_error(&self, stage: BackendStage) {
        if let Some(c) = STAGES
            .iter()
            .position(|s| *s == stage)
            .and_then(|i| self.backend_errors_by_stage.get(i))
        {
            c.inc();
        }
    }

    pub fn count_auth_success(&self) {
        self.auth_attempts.with_label_values(&["success", ""]).inc();
    }

    pub fn count_auth_failure(&self, reason: &str) {
        self.auth_attempts
            .with_label_values(&["failure", reason])
            .inc();
    }

    /// A reload's outcome; a success also stamps the last-success time.
    pub fn count_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        if ok {
            self.stamp_config_loaded();
        }
    }

    pub fn stamp_config_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_last_reload_success.set(now);
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

/// Events → Prometheus counters (labels resolved at start-up).
pub struct MetricsSink(pub Arc<Metrics>);

impl Sink for MetricsSink {
    fn emit(&self, _conn: &ConnInfo, event: &Event<'_>) {
        let m = &self.0;
        match event {
            Event::Command { disposition, .. } => m.count_command(*disposition),
            Event::SignedIn {
                session,
                reauthenticated,
                ..
            } => {
                m.count_auth_success();
                // The user is `<auth_name_prefix>/<principal>`: only the
                // prefix, never the principal, becomes a label.
                let idp = session.identity.user.split_once('/').map_or("", |(p, _)| p);
                m.sign_ins
                    .with_label_values(&[idp, session.flow.label()])
                    .inc();
                if *reauthenticated {
                    m.reauthentications.inc();
                }
                if matches!(session.access, Access::Refused) {
                    m.sessions_refused.inc();
                }
            }
            Event::SignInFailed { failure, .. } => m.count_auth_failure(failure.reason()),
            Event::ReauthenticationRefused { .. } => m.count_auth_failure("different_user"),
            Event::Expired { why, .. } => m.count_expired(*why),
            Event::WireError { kind, .. } => m.wire_errors.with_label_values(&[kind]).inc(),
            Event::Backend { stage, .. } => m.count_backend_error(*stage),
            Event::BackendConnected { seconds } => m.backend_connect_duration.observe(*seconds),
            Event::AuthStep { seconds } => m.auth_duration.observe(*seconds),
            Event::Relayed {
                to_backend,
                to_client,
                replies,
                ..
            } => {
                m.relay.to_backend_messages.inc();
                m.relay.to_backend_bytes.inc_by(*to_backend);
                m.relay.to_client_messages.inc_by(*replies);
                m.relay.to_client_bytes.inc_by(*to_client);
            }
            Event::SessionEnded { reason, .. } => m.count_closed(*reason),
            Event::LimitHit { limit } => m.count_limit(*limit),
            Event::Refused { .. } | Event::FailPointSet { .. } | Event::FailPointFired { .. } => {}
        }
    }

    fn operator(&self, event: &OperatorEvent<'_>) {
        match event {
            OperatorEvent::Reload { ok, .. } => self.0.count_reload(*ok),
            OperatorEvent::Admin {
                action, outcome, ..
            } => self
                .0
                .admin_requests
                .with_label_values(&[action.label(), outcome.label()])
                .inc(),
        }
    }
}

/// What the operator endpoints read.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// The operator endpoints as an axum router.
pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(endpoints)
}

async fn render(State(e): State<Endpoints>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        e.metrics.render(),
    )
}

async fn ready(State(e): State<Endpoints>) -> impl IntoResponse {
    let verdict = e.health.verdict();
    let status = if verdict.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, verdict.body)
}

/// Serves the operator endpoints until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    endpoints: Endpoints,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(addr, endpoints, Router::new()).await
}

/// As [`serve`], with more routes (the admin endpoints) on the same
/// listener; handlers may read the client's address (`ConnectInfo`).
pub async fn serve_with(
    addr: SocketAddr,
    endpoints: Endpoints,
    extra: Router,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(endpoints)
        .merge(extra)
        .into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
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
        #[cfg(target_os = "linux")]
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name}: {text}");
        }
    }
}
