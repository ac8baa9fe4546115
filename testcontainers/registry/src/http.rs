//! The REST routes, shaped like Confluent's (paths, JSON bodies, error codes, content type).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::compat::Level;
use crate::error::ApiError;
use crate::journal::{Entry, Journal};
use crate::model::{Registered, Registration, State as Model, VersionSpec};

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The registry: its state and the journal every change is written to before it is applied.
pub struct Registry {
    state: Mutex<Model>,
    journal: Journal,
}

impl Registry {
    /// Builds the registry from a journal and the entries replayed from it.
    pub fn new(journal: Journal, replayed: Vec<Entry>) -> Self {
        let mut state = Model::default();
        for entry in replayed {
            if let Err(e) = state.apply(entry) {
                tracing::warn!("skipping a journal entry that cannot be applied: {e}");
            }
        }
        Self {
            state: Mutex::new(state),
            journal,
        }
    }

    /// Journals `entries`, then applies them. Called with the state lock held, so changes are
    /// applied in journal order.
    async fn commit(&self, state: &mut Model, entries: Vec<Entry>) -> Result<(), ApiError> {
        self.journal
            .append(&entries)
            .await
            .map_err(ApiError::store)?;
        for entry in entries {
            state.apply(entry).map_err(ApiError::store)?;
        }
        Ok(())
    }
}

type Shared = Arc<Registry>;
type ApiResult = Result<Response, ApiError>;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &body))
}

fn registered_json(r: &Registered) -> Value {
    json!({"subject": r.subject, "version": r.version, "id": r.id, "schema": r.schema})
}

/// The REST API over `registry`.
pub fn router(registry: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(subject_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(raw_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_with_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_with_all),
        )
        .route("/config", get(global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(|| async { ok(json!({"mode": "READWRITE"})) }))
        .fallback(|| async { ApiError::not_found_route() })
        .with_state(registry)
}

/// Serves `registry` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Shared,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[derive(Deserialize, Default)]
struct Flags {
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    verbose: bool,
    #[serde(default, rename = "defaultToGlobal")]
    default_to_global: bool,
}

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse().map_err(|_| ApiError::schema_not_found())
}

/// The `schema` of a request body, checked for what this registry supports. Bodies are read
/// whatever the content type, as Confluent's clients send several.
fn schema_from_body(body: &Bytes) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        schema: Option<String>,
        schema_type: Option<String>,
        #[serde(default)]
        references: Vec<Value>,
    }
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| ApiError::unprocessable(format!("Unprocessable request body: {e}")))?;
    if let Some(t) = body.schema_type.as_deref() {
        if !t.eq_ignore_ascii_case("AVRO") {
            return Err(ApiError::invalid_schema(format!(
                "schema type {t} is not supported by this registry (AVRO only)"
            )));
        }
    }
    if !body.references.is_empty() {
        return Err(ApiError::invalid_schema(
            "schema references are not supported by this registry",
        ));
    }
    match body.schema {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(ApiError::invalid_schema("Empty schema")),
    }
}

