//! Revocation reaches requests already running: an SSE stream or a waiting long-poll whose API
//! token is revoked, through any instance or the CLI, ends within about
//! [`REVOCATION_CHECK`] (an SSE stream with a final `revoked` event, a long-poll with 401).
//!
//! Authentication checks a token when a request starts; a stream or long-poll lives on. So
//! each waiting or streaming handler takes a [`TokenWatch`] (an extractor), which registers the
//! caller's token hash with this instance's [`Revocations`], and runs its wait through
//! [`TokenWatch::guard`] or its event stream through [`TokenWatch::stream`]. The `revocations`
//! service ([`RevocationWatcher`]) asks the master store every [`REVOCATION_CHECK`] which of
//! the hashes watched or cached here no longer exist (`AccessStore::missing_tokens`: a
//! revocation deletes the token's row, whoever did it), evicts those from the token cache and
//! ends their requests. Asking about existence rather than reading a change list means no
//! revocation is missed across restarts, and no clock or extra table is involved.
//!
//! JWTs are verified, not stored, so they cannot be revoked: their requests are never watched.
//! Nothing here ever logs or answers with a token or its hash.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::sse::Event;
use tenantsync_store::{AccessStore, StoreError};
use tenantsync_supervisor::ServiceError;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::auth::{Caller, TokenCache};
use crate::{ApiError, AppState};

/// How often the store is asked which watched tokens were revoked.
pub const REVOCATION_CHECK: Duration = Duration::from_secs(1);

/// The tokens of this instance's running streams and long-polls, by hash, each with the signal
/// that ends them. An entry lives while a request holds it (the map keeps a weak reference).
#[derive(Clone, Default)]
pub struct Revocations(Arc<Mutex<HashMap<Arc<str>, Weak<CancellationToken>>>>);

impl Revocations {
    /// The signal of `hash`'s revocation, shared by every request holding that token.
    pub(crate) fn watch(&self, hash: &Arc<str>) -> Arc<CancellationToken> {
        let mut watched = self.0.lock().expect("revocations lock");
        if let Some(signal) = watched.get(hash).and_then(Weak::upgrade) {
            return signal;
        }
        let signal = Arc::new(CancellationToken::new());
        watched.insert(hash.clone(), Arc::downgrade(&signal));
        signal
    }

    /// The hashes some request holds now; forgets the others.
    fn watched(&self) -> Vec<String> {
        let mut watched = self.0.lock().expect("revocations lock");
        watched.retain(|_, signal| signal.strong_count() > 0);
        watched.keys().map(|h| h.to_string()).collect()
    }

    /// Ends every request holding `hash`; returns how many distinct signals fired (0 or 1).
    fn revoke(&self, hash: &str) -> usize {
        let signal = self.0.lock().expect("revocations lock").remove(hash);
        match signal.and_then(|s| s.upgrade()) {
            Some(signal) => {
                signal.cancel();
                1
            }
            None => 0,
        }
    }
}

/// The `revocations` service: every [`REVOCATION_CHECK`], asks the store which tokens watched
/// or cached on this instance are gone, evicts them from the cache and ends their requests.
pub struct RevocationWatcher {
    pub(crate) store: Arc<dyn AccessStore>,
    pub(crate) tokens: TokenCache,
    pub(crate) revocations: Revocations,
}

impl RevocationWatcher {
    /// One run of the service: checks until `stop`; a store error ends the run (the supervisor
    /// runs it again with backoff).
    pub async fn run(&self, stop: CancellationToken) -> Result<(), ServiceError> {
        let mut tick = tokio::time::interval(REVOCATION_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                checked = self.check() => { checked.map_err(ServiceError::from_error)?; }
            }
        }
    }

    /// One look at the store. Returns how many revoked tokens had requests running here.
    pub async fn check(&self) -> Result<usize, StoreError> {
        let mut hashes = self.revocations.watched();
        hashes.extend(self.tokens.hashes());
        hashes.sort_unstable();
        hashes.dedup();
        if hashes.is_empty() {
            return Ok(0);
        }
        let mut ended = 0;
        for hash in self.store.missing_tokens(&hashes).await? {
            self.tokens.evict(&hash);
            ended += self.revocations.revoke(&hash);
        }
        if ended > 0 {
            info!(
                tokens = ended,
                "revoked tokens: their streams and long-polls end"
            );
        }
        Ok(ended)
    }
}

