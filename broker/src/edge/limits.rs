//! Rate limits (R21): per org and per client address, with governor. Keyed
//! state is pruned on a timer so a scan of many addresses cannot grow memory.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
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
    per_org: RwLock<(u32, Arc<DefaultKeyedRateLimiter<OrgId>>)>,
    per_org_quota: (u32, u32),
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

/// An org's share of its limit on one of `nodes` nodes: the rate and the
/// burst divided evenly (rounded up, at least 1 each), so the nodes
/// together admit the configured rate.
pub fn node_share(per_second: u32, burst: u32, nodes: u32) -> (u32, u32) {
    let nodes = nodes.max(1);
    (
        per_second.div_ceil(nodes).max(1),
        burst.div_ceil(nodes).max(1),
    )
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
            per_org: RwLock::new((
                1,
                Arc::new(RateLimiter::keyed(quota(
                    limits.per_org_per_second,
                    limits.per_org_burst,
                ))),
            )),
            per_org_quota: (limits.per_org_per_second, limits.per_org_burst),
            per_address: RateLimiter::keyed(quota(
                limits.per_address_per_second,
                limits.per_address_burst,
            )),
            clock: DefaultClock::default(),
        }
    }

    /// Makes each org's limit this node's share of `nodes` (a cluster on one
    /// database: the per-org limit holds across the nodes). A change starts
    /// the org limiters afresh.
    pub fn share_among(&self, nodes: u32) {
        let Ok(mut per_org) = self.per_org.write() else {
            return;
        };
        if per_org.0 == nodes.max(1) {
            return;
        }
        let (rate, burst) = node_share(self.per_org_quota.0, self.per_org_quota.1, nodes);
        *per_org = (
            nodes.max(1),
            Arc::new(RateLimiter::keyed(quota(rate, burst))),
        );
        tracing::info!(
            nodes,
            per_org_per_second = rate,
            per_org_burst = burst,
            "per-org rate limit shared among the nodes"
        );
    }

    fn org_limiter(&self) -> Option<Arc<DefaultKeyedRateLimiter<OrgId>>> {
        self.per_org.read().ok().map(|l| l.1.clone())
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
        let limiter = org.and(self.org_limiter());
        if let Some(Err(n)) = org.zip(limiter).map(|(org, l)| l.check_key(org)) {
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
            per_org: RwLock::new((1, Arc::new(RateLimiter::keyed(quota(1, 1))))),
            per_org_quota: (1, 1),
            per_address: RateLimiter::keyed(quota(per_second, burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Drops keys whose state is back to full.
    pub fn prune(&self) {
        if let Some(per_org) = self.org_limiter() {
            per_org.retain_recent();
            per_org.shrink_to_fit();
        }
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
    fn the_nodes_share_an_org_limit_without_exceeding_it() {
        assert_eq!(node_share(100, 200, 1), (100, 200));
        assert_eq!(node_share(100, 200, 3), (34, 67));
        assert_eq!(node_share(2, 5, 4), (1, 2));
        assert_eq!(node_share(100, 200, 0), (100, 200));
        let limits = RateLimits::new(&LimitsConfig {
            per_org_per_second: 1,
            per_org_burst: 6,
            ..LimitsConfig::default()
        });
        limits.share_among(3);
        let a = OrgId::new("city-a").unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let admitted = (0..6)
            .filter(|_| limits.check(Some(&a), ip).is_ok())
            .count();
        assert_eq!(admitted, 2, "a third of the burst on each of three nodes");
    }

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
