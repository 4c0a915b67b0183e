//! The process's file-descriptor limit (RLIMIT_NOFILE) against
//! `limits.max_connections`.
//!
//! Each client connection holds two descriptors, the client's socket and
//! its backend connection, and the proxy needs a few more of its own
//! (listeners, identity-provider fetches, files). A limit too low for the
//! configured connections would make `accept` fail under load, long after
//! start-up, so start-up (and `check`) raise the soft limit to the hard
//! limit and refuse a `max_connections` that still does not fit.

use std::io;

use rlimit::Resource;

use crate::config::ConfigError;

/// Descriptors held per client connection: the client's and the backend's socket.
pub const PER_CONNECTION: u64 = 2;

/// Descriptors kept for everything else: listeners, identity-provider
/// fetches, the metrics endpoint, files and the standard streams.
pub const RESERVED: u64 = 64;

const FIELD: &str = "limits.max_connections";

/// RLIMIT_NOFILE before and after [`raise_to_hard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    /// The soft limit the process started with.
    pub soft_before: u64,
    /// The hard limit: as far as an unprivileged process may raise the soft one.
    pub hard: u64,
    /// The soft limit in force now.
    pub now: u64,
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (or as close as the
/// system allows, e.g. macOS's kern.maxfilesperproc).
pub fn raise_to_hard() -> io::Result<FdLimits> {
    let (soft_before, hard) = Resource::NOFILE.get()?;
    if soft_before >= hard {
        return Ok(FdLimits {
            soft_before,
            hard,
            now: soft_before,
        });
    }
    let now = rlimit::increase_nofile_limit(hard)?;
    Ok(FdLimits {
        soft_before,
        hard,
        now,
    })
}

/// How many descriptors `max_connections` client connections may need.
pub fn needed(max_connections: usize) -> u64 {
    u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(PER_CONNECTION)
        .saturating_add(RESERVED)
}

fn shown(limit: u64) -> String {
    if limit == rlimit::INFINITY {
        "unlimited".into()
    } else {
        limit.to_string()
    }
}

/// Refuses `max_connections` when [`needed`] exceeds `limits.now`. Pure.
pub fn check_capacity(max_connections: usize, limits: FdLimits) -> Result<(), ConfigError> {
    let needed = needed(max_connections);
    if needed <= limits.now {
        return Ok(());
    }
    let (soft, hard, now) = (
        shown(limits.soft_before),
        shown(limits.hard),
        shown(limits.now),
    );
    let why = if limits.now >= limits.hard {
        format!("soft limit {soft}, raised to the hard limit {hard}")
    } else {
        format!("soft limit {soft}; raising it to the hard limit {hard} failed")
    };
    let fit = limits.now.saturating_sub(RESERVED) / PER_CONNECTION;
    let lower = if fit > 0 {
        format!("lower max_connections to at most {fit}, or ")
    } else {
        String::new()
    };
    Err(ConfigError::new(
        FIELD,
        format!(
            "{max_connections} connections need up to {needed} file descriptors \
             ({PER_CONNECTION} per connection plus {RESERVED} reserved), but this process may \
             open only {now} ({why}); {lower}raise the limit to at least {needed}: \
             `ulimit -n {needed}` in the shell that starts the proxy, or LimitNOFILE={needed} \
             in its systemd unit"
        ),
    ))
}

/// What start-up, `check` and reload call: raises the soft limit to the
/// hard limit, then refuses a `max_connections` that does not fit.
pub fn ensure_capacity(max_connections: usize) -> Result<FdLimits, ConfigError> {
    let limits = match raise_to_hard() {
        Ok(limits) => limits,
        Err(raise) => {
            let (soft, hard) = Resource::NOFILE.get().map_err(|e| {
                ConfigError::new(
                    FIELD,
                    format!("cannot read the file-descriptor limit (RLIMIT_NOFILE): {e}"),
                )
            })?;
            tracing::warn!(soft, hard, error = %raise,
                "cannot raise the file-descriptor soft limit to the hard limit");
            FdLimits {
                soft_before: soft,
                hard,
                now: soft,
            }
        }
    };
    check_capacity(max_connections, limits)?;
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(soft_before: u64, hard: u64, now: u64) -> FdLimits {
        FdLimits {
            soft_before,
            hard,
            now,
        }
    }

    #[test]
    fn counts_two_per_connection_plus_the_reserve() {
        assert_eq!(needed(1), 66);
        assert_eq!(needed(10_000), 20_064);
        assert_eq!(needed(usize::MAX), u64::MAX);
        assert_eq!(check_capacity(96, limits(256, 256, 256)), Ok(()));
        assert_eq!(
            check_capacity(10_000, limits(1024, 1_048_576, 1_048_576)),
            Ok(())
        );
        assert!(check_capacity(97, limits(256, 256, 256)).is_err());
    }

    #[test]
    fn refusal_names_both_limits_the_need_and_what_to_do() {
        let e = check_capacity(1000, limits(256, 256, 256)).unwrap_err();
        assert_eq!(e.field, "limits.max_connections");
        assert_eq!(
            e.to_string(),
            "limits.max_connections: 1000 connections need up to 2064 file descriptors \
             (2 per connection plus 64 reserved), but this process may open only 256 \
             (soft limit 256, raised to the hard limit 256); lower max_connections to at most 96, \
             or raise the limit to at least 2064: `ulimit -n 2064` in the shell that starts the \
             proxy, or LimitNOFILE=2064 in its systemd unit"
        );
        let e = check_capacity(10_000, limits(1024, 4096, 4096)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "limits.max_connections: 10000 connections need up to 20064 file descriptors \
             (2 per connection plus 64 reserved), but this process may open only 4096 \
             (soft limit 1024, raised to the hard limit 4096); lower max_connections to at most \
             2016, or raise the limit to at least 20064: `ulimit -n 20064` in the shell that \
             starts the proxy, or LimitNOFILE=20064 in its systemd unit"
        );
    }

    #[test]
    fn refusal_when_raising_failed_or_nothing_fits() {
        let e = check_capacity(1, limits(50, rlimit::INFINITY, 50)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "limits.max_connections: 1 connections need up to 66 file descriptors \
             (2 per connection plus 64 reserved), but this process may open only 50 \
             (soft limit 50; raising it to the hard limit unlimited failed); raise the limit to \
             at least 66: `ulimit -n 66` in the shell that starts the proxy, or LimitNOFILE=66 \
             in its systemd unit"
        );
    }

    #[test]
    fn ensure_capacity_raises_the_soft_limit_to_the_hard_limit() {
        let (_, hard) = Resource::NOFILE.get().unwrap();
        let l = ensure_capacity(1).unwrap();
        assert_eq!(l.hard, hard);
        assert!(l.now >= l.soft_before);
        assert_eq!(Resource::NOFILE.get().unwrap().0, l.now);
        let e = ensure_capacity(usize::MAX).unwrap_err();
        assert_eq!(e.field, "limits.max_connections");
    }
}
