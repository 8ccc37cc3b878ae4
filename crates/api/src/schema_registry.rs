//! `/v1/schema-registry`: a Confluent-Schema-Registry-compatible API over the datasets' Avro
//! schemas, enough for standard serializers and deserializers (confluent-kafka's
//! `SchemaRegistryClient` with `AvroSerializer` and `AvroDeserializer`).
//!
//! A subject is `{topic}-value` where the topic is a dataset's Avro state topic
//! (`{prefix}.{dataset}.state.avro`), for datasets with Avro on; nothing else is a subject
//! (40401). Its versions are the dataset's Avro schema versions, their ids the ones the wire
//! format carries, and its compatibility mode is the dataset's mode (shared with its JSON
//! Schema). Bodies and errors are `application/vnd.schemaregistry.v1+json`, errors
//! `{"error_code", "message"}` with Confluent's codes, also for refusals of authentication.
//!
//! Credentials: `Authorization: Bearer <token>` as everywhere, or HTTP Basic with the token as
//! the password (what Schema Registry clients send with `basic.auth.user.info`; the user name
//! is ignored), turned into the bearer form before the one authentication middleware runs.
//! Reading a subject needs read access to every tenant of its dataset (its Avro topic holds
//! them all); registering, and setting a mode, needs `admin`.
//!
//! It registers only through [`Schemas`](tenantsync_schema::Schemas), whose rules decide, and
//! never shows a schema of a dataset the caller may not read.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use tenantsync_core::DatasetName;
use tenantsync_schema::avro::AvroSchema;
use tenantsync_schema::{Break, Compatibility, RegisterError, SchemaError};
use tenantsync_store::{SchemaFormat, StoreError, StoredSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, Caller};
use crate::extract::{ApiBody, ApiQuery};
use crate::{ApiError, AppState, datasets};

/// The media type of every body this API answers with.
pub const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The documented routes, without their layers (see [`router`]).
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::default()
        .routes(routes!(subjects))
        .routes(routes!(lookup))
        .routes(routes!(versions, register))
        .routes(routes!(version))
        .routes(routes!(schema_by_id))
        .routes(routes!(id_versions))
        .routes(routes!(compatible_with_all))
        .routes(routes!(compatible_with))
        .routes(routes!(config, set_config))
        .routes(routes!(subject_config, set_subject_config))
}

/// [`routes`], each behind authentication (Bearer, or Basic with the token as password).
pub fn router(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router<Arc<AppState>> {
    routes
        // Recent clients ask for a topic's associations first, and fall back to the topic
        // naming strategy on 404.
        .route("/associations", any(not_found))
        .route("/associations/{*rest}", any(not_found))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state, auth::authenticate))
        .layer(middleware::from_fn(credentials))
}

/// An error as Confluent's Schema Registry renders it.
#[derive(Debug)]
pub struct SrError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl SrError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }

    fn version_not_found(subject: &str, version: u32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found for subject '{subject}'."),
        )
    }

    fn schema_not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {what} not found."),
        )
    }

    fn invalid_schema(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 42201, message)
    }

    fn invalid_compatibility(given: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level {given:?}; use BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE or NONE."
            ),
        )
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, 40301, message)
    }

    /// The error code of a refusal that has no code of its own, by its status.
    fn code_for(status: StatusCode) -> u32 {
        match status.as_u16() {
            401 => 40101,
            403 => 40301,
            500 | 503 => 50001,
            s => u32::from(s),
        }
    }
}

