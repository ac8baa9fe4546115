//! Pipeline configuration: `pipelines/<binary>.toml`, environment overrides, validation and
//! the redacted view printed by `--check`.
//!
//! Every section rejects unknown keys, and every error names the file and the key, because a
//! typo in a config file that is silently ignored is an outage that starts later.
//!
//! Environment overrides use `__` as the path separator: `EVENTPIPE__KAFKA__BOOTSTRAP_SERVERS`
//! applies to every binary, `INGEST_WRITER__ADMIN__LISTEN` only to `ingest-writer` (the
//! binary's name upper-cased, `-` as `_`). Under `kafka.properties` a `_` in the variable name
//! stands for `.`, since librdkafka property names are dotted and shells do not allow dots.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Prefix of environment overrides that apply to every binary.
pub const GLOBAL_ENV_PREFIX: &str = "EVENTPIPE__";

/// librdkafka properties the runtime owns; setting them in `kafka.properties` would break the
/// delivery guarantee (offsets must only be stored by the runtime), so they are rejected.
const RUNTIME_OWNED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "enable.partition.eof",
];

/// A configuration problem. Each variant names the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: environment variable {var} (key `{key}`): {message}")]
    Env {
        path: PathBuf,
        var: String,
        key: String,
        message: String,
    },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A problem found by [`Validate`]: the dotted key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Checks that serde cannot express (ranges, non-empty lists, URLs that parse).
pub trait Validate {
    fn validate(&self) -> Result<(), Invalid>;
}

/// The whole file: sections shared by every binary, plus the binary's own `[sink]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig<S> {
    pub consumer: ConsumerConfig,
    pub kafka: KafkaConfig,
    pub schema_registry: RegistryConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub flow: FlowConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub sink: S,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Consumer group id; one group per binary so each keeps its own offsets.
    pub group_id: String,
    /// Source topics.
    pub topics: Vec<String>,
    /// Dead letters for topic `t` go to `t` + this suffix.
    #[serde(default = "default_dlq_suffix")]
    pub dlq_suffix: String,
    /// Records a sink finds too late (or too early) for topic `t` go to `t` + this suffix.
    #[serde(default = "default_late_suffix")]
    pub late_suffix: String,
    /// How long SIGTERM may take to flush and commit before the process gives up.
    #[serde(default = "default_shutdown_deadline_ms")]
    pub shutdown_deadline_ms: u64,
    /// How often durable offsets are committed (asynchronously; revoke and shutdown commit
    /// synchronously whatever the interval).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// How long a revoke waits for the batch being written on a revoked partition before it
    /// abandons it (the new owner re-reads it from the committed offset).
    #[serde(default = "default_revoke_timeout_ms")]
    pub revoke_timeout_ms: u64,
    /// How often partition lag (records and seconds) is measured against the high watermark.
    #[serde(default = "default_lag_interval_ms")]
    pub lag_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// Passed to librdkafka as-is (TLS, SASL, timeouts, `group.instance.id`, …).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// When a partition's pending batch is handed to the sink: whichever limit is reached first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_age_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: 1000,
            max_bytes: 4 << 20,
            max_age_ms: 250,
        }
    }
}

/// Backpressure. Each partition has its own fetch queue in librdkafka, bounded by
/// `queued.min.messages` and `queued.max.messages.kbytes` (per partition); a partition worker
/// takes records from it only while it has room, one batch at a time. On top of that the
/// records taken but not yet durable are bounded in total, and a partition whose sink write
/// has taken longer than `pause_after_ms` is paused (fetching stops, the group membership
/// does not) until the write returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    pub max_records: usize,
    pub max_bytes: usize,
    pub pause_after_ms: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            max_records: 50_000,
            max_bytes: 128 << 20,
            pause_after_ms: 1_000,
        }
    }
}

/// Transient failures (sink unreachable, registry down, DLQ not acknowledged) are retried
/// forever with capped exponential backoff and jitter; the partition waits meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 100,
            max_backoff_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

fn default_late_suffix() -> String {
    ".late".to_owned()
}

fn default_dlq_suffix() -> String {
    ".dlq".to_owned()
}

