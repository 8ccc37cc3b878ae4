//! `Schemas` over a real store: registration under the rules, the contract cache, what another
//! instance on the same store sees, and Avro versions derived when a dataset asks for Avro.
//! Every case runs on SQLite, and on PostgreSQL when `TENANTSYNC_TEST_POSTGRES` is set (a
//! schema of its own per case).

#[path = "../../store/tests/common/pg_schema.rs"]
mod pg_schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantsync_core::{DatasetName, Object, Topics};
use tenantsync_schema::{Compatibility, RegisterError, Schemas};
use tenantsync_store::{MasterStore, SchemaFormat, StoredSchema};
use tenantsync_supervisor::{RestartPolicy, Supervisor};

use pg_schema::PgSchema;

/// Two instances' stores on one database, and what keeps it alive.
struct Shared {
    one: Arc<dyn MasterStore>,
    two: Arc<dyn MasterStore>,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgSchema>,
}

async fn sqlite() -> Option<Shared> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let open = || tenantsync_store::sqlite::SqliteStore::open(&path);
    let one: Arc<dyn MasterStore> = Arc::new(open().await.unwrap());
    let two: Arc<dyn MasterStore> = Arc::new(open().await.unwrap());
    Some(Shared {
        one,
        two,
        _dir: Some(dir),
        _pg: None,
    })
}

async fn postgres() -> Option<Shared> {
    let pg = PgSchema::create().await?;
    let connect = || tenantsync_store::postgres::PostgresStore::connect(&pg.url);
    let one: Arc<dyn MasterStore> = Arc::new(connect().await.unwrap());
    let two: Arc<dyn MasterStore> = Arc::new(connect().await.unwrap());
    Some(Shared {
        one,
        two,
        _dir: None,
        _pg: Some(pg),
    })
}

/// Every case, on both backends.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(s) = crate::sqlite().await else { return };
                    crate::$case(&s).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(s) = crate::postgres().await else { return };
                    crate::$case(&s).await;
                }
            )*
        }
    };
}

cases!(
    registers_versions_and_the_same_text_is_not_a_new_one,
    incompatible_schemas_are_refused_with_their_breaks,
    a_given_compatibility_becomes_the_datasets_mode,
    invalid_schemas_are_refused,
    another_instance_sees_a_registration_after_the_generation_changes,
    the_schemas_service_applies_other_instances_registrations,
    turning_avro_on_derives_a_version,
    avro_schemas_given_directly_are_checked_with_avros_rules,
);

fn ds(name: &str) -> DatasetName {
    DatasetName::new(name).unwrap()
}

fn obj(value: Value) -> Object {
    value.as_object().unwrap().clone()
}

fn schemas(store: &Arc<dyn MasterStore>) -> Schemas {
    Schemas::new(Arc::clone(store), Topics::new("tenantsync"))
}

async fn versions(s: &Shared, dataset: &DatasetName, format: SchemaFormat) -> Vec<StoredSchema> {
    s.one.schema_versions(dataset, format).await.unwrap()
}

fn person() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"}
        },
        "required": ["name"]
    })
}

/// `person` with an optional field more: with closed content (`closed`), a backward-compatible
/// change.
fn person_with_email() -> Value {
    let mut schema = person();
    schema["properties"]["email"] = json!({"type": "string"});
    schema
}

/// `person` with `name` as an integer: incompatible in every mode but NONE.
fn person_with_numeric_name() -> Value {
    let mut schema = person();
    schema["properties"]["name"] = json!({"type": "integer"});
    schema
}

