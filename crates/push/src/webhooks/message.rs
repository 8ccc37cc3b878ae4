//! A webhook message: one tenant's batch of one dataset, its body, its `webhook-id`, and the
//! state kept in the store while it is being retried ([`InFlight`]).
//!
//! A message is defined by where it starts in the tenant's feed (`from`, the stored position),
//! where it ends (`to_seq`) and whether it is a reset. Its records are read again from the store
//! for every attempt, and only those below `to_seq` are kept: a record written again since then
//! moved past `to_seq` and goes in the next message. So a retry never carries a record the first
//! attempt did not, and its id, made of the same parts, is the same whichever instance sends it.
//!
//! This module neither reads the store nor sends anything.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tenantsync_core::{DatasetName, TenantId};
use tenantsync_feed::{CursorKey, FeedCursor, change_json};
use tenantsync_store::{FeedPosition, FeedRecord, Offset};

use super::sign;

/// Records per message at most. A page is read from the store and held in memory for every
/// attempt, and a receiver must take the body within the timeout: 500 records of a few hundred
/// bytes are a body of some 100 KiB to a few MiB, which receivers accept, while at 10,000
/// records/s it is still only 20 messages (and 20 progress writes) per second.
pub const MAX_RECORDS: usize = 500;

/// The longest `Retry-After` honoured: a receiver cannot park an endpoint for longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The message a tenant has in flight (failed at least once), as kept in its progress entry's
/// `state` (JSON); the entry's position is where the message starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The message carries the records with seq below this; it is where the tenant's position
    /// goes once the message succeeded.
    pub to_seq: Offset,
    pub reset: bool,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
}

impl InFlight {
    /// Parses a stored state; `None` for none, or one this version does not understand (the
    /// message is then built afresh from the position, under a new id).
    pub fn parse(state: Option<&str>) -> Option<InFlight> {
        serde_json::from_str(state?).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a message state serializes")
    }
}

/// What makes a message, and its id: the endpoint (by name and creation time, so that an
/// endpoint created again under the same name sends other ids), the tenant, where the message
/// starts and ends, and whether it is a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from: FeedPosition,
    pub to_seq: Offset,
    pub reset: bool,
}

impl Span {
    /// Where the tenant's position goes when the message succeeded (the `cursor` it carries).
    pub fn to(&self) -> FeedPosition {
        FeedPosition {
            next_seq: self.to_seq,
            live_from: self.from.live_from,
        }
    }
}

/// The message's `webhook-id`.
pub fn message_id(
    endpoint: &str,
    created_at: DateTime<Utc>,
    dataset: &DatasetName,
    tenant: &TenantId,
    span: Span,
) -> String {
    sign::message_id(&[
        endpoint.as_bytes(),
        &created_at.timestamp_micros().to_be_bytes(),
        dataset.as_str().as_bytes(),
        tenant.as_str().as_bytes(),
        &span.from.next_seq.to_be_bytes(),
        &span.from.live_from.to_be_bytes(),
        &span.to_seq.to_be_bytes(),
        &[u8::from(span.reset)],
    ])
}

/// The message's body: `{"type": "changes", "dataset", "tenant", "reset" (only when true),
/// "changes": [...], "cursor"}`, the cursor being a tenant feed cursor at the message's end
/// (usable with the feed API and with a replay).
pub fn body(
    key: &CursorKey,
    dataset: &DatasetName,
    tenant: &TenantId,
    span: Span,
    records: &[FeedRecord],
) -> Vec<u8> {
    let cursor = FeedCursor {
        dataset: dataset.clone(),
        tenant: tenant.clone(),
        position: span.to(),
    }
    .encode(key);
    let mut body = json!({
        "type": "changes",
        "dataset": dataset,
        "tenant": tenant,
        "changes": records.iter().map(change_json).collect::<Vec<Value>>(),
        "cursor": cursor,
    });
    if span.reset {
        body["reset"] = Value::Bool(true);
    }
    serde_json::to_vec(&body).expect("a message serializes")
}

