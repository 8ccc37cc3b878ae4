//! Fair ingest: a token bucket per tenant, counting changes (a bulk line is one change), whose
//! quota holds across every instance sharing the store.
//!
//! A tenant that writes faster than its rate, once its burst is spent, is refused with 429 and
//! `Retry-After` before anything is appended, so its burst never queues up in front of other
//! tenants' changes; every other tenant keeps its own full bucket.
//!
//! **Shared out, not shared.** With `n` live instances (counted by the API crate's `instances` service) each one
//! grants every tenant `rate / n` changes per second and a burst of `burst / n` (at least 1),
//! so a tenant writing through all of them gets its configured quota in total, without a store
//! round trip per request. The price: a tenant writing through fewer instances than are live
//! gets less (through one of `n`, a `1/n` share). When `n` changes, every bucket keeps its
//! state (when it is full again) and refills at the new rate from then on, so a change of `n`
//! neither refills nor empties any bucket.
//!
//! The buckets are GCRA (one `f64` per tenant: when its bucket is full again), in a few
//! mutex-guarded shards; taking never sleeps and never does I/O.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tenantsync_core::TenantId;

/// A tenant's write quota: changes per second, and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteQuota {
    pub rate: NonZeroU32,
    pub burst: NonZeroU32,
}

/// Why changes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    /// Over the rate: the changes fit once this much time has passed.
    RetryAfter(Duration),
    /// More changes at once than the burst: they never fit in one request.
    OverBurst { burst: u32 },
}

/// Mutex shards of the buckets, so that requests of different tenants rarely wait on each
/// other.
const SHARDS: usize = 16;

/// Every tenant's bucket, sized by this instance's share of the quota.
pub struct WriteQuotas {
    default: WriteQuota,
    overrides: HashMap<TenantId, WriteQuota>,
    /// Live instances the quotas are shared among, at least 1.
    instances: AtomicU32,
    /// Per tenant, when its bucket is full again (GCRA's theoretical arrival time), in
    /// nanoseconds since `epoch`. A tenant without an entry has a full bucket.
    shards: Vec<Mutex<HashMap<TenantId, f64>>>,
    hasher: RandomState,
    epoch: Instant,
}

