//! The delivery loop against a real SQLite master store and a fake endpoint.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tenantsync_core::{Change, ChangeId, EntityId, Op};
use tenantsync_feed::{CursorKey, FeedCursor, Hub};
use tenantsync_store::sqlite::SqliteStore;
use tenantsync_store::{Dataset, LoggedChange, MasterStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::figures::Figures;
use crate::runner::PushSettings;
use crate::webhooks::WebhookSettings;
use crate::webhooks::definition::WebhookSpec;
use crate::webhooks::replay::{ReplayError, ReplayFrom, replay};

const NAME: &str = "hook";

/// What the fake endpoint answers a tenant's messages.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Fail,
    RetryAfter(u64),
    Gone,
}

#[derive(Debug, Clone)]
struct Sent {
    id: String,
    tenant: String,
    body: Value,
    ok: bool,
}

impl Sent {
    /// `(id, version)` of each change.
    fn changes(&self) -> Vec<(String, u64)> {
        self.body["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["version"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

#[derive(Default)]
struct Fake {
    sent: Mutex<Vec<Sent>>,
    /// Per tenant; `Ok` for a tenant not named.
    answers: Mutex<HashMap<String, Answer>>,
}

impl Fake {
    fn answer(&self, tenant: &str, answer: Answer) {
        self.answers
            .lock()
            .unwrap()
            .insert(tenant.to_owned(), answer);
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    fn sent_to(&self, tenant: &str) -> Vec<Sent> {
        self.sent()
            .into_iter()
            .filter(|s| s.tenant == tenant)
            .collect()
    }
}

#[async_trait]
impl Transport for Arc<Fake> {
    async fn send(&self, message: &Outgoing) -> Attempt {
        let answer = self
            .answers
            .lock()
            .unwrap()
            .get(message.tenant.as_str())
            .copied()
            .unwrap_or(Answer::Ok);
        let (status, retry_after) = match answer {
            Answer::Ok => (200, None),
            Answer::Fail => (500, None),
            Answer::RetryAfter(s) => (503, Some(Duration::from_secs(s))),
            Answer::Gone => (410, None),
        };
        let ok = matches!(answer, Answer::Ok);
        self.sent.lock().unwrap().push(Sent {
            id: message.id.clone(),
            tenant: message.tenant.to_string(),
            body: serde_json::from_slice(&message.body).unwrap(),
            ok,
        });
        Attempt {
            status: Some(status),
            latency: Duration::from_millis(1),
            retry_after,
            gone: status == 410,
            error: (!ok).then(|| format!("answered {status}")),
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn MasterStore>,
    hub: Arc<Hub>,
    key: Arc<CursorKey>,
    dataset: DatasetName,
    next_offset: u64,
}

impl Fixture {
    async fn new() -> Self {
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
            key: Arc::new(CursorKey::new(b"test key")),
            dataset,
            next_offset: 0,
        }
    }

    /// Applies an upsert (or a delete, for `None`) as the processor does, and tells the hub.
    async fn write(&mut self, tenant: &str, id: &str, data: Option<Value>) {
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
            data: data.map(|d| d.as_object().cloned().unwrap()),
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
        self.hub
            .notify(&self.dataset, &[TenantId::new(tenant).unwrap()]);
    }

    /// Creates the endpoint covering `tenants`.
    async fn endpoint(&self, tenants: Value) -> StoredPush {
        let spec: WebhookSpec = serde_json::from_value(json!({
            "url": "https://example.com/hook", "datasets": ["items"], "tenants": tenants,
        }))
        .unwrap();
        let (definition, _) = Definition::from_spec(spec, None).unwrap();
        let (_, stored) = self
            .store
            .put_push(
                PushKind::Webhook,
                NAME,
                &definition.to_json(),
                Some(0),
                Utc::now(),
            )
            .await
            .unwrap();
        stored.unwrap()
    }

    async fn stored(&self) -> StoredPush {
        self.store
            .push(PushKind::Webhook, NAME)
            .await
            .unwrap()
            .unwrap()
    }

    /// Starts delivering the endpoint as stored now, under a new claim, retrying at once.
    async fn start(&self, fake: &Arc<Fake>) -> Run {
        self.start_with(
            fake,
            WebhookSettings {
                retry_schedule: vec![Duration::from_millis(20)],
                ..WebhookSettings::default()
            },
        )
        .await
    }

    async fn start_with(&self, fake: &Arc<Fake>, settings: WebhookSettings) -> Run {
        let stored = self.stored().await;
        let definition = Definition::parse(&stored.definition).unwrap();
        let epoch = self
            .store
            .claim_push(
                PushKind::Webhook,
                NAME,
                "test",
                Utc::now().timestamp_millis(),
                60_000,
            )
            .await
            .unwrap()
            .unwrap();
        let figures = Arc::new(Figures::default());
        let stop = CancellationToken::new();
        let ctx = TargetContext {
            kind: PushKind::Webhook,
            name: NAME.into(),
            epoch,
            created_at: stored.created_at,
            store: self.store.clone(),
            hub: self.hub.clone(),
            cursor_key: self.key.clone(),
            figures: figures.clone(),
            settings: Arc::new(PushSettings { webhooks: settings }),
            stop: stop.clone(),
        };
        let fake = fake.clone();
        let task = tokio::spawn(async move { deliver(&ctx, &stored, &definition, fake).await });
        Run {
            task,
            stop,
            figures,
        }
    }

    /// Changes the stored definition, as an operator would.
    async fn redefine(&self, change: impl FnOnce(&mut Definition)) {
        let stored = self.stored().await;
        let mut definition = Definition::parse(&stored.definition).unwrap();
        change(&mut definition);
        let (put, _) = self
            .store
            .put_push(
                PushKind::Webhook,
                NAME,
                &definition.to_json(),
                Some(stored.revision),
                Utc::now(),
            )
            .await
            .unwrap();
        assert_eq!(put, PushPut::Updated);
    }

    async fn replay(&self, from: ReplayFrom) -> Result<usize, ReplayError> {
        let definition = Definition::parse(&self.stored().await.definition).unwrap();
        replay(
            self.store.as_ref(),
            &self.hub,
            &self.key,
            NAME,
            &definition,
            from,
        )
        .await
    }

    async fn progress(&self, tenant: &str) -> Option<PushProgress> {
        self.store
            .push_progress(PushKind::Webhook, NAME)
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.tenant.as_str() == tenant)
    }
}

struct Run {
    task: JoinHandle<Result<(), PushError>>,
    stop: CancellationToken,
    figures: Arc<Figures>,
}

impl Run {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn data(n: u64) -> Option<Value> {
    Some(json!({ "n": n }))
}

/// Polls `condition` until it holds, failing the test after 10 s.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Each tenant's attempts in order: a failed message is tried again, unchanged in id, before
/// anything newer of the tenant is sent.
fn assert_in_order(sent: &[Sent]) {
    let mut last: HashMap<&str, &Sent> = HashMap::new();
    for s in sent {
        if let Some(previous) = last.get(s.tenant.as_str())
            && !previous.ok
        {
            assert_eq!(
                s.id, previous.id,
                "a message was sent before the one before it"
            );
        }
        last.insert(&s.tenant, s);
    }
}

#[tokio::test]
async fn retries_carry_the_same_id_and_never_more_records_and_order_is_kept() {
    let mut f = Fixture::new().await;
    f.endpoint(json!(["a"])).await;
    for (id, n) in [("x", 1), ("y", 1), ("z", 1)] {
        f.write("a", id, data(n)).await;
    }
    let fake = Arc::new(Fake::default());
    fake.answer("a", Answer::Fail);
    let run = f.start(&fake).await;
    until("a first attempt", || !fake.sent().is_empty()).await;
    // Written again while its message is being retried, and a new record.
    f.write("a", "y", data(2)).await;
    f.write("a", "w", data(1)).await;
    let n = fake.sent().len();
    // The second attempt from here on was read after the writes.
    until("retries after the writes", || fake.sent().len() >= n + 2).await;
    fake.answer("a", Answer::Ok);
    until("the new records delivered", || {
        fake.sent()
            .iter()
            .any(|s| s.ok && s.changes().contains(&("w".into(), 1)))
    })
    .await;
    run.stop().await;

    let sent = fake.sent();
    assert_in_order(&sent);
    let first = &sent[0];
    assert_eq!(
        first.changes(),
        [("x".into(), 1), ("y".into(), 1), ("z".into(), 1)]
    );
    let retries: Vec<&Sent> = sent.iter().filter(|s| s.id == first.id).collect();
    assert!(retries.len() >= n + 2, "{retries:?}");
    for retry in &retries {
        for change in retry.changes() {
            assert!(first.changes().contains(&change), "{retry:?}");
        }
        assert_eq!(retry.body["cursor"], first.body["cursor"]);
    }
    // The rewritten record left the message and came in the next one.
    let last_retry = retries.last().unwrap();
    assert_eq!(last_retry.changes(), [("x".into(), 1), ("z".into(), 1)]);
    let next = sent.iter().find(|s| s.id != first.id).unwrap();
    assert_eq!(next.changes(), [("y".into(), 2), ("w".into(), 1)]);
    // Everything delivered: the position is at the end, nothing in flight.
    let p = f.progress("a").await.unwrap();
    assert_eq!(p.state, None);
    assert_eq!(p.position.next_seq, 5);
}

#[tokio::test]
async fn a_message_in_flight_keeps_its_id_under_another_holder_and_honours_retry_after() {
    let mut f = Fixture::new().await;
    f.endpoint(json!(["a"])).await;
    f.write("a", "x", data(1)).await;
    let fake = Arc::new(Fake::default());
    fake.answer("a", Answer::RetryAfter(3600));
    let run = f.start(&fake).await;
    until("an attempt", || !fake.sent().is_empty()).await;
    let mut stored = None;
    for _ in 0..1000 {
        stored = f.progress("a").await.filter(|p| p.state.is_some());
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stored = stored.expect("the message in flight is stored");
    let flight = InFlight::parse(stored.state.as_deref()).unwrap();
    assert_eq!(flight.attempts, 1);
    assert!(
        flight.next_attempt_at - stored.updated_at >= chrono::Duration::seconds(3600),
        "{flight:?}"
    );
    until("the state shown", || {
        run.figures.snapshot().state == "failing"
    })
    .await;
    run.stop().await;
    assert_eq!(fake.sent().len(), 1, "the retry waits an hour");

    // Another holder, once the definition changed (the receiver is fixed), sends it again at
    // once, with the same id.
    f.redefine(|d| {
        d.headers.insert("x-fixed".into(), "1".into());
    })
    .await;
    fake.answer("a", Answer::Ok);
    let run = f.start(&fake).await;
    until("the retry", || fake.sent().len() == 2).await;
    run.stop().await;
    let sent = fake.sent();
    assert_eq!(sent[0].id, sent[1].id);
    assert!(sent[1].ok);
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_keeps_its_positions() {
    let mut f = Fixture::new().await;
    f.endpoint(json!(["a"])).await;
    f.write("a", "x", data(1)).await;
    let fake = Arc::new(Fake::default());
    let run = f.start(&fake).await;
    until("the first message", || fake.sent().len() == 1).await;
    fake.answer("a", Answer::Gone);
    f.write("a", "y", data(1)).await;
    // The run ends by itself.
    run.task.await.unwrap().unwrap();
    assert_eq!(run.figures.snapshot().state, "disabled");
    let stored = f.stored().await;
    let definition = Definition::parse(&stored.definition).unwrap();
    assert!(!definition.runs());
    assert!(
        definition.disabled.as_ref().unwrap().reason.contains("410"),
        "{definition:?}"
    );
    assert!(!super::super::runs(&stored));
    let p = f.progress("a").await.unwrap();
    assert_eq!(p.position.next_seq, 1, "the delivered message's position");
    assert!(p.state.is_some(), "the message that got 410 is kept");

    // Enabled again: it resumes with that message.
    f.redefine(|d| d.disabled = None).await;
    fake.answer("a", Answer::Ok);
    let run = f.start(&fake).await;
    until("the message again", || fake.sent().len() == 3).await;
    run.stop().await;
    let sent = fake.sent();
    assert_eq!(sent[1].id, sent[2].id);
    assert_eq!(sent[2].changes(), [("y".into(), 1)]);
}

#[tokio::test]
async fn an_endpoint_failing_too_long_is_disabled() {
    let mut f = Fixture::new().await;
    f.endpoint(json!(["a"])).await;
    f.write("a", "x", data(1)).await;
    let fake = Arc::new(Fake::default());
    fake.answer("a", Answer::Fail);
    let run = f
        .start_with(
            &fake,
            WebhookSettings {
                retry_schedule: vec![Duration::from_millis(20)],
                disable_after: Duration::from_millis(300),
                ..WebhookSettings::default()
            },
        )
        .await;
    tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .expect("the run ends by itself")
        .unwrap()
        .unwrap();
    let definition = Definition::parse(&f.stored().await.definition).unwrap();
    assert!(
        definition
            .disabled
            .unwrap()
            .reason
            .contains("no delivery succeeded")
    );
    assert!(fake.sent().len() > 1);
    // The attempts were written.
    let attempts = f
        .store
        .push_attempts(PushKind::Webhook, NAME, 10_000)
        .await
        .unwrap();
    assert_eq!(attempts.len(), fake.sent().len());
    assert!(attempts.iter().all(|a| a.status == Some(500)));
}

#[tokio::test]
async fn a_failing_tenant_does_not_hold_up_another() {
    let mut f = Fixture::new().await;
    f.endpoint(json!("*")).await;
    f.write("a", "x", data(1)).await;
    f.write("b", "x", data(1)).await;
    let fake = Arc::new(Fake::default());
    fake.answer("a", Answer::Fail);
    let run = f.start(&fake).await;
    until("b's first message", || fake.sent_to("b").len() == 1).await;
    for n in 2..=4 {
        f.write("b", "x", data(n)).await;
        until("b's next message", || {
            fake.sent_to("b")
                .iter()
                .any(|s| s.changes() == [("x".into(), n)])
        })
        .await;
    }
    until("a retried", || fake.sent_to("a").len() > 1).await;
    assert!(fake.sent_to("a").iter().all(|s| !s.ok));
    fake.answer("a", Answer::Ok);
    until("a delivered", || fake.sent_to("a").iter().any(|s| s.ok)).await;
    run.stop().await;
    assert_in_order(&fake.sent());
}

#[tokio::test]
async fn a_tenant_behind_tombstone_retention_is_sent_a_reset_even_when_empty() {
    let mut f = Fixture::new().await;
    f.endpoint(json!(["a"])).await;
    f.write("a", "x", data(1)).await;
    f.write("a", "y", data(1)).await;
    let fake = Arc::new(Fake::default());
    let run = f.start(&fake).await;
    until("the snapshot", || fake.sent().len() == 1).await;
    run.stop().await;
    assert!(fake.sent()[0].body.get("reset").is_none());

    f.write("a", "x", None).await;
    let purge = |f: &Fixture| {
        let (store, hub, dataset) = (f.store.clone(), f.hub.clone(), f.dataset.clone());
        async move {
            let purged = store
                .purge_tombstones(&dataset, Utc::now() + chrono::Duration::seconds(1), 100)
                .await
                .unwrap();
            assert!(purged > 0);
            hub.purged(&dataset, purged);
        }
    };
    purge(&f).await;
    let run = f.start(&fake).await;
    until("the reset", || fake.sent().len() == 2).await;
    run.stop().await;
    let reset = &fake.sent()[1];
    assert_eq!(reset.body["reset"], true);
    assert_eq!(reset.changes(), [("y".into(), 1)]);

    // Everything deleted and purged: the reset has no record, and is sent all the same.
    f.write("a", "y", None).await;
    purge(&f).await;
    let run = f.start(&fake).await;
    until("the empty reset", || fake.sent().len() == 3).await;
    run.stop().await;
    let reset = &fake.sent()[2];
    assert_eq!(reset.body["reset"], true);
    assert!(reset.changes().is_empty());
}

#[tokio::test]
async fn replay_since_a_time_and_from_a_cursor() {
    let mut f = Fixture::new().await;
    f.endpoint(json!(["a", "b"])).await;
    f.write("a", "x", data(1)).await;
    f.write("b", "x", data(1)).await;
    let since = Utc::now();
    f.write("a", "y", data(1)).await;
    f.write("a", "z", data(1)).await;
    f.write("a", "z", None).await;
    let fake = Arc::new(Fake::default());
    let run = f.start(&fake).await;
    until("both tenants", || {
        fake.sent_to("a").len() == 1 && fake.sent_to("b").len() == 1
    })
    .await;
    run.stop().await;
    let snapshot = fake.sent_to("a")[0].clone();
    assert_eq!(snapshot.changes(), [("x".into(), 1), ("y".into(), 1)]);

    let moved = f.replay(ReplayFrom::Since(since)).await.unwrap();
    assert_eq!(moved, 1, "b has nothing since");
    let run = f.start(&fake).await;
    until("the replay", || fake.sent_to("a").len() == 2).await;
    run.stop().await;
    // Since the time, the delete included; b untouched.
    let replayed = &fake.sent_to("a")[1];
    let ids: Vec<String> = replayed.changes().into_iter().map(|c| c.0).collect();
    assert_eq!(ids, ["y", "z"]);
    assert_eq!(replayed.body["changes"][1]["op"], "delete");
    assert_eq!(fake.sent_to("b").len(), 1);

    // From the cursor of b's first message, after b moved on.
    let cursor = fake.sent_to("b")[0].body["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    f.write("b", "y", data(1)).await;
    let run = f.start(&fake).await;
    until("b's second message", || fake.sent_to("b").len() == 2).await;
    run.stop().await;
    let moved = f.replay(ReplayFrom::Cursor(cursor)).await.unwrap();
    assert_eq!(moved, 1);
    let run = f.start(&fake).await;
    until("b again", || fake.sent_to("b").len() == 3).await;
    run.stop().await;
    assert_eq!(fake.sent_to("b")[2].changes(), [("y".into(), 1)]);
    // A replay never moves a position forward: the cursor of b's last message is where b is.
    let last = fake.sent_to("b")[2].body["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(f.replay(ReplayFrom::Cursor(last)).await.unwrap(), 0);

    // A cursor of a tenant the endpoint does not cover is refused.
    let foreign = FeedCursor {
        dataset: f.dataset.clone(),
        tenant: TenantId::new("c").unwrap(),
        position: FeedPosition::default(),
    }
    .encode(&f.key);
    let refused = f.replay(ReplayFrom::Cursor(foreign)).await;
    assert!(
        matches!(refused, Err(ReplayError::NotCovered("tenant"))),
        "{refused:?}"
    );
}