impl IntoResponse for SrError {
    fn into_response(self) -> Response {
        let body = json!({ "error_code": self.code, "message": self.message });
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The API's own refusals (from the store, the log, an extractor) keep their status and
/// message; the details of internal failures are logged by [`ApiError::problem`], not sent.
impl From<ApiError> for SrError {
    fn from(e: ApiError) -> Self {
        let (status, problem) = e.problem();
        let message = problem["detail"].as_str().unwrap_or_default().to_owned();
        Self::new(status, Self::code_for(status), message)
    }
}

impl From<StoreError> for SrError {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<SchemaError> for SrError {
    fn from(e: SchemaError) -> Self {
        match e {
            SchemaError::Invalid { pointer, message } => {
                Self::invalid_schema(format!("Invalid schema at '{pointer}': {message}"))
            }
            SchemaError::Store(e) => e.into(),
        }
    }
}

fn describe(b: &Break) -> String {
    format!(
        "{} (at '{}', against version {})",
        b.message, b.pointer, b.version
    )
}

fn register_error(subject: &str, e: RegisterError) -> SrError {
    match e {
        RegisterError::Invalid(e) => e.into(),
        RegisterError::Incompatible { mode, breaks } => SrError::new(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" under {}: {}",
                mode.as_str(),
                breaks.iter().map(describe).collect::<Vec<_>>().join("; ")
            ),
        ),
        RegisterError::Store(e) => e.into(),
    }
}

/// A success, in the registry's media type.
fn answer(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE))],
        body.to_string(),
    )
        .into_response()
}

/// In front of authentication: HTTP Basic credentials become the bearer token they carry as
/// their password; behind it, every refusal that is not in the registry's form yet (401 from
/// authentication, 413 from the body limit, axum's own) is put in it.
async fn credentials(mut request: Request, next: Next) -> Response {
    if let Some(token) = basic_password(request.headers())
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    let response = next.run(request).await;
    let ours = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t == MEDIA_TYPE);
    if response.status().is_success() || ours {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let message = match serde_json::from_slice::<Value>(&bytes) {
        Ok(problem) => problem["detail"].as_str().unwrap_or_default().to_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    };
    let mut converted =
        SrError::new(parts.status, SrError::code_for(parts.status), message).into_response();
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        for value in parts.headers.get_all(&name) {
            converted.headers_mut().append(&name, value.clone());
        }
    }
    if parts.status == StatusCode::UNAUTHORIZED {
        converted.headers_mut().append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tenantsync\""),
        );
    }
    converted
}

/// The password of `Authorization: Basic base64(user:password)`, when it is one.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_, password) = decoded.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

async fn not_found() -> SrError {
    SrError::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found")
}

async fn method_not_allowed() -> SrError {
    SrError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        405,
        "HTTP 405 Method Not Allowed",
    )
}

/// 40301 unless the caller may read every tenant of the dataset: checked before anything
/// about the dataset is looked up, so a caller learns nothing of datasets it may not read.
fn readable(caller: &Caller, subject: &str, dataset: &DatasetName) -> Result<(), SrError> {
    if caller.reads_every_tenant(dataset) {
        return Ok(());
    }
    Err(SrError::forbidden(format!(
        "this token may not read subject '{subject}': it needs the scope read:{dataset}:* (or a wider one)"
    )))
}

/// Whether the dataset is declared with Avro on.
async fn avro_dataset(state: &AppState, name: &DatasetName) -> Result<bool, SrError> {
    Ok(state
        .datasets
        .get(name)
        .await
        .map_err(ApiError::from)?
        .is_some()
        && datasets::avro_on(state, name).await?)
}

/// The dataset behind a subject the caller may read: 40401 for a name that is not of a
/// subject's form, then 40301 without the scope, then 40401 unless the dataset is declared with
/// Avro on.
async fn subject(state: &AppState, caller: &Caller, subject: &str) -> Result<DatasetName, SrError> {
    let name = state
        .schemas
        .subject_dataset(subject)
        .ok_or_else(|| SrError::subject_not_found(subject))?;
    readable(caller, subject, &name)?;
    if !avro_dataset(state, &name).await? {
        return Err(SrError::subject_not_found(subject));
    }
    Ok(name)
}

async fn avro_versions(
    state: &AppState,
    dataset: &DatasetName,
) -> Result<Vec<StoredSchema>, SrError> {
    Ok(state.schemas.versions(dataset, SchemaFormat::Avro).await?)
}

