//! `pipelinectl verify`: reads the source topics from the beginning, computes what the four
//! binaries must have left in MongoDB, Redis and the dead-letter and late topics
//! ([`oracle`]), reads the stores ([`stores`]) and prints one row per store: expected, found,
//! missing, extra, wrong. Clean means every row is zero in its last three columns.
//!
//! The binaries' own config files (with the same environment overrides) say where everything
//! is, so verify looks exactly where the binaries wrote.

pub mod oracle;
pub mod stores;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use eventpipe_events::codec::ErrorClass;
use eventpipe_events::registry::SchemaRegistry;
use eventpipe_events::AnyDecoder;
use eventpipe_runtime::config::{load_with_env, PipelineConfig, RegistryConfig};
use eventpipe_stores::{MongoConfig, RedisConfig};
use rdkafka::Message;

pub use oracle::{Expected, Settings};

/// How many differences a row keeps as examples.
const EXAMPLES: usize = 5;

/// One store's comparison.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub store: String,
    pub expected: u64,
    pub found: u64,
    pub missing: u64,
    pub extra: u64,
    pub wrong: u64,
    /// The first few differences, described.
    pub examples: Vec<String>,
}

impl Row {
    pub fn new(store: &str) -> Self {
        Self {
            store: store.to_owned(),
            ..Self::default()
        }
    }

    fn example(&mut self, kind: &str, what: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(format!("{kind}: {what}"));
        }
    }

    pub fn missing(&mut self, what: String) {
        self.missing += 1;
        self.example("missing", what);
    }

    pub fn extra(&mut self, what: String) {
        self.extra += 1;
        self.example("extra", what);
    }

    pub fn wrong(&mut self, what: String) {
        self.wrong += 1;
        self.example("wrong", what);
    }

    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.wrong == 0
    }
}

/// Every row, and how many source records the expectation was computed from.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub records: u64,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.rows.iter().all(Row::is_clean)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|r| r.store.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:<width$} {:>10} {:>10} {:>8} {:>8} {:>8}",
            "store", "expected", "found", "missing", "extra", "wrong"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<width$} {:>10} {:>10} {:>8} {:>8} {:>8}",
                r.store, r.expected, r.found, r.missing, r.extra, r.wrong
            )?;
        }
        for r in self.rows.iter().filter(|r| !r.examples.is_empty()) {
            writeln!(f, "{}:", r.store)?;
            for e in &r.examples {
                writeln!(f, "  {e}")?;
            }
        }
        let bad = self.rows.iter().filter(|r| !r.is_clean()).count();
        if bad == 0 {
            write!(f, "verdict: clean ({} source records)", self.records)
        } else {
            write!(f, "verdict: {bad} of {} stores differ", self.rows.len())
        }
    }
}

/// The four binaries' configs, loaded as the binaries load them.
#[derive(Debug, Clone)]
pub struct Pipelines {
    pub ingest: PipelineConfig<MongoConfig>,
    pub audit: PipelineConfig<MongoConfig>,
    pub aggregator: PipelineConfig<MongoConfig>,
    pub cache: PipelineConfig<RedisConfig>,
}

impl Pipelines {
    /// `<dir>/<binary>.toml` for each binary, with `env` applied as the binaries apply it.
    pub fn load(dir: &Path, env: &[(String, String)]) -> Result<Self, String> {
        fn one<S>(
            dir: &Path,
            binary: &str,
            env: &[(String, String)],
        ) -> Result<PipelineConfig<S>, String>
        where
            S: serde::de::DeserializeOwned + eventpipe_runtime::config::Validate,
        {
            load_with_env(
                &dir.join(format!("{binary}.toml")),
                binary,
                env.iter().cloned(),
            )
            .map_err(|e| e.to_string())
        }
        Ok(Self {
            ingest: one(dir, "ingest-writer", env)?,
            audit: one(dir, "audit-writer", env)?,
            aggregator: one(dir, "aggregator", env)?,
            cache: one(dir, "cache-updater", env)?,
        })
    }

    /// Each binary's `<binary>/<group>` (the dead letters' consumer header) and topics.
    fn consumers(&self) -> Vec<(String, String, Vec<String>)> {
        let c = |binary: &str, consumer: &eventpipe_runtime::config::ConsumerConfig| {
            (
                format!("{binary}/{}", consumer.group_id),
                consumer.group_id.clone(),
                consumer.topics.clone(),
            )
        };
        vec![
            c("ingest-writer", &self.ingest.consumer),
            c("audit-writer", &self.audit.consumer),
            c("aggregator", &self.aggregator.consumer),
            c("cache-updater", &self.cache.consumer),
        ]
    }

