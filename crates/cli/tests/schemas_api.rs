//! Data contracts over HTTP, through the real binary with authentication on:
//!
//! - **Dataset schemas** (`/v1/datasets/{dataset}/schema`): registered (201), identical again
//!   (200), refused as invalid or with a remote `$ref` (422, `errors` with pointers) or as
//!   incompatible (409, `breaks`), 400 for bad bodies, 404 for undeclared datasets and missing
//!   versions; read back latest, listed, by version; admin to register, any scope on the
//!   dataset to read.
//! - **Violations**: registering over records that violate the schema reports their count and
//!   the first 10 examples, read page by page across tenants (more records than one page).
//! - **Formats**: `"formats": ["json", "avro"]` in a declaration, shown back, refused when
//!   malformed (400 naming `formats`) or when the latest schema has no Avro equivalent (422),
//!   turned off by declaring again without it.
//! - **The Schema-Registry-compatible API** (`/v1/schema-registry`): every route with its
//!   media type and Confluent's error codes, reading with a token that reads the dataset,
//!   registering and setting modes with admin, HTTP Basic with the token as password, 404 for
//!   associations; and, when `TENANTSYNC_TEST_PYTHON` is set, confluent-kafka's own
//!   `SchemaRegistryClient`, `AvroSerializer` and `AvroDeserializer` against it.

mod common;

use std::process::Command;

use common::{Server, create_token};
use reqwest::Method;
use serde_json::{Value, json};

const SR: &str = "/v1/schema-registry";
const SR_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const PROBLEM: &str = "application/problem+json";
const SUBJECT: &str = "tenantsync.items.state.avro-value";

/// A server with authentication on, an admin token, and `items` and `users` declared.
struct Secured {
    server: Server,
    _dir: tempfile::TempDir,
    admin: String,
    http: reqwest::Client,
}

/// An answer: status, content type, body (`Null` when not JSON).
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.status, self.content_type, self.body)
    }
}

impl Secured {
    async fn start() -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let admin = create_token(dir.path(), "admin", &["admin"]);
        let server = Server::start_secure(
            dir.path(),
            &[
                "--tenant-write-rate",
                "1000000",
                "--tenant-write-burst",
                "1000000",
            ],
        )
        .await;
        let secured = Secured {
            server,
            _dir: dir,
            admin,
            http: reqwest::Client::new(),
        };
        for dataset in ["items", "users"] {
            let a = secured
                .send(
                    &secured.admin,
                    Method::PUT,
                    &format!("/v1/datasets/{dataset}"),
                    Some(json!({"partitions": 2})),
                )
                .await;
            assert_eq!(a.status, 201, "{a:?}");
        }
        secured
    }

    async fn answer(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        Answer {
            status,
            content_type,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    async fn send(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self
            .http
            .request(method, self.server.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::answer(request.send().await.unwrap()).await
    }

    /// A request to the registry API as Schema Registry clients send it.
    async fn sr(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self
            .http
            .request(method, self.server.url(&format!("{SR}{path}")))
            .bearer_auth(token)
            .header("Accept", SR_TYPE);
        if let Some(body) = body {
            request = request
                .header("Content-Type", SR_TYPE)
                .body(body.to_string());
        }
        Self::answer(request.send().await.unwrap()).await
    }

    async fn token(&self, name: &str, scopes: &[&str]) -> String {
        let a = self
            .send(
                &self.admin,
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": name, "scopes": scopes})),
            )
            .await;
        assert_eq!(a.status, 201, "{a:?}");
        a.body["token"].as_str().unwrap().to_owned()
    }

    async fn put_schema(&self, dataset: &str, body: Value) -> Answer {
        self.send(
            &self.admin,
            Method::PUT,
            &format!("/v1/datasets/{dataset}/schema"),
            Some(body),
        )
        .await
    }

    /// Writes records with bulk requests and waits until they are applied.
    async fn write(&self, dataset: &str, records: &[(String, String, Value)]) {
        for chunk in records.chunks(500) {
            let body: String = chunk
                .iter()
                .map(|(tenant, id, data)| {
                    format!(
                        "{}\n",
                        json!({"op": "upsert", "tenant": tenant, "id": id, "data": data})
                    )
                })
                .collect();
            let r = self
                .http
                .post(self.server.url(&format!("/v1/datasets/{dataset}/changes")))
                .bearer_auth(&self.admin)
                .body(body)
                .send()
                .await
                .unwrap();
            let a = Self::answer(r).await;
            assert_eq!(a.status, 200, "{a:?}");
            for line in a.body["results"].as_array().unwrap() {
                assert_eq!(line["status"], 202, "{line}");
            }
        }
        common::wait_caught_up_as(&self.server, dataset, Some(&self.admin)).await;
    }
}

fn person() -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": false,
    })
}

