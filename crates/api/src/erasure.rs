//! Tenant erasure: `DELETE /v1/tenants/{tenant}` and its progress at
//! `GET /v1/tenants/{tenant}/erasure`.
//!
//! An erasure is a row in the master store, so it outlives the process that started it: while
//! it runs, the API refuses the tenant's writes (409) and the store refuses, at apply time, every
//! change of the tenant but the erasure's own, which closes the window of writes accepted just
//! before the erasure began. The job then deletes every live record of the tenant, in every
//! dataset, through the changes log like any other delete (so the processor publishes a
//! tombstone for each key on the state log, and every feed and subscriber sees the delete),
//! and finally has the store drop the tenant's tombstones and change outcomes and raise its
//! horizon, which sends any reader still behind back to an (empty) snapshot. A job cut off by
//! a crash is resumed when the server starts again ([`resume`]); each step is idempotent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use tenantsync_core::{Change, ChangeId, Op, TenantId};
use tenantsync_store::Erasure;
use tracing::{info, warn};

use crate::admin::audit;
use crate::auth::Caller;
use crate::{ApiError, AppState, write};

/// Records deleted per step; progress is recorded after each.
const PAGE: usize = 200;
/// Pause before retrying a step that failed (the store or the log unavailable).
const RETRY: Duration = Duration::from_secs(1);
/// The actor of what the server does on its own, in the audit log.
const SERVER: &str = "tenantsync";

/// The erasures this instance knows of.
#[derive(Debug, Default)]
pub struct Erasures {
    /// Tenants whose writes are refused: running erasures, from the store.
    erasing: RwLock<HashSet<TenantId>>,
    /// Tenants whose job runs in this process.
    jobs: Mutex<HashSet<TenantId>>,
}

impl Erasures {
    /// 409 while the tenant is being erased.
    pub fn check_writable(&self, tenant: &TenantId) -> Result<(), ApiError> {
        if self.erasing.read().expect("erasures lock").contains(tenant) {
            return Err(ApiError::TenantErasing(tenant.to_string()));
        }
        Ok(())
    }

    fn set_erasing(&self, tenant: &TenantId, erasing: bool) {
        let mut set = self.erasing.write().expect("erasures lock");
        if erasing {
            set.insert(tenant.clone());
        } else {
            set.remove(tenant);
        }
    }
}

/// Reloads which tenants are being erased (some may have been started by another instance
/// sharing the store) and starts a job for each one this process does not run yet.
pub async fn resume(state: &Arc<AppState>) -> Result<(), ApiError> {
    let running = state.store.running_erasures().await?;
    let tenants: HashSet<TenantId> = running.into_iter().map(|e| e.tenant).collect();
    *state.erasures.erasing.write().expect("erasures lock") = tenants.clone();
    for tenant in tenants {
        spawn_job(state, tenant);
    }
    Ok(())
}

fn spawn_job(state: &Arc<AppState>, tenant: TenantId) {
    if !state
        .erasures
        .jobs
        .lock()
        .expect("erasures lock")
        .insert(tenant.clone())
    {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            match run(&state, &tenant).await {
                Ok(()) => break,
                Err(error) => {
                    warn!(?error, %tenant, "erasure step failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        state
            .erasures
            .jobs
            .lock()
            .expect("erasures lock")
            .remove(&tenant);
    });
}

/// Erases the tenant: deletes its live records page by page, then finishes in the store.
/// Returns once finished, or on the first error (the caller retries; nothing is lost).
async fn run(state: &AppState, tenant: &TenantId) -> Result<(), ApiError> {
    loop {
        let Some(mut erasure) = state.store.erasure(tenant).await? else {
            return Ok(());
        };
        if erasure.finished_at.is_some() {
            state.erasures.set_erasing(tenant, false);
            return Ok(());
        }
        for dataset in state.datasets.all().await? {
            let mut after = None;
            loop {
                let page = state
                    .store
                    .scan(&dataset.name, tenant, after.as_ref(), PAGE)
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                let deletes: Vec<Change> = page
                    .iter()
                    .filter(|r| !r.is_deleted())
                    .map(|r| Change {
                        change_id: ChangeId::new(format!(
                            "{}{}",
                            ChangeId::ERASURE_PREFIX,
                            uuid::Uuid::now_v7()
                        ))
                        .expect("an erasure id is a valid change id"),
                        op: Op::Delete,
                        tenant: tenant.clone(),
                        id: r.id.clone(),
                        data: None,
                        expected_version: None,
                        accepted_at: Utc::now(),
                    })
                    .collect();
                if deletes.is_empty() {
                    continue;
                }
                let waiters: Vec<_> = deletes
                    .iter()
                    .map(|c| write::register(state, &dataset, c))
                    .collect();
                write::submit(state, &dataset, &deletes).await?;
                for (change, waiter) in deletes.iter().zip(waiters) {
                    write::wait_applied(state, &dataset, change, waiter, write::KEY_HEADER).await?;
                }
                erasure.erased += deletes.len() as u64;
                state.store.erasure_progress(tenant, erasure.erased).await?;
            }
        }
        let left = state.store.finish_erasure(tenant, Utc::now()).await?;
        if left == 0 {
            for dataset in state.datasets.all().await? {
                state.hub.purged(&dataset.name, 0);
            }
            state.erasures.set_erasing(tenant, false);
            audit(
                state.store.as_ref(),
                SERVER,
                "erasure.finished",
                tenant.as_str(),
                json!({"erased": erasure.erased}),
            )
            .await?;
            info!(%tenant, erased = erasure.erased, "tenant erased");
            return Ok(());
        }
        // Records written after the scan (accepted before the erasure began): another pass.
        info!(%tenant, left, "erasure: records left, scanning again");
    }
}

fn erasure_json(e: &Erasure) -> Value {
    json!({
        "tenant": e.tenant,
        "state": if e.finished_at.is_some() { "finished" } else { "running" },
        "started_at": e.started_at,
        "finished_at": e.finished_at,
        "erased": e.erased,
    })
}

fn status_url(tenant: &TenantId) -> String {
    format!("/v1/tenants/{tenant}/erasure")
}

/// `DELETE /v1/tenants/{tenant}`: starts erasing the tenant (or reports the erasure already
/// running): `202 Accepted`, with the progress URL in `Location`.
pub async fn start(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let tenant = TenantId::new(tenant)?;
    let (erasure, started) = state.store.start_erasure(&tenant, Utc::now()).await?;
    state.erasures.set_erasing(&tenant, true);
    if started {
        audit(
            state.store.as_ref(),
            caller.subject(),
            "erasure.started",
            tenant.as_str(),
            json!({}),
        )
        .await?;
    }
    spawn_job(&state, tenant.clone());
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, status_url(&tenant))],
        Json(erasure_json(&erasure)),
    )
        .into_response())
}

/// `GET /v1/tenants/{tenant}/erasure`: the last erasure of the tenant.
pub async fn status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let tenant = TenantId::new(tenant)?;
    let erasure = state
        .store
        .erasure(&tenant)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("tenant {tenant} was never erased")))?;
    Ok(Json(erasure_json(&erasure)))
}
