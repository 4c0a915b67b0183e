//! Whether this proxy should get traffic (`/readyz`, the
//! `mongo_oidc_proxy_ready` gauge): it listens, it is not draining, the
//! backend answered a background probe recently, and every identity
//! provider's keys loaded at least once.
//!
//! [`assess`] is the rule, a pure function of the [`Checks`]; [`Health`]
//! gathers them from the running proxy and probes the backend every
//! [`PROBE_INTERVAL`] with a fresh `hello` ([`crate::backend::Backend::health_check`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::runtime::{Shared, Stage};

/// How often the backend is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long after its last answer the backend still counts as up when
/// probes are still running (a probe may take up to the connect timeout):
/// three probes in a row missed.
pub const BACKEND_STALE: Duration = Duration::from_secs(6);

/// The state of every check, as read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checks {
    pub listening: bool,
    pub draining: bool,
    pub backend: BackendCheck,
    /// One per distinct issuer, in config order.
    pub idps: Vec<IdpCheck>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendCheck {
    /// Time since the backend last answered a probe; `None`: never.
    pub since_answer: Option<Duration>,
    /// Whether the latest finished probe was answered.
    pub latest_ok: bool,
    /// Why the latest failed probe failed.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdpCheck {
    pub issuer: String,
    /// Keys were loaded at least once.
    pub loaded: bool,
    pub last_error: Option<String>,
}

/// What [`assess`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    pub backend_up: bool,
    /// `/readyz`'s body: `ready`, or `not ready: ` and each failing check.
    pub body: String,
}

impl BackendCheck {
    /// Up: the latest probe was answered, and not too long ago.
    pub fn up(&self) -> bool {
        self.latest_ok && self.since_answer.is_some_and(|d| d <= BACKEND_STALE)
    }
}

/// The readiness rule. Each failing check is named with what was seen, so
/// an operator reading `/readyz` knows where to look.
pub fn assess(c: &Checks) -> Verdict {
    let mut failing = Vec::new();
    // A drain closes the listener: saying so once is enough.
    if !c.listening && !c.draining {
        failing.push("not listening".to_string());
    }
    if c.draining {
        failing.push("draining (SIGTERM): new connections are refused".to_string());
    }
    let backend_up = c.backend.up();
    if !backend_up {
        let seen = match c.backend.since_answer {
            None => "no answer yet".to_string(),
            Some(d) => format!("no answer for {} s", d.as_secs()),
        };
        failing.push(format!(
            "backend: {seen}{}",
            last_error(c.backend.last_error.as_deref())
        ));
    }
    for idp in c.idps.iter().filter(|i| !i.loaded) {
        failing.push(format!(
            "identity provider {}: keys never loaded{}",
            idp.issuer,
            last_error(idp.last_error.as_deref())
        ));
    }
    let ready = failing.is_empty();
    let body = if ready {
        "ready\n".to_string()
    } else {
        format!("not ready: {}\n", failing.join("; "))
    };
    Verdict {
        ready,
        backend_up,
        body,
    }
}

fn last_error(e: Option<&str>) -> String {
    e.map(|e| format!(" (last error: {e})")).unwrap_or_default()
}

#[derive(Debug, Default)]
struct ProbeState {
    last_answer: Option<Instant>,
    latest_ok: bool,
    last_error: Option<String>,
}

/// The live side of readiness: the listener's flag, the backend probe's
/// outcomes, and a weak handle on the proxy's shared state (the stage and
/// the current runtime's identity providers), so it keeps nothing alive.
pub struct Health {
    shared: Weak<Shared>,
    listening: AtomicBool,
    probe: Mutex<ProbeState>,
}

impl Health {
    pub fn new(shared: &Arc<Shared>) -> Arc<Health> {
        Arc::new(Health {
            shared: Arc::downgrade(shared),
            listening: AtomicBool::new(false),
            probe: Mutex::new(ProbeState::default()),
        })
    }

    /// Marks the listener as accepting until the guard is dropped (also
    /// when the accept loop ends by a panic).
    pub fn listening(self: &Arc<Self>) -> ListeningGuard {
        self.listening.store(true, Ordering::Release);
        ListeningGuard(self.clone())
    }

