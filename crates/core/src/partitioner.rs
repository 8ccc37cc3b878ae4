//! The tenant partitioner: all of a tenant's data for a dataset lives in one partition, so its
//! changes stay in order and any Kafka client that hashes the tenant id with the default
//! partitioner places it on the same partition we do.

/// Kafka's murmur2, bit for bit as the Java client's `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a tenant: `toPositive(murmur2(tenant bytes)) % partitions`, as Kafka's
/// default partitioner computes it for a record whose key is the tenant id.
///
/// # Panics
/// If `partitions` is 0; dataset declarations reject that long before it gets here.
pub fn partition_for_tenant(tenant: &crate::TenantId, partitions: u32) -> u32 {
    assert!(partitions > 0, "a dataset has at least one partition");
    ((murmur2(tenant.as_str().as_bytes()) & 0x7fff_ffff) as u32) % partitions
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::TenantId;

    /// Vectors from Apache Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafkas_published_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn partition_masks_the_sign_bit_before_the_modulo() {
        // murmur2("21") is negative; Java's toPositive masks, it does not take abs().
        let t = TenantId::new("21").unwrap();
        assert_eq!(
            partition_for_tenant(&t, 7),
            ((-973_932_308_i32 & 0x7fff_ffff) as u32) % 7
        );
    }

    proptest! {
        #[test]
        fn partition_is_in_range_and_depends_only_on_the_tenant(
            tenant in "[a-z0-9][a-z0-9_-]{0,62}", partitions in 1u32..512,
        ) {
            let t = TenantId::new(tenant).unwrap();
            let p = partition_for_tenant(&t, partitions);
            prop_assert!(p < partitions);
            prop_assert_eq!(p, partition_for_tenant(&t.clone(), partitions));
        }
    }
}
