//! Who is calling, and whether it may do what it asks.
//!
//! Every route except `/healthz` and `/readyz` sits behind [`authenticate`], a middleware that
//! turns `Authorization: Bearer ...` into a [`Caller`] or answers 401: an API token (`tsk_...`,
//! looked up by its hash in the master store and trusted for [`TOKEN_CACHE_TTL`]) or,
//! when configured, a JWT from the team's identity provider. Handlers then ask the [`Caller`]
//! for the scope their request needs and answer 403 without it, before they look at anything
//! the request names: a caller learns nothing about datasets, tenants or records it may not
//! see, not even whether they exist. Where a handler also takes a query or a body, the check is
//! an extractor ([`Admin`], `extract::Allowed`) placed before them. A request that streams or
//! waits also watches its token's revocation (`crate::revocation`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use tenantsync_auth::{Access, Grant, JwtVerifier, Scope, hash_presented, looks_like_jwt};
use tenantsync_core::{DatasetName, TenantId};
use tenantsync_store::{AccessStore, Subscription, TenantSelection};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::revocation::{RevocationWatcher, Revocations};
use crate::{ApiError, AppState};

/// How long a token found in the store is trusted before the store is asked again. A token
/// revoked through this instance's API is forgotten at once; one revoked elsewhere (the CLI,
/// another instance) stops working within this time, and the `revocations` service evicts it
/// within [`REVOCATION_CHECK`](crate::revocation::REVOCATION_CHECK).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);

/// How requests are authenticated.
pub enum Auth {
    /// API tokens from the store, and JWTs when a verifier is configured.
    Enforced {
        jwt: Option<Box<JwtVerifier>>,
        tokens: TokenCache,
        /// The tokens of this instance's running streams and long-polls.
        revocations: Revocations,
    },
    /// Every request is let in with the `admin` scope (`--insecure-no-auth`, for local demos).
    Insecure,
}

/// API tokens recently found in the store, by hash: a busy client costs one store lookup per
/// [`TOKEN_CACHE_TTL`], not one per request. Only tokens that exist are kept, so the cache
/// holds at most the store's tokens. Clones share the entries.
#[derive(Clone, Default)]
pub struct TokenCache(Arc<Mutex<Trusted>>);

/// Grants by token hash, each with when it was read from the store.
type Trusted = HashMap<String, (Arc<Grant>, Instant)>;

impl TokenCache {
    fn get(&self, hash: &str) -> Option<Arc<Grant>> {
        let entries = self.0.lock().expect("token cache lock");
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < TOKEN_CACHE_TTL)
            .map(|(grant, _)| grant.clone())
    }

    fn put(&self, hash: &str, grant: Arc<Grant>) {
        let mut entries = self.0.lock().expect("token cache lock");
        entries.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
        entries.insert(hash.to_owned(), (grant, Instant::now()));
    }

    /// The hashes of the tokens trusted now.
    pub(crate) fn hashes(&self) -> Vec<String> {
        let entries = self.0.lock().expect("token cache lock");
        entries
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < TOKEN_CACHE_TTL)
            .map(|(hash, _)| hash.clone())
            .collect()
    }

    /// Forgets a token found revoked.
    pub(crate) fn evict(&self, hash: &str) {
        self.0.lock().expect("token cache lock").remove(hash);
    }
}

impl Auth {
    pub fn enforced(jwt: Option<JwtVerifier>) -> Self {
        Auth::Enforced {
            jwt: jwt.map(Box::new),
            tokens: TokenCache::default(),
            revocations: Revocations::default(),
        }
    }

    /// The `revocations` service of this instance; `None` without API tokens to revoke
    /// (`--insecure-no-auth`).
    pub fn watcher(&self, store: Arc<dyn AccessStore>) -> Option<RevocationWatcher> {
        match self {
            Auth::Enforced {
                tokens,
                revocations,
                ..
            } => Some(RevocationWatcher {
                store,
                tokens: tokens.clone(),
                revocations: revocations.clone(),
            }),
            Auth::Insecure => None,
        }
    }

    /// The signal of the revocation of the caller's API token; `None` for a caller without
    /// one (a JWT, or `--insecure-no-auth`), which cannot be revoked.
    pub(crate) fn watch(&self, caller: &Caller) -> Option<Arc<CancellationToken>> {
        match (self, &caller.token) {
            (Auth::Enforced { revocations, .. }, Some(hash)) => Some(revocations.watch(hash)),
            _ => None,
        }
    }

    /// Forgets a revoked token at once.
    pub fn forget(&self, name: &str) {
        if let Auth::Enforced { tokens, .. } = self {
            let mut entries = tokens.0.lock().expect("token cache lock");
            entries.retain(|_, (grant, _)| grant.subject != name);
        }
    }

