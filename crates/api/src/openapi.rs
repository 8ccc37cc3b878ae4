//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json`.
//!
//! It is generated from the code: every route is registered through utoipa-axum's
//! `OpenApiRouter` with `routes!(...)` (see [`crate::router`]), so a route cannot exist without
//! its `#[utoipa::path]` annotation, and the annotation lists its parameters, its request body
//! and every status its handler can answer. This module adds what all routes share: the
//! [`Problem`] document every error is, the reusable error responses, and the bearer security
//! scheme, applied to every operation behind [`crate::auth::authenticate`] and to no other.
//!
//! The types in [`schemas`] describe only: handlers that build their JSON by hand are checked
//! against them by schemathesis (`crates/cli/tests/schemathesis.rs`). Nothing here may ever
//! change what a handler accepts or answers.

pub mod schemas;

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, Ref, RefOr, Required, Type,
};
use utoipa::openapi::{ObjectBuilder, schema::Schema};
use utoipa::{PartialSchema, ToSchema};

/// The name of the bearer security scheme in the document.
pub const BEARER: &str = "bearer";

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error, as every route answers one: an RFC 9457 problem document
/// (`application/problem+json`), rendered by `ApiError`. The members after `detail` are
/// extensions, present only for the kinds of problem that carry them.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub struct Problem {
    /// `urn:tenantsync:problem:{kind}`: `invalid-input`, `invalid-body`, `check-failed`,
    /// `unknown-dataset`, `not-found`, `version-conflict`, `key-reused`, `conflict`,
    /// `payload-too-large`, `apply-timeout`, `cursor-gone`, `unauthenticated`, `forbidden`,
    /// `rate-limited`, `over-burst`, `tenant-erasing`, `unavailable`, `method-not-allowed`,
    /// `invalid-schema`, `incompatible-schema`, `schema-violation`.
    #[schema(pattern = "^urn:tenantsync:problem:[a-z-]+$")]
    r#type: String,
    /// The status's reason phrase.
    title: String,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong and what to do about it.
    detail: String,
    /// The request's part at fault: a path segment, query parameter, header or body field
    /// (`invalid-input`, `check-failed`, `key-reused`).
    field: Option<String>,
    /// The record's version when the change was refused (`version-conflict`).
    current_version: Option<u64>,
    /// The change accepted but not applied in time (`apply-timeout`)...
    change_id: Option<String>,
    /// ...and where to ask for its outcome.
    status_url: Option<String>,
    /// Seconds to wait before writing again (`rate-limited`); also in `Retry-After`.
    retry_after_secs: Option<u64>,
    /// What is wrong, each `{"pointer", "message"}`: with a refused schema (`invalid-schema`),
    /// or with data its dataset's schema refuses (`schema-violation`).
    errors: Option<Vec<serde_json::Value>>,
    /// What an incompatible schema breaks, each `{"pointer", "version", "message"}`
    /// (`incompatible-schema`).
    breaks: Option<Vec<serde_json::Value>>,
}

/// An error of the schema registry (`/v1/schema-registry`), as Confluent's renders it, in
/// `application/vnd.schemaregistry.v1+json`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub struct RegistryErrorDoc {
    /// Confluent's code: `40401` (no such subject), `40402` (version), `40403` (schema),
    /// `42201` (invalid schema), `42203` (invalid mode), `40101`, `40301`, `50001`, or the status.
    error_code: u32,
    message: String,
}

/// The name of the HTTP Basic scheme the schema registry also takes (the token as password).
pub const BASIC: &str = "basic";

/// The schema registry's media type.
pub const REGISTRY_JSON: &str = "application/vnd.schemaregistry.v1+json";

/// Any error of the schema registry.
pub struct RegistryError;

impl<'r> utoipa::ToResponse<'r> for RegistryError {
    fn response() -> (&'r str, RefOr<utoipa::openapi::response::Response>) {
        let response = ResponseBuilder::new()
            .description("An error, as Confluent's Schema Registry renders it")
            .content(
                REGISTRY_JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(RegistryErrorDoc::name())))
                    .build(),
            )
            .build();
        ("RegistryError", RefOr::T(response))
    }
}

/// A reusable error response: a [`Problem`] with the statuses that answer it, and the headers
/// that come with it.
struct ProblemResponse {
    name: &'static str,
    description: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const RETRY_AFTER: (&str, &str) = ("Retry-After", "Seconds to wait before trying again");

macro_rules! problem_responses {
    ($($name:ident: $description:literal $(, $header:expr)*;)*) => {
        $(
            #[doc = $description]
            pub struct $name;

            impl<'r> utoipa::ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<utoipa::openapi::response::Response>) {
                    let spec = ProblemResponse {
                        name: stringify!($name),
                        description: $description,
                        headers: &[$($header),*],
                    };
                    (spec.name, RefOr::T(spec.build()))
                }
            }
        )*

        /// Every reusable error response, by name, for the document's components.
        fn problem_responses() -> Vec<(&'static str, RefOr<utoipa::openapi::response::Response>)> {
            vec![$(<$name as utoipa::ToResponse>::response()),*]
        }
    };
}

