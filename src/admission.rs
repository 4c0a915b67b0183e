//! What an anonymous client may cost, per client address: open
//! connections, pending human-flow sign-ins, and failed sign-ins, which earn
//! an increasing delay before their `AuthenticationFailed` reply.
//!
//! The rules ([`penalty`], [`Table::admit`]) are pure functions of the
//! table's state; the table is bounded so an attacker with many addresses
//! cannot grow it without limit.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Entries kept at most; beyond it, addresses with nothing open are forgotten.
pub const MAX_TRACKED_ADDRESSES: usize = 100_000;
/// A failure older than this no longer counts towards the delay.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// Failures answered at once: a driver retries once with a fresh token.
const FREE_FAILURES: u32 = 2;
const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// The delay before answering the `failures`-th recent failure of an address.
pub fn penalty(failures: u32) -> Duration {
    let Some(beyond) = failures.checked_sub(FREE_FAILURES + 1) else {
        return Duration::ZERO;
    };
    let doubled = FIRST_DELAY.saturating_mul(1u32 << beyond.min(16));
    doubled.min(MAX_DELAY)
}

#[derive(Debug, Default, Clone, Copy)]
struct Address {
    connections: usize,
    pending_human: usize,
    failures: u32,
    last_failure: Option<Instant>,
}

impl Address {
    fn idle(&self) -> bool {
        self.connections == 0 && self.pending_human == 0
    }

    fn recent_failures(&self, now: Instant) -> u32 {
        match self.last_failure {
            Some(at) if now.duration_since(at) < FAILURE_MEMORY => self.failures,
            _ => 0,
        }
    }
}

/// Per-address counts shared by every connection.
#[derive(Debug, Default)]
pub struct Table {
    addresses: DashMap<IpAddr, Address>,
}

/// Which bound refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ConnectionsPerIp,
    TooManyAddresses,
}

impl Table {
    /// Counts a new connection from `ip`, or refuses it at `max_per_ip`.
    pub fn admit(&self, ip: IpAddr, max_per_ip: usize) -> Result<(), Refusal> {
        if self.addresses.len() >= MAX_TRACKED_ADDRESSES && !self.addresses.contains_key(&ip) {
            self.forget_idle();
            if self.addresses.len() >= MAX_TRACKED_ADDRESSES {
                return Err(Refusal::TooManyAddresses);
            }
        }
        let mut entry = self.addresses.entry(ip).or_default();
        if entry.connections >= max_per_ip {
            return Err(Refusal::ConnectionsPerIp);
        }
        entry.connections += 1;
        Ok(())
    }

    /// A connection from `ip` ended.
    pub fn release(&self, ip: IpAddr) {
        self.update(ip, |a| a.connections = a.connections.saturating_sub(1));
    }

    /// Whether one more human-flow sign-in from `ip` may wait for its second
    /// step; counted when it may.
    pub fn start_human_flow(&self, ip: IpAddr, max_per_ip: usize) -> bool {
        let mut entry = self.addresses.entry(ip).or_default();
        if entry.pending_human >= max_per_ip {
            return false;
        }
        entry.pending_human += 1;
        true
    }

    pub fn end_human_flow(&self, ip: IpAddr) {
        self.update(ip, |a| a.pending_human = a.pending_human.saturating_sub(1));
    }

    /// Records a failed sign-in; returns the delay before answering it.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut entry = self.addresses.entry(ip).or_default();
        let failures = entry.recent_failures(now).saturating_add(1);
        entry.failures = failures;
        entry.last_failure = Some(now);
        penalty(failures)
    }

    /// A successful sign-in clears the address's failures.
    pub fn succeeded(&self, ip: IpAddr) {
        self.update(ip, |a| {
            a.failures = 0;
            a.last_failure = None;
        });
    }

    pub fn tracked(&self) -> usize {
        self.addresses.len()
    }

    fn update(&self, ip: IpAddr, f: impl FnOnce(&mut Address)) {
        if let Some(mut entry) = self.addresses.get_mut(&ip) {
            f(&mut entry);
        }
    }

    /// Drops addresses with nothing open (their failure counts go too).
    fn forget_idle(&self) {
        self.addresses.retain(|_, a| !a.idle());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_penalty_grows_after_the_free_failures_and_is_capped() {
        let delays: Vec<u64> = (0..12).map(|n| penalty(n).as_millis() as u64).collect();
        assert_eq!(
            delays,
            [0, 0, 0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        assert_eq!(penalty(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn failures_are_per_address_and_forgotten_after_a_minute_or_a_success() {
        let t = Table::default();
        let now = Instant::now();
        for _ in 0..3 {
            t.failed(IP, now);
        }
        assert_eq!(t.failed(IP, now), Duration::from_millis(200));
        assert_eq!(
            t.failed(OTHER, now),
            Duration::ZERO,
            "another address is not slowed"
        );
        assert_eq!(
            t.failed(IP, now + FAILURE_MEMORY),
            Duration::ZERO,
            "old failures decay"
        );
        t.failed(IP, now + FAILURE_MEMORY);
        t.failed(IP, now + FAILURE_MEMORY);
        t.succeeded(IP);
        assert_eq!(t.failed(IP, now + FAILURE_MEMORY), Duration::ZERO);
    }

    #[test]
    fn connections_per_address_are_bounded() {
        let t = Table::default();
        assert_eq!(t.admit(IP, 2), Ok(()));
        assert_eq!(t.admit(IP, 2), Ok(()));
        assert_eq!(t.admit(IP, 2), Err(Refusal::ConnectionsPerIp));
        assert_eq!(t.admit(OTHER, 2), Ok(()));
        t.release(IP);
        assert_eq!(t.admit(IP, 2), Ok(()));
    }

    #[test]
    fn pending_human_flows_per_address_are_bounded() {
        let t = Table::default();
        assert!(t.start_human_flow(IP, 1));
        assert!(!t.start_human_flow(IP, 1));
        t.end_human_flow(IP);
        assert!(t.start_human_flow(IP, 1));
    }

    #[test]
    fn the_table_is_bounded() {
        let t = Table::default();
        for i in 0..MAX_TRACKED_ADDRESSES as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i + 1));
            t.failed(ip, Instant::now());
        }
        assert_eq!(t.tracked(), MAX_TRACKED_ADDRESSES);
        // Idle addresses make room for a new connection.
        assert_eq!(t.admit(IP, 10), Ok(()));
        assert!(t.tracked() <= 1);
        // With every address holding a connection, a new one is refused.
        let full = Table::default();
        for i in 0..MAX_TRACKED_ADDRESSES as u32 {
            full.admit(IpAddr::V4(std::net::Ipv4Addr::from(i + 1)), 1)
                .unwrap();
        }
        assert_eq!(full.admit(IP, 1), Err(Refusal::TooManyAddresses));
    }
}
