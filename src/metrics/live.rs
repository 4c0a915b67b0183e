//! Metrics read at scrape time from the running proxy rather than counted
//! from events: readiness, the JWKS caches of the current runtime and the
//! verified-token cache. The parts they come from (`readiness`,
//! `auth::jwks`, `auth::idp`) keep their own counts and know nothing of
//! Prometheus; data flows one way, from them to here.
//!
//! The `issuer` label takes the configured issuers' values only, so it is
//! bounded by the config. Every scrape resets and refills these families,
//! so their series are looked up then (typed by label count, see
//! [`Family`]), off the session path.

use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::backend::ownership::OwnershipStats;
use crate::backend::pool::{Closed, Purpose, StatsSnapshot};

use crate::readiness::Health;

use super::{Family, NS};

pub(super) struct Live {
    health: Arc<Health>,
    /// Scrapes may run concurrently; each one resets and refills these.
    metrics: Mutex<Families>,
    descs: Vec<Desc>,
}

struct Families {
    ready: IntGauge,
    backend_up: IntGauge,
    jwks_fetches: Family<IntCounterVec, 2>,
    jwks_keys: Family<IntGaugeVec, 1>,
    jwks_last_success: Family<GaugeVec, 1>,
    token_cache_lookups: Family<IntCounterVec, 1>,
    pool_connections: Family<IntGaugeVec, 1>,
    pool_in_use: Family<IntGaugeVec, 1>,
    pool_waiters: IntGauge,
    pool_created: IntCounter,
    pool_closed: Family<IntCounterVec, 1>,
    pool_failures: Family<IntCounterVec, 1>,
    cursors: IntGauge,
    sessions: IntGauge,
    transactions: IntGauge,
    tables_full: Family<IntCounterVec, 1>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS)
}

impl Families {
    fn new() -> Result<Families, prometheus::Error> {
        Ok(Families {
            ready: IntGauge::with_opts(opts(
                "ready",
                "1 while /readyz answers 200 (listening, not draining, backend answering, \
                 every identity provider's keys loaded once), else 0.",
            ))?,
            backend_up: IntGauge::with_opts(opts(
                "backend_up",
                "1 while the backend answers the background health probe, else 0.",
            ))?,
            jwks_fetches: Family::build(["issuer", "result"], |l| {
                IntCounterVec::new(
                    opts(
                        "jwks_fetches_total",
                        "JWKS fetches (discovery and keys) by issuer and result.",
                    ),
                    l,
                )
            })?,
            jwks_keys: Family::build(["issuer"], |l| {
                IntGaugeVec::new(opts("jwks_keys", "Keys loaded now, by issuer."), l)
            })?,
            jwks_last_success: Family::build(["issuer"], |l| {
                GaugeVec::new(
                    opts(
                        "jwks_last_success_timestamp_seconds",
                        "When the issuer's keys were last fetched successfully, Unix time; 0 if never.",
                    ),
                    l,
                )
            })?,
            token_cache_lookups: Family::build(["result"], |l| {
                IntCounterVec::new(
                    opts(
                        "token_cache_lookups_total",
                        "Verified-token cache lookups by result (a hit skips the signature check).",
                    ),
                    l,
                )
            })?,
            pool_connections: Family::build(["state"], |l| {
                IntGaugeVec::new(
                    opts(
                        "backend_pool_connections",
                        "Pooled backend connections by state (idle, in_use), over every pool.",
                    ),
                    l,
                )
            })?,
            pool_in_use: Family::build(["purpose"], |l| {
                IntGaugeVec::new(
                    opts(
                        "backend_pool_connections_in_use",
                        "Leased backend connections by purpose (request, cursor, transaction, exhaust).",
                    ),
                    l,
                )
            })?,
            pool_waiters: IntGauge::with_opts(opts(
                "backend_pool_waiters",
                "Commands waiting for a pooled backend connection now.",
            ))?,
            pool_created: IntCounter::with_opts(opts(
                "backend_pool_connections_created_total",
                "Backend connections opened (TLS, hello, sign-in) by the pools.",
            ))?,
            pool_closed: Family::build(["reason"], |l| {
                IntCounterVec::new(
                    opts(
                        "backend_pool_connections_closed_total",
                        "Pooled backend connections closed, by reason (idle, interrupted, stale, retired).",
                    ),
                    l,
                )
            })?,
            pool_failures: Family::build(["reason"], |l| {
                IntCounterVec::new(
                    opts(
                        "backend_pool_checkout_failures_total",
                        "Commands that got no backend connection, by reason (timeout, max_waiters, connect).",
                    ),
                    l,
                )
            })?,
            cursors: IntGauge::with_opts(opts(
                "cursors_tracked",
                "Backend cursors whose owner the proxy tracks.",
            ))?,
            sessions: IntGauge::with_opts(opts(
                "logical_sessions_tracked",
                "Logical sessions (lsid) whose owner the proxy tracks.",
            ))?,
            transactions: IntGauge::with_opts(opts(
                "transactions_open",
                "Tracked logical sessions with a transaction started and not yet committed or aborted.",
            ))?,
            tables_full: Family::build(["table"], |l| {
                IntCounterVec::new(
                    opts(
                        "ownership_table_full_total",
                        "Cursors or sessions refused because the ownership table was full.",
                    ),
                    l,
                )
            })?,
        })
    }

