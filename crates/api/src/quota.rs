//! Fair ingest: a token bucket per tenant, counting changes (a bulk line is one change).
//!
//! A tenant that writes faster than its rate, once its burst is spent, is refused with 429 and
//! `Retry-After` before anything is appended, so its burst never queues up in front of other
//! tenants' changes; every other tenant keeps its own full bucket. The buckets are
//! [`governor`]'s GCRA, which keeps one 8-byte state per tenant and never sleeps. They live in
//! this process: with several instances, each grants its own rate (a tenant spread over `n`
//! instances may write `n` times the rate).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tenantsync_core::TenantId;

/// A tenant's write quota: changes per second, and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteQuota {
    pub rate: NonZeroU32,
    pub burst: NonZeroU32,
}

impl WriteQuota {
    fn governor(self) -> Quota {
        Quota::per_second(self.rate).allow_burst(self.burst)
    }
}

/// Why changes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    /// Over the rate: the changes fit once this much time has passed.
    RetryAfter(Duration),
    /// More changes at once than the burst: they never fit in one request.
    OverBurst { burst: u32 },
}

/// Every tenant's bucket.
pub struct WriteQuotas {
    default: WriteQuota,
    shared: DefaultKeyedRateLimiter<TenantId>,
    overrides: HashMap<TenantId, (WriteQuota, DefaultDirectRateLimiter)>,
    clock: DefaultClock,
}

impl WriteQuotas {
    pub fn new(default: WriteQuota, overrides: &HashMap<TenantId, WriteQuota>) -> Self {
        Self {
            default,
            shared: RateLimiter::keyed(default.governor()),
            overrides: overrides
                .iter()
                .map(|(t, q)| (t.clone(), (*q, RateLimiter::direct(q.governor()))))
                .collect(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes `changes` from the tenant's bucket, all or none.
    pub fn take(&self, tenant: &TenantId, changes: u32) -> Result<(), QuotaError> {
        let Some(n) = NonZeroU32::new(changes) else {
            return Ok(());
        };
        let (quota, result) = match self.overrides.get(tenant) {
            Some((quota, limiter)) => (*quota, limiter.check_n(n)),
            None => (self.default, self.shared.check_key_n(tenant, n)),
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(QuotaError::RetryAfter(
                not_until.wait_time_from(self.clock.now()),
            )),
            Err(_) => Err(QuotaError::OverBurst {
                burst: quota.burst.get(),
            }),
        }
    }

    /// Forgets the buckets of tenants that are full again (they behave exactly like new
    /// ones), so that memory follows the tenants writing now, not every tenant ever seen.
    pub fn forget_full(&self) {
        self.shared.retain_recent();
        self.shared.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(rate: u32, burst: u32) -> WriteQuota {
        WriteQuota {
            rate: NonZeroU32::new(rate).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn a_tenant_over_its_burst_is_refused_while_others_are_not() {
        let quotas = WriteQuotas::new(quota(10, 20), &HashMap::new());
        assert_eq!(quotas.take(&tenant("big"), 20), Ok(()));
        let Err(QuotaError::RetryAfter(wait)) = quotas.take(&tenant("big"), 5) else {
            panic!("the sixth change over the burst must wait");
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Tenant ids compare exactly: neither of these shares big's bucket.
        assert_eq!(quotas.take(&tenant("big2"), 20), Ok(()));
        assert_eq!(quotas.take(&tenant("big_"), 20), Ok(()));
    }

    #[test]
    fn more_than_the_burst_at_once_never_fits() {
        let quotas = WriteQuotas::new(quota(10, 20), &HashMap::new());
        assert_eq!(
            quotas.take(&tenant("a"), 21),
            Err(QuotaError::OverBurst { burst: 20 })
        );
        assert_eq!(quotas.take(&tenant("a"), 0), Ok(()));
    }

    #[test]
    fn overrides_replace_the_default_for_their_tenant() {
        let overrides = HashMap::from([(tenant("vip"), quota(1000, 5000))]);
        let quotas = WriteQuotas::new(quota(10, 20), &overrides);
        assert_eq!(quotas.take(&tenant("vip"), 5000), Ok(()));
        assert!(quotas.take(&tenant("vip"), 100).is_err());
        assert_eq!(
            quotas.take(&tenant("other"), 21),
            Err(QuotaError::OverBurst { burst: 20 })
        );
    }
}
