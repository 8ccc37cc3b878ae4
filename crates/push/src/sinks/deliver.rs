//! A sink's run: follows the tenants of its dataset and writes each one's next page to the
//! table, one transaction per page, with the tenant's new position in the same transaction.
//!
//! The position lives in the sink's database only; this run reads it once, at its start, and
//! then keeps it in memory as it writes. Whatever stops the run (a crash, a lost claim, a
//! failing database), the next run starts from what the table says it holds. This module never
//! writes the master store, and never writes the table but through [`SinkTable::write`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use tenantsync_store::StoredPush;

use super::definition::Definition;
use super::table::{self, SinkTable};
use crate::PushError;
use crate::figures::LastAttempt;
use crate::follow::{self, Changes, Key, Known};
use crate::runner::TargetContext;

/// Records read from the feed per page (and per transaction, but for a reset).
pub const PAGE: usize = 1_000;
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
        let Some(key) = follow::pending(&ctx.hub, &scope, &known).into_iter().next() else {
            tokio::select! {
                _ = ctx.stop.cancelled() => return Ok(()),
                _ = changes.wait(IDLE_WAIT) => {}
            }
            continue;
        };
        let position = deliver_tenant(ctx, table.as_ref(), &key, &known).await?;
        known.insert(
            key,
            Known {
                position: Some(position),
                delivered_at: Some(Utc::now()),
            },
        );
    }
}

/// Writes the tenant's next page (for a reset, its whole new snapshot, in one transaction);
/// returns the tenant's new position.
async fn deliver_tenant(
    ctx: &TargetContext,
    table: &dyn SinkTable,
    key: &Key,
    known: &HashMap<Key, Known>,
) -> Result<tenantsync_store::FeedPosition, PushError> {
    let (dataset, tenant) = (&key.0, &key.1);
    let position = known.get(key).and_then(|k| k.position);
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
    let clear = next.reset || position.is_none();
    if page.records.is_empty() && !clear && Some(page.next) == position {
        return Ok(page.next);
    }
    let started = Instant::now();
    table
        .write(ctx.epoch, tenant, clear, &page.records, page.next)
        .await?;
    ctx.figures.success(
        page.records.len() as u64,
        LastAttempt {
            at: Some(Utc::now()),
            status: None,
            latency_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
            error: None,
        },
        false,
    );
    Ok(page.next)
}
