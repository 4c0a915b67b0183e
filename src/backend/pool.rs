//! A bounded pool of backend connections for one backend host and user.
//!
//! A request leases a connection ([`Pool::get`]) and holds it as a
//! [`Guard`] for one exchange (its request and every reply). Dropped after
//! [`Guard::exchange_done`], or before any exchange began, the connection
//! goes back to the pool; dropped in the middle of an exchange (a drain, an
//! operator's close, a client gone, an error) it is closed: half a reply may
//! still be on its way, and the next lease would read it as its own.
//!
//! Bounds: at most `max_size` connections exist (leased, idle or being
//! opened), at most `max_connecting` are being opened at once, at most
//! `max_waiters` requests wait, and none waits longer than the checkout
//! timeout. Idle connections are reused newest first, so a quiet period lets
//! the oldest reach the idle timeout and close ([`Pool::reap`]).
//!
//! The pool is generic over the connection type so its rules are tested
//! without sockets; it keeps counts for the metrics and knows nothing of them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::PoolConfig;

/// The pool's limits, from `[backend.pool]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_size: usize,
    pub min_size: usize,
    pub max_connecting: usize,
    pub idle_timeout: Duration,
    pub checkout_timeout: Duration,
    pub max_waiters: usize,
}

impl From<&PoolConfig> for PoolSettings {
    fn from(c: &PoolConfig) -> Self {
        PoolSettings {
            max_size: c.max_size.max(1),
            min_size: c.min_size,
            max_connecting: c.max_connecting.max(1),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            checkout_timeout: Duration::from_millis(c.checkout_timeout_ms),
            max_waiters: c.waiters(),
        }
    }
}

/// What a leased connection is used for, for the in-use counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// One request and its reply.
    Request,
    /// A `getMore` or `killCursors` of a cursor the client holds.
    Cursor,
    /// A statement of an open transaction.
    Transaction,
    /// An exhaust stream, leased until its last reply.
    Exhaust,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [
        Purpose::Request,
        Purpose::Cursor,
        Purpose::Transaction,
        Purpose::Exhaust,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Purpose::Request => "request",
            Purpose::Cursor => "cursor",
            Purpose::Transaction => "transaction",
            Purpose::Exhaust => "exhaust",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a pooled connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Idle longer than `idle_timeout_secs`.
    Idle,
    /// Dropped in the middle of an exchange, or failed during one.
    Interrupted,
    /// Failed the check made before reusing a long-idle connection.
    Stale,
    /// Its pool was retired by a reload.
    Retired,
}

impl Closed {
    pub const ALL: [Closed; 4] = [
        Closed::Idle,
        Closed::Interrupted,
        Closed::Stale,
        Closed::Retired,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Closed::Idle => "idle",
            Closed::Interrupted => "interrupted",
            Closed::Stale => "stale",
            Closed::Retired => "retired",
        }
    }
}

/// Why a lease failed.
#[derive(Debug)]
pub enum CheckoutError<E> {
    /// No connection within the checkout timeout.
    Timeout,
    /// `max_waiters` requests were already waiting.
    TooManyWaiters,
    /// Opening a new connection failed.
    Connect(E),
}

impl<E> CheckoutError<E> {
    pub fn label(&self) -> &'static str {
        match self {
            CheckoutError::Timeout => "timeout",
            CheckoutError::TooManyWaiters => "max_waiters",
            CheckoutError::Connect(_) => "connect",
        }
    }
}

/// The pool's counts, read by the metrics at scrape time.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections that exist: leased, idle or being opened.
    open: AtomicUsize,
    idle: AtomicUsize,
    in_use: [AtomicUsize; 4],
    waiters: AtomicUsize,
    created: AtomicU64,
    closed: [AtomicU64; 4],
    failures: [AtomicU64; 3],
}

/// A copy of [`PoolStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub open: usize,
    pub idle: usize,
    /// By [`Purpose::ALL`].
    pub in_use: [usize; 4],
    pub waiters: usize,
    pub created: u64,
    /// By [`Closed::ALL`].
    pub closed: [u64; 4],
    /// Timeouts, too many waiters, connect failures.
    pub failures: [u64; 3],
}

impl StatsSnapshot {
    /// Adds another pool's counts (the metrics show one total per process).
    pub fn add(&mut self, o: &StatsSnapshot) {
        self.open += o.open;
        self.idle += o.idle;
        self.waiters += o.waiters;
        self.created += o.created;
        for (a, b) in self.in_use.iter_mut().zip(o.in_use) {
            *a += b;
        }
        for (a, b) in self.closed.iter_mut().zip(o.closed) {
            *a += b;
        }
        for (a, b) in self.failures.iter_mut().zip(o.failures) {
            *a += b;
        }
    }

