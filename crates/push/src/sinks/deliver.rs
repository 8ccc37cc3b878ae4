//! A sink's run: follows the tenants of its dataset and writes their next pages to the table,
//! several tenants' pages per transaction, each tenant's new position in the same transaction.
//!
//! The position lives in the sink's database only; this run reads it once, at its start, and
//! then keeps it in memory as it writes. Whatever stops the run (a crash, a lost claim, a
//! failing database), the next run starts from what the table says it holds. This module never
//! writes the master store, and never writes the table but through [`SinkTable::write_all`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use tenantsync_store::{FeedPosition, StoredPush};

use super::definition::Definition;
use super::table::{self, SinkTable, TenantWrite};
use crate::PushError;
use crate::figures::LastAttempt;
use crate::follow::{self, Changes, Key, Known};
use crate::runner::TargetContext;

/// Records read from the feed per page of a tenant.
pub const PAGE: usize = 1_000;
/// Tenants whose pages one transaction writes at most: one commit (one fsync in the sink's
/// database) covers them all, so a sink of many busy tenants keeps up.
const TENANTS_PER_WRITE: usize = 16;
/// How long the run waits for a change when nothing is pending, before looking again.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How often the lag is computed (it reads a page of every pending tenant).
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Records counted per tenant for the lag.
const LAG_COUNT_LIMIT: usize = 1_000;

/// Delivers the sink until `ctx.stop`. Any error (of the sink's database, the master store or
/// the definition) is recorded in the figures, with the state `failing`, and ends the run: the
/// supervisor runs it again after a backoff. A fenced write ends it quietly (another instance
/// delivers now).
pub async fn run(ctx: &TargetContext, stored: &StoredPush) -> Result<(), PushError> {
    let result = deliver(ctx, stored).await;
    match &result {
        Err(PushError::Fenced) | Ok(()) => {}
        Err(error) => {
            let message = error.to_string();
            ctx.figures.failure(
                LastAttempt {
                    at: Some(Utc::now()),
                    status: None,
                    latency_ms: 0,
                    error: Some(message.clone()),
                },
                false,
            );
            ctx.figures.set_error(message);
            ctx.figures.set_state("failing");
        }
    }
    result
}

async fn deliver(ctx: &TargetContext, stored: &StoredPush) -> Result<(), PushError> {
    let definition = Definition::parse(&stored.definition).map_err(PushError::Definition)?;
    let table = table::open(&ctx.name, &definition).await?;
    table.prepare().await?;
    let scope = definition.scope();
    let dataset = definition.dataset.clone();
    let mut known: HashMap<Key, Known> = table
        .progress()
        .await?
        .into_iter()
        .map(|(tenant, position)| {
            (
                (dataset.clone(), tenant),
                Known {
                    position: Some(position),
                    delivered_at: None,
                },
            )
        })
        .collect();
    let mut changes = Changes::new(&ctx.hub, &scope);
    let mut lag_at: Option<Instant> = None;
    ctx.figures.set_state("running");
    loop {
        if ctx.stop.is_cancelled() {
            return Ok(());
        }
        if lag_at.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
            let (records, seconds) = follow::lag(
                ctx.store.as_ref(),
                &ctx.hub,
                &scope,
                &known,
                LAG_COUNT_LIMIT,
            )
            .await?;
            ctx.figures.set_lag(records, seconds);
            lag_at = Some(Instant::now());
        }
        changes.seen();
        let keys: Vec<Key> = follow::pending(&ctx.hub, &scope, &known)
            .into_iter()
            .take(TENANTS_PER_WRITE)
            .collect();
        if keys.is_empty() {
            tokio::select! {
                _ = ctx.stop.cancelled() => return Ok(()),
                _ = changes.wait(IDLE_WAIT) => {}
            }
            continue;
        }
        let now = Utc::now();
        for (key, position) in deliver_tenants(ctx, table.as_ref(), keys, &known).await? {
            known.insert(
                key,
                Known {
                    position: Some(position),
                    delivered_at: Some(now),
                },
            );
        }
    }
}

/// A tenant's next page to write, read from the feed.
struct Page {
    key: Key,
    /// Delete the tenant's rows first.
    clear: bool,
    page: tenantsync_feed::Page,
}

/// Writes the next page of each of these tenants (for a reset, its whole new snapshot) in one
/// transaction; returns their new positions.
async fn deliver_tenants(
    ctx: &TargetContext,
    table: &dyn SinkTable,
    keys: Vec<Key>,
    known: &HashMap<Key, Known>,
) -> Result<Vec<(Key, FeedPosition)>, PushError> {
    let mut pages = Vec::with_capacity(keys.len());
    let mut moved = Vec::new();
    for key in keys {
        let position = known.get(&key).and_then(|k| k.position);
        let page = next_page(ctx, &key, position).await?;
        if page.page.records.is_empty() && !page.clear && Some(page.page.next) == position {
            moved.push((key, page.page.next));
        } else {
            pages.push(page);
        }
    }
    if pages.is_empty() {
        return Ok(moved);
    }
    let writes: Vec<TenantWrite<'_>> = pages
        .iter()
        .map(|p| TenantWrite {
            tenant: &p.key.1,
            reset: p.clear,
            records: &p.page.records,
            next: p.page.next,
        })
        .collect();
    let started = Instant::now();
    table.write_all(ctx.epoch, &writes).await?;
    ctx.figures.success(
        pages.iter().map(|p| p.page.records.len() as u64).sum(),
        LastAttempt {
            at: Some(Utc::now()),
            status: None,
            latency_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
            error: None,
        },
        false,
    );
    moved.extend(pages.into_iter().map(|p| (p.key, p.page.next)));
    Ok(moved)
}

/// The tenant's next page (for a reset, its whole new snapshot, written in one transaction).
async fn next_page(
    ctx: &TargetContext,
    key: &Key,
    position: Option<FeedPosition>,
) -> Result<Page, PushError> {
    let (dataset, tenant) = (&key.0, &key.1);
    let next = follow::next_page(
        ctx.store.as_ref(),
        &ctx.hub,
        (dataset, tenant),
        position,
        PAGE,
    )
    .await?;
    let page = if next.reset {
        // A reset replaces the tenant's rows in one transaction: the consumer never sees the
        // tenant half gone.
        follow::rest_of_snapshot(
            ctx.store.as_ref(),
            &ctx.hub,
            (dataset, tenant),
            next.page,
            PAGE,
        )
        .await?
    } else {
        next.page
    };
    // A first snapshot also clears the tenant's rows: the table then holds exactly what the
    // feed says, even if rows of the tenant were left there by an earlier definition. The rest
    // of the snapshot continues page by page, as a feed from nothing.
    Ok(Page {
        key: key.clone(),
        clear: next.reset || position.is_none(),
        page,
    })
}
