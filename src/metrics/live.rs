//! Metrics read at scrape time from the running proxy rather than counted
//! from events: readiness, the JWKS caches of the current runtime and the
//! verified-token cache. The parts they come from (`readiness`,
//! `auth::jwks`, `auth::idp`) keep their own counts and know nothing of
//! Prometheus; data flows one way, from them to here.
//!
//! The `issuer` label takes the configured issuers' values only, so it is
//! bounded by the config.

use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::readiness::Health;

use super::NS;

pub(super) struct Live {
    health: Arc<Health>,
    /// Scrapes may run concurrently; each one resets and refills these.
    metrics: Mutex<Families>,
    descs: Vec<Desc>,
}

struct Families {
    ready: IntGauge,
    backend_up: IntGauge,
    jwks_fetches: IntCounterVec,
    jwks_keys: IntGaugeVec,
    jwks_last_success: GaugeVec,
    token_cache_lookups: IntCounterVec,
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
            jwks_fetches: IntCounterVec::new(
                opts(
                    "jwks_fetches_total",
                    "JWKS fetches (discovery and keys) by issuer and result.",
                ),
                &["issuer", "result"],
            )?,
            jwks_keys: IntGaugeVec::new(
                opts("jwks_keys", "Keys loaded now, by issuer."),
                &["issuer"],
            )?,
            jwks_last_success: GaugeVec::new(
                opts(
                    "jwks_last_success_timestamp_seconds",
                    "When the issuer's keys were last fetched successfully, Unix time; 0 if never.",
                ),
                &["issuer"],
            )?,
            token_cache_lookups: IntCounterVec::new(
                opts(
                    "token_cache_lookups_total",
                    "Verified-token cache lookups by result (a hit skips the signature check).",
                ),
                &["result"],
            )?,
        })
    }

    fn collectors(&self) -> [&dyn Collector; 6] {
        [
            &self.ready,
            &self.backend_up,
            &self.jwks_fetches,
            &self.jwks_keys,
            &self.jwks_last_success,
            &self.token_cache_lookups,
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
        f.jwks_fetches.reset();
        f.jwks_keys.reset();
        f.jwks_last_success.reset();
        f.token_cache_lookups.reset();
        if let Some(shared) = self.health.shared() {
            let runtime = shared.runtime.load();
            for cache in runtime.registry.jwks_caches() {
                let issuer = cache.issuer();
                let s = cache.stats();
                f.jwks_fetches
                    .with_label_values(&[issuer, "success"])
                    .inc_by(s.successes);
                f.jwks_fetches
                    .with_label_values(&[issuer, "failure"])
                    .inc_by(s.failures);
                f.jwks_keys
                    .with_label_values(&[issuer])
                    .set(i64::try_from(s.keys).unwrap_or(i64::MAX));
                f.jwks_last_success
                    .with_label_values(&[issuer])
                    .set(s.last_success_unix.unwrap_or(0.0));
            }
            let tokens = runtime.registry.token_cache_stats();
            f.token_cache_lookups
                .with_label_values(&["hit"])
                .inc_by(tokens.hits());
            f.token_cache_lookups
                .with_label_values(&["miss"])
                .inc_by(tokens.misses());
        }
        f.collectors().iter().flat_map(|c| c.collect()).collect()
    }
}
