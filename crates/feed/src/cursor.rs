//! Cursors: where a reader of a feed is, as an opaque string the reader hands back.
//!
//! A cursor is the base64url (no padding) of a small JSON object with a format version. It
//! names what it was issued for (the dataset and tenant, and for a subscription its name and
//! creation time) and a [`FeedPosition`] in that tenant's feed. Positions are seqs in the master
//! store, so a cursor survives restarts and works on every instance sharing the store.
//!
//! Decoding checks the shape only; whether a cursor belongs to the request it came with is
//! [`FeedCursor::check`]'s and [`SubscriptionCursor::check`]'s business, so that the error can
//! say which without echoing what the cursor holds.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tenantsync_core::{DatasetName, SubscriptionName, TenantId};
use tenantsync_store::FeedPosition;

/// The format version written into every cursor.
const FORMAT: u8 = 1;
/// Longer strings are not cursors this server issued (one holds a few short ids and numbers).
const MAX_LEN: usize = 1024;

/// Why a cursor was refused. Both are the client's fault (400); neither repeats the cursor's
/// contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("the cursor is malformed: pass back a cursor exactly as the server returned it")]
    Malformed,
    #[error("the cursor was issued for another {0}")]
    Foreign(&'static str),
}

/// A position in one tenant's change feed of one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedCursor {
    pub dataset: DatasetName,
    pub tenant: TenantId,
    pub position: FeedPosition,
}

/// A position of a subscription in one tenant's feed: what acknowledging it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionCursor {
    pub subscription: SubscriptionName,
    /// The subscription's creation time: a cursor of a deleted subscription is refused by a
    /// new one of the same name.
    pub created_at: DateTime<Utc>,
    pub dataset: DatasetName,
    pub tenant: TenantId,
    pub position: FeedPosition,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<SubscriptionName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<i64>,
    d: DatasetName,
    t: TenantId,
    n: u64,
    l: u64,
}

fn encode(wire: &Wire) -> String {
    // A struct of strings and integers always serialises.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(wire).expect("a cursor serialises"))
}

fn decode(s: &str) -> Result<Wire, CursorError> {
    if s.len() > MAX_LEN {
        return Err(CursorError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| CursorError::Malformed)?;
    let wire: Wire = serde_json::from_slice(&bytes).map_err(|_| CursorError::Malformed)?;
    if wire.v != FORMAT {
        return Err(CursorError::Malformed);
    }
    Ok(wire)
}

impl Wire {
    fn new(dataset: &DatasetName, tenant: &TenantId, position: FeedPosition) -> Self {
        Wire {
            v: FORMAT,
            s: None,
            c: None,
            d: dataset.clone(),
            t: tenant.clone(),
            n: position.next_seq,
            l: position.live_from,
        }
    }
}

fn position(wire: &Wire) -> FeedPosition {
    FeedPosition {
        next_seq: wire.n,
        live_from: wire.l,
    }
}

impl FeedCursor {
    pub fn encode(&self) -> String {
        encode(&Wire::new(&self.dataset, &self.tenant, self.position))
    }

    pub fn decode(s: &str) -> Result<Self, CursorError> {
        let wire = decode(s)?;
        if wire.s.is_some() {
            return Err(CursorError::Foreign("kind of feed (a subscription's)"));
        }
        Ok(Self {
            position: position(&wire),
            dataset: wire.d,
            tenant: wire.t,
        })
    }

    /// Refuses a cursor issued for another dataset or tenant than the request's.
    pub fn check(&self, dataset: &DatasetName, tenant: &TenantId) -> Result<(), CursorError> {
        if &self.dataset != dataset {
            return Err(CursorError::Foreign("dataset"));
        }
        if &self.tenant != tenant {
            return Err(CursorError::Foreign("tenant"));
        }
        Ok(())
    }
}

impl SubscriptionCursor {
    pub fn encode(&self) -> String {
        encode(&Wire {
            s: Some(self.subscription.clone()),
            c: Some(self.created_at.timestamp_micros()),
            ..Wire::new(&self.dataset, &self.tenant, self.position)
        })
    }

    pub fn decode(s: &str) -> Result<Self, CursorError> {
        let wire = decode(s)?;
        let (Some(subscription), Some(created_at)) = (wire.s.clone(), wire.c) else {
            return Err(CursorError::Foreign("kind of feed (a tenant feed's)"));
        };
        Ok(Self {
            subscription,
            created_at: DateTime::from_timestamp_micros(created_at)
                .ok_or(CursorError::Malformed)?,
            position: position(&wire),
            dataset: wire.d,
            tenant: wire.t,
        })
    }

    /// Refuses a cursor of another subscription, or of an earlier one of the same name.
    pub fn check(
        &self,
        subscription: &SubscriptionName,
        created_at: DateTime<Utc>,
    ) -> Result<(), CursorError> {
        if &self.subscription != subscription || self.created_at != created_at {
            return Err(CursorError::Foreign("subscription"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed() -> FeedCursor {
        FeedCursor {
            dataset: DatasetName::new("inventory").unwrap(),
            tenant: TenantId::new("acme").unwrap(),
            position: FeedPosition {
                next_seq: 42,
                live_from: 17,
            },
        }
    }

    #[test]
    fn feed_cursors_round_trip_and_are_url_safe() {
        let s = feed().encode();
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(FeedCursor::decode(&s).unwrap(), feed());
    }

    #[test]
    fn cursors_are_bound_to_what_they_were_issued_for() {
        let c = feed();
        assert_eq!(c.check(&c.dataset, &c.tenant), Ok(()));
        let other = TenantId::new("acme2").unwrap();
        assert_eq!(
            c.check(&c.dataset, &other),
            Err(CursorError::Foreign("tenant"))
        );
        let ds = DatasetName::new("users").unwrap();
        assert_eq!(
            c.check(&ds, &c.tenant),
            Err(CursorError::Foreign("dataset"))
        );

        let sub = SubscriptionCursor {
            subscription: SubscriptionName::new("billing").unwrap(),
            created_at: DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap(),
            dataset: c.dataset.clone(),
            tenant: c.tenant.clone(),
            position: c.position,
        };
        let s = sub.encode();
        assert_eq!(SubscriptionCursor::decode(&s).unwrap(), sub);
        assert!(matches!(
            FeedCursor::decode(&s),
            Err(CursorError::Foreign(_))
        ));
        assert!(matches!(
            SubscriptionCursor::decode(&c.encode()),
            Err(CursorError::Foreign(_))
        ));
        assert_eq!(sub.check(&sub.subscription, sub.created_at), Ok(()));
        assert!(
            sub.check(
                &sub.subscription,
                sub.created_at + chrono::Duration::microseconds(1)
            )
            .is_err()
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for s in [
            "",
            "!!!",
            "e30",
            &"A".repeat(5000),
            &URL_SAFE_NO_PAD.encode(br#"{"v":2,"d":"a","t":"b","n":1,"l":0}"#),
            &URL_SAFE_NO_PAD.encode(br#"{"v":1,"d":"A","t":"b","n":1,"l":0}"#),
            &URL_SAFE_NO_PAD.encode(br#"{"v":1,"d":"a","t":"b","n":-1,"l":0}"#),
            &URL_SAFE_NO_PAD.encode(br#"{"v":1,"d":"a","t":"b","n":1,"l":0,"x":1}"#),
        ] {
            assert_eq!(FeedCursor::decode(s), Err(CursorError::Malformed), "{s}");
        }
    }
}