    pub fn in_use_total(&self) -> usize {
        self.in_use.iter().sum()
    }
}

fn load(a: &AtomicUsize) -> usize {
    a.load(Ordering::Relaxed)
}

impl PoolStats {
    fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            open: load(&self.open),
            idle: load(&self.idle),
            in_use: self.in_use.each_ref().map(load),
            waiters: load(&self.waiters),
            created: self.created.load(Ordering::Relaxed),
            closed: self.closed.each_ref().map(|c| c.load(Ordering::Relaxed)),
            failures: self.failures.each_ref().map(|c| c.load(Ordering::Relaxed)),
        }
    }

    fn close(&self, why: Closed) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = self.closed.get(why as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn fail<E>(&self, e: &CheckoutError<E>) {
        let i = match e {
            CheckoutError::Timeout => 0,
            CheckoutError::TooManyWaiters => 1,
            CheckoutError::Connect(_) => 2,
        };
        if let Some(c) = self.failures.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn in_use(&self, purpose: Purpose) -> Option<&AtomicUsize> {
        self.in_use.get(purpose.index())
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

struct Inner<C> {
    settings: PoolSettings,
    /// One permit per connection leased or being opened.
    slots: Arc<Semaphore>,
    opening: Semaphore,
    /// Newest last: reused first.
    idle: Mutex<Vec<Idle<C>>>,
    stats: PoolStats,
    /// Retired by a reload: connections coming back are closed.
    retired: AtomicBool,
}

impl<C> Inner<C> {
    fn idle(&self) -> MutexGuard<'_, Vec<Idle<C>>> {
        // Plain pushes and pops: a panic elsewhere cannot leave it torn.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the idle connections `close` picks, counted as `why`; they
    /// are dropped after the lock is released.
    fn close_idle(&self, why: Closed, close: impl Fn(&Idle<C>) -> bool) {
        let closed: Vec<Idle<C>> = {
            let mut idle = self.idle();
            let (closed, kept): (Vec<_>, Vec<_>) = idle.drain(..).partition(|i| close(i));
            *idle = kept;
            closed
        };
        for _ in &closed {
            self.stats.idle.fetch_sub(1, Ordering::Relaxed);
            self.stats.close(why);
        }
    }
}

/// A pool of connections to one backend host as one backend user.
pub struct Pool<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Pool {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Decrements the waiter count however the wait ends (a dropped request too).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<C: Send + 'static> Pool<C> {
    pub fn new(settings: PoolSettings) -> Pool<C> {
        Pool {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(settings.max_size)),
                opening: Semaphore::new(settings.max_connecting),
                settings,
                idle: Mutex::new(Vec::new()),
                stats: PoolStats::default(),
                retired: AtomicBool::new(false),
            }),
        }
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Identifies the pool (tests compare two handles).
    #[cfg(test)]
    pub(crate) fn stats_handle(&self) -> Arc<impl Sized> {
        Arc::clone(&self.inner)
    }

    /// Leases a connection: an idle one (newest first), else a new one from
    /// `connect` while fewer than `max_size` exist. Waits at most the
    /// checkout timeout in all.
    pub async fn get<F, Fut, E>(
        &self,
        purpose: Purpose,
        connect: F,
    ) -> Result<Guard<C>, CheckoutError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        let started = Instant::now();
        let deadline = started + self.inner.settings.checkout_timeout;
        let result = self.lease(purpose, connect, deadline).await;
        if let Err(e) = &result {
            self.inner.stats.fail(e);
        }
        result.map(|mut g| {
            g.waited = started.elapsed();
            g
        })
    }

    async fn lease<F, Fut, E>(
        &self,
        purpose: Purpose,
        connect: F,
        deadline: Instant,
    ) -> Result<Guard<C>, CheckoutError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        let permit = self.slot(deadline).await?;
        if let Some(idle) = self.pop_idle() {
            return Ok(self.guard(idle.conn, permit, purpose, Some(idle.since.elapsed())));
        }
        let inner = &self.inner;
        let opening = tokio::time::timeout_at(deadline.into(), inner.opening.acquire())
            .await
            .map_err(|_| CheckoutError::Timeout)?
            .map_err(|_| CheckoutError::Timeout)?;
        // Another lease may have returned a connection meanwhile.
        if let Some(idle) = self.pop_idle() {
            return Ok(self.guard(idle.conn, permit, purpose, Some(idle.since.elapsed())));
        }
        inner.stats.open.fetch_add(1, Ordering::Relaxed);
        let opened = tokio::time::timeout_at(deadline.into(), connect()).await;
        drop(opening);
        match opened {
            Ok(Ok(conn)) => {
                inner.stats.created.fetch_add(1, Ordering::Relaxed);
                Ok(self.guard(conn, permit, purpose, None))
            }
            Ok(Err(e)) => {
                inner.stats.open.fetch_sub(1, Ordering::Relaxed);
                Err(CheckoutError::Connect(e))
            }
            Err(_) => {
                inner.stats.open.fetch_sub(1, Ordering::Relaxed);
                Err(CheckoutError::Timeout)
            }
        }
    }

    /// A slot for one connection: at once when free, else waiting (as one
    /// of at most `max_waiters`) until the deadline.
    async fn slot<E>(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, CheckoutError<E>> {
        let inner = &self.inner;
        if let Ok(permit) = Arc::clone(&inner.slots).try_acquire_owned() {
            return Ok(permit);
        }
        let waiters = &inner.stats.waiters;
        if waiters.fetch_add(1, Ordering::Relaxed) >= inner.settings.max_waiters {
            waiters.fetch_sub(1, Ordering::Relaxed);
            return Err(CheckoutError::TooManyWaiters);
        }
        let _waiting = Waiting(waiters);
        match tokio::time::timeout_at(deadline.into(), Arc::clone(&inner.slots).acquire_owned())
            .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(CheckoutError::Timeout),
        }
    }

    /// The newest idle connection; one idle past the timeout (not reaped
    /// yet) is closed instead.
    fn pop_idle(&self) -> Option<Idle<C>> {
        let inner = &self.inner;
        loop {
            let idle = inner.idle().pop()?;
            inner.stats.idle.fetch_sub(1, Ordering::Relaxed);
            if idle.since.elapsed() < inner.settings.idle_timeout {
                return Some(idle);
            }
            inner.stats.close(Closed::Idle);
        }
    }

    fn guard(
        &self,
        conn: C,
        permit: OwnedSemaphorePermit,
        purpose: Purpose,
        idle_for: Option<Duration>,
    ) -> Guard<C> {
        if let Some(n) = self.inner.stats.in_use(purpose) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        Guard {
            conn: Some(conn),
            pool: Arc::clone(&self.inner),
            _permit: permit,
            purpose,
            in_exchange: false,
            fresh: idle_for.is_none(),
            idle_for: idle_for.unwrap_or_default(),
            waited: Duration::ZERO,
        }
    }

    /// Closes the connections idle longer than the idle timeout; returns how
    /// many connections short of `min_size` the pool is.
    pub fn reap(&self) -> usize {
        let inner = &self.inner;
        let limit = inner.settings.idle_timeout;
        inner.close_idle(Closed::Idle, |i| i.since.elapsed() >= limit);
        inner
            .settings
            .min_size
            .saturating_sub(load(&inner.stats.open))
    }

    /// Runs `f` on every connection idle for at least `at_least`.
    pub fn each_idle(&self, at_least: Duration, mut f: impl FnMut(&mut C)) {
        for idle in self.inner.idle().iter_mut() {
            if idle.since.elapsed() >= at_least {
                f(&mut idle.conn);
            }
        }
    }

    /// Puts a new connection among the idle ones (to keep `min_size`), if a
    /// slot is free at once.
    pub fn add_idle(&self, conn: C) -> bool {
        let inner = &self.inner;
        let Ok(_permit) = Arc::clone(&inner.slots).try_acquire_owned() else {
            return false;
        };
        inner.stats.open.fetch_add(1, Ordering::Relaxed);
        inner.stats.created.fetch_add(1, Ordering::Relaxed);
        inner.stats.idle.fetch_add(1, Ordering::Relaxed);
        inner.idle().push(Idle {
            conn,
            since: Instant::now(),
        });
        true
    }

    /// Closes the idle connections now and every leased one when it comes
    /// back: a reload no longer uses this pool.
    pub fn retire(&self) {
        let inner = &self.inner;
        inner.retired.store(true, Ordering::Relaxed);
        inner.close_idle(Closed::Retired, |_| true);
    }

    /// No connection exists or is wanted: the pool can be forgotten.
    pub fn is_unused(&self) -> bool {
        let s = self.inner.stats.snapshot();
        s.open == 0 && s.waiters == 0
    }
}