problem_responses! {
    BadRequest: "A path segment, query parameter, header or body is not acceptable (`field` names it, when it is one)";
    Unauthorized: "No credentials, credentials that identify no caller, or a token revoked while the request waited",
        ("WWW-Authenticate", "`Bearer realm=\"tenantsync\"`");
    Forbidden: "The caller's scopes do not cover the request";
    NotFound: "What the path names does not exist (or the path matches no route)";
    Conflict: "The request conflicts with the current state (`version-conflict`, `tenant-erasing`, `conflict`)";
    Gone: "The cursor is past tombstone retention: read the feed again without a cursor";
    PayloadTooLarge: "The body is larger than `max_body_bytes`, or carries more changes of a tenant than its burst";
    UnprocessableContent: "The request is well formed but cannot work (`check-failed`, `key-reused`, `schema-violation`, `invalid-schema`)";
    TooManyRequests: "The tenant writes faster than its quota", RETRY_AFTER;
    ServiceUnavailable: "The log or the master store is unavailable; retry shortly", RETRY_AFTER;
    GatewayTimeout: "The change is durably accepted but was not applied within the wait; poll `status_url`";
}

impl ProblemResponse {
    fn build(&self) -> utoipa::openapi::response::Response {
        let mut response = ResponseBuilder::new()
            .description(self.description)
            .content(
                PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(Problem::name())))
                    .build(),
            );
        for (name, description) in self.headers {
            let schema = if *name == RETRY_AFTER.0 {
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
            } else {
                ObjectBuilder::new().schema_type(Type::String)
            };
            response = response.header(
                *name,
                HeaderBuilder::new()
                    .schema(Schema::Object(schema.build()))
                    .description(Some(*description))
                    .build(),
            );
        }
        response.build()
    }
}

/// The whole document, from the parts of the open routes, of the authenticated ones, and of the
/// schema registry's (authenticated too, with its own errors).
pub fn document(open: OpenApi, authenticated: OpenApi, registry: OpenApi) -> OpenApi {
    let mut registry = registry;
    for item in registry.paths.paths.values_mut() {
        for operation in operations(item) {
            normalize_parameters(operation);
            operation.security = Some(vec![
                SecurityRequirement::new(BEARER, Vec::<String>::new()),
                SecurityRequirement::new(BASIC, Vec::<String>::new()),
            ]);
            for status in ["401", "503"] {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| Ref::from_response_name("RegistryError").into());
            }
        }
    }
    let mut open = open;
    for item in open.paths.paths.values_mut() {
        operations(item).for_each(normalize_parameters);
    }
    let mut authenticated = authenticated;
    for item in authenticated.paths.paths.values_mut() {
        for operation in operations(item) {
            normalize_parameters(operation);
            operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            // What `authenticate` itself answers, on every route behind it.
            let responses = &mut operation.responses.responses;
            for (status, name) in [("401", "Unauthorized"), ("503", "ServiceUnavailable")] {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| Ref::from_response_name(name).into());
            }
        }
    }
    let mut api = open;
    api.merge(authenticated);
    api.merge(registry);
    api.info = InfoBuilder::new()
        .title("tenantsync")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Tenant-scoped records: writes, change feeds, subscriptions, batches, sources, \
             webhooks and sinks. Every route but `/healthz`, `/readyz` and `/openapi.json` needs \
             `Authorization: Bearer <token>`; every error is an `application/problem+json` \
             document.",
        ))
        .build();
    let mut components = api.components.take().unwrap_or_default();
    components.schemas.insert(
        Problem::name().into_owned(),
        <Problem as PartialSchema>::schema(),
    );
    components.schemas.insert(
        RegistryErrorDoc::name().into_owned(),
        <RegistryErrorDoc as PartialSchema>::schema(),
    );
    let (name, response) = <RegistryError as utoipa::ToResponse>::response();
    components.responses.insert(name.to_owned(), response);
    for (name, response) in problem_responses() {
        components.responses.insert(name.to_owned(), response);
    }
    let components = ComponentsBuilder::from(components)
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`tsk_...`) or, when configured, a JWT of the identity \
                         provider",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            BASIC,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "Schema registry only: any user name, the API token as the password",
                    ))
                    .build(),
            ),
        )
        .build();
    api.components = Some(components);
    api
}

/// One entry per parameter, path parameters required. utoipa's axum support also infers a
/// bare parameter from each `Path` argument of a handler, after those the annotation lists:
/// the annotation's, which says more, is kept.
fn normalize_parameters(operation: &mut Operation) {
    let Some(parameters) = operation.parameters.as_mut() else {
        return;
    };
    let mut seen: Vec<(String, ParameterIn)> = Vec::new();
    parameters.retain(|p| {
        let key = (p.name.clone(), p.parameter_in.clone());
        let first = !seen.contains(&key);
        seen.push(key);
        first
    });
    for parameter in parameters.iter_mut() {
        if parameter.parameter_in == ParameterIn::Path {
            parameter.required = Required::True;
        }
    }
}

