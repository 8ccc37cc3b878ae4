//! The processor holds patches to the dataset's latest schema as it applies them: a patch whose
//! merged result violates it is rejected `schema_violation`, stored, and leaves the record as it
//! was; a dataset without a schema takes any patch.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tenantsync_core::{
    Change, ChangeId, DatasetName, EntityId, Op, Outcome, RejectReason, TenantId, Topics,
};
use tenantsync_dataset::Datasets;
use tenantsync_log_embedded::{EmbeddedLog, EmbeddedOptions};
use tenantsync_processor::{Processor, ProcessorConfig};
use tenantsync_schema::Schemas;
use tenantsync_store::{Dataset, MasterStore, sqlite::SqliteStore};
use tenantsync_supervisor::{RestartPolicy, Supervisor};

fn change(change_id: &str, op: Op, id: &str, data: Value) -> Change {
    Change {
        change_id: ChangeId::new(change_id).unwrap(),
        op,
        tenant: TenantId::new("acme").unwrap(),
        id: EntityId::new(id).unwrap(),
        data: data.as_object().cloned(),
        expected_version: None,
        accepted_at: Utc::now(),
    }
}

/// Polls the store until every change id has an outcome; panics after a deadline.
async fn outcomes(store: &dyn MasterStore, dataset: &DatasetName, ids: &[&str]) -> Vec<Outcome> {
    let tenant = TenantId::new("acme").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut found = Vec::new();
        for id in ids {
            let stored = store
                .outcome(dataset, &tenant, &ChangeId::new(*id).unwrap())
                .await
                .unwrap();
            found.extend(stored.map(|s| s.outcome));
        }
        if found.len() == ids.len() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "changes {ids:?} not applied in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_violating_the_schema_are_rejected_when_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn MasterStore> = Arc::new(
        SqliteStore::open(&dir.path().join("store.sqlite3"))
            .await
            .unwrap(),
    );
    let log = Arc::new(
        EmbeddedLog::open(dir.path(), EmbeddedOptions::default())
            .await
            .unwrap(),
    );
    let topics = Topics::new("contracts");
    let datasets = Arc::new(Datasets::new(
        log.clone(),
        store.clone(),
        topics.clone(),
        Duration::from_secs(3600),
    ));
    let (items, free) = (
        DatasetName::new("items").unwrap(),
        DatasetName::new("free").unwrap(),
    );
    let declared = |name: &DatasetName| Dataset {
        name: name.clone(),
        partitions: 2,
    };
    datasets.declare(&declared(&items)).await.unwrap();
    datasets.declare(&declared(&free)).await.unwrap();
    let schemas = Arc::new(Schemas::new(store.clone(), topics));
    let schema = json!({
        "type": "object",
        "properties": {"qty": {"type": "integer", "minimum": 0}},
        "required": ["qty"]
    });
    schemas.register_json(&items, &schema, None).await.unwrap();

    let processor = Arc::new(Processor::new(
        log,
        store.clone(),
        datasets.clone(),
        schemas,
        ProcessorConfig::default(),
    ));
    let supervisor = Supervisor::new(RestartPolicy::default());
    tenantsync_dataset::supervise(&supervisor, datasets.clone(), vec![processor]);

    let batch = [
        change("c1", Op::Upsert, "a", json!({"qty": 1})),
        change("bad-type", Op::Patch, "a", json!({"qty": "many"})),
        change("bad-removal", Op::Patch, "a", json!({"qty": null})),
        change("good", Op::Patch, "a", json!({"qty": 2, "note": "x"})),
    ];
    let ids = ["c1", "bad-type", "bad-removal", "good"];
    for dataset in [&items, &free] {
        datasets
            .append_changes(&declared(dataset), &batch)
            .await
            .unwrap();
    }

    let violation = |current_version| Outcome::Rejected {
        reason: RejectReason::SchemaViolation,
        current_version,
    };
    assert_eq!(
        outcomes(&*store, &items, &ids).await,
        [
            Outcome::Applied { version: 1 },
            violation(1),
            violation(1),
            Outcome::Applied { version: 2 },
        ]
    );
    let a = EntityId::new("a").unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let record = store.get(&items, &tenant, &a).await.unwrap().unwrap();
    assert_eq!(
        record.data,
        json!({"qty": 2, "note": "x"}).as_object().cloned()
    );

    // Without a schema, every patch applies.
    assert_eq!(
        outcomes(&*store, &free, &ids).await,
        (1..=4)
            .map(|version| Outcome::Applied { version })
            .collect::<Vec<_>>()
    );
    supervisor.shutdown(Duration::from_secs(10)).await.unwrap();
}
