//! The batcher state machine: open batches per (tenant, partition), sealed batches waiting to
//! be emitted, the deficit-round-robin schedule over them, and per-partition positions.
//!
//! It must never block, read a clock or do I/O: the caller passes `now` and performs every
//! effect.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use tenantsync_core::TenantId;

use crate::{Batch, BatchId, Limits, SourceRecord};

/// One tenant's records in one partition (the partitioner keeps a tenant in one partition, so
/// this is one per tenant in practice).
type LaneKey = (TenantId, u32);

#[derive(Debug, Default)]
struct Lane {
    /// The open batch, in offset order; empty when none is open.
    open: Vec<SourceRecord>,
    open_bytes: usize,
    /// When `open` must be sealed by `tick`, if it is open and the instant is representable;
    /// the same value is in `Batcher::deadlines`.
    deadline: Option<Instant>,
    /// Sealed, not yet returned by `next_batch`, in offset order.
    sealed: VecDeque<Batch>,
    /// Deficit round robin credit, in records.
    deficit: usize,
}

impl Lane {
    /// The offset of the oldest record the lane holds.
    fn head(&self) -> Option<u64> {
        self.sealed
            .front()
            .map(|b| b.first_offset)
            .or_else(|| self.open.first().map(|r| r.offset))
    }
}

#[derive(Debug)]
struct PartitionState {
    /// One past the highest offset pushed (buffered or skipped): a lower one is a re-read.
    next: u64,
    /// The oldest buffered offset of every lane of this partition holding records.
    heads: BTreeSet<u64>,
}

/// The batcher's pure core; see the crate docs for its contract.
#[derive(Debug)]
pub struct Batcher {
    limits: Limits,
    lanes: HashMap<LaneKey, Lane>,
    partitions: HashMap<u32, PartitionState>,
    /// Per tenant, the highest offset already covered by a durable batch (from `with_emitted`),
    /// kept until a later record of the tenant arrives.
    covered: HashMap<TenantId, u64>,
    /// Open batches by the instant `tick` seals them.
    deadlines: BTreeSet<(Instant, LaneKey)>,
    /// Lanes holding sealed batches, in round-robin order; each such lane exactly once.
    active: VecDeque<LaneKey>,
    /// Whether the front of `active` already got its quantum for the current visit.
    front_credited: bool,
    buffered: usize,
}

