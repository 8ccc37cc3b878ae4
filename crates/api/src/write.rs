//! Accepting changes: appending them durably to the changes log, and waiting for the processor
//! to apply them when the writer asks to (`?wait=applied`).
//!
//! A change id (idempotency key) belongs to one record of a tenant: the store refuses a change
//! whose id already belongs to another record (`key_reused`). This module reports that refusal
//! as 422, early when the store already shows the key taken, and never lets such a change pass
//! as a duplicate of the other record's change.
//!
//! Data is held to the dataset's latest schema before anything is appended: an upsert whose data
//! violates it is refused with 422 (`check_data`). A patch can only be judged on its merged
//! result, so the store checks it when it is applied and rejects it `schema_violation`, which
//! `?wait=applied` reports as 422 too (`applied_reply`).
//!
//! It also renders records for replies (`record_json`, `written_json`). `records` builds its
//! handlers on this module, never the other way round.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tenantsync_auth::Access;
use tenantsync_core::DatasetName;
use tenantsync_core::{
    Change, ChangeId, EntityId, InvalidInput, Object, Op, Outcome, Record, RejectReason, TenantId,
    merge_patch,
};
use tenantsync_dataset::{AppliedChange, QuotaError, Settled, Waiter};
use tenantsync_schema::{Contract, Violation};
use tenantsync_store::{Dataset, StoredOutcome};
use tokio::time::Instant;

use crate::auth::Caller;
use crate::extract::{self, AccessCheck, Allowed, ApiBody, ApiQuery, PathParams, Wait, WriteQuery};
use crate::{ApiError, AppState};

/// The `field` of a refused key on the single-record routes...
pub const KEY_HEADER: &str = "Idempotency-Key";
/// ...and on a line of a bulk request.
pub const KEY_MEMBER: &str = "idempotency_key";

/// The refusal of a change whose id already belongs to another record (`owner`, when known).
fn key_reused(change: &Change, owner: Option<&EntityId>, field: &'static str) -> ApiError {
    let used_for = match owner {
        Some(id) => format!("record {}:{id}", change.tenant),
        None => format!("another record of tenant {}", change.tenant),
    };
    ApiError::KeyReused {
        field,
        detail: format!(
            "idempotency key {} was already used for {used_for}; use a new key for a different record",
            change.change_id
        ),
    }
}

/// The refusal of `change` if `stored` (the store's outcome of its id) belongs to another record.
fn refusal(
    change: &Change,
    stored: Option<&StoredOutcome>,
    field: &'static str,
) -> Option<ApiError> {
    stored
        .filter(|s| s.id != change.id)
        .map(|s| key_reused(change, Some(&s.id), field))
}

/// Refuses, before anything is appended, a change whose explicit key the store already shows
/// used for another record: appended, it would only be refused at apply time. (A key taken
/// between this check and the apply is still refused there, and reported by `?wait=applied`.)
pub async fn check_key(
    state: &AppState,
    dataset: &Dataset,
    change: &Change,
    field: &'static str,
) -> Result<(), ApiError> {
    let stored = state
        .store
        .outcome(&dataset.name, &change.tenant, &change.change_id)
        .await?;
    match refusal(change, stored.as_ref(), field) {
        Some(refused) => Err(refused),
        None => Ok(()),
    }
}

/// A record as the API shows it.
pub fn record_json(record: &Record) -> Value {
    json!({
        "tenant": record.tenant,
        "id": record.id,
        "version": record.version,
        "data": record.data,
        "updated_at": record.updated_at,
    })
}

/// A record as a write's `?wait=applied` reply shows it: with its `data` only when the caller
/// may also read the tenant. A patch or a later change leaves data in the record the writer did
/// not send, and a write-only token must not read it back that way.
pub fn written_json(caller: &Caller, dataset: &DatasetName, record: &Record) -> Value {
    let mut json = record_json(record);
    if !caller.allows(Access::Read, dataset, &record.tenant) {
        json.as_object_mut()
            .expect("a record is a JSON object")
            .remove("data");
    }
    json
}

