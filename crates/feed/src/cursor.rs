//! Cursors: where a reader of a feed is, as an opaque string the reader hands back.
//!
//! A cursor is the base64url (no padding) of a small JSON object with a format version, a dot,
//! and the base64url of a 128-bit HMAC-SHA256 tag of that JSON. It names what it was issued for
//! (the dataset and tenant, and for a subscription its name and creation time) and a
//! [`FeedPosition`] in that tenant's feed. Positions are seqs in the master store and the HMAC
//! key is kept in the store too ([`CursorKey`]), so a cursor survives restarts and works on
//! every instance sharing the store.
//!
//! The tag makes cursors tamper-evident: a client cannot forge one for another tenant or move
//! one's position, and an edited cursor is refused as malformed before its contents are looked
//! at. Whether a genuine cursor belongs to the request it came with is [`FeedCursor::check`]'s
//! and [`SubscriptionCursor::check`]'s business, so that the error can say which without
//! echoing what the cursor holds.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tenantsync_core::{DatasetName, SubscriptionName, TenantId};
use tenantsync_store::FeedPosition;

/// The format version written into every cursor.
const FORMAT: u8 = 1;
/// Longer strings are not cursors this server issued (one holds a few short ids and numbers).
const MAX_LEN: usize = 1024;
/// Bytes of the HMAC-SHA256 tag kept in a cursor.
const TAG_LEN: usize = 16;

/// The key that signs and checks cursors. Every instance sharing a store must use the same one:
/// the binary keeps it in the store (`AccessStore::secret`) under [`CursorKey::SECRET_NAME`].
#[derive(Clone)]
pub struct CursorKey(Hmac<Sha256>);

impl CursorKey {
    /// The name of the key in the store's secrets.
    pub const SECRET_NAME: &str = "cursor-hmac-sha256";
    /// The length of a freshly generated key.
    pub const LEN: usize = 32;

    pub fn new(key: &[u8]) -> Self {
        // HMAC takes keys of any length.
        Self(Hmac::new_from_slice(key).expect("HMAC accepts any key length"))
    }

    /// A random key, to offer the store when it holds none yet.
    pub fn generate() -> [u8; Self::LEN] {
        rand::random()
    }

    fn mac(&self, bytes: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(bytes);
        mac
    }
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

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

fn encode(wire: &Wire, key: &CursorKey) -> String {
    // A struct of strings and integers always serialises.
    let json = serde_json::to_vec(wire).expect("a cursor serialises");
    let tag = key.mac(&json).finalize().into_bytes();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&json),
        URL_SAFE_NO_PAD.encode(&tag[..TAG_LEN])
    )
}

fn decode(s: &str, key: &CursorKey) -> Result<Wire, CursorError> {
    if s.len() > MAX_LEN {
        return Err(CursorError::Malformed);
    }
    let (body, tag) = s.split_once('.').ok_or(CursorError::Malformed)?;
    let (Ok(bytes), Ok(tag)) = (URL_SAFE_NO_PAD.decode(body), URL_SAFE_NO_PAD.decode(tag)) else {
        return Err(CursorError::Malformed);
    };
    if tag.len() != TAG_LEN {
        return Err(CursorError::Malformed);
    }
    // Constant-time comparison of the tag, before anything in the body is trusted.
    key.mac(&bytes)
        .verify_truncated_left(&tag)
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
    pub fn encode(&self, key: &CursorKey) -> String {
        encode(&Wire::new(&self.dataset, &self.tenant, self.position), key)
    }

    pub fn decode(s: &str, key: &CursorKey) -> Result<Self, CursorError> {
        let wire = decode(s, key)?;
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
    pub fn encode(&self, key: &CursorKey) -> String {
        encode(
            &Wire {
                s: Some(self.subscription.clone()),
                c: Some(self.created_at.timestamp_micros()),
                ..Wire::new(&self.dataset, &self.tenant, self.position)
            },
            key,
        )
    }

    pub fn decode(s: &str, key: &CursorKey) -> Result<Self, CursorError> {
        let wire = decode(s, key)?;
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

    fn key() -> CursorKey {
        CursorKey::new(b"test key")
    }

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
        let s = feed().encode(&key());
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        );
        assert_eq!(FeedCursor::decode(&s, &key()).unwrap(), feed());
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
        let s = sub.encode(&key());
        assert_eq!(SubscriptionCursor::decode(&s, &key()).unwrap(), sub);
        assert!(matches!(
            FeedCursor::decode(&s, &key()),
            Err(CursorError::Foreign(_))
        ));
        assert!(matches!(
            SubscriptionCursor::decode(&c.encode(&key()), &key()),
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
            assert_eq!(
                FeedCursor::decode(s, &key()),
                Err(CursorError::Malformed),
                "{s}"
            );
            let signed = format!("{s}.{}", signed_tag(s.as_bytes()));
            assert_eq!(
                FeedCursor::decode(&signed, &key()),
                Err(CursorError::Malformed),
                "{signed}"
            );
        }
    }

    fn signed_tag(body_b64: &[u8]) -> String {
        let json = URL_SAFE_NO_PAD.decode(body_b64).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(&key().mac(&json).finalize().into_bytes()[..TAG_LEN])
    }

    /// Any edit of a cursor, or a cursor signed with another key, is refused: a client cannot
    /// forge a position or point a cursor at another tenant.
    #[test]
    fn cursors_are_tamper_evident() {
        let genuine = feed().encode(&key());
        let (body, tag) = genuine.split_once('.').unwrap();
        // Another tenant, same position, the genuine tag.
        let forged_body =
            URL_SAFE_NO_PAD.encode(br#"{"v":1,"d":"inventory","t":"acme2","n":42,"l":17}"#);
        for forged in [
            format!("{forged_body}.{tag}"),
            format!("{body}.{}", &tag[..tag.len() - 1]),
            format!("{body}.A{}", &tag[1..]),
            body.to_owned(),
            format!("{body}."),
        ] {
            assert_eq!(
                FeedCursor::decode(&forged, &key()),
                Err(CursorError::Malformed),
                "{forged}"
            );
        }
        assert_eq!(
            FeedCursor::decode(&genuine, &CursorKey::new(b"another key")),
            Err(CursorError::Malformed)
        );
        // Every single-character change of the genuine cursor is caught.
        for i in 0..genuine.len() {
            let mut bytes = genuine.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let edited = String::from_utf8(bytes).unwrap();
            assert!(FeedCursor::decode(&edited, &key()).is_err(), "{edited}");
        }
    }
}