fn default_shutdown_deadline_ms() -> u64 {
    30_000
}

fn default_commit_interval_ms() -> u64 {
    1_000
}

fn default_revoke_timeout_ms() -> u64 {
    10_000
}

fn default_lag_interval_ms() -> u64 {
    5_000
}

impl<S: Validate> Validate for PipelineConfig<S> {
    fn validate(&self) -> Result<(), Invalid> {
        if self.consumer.group_id.trim().is_empty() {
            return Err(Invalid::new("consumer.group_id", "must not be empty"));
        }
        if self.consumer.topics.is_empty() {
            return Err(Invalid::new(
                "consumer.topics",
                "must name at least one topic",
            ));
        }
        if let Some(t) = self.consumer.topics.iter().find(|t| !valid_topic_name(t)) {
            return Err(Invalid::new(
                "consumer.topics",
                format!("`{t}` is not a valid Kafka topic name"),
            ));
        }
        if self.consumer.dlq_suffix.is_empty() {
            return Err(Invalid::new("consumer.dlq_suffix", "must not be empty"));
        }
        if self.consumer.late_suffix.is_empty()
            || self.consumer.late_suffix == self.consumer.dlq_suffix
        {
            return Err(Invalid::new(
                "consumer.late_suffix",
                "must not be empty nor equal to consumer.dlq_suffix",
            ));
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(Invalid::new("kafka.bootstrap_servers", "must not be empty"));
        }
        if let Some(k) = self
            .kafka
            .properties
            .keys()
            .find(|k| RUNTIME_OWNED_KAFKA_PROPERTIES.contains(&k.as_str()))
        {
            return Err(Invalid::new(
                format!("kafka.properties.\"{k}\""),
                "is set by the runtime and may not be overridden",
            ));
        }
        url::Url::parse(&self.schema_registry.url)
            .map_err(|e| Invalid::new("schema_registry.url", e.to_string()))?;
        if self.batch.max_records == 0 {
            return Err(Invalid::new("batch.max_records", "must be at least 1"));
        }
        if self.batch.max_bytes == 0 {
            return Err(Invalid::new("batch.max_bytes", "must be at least 1"));
        }
        for (key, value) in [
            (
                "consumer.commit_interval_ms",
                self.consumer.commit_interval_ms,
            ),
            ("consumer.lag_interval_ms", self.consumer.lag_interval_ms),
            ("retry.initial_backoff_ms", self.retry.initial_backoff_ms),
        ] {
            if value == 0 {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        if self.retry.max_backoff_ms < self.retry.initial_backoff_ms {
            return Err(Invalid::new(
                "retry.max_backoff_ms",
                "must not be below retry.initial_backoff_ms",
            ));
        }
        if self.flow.max_records < self.batch.max_records {
            return Err(Invalid::new(
                "flow.max_records",
                "must be at least batch.max_records, or batches never fill",
            ));
        }
        if self.flow.max_bytes < self.batch.max_bytes {
            return Err(Invalid::new(
                "flow.max_bytes",
                "must be at least batch.max_bytes, or batches never fill",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| Invalid::new("log.level", e.to_string()))?;
        self.sink.validate()
    }
}

fn valid_topic_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Loads `path`, applies environment overrides for `binary` and validates the result.
pub fn load<S>(path: &Path, binary: &str) -> Result<PipelineConfig<S>, ConfigError>
where
    S: DeserializeOwned + Validate,
{
    load_with_env(path, binary, std::env::vars())
}

/// [`load`] with the environment passed in, so tests need not touch the process environment.
pub fn load_with_env<S>(
    path: &Path,
    binary: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<PipelineConfig<S>, ConfigError>
where
    S: DeserializeOwned + Validate,
{
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    // Parse the file on its own first so that errors carry its line and column.
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    // Deserialize from the text (not the table) so that errors point at a line and column.
    let de = toml::Deserializer::parse(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    serde_path_to_error::deserialize::<_, PipelineConfig<S>>(de).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Parse {
            path: path.to_owned(),
            message: format!("key `{key}`: {}", e.into_inner()),
        }
    })?;

    let overrides = env_overrides(binary, env);
    for (var, key_path) in &overrides {
        apply_override(&mut table, key_path, &var.1);
    }
    let config = from_table::<S>(table).map_err(|(key, message)| {
        match overrides
            .iter()
            .find(|(_, p)| key.starts_with(&p.join(".")) || p.join(".").starts_with(&key))
        {
            Some(((var, _), _)) => ConfigError::Env {
                path: path.to_owned(),
                var: var.clone(),
                key: key.clone(),
                message: message.clone(),
            },
            None => ConfigError::Invalid {
                path: path.to_owned(),
                key: key.clone(),
                message: message.clone(),
            },
        }
    })?;
    config.validate().map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        key: e.key,
        message: e.message,
    })?;
    Ok(config)
}

fn from_table<S: DeserializeOwned>(
    table: toml::Table,
) -> Result<PipelineConfig<S>, (String, String)> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        (key, e.into_inner().to_string())
    })
}