/// A change id for writers that sent no `Idempotency-Key`: unique and time-ordered.
pub fn new_change_id() -> ChangeId {
    ChangeId::new(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid change id")
}

/// Builds and checks a change from its validated parts.
pub fn change(
    op: Op,
    tenant: TenantId,
    id: EntityId,
    data: Option<Object>,
    change_id: Option<ChangeId>,
    expected_version: Option<u64>,
) -> Result<Change, ApiError> {
    let change = Change {
        change_id: change_id.unwrap_or_else(new_change_id),
        op,
        tenant,
        id,
        data,
        expected_version,
        accepted_at: Utc::now(),
    };
    change.validate()?;
    Ok(change)
}

/// The dataset's data contract, which writes are checked against (from the schemas' cache).
pub async fn contract(state: &AppState, dataset: &Dataset) -> Result<Arc<Contract>, ApiError> {
    state
        .schemas
        .contract(&dataset.name)
        .await
        .map_err(ApiError::contract)
}

/// Refuses an upsert whose data violates the dataset's latest schema, so that it never enters
/// the log. A patch is checked on its merged result when it is applied (the store rejects it
/// `schema_violation`); a delete carries no data.
pub fn check_data(contract: &Contract, change: &Change) -> Result<(), ApiError> {
    let (Op::Upsert, Some(data)) = (change.op, &change.data) else {
        return Ok(());
    };
    contract.validate(data).map_err(|errors| {
        schema_violation(
            contract,
            format!(
                "the data of record {}:{} violates the dataset's schema",
                change.tenant, change.id
            ),
            errors,
        )
    })
}

/// A schema violation, its detail naming the schema version and the first violation.
fn schema_violation(contract: &Contract, what: String, errors: Vec<Violation>) -> ApiError {
    let version = contract
        .json
        .as_ref()
        .map(|json| format!(" (version {})", json.version))
        .unwrap_or_default();
    let first = errors
        .first()
        .map(|v| format!(": at '{}': {}", v.pointer, v.message))
        .unwrap_or_default();
    ApiError::SchemaViolation {
        detail: format!("{what}{version}{first}; see errors"),
        errors,
    }
}

/// Takes `changes` from the tenant's write quota: 429 (or 413 for more than a burst at once)
/// when they do not fit.
pub fn take_quota(state: &AppState, tenant: &TenantId, changes: u32) -> Result<(), ApiError> {
    state.quotas.take(tenant, changes).map_err(|e| match e {
        QuotaError::RetryAfter(retry_after) => ApiError::RateLimited {
            tenant: tenant.to_string(),
            retry_after,
        },
        QuotaError::OverBurst { burst } => ApiError::OverBurst {
            tenant: tenant.to_string(),
            changes,
            burst,
        },
    })
}

/// Appends changes to the dataset's changes log; returns once they are durable.
pub async fn submit(state: &AppState, dataset: &Dataset, batch: &[Change]) -> Result<(), ApiError> {
    Ok(state.datasets.append_changes(dataset, batch).await?)
}

/// Registers the wait for a change's result; see [`wait_applied`].
pub fn register(state: &AppState, dataset: &Dataset, change: &Change) -> Waiter {
    state.applied.register(&dataset.name, change)
}

/// How long a waiting writer relies on this instance's processor alone before it also looks in
/// the store, for changes that another instance (sharing the store) applies: those never reach
/// this instance's hub. The hub's answer is preferred because it is exact (the record as the
/// change left it); the store only knows the current record.
const STORE_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Waits until the change has an outcome: handed over by this instance's processor (with the
/// record exactly as the change left it), or found in the store when another instance applied
/// it (then the record is the current one, which may include later changes).
///
/// `waiter` must come from [`register`] before the change was submitted, so that a result the
/// processor hands over in between is not missed. A change refused because its id belongs to
/// another record is [`ApiError::KeyReused`], with `field` naming where the key came from.
pub async fn wait_applied(
    state: &AppState,
    dataset: &Dataset,
    change: &Change,
    mut waiter: Waiter,
    field: &'static str,
) -> Result<AppliedChange, ApiError> {
    let deadline = Instant::now() + state.config.apply_timeout;
    let settled = waiter
        .settled(
            state.store.as_ref(),
            &dataset.name,
            change,
            STORE_RECHECK,
            deadline,
        )
        .await?;
    match settled {
        Some(Settled::Here(applied)) => own_result(state, dataset, change, applied, field).await,
        Some(Settled::Stored(stored)) => {
            // The stored outcome is the id's owner's: this change's only if it is the same
            // record (a `key_reused` refusal is never stored).
            if let Some(refused) = refusal(change, Some(&stored), field) {
                return Err(refused);
            }
            let record = state
                .store
                .get(&dataset.name, &change.tenant, &change.id)
                .await?;
            Ok((stored.outcome, record))
        }
        None => Err(ApiError::ApplyTimeout {
            change_id: change.change_id.to_string(),
            status_url: status_url(dataset, change),
        }),
    }
}

/// The result the hub handed over is this change's own (the hub tells changes apart by record
/// too); a `key_reused` refusal is reported naming the record that owns the key.
async fn own_result(
    state: &AppState,
    dataset: &Dataset,
    change: &Change,
    applied: AppliedChange,
    field: &'static str,
) -> Result<AppliedChange, ApiError> {
    if let (
        Outcome::Rejected {
            reason: RejectReason::KeyReused,
            ..
        },
        _,
    ) = &applied
    {
        let owner = state
            .store
            .outcome(&dataset.name, &change.tenant, &change.change_id)
            .await?;
        return Err(key_reused(change, owner.as_ref().map(|s| &s.id), field));
    }
    Ok(applied)
}

pub fn status_url(dataset: &Dataset, change: &Change) -> String {
    format!(
        "/v1/datasets/{}/tenants/{}/changes/{}",
        dataset.name,
        change.tenant,
        urlencode(change.change_id.as_str())
    )
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reply to a change applied with `?wait=applied`: the record as the change left it, or
/// why the change was not applied. `contract` explains a patch rejected `schema_violation`.
pub fn applied_reply(
    change: &Change,
    applied: &AppliedChange,
    field: &'static str,
    contract: &Contract,
) -> Result<Record, ApiError> {
    match applied {
        (
            Outcome::Rejected {
                reason: RejectReason::KeyReused,
                ..
            },
            _,
        ) => Err(key_reused(change, None, field)),
        (
            Outcome::Rejected {
                reason: RejectReason::VersionConflict,
                current_version,
            },
            _,
        ) => Err(ApiError::VersionConflict {
            detail: format!(
                "record {}:{} is at version {current_version}, but the change expected {}",
                change.tenant,
                change.id,
                expected(change.expected_version)
            ),
            current_version: *current_version,
        }),
        (
            Outcome::Rejected {
                reason: RejectReason::TenantErasing,
                ..
            },
            _,
        ) => Err(ApiError::TenantErasing(change.tenant.to_string())),
        (
            Outcome::Rejected {
                reason: RejectReason::NotFound,
                ..
            },
            _,
        ) => Err(ApiError::NotFound(format!(
            "record {}:{} does not exist; PATCH only updates existing records, use PUT to create",
            change.tenant, change.id
        ))),
        (
            Outcome::Rejected {
                reason: RejectReason::SchemaViolation,
                ..
            },
            record,
        ) => {
            // The store keeps no messages: check the patch's result again, merged into the
            // record it was rejected on (the current record when another instance applied it,
            // which may have moved on: then the errors may be gone).
            let merged = record
                .as_ref()
                .and_then(|r| r.data.as_ref())
                .zip(change.data.as_ref())
                .map(|(data, patch)| merge_patch(data, patch));
            let errors = merged
                .and_then(|merged| contract.validate(&merged).err())
                .unwrap_or_default();
            Err(schema_violation(
                contract,
                format!(
                    "the patch would leave record {}:{} with data that violates the dataset's schema; the record is unchanged",
                    change.tenant, change.id
                ),
                errors,
            ))
        }
        (_, Some(record)) => Ok(record.clone()),
        (_, None) => Err(ApiError::NotFound(format!(
            "record {}:{} does not exist",
            change.tenant, change.id
        ))),
    }
}

fn expected(v: Option<u64>) -> String {
    match v {
        Some(0) => "the record to be absent (If-None-Match: *)".to_owned(),
        Some(v) => format!("version {v}"),
        None => "no particular version".to_owned(),
    }
}

/// One line of a bulk `POST /v1/datasets/{dataset}/changes` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BulkLine {
    /// `upsert`, `patch` or `delete`.
    #[schema(value_type = String, pattern = "^(upsert|patch|delete)$")]
    op: Op,
    #[schema(schema_with = crate::openapi::schemas::slug)]
    tenant: String,
    #[schema(min_length = 1, max_length = 512)]
    id: String,
    /// The record's data (upsert) or a JSON Merge Patch of it (patch); none for a delete.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::schemas::Data>)]
    data: Option<Value>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    expected_version: Option<u64>,
}

/// A line's change, and whether it carried its own `idempotency_key`.
fn parse_line(line: &[u8]) -> Result<(Change, bool), ApiError> {
    let line: BulkLine = serde_json::from_slice(line)
        .map_err(|e| ApiError::BadBody(format!("the line is not a valid change: {e}")))?;
    let (tenant, id) = extract::tenant_and_id(&line.tenant, &line.id)?;
    let data = match (line.op, line.data) {
        (_, None | Some(Value::Null)) => None,
        (Op::Delete, Some(_)) => {
            return Err(InvalidInput::new("data", "a delete carries no data").into());
        }
        (_, Some(Value::Object(map))) => Some(map),
        (_, Some(_)) => return Err(InvalidInput::new("data", "must be a JSON object").into()),
    };
    let change_id = line
        .idempotency_key
        .map(|k| extract::writer_change_id(KEY_MEMBER, &k))
        .transpose()?;
    let explicit = change_id.is_some();
    let change = change(line.op, tenant, id, data, change_id, line.expected_version)?;
    Ok((change, explicit))
}

/// `POST /v1/datasets/{dataset}/changes`: NDJSON in, one result per non-blank line out, in
/// order. A bad line is reported with its line number and does not stop the others; so is a
/// line of a tenant the caller may not write (403), one being erased (409), an upsert whose
/// data violates the dataset's schema (422, with its `errors`), and the lines of a
/// tenant over its write quota (429, all of the tenant's lines in the request or none). When
/// every line that would be appended is over quota, the whole answer is a 429 with
/// `Retry-After`.
#[utoipa::path(
    post,
    path = "/v1/datasets/{dataset}/changes",
    operation_id = "write_bulk",
    tag = "records",
    params(crate::openapi::schemas::DatasetPath, WriteQuery),
    request_body(content = Vec<BulkLine>, description = "NDJSON: each change (a `BulkLine`) a JSON object on a line of its own; blank lines are skipped", content_type = "application/x-ndjson"),
    responses(
        (status = 200, description = "One result per non-blank line, in order", body = crate::openapi::schemas::BulkResults),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 429, response = crate::openapi::TooManyRequests),
    )
)]
pub async fn bulk(
    State(state): State<Arc<AppState>>,
    Allowed((caller, dataset)): Allowed<BulkWrite>,
    ApiQuery(query): ApiQuery<WriteQuery>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    // Each non-blank line with its number and the tenant it names, read once.
    let lines: Vec<(usize, &[u8], Option<TenantId>)> = body
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(n, line)| (n + 1, line, line_tenant(line)))
        .collect();
    // Quotas first, from each line's tenant alone: the lines of a tenant over its quota are
    // refused without being parsed in full, so a flood costs the server as little as possible.
    let (refused, tenants) = take_bulk_quotas(&state, &caller, &dataset, &lines);
    let waits: Vec<_> = refused
        .iter()
        .filter_map(|(tenant, refusal)| match refusal {
            ApiError::RateLimited { retry_after, .. } => Some((tenant, *retry_after)),
            _ => None,
        })
        .collect();
    if tenants > 0 && waits.len() == tenants {
        // Every line the caller may write is over its tenant's rate: nothing to append.
        let (tenant, retry_after) = waits
            .into_iter()
            .max_by_key(|(_, wait)| *wait)
            .expect("a refused tenant");
        return Err(ApiError::RateLimited {
            tenant: tenant.to_string(),
            retry_after,
        });
    }

    let contract = contract(&state, &dataset).await?;
    let mut parsed: Vec<(usize, Result<Change, ApiError>)> = Vec::with_capacity(lines.len());
    // The lines with their own key, as indices into `parsed`, and those keys.
    let (mut keyed, mut keys) = (Vec::new(), Vec::new());
    for (n, line, tenant) in lines {
        if let Some(refusal) = tenant.and_then(|t| refused.get(&t)) {
            parsed.push((n, Err(refusal.clone_quota())));
            continue;
        }
        let result = parse_line(line).and_then(|(change, explicit)| {
            caller.require(Access::Write, &dataset.name, &change.tenant)?;
            crate::erasure::check_writable(&state, &change.tenant)?;
            check_data(&contract, &change)?;
            Ok((change, explicit))
        });
        let result = result.map(|(change, explicit)| {
            if explicit {
                keyed.push(parsed.len());
                keys.push((change.tenant.clone(), change.change_id.clone()));
            }
            change
        });
        parsed.push((n, result));
    }
    // A key the store already shows used for another record: refuse the line now (see
    // `check_key`), in one look-up for the whole request.
    let stored = state.store.outcomes(&dataset.name, &keys).await?;
    for (i, stored) in keyed.into_iter().zip(stored) {
        if let (_, Ok(change)) = &parsed[i]
            && let Some(refused) = refusal(change, stored.as_ref(), KEY_MEMBER)
        {
            parsed[i].1 = Err(refused);
        }
    }
    let good: Vec<Change> = parsed
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    let wait = query.wait == Some(Wait::Applied);
    let mut waiters: std::collections::VecDeque<Waiter> = if wait {
        good.iter().map(|c| register(&state, &dataset, c)).collect()
    } else {
        Default::default()
    };
    submit(&state, &dataset, &good).await?;

    let mut results = Vec::with_capacity(parsed.len());
    for (line, result) in parsed {
        let value = match result {
            Err(error) => line_error(line, error),
            Ok(change) if wait => {
                let waiter = waiters.pop_front().expect("one waiter per good line");
                let reply = wait_applied(&state, &dataset, &change, waiter, KEY_MEMBER)
                    .await
                    .and_then(|applied| applied_reply(&change, &applied, KEY_MEMBER, &contract));
                match reply {
                    Ok(record) => json!({
                        "line": line, "status": 200,
                        "change_id": change.change_id, "record": written_json(&caller, &dataset.name, &record),
                    }),
                    Err(error) => {
                        let mut v = line_error(line, error);
                        v["change_id"] = json!(change.change_id);
                        v
                    }
                }
            }
            Ok(change) => json!({"line": line, "status": 202, "change_id": change.change_id}),
        };
        results.push(value);
    }
    Ok(Json(json!({ "results": results })).into_response())
}

