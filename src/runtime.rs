//! One runtime built from the config, and the process state sessions share.
//!
//! [`Runtime::build`] turns a [`Config`] into the live parts — TLS acceptor,
//! identity-provider registry, grants, backend, limits — and is the only
//! place that does. `check`, start-up and reload all call it, so `check`
//! refuses exactly what start-up refuses and a reload refuses exactly what a
//! restart would. A built runtime is immutable: a reload builds a new one and
//! swaps it in whole ([`Shared::runtime`]); sessions read the current one
//! per message.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::admin::AdminToken;
use crate::auth::scram_server::SetupUser;
use crate::auth::IdpRegistry;
use crate::authz::{Grants, Secrets};
use crate::backend::Backend;
use crate::config::{Config, ConfigError, LimitsConfig};
use crate::session::events::Sinks;
use crate::session::failpoint::FailPoints;
use crate::session::registry::SessionRegistry;

static VERSIONS: AtomicU64 = AtomicU64::new(1);

/// The live parts of one config. Immutable once built.
pub struct Runtime {
    /// Distinct for every build: sessions compare it to notice a reload.
    pub version: u64,
    pub config: Config,
    pub tls: TlsAcceptor,
    pub registry: Arc<IdpRegistry>,
    pub grants: Arc<Grants>,
    pub backend: Arc<Backend>,
    pub limits: LimitsConfig,
    pub drain: Duration,
    /// The admin endpoints' token; `None`: the endpoints answer 404.
    pub admin: Option<AdminToken>,
    /// `[testing] enable_test_commands`: `configureFailPoint` is served and
    /// the fail points it sets apply.
    pub test_commands: bool,
    /// `[testing] setup_user`: the test-only SCRAM-SHA-256 set-up user.
    pub setup_user: Option<Arc<SetupUser>>,
}

impl Runtime {
    /// Builds every part, doing no network I/O; `previous` is the running
    /// runtime on reload, whose unchanged backend and JWKS caches are kept.
    pub fn build(config: Config, previous: Option<&Runtime>) -> Result<Runtime, ConfigError> {
        let tls = TlsAcceptor::from(crate::tls::server_config(&config.listen)?);
        let registry = Arc::new(IdpRegistry::rebuild(
            &config.identity_provider,
            previous.map(|p| p.registry.as_ref()),
        )?);
        let grants = Arc::new(Grants::from_config(&config.grant, Secrets::Resolve)?);
        crate::authz::check_prefixes(&config.grant, &config.identity_provider)?;
        let backend = match previous {
            Some(p) if p.config.backend == config.backend => p.backend.clone(),
            _ => Arc::new(Backend::new(&config.backend)?),
        };
        // Pools of backend users no grant names any more close.
        backend.retain_users(
            grants
                .backend_identities()
                .map(|b| (b.user.as_str(), b.password.as_str())),
        );
        crate::fdlimit::ensure_capacity(config.limits.max_connections)?;
        crate::audit::check(config.audit.as_ref())?;
        let admin = config
            .admin
            .as_ref()
            .map(AdminToken::from_config)
            .transpose()?;
        let setup_user = SetupUser::from_config(
            &config.testing,
            &config.grant,
            previous.and_then(|p| p.setup_user.as_ref()),
        )?;
        Ok(Runtime {
            admin,
            setup_user,
            version: VERSIONS.fetch_add(1, Ordering::Relaxed),
            limits: config.limits.clone(),
            drain: Duration::from_secs(config.shutdown.drain_secs),
            test_commands: config.testing.enable_test_commands,
            config,
            tls,
            registry,
            grants,
            backend,
        })
    }

    /// What a reload may not change: the sockets already bound.
    pub fn check_reloadable(&self, new: &Config) -> Result<(), ConfigError> {
        if new.listen.address != self.config.listen.address {
            return Err(ConfigError::new(
                "listen.address",
                format!(
                    "cannot change on reload (listening on {}); restart the proxy to listen on {}",
                    self.config.listen.address, new.listen.address
                ),
            ));
        }
        let metrics = |c: &Config| c.metrics.as_ref().map(|m| m.address);
        if metrics(new) != metrics(&self.config) {
            return Err(ConfigError::new(
                "metrics.address",
                "cannot change on reload; restart the proxy to serve metrics elsewhere",
            ));
        }
        Ok(())
    }

