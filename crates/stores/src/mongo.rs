//! MongoDB: connection settings, the client, batched write commands and how their errors are
//! classified.
//!
//! The writers send many statements per command (`insert` / `update` with `ordered: false`)
//! through [`run_write`], which maps the server's per-statement `writeErrors` back to statement
//! indexes. Every statement the sinks issue is idempotent, so a batch that failed as a whole
//! (network, not primary, write concern not satisfied) is simply sent again.

use std::collections::BTreeMap;
use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf};
use eventpipe_runtime::config::{redact_url, Invalid, Validate};
use eventpipe_runtime::sink::SinkError;
use mongodb::error::{Error, ErrorKind};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Database};
use serde::{Deserialize, Serialize};

/// `[sink]` of `ingest-writer`, `audit-writer` and `aggregator`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// `mongodb://` or `mongodb+srv://` URI; credentials and TLS options go here
    /// (`tls=true&tlsCAFile=…`, `authSource=…`). Logged with the password redacted.
    pub uri: String,
    pub database: String,
    /// Entries kept in an order's status history (`ingest-writer`).
    #[serde(default = "default_order_history")]
    pub order_history: usize,
    #[serde(default)]
    pub write_concern: WriteConcernConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Event-time windows (`aggregator`).
    #[serde(default)]
    pub windows: WindowsConfig,
}

/// How late (or early) an event may be and still be folded into its buckets (`aggregator`).
/// Lateness is measured against the partition's event-time watermark: the newest event time
/// seen on that partition so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowsConfig {
    pub minute_lateness_ms: i64,
    pub hour_lateness_ms: i64,
    pub day_lateness_ms: i64,
    /// Events stamped further than this in the future (by the wall clock) are not folded.
    pub future_skew_ms: i64,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        Self {
            minute_lateness_ms: 10 * 60_000,
            hour_lateness_ms: 2 * 3_600_000,
            day_lateness_ms: 2 * 86_400_000,
            future_skew_ms: 5 * 60_000,
        }
    }
}

fn default_order_history() -> usize {
    20
}

/// Write concern of the writers' commands. `audit-writer` always uses `majority` with the
/// journal, whatever is set here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriteConcernConfig {
    /// `"majority"`, a number of nodes (`"1"`), or a tag set name.
    pub w: String,
    pub journal: bool,
    /// How long the server waits for the acknowledgement before reporting a write concern
    /// error (retried as transient).
    pub timeout_ms: u64,
}

impl Default for WriteConcernConfig {
    fn default() -> Self {
        Self {
            w: "majority".into(),
            journal: true,
            timeout_ms: 10_000,
        }
    }
}

/// Connection pool and timeouts of the MongoDB client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    pub max_size: u32,
    pub min_size: u32,
    pub connect_timeout_ms: u64,
    /// How long an operation waits for a suitable server (e.g. a primary during an
    /// election) before failing; the failure is transient and the batch is retried.
    pub server_selection_timeout_ms: u64,
    pub max_idle_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 32,
            min_size: 0,
            connect_timeout_ms: 10_000,
            server_selection_timeout_ms: 30_000,
            max_idle_ms: 300_000,
        }
    }
}

/// Retention classes; documents carry `expires_at` and a TTL index removes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// `events` of ordinary types, counted from the event time.
    pub standard_days: u32,
    /// `events` of audit types and `audit_logs`.
    pub audit_days: u32,
    /// `event_aggregates` and `order_aggregates`, counted from the bucket start.
    pub aggregates_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            standard_days: 90,
            audit_days: 365,
            aggregates_days: 180,
        }
    }
}