/// A leased connection. See the module documentation for what dropping it does.
pub struct Guard<C> {
    conn: Option<C>,
    pool: Arc<Inner<C>>,
    _permit: OwnedSemaphorePermit,
    purpose: Purpose,
    in_exchange: bool,
    /// Opened for this lease.
    fresh: bool,
    idle_for: Duration,
    waited: Duration,
}

impl<C> Guard<C> {
    /// The connection, for an exchange: call [`Guard::exchange_started`]
    /// before writing to it.
    pub fn conn(&mut self) -> Option<&mut C> {
        self.conn.as_mut()
    }

    /// From now until [`Guard::exchange_done`], dropping the guard closes
    /// the connection.
    pub fn exchange_started(&mut self) {
        self.in_exchange = true;
    }

    /// The exchange ended cleanly: the connection may be reused.
    pub fn exchange_done(&mut self) {
        self.in_exchange = false;
    }

    /// How long the connection sat idle before this lease (zero when new).
    pub fn idle_for(&self) -> Duration {
        self.idle_for
    }

    /// Whether the connection was opened for this lease.
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// How long the lease waited.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// The backend went away under this connection: the idle ones of its
    /// pool, opened before, are closed too rather than each failing a
    /// command of its own.
    pub fn clear_idle(&self) {
        self.pool.close_idle(Closed::Stale, |_| true);
    }

