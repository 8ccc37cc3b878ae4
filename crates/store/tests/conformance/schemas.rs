//! Schemas: versions per dataset and format added by compare-and-set, ids unique across the
//! store and found again by id, contract settings with their defaults, the generation that
//! tells a cache it is stale, and registrations racing on one dataset.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tenantsync_store::{ContractSettings, MasterStore, SchemaFormat, SchemaPut, StoredSchema};

use crate::common::ds;

const JSON: SchemaFormat = SchemaFormat::Json;
const AVRO: SchemaFormat = SchemaFormat::Avro;

async fn put(
    store: &dyn MasterStore,
    dataset: &str,
    format: SchemaFormat,
    schema: &str,
    expected_latest: u32,
) -> SchemaPut {
    store
        .put_schema(&ds(dataset), format, schema, expected_latest)
        .await
        .expect("put schema")
}

async fn created(
    store: &dyn MasterStore,
    dataset: &str,
    format: SchemaFormat,
    schema: &str,
    expected_latest: u32,
) -> StoredSchema {
    match put(store, dataset, format, schema, expected_latest).await {
        SchemaPut::Created(s) => s,
        other => panic!("{dataset} {format:?} {schema}: expected Created, got {other:?}"),
    }
}

async fn versions(
    store: &dyn MasterStore,
    dataset: &str,
    format: SchemaFormat,
) -> Vec<StoredSchema> {
    store
        .schema_versions(&ds(dataset), format)
        .await
        .expect("schema versions")
}

async fn generation(store: &dyn MasterStore) -> u64 {
    store.schemas_generation().await.expect("generation")
}

