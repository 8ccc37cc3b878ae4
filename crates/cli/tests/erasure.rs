//! Tenant erasure, SIGKILLed midway and resumed: afterwards the master store, the compacted
//! state log and every subscriber's copy hold nothing of the erased tenant, and every other
//! tenant's copy is unchanged.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{Server, wait_caught_up};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tenantsync_core::{DatasetName, TenantId, Topics};
use tenantsync_log::Log;

const DATASETS: [&str; 2] = ["inventory", "users"];
const VICTIM: &str = "victim";
/// Tenants that stay; `victim2` and `victi` make sure erasure compares tenant ids exactly.
const KEPT: [&str; 3] = ["keep", "victim2", "victi"];
const VICTIM_RECORDS: usize = 3_000;
const KEPT_RECORDS: usize = 150;
/// Tombstones (in feeds and the state log) are kept this long.
const RETENTION_SECS: u64 = 2;

/// A copy of records: (dataset, tenant) -> id -> (version, data).
type Copy = BTreeMap<(String, String), BTreeMap<String, (u64, Value)>>;

fn apply(copy: &mut Copy, dataset: &str, tenant: &str, change: &Value) {
    let records = copy
        .entry((dataset.to_owned(), tenant.to_owned()))
        .or_default();
    let id = change["id"].as_str().unwrap().to_owned();
    if change["op"] == "delete" {
        records.remove(&id);
    } else {
        records.insert(
            id,
            (change["version"].as_u64().unwrap(), change["data"].clone()),
        );
    }
}

/// Drops empty tenants, so that copies compare by content.
fn normalized(mut copy: Copy) -> Copy {
    copy.retain(|_, records| !records.is_empty());
    copy
}

/// A client pulling one tenant's feed into its copy, starting over on 410.
struct Puller {
    dataset: &'static str,
    tenant: &'static str,
    cursor: Option<String>,
    resets: usize,
}

impl Puller {
    /// Reads until up to date.
    async fn sync(&mut self, server: &Server, copy: &mut Copy) {
        let http = common::http_client();
        loop {
            let mut url = server.url(&format!(
                "/v1/datasets/{}/tenants/{}/changes?limit=500",
                self.dataset, self.tenant
            ));
            if let Some(cursor) = &self.cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let r = http.get(url).send().await.unwrap();
            if r.status() == StatusCode::GONE {
                self.cursor = None;
                self.resets += 1;
                copy.remove(&(self.dataset.to_owned(), self.tenant.to_owned()));
                continue;
            }
            assert_eq!(r.status(), StatusCode::OK);
            let page: Value = r.json().await.unwrap();
            for change in page["changes"].as_array().unwrap() {
                apply(copy, self.dataset, self.tenant, change);
            }
            self.cursor = Some(page["cursor"].as_str().unwrap().to_owned());
            if page["up_to_date"] == true {
                return;
            }
        }
    }
}

/// Reads the subscription until nothing is pending, honouring resets.
async fn sync_subscription(server: &Server, copy: &mut Copy) {
    let http = common::http_client();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = server.url("/v1/subscriptions/everything/changes?limit=500");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = http.get(url).send().await.unwrap();
        if r.status() == StatusCode::NO_CONTENT {
            return;
        }
        assert_eq!(r.status(), StatusCode::OK);
        let batch: Value = r.json().await.unwrap();
        let (dataset, tenant) = (
            batch["dataset"].as_str().unwrap(),
            batch["tenant"].as_str().unwrap(),
        );
        if batch["reset"] == true {
            copy.remove(&(dataset.to_owned(), tenant.to_owned()));
        }
        for change in batch["changes"].as_array().unwrap() {
            apply(copy, dataset, tenant, change);
        }
        cursor = Some(batch["cursor"].as_str().unwrap().to_owned());
    }
}

/// Every record of the tenants named, as the store holds them, read as one more copy.
async fn store_copy(server: &Server) -> Copy {
    let mut copy = Copy::new();
    for dataset in DATASETS {
        for tenant in KEPT.iter().chain([&VICTIM]) {
            Puller {
                dataset,
                tenant,
                cursor: None,
                resets: 0,
            }
            .sync(server, &mut copy)
            .await;
        }
    }
    normalized(copy)
}