/// Whether the caller's API token is revoked while its request runs: the one mechanism every
/// streaming or waiting handler uses. For a JWT or `--insecure-no-auth` caller it never fires.
pub struct TokenWatch {
    signal: Option<Arc<CancellationToken>>,
    state: Arc<AppState>,
}

impl FromRequestParts<Arc<AppState>> for TokenWatch {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        Ok(TokenWatch {
            signal: state.auth.watch(&caller),
            state: state.clone(),
        })
    }
}

impl TokenWatch {
    /// Resolves once the token is revoked; never for a caller without an API token.
    async fn revoked(signal: Option<Arc<CancellationToken>>) {
        match signal {
            Some(signal) => signal.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// Runs `work` (a long-poll's wait) unless the token is revoked first: then `work` is
    /// dropped and the answer is 401. `work` must be safe to drop at any await, as it is when
    /// its client goes away.
    pub async fn guard<F: Future>(&self, work: F) -> Result<F::Output, ApiError> {
        tokio::select! {
            biased;
            _ = Self::revoked(self.signal.clone()) => {
                self.state.metrics.revoked.fetch_add(1, Ordering::Relaxed);
                Err(revoked_error())
            }
            output = work => Ok(output),
        }
    }

    /// `events` until the token is revoked; then a final `revoked` event (its data the 401
    /// problem document) and the end of the stream. Events queued but not yet sent are dropped
    /// with it: nothing reaches the client after the revocation is known.
    pub fn stream<S>(self, events: S) -> impl Stream<Item = Result<Event, Infallible>> + Send
    where
        S: Stream<Item = Result<Event, Infallible>> + Send + Unpin + 'static,
    {
        UntilRevoked {
            events,
            revoked: Some(Box::pin(Self::revoked(self.signal))),
            state: self.state,
        }
    }
}

fn revoked_error() -> ApiError {
    ApiError::Unauthenticated("the token was revoked".to_owned())
}

/// The stream of [`TokenWatch::stream`].
struct UntilRevoked<S> {
    events: S,
    /// `None` once the stream has ended with its `revoked` event.
    revoked: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    state: Arc<AppState>,
}

impl<S> Stream for UntilRevoked<S>
where
    S: Stream<Item = Result<Event, Infallible>> + Unpin,
{
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(revoked) = this.revoked.as_mut() else {
            return Poll::Ready(None);
        };
        if revoked.as_mut().poll(cx).is_ready() {
            this.revoked = None;
            this.state.metrics.revoked.fetch_add(1, Ordering::Relaxed);
            let problem = revoked_error().problem().1;
            let event = Event::default()
                .event("revoked")
                .json_data(problem)
                .unwrap_or_else(|_| Event::default().event("revoked").data("{}"));
            return Poll::Ready(Some(Ok(event)));
        }
        Pin::new(&mut this.events).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_fires_every_holder_of_the_token_and_no_other() {
        let revocations = Revocations::default();
        let (t, u): (Arc<str>, Arc<str>) = ("t".into(), "u".into());
        let (first, second, other) = (
            revocations.watch(&t),
            revocations.watch(&t),
            revocations.watch(&u),
        );
        let mut watched = revocations.watched();
        watched.sort();
        assert_eq!(watched, ["t", "u"]);

        assert_eq!(revocations.revoke("t"), 1);
        assert!(first.is_cancelled() && second.is_cancelled());
        assert!(!other.is_cancelled());
        assert_eq!(
            revocations.watched(),
            ["u"],
            "a revoked hash is no longer asked about"
        );
        assert_eq!(revocations.revoke("t"), 0);

        // A request that starts later with a token found revoked gets a new signal, which the
        // next look at the store fires.
        assert!(!revocations.watch(&t).is_cancelled());
    }

    #[test]
    fn an_entry_lives_as_long_as_a_request_holds_it() {
        let revocations = Revocations::default();
        let t: Arc<str> = "t".into();
        let held = revocations.watch(&t);
        drop(revocations.watch(&t));
        assert_eq!(revocations.watched(), ["t"]);
        drop(held);
        assert!(revocations.watched().is_empty());
        assert_eq!(revocations.revoke("t"), 0);
    }
}
