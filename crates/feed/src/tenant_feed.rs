//! Reading one tenant's change feed: a snapshot of its current state, then its live changes,
//! with no gap between them.
//!
//! The feed is the master store's records of the tenant ordered by seq (see
//! [`FeedStore::tenant_feed`]). A reader without a position starts a snapshot at seq 0 with
//! `live_from` set to the tenant's end at that moment: records are delivered in seq order, and
//! tombstones below `live_from` are skipped (the reader never held those records). A record
//! written during the snapshot moves to a seq at or above `live_from`, so it is delivered (again)
//! later, deletes included. Past `live_from` the reader is live. Per key, seqs and versions only
//! grow, so a reader never sees a version go down.
//!
//! A reader that has not read past the tenant's horizon (the seq below which tombstones were
//! purged) may have missed a delete: its position is [`FeedError::Gone`] and it must start a new
//! snapshot.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Value, json};
use tenantsync_core::{DatasetName, TenantId};
use tenantsync_store::{FeedPosition, FeedRecord, FeedStore, Offset, StoreError};
use tokio::time::Instant;

use crate::Hub;

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Tombstones the reader had not seen were purged: it must start over from a snapshot.
    #[error(
        "the position is older than the tenant's tombstone retention: deletes it has not seen were purged; start over from a snapshot"
    )]
    Gone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A page of a tenant's feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<FeedRecord>,
    /// Where to read next.
    pub next: FeedPosition,
    /// Whether the reader has caught up with everything the store held when the page was read.
    pub up_to_date: bool,
}

/// A change as every reader is shown it (feed pages, SSE events, subscription batches, webhook
/// messages): `{"op", "id", "version", "data", "updated_at"}`.
pub fn change_json(r: &FeedRecord) -> Value {
    let record = &r.record;
    json!({
        "op": if record.is_deleted() { "delete" } else { "upsert" },
        "id": record.id,
        "version": record.version,
        "data": record.data,
        "updated_at": record.updated_at,
    })
}

/// Records kept in a tenant's shared tail at most, and read into it per refresh.
const TAIL_CAPACITY: usize = 64;

/// A tenant's latest records, shared by its live readers so that a change read by many of them
/// is read from the store once. A reader locks it; if anything was published for the tenant
/// since its last refresh, the reader refreshes it (reading only seqs past its end) while the
/// others wait for the lock, then everyone is served from memory.
pub(crate) struct TailCache {
    /// Complete from here on: the cache holds the state, as of its last refresh, of every
    /// record of the tenant whose seq is at or above `from`.
    from: Offset,
    /// One past the last seq the last refresh covered.
    end: Offset,
    /// The last refresh stopped at its limit: the store holds more past `end`.
    more: bool,
    horizon: Offset,
    /// The hub's generation for the tenant when the last refresh started.
    generation: Option<u64>,
    /// Ascending seq, one per key.
    records: VecDeque<FeedRecord>,
}

impl TailCache {
    pub(crate) fn new(from: Offset) -> Self {
        Self {
            from,
            end: from,
            more: false,
            horizon: 0,
            generation: None,
            records: VecDeque::new(),
        }
    }

    async fn refresh(
        &mut self,
        store: &dyn FeedStore,
        hub: &Hub,
        dataset: &DatasetName,
        tenant: &TenantId,
    ) -> Result<(), StoreError> {
        let generation = hub.generation(dataset, tenant);
        // Tombstones included (live_from 0): each reader filters by its own position.
        let feed = store
            .tenant_feed(dataset, tenant, self.end, Some(0), TAIL_CAPACITY)
            .await?;
        self.more = feed.records.len() >= TAIL_CAPACITY;
        if !self.more {
            hub.record_end(dataset, tenant, feed.end, generation);
        }
        for r in feed.records {
            self.records.retain(|old| old.record.id != r.record.id);
            self.end = r.seq + 1;
            self.records.push_back(r);
        }
        if !self.more {
            self.end = self.end.max(feed.end);
        }
        while self.records.len() > TAIL_CAPACITY {
            if let Some(evicted) = self.records.pop_front() {
                self.from = evicted.seq + 1;
            }
        }
        self.horizon = feed.horizon;
        self.generation = Some(generation);
        Ok(())
    }

