//! The upstream: which pool serves a request, and leasing from it.
//!
//! A session's grant resolves to a [`Target`] (the backend identity; one
//! cluster for now). [`Backend::lease`] finds the writable primary, picks the
//! pool of (primary, backend user) — creating it on first use — and leases a
//! connection as a [`Lease`], opened (TLS, hello, SCRAM) only when no idle
//! one is left. A connection idle for a minute is pinged before it is handed
//! out, so one the server closed meanwhile is replaced without the client
//! noticing.
//!
//! One background task per backend closes idle connections past the idle
//! timeout and opens new ones up to `min_size`.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bson::rawdoc;

use super::pool::{CheckoutError, Closed, Guard, Pool, PoolSettings, Purpose, StatsSnapshot};
use super::{Backend, BackendConnection, BackendError};

/// A connection idle longer than this is pinged before reuse (mongos's
/// refresh requirement).
const REFRESH_AFTER: Duration = Duration::from_secs(60);
/// How often idle connections are reaped and `min_size` is restored.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// An idle connection gives back its read buffer after this long, so a
/// quiet pool holds none (the next reply allocates it again).
const RELEASE_BUFFERS_AFTER: Duration = Duration::from_millis(500);
/// Attempts at a lease whose connection failed its ping.
const LEASE_ATTEMPTS: usize = 3;

/// Which backend identity a request runs as.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

/// A leased backend connection.
pub type Lease = Guard<BackendConnection>;

