//! `pipelinectl bench …`: benchmarks against the running stack. Each publishes its own backlog
//! to fresh topics, runs every contender over it several times (alternating, so drift on a
//! shared machine hits all of them alike) and prints every run, the medians and the ratios of
//! the medians.
//!
//! - [`runtime`]: what the consumer runtime costs over a bare consumer;
//! - [`ingest`]: `ingest-writer` against a raw batched-write ceiling and a naive consumer;
//! - [`cache`]: `cache-updater` against a raw pipelined-write ceiling;
//! - [`aggregate`]: `aggregator`'s folding rate against the raw consume+decode rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventpipe_events::registry::SchemaRegistry;
use eventpipe_events::AnyDecoder;
use eventpipe_runtime::app::Context;
use eventpipe_runtime::config::{
    AdminConfig, BatchConfig, ConsumerConfig, FlowConfig, KafkaConfig, LogConfig, PipelineConfig,
    RegistryConfig, RetryConfig,
};
use eventpipe_runtime::sink::{Outcome, Record, Sink, SinkError, Source};
use eventpipe_runtime::telemetry::Readiness;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::generate::Options;
use crate::produce::{self, Target};
use crate::setup;

pub mod aggregate;
pub mod cache;
pub mod ingest;
pub mod report;
pub mod runtime;

pub use runtime::runtime;

/// Partitions of each backlog topic.
const PARTITIONS: i32 = 6;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub bootstrap: String,
    pub registry: String,
    pub events: u64,
    pub runs: usize,
}

/// A contender's rates over the runs, records per second.
struct Series {
    name: &'static str,
    rates: Vec<f64>,
}

impl Series {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            rates: Vec::new(),
        }
    }

    fn median(&self) -> f64 {
        median(&self.rates)
    }
}

/// The `q` quantile (0..=1) of `values`, nearest rank.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[((n as f64 * q).ceil() as usize).clamp(1, n) - 1],
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The runs and medians as a Markdown table.
fn table(series: &[&Series]) -> String {
    let mut out =
        String::from("| contender | runs (records/s) | median (records/s) |\n|---|---|---|\n");
    for s in series {
        let runs: Vec<String> = s.rates.iter().map(|r| format!("{r:.0}")).collect();
        out += &format!("| {} | {} | {:.0} |\n", s.name, runs.join(", "), s.median());
    }
    out
}

/// A ratio of medians, and the target it has if any.
#[derive(Debug, Clone)]
pub struct Ratio {
    pub label: String,
    pub value: f64,
    pub target: Option<f64>,
}

impl Ratio {
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| self.value >= t)
    }

    pub fn line(&self) -> String {
        match self.target {
            Some(t) => format!(
                "ratio {} (medians): {:.2} (target >= {t}: {})\n",
                self.label,
                self.value,
                if self.value >= t { "met" } else { "NOT met" }
            ),
            None => format!("ratio {} (medians): {:.2}\n", self.label, self.value),
        }
    }
}

