//! A webhook endpoint's delivery loop: one tenant's message at a time, retried on a schedule,
//! its progress written to the master store after every attempt.
//!
//! The endpoint's progress is a position per (dataset, tenant), and for a tenant whose message
//! failed, that message's [`InFlight`] state: where it ends, its attempts, when to try next.
//! Per tenant, messages go out in order, and a message is not sent before the one before it
//! succeeded: a tenant with a message in flight gets only that message again, and waits for its
//! retry without holding up the endpoint's other tenants. Messages are rebuilt from the store
//! for every attempt (see [`message`]), so an instance that takes the endpoint over sends the
//! same message with the same id.
//!
//! The loop only reads the feed and writes its own progress under the claim's epoch
//! ([`TargetContext::set_progress`]); it never clears a position, so a disabled endpoint resumes
//! where it stopped when enabled again. How an attempt reaches the endpoint is the
//! [`Transport`]'s business: [`Http`] signs and sends it.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tenantsync_core::{DatasetName, TenantId};
use tenantsync_store::{FeedPosition, PushAttempt, PushKind, PushProgress, PushPut, StoredPush};
use tokio::time::Instant;
use tracing::warn;

use super::definition::{Definition, Disabled};
use super::message::{self, InFlight, MAX_RECORDS, Span};
use super::send::{Attempt, Sender};
use super::sign::{self, Secret};
use crate::PushError;
use crate::figures::LastAttempt;
use crate::follow::{self, Changes, Key, Known, Scope};
use crate::runner::TargetContext;

/// Attempts kept per endpoint for `GET /v1/webhooks/{name}/attempts`.
pub const KEEP_ATTEMPTS: usize = 1_000;
/// How often buffered attempts are written at most: one store write per second, whatever the
/// number of messages.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the lag is measured at most (it reads every pending tenant's next page).
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Records counted per tenant for the lag.
const LAG_COUNT_LIMIT: usize = 1_000;
/// Tenants whose messages are sent at the same time, at most: one message per tenant, so each
/// tenant's messages still go out in order. Their progress is written in one store write.
const PARALLEL: usize = 16;

/// One attempt of a message, ready to sign and send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The `webhook-id`: the same on every attempt of the message.
    pub id: String,
    pub dataset: DatasetName,
    pub tenant: TenantId,
    /// The `webhook-timestamp` (Unix seconds): the attempt's own.
    pub timestamp: i64,
    pub body: Bytes,
    pub records: usize,
}

/// Sends one attempt of a message to the endpoint.
///
/// # Contract
///
/// One attempt, never retried here (the loop retries, on its schedule), taking no longer than
/// the instance's webhook timeout. The [`Attempt`]'s `error` is `None` only for a 2xx answer and
/// `gone` is true only for a 410; neither its error nor anything logged carries a secret.
#[async_trait]
pub trait Transport: Send + Sync {
    async fn send(&self, message: &Outgoing) -> Attempt;
}

/// The endpoint over HTTP: signed with every secret live at the attempt's timestamp, with the
/// definition's headers.
pub struct Http {
    sender: Sender,
    url: reqwest::Url,
    headers: Vec<(String, String)>,
    definition: Definition,
}

impl Http {
    pub fn new(sender: Sender, definition: &Definition) -> Result<Http, PushError> {
        // Neither error repeats what it parsed: the URL may hold a token, the secret is one.
        let url = reqwest::Url::parse(&definition.url).map_err(|e| {
            PushError::Definition(format!("the endpoint's stored URL does not parse: {e}"))
        })?;
        for s in &definition.secrets {
            Secret::parse(&s.secret).map_err(|e| {
                PushError::Definition(format!("a stored signing secret does not parse: {e}"))
            })?;
        }
        Ok(Http {
            sender,
            url,
            headers: definition
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            definition: definition.clone(),
        })
    }
}

#[async_trait]
impl Transport for Http {
    async fn send(&self, message: &Outgoing) -> Attempt {
        let at = DateTime::from_timestamp(message.timestamp, 0).unwrap_or_else(Utc::now);
        // Checked when built: every stored secret parses.
        let secrets: Vec<Secret> = self
            .definition
            .live_secrets(at)
            .into_iter()
            .filter_map(|s| Secret::parse(s).ok())
            .collect();
        let secrets: Vec<&Secret> = secrets.iter().collect();
        let signature =
            sign::signature_header(&secrets, &message.id, message.timestamp, &message.body);
        self.sender
            .send(
                &self.url,
                &self.headers,
                &message.id,
                message.timestamp,
                &signature,
                message.body.clone(),
            )
            .await
    }
}

