//! Writer schemas by id, fetched from a Confluent-compatible registry (`GET /schemas/ids/{id}`).
//!
//! Each id is fetched once: concurrent decoders asking for the same id wait for one request, and
//! the result is kept for the life of the process (a registered schema never changes). A failed
//! fetch is not cached. When the registry is unreachable, a fetch is retried a bounded number of
//! times with backoff and then reported as transient, so the caller retries the record later
//! rather than dead-lettering it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::Schema;
use tokio::sync::OnceCell;

/// Why a writer schema could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("schema id {0} is not known to the registry")]
    NotFound(u32),
    #[error("schema registry unreachable fetching id {id} after {attempts} attempts: {reason}")]
    Unavailable {
        id: u32,
        attempts: u32,
        reason: String,
    },
    #[error("schema id {id} from the registry is not a valid Avro schema: {reason}")]
    Invalid { id: u32, reason: String },
}

/// How hard to try before reporting the registry unavailable.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

type Cell = Arc<OnceCell<Arc<Schema>>>;

pub struct SchemaRegistry {
    base_url: String,
    http: reqwest::Client,
    credentials: Option<(String, Option<String>)>,
    retry: RetryPolicy,
    cache: Mutex<HashMap<u32, Cell>>,
}

impl SchemaRegistry {
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            credentials: None,
            retry: RetryPolicy::default(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_basic_auth(mut self, username: &str, password: Option<&str>) -> Self {
        self.credentials = Some((username.to_owned(), password.map(str::to_owned)));
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The schema registered under `id`.
    pub async fn writer_schema(&self, id: u32) -> Result<Arc<Schema>, FetchError> {
        let cell = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.entry(id).or_default().clone()
        };
        cell.get_or_try_init(|| self.fetch_with_retries(id))
            .await
            .cloned()
    }

    async fn fetch_with_retries(&self, id: u32) -> Result<Arc<Schema>, FetchError> {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.fetch(id).await {
                Err(Fetch::Transient(reason)) if attempt < self.retry.attempts => {
                    tracing::warn!(id, attempt, %reason, "schema registry fetch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
                Err(Fetch::Transient(reason)) => {
                    return Err(FetchError::Unavailable {
                        id,
                        attempts: attempt,
                        reason,
                    })
                }
                Err(Fetch::Permanent(e)) => return Err(e),
                Ok(schema) => return Ok(Arc::new(schema)),
            }
        }
    }

    async fn fetch(&self, id: u32) -> Result<Schema, Fetch> {
        let mut req = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.base_url))
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        if let Some((user, password)) = &self.credentials {
            req = req.basic_auth(user, password.as_ref());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Fetch::Transient(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Fetch::Permanent(FetchError::NotFound(id)));
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Fetch::Transient(format!("HTTP {status}")));
        }
        if !status.is_success() {
            // 401/403 and other client errors will not fix themselves by retrying the record,
            // but they are not the record's fault either: report them as unavailability so
            // the record is retried, never dead-lettered, and the operator sees the error.
            return Err(Fetch::Transient(format!("HTTP {status}")));
        }
        #[derive(serde::Deserialize)]
        struct Body {
            schema: String,
        }
        let body: Body = resp
            .json()
            .await
            .map_err(|e| Fetch::Transient(format!("unreadable response: {e}")))?;
        Schema::parse_str(&body.schema).map_err(|e| {
            Fetch::Permanent(FetchError::Invalid {
                id,
                reason: e.to_string(),
            })
        })
    }
}

enum Fetch {
    Transient(String),
    Permanent(FetchError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_registry_is_retried_then_reported_unavailable() {
        // A port nothing listens on: bind, take the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let registry =
            SchemaRegistry::new(&format!("http://127.0.0.1:{port}")).with_retry(RetryPolicy {
                attempts: 3,
                first_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
            });
        match registry.writer_schema(7).await {
            Err(FetchError::Unavailable { id, attempts, .. }) => assert_eq!((id, attempts), (7, 3)),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // Failures are not cached: the next call tries again (and fails again here).
        assert!(matches!(
            registry.writer_schema(7).await,
            Err(FetchError::Unavailable { attempts: 3, .. })
        ));
    }
}
