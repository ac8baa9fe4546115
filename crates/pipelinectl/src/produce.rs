//! Publishing the generated stream: idempotent producer, optional target rate, bounded
//! in-flight deliveries, a progress bar, and a summary of what was sent and acknowledged.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use crate::generate::{Generated, Generator, Options, SchemaVersion};
use crate::setup::SchemaIds;
use crate::wire::{to_wire, Stream};

#[derive(Debug, Clone)]
pub struct Target {
    pub bootstrap: String,
    pub platform_topic: String,
    pub orders_topic: String,
    /// Records per second; `None` = as fast as the broker takes them.
    pub rate: Option<f64>,
    pub count: u64,
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub platform: u64,
    pub orders: u64,
    pub v1: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub poison: BTreeMap<&'static str, u64>,
    /// The first delivery error, if any.
    pub first_error: Option<String>,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn count(&mut self, g: &Generated, stream: Stream) {
        match stream {
            Stream::Platform => self.platform += 1,
            Stream::Orders => self.orders += 1,
        }
        if g.version == SchemaVersion::V1 {
            self.v1 += 1;
        }
        self.duplicates += u64::from(g.duplicate);
        self.out_of_order += u64::from(g.out_of_order);
        if let Some(p) = g.poison {
            *self.poison.entry(p.label()).or_default() += 1;
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sent {}  acked {}  failed {}  in {:.2}s  rate {:.0} records/s",
            self.sent,
            self.acked,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.rate()
        )?;
        writeln!(
            f,
            "platform events {}  order events {}  v1-encoded {}  duplicates {}  out-of-order {}",
            self.platform, self.orders, self.v1, self.duplicates, self.out_of_order
        )?;
        if !self.poison.is_empty() {
            let classes: Vec<String> = self
                .poison
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(f, "poison: {}", classes.join("  "))?;
        }
        if let Some(e) = &self.first_error {
            writeln!(f, "first delivery error: {e}")?;
        }
        Ok(())
    }
}

/// Deliveries awaited at most at once; beyond this the producer waits for acks first.
const MAX_IN_FLIGHT: usize = 50_000;

pub fn producer(bootstrap: &str) -> Result<FutureProducer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "120000")
        .create()
        .map_err(|e| format!("cannot create a producer for {bootstrap}: {e}"))
}

/// Generates `target.count` records from `opts` and publishes them.
pub async fn run(opts: Options, ids: SchemaIds, target: &Target) -> Result<Summary, String> {
    let producer = producer(&target.bootstrap)?;
    let bar = if target.progress {
        let bar = ProgressBar::new(target.count);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} acked  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut summary = Summary::default();
    let mut in_flight = FuturesUnordered::new();
    let started = Instant::now();
    for (i, g) in Generator::new(opts).take(target.count as usize).enumerate() {
        if let Some(rate) = target.rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let wire = to_wire(&g, &ids).map_err(|e| e.to_string())?;
        summary.count(&g, wire.stream);
        let topic = match wire.stream {
            Stream::Platform => &target.platform_topic,
            Stream::Orders => &target.orders_topic,
        };
        let mut record = FutureRecord::to(topic).payload(&wire.payload);
        if let Some(k) = &wire.key {
            record = record.key(k);
        }
        let mut record = Some(record);
        while let Some(r) = record.take() {
            match producer.send_result(r) {
                Ok(delivery) => in_flight.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: wait for some acks, then try again.
                    settle(&mut in_flight, &mut summary, &bar).await;
                    record = Some(r);
                }
                Err((e, _)) => return Err(format!("cannot enqueue a record for {topic}: {e}")),
            }
        }
        summary.sent += 1;
        while in_flight.len() >= MAX_IN_FLIGHT {
            settle(&mut in_flight, &mut summary, &bar).await;
        }
    }
    while !in_flight.is_empty() {
        settle(&mut in_flight, &mut summary, &bar).await;
    }
    let _ = producer.flush(Duration::from_secs(30));
    summary.elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(summary)
}

type Delivery = rdkafka::producer::DeliveryFuture;

async fn settle(
    in_flight: &mut FuturesUnordered<Delivery>,
    summary: &mut Summary,
    bar: &ProgressBar,
) {
    match in_flight.next().await {
        Some(Ok(Ok(_))) => {
            summary.acked += 1;
            bar.inc(1);
        }
        Some(Ok(Err((e, _)))) => {
            summary.failed += 1;
            summary.first_error.get_or_insert_with(|| e.to_string());
        }
        Some(Err(_canceled)) => {
            summary.failed += 1;
            summary
                .first_error
                .get_or_insert_with(|| "delivery canceled".to_owned());
        }
        None => {}
    }
}
