//! What the routes of push targets (`/v1/webhooks`, `/v1/sinks`) share: the caller's access to
//! what a target covers, storing a definition by compare-and-set, and a target's status as
//! every instance sees it (from its claim in the store).
//!
//! Nothing here ever puts a definition's secrets (signing secrets, header values, passwords) in
//! an answer or a log: callers pass the definition's `shown()` form.

use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{Value, json};
use tenantsync_push::TargetStatus;
use tenantsync_push::definition::{DefinitionError, TargetName};
use tenantsync_push::follow::Scope;
use tenantsync_store::{PushClaim, PushKind, PushPut, StoredPush};

use crate::admin::audit;
use crate::auth::Caller;
use crate::extract;
use crate::{ApiError, AppState};

/// How many times a write that lost a compare-and-set race (an instance disabling the endpoint,
/// another operator's change) is tried again on the new revision before answering 409.
pub const CAS_ATTEMPTS: usize = 5;

impl From<DefinitionError> for ApiError {
    fn from(e: DefinitionError) -> Self {
        ApiError::InvalidField {
            field: e.field,
            detail: e.reason,
        }
    }
}

pub fn target_name(name: String) -> Result<TargetName, ApiError> {
    Ok(TargetName::new(name)?)
}

/// Whether the caller may read everything the scope covers: a target delivers its tenants'
/// data, so defining, seeing or moving one needs what reading them needs.
pub fn reads(caller: &Caller, scope: &Scope) -> bool {
    caller.reads_subscription(&scope.datasets, &scope.tenants)
}

/// 403 unless [`reads`]; `what` names the target (`webhook hooks`).
pub fn require(caller: &Caller, scope: &Scope, what: &str) -> Result<(), ApiError> {
    if reads(caller, scope) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "this token may not read every dataset and tenant {what} covers"
        )))
    }
}

/// 404 unless every dataset of the scope is declared.
pub async fn require_declared(state: &AppState, scope: &Scope) -> Result<(), ApiError> {
    for dataset in &scope.datasets {
        extract::dataset(state, dataset).await?;
    }
    Ok(())
}

