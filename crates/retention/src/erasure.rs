//! Tenant erasure. An erasure is a row in the master store, so it outlives the process that
//! started it: while it runs, the API refuses the tenant's writes and the store refuses, at
//! apply time, every change of the tenant but the erasure's own, which closes the window of
//! writes accepted just before the erasure began. The job then deletes every live record of the
//! tenant, in every dataset, through the changes log like any other delete (so the processor
//! publishes a tombstone for each key on the state log, and every feed and subscriber sees the
//! delete), and finally has the store drop the tenant's tombstones and change outcomes and raise
//! its horizon, which sends any reader still behind back to an (empty) snapshot.
//!
//! Every instance sharing the store runs every unfinished erasure (started by any of them);
//! each step is idempotent, so two instances erasing the same tenant, or a job cut off by a
//! crash and run again, end in the same state.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tenantsync_core::{Change, ChangeId, Op, TenantId};
use tenantsync_dataset::{AppliedHub, Datasets};
use tenantsync_feed::Hub;
use tenantsync_store::{AuditEntry, Erasure, MasterStore, StoreError};
use tenantsync_supervisor::ServiceError;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Records deleted per step; progress is recorded after each.
const PAGE: usize = 200;
/// How often the list of unfinished erasures is read again (for erasures started by another
/// instance sharing the store).
const RELOAD: Duration = Duration::from_secs(5);
/// How long a step waits for the processor to apply its deletes before the run fails (and is
/// run again by the supervisor).
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a waiting step looks in the store for deletes another instance applied.
const RECHECK: Duration = Duration::from_millis(250);
/// The actor of what the server does on its own, in the audit log.
const ERASURE_ACTOR: &str = "tenantsync";

/// The erasures this instance knows of, and the service that runs them.
pub struct Erasures {
    store: Arc<dyn MasterStore>,
    datasets: Arc<Datasets>,
    hub: Arc<Hub>,
    applied: Arc<AppliedHub>,
    /// Tenants whose writes are refused: unfinished erasures, as last read from the store.
    erasing: RwLock<HashSet<TenantId>>,
    wake: Notify,
}

impl Erasures {
    pub fn new(
        store: Arc<dyn MasterStore>,
        datasets: Arc<Datasets>,
        hub: Arc<Hub>,
        applied: Arc<AppliedHub>,
    ) -> Self {
        Self {
            store,
            datasets,
            hub,
            applied,
            erasing: RwLock::default(),
            wake: Notify::new(),
        }
    }

    /// Whether the tenant's writes must be refused now.
    pub fn is_erasing(&self, tenant: &TenantId) -> bool {
        self.erasing.read().expect("erasures lock").contains(tenant)
    }

    /// Starts erasing the tenant, or finds its erasure running already; the service takes it up
    /// at once. `actor` is who asked, for the audit log.
    pub async fn start(&self, tenant: &TenantId, actor: &str) -> Result<Erasure, StoreError> {
        let (erasure, started) = self.store.start_erasure(tenant, Utc::now()).await?;
        self.set_erasing(tenant, true);
        if started {
            self.audit(actor, "erasure.started", tenant, json!({}))
                .await?;
        }
        self.wake.notify_one();
        Ok(erasure)
    }