impl Validate for MongoConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            return Err(Invalid::new(
                "sink.uri",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        if self.database.is_empty() || self.database.contains(['/', '.', ' ', '"', '$']) {
            return Err(Invalid::new(
                "sink.database",
                "must be a non-empty MongoDB database name",
            ));
        }
        if !(1..=1000).contains(&self.order_history) {
            return Err(Invalid::new("sink.order_history", "must be 1..=1000"));
        }
        if self.write_concern.w.is_empty() || self.write_concern.w == "0" {
            return Err(Invalid::new(
                "sink.write_concern.w",
                "must be \"majority\", a number of nodes ≥ 1 or a tag set",
            ));
        }
        if self.pool.max_size == 0 || self.pool.min_size > self.pool.max_size {
            return Err(Invalid::new(
                "sink.pool.max_size",
                "must be ≥ 1 and ≥ sink.pool.min_size",
            ));
        }
        let r = &self.retention;
        for (key, days) in [
            ("sink.retention.standard_days", r.standard_days),
            ("sink.retention.audit_days", r.audit_days),
            ("sink.retention.aggregates_days", r.aggregates_days),
        ] {
            if days == 0 {
                return Err(Invalid::new(key, "must be ≥ 1"));
            }
        }
        let w = &self.windows;
        for (key, ms) in [
            ("sink.windows.minute_lateness_ms", w.minute_lateness_ms),
            ("sink.windows.hour_lateness_ms", w.hour_lateness_ms),
            ("sink.windows.day_lateness_ms", w.day_lateness_ms),
            ("sink.windows.future_skew_ms", w.future_skew_ms),
        ] {
            if ms < 0 {
                return Err(Invalid::new(key, "must be ≥ 0"));
            }
        }
        Ok(())
    }
}

impl MongoConfig {
    /// `uri` and `database` with every other key at its default.
    pub fn new(uri: impl Into<String>, database: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            database: database.into(),
            order_history: default_order_history(),
            write_concern: WriteConcernConfig::default(),
            pool: PoolConfig::default(),
            retention: RetentionConfig::default(),
            windows: WindowsConfig::default(),
        }
    }

    /// The configured write concern.
    pub fn write_concern(&self) -> WriteConcern {
        let wc = &self.write_concern;
        let w = match wc.w.as_str() {
            "majority" => Acknowledgment::Majority,
            n => match n.parse::<u32>() {
                Ok(n) => Acknowledgment::Nodes(n),
                Err(_) => Acknowledgment::Custom(n.to_owned()),
            },
        };
        WriteConcern::builder()
            .w(w)
            .journal(wc.journal)
            .w_timeout(Duration::from_millis(wc.timeout_ms))
            .build()
    }

    /// The write concern as it goes into a command document.
    pub fn write_concern_doc(&self) -> Document {
        write_concern_doc(&self.write_concern)
    }

    /// Connects (lazily: the first operation opens connections) and returns the database.
    pub async fn connect(&self, app_name: &str) -> Result<Database, SinkError> {
        let mut options = ClientOptions::parse(&self.uri).await.map_err(|e| {
            SinkError::Fatal(format!(
                "sink.uri {} cannot be used: {e}",
                redact_url(&self.uri)
            ))
        })?;
        options.app_name = Some(app_name.to_owned());
        options.max_pool_size = Some(self.pool.max_size);
        options.min_pool_size = Some(self.pool.min_size);
        options.connect_timeout = Some(Duration::from_millis(self.pool.connect_timeout_ms));
        options.server_selection_timeout =
            Some(Duration::from_millis(self.pool.server_selection_timeout_ms));
        options.max_idle_time = Some(Duration::from_millis(self.pool.max_idle_ms));
        options.write_concern = Some(self.write_concern());
        let client = Client::with_options(options).map_err(|e| {
            SinkError::Fatal(format!(
                "cannot create a MongoDB client for {}: {e}",
                redact_url(&self.uri)
            ))
        })?;
        tracing::info!(uri = %redact_url(&self.uri), database = %self.database, "MongoDB client ready");
        Ok(client.database(&self.database))
    }
}

pub fn write_concern_doc(wc: &WriteConcernConfig) -> Document {
    let w = match wc.w.parse::<i32>() {
        Ok(n) => Bson::Int32(n),
        Err(_) => Bson::String(wc.w.clone()),
    };
    doc! {"w": w, "j": wc.journal, "wtimeout": wc.timeout_ms as i64}
}

/// The write concern `audit_logs` is always written with.
pub fn majority_journaled() -> WriteConcernConfig {
    WriteConcernConfig {
        w: "majority".into(),
        journal: true,
        ..WriteConcernConfig::default()
    }
}

/// Server error codes after which the same command may succeed: elections, shutdowns,
/// network trouble, write-concern timeouts, lock/catalog conflicts.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    24,    // LockTimeout
    46,    // LockBusy
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict
    117,   // ConflictingOperationInProgress
    133,   // FailedToSatisfyReadPreference
    134,   // ReadConcernMajorityNotAvailableYet
    189,   // PrimarySteppedDown
    202,   // NetworkInterfaceExceededTimeLimit
    251,   // NoSuchTransaction
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Codes that no retry will fix: credentials and permissions.
const FATAL_CODES: &[i32] = &[
    13, // Unauthorized
    18, // AuthenticationFailed
];