/// The operations of a path item, whatever their methods.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// `GET /openapi.json`: this document. Open to all, like the health checks: it describes the
/// API and holds no data.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi_serve",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API",
            body = serde_json::Value, content_type = "application/json"),
    )
)]
pub async fn serve() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let json = DOCUMENT.get_or_init(|| {
        crate::openapi()
            .to_json()
            .expect("the OpenAPI document serialises")
    });
    let mut response = json.clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    /// The routes open to all; every other one needs a token.
    const OPEN: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

    /// Where the schema registry's routes are, with errors of their own.
    const REGISTRY: &str = "/v1/schema-registry/";

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        serde_json::from_str(&crate::openapi().to_json().unwrap()).unwrap()
    }

    /// Every operation of the document: (path, method, operation).
    fn operations(doc: &Value) -> Vec<(String, &'static str, &Value)> {
        let mut all = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if let Some(operation) = item.get(method) {
                    all.push((path.clone(), method, operation));
                }
            }
        }
        all
    }

    fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    found.push(r);
                }
                map.values().for_each(|v| refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }

    /// A response, its `$ref` followed.
    fn resolve<'a>(doc: &'a Value, response: &'a Value) -> &'a Value {
        match response["$ref"].as_str() {
            Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap(),
            None => response,
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_and_holds_together() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "tenantsync");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        for r in found {
            assert!(
                r.starts_with("#/components/") && doc.pointer(&r[1..]).is_some(),
                "{r} does not resolve"
            );
        }
        let mut ids = BTreeSet::new();
        for (path, method, operation) in operations(&doc) {
            let id = operation["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            // Each `{name}` of the path is one required path parameter, and nothing else is.
            let templated: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let parameters = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut declared = BTreeSet::new();
            for p in &parameters {
                let key = (p["name"].as_str().unwrap(), p["in"].as_str().unwrap());
                assert!(declared.insert(key), "{method} {path}: {key:?} twice");
                if key.1 == "path" {
                    assert_eq!(p["required"], true, "{method} {path}: {key:?}");
                }
            }
            let in_path: BTreeSet<&str> = declared
                .iter()
                .filter(|(_, at)| *at == "path")
                .map(|(name, _)| *name)
                .collect();
            assert_eq!(in_path, templated, "{method} {path}");
            let statuses: Vec<&String> =
                operation["responses"].as_object().unwrap().keys().collect();
            assert!(
                statuses.iter().any(|s| s.starts_with('2')),
                "{method} {path} documents no success"
            );
        }
    }

    #[test]
    fn every_route_but_the_open_ones_needs_a_bearer_token() {
        let doc = document();
        assert_eq!(
            doc["components"]["securitySchemes"][super::BEARER],
            serde_json::json!({
                "type": "http",
                "scheme": "bearer",
                "description": doc["components"]["securitySchemes"][super::BEARER]["description"],
            })
        );
        let all = operations(&doc);
        for open in OPEN {
            assert!(
                all.iter().any(|(path, ..)| path == open),
                "{open} is missing"
            );
        }
        for (path, method, operation) in all {
            if OPEN.contains(&path.as_str()) {
                assert!(operation.get("security").is_none(), "{method} {path}");
                continue;
            }
            let security = if path.starts_with(REGISTRY) {
                serde_json::json!([{ super::BEARER: [] }, { super::BASIC: [] }])
            } else {
                serde_json::json!([{ super::BEARER: [] }])
            };
            assert_eq!(operation["security"], security, "{method} {path}");
            assert!(
                operation["responses"].get("401").is_some(),
                "{method} {path} does not document 401"
            );
        }
    }

    #[test]
    fn every_error_is_a_problem_document() {
        let doc = document();
        for (path, method, operation) in operations(&doc) {
            for (status, response) in operation["responses"].as_object().unwrap() {
                // `/readyz` answers 503 with its own report, not a problem.
                if !status.starts_with(['4', '5']) || path == "/readyz" {
                    continue;
                }
                let (media, schema) = if path.starts_with(REGISTRY) {
                    (
                        super::REGISTRY_JSON,
                        "#/components/schemas/RegistryErrorDoc",
                    )
                } else {
                    (super::PROBLEM_JSON, "#/components/schemas/Problem")
                };
                let content = &resolve(&doc, response)["content"];
                assert_eq!(
                    content.as_object().unwrap().keys().collect::<Vec<_>>(),
                    [media],
                    "{method} {path} {status}"
                );
                assert_eq!(content[media]["schema"]["$ref"], schema);
            }
        }
    }

    #[test]
    fn a_declaration_s_bounds_are_the_registry_s() {
        let doc = document();
        let partitions =
            &doc["components"]["schemas"]["DatasetDeclaration"]["properties"]["partitions"];
        assert_eq!(partitions["minimum"], 1);
        assert_eq!(
            partitions["maximum"],
            u64::from(tenantsync_dataset::MAX_PARTITIONS)
        );
    }
}