fn person_with_age() -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name"],
        "additionalProperties": false,
    })
}

/// Breaks BACKWARD against [`person_with_age`]: records without `email` no longer pass.
/// (Content models are closed: adding a property to an open one breaks under Confluent's
/// rules.)
fn person_with_email() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "email": {"type": "string"},
        },
        "required": ["name", "email"],
        "additionalProperties": false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_schemas_are_registered_refused_and_read_by_version() {
    let s = Secured::start().await;

    let a = s
        .send(&s.admin, Method::GET, "/v1/datasets/items/schema", None)
        .await;
    assert_eq!(a.status, 404, "no schema yet: {a:?}");
    let a = s.put_schema("nothing", json!({"schema": person()})).await;
    assert_eq!(a.status, 404, "undeclared dataset: {a:?}");
    assert_eq!(a.body["type"], "urn:tenantsync:problem:unknown-dataset");

    // Bad bodies: 400.
    for (body, field) in [
        (json!([person()]), None),
        (json!({}), None),
        (json!({"schema": person(), "extra": 1}), None),
        (
            json!({"schema": person(), "compatibility": "SIDEWAYS"}),
            Some("compatibility"),
        ),
        (json!({"schema": person(), "compatibility": 3}), None),
    ] {
        let a = s.put_schema("items", body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {a:?}");
        assert_eq!(a.content_type, PROBLEM);
        if let Some(field) = field {
            assert_eq!(a.body["field"], field, "{a:?}");
        }
    }
    let r = s
        .http
        .put(s.server.url("/v1/datasets/items/schema"))
        .bearer_auth(&s.admin)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The first version: 201; the same again: 200, nothing new.
    let a = s.put_schema("items", json!({"schema": person()})).await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["dataset"], "items");
    assert_eq!(a.body["version"], 1);
    assert_eq!(a.body["schema"], person());
    assert_eq!(a.body["compatibility"], "BACKWARD");
    assert!(a.body["id"].as_u64().unwrap() >= 1, "{a:?}");
    assert!(a.body["created_at"].is_string(), "{a:?}");
    assert!(
        a.body.get("violations").is_none(),
        "no records, none violate"
    );
    let first_id = a.body["id"].clone();
    let a = s.put_schema("items", json!({"schema": person()})).await;
    assert_eq!(a.status, 200, "identical to the latest: {a:?}");
    assert_eq!(a.body["version"], 1);
    assert_eq!(a.body["id"], first_id);

    // A compatible change: version 2.
    let a = s
        .put_schema("items", json!({"schema": person_with_age()}))
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["version"], 2);

    // Invalid schemas: 422 with pointers into the schema.
    for schema in [
        json!({"type": 12}),
        json!({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}),
        json!({"$ref": "file:///etc/passwd"}),
    ] {
        let a = s.put_schema("items", json!({"schema": schema})).await;
        assert_eq!(a.status, 422, "{schema}: {a:?}");
        assert_eq!(a.content_type, PROBLEM);
        let errors = a.body["errors"].as_array().expect("errors");
        assert!(!errors.is_empty(), "{a:?}");
        for e in errors {
            assert!(e["pointer"].is_string() && e["message"].is_string(), "{e}");
        }
    }

    // An incompatible change: 409 with what breaks.
    let a = s
        .put_schema("items", json!({"schema": person_with_email()}))
        .await;
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(a.content_type, PROBLEM);
    assert_eq!(a.body["type"], "urn:tenantsync:problem:incompatible-schema");
    let breaks = a.body["breaks"].as_array().expect("breaks");
    assert!(!breaks.is_empty(), "{a:?}");
    for b in breaks {
        assert!(b["pointer"].is_string() && b["message"].is_string(), "{b}");
        assert_eq!(b["version"], 2, "{b}");
    }

    // Reading back.
    let a = s
        .send(&s.admin, Method::GET, "/v1/datasets/items/schema", None)
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["version"], 2);
    assert_eq!(a.body["schema"], person_with_age());
    for key in [
        "dataset",
        "version",
        "id",
        "schema",
        "compatibility",
        "created_at",
    ] {
        assert!(a.body.get(key).is_some(), "{key} in {a:?}");
    }
    let a = s
        .send(
            &s.admin,
            Method::GET,
            "/v1/datasets/items/schema/versions",
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let listed: Vec<u64> = a.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [1, 2]);
    assert_eq!(a.body["versions"][0]["id"], first_id);
    let a = s
        .send(
            &s.admin,
            Method::GET,
            "/v1/datasets/items/schema/versions/1",
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["schema"], person());
    assert_eq!(a.body["version"], 1);
    let a = s
        .send(
            &s.admin,
            Method::GET,
            "/v1/datasets/items/schema/versions/3",
            None,
        )
        .await;
    assert_eq!(a.status, 404, "{a:?}");
    for bad in ["0", "x", "-1"] {
        let a = s
            .send(
                &s.admin,
                Method::GET,
                &format!("/v1/datasets/items/schema/versions/{bad}"),
                None,
            )
            .await;
        assert_eq!(a.status, 400, "{bad}: {a:?}");
        assert_eq!(a.body["field"], "version");
    }
    for path in [
        "/v1/datasets/nothing/schema",
        "/v1/datasets/nothing/schema/versions",
        "/v1/datasets/nothing/schema/versions/1",
    ] {
        let a = s.send(&s.admin, Method::GET, path, None).await;
        assert_eq!(a.status, 404, "{path}: {a:?}");
    }

    // The mode given with a schema becomes the dataset's first: NONE lets anything through.
    let a = s
        .put_schema(
            "items",
            json!({"schema": person_with_email(), "compatibility": "NONE"}),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["version"], 3);
    assert_eq!(a.body["compatibility"], "NONE");
    let a = s
        .send(
            &s.admin,
            Method::GET,
            "/v1/datasets/items/schema/versions/2",
            None,
        )
        .await;
    assert_eq!(
        a.body["compatibility"], "NONE",
        "the dataset's mode now: {a:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_schemas_needs_a_scope_on_the_dataset_and_registering_needs_admin() {
    let s = Secured::start().await;
    let a = s.put_schema("items", json!({"schema": person()})).await;
    assert_eq!(a.status, 201, "{a:?}");
    let reader = s.token("reader", &["read:items:acme"]).await;
    let writer = s.token("writer", &["write:items:*"]).await;
    let elsewhere = s.token("elsewhere", &["read:users:*"]).await;
    let every = s.token("every", &["read:*:*"]).await;

    for token in [&reader, &writer, &every] {
        for path in [
            "/v1/datasets/items/schema",
            "/v1/datasets/items/schema/versions",
            "/v1/datasets/items/schema/versions/1",
        ] {
            let a = s.send(token, Method::GET, path, None).await;
            assert_eq!(a.status, 200, "{path}: {a:?}");
        }
    }
    for path in [
        "/v1/datasets/items/schema",
        "/v1/datasets/items/schema/versions",
        "/v1/datasets/items/schema/versions/1",
        // 403 before 404: a token learns nothing of datasets it has no scope on.
        "/v1/datasets/nothing/schema",
    ] {
        let a = s.send(&elsewhere, Method::GET, path, None).await;
        assert_eq!(a.status, 403, "{path}: {a:?}");
    }
    for token in [&reader, &writer, &every] {
        let a = s
            .send(
                token,
                Method::PUT,
                "/v1/datasets/items/schema",
                Some(json!({"schema": person_with_age()})),
            )
            .await;
        assert_eq!(a.status, 403, "{a:?}");
    }
    let r = s
        .http
        .get(s.server.url("/v1/datasets/items/schema"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_over_violating_records_reports_them() {
    let s = Secured::start().await;
    // More than one page of records in `acme` (every 50th without a name), a few in `beta`, and
    // a violating record that was deleted, which no longer counts.
    let mut records = Vec::new();
    for i in 0..1_100 {
        let data = if i % 50 == 7 {
            json!({"name": i})
        } else {
            json!({"name": format!("n{i}")})
        };
        records.push(("acme".to_owned(), format!("r{i:04}"), data));
    }
    for i in 0..3 {
        records.push(("beta".to_owned(), format!("b{i}"), json!({"age": i})));
    }
    records.push(("beta".to_owned(), "gone".to_owned(), json!({"age": 1})));
    s.write("items", &records).await;
    let a = s
        .send(
            &s.admin,
            Method::DELETE,
            "/v1/datasets/items/tenants/beta/records/gone?wait=applied",
            None,
        )
        .await;
    assert!(a.status < 300, "{a:?}");

    let expected = 1_100 / 50 + 3;
    for status in [201, 200] {
        let a = s.put_schema("items", json!({"schema": person()})).await;
        assert_eq!(a.status, status, "{a:?}");
        let violations = &a.body["violations"];
        assert_eq!(violations["count"], expected, "{a:?}");
        let examples = violations["examples"].as_array().unwrap();
        assert_eq!(examples.len(), 10, "the first 10 only: {a:?}");
        for e in examples {
            let (tenant, id) = (e["tenant"].as_str().unwrap(), e["id"].as_str().unwrap());
            let i: usize = id.trim_start_matches(['r', 'b']).parse().unwrap();
            match tenant {
                "acme" => assert_eq!(i % 50, 7, "{e}"),
                "beta" => assert!(id != "gone", "{e}"),
                other => panic!("tenant {other}"),
            }
            let errors = e["errors"].as_array().unwrap();
            assert!(!errors.is_empty(), "{e}");
            for error in errors {
                assert!(error["pointer"].is_string() && error["message"].is_string());
            }
        }
    }

    // A dataset whose records all fit gets no report.
    let a = s.put_schema("users", json!({"schema": person()})).await;
    assert_eq!(a.status, 201);
    assert!(a.body.get("violations").is_none(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declaration_asks_for_avro_with_its_formats() {
    let s = Secured::start().await;
    let declare = |name: &'static str, body: Value| {
        let s = &s;
        async move {
            s.send(
                &s.admin,
                Method::PUT,
                &format!("/v1/datasets/{name}"),
                Some(body),
            )
            .await
        }
    };
    let a = declare(
        "orders",
        json!({"partitions": 2, "formats": ["json", "avro"]}),
    )
    .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["formats"], json!(["json", "avro"]));
    let a = s
        .send(&s.admin, Method::GET, "/v1/datasets/orders", None)
        .await;
    assert_eq!(a.body["formats"], json!(["json", "avro"]), "{a:?}");
    let a = s.send(&s.admin, Method::GET, "/v1/datasets", None).await;
    let formats: Vec<(Value, Value)> = a.body["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].clone(), d["formats"].clone()))
        .collect();
    assert_eq!(
        formats,
        [
            (json!("items"), json!(["json"])),
            (json!("orders"), json!(["json", "avro"])),
            (json!("users"), json!(["json"])),
        ]
    );
    let a = s.sr(&s.admin, Method::GET, "/subjects", None).await;
    assert_eq!(
        a.body,
        json!(["tenantsync.orders.state.avro-value"]),
        "{a:?}"
    );

    for formats in [
        json!(["avro"]),
        json!(["json", "xml"]),
        json!(["json", "json"]),
        json!([]),
        json!("avro"),
        json!([1]),
    ] {
        let a = declare("orders", json!({"partitions": 2, "formats": formats})).await;
        assert_eq!(a.status, 400, "{formats}: {a:?}");
        assert_eq!(a.body["field"], "formats", "{a:?}");
    }

    // Declaring again without avro turns it off; with it, on again.
    let a = declare("orders", json!({"partitions": 2})).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["formats"], json!(["json"]));
    let a = s
        .send(&s.admin, Method::GET, "/v1/datasets/orders", None)
        .await;
    assert_eq!(a.body["formats"], json!(["json"]), "{a:?}");
    let a = s.sr(&s.admin, Method::GET, "/subjects", None).await;
    assert_eq!(a.body, json!([]), "{a:?}");
    let a = declare(
        "orders",
        json!({"partitions": 2, "formats": ["avro", "json"]}),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["formats"], json!(["json", "avro"]));

    // A latest schema with no Avro equivalent: 422, and Avro stays off.
    let unmappable = json!({
        "type": "object",
        "properties": {"a": {"not": {"type": "string"}}},
    });
    let a = s.put_schema("items", json!({"schema": unmappable})).await;
    assert_eq!(a.status, 201, "{a:?}");
    let a = declare(
        "items",
        json!({"partitions": 2, "formats": ["json", "avro"]}),
    )
    .await;
    assert_eq!(a.status, 422, "{a:?}");
    assert_eq!(a.content_type, PROBLEM);
    assert!(!a.body["errors"].as_array().unwrap().is_empty(), "{a:?}");
    let a = s
        .send(&s.admin, Method::GET, "/v1/datasets/items", None)
        .await;
    assert_eq!(a.body["formats"], json!(["json"]), "{a:?}");

    // With Avro on, a JSON Schema without an Avro equivalent is refused at registration.
    let a = s.put_schema("orders", json!({"schema": person()})).await;
    assert_eq!(a.status, 201, "{a:?}");
    let a = s
        .put_schema(
            "orders",
            json!({"schema": unmappable_with_name(), "compatibility": "NONE"}),
        )
        .await;
    assert_eq!(a.status, 422, "{a:?}");
}

fn unmappable_with_name() -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "a": {"not": {"type": "string"}}},
        "required": ["name"],
    })
}