/// Delivers the endpoint `stored` (whose definition is `definition`) through `transport` until
/// `ctx.stop`, or until it disabled the endpoint (410 Gone, failing too long). Buffered attempts
/// are written however it ends.
pub async fn deliver<T: Transport>(
    ctx: &TargetContext,
    stored: &StoredPush,
    definition: &Definition,
    transport: T,
) -> Result<(), PushError> {
    let mut delivery = Delivery::load(ctx, stored, definition, transport).await?;
    let result = delivery.run().await;
    let flushed = delivery.flush().await;
    result.and(flushed)
}

/// What one round of the loop did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Done,
    /// The endpoint disabled itself: the run ends.
    Disabled,
}

/// A tenant's turn, read from the store: its next message (or its message in flight again), or
/// a move of its position past what needs no message.
enum Turn {
    Move {
        key: Key,
        to: FeedPosition,
        write: bool,
    },
    Send(Message),
}

/// A message ready to send.
struct Message {
    key: Key,
    span: Span,
    /// Failed attempts before this one.
    attempts: u32,
    outgoing: Outgoing,
}

struct Delivery<'a, T> {
    ctx: &'a TargetContext,
    transport: T,
    scope: Scope,
    max_rate: Option<u32>,
    /// When the definition last changed: a failing streak counts from then at the earliest.
    updated_at: DateTime<Utc>,
    /// Per tenant: its position (a message in flight starts there) and when it last moved or
    /// was attempted.
    known: HashMap<Key, Known>,
    flights: HashMap<Key, InFlight>,
    /// Attempts not yet written, oldest first.
    attempts: Vec<PushAttempt>,
    flushed_at: Instant,
    lag_at: Option<Instant>,
    next_send: Instant,
}

impl<'a, T: Transport> Delivery<'a, T> {
    async fn load(
        ctx: &'a TargetContext,
        stored: &StoredPush,
        definition: &Definition,
        transport: T,
    ) -> Result<Self, PushError> {
        let now = Utc::now();
        let (mut known, mut flights) = (HashMap::new(), HashMap::new());
        for entry in ctx
            .store
            .push_progress(PushKind::Webhook, &ctx.name)
            .await?
        {
            let key = (entry.dataset, entry.tenant);
            if let Some(mut flight) = InFlight::parse(entry.state.as_deref()) {
                // The definition changed since the last attempt (enabled again, its URL fixed):
                // try again now rather than at the end of a backoff meant for the old one.
                if stored.updated_at > entry.updated_at {
                    flight.next_attempt_at = flight.next_attempt_at.min(now);
                }
                flights.insert(key.clone(), flight);
            }
            known.insert(
                key,
                Known {
                    position: Some(entry.position),
                    delivered_at: Some(entry.updated_at),
                },
            );
        }
        Ok(Delivery {
            ctx,
            transport,
            scope: definition.scope(),
            max_rate: definition.max_rate,
            updated_at: stored.updated_at,
            known,
            flights,
            attempts: Vec::new(),
            flushed_at: Instant::now(),
            lag_at: None,
            next_send: Instant::now(),
        })
    }

    async fn run(&mut self) -> Result<(), PushError> {
        let mut changes = Changes::new(&self.ctx.hub, &self.scope);
        // With a rate limit, one message at a time is simplest to pace.
        let parallel = if self.max_rate.is_some() { 1 } else { PARALLEL };
        while !self.ctx.stop.is_cancelled() {
            if let Some(reason) = self.failing_too_long() {
                return self.disable(reason).await;
            }
            self.housekeeping().await?;
            // Before looking: a change published from now on wakes the wait below.
            changes.seen();
            let now = Utc::now();
            let pending = follow::pending(&self.ctx.hub, &self.scope, &self.known);
            let due: Vec<Key> = pending
                .iter()
                .filter(|key| {
                    self.flights
                        .get(*key)
                        .is_none_or(|f| f.next_attempt_at <= now)
                })
                .take(parallel)
                .cloned()
                .collect();
            if !due.is_empty() {
                if self.round(due).await? == Step::Disabled {
                    return Ok(());
                }
                self.show_state();
                continue;
            }
            self.show_state();
            let mut wait = LAG_EVERY;
            if !self.attempts.is_empty() {
                wait = wait.min(FLUSH_EVERY);
            }
            if let Some(retry) = pending
                .iter()
                .filter_map(|key| self.flights.get(key))
                .map(|f| f.next_attempt_at)
                .min()
            {
                wait = wait.min((retry - now).to_std().unwrap_or(Duration::ZERO));
            }
            tokio::select! {
                _ = self.ctx.stop.cancelled() => {}
                _ = changes.wait(wait) => {}
            }
        }
        Ok(())
    }