/// How a failed command is to be treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Retry the whole batch later.
    Transient {
        reason: &'static str,
        detail: String,
    },
    /// Exit: nothing will change by retrying.
    Fatal(String),
    /// The command itself was refused because of what it carried (e.g. a document too
    /// large); sent again statement by statement, the offending one is rejected.
    Permanent { code: i32, detail: String },
}

impl Failure {
    pub fn into_sink_error(self) -> SinkError {
        match self {
            Failure::Transient { reason, detail } => SinkError::Transient { reason, detail },
            Failure::Fatal(m) => SinkError::Fatal(m),
            Failure::Permanent { code, detail } => SinkError::Transient {
                reason: "mongodb_refused",
                detail: format!("code {code}: {detail}"),
            },
        }
    }
}

/// Classifies an error returned by the driver for a whole command.
pub fn classify(e: &Error) -> Failure {
    let detail = e.to_string();
    if e.contains_label("TransientTransactionError")
        || e.contains_label("RetryableWriteError")
        || e.contains_label("UnknownTransactionCommitResult")
    {
        return Failure::Transient {
            reason: "mongodb_retryable",
            detail,
        };
    }
    match e.kind.as_ref() {
        ErrorKind::Authentication { .. } | ErrorKind::InvalidTlsConfig { .. } => {
            Failure::Fatal(detail)
        }
        ErrorKind::Command(c) => classify_code(c.code, detail),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
            classify_code(w.code, detail)
        }
        ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(_)) => {
            Failure::Transient {
                reason: "mongodb_write_concern",
                detail,
            }
        }
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => Failure::Transient {
            reason: "mongodb_network",
            detail,
        },
        ErrorKind::ServerSelection { .. } => Failure::Transient {
            reason: "mongodb_no_server",
            detail,
        },
        _ => Failure::Transient {
            reason: "mongodb_error",
            detail,
        },
    }
}

fn classify_code(code: i32, detail: String) -> Failure {
    if FATAL_CODES.contains(&code) {
        Failure::Fatal(detail)
    } else if TRANSIENT_CODES.contains(&code) || code == 11000 {
        Failure::Transient {
            reason: if code == 11000 {
                "mongodb_duplicate_key_race"
            } else {
                "mongodb_retryable"
            },
            detail,
        }
    } else {
        Failure::Permanent { code, detail }
    }
}

/// Whether a per-statement error code is worth retrying the batch for.
pub fn is_transient_code(code: i32) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// Duplicate key.
pub const DUPLICATE_KEY: i32 = 11000;
/// The collection's validator refused the document.
pub const DOCUMENT_VALIDATION_FAILURE: i32 = 121;

/// The reply to an `insert` or `update` command with many statements.
#[derive(Debug, Default)]
pub struct WriteReply {
    /// Documents matched (update) or inserted (insert).
    pub n: i64,
    /// Documents changed by an update (a no-op update matches without modifying).
    pub modified: i64,
    /// Statement indexes that inserted a new document through an upsert.
    pub upserted: Vec<usize>,
    /// Per-statement errors: index → (code, message).
    pub errors: BTreeMap<usize, (i32, String)>,
}

/// Runs a write command (`insert`, `update`, `delete`) and splits its reply. A write concern
/// error is returned as a transient failure: the statements may or may not be durable, and
/// since they are idempotent the batch is sent again.
pub async fn run_write(db: &Database, command: Document) -> Result<WriteReply, Failure> {
    let reply = db.run_command(command).await.map_err(|e| classify(&e))?;
    split_reply(&reply)
}

/// [`run_write`] for a command already encoded as BSON: long statement lists are held as
/// bytes rather than as document trees, which take many times the memory.
pub async fn run_raw_write(db: &Database, command: RawDocumentBuf) -> Result<WriteReply, Failure> {
    let reply = db
        .run_raw_command(command)
        .await
        .map_err(|e| classify(&e))?;
    split_reply(&reply)
}

