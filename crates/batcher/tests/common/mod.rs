//! The shared fixture: a dataset on the embedded log (no background compaction) and a SQLite
//! store in a temp dir.

use std::sync::Arc;
use std::time::Duration;

use tenantsync_core::{DatasetName, Topics};
use tenantsync_dataset::Datasets;
use tenantsync_log::Log;
use tenantsync_log_embedded::{EmbeddedLog, EmbeddedOptions};
use tenantsync_store::{Dataset, MasterStore};

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub log: Arc<dyn Log>,
    pub store: Arc<dyn MasterStore>,
    pub datasets: Arc<Datasets>,
    pub dataset: Dataset,
}

pub async fn fixture(partitions: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        compaction_interval: None,
    };
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path(), options).await.unwrap());
    let store = tenantsync_store::open(&tenantsync_core::url::StoreUrl::Sqlite(
        dir.path().join("store.sqlite3"),
    ))
    .await
    .unwrap();
    let datasets = Arc::new(Datasets::new(
        log.clone(),
        store.clone(),
        Topics::default(),
        Duration::from_secs(3600),
    ));
    let dataset = Dataset {
        name: DatasetName::new("items").unwrap(),
        partitions,
    };
    datasets.declare(&dataset).await.unwrap();
    Fixture {
        _dir: dir,
        log,
        store,
        datasets,
        dataset,
    }
}
