//! `pipelinectl bench runtime`: what the consumer runtime costs over a bare consumer.
//!
//! Alternates two readers of one backlog, each in a fresh group:
//! - raw: one rdkafka `StreamConsumer` task that receives and decodes every record (the
//!   hand-written consumer's ceiling: no batching, no offsets, no backpressure);
//! - runtime: `eventpipe_runtime::consumer` with a sink that does nothing.
//!
//! Each rate is records over the time from the first record to the last, so group joins do
//! not count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventpipe_events::registry::SchemaRegistry;
use eventpipe_events::AnyDecoder;
use eventpipe_runtime::config::BatchConfig;
use eventpipe_runtime::sink::{Outcome, Record, Sink, SinkError};
use rdkafka::Message;

use super::{backlog, cores, ratio, runtime_rate, subscribed, table, BenchArgs, Section, Series};
use crate::generate::Options;

/// Metrics are recorded (the caller installs the recorder, as the binaries do), so their cost
/// is part of the figure.
pub async fn runtime(args: &BenchArgs) -> Result<Section, String> {
    let source = backlog(
        args,
        Options {
            seed: 7,
            ..Options::default()
        },
    )
    .await?;
    let mut raw = Series::new("raw rdkafka consume+decode");
    let mut runtime = Series::new("runtime, no-op sink");
    for run in 0..args.runs {
        let r = raw_rate(args, &source).await?;
        eprintln!("run {}: raw {:.0} records/s", run + 1, r);
        raw.rates.push(r);
        let t = runtime_rate(args, &source, NoOp, args.events, BatchConfig::default()).await?;
        eprintln!("run {}: runtime {:.0} records/s", run + 1, t);
        runtime.rates.push(t);
    }
    let r = ratio("runtime/raw", &runtime, &raw, Some(0.85));
    Ok(Section {
        text: format!(
            "runtime benchmark: {} records over 2 topics x 6 partitions, {} runs, {} cores\n\n{}\n{}",
            args.events,
            args.runs,
            cores(),
            table(&[&raw, &runtime]),
            r.line(),
        ),
        rate: runtime.median(),
        ratios: vec![r],
    })
}

/// Receives and decodes every record in one task; records/s from first to last record.
pub(super) async fn raw_rate(args: &BenchArgs, topics: &[String]) -> Result<f64, String> {
    let consumer = subscribed(args, topics, false)?;
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

/// Writes nothing.
struct NoOp;

impl Sink for NoOp {
    async fn write(&self, batch: &[Record]) -> Result<Vec<Outcome>, SinkError> {
        Ok(vec![Outcome::Written; batch.len()])
    }

    async fn check(&self) -> Result<(), SinkError> {
        Ok(())
    }
}