    /// Closes the connection now (it failed a check), counted as `why`.
    pub fn discard(mut self, why: Closed) {
        if self.conn.take().is_some() {
            self.pool.stats.close(why);
        }
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        let stats = &self.pool.stats;
        if let Some(n) = stats.in_use(self.purpose) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.in_exchange {
            stats.close(Closed::Interrupted);
        } else if self.pool.retired.load(Ordering::Relaxed) {
            stats.close(Closed::Retired);
        } else {
            stats.idle.fetch_add(1, Ordering::Relaxed);
            self.pool.idle().push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        // The permit is released after the connection is idle, so a waiter
        // woken by it finds the connection.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: usize) -> PoolSettings {
        PoolSettings {
            max_size: max,
            min_size: 0,
            max_connecting: 2,
            idle_timeout: Duration::from_secs(240),
            checkout_timeout: Duration::from_millis(200),
            max_waiters: 10,
        }
    }

    async fn new_conn(n: u32) -> Result<u32, &'static str> {
        Ok(n)
    }

    #[tokio::test]
    async fn a_returned_connection_is_reused() {
        let pool = Pool::new(settings(2));
        let mut g = pool.get(Purpose::Request, || new_conn(1)).await.unwrap();
        g.exchange_started();
        g.exchange_done();
        drop(g);
        let mut g = pool.get(Purpose::Request, || new_conn(2)).await.unwrap();
        assert_eq!(g.conn().copied(), Some(1));
        let s = pool.stats();
        assert_eq!((s.open, s.created, s.idle, s.in_use_total()), (1, 1, 0, 1));
    }

    #[tokio::test]
    async fn a_guard_dropped_mid_exchange_closes_its_connection() {
        let pool = Pool::new(settings(2));
        let mut g = pool.get(Purpose::Request, || new_conn(1)).await.unwrap();
        g.exchange_started();
        drop(g);
        let s = pool.stats();
        assert_eq!((s.open, s.idle), (0, 0));
        assert_eq!(s.closed[Closed::Interrupted as usize], 1);
        let mut g = pool.get(Purpose::Request, || new_conn(2)).await.unwrap();
        assert_eq!(
            g.conn().copied(),
            Some(2),
            "the interrupted one is never reused"
        );
    }

    #[tokio::test]
    async fn a_relay_future_cancelled_mid_exchange_never_returns_its_connection() {
        let pool = Pool::new(settings(1));
        let p = pool.clone();
        let relay = async move {
            let mut g = p.get(Purpose::Request, || new_conn(1)).await.unwrap();
            g.exchange_started();
            // The reply never comes; a drain or close cancels the future.
            std::future::pending::<()>().await;
            g.exchange_done();
        };
        let _ = tokio::time::timeout(Duration::from_millis(10), relay).await;
        assert_eq!(pool.stats().idle, 0);
        let mut g = pool.get(Purpose::Request, || new_conn(7)).await.unwrap();
        assert_eq!(g.conn().copied(), Some(7));
    }

