//! The admin routes: API tokens (`/v1/tokens`) and the audit log (`/v1/audit`). Every route
//! here needs the `admin` scope, and every change made through them is audited.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tenantsync_auth::{Minted, Scope};
use tenantsync_core::{InvalidInput, TokenName};
use tenantsync_store::{AccessStore, AuditEntry, StoreError, StoredToken};

use crate::auth::{Admin, Caller};
use crate::extract::{ApiBody, ApiQuery};
use crate::{ApiError, AppState};

/// Appends an admin action to the audit log.
pub async fn audit(
    store: &dyn AccessStore,
    actor: &str,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<(), StoreError> {
    store
        .append_audit(&AuditEntry {
            seq: 0,
            at: Utc::now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        })
        .await
        .map(drop)
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateTokenError {
    #[error("a token named {0} exists already; revoke it or pick another name")]
    Exists(TokenName),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Mints a token, stores its hash and audits it as done by `actor`. The one place tokens are
/// made, for the admin API and `tenantsync token create` alike. The secret is in the returned
/// [`Minted`] and nowhere else.
pub async fn create_token(
    store: &dyn AccessStore,
    actor: &str,
    name: Option<TokenName>,
    scopes: &[Scope],
) -> Result<(StoredToken, Minted), CreateTokenError> {
    let minted = tenantsync_auth::mint();
    let name = match name {
        Some(name) => name,
        // Eight hex digits of the hash: distinct enough, and reveals nothing of the secret.
        None => TokenName::new(format!("token-{}", &minted.hash.as_str()[..8]))
            .expect("token-<hex> is a valid name"),
    };
    let token = StoredToken {
        name: name.clone(),
        hash: minted.hash.as_str().to_owned(),
        scopes: scopes.iter().map(Scope::to_string).collect(),
        created_at: Utc::now(),
    };
    if !store.create_token(&token).await? {
        return Err(CreateTokenError::Exists(name));
    }
    audit(
        store,
        actor,
        "token.created",
        name.as_str(),
        json!({"scopes": token.scopes}),
    )
    .await?;
    Ok((token, minted))
}

/// Revokes a token and audits it. Returns whether it existed.
pub async fn revoke_token(
    store: &dyn AccessStore,
    actor: &str,
    name: &TokenName,
) -> Result<bool, StoreError> {
    let revoked = store.revoke_token(name).await?;
    if revoked {
        audit(store, actor, "token.revoked", name.as_str(), json!({})).await?;
    }
    Ok(revoked)
}

fn token_json(t: &StoredToken) -> Value {
    json!({"name": t.name, "scopes": t.scopes, "created_at": t.created_at})
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = NewToken)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[schema(schema_with = crate::openapi::schemas::slug)]
    name: TokenName,
    /// `admin`, or `{read|write}:{dataset|*}:{tenant|*}`.
    #[schema(schema_with = crate::openapi::schemas::scopes)]
    scopes: Vec<String>,
}

/// `POST /v1/tokens` with `{"name", "scopes"}`: `201` with the token, shown only this once.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "admin_create",
    tag = "admin",
    request_body(content = NewToken, content_type = "application/json"),
    responses(
        (status = 201, description = "The token, shown this once", body = crate::openapi::schemas::CreatedToken),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    Admin(caller): Admin,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let new: NewToken = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadBody(format!(
            "expected {{\"name\": \"ingest\", \"scopes\": [\"write:*:acme\"]}}: {e}"
        ))
    })?;
    if new.scopes.is_empty() {
        return Err(InvalidInput::new("scopes", "name at least one scope").into());
    }
    let scopes = new
        .scopes
        .iter()
        .map(|s| s.parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InvalidInput::new("scopes", e.to_string()))?;
    let (token, minted) = create_token(
        state.store.as_ref(),
        caller.subject(),
        Some(new.name),
        &scopes,
    )
    .await
    .map_err(|e| match e {
        CreateTokenError::Exists(_) => ApiError::Conflict(e.to_string()),
        CreateTokenError::Store(e) => e.into(),
    })?;
    let mut body = token_json(&token);
    body["token"] = json!(minted.secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/tokens`: names, scopes and creation times; never secrets or hashes.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    operation_id = "admin_list",
    tag = "admin",
    responses(
        (status = 200, description = "Names, scopes and creation times", body = crate::openapi::schemas::TokenList),
        (status = 403, response = crate::openapi::Forbidden),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let tokens = state.store.tokens().await?;
    Ok(Json(
        json!({"tokens": tokens.iter().map(token_json).collect::<Vec<_>>()}),
    ))
}

/// `DELETE /v1/tokens/{name}`.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{name}",
    operation_id = "admin_revoke",
    tag = "admin",
    params(crate::openapi::schemas::NamePath),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let name = TokenName::new(name)?;
    let revoked = revoke_token(state.store.as_ref(), caller.subject(), &name).await?;
    state.auth.forget(name.as_str());
    if revoked {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no token is named {name}")))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries after this seq (the `next` of the previous page).
    #[serde(default)]
    #[param(required = false)]
    after: u64,
    /// Entries per page: 1 to 1,000, 100 by default.
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

const AUDIT_DEFAULT_LIMIT: usize = 100;
const AUDIT_MAX_LIMIT: usize = 1_000;

/// `GET /v1/audit?after=&limit=`: admin actions, oldest first.
#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "admin_audit_log",
    tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "Admin actions, oldest first", body = crate::openapi::schemas::AuditPage),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
    )
)]
pub async fn audit_log(
    State(state): State<Arc<AppState>>,
    _: Admin,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = match query.limit {
        None => AUDIT_DEFAULT_LIMIT,
        Some(n) if (1..=AUDIT_MAX_LIMIT).contains(&n) => n,
        Some(n) => {
            return Err(InvalidInput::new(
                "limit",
                format!("must be 1 to {AUDIT_MAX_LIMIT}, got {n}"),
            )
            .into());
        }
    };
    let entries = state.store.audit_log(query.after, limit).await?;
    let next = entries.last().map_or(query.after, |e| e.seq);
    Ok(Json(json!({
        "entries": entries.iter().map(|e| json!({
            "seq": e.seq,
            "at": e.at,
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "detail": e.detail,
        })).collect::<Vec<_>>(),
        "next": next,
    })))
}
