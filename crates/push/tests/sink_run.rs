//! A sink's run over a real SQLite master store: it follows the dataset into a SQLite sink
//! table, starts a tenant over after tombstone retention, and fails, saying why, when its
//! database cannot be reached.

#[path = "../../feed/tests/common/mod.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fixture::Fixture;
use serde_json::{Value, json};
use tenantsync_core::Classify;
use tenantsync_feed::CursorKey;
use tenantsync_push::sinks::definition::{Definition, SinkSpec};
use tenantsync_push::{Figures, PushError, PushSettings, TargetContext, sinks};
use tenantsync_store::{PushKind, StoredPush};
use tokio_util::sync::CancellationToken;

fn stored(definition: &Definition) -> StoredPush {
    StoredPush {
        kind: PushKind::Sink,
        name: "copy".into(),
        definition: definition.to_json(),
        revision: 1,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

fn context(f: &Fixture, epoch: u64) -> TargetContext {
    TargetContext {
        kind: PushKind::Sink,
        name: "copy".into(),
        epoch,
        created_at: Utc::now(),
        store: f.store.clone(),
        hub: f.hub.clone(),
        cursor_key: Arc::new(CursorKey::new(b"k")),
        figures: Arc::new(Figures::default()),
        settings: Arc::new(PushSettings::default()),
        stop: CancellationToken::new(),
    }
}

fn definition(url: &str, kind: &str) -> Definition {
    let spec: SinkSpec = serde_json::from_value(json!({
        "kind": kind, "url": url, "dataset": "items", "tenants": "*", "table": "items",
        "columns": {"n": {"field": "n", "type": "bigint"}},
    }))
    .unwrap();
    Definition::from_spec(spec).unwrap()
}

/// The sink table's rows: (tenant, id) -> (data, n).
fn rows(path: &std::path::Path) -> BTreeMap<(String, String), (Value, Option<i64>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let Ok(mut statement) = conn.prepare("SELECT tenant, id, data, n FROM items") else {
        return BTreeMap::new();
    };
    statement
        .query_map([], |r| {
            Ok((
                (r.get(0)?, r.get(1)?),
                (
                    serde_json::from_str(&r.get::<_, String>(2)?).unwrap(),
                    r.get(3)?,
                ),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// What the sink must hold, kept beside the writes.
#[derive(Default)]
struct Model(BTreeMap<(String, String), (Value, Option<i64>)>);

impl Model {
    async fn write(&mut self, f: &mut Fixture, tenant: &str, id: &str, data: Option<Value>) {
        let key = (tenant.to_owned(), id.to_owned());
        match &data {
            Some(d) => {
                self.0.insert(key, (d.clone(), d["n"].as_i64()));
            }
            None => {
                self.0.remove(&key);
            }
        }
        f.write(tenant, id, data).await;
    }
}

/// Polls until the sink table equals the model, failing after 30 s.
async fn converges(path: &std::path::Path, model: &Model, ctx: &TargetContext) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = rows(path);
        if found == model.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sink did not converge: {found:?} != {:?}; status {:?}",
            model.0,
            ctx.figures.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_follows_the_dataset_and_starts_a_tenant_over_after_retention() {
    let mut f = Fixture::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.db");
    let d = definition(&format!("sqlite://{}", path.display()), "sqlite");
    let mut model = Model::default();
    for i in 0..30 {
        let tenant = ["a", "b", "c"][i % 3];
        model
            .write(
                &mut f,
                tenant,
                &format!("r{}", i % 7),
                Some(json!({"n": i})),
            )
            .await;
    }

    let ctx = Arc::new(context(&f, 1));
    let run = tokio::spawn({
        let (ctx, stored) = (ctx.clone(), stored(&d));
        async move { sinks::run(&ctx, &stored).await }
    });
    converges(&path, &model, &ctx).await;
    // Live changes, deletes among them.
    model.write(&mut f, "a", "r0", None).await;
    model
        .write(&mut f, "b", "r1", Some(json!({"n": "not a number"})))
        .await;
    model.write(&mut f, "d", "r9", Some(json!({"n": 9}))).await;
    converges(&path, &model, &ctx).await;
    assert!(ctx.figures.snapshot().delivered > 0);
    ctx.stop.cancel();
    run.await.unwrap().unwrap();

    // While the sink is stopped, tenant a loses records whose tombstones are then purged: its
    // position falls behind the horizon, and the next run replaces its rows.
    model.write(&mut f, "a", "r3", None).await;
    model.write(&mut f, "a", "r6", None).await;
    model.write(&mut f, "a", "new", Some(json!({"n": 1}))).await;
    let purged = f
        .store
        .purge_tombstones(&f.dataset, Utc::now() + chrono::Duration::minutes(1), 100)
        .await
        .unwrap();
    assert!(purged >= 2);
    let ctx = Arc::new(context(&f, 2));
    let run = tokio::spawn({
        let (ctx, stored) = (ctx.clone(), stored(&d));
        async move { sinks::run(&ctx, &stored).await }
    });
    converges(&path, &model, &ctx).await;
    ctx.stop.cancel();
    run.await.unwrap().unwrap();

    // A run of an older claim is fenced off as soon as it writes.
    model
        .write(&mut f, "c", "late", Some(json!({"n": 2})))
        .await;
    let old = context(&f, 1);
    let result = tokio::time::timeout(Duration::from_secs(30), sinks::run(&old, &stored(&d)))
        .await
        .expect("a fenced run ends");
    assert!(matches!(result, Err(PushError::Fenced)), "{result:?}");
    assert!(!rows(&path).contains_key(&("c".to_owned(), "late".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_the_run_and_says_why_without_the_password() {
    let f = Fixture::new().await;
    // Nothing listens on port 1.
    let d = definition("postgres://sink:hunter2@127.0.0.1:1/app", "postgres");
    let ctx = context(&f, 1);
    let error = sinks::run(&ctx, &stored(&d)).await.unwrap_err();
    assert!(
        error.class() == tenantsync_core::ErrorClass::Transient,
        "{error}"
    );
    let status = ctx.figures.snapshot();
    assert_eq!(status.state, "failing");
    assert_eq!(status.failure_streak, 1);
    let shown = status.last_error.unwrap();
    assert!(!shown.contains("hunter2"), "{shown}");

    let refused = sinks::check(&d).await.unwrap_err();
    assert_eq!(refused.field(), "url");
    let message = refused.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}
