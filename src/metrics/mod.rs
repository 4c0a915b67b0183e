//! Prometheus metrics and the operator HTTP endpoints (`/metrics`,
//! `/healthz`, `/readyz`). On the relay path only atomic counters are touched.
//! Event counts live here; what other parts keep themselves (readiness,
//! JWKS caches, the token cache) is read at scrape time ([`live`]).

mod family;
mod live;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub use family::Family;

use crate::readiness::Health;
use crate::session::events::{
    AdminAction, AdminOutcome, BackendStage, ConnInfo, Disposition, Event, Limit, OperatorEvent,
    Sink,
};
use crate::session::phase::{Access, Expiry, Flow};
use crate::session::{CloseReason, Refused};

/// A counter family with `N` labels.
pub type Counters<const N: usize> = Family<IntCounterVec, N>;

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
const FLOWS: [Flow; 3] = [Flow::Machine, Flow::Human, Flow::Speculative];

/// `AuthFailure::reason` values, and the re-authentication refusal.
const AUTH_FAILURES: [&str; 14] = [
    "bad_payload",
    "no_identity_provider",
    "malformed_token",
    "token_too_large",
    "algorithm",
    "unknown_key",
    "bad_signature",
    "issuer",
    "audience",
    "expired",
    "not_yet_valid",
    "claim",
    "principal_changed",
    "different_user",
];

/// `WireError::kind` values.
const WIRE_KINDS: [&str; 16] = [
    "length_too_small",
    "length_too_large",
    "truncated",
    "reserved_flags",
    "body_count",
    "unknown_section_kind",
    "too_many_sequences",
    "checksum_mismatch",
    "invalid_bson",
    "invalid_cstring",
    "invalid_identifier",
    "duplicate_field",
    "field_type",
    "unsupported_opcode",
    "unexpected_eof",
    "io",
];

