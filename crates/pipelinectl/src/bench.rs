//! `pipelinectl bench runtime`: what the consumer runtime costs over a bare consumer.
//!
//! Publishes a backlog once, then alternates two readers of it, each in a fresh group:
//! - raw: one rdkafka `StreamConsumer` task that receives and decodes every record (the
//!   hand-written consumer's ceiling: no batching, no offsets, no backpressure);
//! - runtime: `eventpipe_runtime::consumer` with a sink that does nothing but count.
//!
//! Each rate is records over the time from the first record to the last, so group joins do
//! not count; the report gives every run, the medians and the ratio of the medians.

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
use eventpipe_runtime::sink::{Outcome, Record, Sink, SinkError};
use eventpipe_runtime::telemetry::Readiness;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use tokio_util::sync::CancellationToken;

use crate::generate::Options;
use crate::produce::{self, Target};
use crate::setup;

pub struct BenchArgs {
    pub bootstrap: String,
    pub registry: String,
    pub events: u64,
    pub runs: usize,
}

/// A reader's rates over the runs, records per second.
struct Series {
    name: &'static str,
    rates: Vec<f64>,
}

impl Series {
    fn median(&self) -> f64 {
        median(&self.rates)
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

pub async fn runtime(args: BenchArgs) -> Result<String, String> {
    // As in the binaries: metrics are recorded, so their cost is part of the figure.
    let _metrics = eventpipe_runtime::telemetry::install_metrics_recorder()?;
    let suffix = format!("{}", std::process::id());
    let platform = format!("bench.platform.{suffix}");
    let orders = format!("bench.orders.{suffix}");
    let topics: Vec<String> = [&platform, &orders]
        .iter()
        .flat_map(|t| [t.to_string(), format!("{t}.dlq")])
        .collect();
    setup::create_topics(&args.bootstrap, &topics, 6).await?;
    let ids = setup::register_schemas(&args.registry, &platform, &orders).await?;
    eprintln!("publishing {} records…", args.events);
    let summary = produce::run(
        Options {
            seed: 7,
            ..Options::default()
        },
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
    let source = vec![platform.clone(), orders.clone()];
    let mut raw = Series {
        name: "raw rdkafka consume+decode",
        rates: Vec::new(),
    };
    let mut runtime = Series {
        name: "runtime, no-op sink",
        rates: Vec::new(),
    };
    for run in 0..args.runs {
        let r = raw_rate(&args, &source).await?;
        eprintln!("run {}: raw {:.0} records/s", run + 1, r);
        raw.rates.push(r);
        let t = runtime_rate(&args, &source).await?;
        eprintln!("run {}: runtime {:.0} records/s", run + 1, t);
        runtime.rates.push(t);
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "runtime benchmark: {} records over 2 topics x 6 partitions, {} runs, {} cores\n\n",
        args.events, args.runs, cores
    );
    out += "| reader | runs (records/s) | median (records/s) |\n|---|---|---|\n";
    for s in [&raw, &runtime] {
        let runs: Vec<String> = s.rates.iter().map(|r| format!("{r:.0}")).collect();
        out += &format!("| {} | {} | {:.0} |\n", s.name, runs.join(", "), s.median());
    }
    let ratio = runtime.median() / raw.median();
    out += &format!(
        "\nratio runtime/raw (medians): {ratio:.2} (target >= 0.85: {})\n",
        if ratio >= 0.85 { "met" } else { "NOT met" }
    );
    Ok(out)
}

fn group() -> String {
    format!(
        "bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// Receives and decodes every record in one task; records/s from first to last record.
async fn raw_rate(args: &BenchArgs, topics: &[String]) -> Result<f64, String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", group())
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).map_err(|e| e.to_string())?;
    let decoder = AnyDecoder::new(Arc::new(SchemaRegistry::new(&args.registry)));
    let mut first = None;
    let mut seen = 0u64;
    while seen < args.events {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .map_err(|_| format!("raw consumer stalled at {seen} records"))?
            .map_err(|e| e.to_string())?;
        first.get_or_insert_with(Instant::now);
        // Every record is decodable here; what matters is that the work is done.
        let _ = decoder.decode(m.key(), m.payload()).await;
        seen += 1;
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    Ok(seen as f64 / elapsed.as_secs_f64())
}

/// Counts records and stops the consumer once it has seen them all.
struct CountingSink {
    target: u64,
    seen: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    done: CancellationToken,
}

impl Sink for CountingSink {
    async fn write(&self, batch: &[Record]) -> Result<Vec<Outcome>, SinkError> {
        self.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
        let seen = self.seen.fetch_add(batch.len() as u64, Ordering::Relaxed) + batch.len() as u64;
        if seen >= self.target {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.done.cancel();
        }
        Ok(vec![Outcome::Written; batch.len()])
    }

    async fn check(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

async fn runtime_rate(args: &BenchArgs, topics: &[String]) -> Result<f64, String> {
    let shutdown = CancellationToken::new();
    let sink = CountingSink {
        target: args.events,
        seen: AtomicU64::new(0),
        first: Mutex::new(None),
        last: Mutex::new(None),
        done: shutdown.clone(),
    };
    let config = PipelineConfig {
        consumer: ConsumerConfig {
            group_id: group(),
            topics: topics.to_vec(),
            dlq_suffix: ".dlq".into(),
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
        batch: BatchConfig::default(),
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
    let sink = Arc::new(sink);
    let watched = sink.clone();
    let timeout = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = tokio::time::sleep(Duration::from_secs(300)) => { shutdown.cancel(); true }
            }
        }
    });
    eventpipe_runtime::consumer::run(&ctx, sink)
        .await
        .map_err(|e| e.to_string())?;
    if timeout.await.unwrap_or(true) {
        return Err("runtime consumer did not finish within 300 s".into());
    }
    let first = *watched.first.lock().unwrap_or_else(|p| p.into_inner());
    let last = *watched.last.lock().unwrap_or_else(|p| p.into_inner());
    match (first, last) {
        (Some(f), Some(l)) => Ok(args.events as f64 / (l - f).as_secs_f64()),
        _ => Err("runtime consumer saw no records".into()),
    }
}