    #[tokio::test]
    async fn never_more_than_max_size_and_waiters_time_out() {
        let pool = Pool::new(settings(2));
        let a = pool.get(Purpose::Request, || new_conn(1)).await.unwrap();
        let _b = pool.get(Purpose::Cursor, || new_conn(2)).await.unwrap();
        let started = Instant::now();
        let third = pool.get(Purpose::Request, || new_conn(3)).await;
        assert!(matches!(third, Err(CheckoutError::Timeout)));
        assert!(started.elapsed() >= Duration::from_millis(190));
        let s = pool.stats();
        assert_eq!(s.open, 2);
        assert_eq!(s.in_use, [1, 1, 0, 0]);
        assert_eq!(s.failures, [1, 0, 0]);
        // A waiter gets the connection returned meanwhile.
        let p = pool.clone();
        let waiter = tokio::spawn(async move {
            let mut g = p.get(Purpose::Request, || new_conn(4)).await.unwrap();
            g.conn().copied()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.stats().waiters, 1);
        drop(a);
        assert_eq!(waiter.await.unwrap(), Some(1));
        assert_eq!(pool.stats().waiters, 0);
    }

    #[tokio::test]
    async fn beyond_max_waiters_the_refusal_is_immediate() {
        let mut s = settings(1);
        s.max_waiters = 1;
        s.checkout_timeout = Duration::from_secs(5);
        let pool = Pool::new(s);
        let _held = pool.get(Purpose::Request, || new_conn(1)).await.unwrap();
        let p = pool.clone();
        let waiting = tokio::spawn(async move { p.get(Purpose::Request, || new_conn(2)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let refused = pool.get(Purpose::Request, || new_conn(3)).await;
        assert!(matches!(refused, Err(CheckoutError::TooManyWaiters)));
        assert!(started.elapsed() < Duration::from_secs(1));
        waiting.abort();
        let _ = waiting.await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            pool.stats().waiters,
            0,
            "a cancelled waiter is no longer counted"
        );
    }

    #[tokio::test]
    async fn a_failed_connect_frees_its_slot() {
        let pool: Pool<u32> = Pool::new(settings(1));
        let failed = pool
            .get(Purpose::Request, || async { Err("refused") })
            .await;
        assert!(matches!(failed, Err(CheckoutError::Connect("refused"))));
        assert_eq!(pool.stats().open, 0);
        assert!(pool.get(Purpose::Request, || new_conn(1)).await.is_ok());
    }

    #[tokio::test]
    async fn at_most_max_connecting_connections_open_at_once() {
        let pool: Pool<u32> = Pool::new(settings(10));
        let opening = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (p, opening, most) = (pool.clone(), opening.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                p.get(Purpose::Request, || async move {
                    let now = opening.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    opening.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, ()>(i)
                })
                .await
                .is_ok()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_past_the_timeout_are_reaped_and_retire_closes_the_rest() {
        let mut s = settings(3);
        s.idle_timeout = Duration::from_millis(30);
        s.min_size = 1;
        let pool = Pool::new(s);
        drop(pool.get(Purpose::Request, || new_conn(1)).await.unwrap());
        assert_eq!(pool.reap(), 0, "one open: min_size met");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(pool.reap(), 1, "reaped: one short of min_size");
        let st = pool.stats();
        assert_eq!(
            (st.open, st.idle, st.closed[Closed::Idle as usize]),
            (0, 0, 1)
        );
        assert!(pool.add_idle(9));
        let g = pool.get(Purpose::Request, || new_conn(2)).await.unwrap();
        pool.retire();
        drop(g);
        let st = pool.stats();
        assert_eq!((st.open, st.closed[Closed::Retired as usize]), (0, 1));
        assert!(pool.is_unused());
    }

    #[tokio::test]
    async fn each_idle_sees_only_connections_idle_long_enough() {
        let pool = Pool::new(settings(3));
        let a = pool.get(Purpose::Request, || new_conn(1)).await.unwrap();
        drop(a);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let b = pool.get(Purpose::Request, || new_conn(2)).await.unwrap();
        let c = pool.get(Purpose::Request, || new_conn(3)).await.unwrap();
        drop(b);
        drop(c);
        let mut seen = Vec::new();
        pool.each_idle(Duration::from_millis(20), |c| seen.push(*c));
        assert!(seen.is_empty(), "both were just returned: {seen:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
        pool.each_idle(Duration::from_millis(20), |c| seen.push(*c));
        seen.sort_unstable();
        assert_eq!(seen, [1, 3]);
    }
}