/// `(variable name, value)` paired with the key path it overrides, global ones first so that
/// binary-specific ones win.
type Override = ((String, String), Vec<String>);

fn env_overrides(binary: &str, env: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    let own_prefix = format!("{}__", binary.to_ascii_uppercase().replace('-', "_"));
    let mut global = Vec::new();
    let mut own = Vec::new();
    for (var, value) in env {
        let (rest, bucket) = if let Some(rest) = var.strip_prefix(GLOBAL_ENV_PREFIX) {
            (rest.to_owned(), &mut global)
        } else if let Some(rest) = var.strip_prefix(&own_prefix) {
            (rest.to_owned(), &mut own)
        } else {
            continue;
        };
        let mut path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.len() >= 3 && path[0] == "kafka" && path[1] == "properties" {
            let prop = path[2..].join("__").replace('_', ".");
            path.truncate(2);
            path.push(prop);
        }
        if path.iter().any(String::is_empty) {
            continue;
        }
        bucket.push(((var, value), path));
    }
    global.sort();
    own.sort();
    global.extend(own);
    global
}

fn apply_override(table: &mut toml::Table, path: &[String], raw: &str) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cursor = table;
    for p in parents {
        let entry = cursor
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        cursor = next;
    }
    // A key that is a string in the file stays a string ("9092" must not become an integer).
    let value = match cursor.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_owned()),
        _ => parse_env_value(raw),
    };
    cursor.insert(last.clone(), value);
}

fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// The effective config as TOML with secrets replaced, for `--check` and start-up logs.
pub fn redacted_toml<T: Serialize>(config: &T) -> String {
    match toml::Value::try_from(config) {
        Ok(mut v) => {
            redact(&mut v, "");
            toml::to_string_pretty(&v).unwrap_or_else(|e| format!("# cannot render config: {e}"))
        }
        Err(e) => format!("# cannot render config: {e}"),
    }
}

const SECRET_MARKERS: &[&str] = &["password", "secret", "token", "private.key", "credentials"];

fn redact(value: &mut toml::Value, key: &str) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                redact(v, k);
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(|v| redact(v, key)),
        toml::Value::String(s) => {
            let lower = key.to_ascii_lowercase();
            if SECRET_MARKERS.iter().any(|m| lower.contains(m)) {
                *s = "***".to_owned();
            } else {
                *s = redact_url(s);
            }
        }
        _ => {}
    }
}