fn split_reply(reply: &Document) -> Result<WriteReply, Failure> {
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Err(Failure::Transient {
            reason: "mongodb_write_concern",
            detail: format!(
                "write concern not satisfied: code {} {}",
                number(wce.get("code")),
                wce.get_str("errmsg").unwrap_or_default()
            ),
        });
    }
    let mut out = WriteReply {
        n: number(reply.get("n")),
        modified: number(reply.get("nModified")),
        ..WriteReply::default()
    };
    if let Ok(upserted) = reply.get_array("upserted") {
        out.upserted = upserted
            .iter()
            .filter_map(|u| u.as_document().map(|d| number(d.get("index")) as usize))
            .collect();
    }
    if let Ok(errors) = reply.get_array("writeErrors") {
        for e in errors.iter().filter_map(Bson::as_document) {
            out.errors.insert(
                number(e.get("index")) as usize,
                (
                    number(e.get("code")) as i32,
                    e.get_str("errmsg").unwrap_or_default().to_owned(),
                ),
            );
        }
    }
    Ok(out)
}

fn number(b: Option<&Bson>) -> i64 {
    match b {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

/// An index on `keys` named `name`.
pub fn index(keys: Document, name: &str) -> mongodb::IndexModel {
    mongodb::IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_owned()).build())
        .build()
}

/// The TTL index on `expires_at`: a document goes once that time has passed.
pub fn ttl_index() -> mongodb::IndexModel {
    mongodb::IndexModel::builder()
        .keys(bson::doc! {"expires_at": 1})
        .options(
            IndexOptions::builder()
                .name("ttl".to_owned())
                .expire_after(std::time::Duration::ZERO)
                .build(),
        )
        .build()
}

/// Creates an index unless one with the same name exists (start-up is idempotent).
pub async fn ensure_indexes(
    db: &Database,
    collection: &str,
    indexes: Vec<mongodb::IndexModel>,
) -> Result<(), SinkError> {
    if indexes.is_empty() {
        return Ok(());
    }
    db.collection::<Document>(collection)
        .create_indexes(indexes)
        .await
        .map(|_| ())
        .map_err(|e| classify(&e).into_sink_error())
}

/// Pings the server, for `/readyz`.
pub async fn ping(db: &Database) -> Result<(), SinkError> {
    db.run_command(doc! {"ping": 1})
        .await
        .map(|_| ())
        .map_err(|e| classify(&e).into_sink_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MongoConfig {
        MongoConfig::new("mongodb://127.0.0.1:27017/?replicaSet=rs0", "eventpipe")
    }

    #[test]
    fn validation_names_the_key() {
        assert!(config().validate().is_ok());
        let key = |c: MongoConfig| c.validate().map_err(|e| e.key);
        let mut c = config();
        c.uri = "http://x".into();
        assert_eq!(key(c), Err("sink.uri".into()));
        let mut c = config();
        c.database = "a.b".into();
        assert_eq!(key(c), Err("sink.database".into()));
        let mut c = config();
        c.write_concern.w = "0".into();
        assert_eq!(key(c), Err("sink.write_concern.w".into()));
        let mut c = config();
        c.retention.audit_days = 0;
        assert_eq!(key(c), Err("sink.retention.audit_days".into()));
        let mut c = config();
        c.pool.min_size = 100;
        assert_eq!(key(c), Err("sink.pool.max_size".into()));
    }

    #[test]
    fn write_concern_forms() {
        let mut c = config();
        assert_eq!(
            c.write_concern_doc(),
            doc! {"w": "majority", "j": true, "wtimeout": 10_000_i64}
        );
        c.write_concern.w = "2".into();
        c.write_concern.journal = false;
        assert_eq!(c.write_concern().w, Some(Acknowledgment::Nodes(2)));
        assert_eq!(c.write_concern_doc().get_i32("w").ok(), Some(2));
    }

    #[test]
    fn codes_are_classified() {
        assert!(matches!(
            classify_code(10107, String::new()),
            Failure::Transient { .. }
        ));
        assert!(matches!(
            classify_code(13, String::new()),
            Failure::Fatal(_)
        ));
        assert!(matches!(
            classify_code(10334, String::new()),
            Failure::Permanent { code: 10334, .. }
        ));
        assert!(matches!(
            classify_code(11000, String::new()),
            Failure::Transient {
                reason: "mongodb_duplicate_key_race",
                ..
            }
        ));
    }
}