    /// The erasure service: runs every unfinished erasure, one tenant after another, until
    /// `stop`. A failed step fails the run; the next run starts the erasure where the store
    /// says it stands.
    pub async fn run(&self, stop: CancellationToken) -> Result<(), ServiceError> {
        loop {
            let running = self
                .store
                .running_erasures()
                .await
                .map_err(ServiceError::from_error)?;
            let tenants: HashSet<TenantId> = running.into_iter().map(|e| e.tenant).collect();
            *self.erasing.write().expect("erasures lock") = tenants.clone();
            for tenant in tenants {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    erased = self.erase(&tenant) => erased?,
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RELOAD) => {}
            }
        }
    }

    fn set_erasing(&self, tenant: &TenantId, erasing: bool) {
        let mut set = self.erasing.write().expect("erasures lock");
        if erasing {
            set.insert(tenant.clone());
        } else {
            set.remove(tenant);
        }
    }

    /// Erases the tenant: deletes its live records page by page, then finishes in the store.
    async fn erase(&self, tenant: &TenantId) -> Result<(), ServiceError> {
        loop {
            let Some(mut erasure) = self
                .store
                .erasure(tenant)
                .await
                .map_err(ServiceError::from_error)?
            else {
                return Ok(());
            };
            if erasure.finished_at.is_some() {
                self.set_erasing(tenant, false);
                return Ok(());
            }
            for dataset in self
                .datasets
                .all()
                .await
                .map_err(ServiceError::from_error)?
            {
                let mut after = None;
                loop {
                    let page = self
                        .store
                        .scan(&dataset.name, tenant, after.as_ref(), PAGE)
                        .await
                        .map_err(ServiceError::from_error)?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id.clone());
                    let deletes: Vec<Change> = page
                        .iter()
                        .filter(|r| !r.is_deleted())
                        .map(|r| erasure_delete(tenant, r.id.clone()))
                        .collect();
                    if deletes.is_empty() {
                        continue;
                    }
                    let mut waiters: Vec<_> = deletes
                        .iter()
                        .map(|c| self.applied.register(&dataset.name, c))
                        .collect();
                    self.datasets
                        .append_changes(&dataset, &deletes)
                        .await
                        .map_err(ServiceError::from_error)?;
                    let deadline = Instant::now() + APPLY_TIMEOUT;
                    for (change, waiter) in deletes.iter().zip(&mut waiters) {
                        let settled = waiter
                            .settled(
                                self.store.as_ref(),
                                &dataset.name,
                                change,
                                RECHECK,
                                deadline,
                            )
                            .await
                            .map_err(ServiceError::from_error)?;
                        if settled.is_none() {
                            return Err(ServiceError::transient(format!(
                                "erasing a tenant of dataset {}: the processor did not apply \
                                 the deletes within {APPLY_TIMEOUT:?}",
                                dataset.name
                            )));
                        }
                    }
                    erasure.erased += deletes.len() as u64;
                    self.store
                        .erasure_progress(tenant, erasure.erased)
                        .await
                        .map_err(ServiceError::from_error)?;
                }
            }
            let left = self
                .store
                .finish_erasure(tenant, Utc::now())
                .await
                .map_err(ServiceError::from_error)?;
            if left == 0 {
                for dataset in self
                    .datasets
                    .all()
                    .await
                    .map_err(ServiceError::from_error)?
                {
                    self.hub.purged(&dataset.name, 0);
                }
                self.set_erasing(tenant, false);
                self.audit(
                    ERASURE_ACTOR,
                    "erasure.finished",
                    tenant,
                    json!({"erased": erasure.erased}),
                )
                .await
                .map_err(ServiceError::from_error)?;
                info!(%tenant, erased = erasure.erased, "tenant erased");
                return Ok(());
            }
            // Records written after the scan (accepted before the erasure began): another pass.
            info!(%tenant, left, "erasure: records left, scanning again");
        }
    }

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        tenant: &TenantId,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.store
            .append_audit(&AuditEntry {
                seq: 0,
                at: Utc::now(),
                actor: actor.to_owned(),
                action: action.to_owned(),
                target: tenant.to_string(),
                detail,
            })
            .await
            .map(drop)
    }
}

/// A delete of the erasure's own, which the store applies while the tenant is being erased.
fn erasure_delete(tenant: &TenantId, id: tenantsync_core::EntityId) -> Change {
    Change {
        change_id: ChangeId::new(format!(
            "{}{}",
            ChangeId::ERASURE_PREFIX,
            uuid::Uuid::now_v7()
        ))
        .expect("an erasure id is a valid change id"),
        op: Op::Delete,
        tenant: tenant.clone(),
        id,
        data: None,
        expected_version: None,
        accepted_at: Utc::now(),
    }
}