/// `latest` (or -1), or a version number from 1 to 2^31-1; 42202 otherwise.
fn version_id(given: &str) -> Result<Option<u32>, SrError> {
    if given == "latest" || given == "-1" {
        return Ok(None);
    }
    given
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=i32::MAX as u32).contains(n))
        .map(Some)
        .ok_or_else(|| {
            SrError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                42202,
                format!(
                    "The specified version '{given}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
                ),
            )
        })
}

/// The version `given` names among `versions` (oldest first).
fn pick(subject: &str, versions: Vec<StoredSchema>, given: &str) -> Result<StoredSchema, SrError> {
    match version_id(given)? {
        None => versions.into_iter().next_back().ok_or_else(|| {
            SrError::new(
                StatusCode::NOT_FOUND,
                40402,
                format!("Subject '{subject}' has no version yet."),
            )
        }),
        Some(n) => versions
            .into_iter()
            .find(|v| v.version == n)
            .ok_or_else(|| SrError::version_not_found(subject, n)),
    }
}

fn version_json(subject: &str, stored: &StoredSchema) -> Value {
    // `schemaType` is left out: AVRO is what clients assume without it.
    json!({
        "subject": subject,
        "version": stored.version,
        "id": stored.id,
        "schema": stored.schema,
    })
}

/// A schema as clients send it: `{"schema": "<text>"}`, with `schemaType` AVRO or absent and
/// no references; other fields (metadata, rule sets) are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = RegistrySchemaBody)]
struct SchemaBody {
    /// The Avro schema, as text.
    schema: String,
    /// `AVRO`, or absent.
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
}

fn schema_text(body: &[u8]) -> Result<String, SrError> {
    let body: SchemaBody = serde_json::from_slice(body).map_err(|e| {
        SrError::new(
            StatusCode::BAD_REQUEST,
            400,
            format!("the body must be {{\"schema\": \"<Avro schema as text>\"}}: {e}"),
        )
    })?;
    if let Some(kind) = body.schema_type.filter(|t| t != "AVRO") {
        return Err(SrError::invalid_schema(format!(
            "Invalid schema: only AVRO schemas are served here, not {kind}"
        )));
    }
    if body.references.is_some_and(|r| !r.is_empty()) {
        return Err(SrError::invalid_schema(
            "Invalid schema: schema references are not supported",
        ));
    }
    Ok(body.schema)
}

/// `?subjectPrefix=`; the other parameters clients send (`deleted`, `offset`, ...) are ignored.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SubjectsQuery {
    /// Only the subjects starting with this.
    #[serde(rename = "subjectPrefix")]
    subject_prefix: Option<String>,
}

/// `GET /subjects`: the subjects of the datasets with Avro on that the caller may read.
#[utoipa::path(
    get,
    path = "/subjects",
    operation_id = "schema_registry_subjects",
    tag = "schema-registry",
    params(SubjectsQuery),
    responses(
        (status = 200, description = "The subjects the caller may read", body = Vec<String>, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
    )
)]
async fn subjects(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(query): ApiQuery<SubjectsQuery>,
) -> Result<Response, SrError> {
    let mut subjects = Vec::new();
    for dataset in state.datasets.all().await.map_err(ApiError::from)? {
        if caller.reads_every_tenant(&dataset.name)
            && datasets::avro_on(&state, &dataset.name).await?
        {
            subjects.push(state.schemas.subject(&dataset.name));
        }
    }
    if let Some(prefix) = &query.subject_prefix {
        subjects.retain(|s| s.starts_with(prefix.as_str()));
    }
    subjects.sort();
    Ok(answer(json!(subjects)))
}