/// What one benchmark measured: its report, its ratios, and the end-to-end rate of the
/// binary it measures (median records/s).
#[derive(Debug, Clone)]
pub struct Section {
    pub text: String,
    pub ratios: Vec<Ratio>,
    pub rate: f64,
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `numerator / denominator` of the medians against a target.
fn ratio(label: &str, numerator: &Series, denominator: &Series, target: Option<f64>) -> Ratio {
    Ratio {
        label: label.to_owned(),
        value: numerator.median() / denominator.median(),
        target,
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// A name no earlier run used (groups, databases).
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

fn group() -> String {
    unique("bench")
}

/// The benchmarks' stream: 1 % re-sent records, 2 % swapped order versions, `step_ms`
/// apart and ending now (nothing already expired by the TTL indexes, nothing from the future).
fn recent_stream(seed: u64, events: u64, step_ms: i64) -> Options {
    let now = bson::DateTime::now().timestamp_millis();
    Options {
        seed,
        duplicates: 0.01,
        out_of_order: 0.02,
        start_time_ms: now - events as i64 * step_ms,
        step_ms,
        ..Options::default()
    }
}

/// A consumer in a fresh group, subscribed to `topics` from their beginning.
fn subscribed(
    args: &BenchArgs,
    topics: &[String],
    auto_commit: bool,
) -> Result<rdkafka::consumer::StreamConsumer, String> {
    let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", group())
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", auto_commit.to_string())
        .create()
        .map_err(|e| e.to_string())?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).map_err(|e| e.to_string())?;
    Ok(consumer)
}

/// Creates fresh `bench.platform.*`/`bench.orders.*` topics (with `.dlq` and `.late` companions) and
/// publishes `args.events` generated records; returns the two source topics.
async fn backlog(args: &BenchArgs, opts: Options) -> Result<Vec<String>, String> {
    let suffix = unique("run");
    let platform = format!("bench.platform.{suffix}");
    let orders = format!("bench.orders.{suffix}");
    let topics: Vec<String> = [&platform, &orders]
        .iter()
        .flat_map(|t| [t.to_string(), format!("{t}.dlq"), format!("{t}.late")])
        .collect();
    setup::create_topics(&args.bootstrap, &topics, PARTITIONS).await?;
    let ids = setup::register_schemas(&args.registry, &platform, &orders).await?;
    eprintln!("publishing {} records…", args.events);
    let summary = produce::run(
        opts,
        ids,
        &Target {
            bootstrap: args.bootstrap.clone(),
            platform_topic: platform.clone(),
            orders_topic: orders.clone(),
            rate: None,
            count: args.events,
            progress: false,
        },
    )
    .await?;
    if summary.failed > 0 {
        return Err(format!("{} records not acknowledged", summary.failed));
    }
    Ok(vec![platform, orders])
}

/// Wraps a sink: counts what it wrote and stops the consumer once `target` records were seen.
struct Counting<S> {
    inner: S,
    target: u64,
    seen: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    done: CancellationToken,
    /// When set: for each record written, ms from its Kafka timestamp to the write's return.
    latencies: Option<Mutex<Vec<f64>>>,
}

impl<S: Sink> Sink for Counting<S> {
    const DIVERTS_LATE: bool = S::DIVERTS_LATE;

    async fn write(&self, batch: &[Record]) -> Result<Vec<Outcome>, SinkError> {
        self.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
        let out = self.inner.write(batch).await?;
        if let Some(l) = &self.latencies {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let mut l = l.lock().unwrap_or_else(|p| p.into_inner());
            for (r, o) in batch.iter().zip(&out) {
                if let (Some(t), Outcome::Written) = (r.source.timestamp, o) {
                    l.push((now - t) as f64);
                }
            }
        }
        let seen = self.seen.fetch_add(batch.len() as u64, Ordering::Relaxed) + batch.len() as u64;
        if seen >= self.target {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.done.cancel();
        }
        Ok(out)
    }

    async fn check(&self) -> Result<(), SinkError> {
        self.inner.check().await
    }
}

/// Runs the consumer runtime over `topics` in a fresh group with `sink` until it has written
/// `target` records; records/s from the first write to the last.
async fn runtime_rate<S: Sink>(
    args: &BenchArgs,
    topics: &[String],
    sink: S,
    target: u64,
    batch: BatchConfig,
) -> Result<f64, String> {
    Ok(runtime_run(args, topics, sink, target, batch, false)
        .await?
        .rate)
}

/// Drops the database of `config` (a benchmark's scratch database).
async fn drop_database(config: &eventpipe_stores::MongoConfig) -> Result<(), String> {
    config
        .connect("bench")
        .await
        .map_err(|e| e.to_string())?
        .drop()
        .await
        .map_err(|e| e.to_string())
}

/// What [`runtime_run`] measured.
struct Run {
    rate: f64,
    /// Per record written, ms from its Kafka timestamp (when asked for).
    latencies: Vec<f64>,
}

/// The records in `topics` now (the sum of their high watermarks).
fn topics_for(args: &BenchArgs, topics: &[String]) -> Result<u64, String> {
    let mut total = 0;
    for t in topics {
        total += crate::topics::high_watermarks(&args.bootstrap, t)?
            .iter()
            .sum::<i64>();
    }
    Ok(total as u64)
}

/// [`runtime_rate`], optionally recording each record's latency.
async fn runtime_run<S: Sink>(
    args: &BenchArgs,
    topics: &[String],
    sink: S,
    target: u64,
    batch: BatchConfig,
    latencies: bool,
) -> Result<Run, String> {
    let shutdown = CancellationToken::new();
    let sink = Arc::new(Counting {
        inner: sink,
        target,
        seen: AtomicU64::new(0),
        first: Mutex::new(None),
        last: Mutex::new(None),
        done: shutdown.clone(),
        latencies: latencies.then(|| Mutex::new(Vec::new())),
    });
    let config = PipelineConfig {
        consumer: ConsumerConfig {
            group_id: group(),
            topics: topics.to_vec(),
            dlq_suffix: ".dlq".into(),
            late_suffix: ".late".into(),
            shutdown_deadline_ms: 30_000,
            commit_interval_ms: 1_000,
            revoke_timeout_ms: 10_000,
            lag_interval_ms: 5_000,
        },
        kafka: KafkaConfig {
            bootstrap_servers: args.bootstrap.clone(),
            properties: Default::default(),
        },
        schema_registry: RegistryConfig {
            url: args.registry.clone(),
            username: None,
            password: None,
        },
        batch,
        flow: FlowConfig::default(),
        retry: RetryConfig::default(),
        admin: AdminConfig::default(),
        log: LogConfig::default(),
        sink: (),
    };
    let ctx = Context {
        binary: "bench",
        config,
        shutdown: shutdown.clone(),
        readiness: Readiness::default(),
        admin_addr: AdminConfig::default().listen,
    };
    let timeout = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = tokio::time::sleep(Duration::from_secs(600)) => { shutdown.cancel(); true }
            }
        }
    });
    eventpipe_runtime::consumer::run(&ctx, sink.clone())
        .await
        .map_err(|e| e.to_string())?;
    if timeout.await.unwrap_or(true) {
        return Err("the runtime consumer did not finish within 600 s".into());
    }
    let first = *sink.first.lock().unwrap_or_else(|p| p.into_inner());
    let last = *sink.last.lock().unwrap_or_else(|p| p.into_inner());
    let latencies = sink
        .latencies
        .as_ref()
        .map(|l| std::mem::take(&mut *l.lock().unwrap_or_else(|p| p.into_inner())))
        .unwrap_or_default();
    match (first, last) {
        (Some(f), Some(l)) => Ok(Run {
            rate: target as f64 / (l - f).as_secs_f64(),
            latencies,
        }),
        _ => Err("the runtime consumer saw no records".into()),
    }
}