    /// The proxy's shared state, while it runs.
    pub fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.upgrade()
    }

    /// The checks as they stand now; `None` once the proxy is gone.
    pub fn checks(&self) -> Option<Checks> {
        let shared = self.shared.upgrade()?;
        let probe = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        let backend = BackendCheck {
            since_answer: probe.last_answer.map(|t| t.elapsed()),
            latest_ok: probe.latest_ok,
            last_error: probe.last_error.clone(),
        };
        drop(probe);
        let runtime = shared.runtime.load();
        let idps = runtime
            .registry
            .jwks_caches()
            .iter()
            .map(|cache| {
                let stats = cache.stats();
                IdpCheck {
                    issuer: cache.issuer().to_string(),
                    loaded: stats.last_success_unix.is_some(),
                    last_error: stats.last_error,
                }
            })
            .collect();
        let draining = *shared.stage.borrow() != Stage::Serving;
        Some(Checks {
            listening: self.listening.load(Ordering::Acquire),
            draining,
            backend,
            idps,
        })
    }

    /// The verdict now (a stopped proxy is not ready).
    pub fn verdict(&self) -> Verdict {
        match self.checks() {
            Some(c) => assess(&c),
            None => Verdict {
                ready: false,
                backend_up: false,
                body: "not ready: the proxy has stopped\n".into(),
            },
        }
    }

    fn record(&self, result: Result<(), String>) {
        let mut p = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        let was_up = p.latest_ok;
        match result {
            Ok(()) => {
                p.last_answer = Some(Instant::now());
                p.latest_ok = true;
                p.last_error = None;
                if !was_up {
                    tracing::info!("backend answered the health probe");
                }
            }
            Err(e) => {
                if was_up || p.last_error.is_none() {
                    tracing::warn!(error = %e, "backend health probe failed");
                }
                p.latest_ok = false;
                p.last_error = Some(e);
            }
        }
    }

    /// Probes the current runtime's backend every [`PROBE_INTERVAL`] until
    /// the proxy is gone.
    pub fn spawn_probe(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let health = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(h) = health.upgrade() else { return };
                let Some(backend) = h.shared.upgrade().map(|s| s.runtime.load().backend.clone())
                else {
                    return;
                };
                let started = tokio::time::Instant::now();
                let result = backend.health_check().await.map_err(|e| e.to_string());
                h.record(result);
                drop((h, backend));
                tokio::time::sleep_until(started + PROBE_INTERVAL).await;
            }
        })
    }
}

/// Clears [`Health`]'s listening flag when dropped.
pub struct ListeningGuard(Arc<Health>);

impl Drop for ListeningGuard {
    fn drop(&mut self) {
        self.0.listening.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Checks {
        Checks {
            listening: true,
            draining: false,
            backend: BackendCheck {
                since_answer: Some(Duration::from_secs(1)),
                latest_ok: true,
                last_error: None,
            },
            idps: vec![IdpCheck {
                issuer: "https://idp.example.com".into(),
                loaded: true,
                last_error: None,
            }],
        }
    }

    fn body(edit: impl Fn(&mut Checks)) -> (bool, String) {
        let mut c = healthy();
        edit(&mut c);
        let v = assess(&c);
        (v.ready, v.body)
    }

    #[test]
    fn ready_when_every_check_passes() {
        assert_eq!(
            assess(&healthy()),
            Verdict {
                ready: true,
                backend_up: true,
                body: "ready\n".into()
            }
        );
    }

    #[test]
    fn each_failing_check_is_named() {
        let refused = "backend 127.0.0.1:27018: connection refused; is mongod running and is \
                       backend.uri right?";
        type Edit = Box<dyn Fn(&mut Checks)>;
        let cases: Vec<(Edit, String)> =
            vec![
            (Box::new(|c| c.listening = false), "not ready: not listening\n".into()),
            (
                Box::new(|c| c.draining = true),
                "not ready: draining (SIGTERM): new connections are refused\n".into(),
            ),
            (
                Box::new(|c| {
                    c.draining = true;
                    c.listening = false;
                }),
                "not ready: draining (SIGTERM): new connections are refused\n".into(),
            ),
            (
                Box::new(|c| c.backend = BackendCheck::default()),
                "not ready: backend: no answer yet\n".into(),
            ),
            (
                Box::new(move |c| {
                    c.backend = BackendCheck {
                        since_answer: None,
                        latest_ok: false,
                        last_error: Some(refused.into()),
                    }
                }),
                format!("not ready: backend: no answer yet (last error: {refused})\n"),
            ),
            (
                Box::new(move |c| {
                    c.backend = BackendCheck {
                        since_answer: Some(Duration::from_millis(6500)),
                        latest_ok: false,
                        last_error: Some(refused.into()),
                    }
                }),
                format!("not ready: backend: no answer for 6 s (last error: {refused})\n"),
            ),
            (
                // A probe still hanging: the last answer is too old.
                Box::new(|c| c.backend.since_answer = Some(Duration::from_secs(7))),
                "not ready: backend: no answer for 7 s\n".into(),
            ),
            (
                Box::new(|c| {
                    c.idps.push(IdpCheck {
                        issuer: "https://other.example".into(),
                        loaded: false,
                        last_error: Some("fetching 'https://other.example/x' failed: 404".into()),
                    })
                }),
                "not ready: identity provider https://other.example: keys never loaded \
                 (last error: fetching 'https://other.example/x' failed: 404)\n"
                    .into(),
            ),
            (
                Box::new(|c| {
                    c.draining = true;
                    c.idps[0].loaded = false;
                }),
                "not ready: draining (SIGTERM): new connections are refused; identity provider \
                 https://idp.example.com: keys never loaded\n"
                    .into(),
            ),
        ];
        for (edit, want) in cases {
            assert_eq!(body(edit), (false, want));
        }
    }

    #[test]
    fn a_failed_probe_makes_the_backend_down_at_once_and_stale_answers_too() {
        let mut b = healthy().backend;
        assert!(b.up());
        b.latest_ok = false;
        assert!(!b.up(), "the latest probe failed");
        b.latest_ok = true;
        b.since_answer = Some(BACKEND_STALE + Duration::from_millis(1));
        assert!(!b.up(), "no answer for too long");
        // A later IdP failure keeps the proxy ready: the old keys serve.
        let (ready, _) = body(|c| c.idps[0].last_error = Some("timeout".into()));
        assert!(ready);
    }
}