    /// The page at `position`, if the cache covers it.
    fn page(&self, position: FeedPosition, limit: usize) -> Option<Result<Page, FeedError>> {
        if position.next_seq < self.from {
            return None;
        }
        if position.is_behind(self.horizon) {
            return Some(Err(FeedError::Gone));
        }
        let records: Vec<FeedRecord> = self
            .records
            .iter()
            .filter(|r| {
                r.seq >= position.next_seq
                    && (!r.record.is_deleted() || r.seq >= position.live_from)
            })
            .take(limit)
            .cloned()
            .collect();
        let mut page = Page::of(records, position, limit, self.end);
        page.up_to_date &= !self.more;
        Some(Ok(page))
    }
}

impl Page {
    /// The page of `records` read at `position` with `limit`, from a source that held
    /// everything below `end`.
    fn of(records: Vec<FeedRecord>, position: FeedPosition, limit: usize, end: Offset) -> Self {
        let next_seq = match records.last() {
            Some(last) if records.len() >= limit => last.seq + 1,
            // Everything at or above the position, up to the end, was read.
            _ => position.next_seq.max(end),
        };
        Page {
            records,
            next: FeedPosition {
                next_seq,
                live_from: position.live_from,
            },
            up_to_date: next_seq >= end,
        }
    }
}

/// Reads the page at `position` (`None`: start a snapshot). A live reader is served from the
/// tenant's shared tail when it covers the position; other reads go to the store.
pub async fn read_page(
    store: &dyn FeedStore,
    hub: &Hub,
    dataset: &DatasetName,
    tenant: &TenantId,
    position: Option<FeedPosition>,
    limit: usize,
) -> Result<Page, FeedError> {
    let limit = limit.max(1);
    if let Some(position) = position {
        if hub
            .known_end(dataset, tenant)
            .is_some_and(|end| position.next_seq >= end)
        {
            return Ok(Page {
                records: Vec::new(),
                next: position,
                up_to_date: true,
            });
        }
        // A reader still taking its snapshot reads the store: the tail is for live readers.
        if position.next_seq >= position.live_from {
            let tail = hub.tail(dataset, tenant, position.next_seq);
            let mut tail = tail.lock().await;
            if tail.more || tail.generation != Some(hub.generation(dataset, tenant)) {
                tail.refresh(store, hub, dataset, tenant).await?;
            }
            if let Some(page) = tail.page(position, limit) {
                return page;
            }
        }
    }
    let generation = hub.generation(dataset, tenant);
    let feed = store
        .tenant_feed(
            dataset,
            tenant,
            position.map_or(0, |p| p.next_seq),
            position.map(|p| p.live_from),
            limit,
        )
        .await?;
    hub.record_end(dataset, tenant, feed.end, generation);
    let position = position.unwrap_or(FeedPosition {
        next_seq: 0,
        live_from: feed.end,
    });
    if position.is_behind(feed.horizon) {
        return Err(FeedError::Gone);
    }
    Ok(Page::of(feed.records, position, limit, feed.end))
}

/// Reads the page at `position`; when it is empty and `wait` is not zero, waits up to `wait`
/// for the tenant to change and reads again, answering as soon as there is something to
/// deliver.
pub async fn read_or_wait(
    store: &dyn FeedStore,
    hub: &Hub,
    dataset: &DatasetName,
    tenant: &TenantId,
    position: Option<FeedPosition>,
    limit: usize,
    wait: Duration,
) -> Result<Page, FeedError> {
    if wait.is_zero() {
        return read_page(store, hub, dataset, tenant, position, limit).await;
    }
    let deadline = Instant::now() + wait;
    // Subscribed before reading: a state published after the read wakes the wait below.
    let mut changed = hub.watch(dataset, tenant);
    changed.borrow_and_update();
    let mut page = read_page(store, hub, dataset, tenant, position, limit).await?;
    while page.records.is_empty() && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => {}
            // Timed out, or the hub forgot the signal (never while a receiver is alive).
            _ => break,
        }
        changed.borrow_and_update();
        page = read_page(store, hub, dataset, tenant, Some(page.next), limit).await?;
    }
    Ok(page)
}