async fn registers_versions_and_the_same_text_is_not_a_new_one(s: &Shared) {
    let schemas = schemas(&s.one);
    let people = ds("people");
    let contract = schemas.contract(&people).await.unwrap();
    assert!(contract.json.is_none() && !contract.avro && contract.avro_versions.is_empty());
    assert!(contract.validate(&obj(json!({"name": 1}))).is_ok());

    let first = schemas
        .register_json(&people, &closed(person()), None)
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!((first.schema.version, first.schema.id), (1, 1));
    assert_eq!(first.schema.format, SchemaFormat::Json);
    assert!(first.avro.is_none());
    // Stored in one spelling: compact, keys in order.
    assert_eq!(
        first.schema.schema,
        r#"{"additionalProperties":false,"properties":{"age":{"type":"integer"},"name":{"type":"string"}},"required":["name"],"type":"object"}"#
    );

    // This instance's registration applies to its own cache at once.
    let contract = schemas.contract(&people).await.unwrap();
    let json = contract.json.as_ref().expect("a JSON version");
    assert_eq!((json.version, json.id), (1, 1));
    assert!(contract.validate(&obj(json!({"name": "Ada"}))).is_ok());
    let violations = contract.validate(&obj(json!({"name": 1}))).unwrap_err();
    assert_eq!(violations[0].pointer, "/name");
    assert!(contract.validate(&obj(json!({"age": 3}))).is_err());

    // The same schema again, whatever its keys' order or spacing: not a new version.
    let same: Value = serde_json::from_str(
        r#"{ "required": ["name"], "properties": {"age": {"type": "integer"},
             "name": {"type": "string"}}, "type": "object", "additionalProperties": false }"#,
    )
    .unwrap();
    let again = schemas.register_json(&people, &same, None).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.schema, first.schema);

    let second = schemas
        .register_json(&people, &closed(person_with_email()), None)
        .await
        .unwrap();
    assert!(second.created);
    assert_eq!((second.schema.version, second.schema.id), (2, 2));
    let contract = schemas.contract(&people).await.unwrap();
    assert_eq!(contract.json.as_ref().unwrap().version, 2);
    assert_eq!(
        versions(s, &people, SchemaFormat::Json).await,
        [first.schema, second.schema]
    );
    // Another dataset's versions start at 1, its ids after every other's.
    let other = schemas
        .register_json(&ds("others"), &person(), None)
        .await
        .unwrap();
    assert_eq!((other.schema.version, other.schema.id), (1, 3));
}