    async fn caller(&self, store: &dyn AccessStore, parts: &Parts) -> Result<Caller, ApiError> {
        let (jwt, tokens) = match self {
            Auth::Insecure => {
                return Ok(Caller::new(
                    Arc::new(Grant {
                        subject: "anonymous".to_owned(),
                        scopes: vec![Scope::Admin],
                    }),
                    None,
                ));
            }
            Auth::Enforced { jwt, tokens, .. } => (jwt, tokens),
        };
        let presented = bearer(parts)?;
        if let Some(hash) = hash_presented(presented) {
            if let Some(grant) = tokens.get(hash.as_str()) {
                return Ok(Caller::new(grant, Some(hash.as_str().into())));
            }
            let token = store.token_by_hash(hash.as_str()).await?.ok_or_else(|| {
                ApiError::Unauthenticated("the token is unknown or was revoked".to_owned())
            })?;
            let (grant, invalid) = Grant::from_token(token.name.as_str(), &token.scopes);
            for e in invalid {
                warn!(token = %token.name, error = %e, "token scope ignored");
            }
            let grant = Arc::new(grant);
            tokens.put(hash.as_str(), grant.clone());
            return Ok(Caller::new(grant, Some(hash.as_str().into())));
        }
        match jwt {
            Some(verifier) if looks_like_jwt(presented) => verifier
                .verify(presented)
                .map(|grant| Caller::new(Arc::new(grant), None))
                .map_err(|e| ApiError::Unauthenticated(format!("the JWT is refused: {e}"))),
            _ => Err(ApiError::Unauthenticated(
                "the bearer token is not a tenantsync API token".to_owned(),
            )),
        }
    }
}

/// The credentials of `Authorization: Bearer <credentials>`.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthenticated(
            "send an API token as the header  Authorization: Bearer <token>".to_owned(),
        )
    })?;
    let value = value.to_str().unwrap_or_default();
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credentials.is_empty() {
        return Err(ApiError::Unauthenticated(
            "the Authorization header must be  Bearer <token>".to_owned(),
        ));
    }
    Ok(credentials)
}

/// The middleware in front of every route but the health checks: 401 unless the request
/// carries valid credentials; otherwise the [`Caller`] is handed to the handler.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let caller = state.auth.caller(state.store.as_ref(), &parts).await?;
    parts.extensions.insert(caller);
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// The authenticated caller of a request: who it is and what its scopes allow.
#[derive(Clone)]
pub struct Caller {
    grant: Arc<Grant>,
    /// The hash of the API token it presented, which a revocation deletes; `None` for a JWT.
    token: Option<Arc<str>>,
}

// By hand, so that the token's hash is never printed.
impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Only routes behind `authenticate` take a Caller; without one, refuse rather than
        // guess.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("no credentials were checked".to_owned()))
    }
}

/// The caller, once it is known to have the `admin` scope (403 otherwise).
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require_admin()?;
        Ok(Admin(caller))
    }
}

fn access_word(access: Access) -> &'static str {
    match access {
        Access::Read => "read",
        Access::Write => "write",
    }
}

impl Caller {
    fn new(grant: Arc<Grant>, token: Option<Arc<str>>) -> Self {
        Caller { grant, token }
    }

    /// Who the caller is, as the audit log names it.
    pub fn subject(&self) -> &str {
        &self.grant.subject
    }

    pub fn allows(&self, access: Access, dataset: &DatasetName, tenant: &TenantId) -> bool {
        self.grant.allows(access, dataset, tenant)
    }

    /// 403 unless the caller may `access` the tenant's records in the dataset. The message
    /// names only what the request itself named.
    pub fn require(
        &self,
        access: Access,
        dataset: &DatasetName,
        tenant: &TenantId,
    ) -> Result<(), ApiError> {
        if self.allows(access, dataset, tenant) {
            return Ok(());
        }
        let word = access_word(access);
        Err(ApiError::Forbidden(format!(
            "this token may not {word} tenant {tenant} in dataset {dataset}; it needs the scope {word}:{dataset}:{tenant} (or a wider one)"
        )))
    }

    /// 403 unless the caller has the `admin` scope.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.grant.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this route needs a token with the admin scope".to_owned(),
            ))
        }
    }

    /// Whether any of the caller's scopes names the dataset (or every dataset).
    pub fn sees_dataset(&self, dataset: &DatasetName) -> bool {
        self.grant
            .scopes
            .iter()
            .any(|s| s.mentions_dataset(dataset))
    }

    /// Whether the caller may read every tenant of the dataset, present and future.
    pub fn reads_every_tenant(&self, dataset: &DatasetName) -> bool {
        self.grant
            .scopes
            .iter()
            .any(|s| s.allows_every_tenant(Access::Read, dataset))
    }

    /// Whether the caller may read everything the subscription covers: a subscription's
    /// batches, lag and cursors are its tenants' data.
    pub fn reads_subscription(&self, datasets: &[DatasetName], tenants: &TenantSelection) -> bool {
        datasets.iter().all(|d| match tenants {
            TenantSelection::All => self.reads_every_tenant(d),
            TenantSelection::Only(list) => list.iter().all(|t| self.allows(Access::Read, d, t)),
        })
    }

    /// 403 unless [`reads_subscription`](Self::reads_subscription).
    pub fn require_subscription(&self, subscription: &Subscription) -> Result<(), ApiError> {
        if self.reads_subscription(&subscription.datasets, &subscription.tenants) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "this token may not read every dataset and tenant subscription {} covers",
            subscription.name
        )))
    }
}