/// `GET /subjects/{subject}/versions`: the version numbers, oldest first.
#[utoipa::path(
    get,
    path = "/subjects/{subject}/versions",
    operation_id = "schema_registry_versions",
    tag = "schema-registry",
    params(crate::openapi::schemas::SubjectPath),
    responses(
        (status = 200, description = "The version numbers, oldest first", body = Vec<u32>, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 404, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn versions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, SrError> {
    let dataset = subject(&state, &caller, &name).await?;
    let versions = avro_versions(&state, &dataset).await?;
    Ok(answer(json!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>()
    )))
}

/// `GET /subjects/{subject}/versions/{version|latest}`.
#[utoipa::path(
    get,
    path = "/subjects/{subject}/versions/{version}",
    operation_id = "schema_registry_version",
    tag = "schema-registry",
    params(crate::openapi::schemas::SubjectVersionPath),
    responses(
        (status = 200, description = "The version", body = crate::openapi::schemas::RegistrySchema, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 404, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn version(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, given)): Path<(String, String)>,
) -> Result<Response, SrError> {
    let dataset = subject(&state, &caller, &name).await?;
    let stored = pick(&name, avro_versions(&state, &dataset).await?, &given)?;
    Ok(answer(version_json(&name, &stored)))
}

/// `POST /subjects/{subject}`: the version of the subject that has this schema (compared in
/// canonical form), or 40403.
#[utoipa::path(
    post,
    path = "/subjects/{subject}",
    operation_id = "schema_registry_lookup",
    tag = "schema-registry",
    params(crate::openapi::schemas::SubjectPath),
    request_body(content = SchemaBody, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "The version that has this schema", body = crate::openapi::schemas::RegistrySchema, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 404, response = crate::openapi::RegistryError),
        (status = 413, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn lookup(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, SrError> {
    let dataset = subject(&state, &caller, &name).await?;
    let text = schema_text(&body)?;
    let given = AvroSchema::parse(&text)?;
    let found = avro_versions(&state, &dataset)
        .await?
        .into_iter()
        .rev()
        .find(|v| {
            v.schema == text || AvroSchema::parse(&v.schema).is_ok_and(|s| s.text() == given.text())
        })
        .ok_or_else(|| SrError::schema_not_found(format!("for subject '{name}'")))?;
    Ok(answer(version_json(&name, &found)))
}

/// `POST /subjects/{subject}/versions`: registers an Avro schema under the dataset's mode;
/// `{"id"}` (also of an identical latest version). Needs `admin`.
#[utoipa::path(
    post,
    path = "/subjects/{subject}/versions",
    operation_id = "schema_registry_register",
    tag = "schema-registry",
    params(crate::openapi::schemas::SubjectPath),
    request_body(content = SchemaBody, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "Registered, or already the latest version", body = crate::openapi::schemas::RegistryRegistered, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 404, response = crate::openapi::RegistryError),
        (status = 409, response = crate::openapi::RegistryError),
        (status = 413, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn register(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, SrError> {
    caller.require_admin()?;
    let dataset = subject(&state, &caller, &name).await?;
    let text = schema_text(&body)?;
    let registered = state
        .schemas
        .register_avro(&dataset, &text)
        .await
        .map_err(|e| register_error(&name, e))?;
    Ok(answer(json!({
        "id": registered.schema.id,
        "version": registered.schema.version,
        "subject": name,
    })))
}

/// The Avro version with this id, of a dataset with Avro on that the caller may read.
async fn by_id(state: &AppState, caller: &Caller, id: &str) -> Result<StoredSchema, SrError> {
    let not_found = || SrError::schema_not_found(id);
    let id: u32 = id.parse().map_err(|_| not_found())?;
    let stored = state
        .schemas
        .by_id(id)
        .await?
        .filter(|s| s.format == SchemaFormat::Avro)
        .ok_or_else(not_found)?;
    let subject = state.schemas.subject(&stored.dataset);
    readable(caller, &subject, &stored.dataset)?;
    if !avro_dataset(state, &stored.dataset).await? {
        return Err(not_found());
    }
    Ok(stored)
}

/// `GET /schemas/ids/{id}`: `{"schema"}`. Query parameters (`subject`, `format`,
/// `fetchMaxId`, ...) are accepted and ignored: ids are unique across subjects.
#[utoipa::path(
    get,
    path = "/schemas/ids/{id}",
    operation_id = "schema_registry_schema_by_id",
    tag = "schema-registry",
    params(crate::openapi::schemas::SchemaIdPath),
    responses(
        (status = 200, description = "The schema with this id", body = crate::openapi::schemas::RegistrySchemaText, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 404, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn schema_by_id(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, SrError> {
    let stored = by_id(&state, &caller, &id).await?;
    Ok(answer(json!({ "schema": stored.schema })))
}

/// `GET /schemas/ids/{id}/versions`: `[{"subject", "version"}]`.
#[utoipa::path(
    get,
    path = "/schemas/ids/{id}/versions",
    operation_id = "schema_registry_id_versions",
    tag = "schema-registry",
    params(crate::openapi::schemas::SchemaIdPath),
    responses(
        (status = 200, description = "The subject and version with this id", body = Vec<crate::openapi::schemas::RegistrySubjectVersion>, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 404, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn id_versions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, SrError> {
    let stored = by_id(&state, &caller, &id).await?;
    let subject = state.schemas.subject(&stored.dataset);
    Ok(answer(
        json!([{ "subject": subject, "version": stored.version }]),
    ))
}

fn verdict(breaks: &[Break]) -> Response {
    answer(json!({
        "is_compatible": breaks.is_empty(),
        "messages": breaks.iter().map(describe).collect::<Vec<_>>(),
    }))
}

/// `POST /compatibility/subjects/{subject}/versions/{version|latest}`: whether the schema could
/// be read with, or read, that version, in the directions of the dataset's mode;
/// `{"is_compatible", "messages"}` (`?verbose=` is accepted: messages are always given).
#[utoipa::path(
    post,
    path = "/compatibility/subjects/{subject}/versions/{version}",
    operation_id = "schema_registry_compatible_with",
    tag = "schema-registry",
    params(crate::openapi::schemas::SubjectVersionPath),
    request_body(content = SchemaBody, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "Whether the schema is compatible with that version", body = crate::openapi::schemas::RegistryVerdict, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 404, response = crate::openapi::RegistryError),
        (status = 413, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn compatible_with(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, given)): Path<(String, String)>,
    ApiBody(body): ApiBody,
) -> Result<Response, SrError> {
    let dataset = subject(&state, &caller, &name).await?;
    let text = schema_text(&body)?;
    let versions = avro_versions(&state, &dataset).await?;
    if version_id(&given)?.is_none() && versions.is_empty() {
        // Nothing registered yet: nothing to break.
        return Ok(verdict(&[]));
    }
    let against = pick(&name, versions, &given)?;
    let breaks = state
        .schemas
        .check_avro(&dataset, &text, Some(against.version))
        .await
        .map_err(|e| register_error(&name, e))?;
    Ok(verdict(&breaks))
}

/// `POST /compatibility/subjects/{subject}/versions`: as registering would check it, against
/// every version the dataset's mode names.
#[utoipa::path(
    post,
    path = "/compatibility/subjects/{subject}/versions",
    operation_id = "schema_registry_compatible_with_all",
    tag = "schema-registry",
    params(crate::openapi::schemas::SubjectPath),
    request_body(content = SchemaBody, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "Whether the schema is compatible with the versions its mode checks", body = crate::openapi::schemas::RegistryVerdict, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 404, response = crate::openapi::RegistryError),
        (status = 413, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn compatible_with_all(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, SrError> {
    let dataset = subject(&state, &caller, &name).await?;
    let text = schema_text(&body)?;
    let breaks = state
        .schemas
        .check_avro(&dataset, &text, None)
        .await
        .map_err(|e| register_error(&name, e))?;
    Ok(verdict(&breaks))
}

/// `{"compatibility": MODE}` (or `compatibilityLevel`, as a whole config sends it).
fn mode(body: &[u8]) -> Result<Compatibility, SrError> {
    let body: Value = serde_json::from_slice(body).map_err(|e| {
        SrError::new(
            StatusCode::BAD_REQUEST,
            400,
            format!("the body must be {{\"compatibility\": \"BACKWARD\"}}: {e}"),
        )
    })?;
    let given = body
        .get("compatibility")
        .or_else(|| body.get("compatibilityLevel"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    Compatibility::parse(given).ok_or_else(|| SrError::invalid_compatibility(given))
}

/// `GET /config`: the store-wide mode, `{"compatibilityLevel"}`.
#[utoipa::path(
    get,
    path = "/config",
    operation_id = "schema_registry_config",
    tag = "schema-registry",
    responses(
        (status = 200, description = "The default compatibility mode", body = crate::openapi::schemas::RegistryLevel, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 403, response = crate::openapi::RegistryError),
    )
)]
async fn config(State(state): State<Arc<AppState>>, _: Caller) -> Result<Response, SrError> {
    let mode = state.schemas.compatibility(None).await?;
    Ok(answer(json!({ "compatibilityLevel": mode.as_str() })))
}

/// `PUT /config` with `{"compatibility"}`: sets the store-wide mode. Needs `admin`.
#[utoipa::path(
    put,
    path = "/config",
    operation_id = "schema_registry_set_config",
    tag = "schema-registry",
    request_body(content = crate::openapi::schemas::RegistryConfigBody, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "The new default mode", body = crate::openapi::schemas::RegistryMode, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 413, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn set_config(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiBody(body): ApiBody,
) -> Result<Response, SrError> {
    caller.require_admin()?;
    let mode = mode(&body)?;
    state.schemas.set_compatibility(None, mode).await?;
    Ok(answer(json!({ "compatibility": mode.as_str() })))
}

/// `GET /config/{subject}`: the dataset's mode (its own, else the store-wide one), as
/// Confluent answers with `defaultToGlobal=true`.
#[utoipa::path(
    get,
    path = "/config/{subject}",
    operation_id = "schema_registry_subject_config",
    tag = "schema-registry",
    params(crate::openapi::schemas::SubjectPath),
    responses(
        (status = 200, description = "The subject's compatibility mode", body = crate::openapi::schemas::RegistryLevel, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 404, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn subject_config(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, SrError> {
    let dataset = subject(&state, &caller, &name).await?;
    let mode = state.schemas.compatibility(Some(&dataset)).await?;
    Ok(answer(json!({ "compatibilityLevel": mode.as_str() })))
}

/// `PUT /config/{subject}` with `{"compatibility"}`: sets the dataset's mode, for its JSON
/// Schema and Avro versions alike. Needs `admin`.
#[utoipa::path(
    put,
    path = "/config/{subject}",
    operation_id = "schema_registry_set_subject_config",
    tag = "schema-registry",
    params(crate::openapi::schemas::SubjectPath),
    request_body(content = crate::openapi::schemas::RegistryConfigBody, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "The subject's new mode", body = crate::openapi::schemas::RegistryMode, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 400, response = crate::openapi::RegistryError),
        (status = 403, response = crate::openapi::RegistryError),
        (status = 404, response = crate::openapi::RegistryError),
        (status = 413, response = crate::openapi::RegistryError),
        (status = 422, response = crate::openapi::RegistryError),
    )
)]
async fn set_subject_config(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, SrError> {
    caller.require_admin()?;
    let dataset = subject(&state, &caller, &name).await?;
    let mode = mode(&body)?;
    state
        .schemas
        .set_compatibility(Some(&dataset), mode)
        .await?;
    Ok(answer(json!({ "compatibility": mode.as_str() })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_carry_the_token_as_password() {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode("anyone:tsk_secret");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        assert_eq!(basic_password(&headers).as_deref(), Some("tsk_secret"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tsk_secret"),
        );
        assert_eq!(basic_password(&headers), None);
    }

    #[test]
    fn versions_are_latest_or_positive_numbers() {
        assert_eq!(version_id("latest").unwrap(), None);
        assert_eq!(version_id("-1").unwrap(), None);
        assert_eq!(version_id("3").unwrap(), Some(3));
        for bad in ["0", "-2", "x", "2147483648", ""] {
            assert_eq!(version_id(bad).unwrap_err().code, 42202, "{bad}");
        }
    }
}