impl WriteQuotas {
    pub fn new(default: WriteQuota, overrides: &HashMap<TenantId, WriteQuota>) -> Self {
        Self {
            default,
            overrides: overrides.clone(),
            instances: AtomicU32::new(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// Shares every quota out among `instances` live instances (0 counts as 1): from now on
    /// each bucket refills at `rate / instances` and holds `burst / instances` (at least 1).
    pub fn set_instances(&self, instances: u32) {
        self.instances.store(instances.max(1), Ordering::Relaxed);
    }

    /// How many instances the quotas are shared among.
    pub fn instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed)
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_nanos() as f64
    }

    fn shard(&self, tenant: &TenantId) -> &Mutex<HashMap<TenantId, f64>> {
        &self.shards[self.hasher.hash_one(tenant) as usize % SHARDS]
    }

    /// Takes `changes` from the tenant's bucket, all or none.
    ///
    /// A request of more changes than this instance's share of the burst (but no more than the
    /// whole burst) passes only when the bucket is full, and leaves it that much in debt: one
    /// request may always carry up to the configured burst, and the rate still holds over time.
    pub fn take(&self, tenant: &TenantId, changes: u32) -> Result<(), QuotaError> {
        if changes == 0 {
            return Ok(());
        }
        let quota = self.overrides.get(tenant).copied().unwrap_or(self.default);
        if changes > quota.burst.get() {
            return Err(QuotaError::OverBurst {
                burst: quota.burst.get(),
            });
        }
        let instances = self.instances();
        // Nanoseconds per change at this instance's share of the rate.
        let interval = 1e9 * f64::from(instances) / f64::from(quota.rate.get());
        let burst = (quota.burst.get() / instances).max(1);
        let tolerance = interval * f64::from(burst.max(changes));
        let cost = interval * f64::from(changes);
        let now = self.now();
        let mut buckets = self.shard(tenant).lock().unwrap_or_else(|e| e.into_inner());
        let full_at = buckets.get(tenant).copied().unwrap_or(now).max(now);
        let oversize = changes > burst && full_at > now;
        let new_full_at = full_at + cost;
        if oversize || new_full_at - now > tolerance {
            let wait = if oversize {
                full_at - now
            } else {
                new_full_at - tolerance - now
            };
            return Err(QuotaError::RetryAfter(Duration::from_nanos(
                wait.ceil() as u64
            )));
        }
        match buckets.get_mut(tenant) {
            Some(full_at) => *full_at = new_full_at,
            None => {
                buckets.insert(tenant.clone(), new_full_at);
            }
        }
        Ok(())
    }

    /// Forgets the buckets of tenants that are full again (they behave exactly like new
    /// ones), so that memory follows the tenants writing now, not every tenant ever seen.
    pub fn forget_full(&self) {
        let now = self.now();
        for shard in &self.shards {
            let mut buckets = shard.lock().unwrap_or_else(|e| e.into_inner());
            buckets.retain(|_, full_at| *full_at > now);
            buckets.shrink_to_fit();
        }
    }

    /// How many tenants have a bucket that is not full.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
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

    /// How many single changes the tenant gets right now, up to `max`.
    fn drain(quotas: &WriteQuotas, t: &TenantId, max: u32) -> u32 {
        (0..max).take_while(|_| quotas.take(t, 1).is_ok()).count() as u32
    }

    #[test]
    fn instances_share_the_burst_and_the_rate() {
        let quotas = WriteQuotas::new(quota(1000, 100), &HashMap::new());
        quotas.set_instances(4);
        let t = tenant("a");
        assert_eq!(drain(&quotas, &t, 1_000), 25, "a quarter of the burst");
        let Err(QuotaError::RetryAfter(wait)) = quotas.take(&t, 1) else {
            panic!("the share is spent");
        };
        // A quarter of the rate: one change every 4 ms, not every 1 ms.
        assert!(
            wait > Duration::from_millis(1) && wait <= Duration::from_millis(4),
            "{wait:?}"
        );
        // Never below one change, whatever the count.
        quotas.set_instances(1_000);
        assert_eq!(drain(&quotas, &tenant("b"), 10), 1);
        quotas.set_instances(0);
        assert_eq!(quotas.instances(), 1);
    }

    #[test]
    fn a_change_of_instances_neither_refills_nor_empties_a_bucket() {
        let quotas = WriteQuotas::new(quota(1000, 100), &HashMap::new());
        let t = tenant("a");
        assert_eq!(drain(&quotas, &t, 1_000), 100);
        quotas.set_instances(2);
        assert_eq!(drain(&quotas, &t, 1_000), 0, "still spent");
        quotas.set_instances(1);
        assert_eq!(drain(&quotas, &t, 1_000), 0, "still spent");
        // A fresh tenant's bucket at 2 instances holds half the burst; back at 1, the whole.
        quotas.set_instances(2);
        assert_eq!(drain(&quotas, &tenant("b"), 1_000), 50);
        quotas.set_instances(1);
        assert_eq!(drain(&quotas, &tenant("c"), 1_000), 100);
    }

    #[test]
    fn a_request_over_the_share_passes_only_on_a_full_bucket() {
        let quotas = WriteQuotas::new(quota(1000, 100), &HashMap::new());
        quotas.set_instances(4);
        let t = tenant("a");
        assert_eq!(
            quotas.take(&t, 80),
            Ok(()),
            "within the burst, on a full bucket"
        );
        assert!(matches!(quotas.take(&t, 1), Err(QuotaError::RetryAfter(_))));
        let Err(QuotaError::RetryAfter(wait)) = quotas.take(&t, 60) else {
            panic!("an oversize request waits for a full bucket");
        };
        assert!(wait > Duration::from_millis(200), "{wait:?}");
        assert_eq!(
            quotas.take(&t, 101),
            Err(QuotaError::OverBurst { burst: 100 })
        );
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let quotas = WriteQuotas::new(quota(1_000_000, 10), &HashMap::new());
        let slow = HashMap::from([(tenant("slow"), quota(1, 10))]);
        let quotas_slow = WriteQuotas::new(quota(1_000_000, 10), &slow);
        assert_eq!(quotas_slow.take(&tenant("slow"), 1), Ok(()));
        quotas_slow.forget_full();
        assert_eq!(quotas_slow.tracked(), 1, "full again only in a second");
        // Full again a microsecond later.
        assert_eq!(quotas.take(&tenant("a"), 1), Ok(()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while quotas.tracked() > 0 {
            assert!(
                Instant::now() < deadline,
                "a full bucket was never forgotten"
            );
            quotas.forget_full();
        }
    }
}