impl Batcher {
    /// A batcher with nothing buffered. `limits` should have passed [`Limits::validate`]; a zero
    /// `max_records` or `max_bytes` is taken as 1.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                max_records: limits.max_records.max(1),
                max_bytes: limits.max_bytes.max(1),
                max_wait: limits.max_wait,
            },
            lanes: HashMap::new(),
            partitions: HashMap::new(),
            covered: HashMap::new(),
            deadlines: BTreeSet::new(),
            active: VecDeque::new(),
            front_credited: false,
            buffered: 0,
        }
    }

    /// Recovery: for each tenant, the highest source offset already covered by a batch in the
    /// batches log. [`push`](Self::push) skips that tenant's records at or below it, so a
    /// restart that re-reads from the committed [`safe_offset`](Self::safe_offset) neither emits
    /// a record twice nor loses one. A tenant given twice keeps the higher offset.
    pub fn with_emitted(mut self, covered: impl IntoIterator<Item = (TenantId, u64)>) -> Self {
        for (tenant, offset) in covered {
            let entry = self.covered.entry(tenant).or_insert(offset);
            *entry = (*entry).max(offset);
        }
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many records are held, open or sealed, not yet returned by `next_batch`.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Buffers a record. Records of one partition must arrive in offset order; one at or below
    /// an offset already pushed for its partition is a re-read and is ignored, as is one covered
    /// by [`with_emitted`](Self::with_emitted).
    ///
    /// The tenant's open batch is sealed first when the record would take it past `max_records`
    /// or `max_bytes` (key plus value bytes), and sealed right after when it is then full. A
    /// record larger than `max_bytes` forms a batch alone. `now` starts the `max_wait` clock of
    /// a batch this record opens.
    pub fn push(&mut self, record: SourceRecord, now: Instant) {
        let partition = self
            .partitions
            .entry(record.partition)
            .or_insert(PartitionState {
                next: record.offset,
                heads: BTreeSet::new(),
            });
        if record.offset < partition.next {
            return;
        }
        partition.next = record.offset.saturating_add(1);
        if let Some(&covered) = self.covered.get(&record.tenant) {
            if record.offset <= covered {
                return;
            }
            // Records of a tenant arrive in offset order: none to skip any more.
            self.covered.remove(&record.tenant);
        }

        let key = (record.tenant.clone(), record.partition);
        let lane = self.lanes.entry(key.clone()).or_default();
        let size = record.size();
        if !lane.open.is_empty()
            && (lane.open.len() >= self.limits.max_records
                || lane.open_bytes.saturating_add(size) > self.limits.max_bytes)
        {
            seal(&key, lane, &mut self.deadlines, &mut self.active);
        }
        if lane.head().is_none() {
            partition.heads.insert(record.offset);
        }
        if lane.open.is_empty() {
            lane.deadline = now.checked_add(self.limits.max_wait);
            if let Some(deadline) = lane.deadline {
                self.deadlines.insert((deadline, key.clone()));
            }
        }
        lane.open.push(record);
        lane.open_bytes = lane.open_bytes.saturating_add(size);
        self.buffered += 1;
        if lane.open.len() >= self.limits.max_records || lane.open_bytes >= self.limits.max_bytes {
            seal(&key, lane, &mut self.deadlines, &mut self.active);
        }
    }

    /// Seals every open batch whose oldest record was pushed `max_wait` or more before `now`.
    pub fn tick(&mut self, now: Instant) {
        while let Some(first) = self.deadlines.first() {
            if first.0 > now {
                break;
            }
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            if let Some(lane) = self.lanes.get_mut(&key) {
                // `seal` would remove the entry; it is already gone.
                lane.deadline = None;
                seal(&key, lane, &mut self.deadlines, &mut self.active);
            }
        }
    }

    /// When [`tick`](Self::tick) next has something to seal; `None` while no batch is open (or
    /// `max_wait` is too large for an [`Instant`]). It may already have passed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// The next sealed batch to emit, or `None` if none is sealed.
    ///
    /// Tenants holding sealed batches are served by deficit round robin: on each visit a tenant
    /// gains `max_records` records of credit and emits its sealed batches, oldest first, while
    /// its credit covers them (always at least one); a tenant that runs out of sealed batches
    /// leaves the round and loses its credit, and one with a newly sealed batch joins at the
    /// end. So per round every backlogged tenant emits between one batch and about
    /// `2 * max_records` records, whatever its volume.
    pub fn next_batch(&mut self) -> Option<Batch> {
        loop {
            let key = self.active.front()?;
            let Some(lane) = self.lanes.get_mut(key) else {
                // Unreachable: an active lane always exists. Drop the stale entry.
                self.active.pop_front();
                self.front_credited = false;
                continue;
            };
            let Some(head_len) = lane.sealed.front().map(|b| b.records.len()) else {
                self.active.pop_front();
                self.front_credited = false;
                continue;
            };
            if !self.front_credited {
                lane.deficit = lane.deficit.saturating_add(self.limits.max_records);
                self.front_credited = true;
            }
            if head_len > lane.deficit {
                self.active.rotate_left(1);
                self.front_credited = false;
                continue;
            }
            let batch = lane.sealed.pop_front()?;
            lane.deficit -= head_len;
            self.buffered -= head_len;
            let next_head = lane.head();
            if let Some(partition) = self.partitions.get_mut(&batch.partition) {
                partition.heads.remove(&batch.first_offset);
                if let Some(head) = next_head {
                    partition.heads.insert(head);
                }
            }
            if lane.sealed.is_empty() {
                let empty = lane.open.is_empty();
                lane.deficit = 0;
                self.front_credited = false;
                if let Some(key) = self.active.pop_front()
                    && empty
                {
                    self.lanes.remove(&key);
                }
            }
            return Some(batch);
        }
    }

    /// The lowest offset of `partition` not yet covered by a batch returned from
    /// [`next_batch`](Self::next_batch): everything below it was returned in a batch or skipped
    /// as covered, so it is the source position to commit once those batches are durable. It
    /// accounts for open and sealed batches alike. `None` until a record of the partition was
    /// pushed (the committed position then stands as it is). It never goes down.
    pub fn safe_offset(&self, partition: u32) -> Option<u64> {
        let state = self.partitions.get(&partition)?;
        Some(state.heads.first().copied().unwrap_or(state.next))
    }
}

