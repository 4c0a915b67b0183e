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
use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};

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
        })
    }

    fn collectors(&self) -> [&dyn Collector; 6] {
        [
            &self.ready,
            &self.backend_up,
            self.jwks_fetches.vec(),
            self.jwks_keys.vec(),
            self.jwks_last_success.vec(),
            self.token_cache_lookups.vec(),
        ]
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