/// Replaces the password in `scheme://user:password@host` (and in every host of a list).
pub fn redact_url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_owned();
    };
    let rest = &s[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return s.to_owned();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    if !userinfo.contains(':') {
        return s.to_owned();
    }
    format!(
        "{}{}:***{}",
        &s[..scheme_end + 3],
        user,
        &s[scheme_end + 3 + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TestSink {
        uri: String,
        #[serde(default)]
        pool: u32,
    }

    impl Validate for TestSink {
        fn validate(&self) -> Result<(), Invalid> {
            if self.uri.is_empty() {
                return Err(Invalid::new("sink.uri", "must not be empty"));
            }
            Ok(())
        }
    }

    const GOOD: &str = r#"
[consumer]
group_id = "g"
topics = ["platform.events"]

[kafka]
bootstrap_servers = "127.0.0.1:9092"
[kafka.properties]
"sasl.password" = "hunter2"

[schema_registry]
url = "http://127.0.0.1:8081"

[sink]
uri = "mongodb://app:s3cret@127.0.0.1:27017/?replicaSet=rs0"
"#;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<PipelineConfig<TestSink>, ConfigError> {
        let f = write(text);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load_with_env(f.path(), "ingest-writer", env)
    }

    #[test]
    fn loads_defaults() {
        let c = load_str(GOOD, &[]).expect("valid");
        assert_eq!(c.batch.max_records, 1000);
        assert_eq!(c.consumer.dlq_suffix, ".dlq");
        assert_eq!(c.consumer.late_suffix, ".late");
        assert_eq!(c.log.format, LogFormat::Pretty);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let text = GOOD.replace("[kafka]", "[kafka]\nbootstrap = \"x\"");
        let f = write(&text);
        let err = load_with_env::<TestSink>(f.path(), "x", Vec::new()).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("bootstrap"), "{msg}");
        assert!(msg.contains("line"), "{msg}");
    }

    #[test]
    fn unknown_sink_key_is_rejected() {
        let err = load_str(&format!("{GOOD}poool = 3\n"), &[]).expect_err("unknown key");
        assert!(err.to_string().contains("poool"), "{err}");
    }

    #[test]
    fn env_overrides_apply_binary_last() {
        let c = load_str(
            GOOD,
            &[
                ("EVENTPIPE__KAFKA__BOOTSTRAP_SERVERS", "a:1"),
                ("INGEST_WRITER__KAFKA__BOOTSTRAP_SERVERS", "b:2"),
                ("AUDIT_WRITER__KAFKA__BOOTSTRAP_SERVERS", "c:3"),
                ("EVENTPIPE__BATCH__MAX_RECORDS", "7"),
                ("EVENTPIPE__KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SSL"),
                ("EVENTPIPE__SINK__POOL", "12"),
            ],
        )
        .expect("valid");
        assert_eq!(c.kafka.bootstrap_servers, "b:2");
        assert_eq!(c.batch.max_records, 7);
        assert_eq!(c.kafka.properties["security.protocol"], "SSL");
        assert_eq!(c.sink.pool, 12);
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err =
            load_str(GOOD, &[("EVENTPIPE__BATCH__MAX_RECORDS", "many")]).expect_err("not a number");
        match err {
            ConfigError::Env { var, key, .. } => {
                assert_eq!(var, "EVENTPIPE__BATCH__MAX_RECORDS");
                assert_eq!(key, "batch.max_records");
            }
            other => panic!("wrong error: {other}"),
        }
    }

    #[test]
    fn runtime_owned_properties_are_rejected() {
        let text = GOOD.replace(
            "[kafka.properties]",
            "[kafka.properties]\n\"group.id\" = \"x\"",
        );
        let err = load_str(&text, &[]).expect_err("owned");
        assert!(err.to_string().contains("group.id"), "{err}");
    }

    #[test]
    fn validation_errors_name_key() {
        let text = GOOD.replace("topics = [\"platform.events\"]", "topics = []");
        let err = load_str(&text, &[]).expect_err("empty");
        assert!(err.to_string().contains("consumer.topics"), "{err}");
        let text = GOOD.replace("uri = \"mongodb", "uri = \"\"\nx = \"mongodb");
        assert!(load_str(&text, &[]).is_err());
    }

    #[test]
    fn check_output_redacts_secrets() {
        let c = load_str(GOOD, &[]).expect("valid");
        let out = redacted_toml(&c);
        assert!(!out.contains("hunter2"), "{out}");
        assert!(!out.contains("s3cret"), "{out}");
        assert!(out.contains("mongodb://app:***@127.0.0.1:27017"), "{out}");
    }

    #[test]
    fn redact_url_cases() {
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("redis://u@h:1"), "redis://u@h:1");
        assert_eq!(
            redact_url("mongodb://u:p@a:1,b:2/db?x=1"),
            "mongodb://u:***@a:1,b:2/db?x=1"
        );
    }
}