pub(crate) async fn schema_versions_and_ids(store: &dyn MasterStore) {
    assert!(versions(store, "items", JSON).await.is_empty());
    assert_eq!(store.schema_by_id(1).await.unwrap(), None);

    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let v1 = created(store, "items", JSON, r#"{"type":"object"}"#, 0).await;
    assert_eq!(
        (
            v1.id,
            v1.dataset.as_str(),
            v1.format,
            v1.version,
            v1.schema.as_str()
        ),
        (1, "items", JSON, 1, r#"{"type":"object"}"#)
    );
    assert!(v1.created_at >= before && v1.created_at <= chrono::Utc::now());
    assert_eq!(
        v1.created_at.timestamp_subsec_nanos() % 1_000,
        0,
        "microseconds"
    );

    // Another format and another dataset count their versions apart, ids across all.
    let a1 = created(store, "items", AVRO, r#"{"type":"record"}"#, 0).await;
    assert_eq!((a1.id, a1.version, a1.format), (2, 1, AVRO));
    let o1 = created(store, "orders", JSON, r#"{"type":"object"}"#, 0).await;
    assert_eq!((o1.id, o1.version, o1.dataset.as_str()), (3, 1, "orders"));
    let v2 = created(store, "items", JSON, r#"{"type":"object","title":"2"}"#, 1).await;
    assert_eq!((v2.id, v2.version), (4, 2));
    // The same text as an earlier (not the latest) version is a new version.
    let v3 = created(store, "items", JSON, r#"{"type":"object"}"#, 2).await;
    assert_eq!((v3.id, v3.version), (5, 3));

    assert_eq!(
        versions(store, "items", JSON).await,
        [v1.clone(), v2.clone(), v3.clone()]
    );
    assert_eq!(
        versions(store, "items", AVRO).await,
        std::slice::from_ref(&a1)
    );
    assert_eq!(
        versions(store, "orders", JSON).await,
        std::slice::from_ref(&o1)
    );
    assert!(versions(store, "orders", AVRO).await.is_empty());
    for s in [&v1, &a1, &o1, &v2, &v3] {
        assert_eq!(store.schema_by_id(s.id).await.unwrap().as_ref(), Some(s));
    }
    assert_eq!(store.schema_by_id(6).await.unwrap(), None);
    assert_eq!(store.schema_by_id(u32::MAX).await.unwrap(), None);

    // Empty and large texts are kept as given.
    let big = format!(r#"{{"description":"{}"}}"#, "é".repeat(200_000));
    let b = created(store, "big", JSON, &big, 0).await;
    assert_eq!(store.schema_by_id(b.id).await.unwrap().unwrap().schema, big);
    let empty = created(store, "empty", AVRO, "", 0).await;
    assert_eq!(versions(store, "empty", AVRO).await, [empty]);
}

pub(crate) async fn schema_puts_compare_and_set(store: &dyn MasterStore) {
    let v1 = created(store, "items", JSON, "one", 0).await;
    let generation_after_v1 = generation(store).await;

    // The same text as the latest: Existing, whatever was expected, and nothing changes.
    for expected in [0, 1, 2, 7] {
        assert_eq!(
            put(store, "items", JSON, "one", expected).await,
            SchemaPut::Existing(v1.clone())
        );
    }
    // A stale or a future expectation: Conflict, nothing changes.
    for expected in [0, 2, 9] {
        assert_eq!(
            put(store, "items", JSON, "two", expected).await,
            SchemaPut::Conflict
        );
    }
    assert_eq!(
        versions(store, "items", JSON).await,
        std::slice::from_ref(&v1)
    );
    assert_eq!(generation(store).await, generation_after_v1);

    let v2 = created(store, "items", JSON, "two", 1).await;
    assert_eq!((v2.version, v2.id), (2, v1.id + 1));
    assert_eq!(
        put(store, "items", JSON, "three", 1).await,
        SchemaPut::Conflict
    );
    assert_eq!(
        put(store, "items", JSON, "two", 1).await,
        SchemaPut::Existing(v2.clone())
    );
    // Not the latest any more: "one" is not Existing, and a stale expectation conflicts.
    assert_eq!(
        put(store, "items", JSON, "one", 1).await,
        SchemaPut::Conflict
    );
    // Expecting versions of one format says nothing about the other.
    assert_eq!(
        put(store, "items", AVRO, "two", 2).await,
        SchemaPut::Conflict
    );
    let a1 = created(store, "items", AVRO, "two", 0).await;
    assert_eq!((a1.version, a1.id), (1, v2.id + 1));
    assert_eq!(versions(store, "items", JSON).await, [v1, v2]);
}

pub(crate) async fn contract_settings_defaults_and_updates(store: &dyn MasterStore) {
    assert_eq!(
        store.contract_settings(&ds("items")).await.unwrap(),
        ContractSettings::default()
    );
    assert_eq!(store.default_compatibility().await.unwrap(), None);

    let full = ContractSettings {
        compatibility: Some("FULL".into()),
        avro: true,
    };
    store
        .set_contract_settings(&ds("items"), &full)
        .await
        .unwrap();
    assert_eq!(store.contract_settings(&ds("items")).await.unwrap(), full);
    assert_eq!(
        store.contract_settings(&ds("orders")).await.unwrap(),
        ContractSettings::default(),
        "datasets never mix"
    );
    let avro_only = ContractSettings {
        compatibility: None,
        avro: true,
    };
    store
        .set_contract_settings(&ds("items"), &avro_only)
        .await
        .unwrap();
    assert_eq!(
        store.contract_settings(&ds("items")).await.unwrap(),
        avro_only
    );
    let mode_only = ContractSettings {
        compatibility: Some("NONE".into()),
        avro: false,
    };
    store
        .set_contract_settings(&ds("orders"), &mode_only)
        .await
        .unwrap();
    assert_eq!(
        store.contract_settings(&ds("orders")).await.unwrap(),
        mode_only
    );
    assert_eq!(
        store.contract_settings(&ds("items")).await.unwrap(),
        avro_only
    );

    store.set_default_compatibility("FORWARD").await.unwrap();
    assert_eq!(
        store.default_compatibility().await.unwrap().as_deref(),
        Some("FORWARD")
    );
    store
        .set_default_compatibility("FULL_TRANSITIVE")
        .await
        .unwrap();
    assert_eq!(
        store.default_compatibility().await.unwrap().as_deref(),
        Some("FULL_TRANSITIVE")
    );
    // The store-wide mode is not a dataset's own.
    assert_eq!(
        store.contract_settings(&ds("items")).await.unwrap(),
        avro_only
    );
}

pub(crate) async fn generation_changes_with_every_write(store: &dyn MasterStore) {
    let mut seen = BTreeSet::new();
    let mut last = generation(store).await;
    seen.insert(last);
    let mut changed = |now: u64, what: &str| {
        assert!(seen.insert(now), "{what}: generation {now} seen before");
        assert!(now > last, "{what}: generation went from {last} to {now}");
        last = now;
    };

    created(store, "items", JSON, "a", 0).await;
    changed(generation(store).await, "a JSON version");
    created(store, "items", AVRO, "a", 0).await;
    changed(generation(store).await, "an Avro version");
    created(store, "orders", JSON, "a", 0).await;
    changed(generation(store).await, "another dataset's version");
    let on = ContractSettings {
        compatibility: None,
        avro: true,
    };
    store
        .set_contract_settings(&ds("items"), &on)
        .await
        .unwrap();
    changed(generation(store).await, "settings");
    let moded = ContractSettings {
        compatibility: Some("FULL".into()),
        avro: true,
    };
    store
        .set_contract_settings(&ds("items"), &moded)
        .await
        .unwrap();
    changed(generation(store).await, "the dataset's mode");
    store.set_default_compatibility("NONE").await.unwrap();
    changed(generation(store).await, "the store-wide mode");

    // What changes nothing may leave the generation alone; it never goes back.
    put(store, "items", JSON, "a", 0).await;
    put(store, "items", JSON, "b", 0).await;
    store
        .set_contract_settings(&ds("items"), &moded)
        .await
        .unwrap();
    store.set_default_compatibility("NONE").await.unwrap();
    assert!(generation(store).await >= last);
}

/// Many instances register versions of one dataset at once, round after round, each expecting
/// the latest it read; others register on a second format meanwhile. No version is created
/// twice, every id is unique and ids rise with versions, and what each caller was told agrees
/// with the history left behind.
pub(crate) async fn schema_registrations_racing_agree_with_the_history(
    store: Arc<dyn MasterStore>,
) {
    const RACERS: usize = 8;
    const ROUNDS: usize = 25;

    #[derive(Debug)]
    struct Told {
        format: SchemaFormat,
        text: String,
        expected: u32,
        put: SchemaPut,
    }

    let mut told = Vec::new();
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    // Three racers in four on JSON, the rest on Avro; pairs share a text, so
                    // that one of a pair may be told Existing.
                    let format = if i % 4 == 3 { AVRO } else { JSON };
                    let text = format!(r#"{{"round":{round},"pair":{}}}"#, i / 2);
                    barrier.wait().await;
                    let expected = store
                        .schema_versions(&ds("items"), format)
                        .await
                        .expect("versions")
                        .last()
                        .map_or(0, |s| s.version);
                    let put = store
                        .put_schema(&ds("items"), format, &text, expected)
                        .await
                        .expect("put schema");
                    Told {
                        format,
                        text,
                        expected,
                        put,
                    }
                })
            })
            .collect();
        for t in tasks {
            told.push(t.await.expect("racer"));
        }
    }

    let mut ids = BTreeMap::new();
    let mut histories = BTreeMap::new();
    for format in [JSON, AVRO] {
        let history = versions(&*store, "items", format).await;
        assert!(!history.is_empty());
        for (i, s) in history.iter().enumerate() {
            assert_eq!(s.version as usize, i + 1, "{format:?}: versions are dense");
            assert_eq!(ids.insert(s.id, s.clone()), None, "id {} twice", s.id);
            assert_eq!(store.schema_by_id(s.id).await.unwrap().as_ref(), Some(s));
        }
        histories.insert(format, history);
    }
    // Ids rise in the order versions were created, whatever their format.
    for history in histories.values() {
        assert!(history.windows(2).all(|w| w[0].id < w[1].id));
    }

    let mut created = BTreeMap::new();
    for t in &told {
        let history = &histories[&t.format];
        match &t.put {
            SchemaPut::Created(s) => {
                assert_eq!(s.version, t.expected + 1, "{t:?}");
                assert_eq!(&history[s.version as usize - 1], s, "{t:?}");
                assert_eq!(s.schema, t.text);
                assert_eq!(created.insert((t.format, s.version), s.id), None, "{t:?}");
            }
            SchemaPut::Existing(s) => {
                assert_eq!(&history[s.version as usize - 1], s, "{t:?}");
                assert_eq!(s.schema, t.text, "{t:?}");
                assert!(s.version >= t.expected, "{t:?}");
            }
            SchemaPut::Conflict => {
                // Someone else created the version this caller meant to create.
                assert!(history.len() > t.expected as usize, "{t:?}");
            }
        }
    }
    // Every version was created by exactly one caller.
    assert_eq!(
        created.len(),
        histories.values().map(Vec::len).sum::<usize>()
    );
    assert!(
        told.iter().any(|t| t.put == SchemaPut::Conflict),
        "the racers raced"
    );
}