/// Turns the lane's open batch (if any) into a sealed one, queueing the lane for emission.
fn seal(
    key: &LaneKey,
    lane: &mut Lane,
    deadlines: &mut BTreeSet<(Instant, LaneKey)>,
    active: &mut VecDeque<LaneKey>,
) {
    if let Some(deadline) = lane.deadline.take() {
        deadlines.remove(&(deadline, key.clone()));
    }
    let records = std::mem::take(&mut lane.open);
    lane.open_bytes = 0;
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return;
    };
    let (first_offset, last_offset) = (first.offset, last.offset);
    let batch = Batch {
        id: BatchId::for_range(key.1, first_offset, last_offset),
        tenant: key.0.clone(),
        partition: key.1,
        first_offset,
        last_offset,
        records,
    };
    if lane.sealed.is_empty() {
        active.push_back(key.clone());
    }
    lane.sealed.push_back(batch);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn rec(t: &str, partition: u32, offset: u64, bytes: usize) -> SourceRecord {
        SourceRecord {
            partition,
            offset,
            tenant: tenant(t),
            key: Vec::new(),
            value: Some(vec![0; bytes]),
            appended_at_ms: 0,
        }
    }

    fn limits(max_records: usize, max_bytes: usize, max_wait_ms: u64) -> Limits {
        Limits {
            max_records,
            max_bytes,
            max_wait: Duration::from_millis(max_wait_ms),
        }
    }

    fn offsets(b: &Batch) -> Vec<u64> {
        b.records.iter().map(|r| r.offset).collect()
    }

    fn drain(b: &mut Batcher) -> Vec<Batch> {
        std::iter::from_fn(|| b.next_batch()).collect()
    }

    #[test]
    fn seals_by_count_as_soon_as_full() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(3, 1000, 60_000));
        for o in 0..7 {
            b.push(rec("a", 0, o, 1), now);
        }
        let batches = drain(&mut b);
        assert_eq!(
            batches.iter().map(offsets).collect::<Vec<_>>(),
            [vec![0, 1, 2], vec![3, 4, 5]]
        );
        assert_eq!(batches[0].id.as_str(), "0-0-2");
        assert_eq!(batches[1].id.as_str(), "0-3-5");
        assert_eq!(b.buffered(), 1);
    }

    #[test]
    fn seals_by_bytes_before_overflowing() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(100, 10, 60_000));
        // 4 + 4 fit, a third would make 12: sealed before it; 4 + 6 = 10 is full.
        for (o, size) in [(0, 4), (1, 4), (2, 4), (3, 6), (4, 1)] {
            b.push(rec("a", 0, o, size), now);
        }
        let batches = drain(&mut b);
        assert_eq!(
            batches.iter().map(offsets).collect::<Vec<_>>(),
            [vec![0, 1], vec![2, 3]]
        );
        assert_eq!(
            batches.iter().map(Batch::bytes).collect::<Vec<_>>(),
            [8, 10]
        );
        assert_eq!(b.buffered(), 1);
    }

    #[test]
    fn an_oversize_record_forms_a_batch_alone() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(100, 10, 60_000));
        b.push(rec("a", 0, 0, 3), now);
        b.push(rec("a", 0, 1, 50), now);
        b.push(rec("a", 0, 2, 3), now);
        let batches = drain(&mut b);
        assert_eq!(
            batches.iter().map(offsets).collect::<Vec<_>>(),
            [vec![0], vec![1]]
        );
        b.tick(now + Duration::from_secs(60));
        assert_eq!(offsets(&b.next_batch().unwrap()), [2]);
    }

    #[test]
    fn key_bytes_count_too() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(100, 10, 60_000));
        let mut r = rec("a", 0, 0, 0);
        r.key = vec![b'k'; 6];
        r.value = None;
        assert_eq!(r.size(), 6);
        b.push(r, now);
        b.push(rec("a", 0, 1, 5), now);
        assert_eq!(offsets(&b.next_batch().unwrap()), [0]);
    }

    #[test]
    fn seals_by_wait_from_the_oldest_record() {
        let t0 = Instant::now();
        let wait = Duration::from_millis(100);
        let mut b = Batcher::new(limits(100, 1000, 100));
        assert_eq!(b.next_deadline(), None);
        b.push(rec("a", 0, 0, 1), t0);
        b.push(rec("b", 0, 1, 1), t0 + Duration::from_millis(30));
        b.push(rec("a", 0, 2, 1), t0 + Duration::from_millis(60));
        assert_eq!(b.next_deadline(), Some(t0 + wait));

        b.tick(t0 + wait - Duration::from_millis(1));
        assert!(b.next_batch().is_none());
        b.tick(t0 + wait);
        let a = b.next_batch().unwrap();
        assert_eq!((a.tenant.as_str(), offsets(&a)), ("a", vec![0, 2]));
        assert!(b.next_batch().is_none());
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(130)));

        b.tick(t0 + Duration::from_millis(130));
        assert_eq!(offsets(&b.next_batch().unwrap()), [1]);
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn a_batch_sealed_by_size_leaves_the_deadlines() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(2, 1000, 100));
        b.push(rec("a", 0, 0, 1), t0);
        b.push(rec("a", 0, 1, 1), t0);
        assert_eq!(b.next_deadline(), None);
        b.push(rec("a", 0, 2, 1), t0 + Duration::from_millis(50));
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(150)));
    }

    #[test]
    fn zero_wait_seals_at_every_tick() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(10, 1000, 0));
        b.push(rec("a", 0, 0, 1), t0);
        assert_eq!(b.next_deadline(), Some(t0));
        assert!(b.next_batch().is_none());
        b.tick(t0);
        assert_eq!(offsets(&b.next_batch().unwrap()), [0]);
    }

    #[test]
    fn every_batch_holds_one_tenant() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(3, 1000, 0));
        for (o, t) in ["a", "b", "a", "c", "b", "a", "a"].into_iter().enumerate() {
            b.push(rec(t, 0, o as u64, 1), now);
        }
        b.tick(now);
        let batches = drain(&mut b);
        let mut got: Vec<_> = batches
            .iter()
            .map(|b| (b.tenant.as_str().to_owned(), offsets(b)))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("a".to_owned(), vec![0, 2, 5]),
                ("a".to_owned(), vec![6]),
                ("b".to_owned(), vec![1, 4]),
                ("c".to_owned(), vec![3]),
            ]
        );
        for batch in &batches {
            assert!(batch.records.iter().all(|r| r.tenant == batch.tenant));
        }
    }

    #[test]
    fn drr_serves_every_small_tenant_within_one_round() {
        let now = Instant::now();
        let max_records = 10;
        let mut b = Batcher::new(limits(max_records, 1 << 20, 60_000));
        // The huge tenant seals 1000 full batches before any small tenant has one.
        let mut offset = 0;
        for _ in 0..1000 * max_records {
            b.push(rec("huge", 0, offset, 1), now);
            offset += 1;
        }
        let small: Vec<String> = (0..10).map(|i| format!("small{i}")).collect();
        for (i, t) in small.iter().enumerate() {
            // Small tenants on other partitions and on the huge tenant's.
            for _ in 0..3 {
                b.push(rec(t, (i % 3) as u32, offset, 1), now);
                offset += 1;
            }
        }
        b.tick(now + Duration::from_secs(60));

        // One round: the huge tenant gets max_records records, each small tenant its batch.
        let first: Vec<Batch> = (0..small.len() + 1)
            .map(|_| b.next_batch().unwrap())
            .collect();
        for t in &small {
            assert!(
                first.iter().any(|batch| batch.tenant.as_str() == t),
                "{t} not served in the first round"
            );
        }
        let huge_records: usize = first
            .iter()
            .filter(|b| b.tenant.as_str() == "huge")
            .map(|b| b.records.len())
            .sum();
        assert_eq!(huge_records, max_records);
        let rest = drain(&mut b);
        assert_eq!(rest.len(), 999);
        assert!(rest.iter().all(|b| b.tenant.as_str() == "huge"));
    }

    #[test]
    fn drr_shares_records_not_batches() {
        // A steady small tenant with one-record batches gets as many records per round as the
        // huge tenant with full batches.
        let mut now = Instant::now();
        let mut b = Batcher::new(limits(4, 1 << 20, 0));
        for o in 0..400 {
            b.push(rec("huge", 0, o, 1), now);
        }
        let mut emitted = HashMap::<String, usize>::new();
        let mut offset = 1000;
        for _ in 0..40 {
            // Each small record is sealed alone (zero wait), as a trickle would be.
            for _ in 0..4 {
                b.push(rec("small", 1, offset, 1), now);
                offset += 1;
                now += Duration::from_millis(1);
                b.tick(now);
            }
            // One round: the huge tenant's full batch and the small one's four.
            for _ in 0..5 {
                let batch = b.next_batch().unwrap();
                *emitted.entry(batch.tenant.to_string()).or_default() += batch.records.len();
            }
        }
        assert_eq!(emitted["huge"], emitted["small"]);
    }

    #[test]
    fn a_tenant_batches_come_out_in_offset_order() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(2, 1 << 20, 0));
        for o in 0..10 {
            b.push(rec("a", 0, o * 2, 1), now);
            b.push(rec("b", 0, o * 2 + 1, 1), now);
        }
        let mut last = HashMap::<TenantId, u64>::new();
        for batch in drain(&mut b) {
            if let Some(prev) = last.insert(batch.tenant.clone(), batch.last_offset) {
                assert!(batch.first_offset > prev);
            }
        }
        assert_eq!(last.len(), 2);
    }

    #[test]
    fn safe_offset_waits_for_every_buffered_record() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(2, 1 << 20, 100));
        assert_eq!(b.safe_offset(0), None);
        b.push(rec("a", 0, 10, 1), t0);
        // Open, not emitted.
        assert_eq!(b.safe_offset(0), Some(10));
        b.push(rec("b", 0, 11, 1), t0);
        b.push(rec("a", 0, 12, 1), t0);
        // a's batch 10..=12 is sealed, not emitted: still 10.
        assert_eq!(b.safe_offset(0), Some(10));
        let a = b.next_batch().unwrap();
        assert_eq!(offsets(&a), [10, 12]);
        // b's open record at 11 holds it.
        assert_eq!(b.safe_offset(0), Some(11));
        b.tick(t0 + Duration::from_millis(100));
        assert_eq!(b.safe_offset(0), Some(11));
        b.next_batch().unwrap();
        // Nothing buffered: one past the highest offset seen.
        assert_eq!(b.safe_offset(0), Some(13));
        assert_eq!(b.safe_offset(1), None);
        assert_eq!(b.buffered(), 0);
    }

    #[test]
    fn safe_offset_is_per_partition() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(1, 1 << 20, 100));
        b.push(rec("a", 0, 5, 1), now);
        b.push(rec("b", 1, 7, 1), now);
        assert_eq!((b.safe_offset(0), b.safe_offset(1)), (Some(5), Some(7)));
        let first = b.next_batch().unwrap();
        let (done, other) = if first.partition == 0 { (0, 1) } else { (1, 0) };
        assert_eq!(b.safe_offset(done), Some(first.last_offset + 1));
        assert_eq!(b.safe_offset(other), Some([5, 7][other as usize]));
    }

    #[test]
    fn covered_records_are_skipped_and_do_not_hold_safe_offset() {
        let now = Instant::now();
        let mut b =
            Batcher::new(limits(10, 1 << 20, 0)).with_emitted([(tenant("a"), 3), (tenant("a"), 1)]);
        for (o, t) in ["b", "a", "a", "a", "b", "a"].into_iter().enumerate() {
            b.push(rec(t, 0, o as u64, 1), now);
        }
        assert_eq!(b.buffered(), 3);
        b.tick(now);
        let mut got: Vec<_> = drain(&mut b)
            .iter()
            .map(|b| (b.tenant.to_string(), offsets(b)))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [("a".to_owned(), vec![5]), ("b".to_owned(), vec![0, 4])]
        );
        assert_eq!(b.safe_offset(0), Some(6));
    }

    #[test]
    fn re_reads_are_ignored() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(10, 1 << 20, 0));
        for o in [0, 1, 2, 1, 2, 0, 3] {
            b.push(rec("a", 0, o, 1), now);
        }
        b.tick(now);
        assert_eq!(offsets(&b.next_batch().unwrap()), [0, 1, 2, 3]);
    }

    #[test]
    fn a_tenant_in_two_partitions_never_mixes_them() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(10, 1 << 20, 0));
        b.push(rec("a", 0, 0, 1), now);
        b.push(rec("a", 1, 0, 1), now);
        b.push(rec("a", 0, 1, 1), now);
        b.tick(now);
        let mut got: Vec<_> = drain(&mut b)
            .iter()
            .map(|b| (b.partition, offsets(b)))
            .collect();
        got.sort();
        assert_eq!(got, [(0, vec![0, 1]), (1, vec![0])]);
    }

    #[test]
    fn an_emptied_tenant_costs_no_memory() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(1, 1 << 20, 0));
        for o in 0..100 {
            b.push(rec(&format!("t{o}"), 0, o, 1), now);
        }
        assert_eq!(drain(&mut b).len(), 100);
        assert!(b.lanes.is_empty());
        assert!(b.active.is_empty());
        assert!(b.deadlines.is_empty());
        assert_eq!(b.partitions[&0].heads.len(), 0);
    }
}