/// When the next attempt of a message that failed `attempts` times is due: the schedule's
/// delay for that retry (the last one repeats) with ±20% jitter, so that endpoints failing
/// together do not retry together, and never before the answer's `Retry-After` (at most
/// [`MAX_RETRY_AFTER`]).
pub fn next_attempt_at(
    now: DateTime<Utc>,
    schedule: &[Duration],
    attempts: u32,
    retry_after: Option<Duration>,
) -> DateTime<Utc> {
    let index = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    // Never retry in a tight loop, whatever the configuration says.
    let delay = schedule
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(1));
    let jittered = delay.mul_f64(rand::rng().random_range(0.8..=1.2));
    let delay = jittered.max(retry_after.map_or(Duration::ZERO, |r| r.min(MAX_RETRY_AFTER)));
    now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn names() -> (DatasetName, TenantId) {
        (DatasetName::new("d").unwrap(), TenantId::new("t").unwrap())
    }

    pub(super) fn span(next_seq: Offset, live_from: Offset, to_seq: Offset) -> Span {
        Span {
            from: FeedPosition {
                next_seq,
                live_from,
            },
            to_seq,
            reset: false,
        }
    }

    #[test]
    fn retries_follow_the_schedule_with_jitter_and_repeat_the_last_delay() {
        let now = Utc::now();
        let schedule = [secs(5), secs(300), secs(1800)];
        for (attempts, delay) in [(1, 5.0), (2, 300.0), (3, 1800.0), (4, 1800.0), (9, 1800.0)] {
            for _ in 0..50 {
                let wait = (next_attempt_at(now, &schedule, attempts, None) - now)
                    .num_milliseconds() as f64
                    / 1000.0;
                assert!(
                    (delay * 0.8 - 0.001..=delay * 1.2 + 0.001).contains(&wait),
                    "attempt {attempts}: {wait}"
                );
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_a_day() {
        let now = Utc::now();
        let schedule = [secs(5)];
        let at = next_attempt_at(now, &schedule, 1, Some(secs(120)));
        assert_eq!((at - now).num_seconds(), 120);
        let at = next_attempt_at(now, &schedule, 1, Some(secs(10 * 24 * 3600)));
        assert_eq!((at - now).num_seconds(), 24 * 3600);
        // A Retry-After shorter than the schedule does not hurry the retry.
        let at = next_attempt_at(now, &[secs(600)], 1, Some(secs(1)));
        assert!((at - now).num_seconds() >= 480);
    }

    #[test]
    fn the_id_depends_on_every_part() {
        let created = Utc::now();
        let (d, t) = names();
        let span = span(3, 7, 9);
        let id = message_id("e", created, &d, &t, span);
        assert!(id.starts_with("msg_"));
        assert_eq!(id, message_id("e", created, &d, &t, span));
        let others = [
            message_id("f", created, &d, &t, span),
            message_id(
                "e",
                created + chrono::Duration::microseconds(1),
                &d,
                &t,
                span,
            ),
            message_id("e", created, &DatasetName::new("e").unwrap(), &t, span),
            message_id("e", created, &d, &TenantId::new("u").unwrap(), span),
            message_id("e", created, &d, &t, Span { to_seq: 10, ..span }),
            message_id(
                "e",
                created,
                &d,
                &t,
                Span {
                    reset: true,
                    ..span
                },
            ),
            message_id("e", created, &d, &t, super::tests::span(3, 8, 9)),
        ];
        for other in others {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn the_body_says_reset_only_when_it_is_one_and_carries_a_feed_cursor() {
        let key = CursorKey::new(b"k");
        let (d, t) = names();
        let span = span(0, 4, 4);
        let plain: Value = serde_json::from_slice(&body(&key, &d, &t, span, &[])).unwrap();
        assert_eq!(plain["type"], "changes");
        assert_eq!(plain["dataset"], "d");
        assert_eq!(plain["tenant"], "t");
        assert!(plain.get("reset").is_none());
        let cursor = FeedCursor::decode(plain["cursor"].as_str().unwrap(), &key).unwrap();
        assert_eq!(cursor.position, span.to());
        let reset: Value = serde_json::from_slice(&body(
            &key,
            &d,
            &t,
            Span {
                reset: true,
                ..span
            },
            &[],
        ))
        .unwrap();
        assert_eq!(reset["reset"], true);
    }
}
