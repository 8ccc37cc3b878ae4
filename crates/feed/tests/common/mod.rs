//! A real SQLite master store with one dataset, written the way the processor writes it.
#![allow(dead_code)] // each test binary uses a different part of the fixture

use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;
use tenantsync_core::{Change, ChangeId, DatasetName, EntityId, Op, TenantId};
use tenantsync_feed::Hub;
use tenantsync_store::sqlite::SqliteStore;
use tenantsync_store::{Dataset, LoggedChange, MasterStore};

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub store: Arc<dyn MasterStore>,
    pub hub: Arc<Hub>,
    /// `items`, with one partition.
    pub dataset: DatasetName,
    next_offset: u64,
}

impl Fixture {
    /// A new store in a directory of its own, with the dataset declared.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn MasterStore> = Arc::new(
            SqliteStore::open(&dir.path().join("store.sqlite3"))
                .await
                .unwrap(),
        );
        let dataset = DatasetName::new("items").unwrap();
        store
            .declare_dataset(&Dataset {
                name: dataset.clone(),
                partitions: 1,
            })
            .await
            .unwrap();
        Fixture {
            _dir: dir,
            store,
            hub: Hub::new(),
            dataset,
            next_offset: 0,
        }
    }

    /// Applies one change at the partition's next offset, as the processor does: an upsert of
    /// `data`, or a delete when it is `None`. The hub is not told.
    pub async fn apply(&mut self, tenant: &str, id: &str, data: Option<Value>) {
        let offset = self.next_offset;
        self.next_offset += 1;
        let change = Change {
            change_id: ChangeId::new(format!("c{offset}")).unwrap(),
            op: if data.is_some() {
                Op::Upsert
            } else {
                Op::Delete
            },
            tenant: TenantId::new(tenant).unwrap(),
            id: EntityId::new(id).unwrap(),
            data: data.map(|d| d.as_object().cloned().expect("data is a JSON object")),
            expected_version: None,
            accepted_at: Utc::now(),
        };
        self.store
            .apply(
                &self.dataset,
                0,
                &[LoggedChange { offset, change }],
                offset + 1,
            )
            .await
            .unwrap();
    }

    /// Applies one change and tells the hub, as the processor and the state-log tail do.
    pub async fn write(&mut self, tenant: &str, id: &str, data: Option<Value>) {
        self.apply(tenant, id, data).await;
        self.hub
            .notify(&self.dataset, &[TenantId::new(tenant).unwrap()]);
    }
}
