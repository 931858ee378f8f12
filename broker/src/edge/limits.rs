//! Rate limits (R21): per org and per client address, with governor. Keyed
//! state is pruned on a timer so a scan of many addresses cannot grow memory.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kakehashi_interfaces::OrgId;

use crate::config::LimitsConfig;

/// Which limit refused a request, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// `per_org` or `per_address`.
    pub scope: &'static str,
    /// Seconds until a request would be allowed (at least 1).
    pub retry_after_secs: u64,
}

/// Keyed limiters for orgs and addresses.
pub struct RateLimits {
    per_org: DefaultKeyedRateLimiter<OrgId>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

impl RateLimits {
    /// Limiters from `[limits]`.
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            per_org: RateLimiter::keyed(quota(limits.per_org_per_second, limits.per_org_burst)),
            per_address: RateLimiter::keyed(quota(
                limits.per_address_per_second,
                limits.per_address_burst,
            )),
            clock: DefaultClock::default(),
        }
    }

    /// Admits or throttles one request. The address is checked first so one
    /// host cannot exhaust an org's allowance on behalf of others.
    pub fn check(&self, org: Option<&OrgId>, address: IpAddr) -> Result<(), Throttled> {
        let retry = |not_until: governor::NotUntil<_>| {
            let wait = not_until.wait_time_from(self.clock.now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        };
        if let Err(n) = self.per_address.check_key(&address) {
            return Err(Throttled {
                scope: "per_address",
                retry_after_secs: retry(n).max(1),
            });
        }
        if let Some(Err(n)) = org.map(|org| self.per_org.check_key(org)) {
            return Err(Throttled {
                scope: "per_org",
                retry_after_secs: retry(n).max(1),
            });
        }
        Ok(())
    }

    /// Limiters for a listener without orgs (the console): per address only.
    pub fn per_address(per_second: u32, burst: u32) -> Self {
        Self {
            per_org: RateLimiter::keyed(quota(1, 1)),
            per_address: RateLimiter::keyed(quota(per_second, burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Drops keys whose state is back to full.
    pub fn prune(&self) {
        self.per_org.retain_recent();
        self.per_org.shrink_to_fit();
        self.per_address.retain_recent();
        self.per_address.shrink_to_fit();
    }

    /// Prunes every `period` until the limiter is dropped.
    pub fn spawn_pruner(self: &Arc<Self>, period: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(limits) => limits.prune(),
                    None => break,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_org_flooding_does_not_throttle_another() {
        let limits = RateLimits::new(&LimitsConfig {
            per_org_per_second: 1,
            per_org_burst: 3,
            ..LimitsConfig::default()
        });
        let a = OrgId::new("city-a").unwrap();
        let b = OrgId::new("city-b").unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.check(Some(&a), ip).is_ok());
        }
        let t = limits.check(Some(&a), ip).unwrap_err();
        assert_eq!(t.scope, "per_org");
        assert!(t.retry_after_secs >= 1);
        assert!(limits.check(Some(&b), ip).is_ok());
    }
}