/// Every metric the proxy exports, registered in its own registry. Each
/// series an event can touch is resolved here, once, except those whose
/// label comes from the config ([`SignIns`], resolved at start and reload).
pub struct Metrics {
    pub registry: Registry,
    pub connections_accepted: IntCounter,
    pub connections_active: IntGauge,
    /// `connections_rejected_total`, one series per reason.
    pub rejected: Rejected,
    pub auth_attempts: AuthAttempts,
    /// Completed client TLS handshakes: full, or resumed from a ticket.
    pub tls_handshakes: [IntCounter; 2],
    pub auth_duration: Histogram,
    pub sessions_refused: IntCounter,
    pub reauthentications: IntCounter,
    sessions_expired: [IntCounter; EXPIRIES.len()],
    commands: [IntCounter; 2 + Refused::ALL.len()],
    closed: [IntCounter; CloseReason::ALL.len()],
    limits_hit: [IntCounter; Limit::ALL.len()],
    backend_errors_by_stage: [IntCounter; STAGES.len()],
    /// `config_reloads_total`: success, failure.
    reloads: [IntCounter; 2],
    pub config_last_reload_success: Gauge,
    wire_errors: Known<{ WIRE_KINDS.len() }>,
    /// Resolved once: the relay path touches only these atomics.
    pub relay: RelayCounters,
    pub backend_connect_duration: Histogram,
    /// Time a command waited for a pooled backend connection.
    pub backend_pool_checkout_wait: Histogram,
    /// Passes handing freed memory back to the system ([`crate::memory`]).
    pub memory_release_duration: Histogram,
    /// Admin requests by endpoint and result, every pair created up front.
    admin_requests: [[IntCounter; AdminOutcome::ALL.len()]; AdminAction::ALL.len()],
    /// Sign-ins by IdP (`auth_name_prefix`) and flow; bounded by the config.
    pub sign_ins: SignIns,
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
fn counters<const N: usize>(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: [&str; N],
) -> Counters<N> {
    let c = Family::build(labels, |l| {
        IntCounterVec::new(Opts::new(name, help).namespace(NS), l)
    })
    .expect("static metric definition");
    registry
        .register(Box::new(c.vec().clone()))
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

/// Series resolved for the label values known at start-up; a value outside
/// them (a kind added without updating the list) is looked up instead.
struct Known<const K: usize> {
    labels: [&'static str; K],
    series: [IntCounter; K],
    family: Counters<1>,
}

impl<const K: usize> Known<K> {
    fn new(family: Counters<1>, labels: [&'static str; K]) -> Known<K> {
        Known {
            series: labels.map(|l| family.with([l])),
            labels,
            family,
        }
    }

    fn inc(&self, label: &str) {
        match self.labels.iter().position(|l| *l == label) {
            Some(i) => self.series.get(i).into_iter().for_each(IntCounter::inc),
            None => self.family.with([label]).inc(),
        }
    }
}

/// `connections_rejected_total` by reason.
pub struct Rejected {
    pub accept_failed: IntCounter,
    pub connection_limit: IntCounter,
    pub connections_per_ip: IntCounter,
    pub too_many_addresses: IntCounter,
    pub tls_handshake: IntCounter,
    pub tls_timeout: IntCounter,
}

impl Rejected {
    fn new(r: &Registry) -> Rejected {
        let f = counters(
            r,
            "connections_rejected_total",
            "Client connections refused before a session started.",
            ["reason"],
        );
        Rejected {
            accept_failed: f.with(["accept_failed"]),
            connection_limit: f.with(["connection_limit"]),
            connections_per_ip: f.with(["connections_per_ip"]),
            too_many_addresses: f.with(["too_many_addresses"]),
            tls_handshake: f.with(["tls_handshake"]),
            tls_timeout: f.with(["tls_timeout"]),
        }
    }
}

/// `auth_attempts_total` by result and failure reason.
pub struct AuthAttempts {
    success: IntCounter,
    failures: [IntCounter; AUTH_FAILURES.len()],
    family: Counters<2>,
}

impl AuthAttempts {
    fn new(r: &Registry) -> AuthAttempts {
        let family = counters(
            r,
            "auth_attempts_total",
            "MONGODB-OIDC sign-in attempts, by result and failure reason.",
            ["result", "reason"],
        );
        AuthAttempts {
            success: family.with(["success", ""]),
            failures: AUTH_FAILURES.map(|reason| family.with(["failure", reason])),
            family,
        }
    }

    /// The failures counted under `reason`.
    pub fn failure(&self, reason: &str) -> IntCounter {
        match AUTH_FAILURES.iter().position(|r| *r == reason) {
            Some(i) => self.failures.get(i).cloned(),
            None => None,
        }
        .unwrap_or_else(|| self.family.with(["failure", reason]))
    }
}

/// `sign_ins_total` by IdP and flow. The IdPs come from the config, so
/// their series are resolved when a runtime is built (start, reload).
pub struct SignIns {
    family: Counters<2>,
    by_idp: ArcSwap<Vec<(String, [IntCounter; FLOWS.len()])>>,
}

/// The test-only SCRAM set-up user has no series of its own up front.
fn flow_index(flow: Flow) -> Option<usize> {
    match flow {
        Flow::Machine => Some(0),
        Flow::Human => Some(1),
        Flow::Speculative => Some(2),
        Flow::Scram => None,
    }
}

impl SignIns {
    fn new(r: &Registry) -> SignIns {
        SignIns {
            family: counters(
                r,
                "sign_ins_total",
                "Successful sign-ins (re-authentications included), by identity provider \
                 (auth_name_prefix) and flow.",
                ["idp", "flow"],
            ),
            by_idp: ArcSwap::default(),
        }
    }

    /// Resolves the series of these IdPs. Those already known stay: a
    /// sign-in that began under the previous config may still end.
    pub fn resolve<'a>(&self, prefixes: impl IntoIterator<Item = &'a str>) {
        let mut next = Vec::clone(&self.by_idp.load());
        for p in prefixes {
            if !next.iter().any(|(known, _)| known == p) {
                let series = FLOWS.map(|f| self.family.with([p, f.label()]));
                next.push((p.to_owned(), series));
            }
        }
        self.by_idp.store(Arc::new(next));
    }

    fn count(&self, idp: &str, flow: Flow) {
        let by_idp = self.by_idp.load();
        match by_idp
            .iter()
            .find(|(known, _)| known == idp)
            .zip(flow_index(flow))
            .and_then(|((_, series), i)| series.get(i))
        {
            Some(c) => c.inc(),
            None => self.family.with([idp, flow.label()]).inc(),
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
        let messages = counters(
            r,
            "relayed_messages_total",
            "Messages relayed, by direction.",
            ["direction"],
        );
        let bytes = counters(
            r,
            "relayed_bytes_total",
            "Bytes relayed, by direction.",
            ["direction"],
        );
        RelayCounters {
            to_backend_messages: messages.with(["to_backend"]),
            to_backend_bytes: bytes.with(["to_backend"]),
            to_client_messages: messages.with(["to_client"]),
            to_client_bytes: bytes.with(["to_client"]),
        }
    }
}

impl Metrics {
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let r = Registry::new();
        let closed = counters(
            &r,
            "connections_closed_total",
            "Client sessions ended, by why.",
            ["reason"],
        );
        let backend_errors = counters(
            &r,
            "backend_errors_total",
            "Backend connection, probe and relay failures, by kind.",
            ["kind"],
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
            sign_ins: SignIns::new(&r),
            connections_accepted: counter(
                &r,
                "connections_accepted_total",
                "Client TCP connections accepted.",
            ),
            connections_active: active,
            rejected: Rejected::new(&r),
            auth_attempts: AuthAttempts::new(&r),
            tls_handshakes: {
                let family = counters(
                    &r,
                    "tls_handshakes_total",
                    "Completed client TLS handshakes, by kind: full, or resumed from a session ticket.",
                    ["kind"],
                );
                ["full", "resumed"].map(|k| family.with([k]))
            },
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
                let f = counters(
                    &r,
                    "sessions_expired_total",
                    "Sign-ins that stopped holding (clients then get 391 until they re-authenticate), by why.",
                    ["reason"],
                );
                EXPIRIES.map(|e| f.with([e.label()]))
            },
            commands: {
                let f = counters(
                    &r,
                    "commands_total",
                    "Client commands, by how the proxy handled them.",
                    ["disposition"],
                );
                let mut labels = vec!["local", "relayed"];
                labels.extend(Refused::ALL.map(Refused::label));
                std::array::from_fn(|i| f.with([labels.get(i).copied().unwrap_or("other")]))
            },
            closed: CloseReason::ALL.map(|c| closed.with([c.label()])),
            limits_hit: {
                let f = counters(
                    &r,
                    "limits_hit_total",
                    "Bounds on what a client may cost before sign-in, hit, by limit.",
                    ["limit"],
                );
                Limit::ALL.map(|l| f.with([l.label()]))
            },
            wire_errors: Known::new(
                counters(
                    &r,
                    "wire_errors_total",
                    "Malformed or refused client messages, by kind.",
                    ["kind"],
                ),
                WIRE_KINDS,
            ),
            relay: RelayCounters::new(&r),
            backend_connect_duration: histogram(
                &r,
                "backend_connect_duration_seconds",
                "Time to connect and sign in to the backend.",
                seconds.clone(),
            ),
            backend_pool_checkout_wait: histogram(
                &r,
                "backend_pool_checkout_wait_seconds",
                "Time a command waited for a pooled backend connection (an idle one, or a new one opened and signed in).",
                seconds.clone(),
            ),
            memory_release_duration: histogram(
                &r,
                "memory_release_duration_seconds",
                "Time of each pass handing freed memory back to the system after connections closed.",
                seconds,
            ),
            backend_errors_by_stage: STAGES.map(|s| backend_errors.with([s.label()])),
            reloads: {
                let f = counters(
                    &r,
                    "config_reloads_total",
                    "Configuration reloads (SIGHUP), by result.",
                    ["result"],
                );
                [f.with(["success"]), f.with(["failure"])]
            },
            config_last_reload_success: reload_ok,
            admin_requests: {
                let f = counters(
                    &r,
                    "admin_requests_total",
                    "Administrative requests (HTTP /admin/... and the oidcListKeys/oidcRefreshKeys commands), by endpoint and result.",
                    ["endpoint", "result"],
                );
                AdminAction::ALL.map(|a| AdminOutcome::ALL.map(|o| f.with([a.label(), o.label()])))
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
        self.auth_attempts.success.inc();
    }

    pub fn count_auth_failure(&self, reason: &str) {
        self.auth_attempts.failure(reason).inc();
    }

    pub fn count_admin(&self, action: AdminAction, outcome: AdminOutcome) {
        let a = AdminAction::ALL.iter().position(|x| *x == action);
        let o = AdminOutcome::ALL.iter().position(|x| *x == outcome);
        if let Some(c) = a
            .zip(o)
            .and_then(|(a, o)| self.admin_requests.get(a)?.get(o))
        {
            c.inc();
        }
    }

    /// A reload's outcome; a success also stamps the last-success time.
    pub fn count_reload(&self, ok: bool) {
        if let Some(c) = self.reloads.get(usize::from(!ok)) {
            c.inc();
        }
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
                m.sign_ins.count(idp, session.flow);
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
            Event::WireError { kind, .. } => m.wire_errors.inc(kind),
            Event::Backend { stage, .. } => m.count_backend_error(*stage),
            Event::BackendConnected { seconds } => m.backend_connect_duration.observe(*seconds),
            Event::Leased { seconds } => m.backend_pool_checkout_wait.observe(*seconds),
            // Opening a pooled connection failed; timeouts are the pool's own count.
            Event::LeaseFailed {
                error: crate::backend::LeaseError::Backend(_),
            } => m.count_backend_error(BackendStage::Connect),
            Event::LeaseFailed { .. } => {}
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
            Event::Refused { .. }
            | Event::ClientIo { .. }
            | Event::FailPointSet { .. }
            | Event::FailPointFired { .. } => {}
        }
    }

    fn operator(&self, event: &OperatorEvent<'_>) {
        match event {
            OperatorEvent::Reload { ok, .. } => self.0.count_reload(*ok),
            OperatorEvent::Admin {
                action, outcome, ..
            } => self.0.count_admin(*action, *outcome),
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
    use crate::auth::AuthFailure;
    use crate::wire::WireError;

    /// The lists of resolved series cover every label the session path
    /// emits (a missing one would still count, through a lookup).
    #[test]
    fn every_auth_failure_and_wire_error_has_a_resolved_series() {
        let s = || "x".to_string();
        let failures = [
            AuthFailure::BadPayload(s()),
            AuthFailure::NoIdentityProvider(s()),
            AuthFailure::MalformedToken(s()),
            AuthFailure::TokenTooLarge(1),
            AuthFailure::Algorithm(s()),
            AuthFailure::UnknownKey(s()),
            AuthFailure::BadSignature,
            AuthFailure::Issuer(s()),
            AuthFailure::Audience(s()),
            AuthFailure::Expired,
            AuthFailure::NotYetValid,
            AuthFailure::Claim(s()),
            AuthFailure::PrincipalChanged {
                hint: s(),
                principal: s(),
            },
        ];
        for f in &failures {
            assert!(AUTH_FAILURES.contains(&f.reason()), "{}", f.reason());
        }
        let errors = [
            WireError::LengthTooSmall(1),
            WireError::LengthTooLarge { len: 1, max: 1 },
            WireError::Truncated {
                what: "x",
                need: 1,
                have: 0,
            },
            WireError::ReservedFlags(1),
            WireError::BodyCount(2),
            WireError::UnknownSectionKind(9),
            WireError::TooManySequences(1),
            WireError::ChecksumMismatch {
                expected: 1,
                computed: 2,
            },
            WireError::InvalidBson {
                what: "x",
                detail: s(),
            },
            WireError::InvalidCString("x"),
            WireError::InvalidIdentifier,
            WireError::DuplicateField {
                command: s(),
                field: s(),
            },
            WireError::FieldType {
                command: s(),
                field: s(),
                expected: "x",
            },
            WireError::UnsupportedOpCode(1),
            WireError::UnexpectedEof,
            WireError::Io(s()),
        ];
        assert_eq!(errors.len(), WIRE_KINDS.len());
        for e in &errors {
            assert!(WIRE_KINDS.contains(&e.kind()), "{}", e.kind());
        }
    }

    #[test]
    fn sign_ins_are_counted_by_the_idps_of_the_config_and_any_other() {
        let m = Metrics::new();
        m.sign_ins.resolve(["okta", "entra"]);
        m.sign_ins.resolve(["okta"]);
        m.sign_ins.count("okta", Flow::Human);
        m.sign_ins.count("other", Flow::Machine);
        let text = m.render();
        for line in [
            "mongo_oidc_proxy_sign_ins_total{flow=\"human\",idp=\"okta\"} 1",
            "mongo_oidc_proxy_sign_ins_total{flow=\"speculative\",idp=\"entra\"} 0",
            "mongo_oidc_proxy_sign_ins_total{flow=\"machine\",idp=\"other\"} 1",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }

    #[test]
    fn admin_reload_and_wire_counters_keep_their_labels() {
        let m = Metrics::new();
        m.count_admin(AdminAction::JwksRevoke, AdminOutcome::NotFound);
        m.count_reload(false);
        m.wire_errors.inc("checksum_mismatch");
        m.wire_errors.inc("a_kind_added_later");
        m.auth_attempts.failure("a_reason_added_later").inc();
        let text = m.render();
        for line in [
            "mongo_oidc_proxy_admin_requests_total{endpoint=\"jwks_revoke\",result=\"not_found\"} 1",
            "mongo_oidc_proxy_config_reloads_total{result=\"failure\"} 1",
            "mongo_oidc_proxy_config_reloads_total{result=\"success\"} 0",
            "mongo_oidc_proxy_wire_errors_total{kind=\"checksum_mismatch\"} 1",
            "mongo_oidc_proxy_wire_errors_total{kind=\"a_kind_added_later\"} 1",
            "mongo_oidc_proxy_auth_attempts_total{reason=\"a_reason_added_later\",result=\"failure\"} 1",
            "mongo_oidc_proxy_connections_rejected_total{reason=\"tls_timeout\"} 0",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }

    #[test]
    fn renders_prometheus_names() {
        let m = Metrics::new();
        m.count_auth_failure("expired");
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
