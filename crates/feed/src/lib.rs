//! Delivery to subscribers: each tenant's change feed (snapshot, then live), opaque cursors,
//! subscriptions with single-tenant batches, and live wake-ups shared by all readers of an
//! instance.
//!
//! Everything a reader is shown comes from the master store, ordered by seq; the state log is
//! read only to learn, once per instance, which tenants changed ([`Hub`]). A reader's progress
//! is its cursor (or, for a subscription, what it acknowledged), so readers are independent of
//! each other and of the instance that serves them.

pub mod cursor;
mod hub;
pub mod pending;
pub mod subscriptions;
mod tenant_feed;

pub use cursor::{CursorError, CursorKey, FeedCursor, SubscriptionCursor};
pub use hub::{Hub, HubStats, HubTails};
pub use pending::pending;
pub use tenant_feed::{FeedError, Page, change_json, read_or_wait, read_page};