fn level_from_body(body: &Bytes) -> Result<Level, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::unprocessable(format!("Unprocessable request body: {e}")))?;
    let given = value
        .get("compatibility")
        .or_else(|| value.get("compatibilityLevel"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    given
        .parse()
        .map_err(|()| ApiError::invalid_compatibility_level(given))
}

async fn schema_by_id(State(r): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let state = r.state.lock().await;
    ok(json!({"schema": state.schema_by_id(parse_id(&id)?)?}))
}

async fn raw_schema_by_id(State(r): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let state = r.state.lock().await;
    Ok(state
        .schema_by_id(parse_id(&id)?)?
        .to_owned()
        .into_response())
}

async fn subjects_of_id(
    State(r): State<Shared>,
    Path(id): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let state = r.state.lock().await;
    let mut subjects: Vec<String> = state
        .usages_of_id(parse_id(&id)?, f.deleted)?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn versions_of_id(
    State(r): State<Shared>,
    Path(id): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let state = r.state.lock().await;
    let usages: Vec<Value> = state
        .usages_of_id(parse_id(&id)?, f.deleted)?
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    ok(json!(usages))
}

async fn subjects(State(r): State<Shared>, Query(f): Query<Flags>) -> ApiResult {
    ok(json!(r.state.lock().await.subjects(f.deleted)))
}

async fn subject_versions(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    ok(json!(r
        .state
        .lock()
        .await
        .subject_versions(&subject, f.deleted)?))
}

async fn version(
    State(r): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let found = r.state.lock().await.version(&subject, spec, f.deleted)?;
    ok(registered_json(&found))
}

async fn raw_version(
    State(r): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let found = r.state.lock().await.version(&subject, spec, f.deleted)?;
    Ok(found.schema.into_response())
}

async fn referenced_by(
    State(r): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    r.state.lock().await.version(&subject, spec, false)?;
    // References are not supported, so nothing can refer to a schema.
    ok(json!([]))
}

async fn lookup(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
    body: Bytes,
) -> ApiResult {
    let text = schema_from_body(&body)?;
    let found = r.state.lock().await.lookup(&subject, &text, f.deleted)?;
    ok(registered_json(&found))
}

async fn register(State(r): State<Shared>, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let text = schema_from_body(&body)?;
    let mut state = r.state.lock().await;
    match state.register(&subject, &text)? {
        Registration::Existing(found) => ok(json!({"id": found.id})),
        Registration::New(new, entry) => {
            r.commit(&mut state, vec![entry]).await?;
            tracing::info!(
                subject,
                version = new.version,
                id = new.id,
                "schema registered"
            );
            ok(json!({"id": new.id}))
        }
    }
}

async fn delete_subject(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let mut state = r.state.lock().await;
    let (versions, entries) = state.delete_subject(&subject, f.permanent)?;
    r.commit(&mut state, entries).await?;
    ok(json!(versions))
}

async fn delete_version(
    State(r): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let mut state = r.state.lock().await;
    let (version, entry) = state.delete_version(&subject, spec, f.permanent)?;
    r.commit(&mut state, vec![entry]).await?;
    ok(json!(version))
}

fn compatibility_response(problems: Vec<String>, verbose: bool) -> ApiResult {
    let mut body = json!({"is_compatible": problems.is_empty()});
    if verbose {
        body["messages"] = json!(problems);
    }
    ok(body)
}

async fn compatibility_with_version(
    State(r): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(f): Query<Flags>,
    body: Bytes,
) -> ApiResult {
    let spec = VersionSpec::parse(&version)?;
    let text = schema_from_body(&body)?;
    let problems = r
        .state
        .lock()
        .await
        .check_compatibility(&subject, Some(spec), &text)?;
    compatibility_response(problems, f.verbose)
}

async fn compatibility_with_all(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
    body: Bytes,
) -> ApiResult {
    let text = schema_from_body(&body)?;
    let problems = r
        .state
        .lock()
        .await
        .check_compatibility(&subject, None, &text)?;
    compatibility_response(problems, f.verbose)
}

async fn global_config(State(r): State<Shared>) -> ApiResult {
    ok(json!({"compatibilityLevel": r.state.lock().await.global_level()}))
}

async fn put_global_config(State(r): State<Shared>, body: Bytes) -> ApiResult {
    let level = level_from_body(&body)?;
    let mut state = r.state.lock().await;
    let entry = Entry::Config {
        subject: None,
        level: Some(level),
    };
    r.commit(&mut state, vec![entry]).await?;
    ok(json!({"compatibility": level}))
}

async fn subject_config(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> ApiResult {
    let state = r.state.lock().await;
    match state.subject_level(&subject) {
        Some(level) => ok(json!({"compatibilityLevel": level})),
        None if f.default_to_global => ok(json!({"compatibilityLevel": state.global_level()})),
        None => Err(ApiError::subject_level_compatibility_not_configured(
            &subject,
        )),
    }
}

async fn put_subject_config(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let level = level_from_body(&body)?;
    let mut state = r.state.lock().await;
    let entry = Entry::Config {
        subject: Some(subject),
        level: Some(level),
    };
    r.commit(&mut state, vec![entry]).await?;
    ok(json!({"compatibility": level}))
}

async fn delete_subject_config(State(r): State<Shared>, Path(subject): Path<String>) -> ApiResult {
    let mut state = r.state.lock().await;
    let Some(previous) = state.subject_level(&subject) else {
        return Err(ApiError::subject_not_found(&subject));
    };
    let entry = Entry::Config {
        subject: Some(subject),
        level: None,
    };
    r.commit(&mut state, vec![entry]).await?;
    ok(json!({"compatibilityLevel": previous}))
}

/// Opens the journal (`bootstrap: None` = ephemeral), replays it and serves on `listen` until
/// `shutdown` fires. This is the whole registry process.
pub async fn run(
    listen: std::net::SocketAddr,
    bootstrap: Option<&str>,
    topic: &str,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let (journal, replayed) = match bootstrap {
        Some(bootstrap) => {
            let (journal, entries) = crate::journal::KafkaJournal::open(bootstrap, topic)
                .await
                .map_err(|e| format!("cannot open the journal topic {topic}: {e}"))?;
            (Journal::Kafka(journal), entries)
        }
        None => (Journal::Ephemeral, Vec::new()),
    };
    tracing::info!(entries = replayed.len(), topic, "journal replayed");
    let registry = Arc::new(Registry::new(journal, replayed));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(%listen, "schema registry serving");
    serve(listener, registry, shutdown)
        .await
        .map_err(|e| format!("server failed: {e}"))
}