    /// One turn of each of these tenants (distinct): their messages are sent at the same time,
    /// and what came of them is written in one progress write.
    async fn round(&mut self, keys: Vec<Key>) -> Result<Step, PushError> {
        let now = Utc::now();
        let (mut entries, mut messages) = (Vec::new(), Vec::new());
        for key in keys {
            match self.turn(key).await? {
                Turn::Move { key, to, write } => {
                    if write {
                        entries.push(progress(&key, to, None, now));
                    }
                    self.flights.remove(&key);
                    self.known.insert(
                        key,
                        Known {
                            position: Some(to),
                            delivered_at: Some(now),
                        },
                    );
                }
                Turn::Send(message) => messages.push(message),
            }
        }
        if !messages.is_empty() {
            self.pace().await;
            if self.ctx.stop.is_cancelled() {
                return Ok(Step::Done);
            }
        }
        let started = Utc::now();
        let answers =
            futures::future::join_all(messages.iter().map(|m| self.transport.send(&m.outgoing)))
                .await;
        let mut gone = false;
        for (message, attempt) in messages.into_iter().zip(answers) {
            gone |= attempt.gone;
            entries.push(self.answered(message, attempt, started));
        }
        if !entries.is_empty() {
            self.ctx.set_progress(&entries).await?;
        }
        if gone {
            self.disable("the endpoint answered 410 Gone".into())
                .await?;
            return Ok(Step::Disabled);
        }
        Ok(Step::Done)
    }

    /// The tenant's turn: its next message (or its message in flight again), or a move of its
    /// position past what needs no message.
    async fn turn(&self, key: Key) -> Result<Turn, PushError> {
        let known = self.known.get(&key).copied().unwrap_or_default();
        let flight = self.flights.get(&key).copied();
        let next = follow::next_page(
            self.ctx.store.as_ref(),
            &self.ctx.hub,
            (&key.0, &key.1),
            known.position,
            MAX_RECORDS,
        )
        .await?;
        let (span, records, attempts) = match flight {
            // The same message again, less the records written again since (they are in the
            // next one). It started at the position read from, so its id is unchanged.
            Some(f) if !next.reset => {
                let mut records = next.page.records;
                records.retain(|r| r.seq < f.to_seq);
                let span = Span {
                    from: next.from,
                    to_seq: f.to_seq,
                    reset: f.reset,
                };
                (span, records, f.attempts)
            }
            // A new message; or tombstones were purged from under the one in flight, and a
            // new snapshot replaces it, keeping its backoff.
            _ => {
                let span = Span {
                    from: next.from,
                    to_seq: next.page.next.next_seq,
                    reset: next.reset,
                };
                (span, next.page.records, flight.map_or(0, |f| f.attempts))
            }
        };
        // A reset is sent even when empty: the receiver must drop what it holds of the tenant.
        if records.is_empty() && !span.reset {
            let to = span.to();
            let write = known.position != Some(to) || flight.is_some();
            return Ok(Turn::Move { key, to, write });
        }
        let (dataset, tenant) = &key;
        let outgoing = Outgoing {
            id: message::message_id(&self.ctx.name, self.ctx.created_at, dataset, tenant, span),
            dataset: dataset.clone(),
            tenant: tenant.clone(),
            timestamp: Utc::now().timestamp(),
            body: Bytes::from(message::body(
                &self.ctx.cursor_key,
                dataset,
                tenant,
                span,
                &records,
            )),
            records: records.len(),
        };
        Ok(Turn::Send(Message {
            key,
            span,
            attempts,
            outgoing,
        }))
    }

    /// Takes in what came of a message's attempt; returns the tenant's progress entry to write.
    fn answered(
        &mut self,
        message: Message,
        attempt: Attempt,
        started: DateTime<Utc>,
    ) -> PushProgress {
        let Message {
            key,
            span,
            attempts,
            outgoing,
        } = message;
        self.record(&outgoing, &attempt, started);
        let shown = LastAttempt {
            at: Some(started),
            status: attempt.status,
            latency_ms: millis(attempt.latency),
            error: attempt.error.clone(),
        };
        let (retry, done) = (attempts > 0, Utc::now());
        if attempt.error.is_none() {
            self.ctx
                .figures
                .success(outgoing.records as u64, shown, retry);
            self.flights.remove(&key);
            self.known.insert(
                key.clone(),
                Known {
                    position: Some(span.to()),
                    delivered_at: Some(done),
                },
            );
            return progress(&key, span.to(), None, done);
        }
        self.ctx.figures.failure(shown, retry);
        let attempts = attempts + 1;
        let flight = InFlight {
            to_seq: span.to_seq,
            reset: span.reset,
            attempts,
            // A gone endpoint is disabled; enabled again, it tries the message at once.
            next_attempt_at: if attempt.gone {
                done
            } else {
                message::next_attempt_at(
                    done,
                    &self.ctx.settings.webhooks.retry_schedule,
                    attempts,
                    attempt.retry_after,
                )
            },
        };
        self.flights.insert(key.clone(), flight);
        // Tried now: the other tenants take their turns before it comes up again.
        self.known.insert(
            key.clone(),
            Known {
                position: Some(span.from),
                delivered_at: Some(done),
            },
        );
        progress(&key, span.from, Some(flight.to_json()), done)
    }

