//! Handing freed memory back to the system.
//!
//! glibc's allocator returns freed memory only from the top of a heap, so the
//! pages of a burst of connections stay resident after they close, and the
//! next burst does not fit back into all of them: measured with 1,000
//! signed-in idle connections, 17 KiB each at first and 26 KiB after three
//! open/close cycles. Its `malloc_trim` gives the free pages back. It costs
//! a walk of every arena under its lock (about 1 ms for a few thousand
//! connections' heap, 20 ms for ten thousand), so it runs only after much was
//! freed (a connection ended, a message of 1 MiB or more was relayed), once
//! such a burst has settled, and at most once per [`MIN_INTERVAL`].
//!
//! The library forbids `unsafe`; the binary, which links the allocator, hands
//! the call in ([`crate::server::Running::release_freed_memory`]).

use std::sync::Arc;
use std::time::Duration;

use prometheus::Histogram;
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};

/// Gives freed memory back to the system; `true` when some was.
pub type Release = fn() -> bool;

/// A burst has settled when nothing was freed for this long.
const QUIET: Duration = Duration::from_millis(100);
/// Under a steady stream, a pass runs this long after its first.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// The least time between two passes.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `release` on the blocking pool after `freed` is notified, once
/// the burst settled ([`QUIET`], [`MAX_WAIT`]) and at most once per
/// [`MIN_INTERVAL`]. Each pass's time goes to `duration`.
pub async fn release_after_frees(freed: Arc<Notify>, release: Release, duration: Histogram) {
    loop {
        freed.notified().await;
        settle(&freed).await;
        let started = Instant::now();
        if tokio::task::spawn_blocking(release).await.is_err() {
            return;
        }
        duration.observe(started.elapsed().as_secs_f64());
        tokio::time::sleep(MIN_INTERVAL).await;
    }
}

/// Waits until nothing was freed for [`QUIET`], or [`MAX_WAIT`] after the first.
async fn settle(freed: &Notify) {
    let first = Instant::now();
    while first.elapsed() < MAX_WAIT {
        if timeout(QUIET, freed.notified()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static PASSES: AtomicUsize = AtomicUsize::new(0);

    fn count_pass() -> bool {
        PASSES.fetch_add(1, Ordering::SeqCst);
        true
    }

    fn passes() -> usize {
        PASSES.load(Ordering::SeqCst)
    }

    fn start(closed: &Arc<Notify>) -> (tokio::task::JoinHandle<()>, Histogram) {
        let h = Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
        let task = tokio::spawn(release_after_frees(closed.clone(), count_pass, h.clone()));
        (task, h)
    }

    async fn advance(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        tokio::task::yield_now().await;
    }

    /// A due pass runs on a real blocking thread: wait (in real time) for it.
    /// Paused time does not move meanwhile, so no later pass can start.
    async fn wait_for_passes(n: usize) {
        for _ in 0..5_000 {
            if passes() >= n {
                return;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    // One test drives every case in order: they share the pass counter.
    #[tokio::test(start_paused = true)]
    async fn passes_follow_bursts_of_closes_and_nothing_else() {
        let closed = Arc::new(Notify::new());
        let (task, histogram) = start(&closed);

        advance(10_000).await;
        assert_eq!(passes(), 0, "no close, no pass");

        // A burst: five closes 20 ms apart; the pass waits for 100 ms of quiet.
        for _ in 0..5 {
            closed.notify_one();
            advance(20).await;
        }
        assert_eq!(passes(), 0, "the burst has not settled yet");
        advance(150).await;
        wait_for_passes(1).await;
        assert_eq!(passes(), 1, "one pass once the burst settled");
        assert_eq!(histogram.get_sample_count(), 1);

        // A close right after the pass waits out the one-second interval.
        closed.notify_one();
        advance(300).await;
        assert_eq!(passes(), 1, "at most one pass a second");
        advance(1_000).await;
        wait_for_passes(2).await;
        assert_eq!(passes(), 2);

        // A close every 50 ms for 10 s never settles: a pass 5 s after the
        // first of them all the same (and the next would be 6 s after that).
        for _ in 0..200 {
            closed.notify_one();
            advance(50).await;
        }
        wait_for_passes(3).await;
        assert_eq!(passes(), 3, "steady closes: one pass per 5 s");
        task.abort();
    }
}