/// `items` with Avro on and a JSON Schema, so that it has Avro version 1: the subject and the
/// version's id.
async fn avro_items(s: &Secured) -> (String, u64) {
    let a = s.put_schema("items", json!({"schema": person()})).await;
    assert_eq!(a.status, 201, "{a:?}");
    let a = s
        .send(
            &s.admin,
            Method::PUT,
            "/v1/datasets/items",
            Some(json!({"partitions": 2, "formats": ["json", "avro"]})),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = s
        .sr(
            &s.admin,
            Method::GET,
            &format!("/subjects/{SUBJECT}/versions/latest"),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    (
        a.body["schema"].as_str().unwrap().to_owned(),
        a.body["id"].as_u64().unwrap(),
    )
}

fn assert_sr_error(a: &Answer, status: u16, code: u64) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(a.content_type, SR_TYPE, "{a:?}");
    assert_eq!(a.body["error_code"], code, "{a:?}");
    assert!(a.body["message"].is_string(), "{a:?}");
}

/// An Avro record with the fields of [`person`] plus `extra`.
fn avro_with(schema: &str, extra: Value) -> String {
    let mut parsed: Value = serde_json::from_str(schema).unwrap();
    parsed["fields"].as_array_mut().unwrap().push(extra);
    parsed.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_registry_api_answers_as_confluent_does() {
    let s = Secured::start().await;
    let (schema, id) = avro_items(&s).await;
    let reader = s.token("reader", &["read:items:*"]).await;
    let one_tenant = s.token("one-tenant", &["read:items:acme"]).await;
    let writer = s.token("writer", &["write:items:*"]).await;

    // Subjects: only datasets with Avro on, only for tokens that read them.
    let a = s.sr(&reader, Method::GET, "/subjects", None).await;
    assert_eq!((a.status, a.content_type.as_str()), (200, SR_TYPE), "{a:?}");
    assert_eq!(a.body, json!([SUBJECT]));
    let a = s
        .sr(
            &reader,
            Method::GET,
            "/subjects?subjectPrefix=other&deleted=False",
            None,
        )
        .await;
    assert_eq!(a.body, json!([]), "{a:?}");
    for token in [&one_tenant, &writer] {
        let a = s.sr(token, Method::GET, "/subjects", None).await;
        assert_eq!(a.body, json!([]), "{a:?}");
    }

    // Versions.
    let a = s
        .sr(
            &reader,
            Method::GET,
            &format!("/subjects/{SUBJECT}/versions"),
            None,
        )
        .await;
    assert_eq!((a.status, a.content_type.as_str()), (200, SR_TYPE), "{a:?}");
    assert_eq!(a.body, json!([1]));
    for version in ["latest", "1", "-1"] {
        let a = s
            .sr(
                &reader,
                Method::GET,
                &format!("/subjects/{SUBJECT}/versions/{version}"),
                None,
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.content_type, SR_TYPE);
        assert_eq!(
            a.body,
            json!({"subject": SUBJECT, "version": 1, "id": id, "schema": schema}),
            "no schemaType for AVRO"
        );
    }
    let a = s
        .sr(
            &reader,
            Method::GET,
            &format!("/subjects/{SUBJECT}/versions/2"),
            None,
        )
        .await;
    assert_sr_error(&a, 404, 40402);
    for bad in ["0", "abc", "-2"] {
        let a = s
            .sr(
                &reader,
                Method::GET,
                &format!("/subjects/{SUBJECT}/versions/{bad}"),
                None,
            )
            .await;
        assert_sr_error(&a, 422, 42202);
    }
    for unknown in [
        "tenantsync.users.state.avro-value",
        "tenantsync.nothing.state.avro-value",
        "tenantsync.items.state-value",
        "whatever",
    ] {
        let a = s
            .sr(
                &s.admin,
                Method::GET,
                &format!("/subjects/{unknown}/versions"),
                None,
            )
            .await;
        assert_sr_error(&a, 404, 40401);
    }

    // Schemas by id, with the parameters clients add.
    for query in [
        "",
        &format!("?subject={SUBJECT}&format=serialized&fetchMaxId=false"),
    ] {
        let a = s
            .sr(
                &reader,
                Method::GET,
                &format!("/schemas/ids/{id}{query}"),
                None,
            )
            .await;
        assert_eq!((a.status, a.content_type.as_str()), (200, SR_TYPE), "{a:?}");
        assert_eq!(a.body, json!({"schema": schema}));
    }
    let a = s
        .sr(
            &reader,
            Method::GET,
            &format!("/schemas/ids/{id}/versions"),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body, json!([{"subject": SUBJECT, "version": 1}]));
    for missing in ["999999", "x"] {
        let a = s
            .sr(
                &reader,
                Method::GET,
                &format!("/schemas/ids/{missing}"),
                None,
            )
            .await;
        assert_sr_error(&a, 404, 40403);
    }
    // The id of the JSON Schema is not an Avro schema.
    let json_id = s
        .send(&s.admin, Method::GET, "/v1/datasets/items/schema", None)
        .await
        .body["id"]
        .as_u64()
        .unwrap();
    assert_ne!(json_id, id);
    let a = s
        .sr(
            &reader,
            Method::GET,
            &format!("/schemas/ids/{json_id}"),
            None,
        )
        .await;
    assert_sr_error(&a, 404, 40403);

    // Reading needs read access to every tenant of the dataset.
    for token in [&one_tenant, &writer] {
        for path in [
            format!("/subjects/{SUBJECT}/versions"),
            format!("/subjects/{SUBJECT}/versions/latest"),
            format!("/schemas/ids/{id}"),
            format!("/config/{SUBJECT}"),
        ] {
            let a = s.sr(token, Method::GET, &path, None).await;
            assert_sr_error(&a, 403, 40301);
        }
    }

    // Looking a schema up.
    let a = s
        .sr(
            &reader,
            Method::POST,
            &format!("/subjects/{SUBJECT}?normalize=False&deleted=False"),
            Some(json!({"schema": schema, "schemaType": "AVRO", "references": []})),
        )
        .await;
    assert_eq!((a.status, a.content_type.as_str()), (200, SR_TYPE), "{a:?}");
    assert_eq!(a.body["id"], id);
    assert_eq!(a.body["version"], 1);
    // The same schema written differently is the same schema.
    let spaced =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&schema).unwrap()).unwrap();
    let a = s
        .sr(
            &reader,
            Method::POST,
            &format!("/subjects/{SUBJECT}"),
            Some(json!({"schema": spaced})),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["id"], id);
    let optional_age = avro_with(
        &schema,
        json!({"name": "age", "type": ["null", "long"], "default": null}),
    );
    let a = s
        .sr(
            &reader,
            Method::POST,
            &format!("/subjects/{SUBJECT}"),
            Some(json!({"schema": optional_age})),
        )
        .await;
    assert_sr_error(&a, 404, 40403);
    let a = s
        .sr(
            &reader,
            Method::POST,
            &format!("/subjects/{SUBJECT}"),
            Some(json!({"schema": "{\"type\": \"nonsense\"}"})),
        )
        .await;
    assert_sr_error(&a, 422, 42201);

    // Compatibility checks.
    let required_email = avro_with(&schema, json!({"name": "email", "type": "string"}));
    for path in [
        format!("/compatibility/subjects/{SUBJECT}/versions/latest"),
        format!("/compatibility/subjects/{SUBJECT}/versions/1?verbose=true"),
        format!("/compatibility/subjects/{SUBJECT}/versions"),
    ] {
        let a = s
            .sr(
                &reader,
                Method::POST,
                &path,
                Some(json!({"schema": optional_age})),
            )
            .await;
        assert_eq!((a.status, a.content_type.as_str()), (200, SR_TYPE), "{a:?}");
        assert_eq!(a.body, json!({"is_compatible": true, "messages": []}));
        let a = s
            .sr(
                &reader,
                Method::POST,
                &path,
                Some(json!({"schema": required_email})),
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body["is_compatible"], false, "{a:?}");
        assert!(!a.body["messages"].as_array().unwrap().is_empty(), "{a:?}");
    }
    let a = s
        .sr(
            &reader,
            Method::POST,
            &format!("/compatibility/subjects/{SUBJECT}/versions/7"),
            Some(json!({"schema": optional_age})),
        )
        .await;
    assert_sr_error(&a, 404, 40402);

    // Registering: admin only; refused when invalid, of another type, or incompatible.
    let versions = format!("/subjects/{SUBJECT}/versions");
    let a = s
        .sr(
            &reader,
            Method::POST,
            &versions,
            Some(json!({"schema": optional_age})),
        )
        .await;
    assert_sr_error(&a, 403, 40301);
    let a = s
        .sr(
            &s.admin,
            Method::POST,
            &versions,
            Some(json!({"schema": "not json"})),
        )
        .await;
    assert_sr_error(&a, 422, 42201);
    let a = s
        .sr(
            &s.admin,
            Method::POST,
            &versions,
            Some(json!({"schema": "{\"type\": \"object\"}", "schemaType": "JSON"})),
        )
        .await;
    assert_sr_error(&a, 422, 42201);
    let a = s
        .sr(
            &s.admin,
            Method::POST,
            &versions,
            Some(json!({"schema": required_email})),
        )
        .await;
    assert_sr_error(&a, 409, 409);
    let a = s
        .sr(
            &s.admin,
            Method::POST,
            &format!("{versions}?normalize=False"),
            Some(json!({"schema": optional_age, "schemaType": "AVRO", "references": []})),
        )
        .await;
    assert_eq!((a.status, a.content_type.as_str()), (200, SR_TYPE), "{a:?}");
    let new_id = a.body["id"].as_u64().unwrap();
    assert_ne!(new_id, id);
    let a = s.sr(&reader, Method::GET, &versions, None).await;
    assert_eq!(a.body, json!([1, 2]), "{a:?}");
    let a = s
        .sr(
            &reader,
            Method::GET,
            &format!("/schemas/ids/{new_id}/versions"),
            None,
        )
        .await;
    assert_eq!(a.body, json!([{"subject": SUBJECT, "version": 2}]), "{a:?}");

    // Modes: the store-wide one and the subject's, which is the dataset's.
    let a = s.sr(&reader, Method::GET, "/config", None).await;
    assert_eq!((a.status, a.content_type.as_str()), (200, SR_TYPE), "{a:?}");
    assert_eq!(a.body, json!({"compatibilityLevel": "BACKWARD"}));
    let a = s
        .sr(
            &reader,
            Method::PUT,
            "/config",
            Some(json!({"compatibility": "FULL"})),
        )
        .await;
    assert_sr_error(&a, 403, 40301);
    let a = s
        .sr(
            &s.admin,
            Method::PUT,
            "/config",
            Some(json!({"compatibility": "SIDEWAYS"})),
        )
        .await;
    assert_sr_error(&a, 422, 42203);
    let a = s
        .sr(
            &s.admin,
            Method::PUT,
            "/config",
            Some(json!({"compatibility": "FULL"})),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body, json!({"compatibility": "FULL"}));
    let a = s.sr(&reader, Method::GET, "/config", None).await;
    assert_eq!(a.body, json!({"compatibilityLevel": "FULL"}), "{a:?}");
    let subject_config = format!("/config/{SUBJECT}");
    let a = s.sr(&reader, Method::GET, &subject_config, None).await;
    assert_eq!(
        a.body,
        json!({"compatibilityLevel": "FULL"}),
        "the store-wide one: {a:?}"
    );
    let a = s
        .sr(
            &reader,
            Method::PUT,
            &subject_config,
            Some(json!({"compatibility": "NONE"})),
        )
        .await;
    assert_sr_error(&a, 403, 40301);
    let a = s
        .sr(
            &s.admin,
            Method::PUT,
            &subject_config,
            Some(json!({"compatibility": "NONE"})),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body, json!({"compatibility": "NONE"}));
    let a = s.sr(&reader, Method::GET, &subject_config, None).await;
    assert_eq!(a.body, json!({"compatibilityLevel": "NONE"}), "{a:?}");
    let a = s
        .send(&s.admin, Method::GET, "/v1/datasets/items/schema", None)
        .await;
    assert_eq!(
        a.body["compatibility"], "NONE",
        "one mode per dataset: {a:?}"
    );
    let a = s
        .sr(
            &s.admin,
            Method::PUT,
            "/config/tenantsync.users.state.avro-value",
            Some(json!({"compatibility": "NONE"})),
        )
        .await;
    assert_sr_error(&a, 404, 40401);

    // Associations are not kept: 404, which clients take as "use the topic's name".
    for (method, path) in [
        (
            Method::GET,
            "/associations/resources/-/tenantsync.items.state.avro?resourceType=topic&associationType=value",
        ),
        (Method::GET, "/associations"),
        (Method::POST, "/associations"),
    ] {
        let a = s.sr(&reader, method, path, None).await;
        assert_sr_error(&a, 404, 404);
    }
    let a = s.sr(&reader, Method::GET, "/no/such/route", None).await;
    assert_sr_error(&a, 404, 404);
    let a = s.sr(&reader, Method::DELETE, "/config", None).await;
    assert_sr_error(&a, 405, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_registry_api_takes_the_token_as_bearer_or_basic_password() {
    let s = Secured::start().await;
    let reader = s.token("reader", &["read:items:*"]).await;
    let url = s.server.url(&format!("{SR}/subjects"));

    let a = Secured::answer(s.http.get(&url).send().await.unwrap()).await;
    assert_sr_error(&a, 401, 40101);
    let r = s.http.get(&url).send().await.unwrap();
    let challenges: Vec<_> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic")),
        "{challenges:?}"
    );
    for (user, password) in [("tenantsync", "tsk_wrong"), ("", "")] {
        let r = s
            .http
            .get(&url)
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_sr_error(&Secured::answer(r).await, 401, 40101);
    }
    for user in ["tenantsync", "anyone", ""] {
        let r = s
            .http
            .get(&url)
            .basic_auth(user, Some(&reader))
            .send()
            .await
            .unwrap();
        let a = Secured::answer(r).await;
        assert_eq!((a.status, a.content_type.as_str()), (200, SR_TYPE), "{a:?}");
    }
    let a = s.sr(&reader, Method::GET, "/subjects", None).await;
    assert_eq!(a.status, 200, "{a:?}");
    // Basic is for the registry's clients only.
    let r = s
        .http
        .get(s.server.url("/v1/datasets"))
        .basic_auth("tenantsync", Some(&reader))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

const CONFLUENT_PY: &str = r#"
import json, sys
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer, AvroDeserializer
from confluent_kafka.serialization import SerializationContext, MessageField

args = json.loads(sys.argv[1])
topic = args["topic"]
ctx = SerializationContext(topic, MessageField.VALUE)
out = {}

# A reader with HTTP Basic (the token as password), as most deployments configure it.
reader = SchemaRegistryClient({"url": args["url"], "basic.auth.user.info": "tenantsync:" + args["reader"]})
out["subjects"] = reader.get_subjects()
latest = reader.get_latest_version(topic + "-value")
out["latest"] = {"id": latest.schema_id, "version": latest.version, "type": latest.schema.schema_type}
out["versions"] = reader.get_versions(topic + "-value")
out["compatibility"] = reader.get_compatibility(topic + "-value")
out["compatible"] = reader.test_compatibility(topic + "-value", latest.schema)

# The serializer looks the schema up (no registration), the deserializer fetches it by id.
serializer = AvroSerializer(reader, latest.schema.schema_str, conf={"auto.register.schemas": False})
payload = serializer({"name": "Ada"}, ctx)
out["framing"] = [payload[0], int.from_bytes(payload[1:5], "big")]
deserializer = AvroDeserializer(reader)
out["decoded"] = deserializer(payload, ctx)

# An admin with a static bearer token registers through the serializer.
admin = SchemaRegistryClient({
    "url": args["url"],
    "bearer.auth.credentials.source": "STATIC_TOKEN",
    "bearer.auth.token": args["admin"],
    "bearer.auth.logical.cluster": "tenantsync",
})
registering = AvroSerializer(admin, args["evolved"], conf={"auto.register.schemas": True})
evolved = registering({"name": "Grace", "age": 36}, ctx)
out["evolved_id"] = int.from_bytes(evolved[1:5], "big")
out["evolved_decoded"] = AvroDeserializer(reader)(evolved, ctx)
json.dump(out, sys.stdout)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_clients_serialize_and_deserialize_through_the_registry() {
    let Some(python) = common::webhooks::python("confluent_kafka_clients") else {
        return;
    };
    let s = Secured::start().await;
    let (schema, id) = avro_items(&s).await;
    let reader = s.token("reader", &["read:items:*"]).await;
    let evolved = avro_with(
        &schema,
        json!({"name": "age", "type": ["null", "long"], "default": null}),
    );
    let args = json!({
        "url": s.server.url(SR),
        "topic": "tenantsync.items.state.avro",
        "reader": reader,
        "admin": s.admin,
        "evolved": evolved,
    });
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", CONFLUENT_PY, &args.to_string()])
            .output()
            .expect("TENANTSYNC_TEST_PYTHON runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "confluent-kafka failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["subjects"], json!([SUBJECT]));
    assert_eq!(
        out["latest"],
        json!({"id": id, "version": 1, "type": "AVRO"})
    );
    assert_eq!(out["versions"], json!([1]));
    assert_eq!(out["compatibility"], "BACKWARD");
    assert_eq!(out["compatible"], true);
    assert_eq!(out["framing"], json!([0, id]));
    assert_eq!(out["decoded"], json!({"name": "Ada"}));
    let evolved_id = out["evolved_id"].as_u64().unwrap();
    assert_ne!(evolved_id, id);
    assert_eq!(out["evolved_decoded"], json!({"name": "Grace", "age": 36}));
    let a = s
        .sr(
            &s.admin,
            Method::GET,
            &format!("/subjects/{SUBJECT}/versions"),
            None,
        )
        .await;
    assert_eq!(a.body, json!([1, 2]), "{a:?}");
}