    fn collectors(&self) -> [&dyn Collector; 16] {
        [
            &self.ready,
            &self.backend_up,
            self.jwks_fetches.vec(),
            self.jwks_keys.vec(),
            self.jwks_last_success.vec(),
            self.token_cache_lookups.vec(),
            self.pool_connections.vec(),
            self.pool_in_use.vec(),
            &self.pool_waiters,
            &self.pool_created,
            self.pool_closed.vec(),
            self.pool_failures.vec(),
            &self.cursors,
            &self.sessions,
            &self.transactions,
            self.tables_full.vec(),
        ]
    }

    /// The pools' and the ownership table's counts; every series exists
    /// from the start, at zero.
    fn upstream(&self, pool: &StatsSnapshot, own: &OwnershipStats) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.pool_connections.with(["idle"]).set(n(pool.idle));
        self.pool_connections
            .with(["in_use"])
            .set(n(pool.in_use_total()));
        for (purpose, count) in Purpose::ALL.iter().zip(pool.in_use) {
            self.pool_in_use.with([purpose.label()]).set(n(count));
        }
        self.pool_waiters.set(n(pool.waiters));
        self.pool_created.reset();
        self.pool_created.inc_by(pool.created);
        for (why, count) in Closed::ALL.iter().zip(pool.closed) {
            self.pool_closed.with([why.label()]).inc_by(count);
        }
        for (reason, count) in ["timeout", "max_waiters", "connect"]
            .iter()
            .zip(pool.failures)
        {
            self.pool_failures.with([reason]).inc_by(count);
        }
        self.cursors.set(n(own.cursors));
        self.sessions.set(n(own.sessions));
        self.transactions.set(n(own.transactions));
        self.tables_full.with(["cursors"]).inc_by(own.cursors_full);
        self.tables_full
            .with(["sessions"])
            .inc_by(own.sessions_full);
    }
}

impl Live {
    pub(super) fn new(health: Arc<Health>) -> Result<Live, prometheus::Error> {
        let families = Families::new()?;
        let descs = families
            .collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        Ok(Live {
            health,
            metrics: Mutex::new(families),
            descs,
        })
    }
}

impl Collector for Live {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let verdict = self.health.verdict();
        f.ready.set(i64::from(verdict.ready));
        f.backend_up.set(i64::from(verdict.backend_up));
        f.jwks_fetches.vec().reset();
        f.jwks_keys.vec().reset();
        f.jwks_last_success.vec().reset();
        f.token_cache_lookups.vec().reset();
        f.pool_closed.vec().reset();
        f.pool_failures.vec().reset();
        f.tables_full.vec().reset();
        let mut pool = StatsSnapshot::default();
        let mut own = OwnershipStats::default();
        if let Some(shared) = self.health.shared() {
            pool = shared.runtime.load().backend.pool_stats();
            own = shared.ownership.stats();
        }
        f.upstream(&pool, &own);
        if let Some(shared) = self.health.shared() {
            let runtime = shared.runtime.load();
            for cache in runtime.registry.jwks_caches() {
                let issuer = cache.issuer();
                let s = cache.stats();
                f.jwks_fetches.with([issuer, "success"]).inc_by(s.successes);
                f.jwks_fetches.with([issuer, "failure"]).inc_by(s.failures);
                f.jwks_keys
                    .with([issuer])
                    .set(i64::try_from(s.keys).unwrap_or(i64::MAX));
                f.jwks_last_success
                    .with([issuer])
                    .set(s.last_success_unix.unwrap_or(0.0));
            }
            let tokens = runtime.registry.token_cache_stats();
            f.token_cache_lookups.with(["hit"]).inc_by(tokens.hits());
            f.token_cache_lookups.with(["miss"]).inc_by(tokens.misses());
        }
        f.collectors().iter().flat_map(|c| c.collect()).collect()
    }
}