async fn seed(server: &Server) {
    let http = common::http_client();
    for dataset in DATASETS {
        for (tenant, n) in KEPT
            .iter()
            .map(|t| (*t, KEPT_RECORDS))
            .chain([(VICTIM, VICTIM_RECORDS)])
        {
            let mut lines = String::new();
            for i in 0..n {
                lines.push_str(&format!(
                    "{}\n",
                    json!({"op": "upsert", "tenant": tenant, "id": format!("r{i}"),
                           "data": {"owner": tenant, "i": i}})
                ));
                // Some records are deleted again: their tombstones are erased too.
                if i % 10 == 0 {
                    lines.push_str(&format!(
                        "{}\n",
                        json!({"op": "delete", "tenant": tenant, "id": format!("r{i}")})
                    ));
                }
            }
            for chunk in lines.lines().collect::<Vec<_>>().chunks(1_000) {
                let r = http
                    .post(server.url(&format!("/v1/datasets/{dataset}/changes")))
                    .body(chunk.join("\n"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
        }
        wait_caught_up(server, dataset).await;
    }
}

async fn erasure(server: &Server) -> Value {
    let r = common::http_client()
        .get(server.url(&format!("/v1/tenants/{VICTIM}/erasure")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_killed_midway_finishes_and_leaves_nothing_of_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let retention = RETENTION_SECS.to_string();
    let mut server = Server::start(dir.path(), &["--tombstone-retention-secs", &retention]).await;
    let http = common::http_client();
    for dataset in DATASETS {
        common::declare(&server, dataset, 2).await;
    }
    let r = http
        .put(server.url("/v1/subscriptions/everything"))
        .json(&json!({"datasets": DATASETS, "tenants": "*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    seed(&server).await;

    // Subscribers hold the victim's records before the erasure.
    let mut pulled = Copy::new();
    let mut pullers: Vec<Puller> = DATASETS
        .iter()
        .flat_map(|d| {
            KEPT.iter().chain([&VICTIM]).map(|t| Puller {
                dataset: d,
                tenant: t,
                cursor: None,
                resets: 0,
            })
        })
        .collect();
    for p in &mut pullers {
        p.sync(&server, &mut pulled).await;
    }
    let mut subscribed = Copy::new();
    sync_subscription(&server, &mut subscribed).await;
    let before = store_copy(&server).await;
    assert_eq!(normalized(pulled.clone()), before);
    assert_eq!(normalized(subscribed.clone()), before);
    let victim_live = before
        .iter()
        .filter(|((_, t), _)| t == VICTIM)
        .map(|(_, r)| r.len())
        .sum::<usize>();
    assert_eq!(victim_live, 2 * (VICTIM_RECORDS - VICTIM_RECORDS / 10));

    // Start the erasure, and SIGKILL the server once it has erased some but not all.
    let r = http
        .delete(server.url(&format!("/v1/tenants/{VICTIM}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(60);
    let progress = loop {
        let e = erasure(&server).await;
        assert_eq!(
            e["state"], "running",
            "the erasure finished before it could be killed"
        );
        if e["erased"].as_u64().unwrap() > 0 {
            break e;
        }
        assert!(Instant::now() < deadline, "the erasure never progressed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // While it runs, the tenant's writes are refused, and only the victim's.
    let write = |tenant: &str| {
        http.put(server.url(&format!(
            "/v1/datasets/inventory/tenants/{tenant}/records/late"
        )))
        .json(&json!({"late": true}))
        .send()
    };
    let refused = write(VICTIM).await.unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    server.kill();
    eprintln!("killed the server during the erasure at {progress}");

    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let finished = loop {
        let e = erasure(&server).await;
        if e["state"] == "finished" {
            break e;
        }
        assert!(Instant::now() < deadline, "the erasure never finished: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        finished["erased"].as_u64().unwrap() >= (victim_live as u64) / 2,
        "{finished}"
    );
    for dataset in DATASETS {
        wait_caught_up(&server, dataset).await;
    }

    // Subscribers catch up: the victim is gone from every copy, the others are unchanged.
    for p in &mut pullers {
        p.sync(&server, &mut pulled).await;
    }
    sync_subscription(&server, &mut subscribed).await;
    let expected: Copy = before
        .iter()
        .filter(|((_, t), _)| t != VICTIM)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(normalized(pulled), expected, "pull copies");
    assert_eq!(normalized(subscribed), expected, "subscription copy");
    assert_eq!(store_copy(&server).await, expected, "feeds of the store");

    // The audit log has the erasure's start and finish.
    let audit: Value = http
        .get(server.url("/v1/audit"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == VICTIM)
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["erasure.started", "erasure.finished"]);

    // The store itself holds no row of the victim, not even a tombstone.
    server.kill();
    let store = tenantsync_store::open(&tenantsync_core::url::StoreUrl::Sqlite(
        dir.path().join("store.sqlite3"),
    ))
    .await
    .unwrap();
    let victim = TenantId::new(VICTIM).unwrap();
    for dataset in DATASETS {
        let name = DatasetName::new(dataset).unwrap();
        let rows = store.scan(&name, &victim, None, 10).await.unwrap();
        assert!(rows.is_empty(), "{dataset}: {rows:?}");
    }

    // The state log, once its tombstones expire and it is compacted, holds no entry of the
    // victim; every other tenant's last state there matches the store.
    // Tombstones go only once older than the retention: compact until the victim's are gone.
    let log = tenantsync_log_embedded::EmbeddedLog::open(dir.path(), Default::default())
        .await
        .unwrap();
    let topics = Topics::new(Topics::DEFAULT_PREFIX);
    for dataset in DATASETS {
        let topic = topics.state(&DatasetName::new(dataset).unwrap());
        let deadline = Instant::now() + Duration::from_secs(RETENTION_SECS + 30);
        let last = loop {
            let last = compacted_last_states(&log, &topic).await;
            let victim_keys = last
                .keys()
                .filter(|k| k.starts_with(&format!("{VICTIM}:")))
                .count();
            if victim_keys == 0 {
                break last;
            }
            assert!(
                Instant::now() < deadline,
                "{dataset}: {victim_keys} victim entries after compaction"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let live = last.values().filter(|v| v.is_some()).count();
        let expected_live: usize = expected
            .iter()
            .filter(|((d, _), _)| d == dataset)
            .map(|(_, r)| r.len())
            .sum();
        assert_eq!(
            live, expected_live,
            "{dataset}: live states of the kept tenants"
        );
    }
}

/// Compacts the state topic, then returns its last value per key.
async fn compacted_last_states(
    log: &tenantsync_log_embedded::EmbeddedLog,
    topic: &str,
) -> HashMap<String, Option<Vec<u8>>> {
    log.compact(topic).await.unwrap();
    let mut last = HashMap::new();
    for partition in 0..2 {
        let mut from = 0;
        loop {
            let entries = log
                .read(topic, partition, from, 1_000, Duration::ZERO)
                .await
                .unwrap();
            let Some(end) = entries.last().map(|e| e.offset + 1) else {
                break;
            };
            for e in entries {
                last.insert(String::from_utf8(e.key).unwrap(), e.value);
            }
            from = end;
        }
    }
    last
}
