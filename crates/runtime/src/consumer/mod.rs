//! The consumer: Kafka in, a [`Sink`] out, at least once.
//!
//! # Guarantee
//! An offset is committed only when every record below it has been written by the sink or
//! dead-lettered with the broker's acknowledgement. A crash therefore redelivers (never skips)
//! whatever was not yet committed — at most the in-flight window of each partition — and the
//! sinks make redelivery harmless by writing idempotently. The guarantee stops at the sink:
//! a sink that reports `Written` for a write that is not durable breaks it.
//!
//! # Shape
//! - [`poller`]: one thread drives the group member: polls its main queue, pauses and resumes
//!   partitions, commits, handles rebalances (splitting each assigned partition's queue off).
//! - [`partition`]: one task per assigned partition, reading its own queue: batch, decode,
//!   write, dead-letter, retry.
//! - [`flow`]: the in-flight bound (backpressure) and the durable offsets they share.
//! - [`lag`]: lag per partition, in records and seconds, on its own thread and client.

mod flow;
mod lag;
mod partition;
mod poller;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventpipe_events::registry::SchemaRegistry;
use eventpipe_events::AnyDecoder;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::app::Context;
use crate::config::PipelineConfig;
use crate::dlq::{DeadLetters, Lane};
use crate::sink::Sink;

use flow::Gate;
use partition::Shared;
use poller::PipelineContext;

/// The first fatal error; raising it also starts the shutdown, so what is durable is still
/// committed before the process exits non-zero.
pub(crate) struct Fatal {
    first: Mutex<Option<String>>,
    shutdown: CancellationToken,
}

impl Fatal {
    pub fn raise(&self, message: String) {
        tracing::error!(%message, "fatal error; committing what is durable and stopping");
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(message);
        self.shutdown.cancel();
    }

    fn take(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Why the consumer stopped other than by a shutdown request.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the consumer: {0}")]
    Setup(String),
    #[error("{0}")]
    Fatal(String),
}

/// librdkafka settings the runtime chooses unless `kafka.properties` says otherwise.
const DEFAULT_CONSUMER_PROPERTIES: &[(&str, &str)] = &[
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("session.timeout.ms", "45000"),
    ("max.poll.interval.ms", "300000"),
    ("auto.offset.reset", "earliest"),
    // librdkafka's prefetch, per partition (each has its own queue): what a partition may
    // hold beyond the batch its worker is writing. When a queue is full librdkafka waits
    // fetch.queue.backoff.ms before fetching it again; its default (1 s) idles a consumer that
    // drains faster than that.
    ("queued.max.messages.kbytes", "4096"),
    ("queued.min.messages", "10000"),
    ("fetch.queue.backoff.ms", "20"),
];

/// The consumer's librdkafka configuration: defaults, then the user's pass-through
/// properties, then what the delivery guarantee depends on (not overridable).
pub fn consumer_config<C>(config: &PipelineConfig<C>) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (k, v) in DEFAULT_CONSUMER_PROPERTIES {
        client.set(*k, *v);
    }
    for (k, v) in &config.kafka.properties {
        client.set(k, v);
    }
    client
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("group.id", &config.consumer.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    client
}

/// Consumes the configured topics into `sink` until `ctx.shutdown` fires (then drains and
/// commits) or a fatal error occurs.
pub async fn run<C, S: Sink>(ctx: &Context<C>, sink: S) -> Result<(), RunError> {
    let config = &ctx.config;
    let mut registry = SchemaRegistry::new(&config.schema_registry.url);
    if let Some(user) = &config.schema_registry.username {
        registry = registry.with_basic_auth(user, config.schema_registry.password.as_deref());
    }
    let dead_letters = DeadLetters::new(ctx.binary, config).map_err(RunError::Setup)?;
    let metadata: BaseConsumer = {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &config.kafka.bootstrap_servers);
        for (k, v) in &config.kafka.properties {
            if crate::dlq::is_connection_property(k) {
                c.set(k, v);
            }
        }
        c.create()
            .map_err(|e| RunError::Setup(format!("cannot create a metadata client: {e}")))?
    };
    let metadata = check_topics(metadata, config, &dead_letters, S::DIVERTS_LATE).await?;