/// The stored target; 404 naming `what` when there is none.
pub async fn stored(
    state: &AppState,
    kind: PushKind,
    name: &TargetName,
) -> Result<StoredPush, ApiError> {
    state
        .store
        .push(kind, name.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{} {name} does not exist", kind.as_str())))
}

/// A stored definition that does not parse is this server's fault, not the caller's.
pub fn unparsable(stored: &StoredPush, e: String) -> ApiError {
    ApiError::Internal(format!("{} {}: {e}", stored.kind.as_str(), stored.name))
}

/// A kind of target's definition, as the routes need it.
pub trait Target: Sized {
    const KIND: PushKind;
    fn parse(text: &str) -> Result<Self, String>;
    fn scope(&self) -> Scope;
}

impl Target for tenantsync_push::webhooks::definition::Definition {
    const KIND: PushKind = PushKind::Webhook;
    fn parse(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
    fn scope(&self) -> Scope {
        self.scope()
    }
}

impl Target for tenantsync_push::sinks::definition::Definition {
    const KIND: PushKind = PushKind::Sink;
    fn parse(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
    fn scope(&self) -> Scope {
        self.scope()
    }
}

/// The stored definition, parsed.
pub fn parse<D: Target>(stored: &StoredPush) -> Result<D, ApiError> {
    D::parse(&stored.definition).map_err(|e| unparsable(stored, e))
}

/// How messages name the target: `webhook hooks`, `sink copy`.
pub fn what<D: Target>(name: &str) -> String {
    format!("{} {name}", D::KIND.as_str())
}

/// The target named, if the caller may read everything it covers: 404, then 403.
pub async fn find<D: Target>(
    state: &AppState,
    caller: &Caller,
    name: String,
) -> Result<(TargetName, StoredPush, D), ApiError> {
    let name = target_name(name)?;
    let stored = stored(state, D::KIND, &name).await?;
    let definition: D = parse(&stored)?;
    require(caller, &definition.scope(), &what::<D>(name.as_str()))?;
    Ok((name, stored, definition))
}

/// Stores `definition` if the target is still at `expected` (its revision, 0: absent); `None`
/// when it was not (the caller reads the target again and retries).
pub async fn put(
    state: &AppState,
    kind: PushKind,
    name: &TargetName,
    definition: &str,
    expected: u64,
) -> Result<Option<(PushPut, StoredPush)>, ApiError> {
    let (put, stored) = state
        .store
        .put_push(kind, name.as_str(), definition, Some(expected), Utc::now())
        .await?;
    match (put, stored) {
        (PushPut::Conflict, _) | (_, None) => Ok(None),
        (put, Some(stored)) => Ok(Some((put, stored))),
    }
}

pub fn conflict(kind: PushKind, name: &TargetName) -> ApiError {
    ApiError::Conflict(format!(
        "{} {name} kept changing while this request was applied; send it again",
        kind.as_str()
    ))
}

/// The claims of every target of the kind, to show the status of several.
pub async fn claims(state: &AppState, kind: PushKind) -> Result<Vec<PushClaim>, ApiError> {
    Ok(state.store.push_claims(kind).await?)
}

/// The target's shown definition with its name, times and status. `runs`: whether it is to be
/// delivered (enabled, and not disabled by delivery). The status is its holder's last report,
/// kept across claims: its state is `pending` while no instance holds a live claim.
pub fn target_json(stored: &StoredPush, shown: Value, runs: bool, claims: &[PushClaim]) -> Value {
    let claim = claims.iter().find(|c| c.name == stored.name);
    let status: TargetStatus = claim
        .and_then(|c| c.status.as_deref())
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let now = Utc::now().timestamp_millis();
    let live = claim.filter(|c| c.lease_until_ms > now);
    let state = match (runs, live) {
        (false, _) => "disabled".to_owned(),
        (true, Some(_)) if !status.state.is_empty() => status.state.clone(),
        (true, Some(_)) => "starting".to_owned(),
        (true, None) => "pending".to_owned(),
    };
    let mut body = shown;
    let fields = json!({
        "name": stored.name,
        "revision": stored.revision,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
        "state": state,
        "instance": live.map(|c| &c.owner),
        "lag": {"changes": status.lag_changes, "seconds": status.lag_seconds},
        "last_attempt": status.last_attempt,
        "last_success_at": status.last_success_at,
        "failure_streak": status.failure_streak,
        "failing_since": status.failing_since,
        "delivered": status.delivered,
        "failed": status.failed,
        "retried": status.retried,
        "last_error": status.last_error,
        "last_error_at": status.last_error_at,
    });
    merge(&mut body, fields);
    body
}

/// The shown definition with the fields of a `PUT`'s answer.
pub fn put_json(stored: &StoredPush, shown: Value) -> Value {
    let mut body = shown;
    merge(
        &mut body,
        json!({
            "name": stored.name,
            "revision": stored.revision,
            "created_at": stored.created_at,
            "updated_at": stored.updated_at,
        }),
    );
    body
}

fn merge(body: &mut Value, fields: Value) {
    if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), fields) {
        body.extend(fields);
    }
}

/// Deletes the target (the caller's access checked) and audits it: 204, or 404 when it was
/// deleted meanwhile.
pub async fn delete(
    state: &AppState,
    caller: &Caller,
    kind: PushKind,
    name: &TargetName,
) -> Result<StatusCode, ApiError> {
    if !state.store.delete_push(kind, name.as_str()).await? {
        return Err(ApiError::NotFound(format!(
            "{} {name} does not exist",
            kind.as_str()
        )));
    }
    audit(
        state.store.as_ref(),
        caller.subject(),
        &format!("{}.deleted", kind.as_str()),
        name.as_str(),
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