/// Every record of `topics`, decoded, one vector per partition in offset order.
async fn load(args: &BenchArgs, topics: &[String]) -> Result<Vec<Vec<Record>>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", group())
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let decoder = AnyDecoder::new(Arc::new(SchemaRegistry::new(&args.registry)));
    let timeout = Duration::from_secs(10);
    let mut out = Vec::new();
    for t in topics {
        let topic: Arc<str> = Arc::from(t.as_str());
        for p in 0..PARTITIONS {
            let (low, high) = consumer
                .fetch_watermarks(t, p, timeout)
                .map_err(|e| e.to_string())?;
            let mut records = Vec::with_capacity((high - low).max(0) as usize);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(t, p, Offset::Offset(low))
                .map_err(|e| e.to_string())?;
            consumer.assign(&tpl).map_err(|e| e.to_string())?;
            while records.len() < (high - low) as usize {
                let m = match consumer.poll(timeout) {
                    Some(m) => m.map_err(|e| e.to_string())?,
                    None => return Err(format!("{t}/{p} stalled reading the backlog")),
                };
                let d = decoder
                    .decode(m.key(), m.payload())
                    .await
                    .map_err(|e| format!("{t}/{p}@{}: {e}", m.offset()))?;
                records.push(Record {
                    source: Source {
                        topic: topic.clone(),
                        partition: p,
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis(),
                    },
                    event: d.event,
                    schema_id: d.schema_id,
                    schema_version: d.schema_version,
                });
            }
            out.push(records);
        }
    }
    Ok(out)
}
