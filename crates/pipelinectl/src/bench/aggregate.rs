//! `pipelinectl bench aggregate`: how fast `aggregator` folds, against reading alone.
//!
//! One backlog (ending now, so no event is from the future) is read, each run, by:
//! - raw: one rdkafka consumer that receives and decodes every record (the ceiling of any
//!   consumer of these topics on this machine);
//! - aggregator: the runtime with `AggregatorSink` on a fresh database, end to end, with the
//!   batch (pre-aggregation window) of `pipelines/aggregator.toml`.
//!
//! It prints events folded per second, bucket writes issued per second, and the ratio of the
//! folding rate to the raw rate.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use aggregator::AggregatorSink;
use eventpipe_runtime::config::BatchConfig;
use eventpipe_stores::MongoConfig;

use super::runtime::raw_rate;
use super::{
    backlog, cores, drop_database, ratio, recent_stream, runtime_rate, table, unique, BenchArgs,
    Section, Series,
};

pub struct AggregateArgs {
    pub bench: BenchArgs,
    pub mongodb_uri: String,
}

pub async fn aggregate(args: &AggregateArgs) -> Result<Section, String> {
    let topics = backlog(&args.bench, recent_stream(17, args.bench.events, 2)).await?;
    let total = args.bench.events;
    // As shipped in pipelines/aggregator.toml.
    let window = BatchConfig {
        max_records: 20_000,
        max_bytes: 16 * 1024 * 1024,
        max_age_ms: 2_000,
    };
    let mut raw = Series::new("raw rdkafka consume+decode");
    let mut folded = Series::new("aggregator, events folded");
    let mut writes = Series::new("aggregator, bucket writes issued");
    for run in 1..=args.bench.runs {
        let r = raw_rate(&args.bench, &topics).await?;
        eprintln!("run {run}: raw {r:.0} records/s");
        raw.rates.push(r);

        let config = MongoConfig::new(&args.mongodb_uri, unique("bench_agg").replace('-', "_"));
        let sink = Arc::new(
            AggregatorSink::connect(&config)
                .await
                .map_err(|e| e.to_string())?,
        );
        let f = runtime_rate(&args.bench, &topics, sink.clone(), total, window.clone()).await?;
        let statements = sink.statements.load(Ordering::Relaxed) as f64;
        let w = statements / (total as f64 / f);
        drop_database(&config).await?;
        eprintln!("run {run}: aggregator {f:.0} events/s, {w:.0} writes/s");
        folded.rates.push(f);
        writes.rates.push(w);
    }
    let r = ratio("aggregator/raw", &folded, &raw, None);
    Ok(Section {
        text: format!(
            "aggregate benchmark: {total} records over 2 topics x 6 partitions, {} runs, {} cores, \
             batch {} records / {} ms\n\n{}\n{}events folded per bucket write (medians): {:.1}\n",
            args.bench.runs,
            cores(),
            window.max_records,
            window.max_age_ms,
            table(&[&raw, &folded, &writes]),
            r.line(),
            folded.median() / writes.median(),
        ),
        rate: folded.median(),
        ratios: vec![r],
    })
}