async fn incompatible_schemas_are_refused_with_their_breaks(s: &Shared) {
    let schemas = schemas(&s.one);
    let people = ds("people");
    assert_eq!(
        schemas.compatibility(Some(&people)).await.unwrap(),
        Compatibility::Backward,
        "the default mode"
    );
    schemas
        .register_json(&people, &person(), None)
        .await
        .unwrap();
    let generation = s.one.schemas_generation().await.unwrap();
    match schemas
        .register_json(&people, &person_with_numeric_name(), None)
        .await
    {
        Err(RegisterError::Incompatible { mode, breaks }) => {
            assert_eq!(mode, Compatibility::Backward);
            assert!(!breaks.is_empty());
            assert!(
                breaks
                    .iter()
                    .all(|b| b.version == 1 && b.pointer.starts_with("/properties/name")),
                "{breaks:?}"
            );
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    // Nothing was stored, and the contract is the first version's.
    assert_eq!(s.one.schemas_generation().await.unwrap(), generation);
    assert_eq!(versions(s, &people, SchemaFormat::Json).await.len(), 1);
    let contract = schemas.contract(&people).await.unwrap();
    assert_eq!(contract.json.as_ref().unwrap().version, 1);

    // The store-wide mode applies to datasets without one of their own.
    schemas
        .set_compatibility(None, Compatibility::None)
        .await
        .unwrap();
    assert_eq!(
        schemas.compatibility(None).await.unwrap(),
        Compatibility::None
    );
    assert_eq!(
        schemas.compatibility(Some(&people)).await.unwrap(),
        Compatibility::None
    );
    let accepted = schemas
        .register_json(&people, &person_with_numeric_name(), None)
        .await
        .unwrap();
    assert!(accepted.created);
    assert_eq!(accepted.schema.version, 2);
    // A dataset's own mode wins over the store-wide one.
    schemas
        .set_compatibility(Some(&people), Compatibility::FullTransitive)
        .await
        .unwrap();
    assert_eq!(
        schemas.compatibility(Some(&people)).await.unwrap(),
        Compatibility::FullTransitive
    );
    assert_eq!(
        schemas.compatibility(Some(&ds("others"))).await.unwrap(),
        Compatibility::None
    );
    assert!(matches!(
        schemas.register_json(&people, &person(), None).await,
        Err(RegisterError::Incompatible {
            mode: Compatibility::FullTransitive,
            ..
        })
    ));
}

async fn a_given_compatibility_becomes_the_datasets_mode(s: &Shared) {
    let schemas = schemas(&s.one);
    let people = ds("people");
    schemas
        .register_json(&people, &person(), Some(Compatibility::Forward))
        .await
        .unwrap();
    assert_eq!(
        schemas.compatibility(Some(&people)).await.unwrap(),
        Compatibility::Forward
    );
    assert_eq!(
        s.one
            .contract_settings(&people)
            .await
            .unwrap()
            .compatibility
            .as_deref(),
        Some(Compatibility::Forward.as_str())
    );
    // Given with the registration, the mode applies to that very registration.
    let registered = schemas
        .register_json(
            &people,
            &person_with_numeric_name(),
            Some(Compatibility::None),
        )
        .await
        .unwrap();
    assert!(registered.created);
    assert_eq!(
        schemas.compatibility(Some(&people)).await.unwrap(),
        Compatibility::None
    );
    assert_eq!(
        schemas.compatibility(Some(&ds("others"))).await.unwrap(),
        Compatibility::Backward,
        "only this dataset's mode changed"
    );
}

async fn invalid_schemas_are_refused(s: &Shared) {
    let schemas = schemas(&s.one);
    let people = ds("people");
    for schema in [
        json!({"type": 12}),
        json!({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}),
        json!({"type": "object", "properties": {"a": {"minimum": "low"}}}),
    ] {
        match schemas.register_json(&people, &schema, None).await {
            Err(RegisterError::Invalid(_)) => {}
            other => panic!("{schema}: expected Invalid, got {other:?}"),
        }
    }
    assert!(versions(s, &people, SchemaFormat::Json).await.is_empty());
    assert_eq!(s.one.schemas_generation().await.unwrap(), 0);
    assert!(matches!(
        schemas.register_avro(&people, "{not avro").await,
        Err(RegisterError::Invalid(_))
    ));
}

async fn another_instance_sees_a_registration_after_the_generation_changes(s: &Shared) {
    let (here, there) = (schemas(&s.one), schemas(&s.two));
    let people = ds("people");
    // The first refresh finds a generation it never saw.
    here.refresh().await.unwrap();
    assert!(!here.refresh().await.unwrap(), "nothing changed");
    let cached = here.contract(&people).await.unwrap();
    assert!(cached.json.is_none());

    there.register_json(&people, &person(), None).await.unwrap();
    // Until the generation is read again, this instance answers from its cache.
    assert!(here.contract(&people).await.unwrap().json.is_none());
    assert!(here.refresh().await.unwrap());
    let contract = here.contract(&people).await.unwrap();
    assert_eq!(contract.json.as_ref().unwrap().version, 1);
    assert!(contract.validate(&obj(json!({"name": 7}))).is_err());
    assert!(!here.refresh().await.unwrap());

    // Settings changed elsewhere are seen the same way.
    there
        .set_compatibility(Some(&people), Compatibility::None)
        .await
        .unwrap();
    assert!(here.refresh().await.unwrap());
    there
        .register_json(&people, &person_with_numeric_name(), None)
        .await
        .unwrap();
    assert!(here.refresh().await.unwrap());
    let contract = here.contract(&people).await.unwrap();
    assert_eq!(contract.json.as_ref().unwrap().version, 2);
    assert!(contract.validate(&obj(json!({"name": 7}))).is_ok());
}

/// `schema` with a closed content model, as Avro derivation needs.
fn closed(mut schema: Value) -> Value {
    schema["additionalProperties"] = json!(false);
    schema
}

async fn the_schemas_service_applies_other_instances_registrations(s: &Shared) {
    let (here, there) = (Arc::new(schemas(&s.one)), schemas(&s.two));
    let people = ds("people");
    let supervisor = Supervisor::new(RestartPolicy::default());
    here.supervise(&supervisor);
    assert!(here.contract(&people).await.unwrap().json.is_none());
    there.register_json(&people, &person(), None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while here.contract(&people).await.unwrap().json.is_none() {
        assert!(
            Instant::now() < deadline,
            "the registration never applied here"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = supervisor.statuses();
    assert!(status.iter().any(|s| s.name == "schemas"), "{status:?}");
    supervisor.shutdown(Duration::from_secs(10)).await.unwrap();
}

async fn turning_avro_on_derives_a_version(s: &Shared) {
    let (schemas, there) = (schemas(&s.one), schemas(&s.two));
    let people = ds("people-v2");
    schemas
        .register_json(&people, &closed(person()), None)
        .await
        .unwrap();
    there.contract(&people).await.unwrap();
    schemas.set_avro(&people, true).await.unwrap();

    let avro = versions(s, &people, SchemaFormat::Avro).await;
    assert_eq!(avro.len(), 1);
    assert_eq!((avro[0].version, avro[0].id), (1, 2));
    let parsed: Value = serde_json::from_str(&avro[0].schema).unwrap();
    assert_eq!(parsed["type"], "record");
    assert_eq!(parsed["name"], "people_v2");
    assert!(s.one.contract_settings(&people).await.unwrap().avro);
    let contract = schemas.contract(&people).await.unwrap();
    assert!(contract.avro);
    assert_eq!(contract.avro_versions.len(), 1);
    assert_eq!(contract.avro_versions[0].id, avro[0].id);
    assert!(there.refresh().await.unwrap());
    assert!(there.contract(&people).await.unwrap().avro);

    // Turning it on again changes nothing; a new JSON version brings its Avro one.
    schemas.set_avro(&people, true).await.unwrap();
    assert_eq!(versions(s, &people, SchemaFormat::Avro).await, avro);
    let registered = schemas
        .register_json(&people, &closed(person_with_email()), None)
        .await
        .unwrap();
    assert!(registered.created);
    let derived = registered.avro.expect("an Avro version derived");
    assert_eq!((derived.version, derived.format), (2, SchemaFormat::Avro));
    assert!(derived.id > registered.schema.id);
    let contract = schemas.contract(&people).await.unwrap();
    assert_eq!(
        contract
            .avro_versions
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        [2, 1],
        "newest first"
    );
    assert_eq!(contract.avro_versions[0].id, derived.id);

    // While Avro is on, a JSON Schema without an Avro equivalent is refused, and nothing is
    // stored.
    assert!(matches!(
        schemas
            .register_json(&people, &person_with_email(), None)
            .await,
        Err(RegisterError::Invalid(_))
    ));
    assert_eq!(versions(s, &people, SchemaFormat::Json).await.len(), 2);

    // Off: no Avro, the versions stay.
    schemas.set_avro(&people, false).await.unwrap();
    let contract = schemas.contract(&people).await.unwrap();
    assert!(!contract.avro);
    assert_eq!(contract.avro_versions.len(), 2);

    // A schema with no Avro equivalent (an open object): refused, and the setting stays off.
    let open = ds("open");
    schemas.register_json(&open, &person(), None).await.unwrap();
    let generation = s.one.schemas_generation().await.unwrap();
    assert!(matches!(
        schemas.set_avro(&open, true).await,
        Err(RegisterError::Invalid(_))
    ));
    assert!(!s.one.contract_settings(&open).await.unwrap().avro);
    assert!(versions(s, &open, SchemaFormat::Avro).await.is_empty());
    assert_eq!(s.one.schemas_generation().await.unwrap(), generation);

    // Turning Avro on with no JSON Schema registers nothing yet.
    let empty = ds("empty");
    schemas.set_avro(&empty, true).await.unwrap();
    assert!(schemas.contract(&empty).await.unwrap().avro);
    assert!(versions(s, &empty, SchemaFormat::Avro).await.is_empty());
}

async fn avro_schemas_given_directly_are_checked_with_avros_rules(s: &Shared) {
    let schemas = schemas(&s.one);
    let orders = ds("orders");
    let v1 = r#"{"type":"record","name":"orders","fields":[{"name":"id","type":"string"}]}"#;
    // A field added with a default: readable both ways.
    let v2 = r#"{"type":"record","name":"orders","fields":[{"name":"id","type":"string"},
        {"name":"qty","type":"long","default":0}]}"#;
    // A field whose type changed: readable neither way.
    let bad = r#"{"type":"record","name":"orders","fields":[{"name":"id","type":"boolean"}]}"#;

    let first = schemas.register_avro(&orders, v1).await.unwrap();
    assert!(first.created);
    assert_eq!(
        (first.schema.version, first.schema.format),
        (1, SchemaFormat::Avro)
    );
    let again = schemas.register_avro(&orders, v1).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.schema, first.schema);

    assert!(
        schemas
            .check_avro(&orders, v2, None)
            .await
            .unwrap()
            .is_empty()
    );
    let breaks = schemas.check_avro(&orders, bad, None).await.unwrap();
    assert!(
        !breaks.is_empty() && breaks.iter().all(|b| b.version == 1),
        "{breaks:?}"
    );
    assert_eq!(
        schemas.check_avro(&orders, bad, Some(1)).await.unwrap(),
        breaks
    );
    assert!(matches!(
        schemas.register_avro(&orders, bad).await,
        Err(RegisterError::Incompatible { .. })
    ));
    let second = schemas.register_avro(&orders, v2).await.unwrap();
    assert!(second.created);
    assert_eq!(second.schema.version, 2);
    assert!(matches!(
        schemas.check_avro(&orders, v2, Some(3)).await,
        Err(RegisterError::Invalid(_))
    ));
    let contract = schemas.contract(&orders).await.unwrap();
    assert_eq!(
        contract
            .avro_versions
            .iter()
            .map(|v| v.id)
            .collect::<Vec<_>>(),
        [second.schema.id, first.schema.id]
    );
}