    /// Waits for the endpoint's `max_rate` to allow another message (or for stop).
    async fn pace(&mut self) {
        let Some(rate) = self.max_rate.filter(|r| *r > 0) else {
            return;
        };
        tokio::select! {
            _ = self.ctx.stop.cancelled() => return,
            _ = tokio::time::sleep_until(self.next_send) => {}
        }
        self.next_send = Instant::now() + Duration::from_secs(1) / rate;
    }

    fn record(&mut self, outgoing: &Outgoing, attempt: &Attempt, at: DateTime<Utc>) {
        self.attempts.push(PushAttempt {
            at,
            message: outgoing.id.clone(),
            dataset: outgoing.dataset.clone(),
            tenant: outgoing.tenant.clone(),
            records: u32::try_from(outgoing.records).unwrap_or(u32::MAX),
            status: attempt.status,
            latency_ms: millis(attempt.latency),
            error: attempt.error.clone(),
        });
        if self.attempts.len() > KEEP_ATTEMPTS {
            let excess = self.attempts.len() - KEEP_ATTEMPTS;
            self.attempts.drain(..excess);
        }
    }

    /// Writes the buffered attempts.
    async fn flush(&mut self) -> Result<(), PushError> {
        if !self.attempts.is_empty() {
            self.ctx
                .store
                .record_push_attempts(
                    PushKind::Webhook,
                    &self.ctx.name,
                    &self.attempts,
                    KEEP_ATTEMPTS,
                )
                .await?;
            self.attempts.clear();
        }
        self.flushed_at = Instant::now();
        Ok(())
    }

    /// Writes the attempts and measures the lag when their time has come.
    async fn housekeeping(&mut self) -> Result<(), PushError> {
        if self.flushed_at.elapsed() >= FLUSH_EVERY {
            self.flush().await?;
        }
        if self.lag_at.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
            let (changes, seconds) = follow::lag(
                self.ctx.store.as_ref(),
                &self.ctx.hub,
                &self.scope,
                &self.known,
                LAG_COUNT_LIMIT,
            )
            .await?;
            self.ctx.figures.set_lag(changes, seconds);
            self.lag_at = Some(Instant::now());
        }
        Ok(())
    }

    fn show_state(&self) {
        let state = if self.ctx.figures.snapshot().failure_streak > 0 {
            "failing"
        } else if !self.flights.is_empty() {
            "retrying"
        } else {
            "running"
        };
        self.ctx.figures.set_state(state);
    }

    /// Why the endpoint is to be disabled for failing too long, if it is: no success for
    /// `disable_after`, counted from the start of the failing streak, or from the definition's
    /// last change if later (enabling the endpoint again starts a new count).
    fn failing_too_long(&self) -> Option<String> {
        let since = self.ctx.figures.snapshot().failing_since?;
        let limit = chrono::Duration::from_std(self.ctx.settings.webhooks.disable_after).ok()?;
        (Utc::now() - since.max(self.updated_at) >= limit).then(|| {
            format!(
                "no delivery succeeded since {} (an endpoint failing for {} s is disabled)",
                since.to_rfc3339(),
                limit.num_seconds()
            )
        })
    }

    /// Marks the stored definition disabled (keeping every position), unless it changed hands
    /// or is disabled already. The runner sees the new revision and ends the run.
    async fn disable(&mut self, reason: String) -> Result<(), PushError> {
        let (store, name) = (&self.ctx.store, self.ctx.name.as_str());
        loop {
            let Some(stored) = store.push(PushKind::Webhook, name).await? else {
                return Ok(());
            };
            if stored.created_at != self.ctx.created_at {
                return Ok(());
            }
            let mut definition =
                Definition::parse(&stored.definition).map_err(PushError::Definition)?;
            if !definition.runs() {
                break;
            }
            let now = Utc::now();
            definition.disabled = Some(Disabled {
                reason: reason.clone(),
                at: now,
            });
            let (put, _) = store
                .put_push(
                    PushKind::Webhook,
                    name,
                    &definition.to_json(),
                    Some(stored.revision),
                    now,
                )
                .await?;
            if put != PushPut::Conflict {
                break;
            }
        }
        warn!(name, %reason, "webhook endpoint disabled");
        self.ctx.figures.set_state("disabled");
        Ok(())
    }
}

fn progress(
    (dataset, tenant): &Key,
    position: FeedPosition,
    state: Option<String>,
    now: DateTime<Utc>,
) -> PushProgress {
    PushProgress {
        dataset: dataset.clone(),
        tenant: tenant.clone(),
        position,
        state,
        updated_at: now,
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