/// Why no connection could be leased.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("no backend connection within {ms} ms ({pool})")]
    Timeout { ms: u64, pool: String },
    #[error("{waiters} requests already wait for a backend connection ({pool})")]
    TooManyWaiters { waiters: usize, pool: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolKey {
    host: String,
    port: u16,
    user: String,
    password: String,
}

/// Every pool of one backend: a few per host (one per backend user), so a
/// list scanned with borrowed names finds one without allocating.
pub(super) struct Pools {
    settings: PoolSettings,
    list: Mutex<Vec<(PoolKey, Pool<BackendConnection>)>>,
    reaper: std::sync::Once,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Pools {
    pub(super) fn new(settings: PoolSettings) -> Pools {
        Pools {
            settings,
            list: Mutex::new(Vec::new()),
            reaper: std::sync::Once::new(),
        }
    }

    fn list(&self) -> MutexGuard<'_, Vec<(PoolKey, Pool<BackendConnection>)>> {
        // Pushes and removals only: a panic elsewhere cannot leave it torn.
        self.list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get_or_create(
        &self,
        (host, port): &(String, u16),
        target: Target<'_>,
    ) -> Pool<BackendConnection> {
        let mut list = self.list();
        let found = list.iter().find(|(k, _)| {
            k.port == *port
                && k.host == *host
                && k.user == target.user
                && k.password == target.password
        });
        if let Some((_, pool)) = found {
            return pool.clone();
        }
        let pool = Pool::new(self.settings.clone());
        let key = PoolKey {
            host: host.clone(),
            port: *port,
            user: target.user.to_string(),
            password: target.password.to_string(),
        };
        list.push((key, pool.clone()));
        pool
    }

    fn all(&self) -> Vec<(PoolKey, Pool<BackendConnection>)> {
        self.list().clone()
    }
}

/// The client metadata application name of pooled connections: they serve
/// many clients, so they name the proxy and the backend user whose pool they
/// belong to (the backend's `currentOp` and logs show which grant's pool).
fn pool_app_name(user: &str) -> String {
    let mut name = format!("mongo-oidc-proxy:{user}");
    // Drivers' limit for the application name.
    if name.len() > 128 {
        let mut end = 128;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

impl Backend {
    /// Leases a connection to the writable primary as `target`.
    pub async fn lease(
        self: &Arc<Self>,
        target: Target<'_>,
        purpose: Purpose,
    ) -> Result<Lease, LeaseError> {
        self.start_reaper();
        let mut rediscovered = false;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let d = self.discover().await?;
            let pool = self.pools.get_or_create(&d.primary, target);
            let connect = || async {
                let app = pool_app_name(target.user);
                self.open_authenticated(&d, target.user, target.password, Some(&app))
                    .await
            };
            let mut lease = match pool.get(purpose, connect).await {
                Ok(lease) => lease,
                Err(CheckoutError::Connect(e)) if !rediscovered && e.is_topology() => {
                    tracing::info!(error = %e, "backend primary unreachable; rediscovering");
                    self.forget(&d);
                    rediscovered = true;
                    continue;
                }
                Err(e) => return Err(lease_error(e, &d.primary, target.user, &pool)),
            };
            if lease.idle_for() < REFRESH_AFTER || self.refresh(&mut lease).await {
                return Ok(lease);
            }
            lease.discard(Closed::Stale);
            if attempts >= LEASE_ATTEMPTS {
                return Err(LeaseError::Backend(BackendError::Closed {
                    addr: super::HostPort(&d.primary.0, d.primary.1).to_string(),
                }));
            }
        }
    }

    /// Pings a long-idle connection; false when it no longer answers.
    async fn refresh(&self, lease: &mut Lease) -> bool {
        let Some(conn) = lease.conn() else {
            return false;
        };
        let body = rawdoc! { "ping": 1, "$db": "admin" };
        let ping = conn.command(&body);
        matches!(
            tokio::time::timeout(self.connect_timeout, ping).await,
            Ok(Ok(_))
        )
    }

    /// Pool counts summed over every pool of this backend.
    pub fn pool_stats(&self) -> StatsSnapshot {
        let mut total = StatsSnapshot::default();
        for (_, pool) in self.pools.all() {
            total.add(&pool.stats());
        }
        total
    }

    /// After a reload: pools of backend users no grant names any more are
    /// retired (their connections close as they come back).
    pub fn retain_users<'a>(&self, users: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let keep: Vec<(&str, &str)> = users.into_iter().collect();
        self.pools.list().retain(|(key, pool)| {
            let kept = keep
                .iter()
                .any(|(u, p)| *u == key.user && *p == key.password);
            if !kept {
                pool.retire();
            }
            kept
        });
    }

    fn start_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.pools.reaper.call_once(|| {
            tokio::spawn(reap(weak));
        });
    }
}

/// Why a lease failed, with what the pool was busy with (as drivers word a
/// wait-queue timeout).
fn lease_error(
    e: CheckoutError<BackendError>,
    (host, port): &(String, u16),
    user: &str,
    pool: &Pool<BackendConnection>,
) -> LeaseError {
    let s = pool.settings();
    let stats = pool.stats();
    let describe = || {
        format!(
            "pool {}:{} as {}: max_size {}, in use by cursors {}, by transactions {}, \
             by exhaust streams {}, by other operations {}",
            host,
            port,
            user,
            s.max_size,
            stats.in_use[1],
            stats.in_use[2],
            stats.in_use[3],
            stats.in_use[0],
        )
    };
    match e {
        CheckoutError::Timeout => LeaseError::Timeout {
            ms: s.checkout_timeout.as_millis() as u64,
            pool: describe(),
        },
        CheckoutError::TooManyWaiters => LeaseError::TooManyWaiters {
            waiters: s.max_waiters,
            pool: describe(),
        },
        CheckoutError::Connect(e) => LeaseError::Backend(e),
    }
}

/// Closes idle connections past the timeout and keeps `min_size`, until the
/// backend is dropped (a reload that changed `[backend]`).
async fn reap(backend: Weak<Backend>) {
    let mut every = tokio::time::interval(REAP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(backend) = backend.upgrade() else {
            return;
        };
        for (key, pool) in backend.pools.all() {
            pool.each_idle(RELEASE_BUFFERS_AFTER, BackendConnection::release_idle);
            let short = pool.reap().min(pool.settings().max_connecting);
            for _ in 0..short {
                if !backend.top_up(&key, &pool).await {
                    break;
                }
            }
        }
    }
}

impl Backend {
    /// Opens one connection for `min_size`; false when it failed.
    async fn top_up(&self, key: &PoolKey, pool: &Pool<BackendConnection>) -> bool {
        let Ok(d) = self.discover().await else {
            return false;
        };
        if d.primary != (key.host.clone(), key.port) {
            return false;
        }
        let app = pool_app_name(&key.user);
        match self
            .open_authenticated(&d, &key.user, &key.password, Some(&app))
            .await
        {
            Ok(conn) => pool.add_idle(conn),
            Err(e) => {
                tracing::debug!(error = %e, "cannot open a connection for backend.pool.min_size");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        let config = crate::config::BackendConfig {
            uri: "mongodb://127.0.0.1:1/".into(),
            auth_source: "admin".into(),
            connect_timeout_ms: 100,
            pool: Default::default(),
        };
        Backend::new(&config).unwrap()
    }

    #[test]
    fn a_pool_is_found_again_by_host_user_and_password() {
        let b = backend();
        let host = ("db1".to_string(), 27017);
        let rw = Target {
            user: "app_rw",
            password: "pw",
        };
        let p1 = b.pools.get_or_create(&host, rw);
        let p2 = b.pools.get_or_create(&host, rw);
        assert!(Arc::ptr_eq(&p1.stats_handle(), &p2.stats_handle()));
        let changed = Target {
            password: "new",
            ..rw
        };
        b.pools.get_or_create(&host, changed);
        b.pools.get_or_create(&("db2".to_string(), 27017), rw);
        assert_eq!(b.pools.all().len(), 3);
    }

    #[test]
    fn a_reload_keeps_the_pools_of_users_a_grant_still_names_and_retires_the_others() {
        let b = backend();
        let host = ("db1".to_string(), 27017);
        let rw = Target {
            user: "app_rw",
            password: "pw",
        };
        let ro = Target {
            user: "app_ro",
            password: "pw",
        };
        let kept = b.pools.get_or_create(&host, rw);
        b.pools.get_or_create(&host, ro);
        // app_ro is gone from the grants, app_rw's password unchanged.
        b.retain_users([("app_rw", "pw")]);
        let left = b.pools.all();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0.user, "app_rw");
        assert!(Arc::ptr_eq(&left[0].1.stats_handle(), &kept.stats_handle()));
        // A changed password is another identity: its old pool is retired.
        b.retain_users([("app_rw", "rotated")]);
        assert!(b.pools.all().is_empty());
    }

    #[test]
    fn pooled_connections_name_the_proxy_and_the_pool_user() {
        assert_eq!(pool_app_name("app_rw"), "mongo-oidc-proxy:app_rw");
        let long = "é".repeat(100);
        let name = pool_app_name(&long);
        assert!(name.len() <= 128 && name.starts_with("mongo-oidc-proxy:é"));
    }
}