/// The caller and the dataset the path's `{dataset}` names, for a bulk write: 403 unless a
/// scope of the caller names the dataset (each line's tenant is checked on its own), then 404
/// unless it is declared.
pub enum BulkWrite {}

impl AccessCheck for BulkWrite {
    type Granted = (Caller, Dataset);

    async fn check(
        state: &AppState,
        caller: Caller,
        path: &PathParams,
    ) -> Result<(Caller, Dataset), ApiError> {
        let name = DatasetName::new(path.get("dataset"))?;
        if !caller.sees_dataset(&name) {
            return Err(ApiError::Forbidden(format!(
                "this token may not write to dataset {name}"
            )));
        }
        let dataset = extract::dataset(state, &name).await?;
        Ok((caller, dataset))
    }
}

/// The tenant a bulk line names, read without parsing the rest of it; `None` when the line
/// has none that is valid (its full parse reports why).
fn line_tenant(line: &[u8]) -> Option<TenantId> {
    #[derive(Deserialize)]
    struct Tenant<'a> {
        #[serde(borrow)]
        tenant: std::borrow::Cow<'a, str>,
    }
    let peek: Tenant = serde_json::from_slice(line).ok()?;
    TenantId::new(peek.tenant.into_owned()).ok()
}

/// Takes, for each tenant the caller may write, that tenant's lines from its write quota, all
/// of them or none. Returns the refusals by tenant, and how many tenants were counted.
fn take_bulk_quotas(
    state: &AppState,
    caller: &Caller,
    dataset: &Dataset,
    lines: &[(usize, &[u8], Option<TenantId>)],
) -> (HashMap<TenantId, ApiError>, usize) {
    let mut per_tenant: HashMap<&TenantId, u32> = HashMap::new();
    for tenant in lines.iter().filter_map(|(_, _, tenant)| tenant.as_ref()) {
        if caller.allows(Access::Write, &dataset.name, tenant) {
            *per_tenant.entry(tenant).or_default() += 1;
        }
    }
    let tenants = per_tenant.len();
    let refused = per_tenant
        .into_iter()
        .filter_map(|(tenant, n)| {
            take_quota(state, tenant, n)
                .err()
                .map(|e| (tenant.clone(), e))
        })
        .collect();
    (refused, tenants)
}

/// A per-line error: the problem document's members, plus the line number.
fn line_error(line: usize, error: ApiError) -> Value {
    let (_, mut problem) = error.problem();
    problem["line"] = json!(line);
    problem
}