    let shutdown = ctx.shutdown.child_token();
    let fatal = Arc::new(Fatal {
        first: Mutex::new(None),
        shutdown: shutdown.clone(),
    });
    let shared = Arc::new(Shared {
        sink: Arc::new(sink),
        decoder: Arc::new(AnyDecoder::new(Arc::new(registry))),
        dead_letters: Arc::new(dead_letters),
        batch: config.batch.clone(),
        retry: config.retry.clone(),
        gate: Arc::new(Gate::new(config.flow.clone())),
        fatal: fatal.clone(),
        drain: CancellationToken::new(),
    });
    let context = PipelineContext::new(
        shared.clone(),
        config.flow.clone(),
        tokio::runtime::Handle::current(),
        Duration::from_millis(config.consumer.revoke_timeout_ms),
    );
    let consumer: Arc<BaseConsumer<PipelineContext<S>>> = Arc::new(
        consumer_config(config)
            .create_with_context(context)
            .map_err(|e| RunError::Setup(format!("cannot create the Kafka consumer: {e}")))?,
    );
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    let topics: Vec<&str> = config.consumer.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Setup(format!("cannot subscribe to {topics:?}: {e}")))?;
    let pipeline = consumer.context().clone();

    let (lag_stop, lag_stopped) = std::sync::mpsc::channel::<()>();
    let lag_view = pipeline.clone();
    let lag_interval = Duration::from_millis(config.consumer.lag_interval_ms);
    let lag_thread = std::thread::Builder::new()
        .name("lag".into())
        .spawn(move || {
            lag::run(
                metadata,
                move || lag_view.assigned(),
                lag_interval,
                lag_stopped,
            )
        })
        .map_err(|e| RunError::Setup(format!("cannot start the lag thread: {e}")))?;

    let readiness = tokio::spawn(watch_readiness(
        shared.clone(),
        pipeline.clone(),
        ctx.readiness.clone(),
        shutdown.clone(),
    ));

    let (finished, poll_done) = tokio::sync::oneshot::channel();
    let commit_interval = Duration::from_millis(config.consumer.commit_interval_ms);
    let deadline = Duration::from_millis(config.consumer.shutdown_deadline_ms);
    let poll_shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name("kafka-poll".into())
        .spawn(move || {
            poller::run(consumer, poll_shutdown, commit_interval, deadline);
            let _ = finished.send(());
        })
        .map_err(|e| RunError::Setup(format!("cannot start the poll thread: {e}")))?;

    let _ = poll_done.await;
    ctx.readiness.set(false);
    let _ = readiness.await;
    drop(lag_stop);
    let _ = tokio::task::spawn_blocking(move || lag_thread.join()).await;
    match fatal.take() {
        Some(message) => Err(RunError::Fatal(message)),
        None => {
            tracing::info!("consumer stopped cleanly");
            Ok(())
        }
    }
}

/// Fails fast, naming the topic, when a source, dead-letter or (for a sink that diverts late
/// records) late topic does not exist: consuming and then finding nowhere to put a bad record
/// would stall a partition instead.
async fn check_topics<C>(
    metadata: BaseConsumer,
    config: &PipelineConfig<C>,
    dead_letters: &DeadLetters,
    late: bool,
) -> Result<BaseConsumer, RunError> {
    let mut wanted: Vec<String> = config.consumer.topics.clone();
    for t in &config.consumer.topics {
        wanted.push(dead_letters.lane_topic(t, Lane::Dead));
        if late {
            wanted.push(dead_letters.lane_topic(t, Lane::Late));
        }
    }
    tokio::task::spawn_blocking(move || {
        let found = metadata
            .fetch_metadata(None, Duration::from_secs(30))
            .map_err(|e| RunError::Setup(format!("cannot reach the Kafka cluster: {e}")))?;
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|t| !found.topics().iter().any(|f| f.name() == t.as_str() && f.error().is_none()))
            .collect();
        if !missing.is_empty() {
            return Err(RunError::Setup(format!(
                "topics {missing:?} do not exist (consumer.topics and their consumer.dlq_suffix and consumer.late_suffix companions; `pipelinectl topics` creates them)"
            )));
        }
        drop(found);
        Ok(metadata)
    })
    .await
    .map_err(|e| RunError::Setup(e.to_string()))?
}

/// `/readyz`: joined the group, sink reachable, not shutting down.
async fn watch_readiness<S: Sink>(
    shared: Arc<Shared<S>>,
    pipeline: Arc<PipelineContext<S>>,
    readiness: crate::telemetry::Readiness,
    shutdown: CancellationToken,
) {
    loop {
        let sink_ok = match shared.sink.check().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "sink not reachable");
                false
            }
        };
        let joined = pipeline.joined.load(std::sync::atomic::Ordering::Relaxed);
        readiness.set(joined && sink_ok && !shutdown.is_cancelled());
        tokio::select! {
            _ = shutdown.cancelled() => {
                readiness.set(false);
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(if joined && sink_ok { 5 } else { 1 })) => {}
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