    /// One line saying what a reload to `new` changes.
    pub fn changes(&self, new: &Runtime) -> String {
        let (old, cfg) = (&self.config, &new.config);
        let key =
            |i: &crate::config::IdentityProviderConfig| (i.issuer.clone(), i.audience.clone());
        let old_idps: Vec<_> = old.identity_provider.iter().collect();
        let mut parts = vec!["TLS certificate and key re-read".to_string()];
        for idp in &cfg.identity_provider {
            match old_idps.iter().find(|o| key(o) == key(idp)) {
                None => parts.push(format!("identity provider {} added", idp.issuer)),
                Some(o) if *o != idp => {
                    parts.push(format!("identity provider {} changed", idp.issuer))
                }
                Some(_) => {}
            }
        }
        for o in &old.identity_provider {
            if !cfg.identity_provider.iter().any(|n| key(n) == key(o)) {
                parts.push(format!("identity provider {} removed", o.issuer));
            }
        }
        parts.push(format!(
            "{} grant(s), was {}",
            cfg.grant.len(),
            old.grant.len()
        ));
        if old.backend != cfg.backend {
            parts.push(
                "backend changed (new pools; the old ones close as their commands end)".into(),
            );
        }
        if old.limits != cfg.limits {
            parts.push("limits changed".into());
        }
        if old.shutdown != cfg.shutdown {
            parts.push("shutdown changed".into());
        }
        if old.audit != cfg.audit {
            parts.push("audit changed".into());
        }
        match (&self.admin, &new.admin) {
            (None, Some(_)) => parts.push("admin endpoints enabled".into()),
            (Some(_), None) => parts.push("admin endpoints disabled".into()),
            (Some(a), Some(b)) if a != b => parts.push("admin token changed".into()),
            _ => {}
        }
        if old.testing.enable_test_commands == cfg.testing.enable_test_commands
            && old.testing != cfg.testing
        {
            parts.push("SCRAM set-up user changed".into());
        } else if old.testing != cfg.testing {
            parts.push(format!(
                "test commands turned {}",
                if new.test_commands {
                    "on"
                } else {
                    "off (fail points cleared)"
                }
            ));
        }
        parts.join("; ")
    }
}

/// How long sessions have to end once the drain period is over
/// ([`Stage::Closing`]) before the server aborts them. A session still busy at
/// half of it (a client that does not take its last reply) ends itself, so
/// its end is recorded like every other.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Where the process is in its life; sessions watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Serving,
    /// SIGTERM: hello answers 91, open connections are still served.
    Draining,
    /// The drain period is over: interrupt what runs (11600) and close.
    Closing,
}

/// What a successful reload changed.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub changes: String,
}

/// What every session shares with the listener.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub sinks: Sinks,
    /// The open sessions (also one of the sinks), for the admin endpoints.
    pub sessions: Arc<SessionRegistry>,
    pub stage: watch::Receiver<Stage>,
    /// Returned as `serviceId` to load-balanced clients.
    pub service_id: bson::oid::ObjectId,
    /// What each client address holds and has failed.
    pub admission: crate::admission::Table,
    /// `configureFailPoint` state: process-wide, as on mongod; consulted
    /// only while the runtime has test commands on.
    pub failpoints: std::sync::Mutex<FailPoints>,
    /// Notified when much memory was just freed: a connection ended, or a
    /// message of 1 MiB or more was relayed ([`crate::memory`]).
    pub memory_freed: Arc<tokio::sync::Notify>,
    /// Who owns which backend cursors and logical sessions: process-wide,
    /// as the backend's are, so it outlives reloads.
    pub ownership: Arc<crate::backend::ownership::Ownership>,
    next_connection_id: AtomicI32,
}

impl Shared {
    pub fn new(runtime: Runtime, mut sinks: Sinks, stage: watch::Receiver<Stage>) -> Shared {
        let sessions = Arc::new(SessionRegistry::new());
        sinks.add(sessions.clone());
        Shared {
            runtime: ArcSwap::from_pointee(runtime),
            sinks,
            sessions,
            stage,
            service_id: bson::oid::ObjectId::new(),
            admission: crate::admission::Table::default(),
            failpoints: std::sync::Mutex::new(FailPoints::default()),
            memory_freed: Arc::default(),
            ownership: Arc::default(),
            next_connection_id: AtomicI32::new(1),
        }
    }

    pub fn next_connection_id(&self) -> i32 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }
}