    fn source_topics(&self) -> Vec<String> {
        let mut all: Vec<String> = self.consumers().into_iter().flat_map(|c| c.2).collect();
        all.sort();
        all.dedup();
        all
    }
}

fn registry(config: &RegistryConfig) -> Arc<SchemaRegistry> {
    let mut r = SchemaRegistry::new(&config.url);
    if let Some(user) = &config.username {
        r = r.with_basic_auth(user, config.password.as_deref());
    }
    Arc::new(r)
}

/// Reads `topics` from the beginning and computes the expected state.
pub async fn expected_from_topics(
    bootstrap: &str,
    registry_config: &RegistryConfig,
    topics: &[String],
    settings: Settings,
) -> Result<Expected, String> {
    let decoder = AnyDecoder::new(registry(registry_config));
    let mut want = Expected::new(settings);
    for topic in topics {
        crate::topics::scan(bootstrap, topic, async |m| {
            let at = (m.topic().to_owned(), m.partition(), m.offset());
            match decoder.decode(m.key(), m.payload()).await {
                Ok(d) => want.add(at, &d.event),
                Err(e) if e.class() == ErrorClass::Transient => {
                    return Err(format!("{}/{}@{}: {e}", at.0, at.1, at.2))
                }
                Err(e) => want.add_undecodable(at, e.reason()),
            }
            Ok(())
        })
        .await?;
    }
    want.finish();
    Ok(want)
}

/// Computes the expected state from the topics the binaries read and compares every store.
pub async fn run(p: &Pipelines) -> Result<Report, String> {
    let bootstrap = &p.ingest.kafka.bootstrap_servers;
    let settings = Settings {
        windows: p.aggregator.sink.windows.clone(),
        keys: p.cache.sink.keys.clone(),
        ..Settings::default()
    };
    let want = expected_from_topics(
        bootstrap,
        &p.ingest.schema_registry,
        &p.source_topics(),
        settings,
    )
    .await?;
    let mut rows = Vec::new();

    let connect = |c: &MongoConfig| {
        let c = c.clone();
        async move {
            c.connect("pipelinectl-verify")
                .await
                .map_err(|e| e.to_string())
        }
    };
    let writers = connect(&p.ingest.sink).await?;
    rows.extend(stores::check_ingest(&want, &writers).await?);
    let audit = connect(&p.audit.sink).await?;
    rows.extend(stores::check_audit(&want, &audit).await?);
    let aggregates = connect(&p.aggregator.sink).await?;
    rows.extend(stores::check_aggregates(&want, &aggregates).await?);
    let redis = p.cache.sink.connect().await.map_err(|e| e.to_string())?;
    rows.extend(stores::check_cache(&want, &redis).await?);

    let consumers = p.consumers();
    for topic in p.source_topics() {
        let readers: Vec<String> = consumers
            .iter()
            .filter(|c| c.2.contains(&topic))
            .map(|c| c.0.clone())
            .collect();
        let dead: std::collections::BTreeMap<_, _> = want
            .dead
            .iter()
            .filter(|(at, _)| at.0 == topic)
            .map(|(a, r)| (a.clone(), r.clone()))
            .collect();
        let dlq = format!("{topic}{}", p.ingest.consumer.dlq_suffix);
        rows.push(
            stores::check_diverted(&format!("kafka {dlq}"), bootstrap, &dlq, &dead, &readers)
                .await?,
        );
        let late: std::collections::BTreeMap<_, _> = want
            .late
            .iter()
            .filter(|(at, _)| at.0 == topic)
            .map(|(a, r)| (a.clone(), *r))
            .collect();
        let late_topic = format!("{topic}{}", p.aggregator.consumer.late_suffix);
        let aggregator = [format!("aggregator/{}", p.aggregator.consumer.group_id)];
        rows.push(
            stores::check_diverted(
                &format!("kafka {late_topic}"),
                bootstrap,
                &late_topic,
                &late,
                &aggregator,
            )
            .await?,
        );
    }
    let groups: Vec<(String, Vec<String>)> = consumers.into_iter().map(|c| (c.1, c.2)).collect();
    rows.extend(stores::check_lag(bootstrap, &groups)?);
    Ok(Report {
        records: want.records,
        rows,
    })
}
