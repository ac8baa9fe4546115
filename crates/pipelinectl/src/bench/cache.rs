//! `pipelinectl bench cache`: `cache-updater` against what the Redis Cluster can take.
//!
//! One backlog is published once and read back once. Then, each run, under a fresh key
//! prefix:
//! - ceiling: the backlog's decoded records, already in memory, turned into the updater's own
//!   commands (one per key and batch of 1,000) and sent as one fred pipeline per batch,
//!   partition by partition, all partitions at once — no Kafka, no replica acknowledgement;
//! - cache-updater: the runtime with `CacheSink` over the topics in a fresh group, end to end,
//!   with `WAIT` for one replica per batch as configured by default.
//!
//! Rates are records per second from the first write to the last. The keys are deleted after
//! each run.

use std::time::Instant;

use cache_updater::{plan, CacheSink};
use eventpipe_runtime::config::BatchConfig;
use eventpipe_runtime::sink::Record;
use eventpipe_stores::RedisConfig;
use fred::prelude::*;
use futures::future::try_join_all;
use futures::TryStreamExt;

use super::{
    backlog, cores, load, ratio, recent_stream, runtime_rate, table, unique, BenchArgs, Section,
    Series,
};

pub struct CacheArgs {
    pub bench: BenchArgs,
    pub redis_nodes: Vec<String>,
}

pub async fn cache(args: &CacheArgs) -> Result<Section, String> {
    let topics = backlog(&args.bench, recent_stream(13, args.bench.events, 1)).await?;
    eprintln!("reading the backlog back…");
    let partitions = load(&args.bench, &topics).await?;
    let total: u64 = partitions.iter().map(|p| p.len() as u64).sum();

    let mut ceiling = Series::new("raw fred pipelines, same commands, no Kafka (ceiling)");
    let mut updater = Series::new("cache-updater, end to end");
    for run in 1..=args.bench.runs {
        let config = fresh(&args.redis_nodes);
        let sink = CacheSink::connect(&config)
            .await
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        try_join_all(partitions.iter().map(|p| send_partition(&sink, &config, p))).await?;
        let c = total as f64 / started.elapsed().as_secs_f64();
        clean(sink.client(), &config.keys.prefix).await?;
        eprintln!("run {run}: ceiling {c:.0} records/s");
        ceiling.rates.push(c);

        let config = fresh(&args.redis_nodes);
        let sink = CacheSink::connect(&config)
            .await
            .map_err(|e| e.to_string())?;
        let client = sink.client().clone();
        let u = runtime_rate(&args.bench, &topics, sink, total, BatchConfig::default()).await?;
        clean(&client, &config.keys.prefix).await?;
        eprintln!("run {run}: cache-updater {u:.0} records/s");
        updater.rates.push(u);
    }
    let r = ratio("cache-updater/ceiling", &updater, &ceiling, Some(0.7));
    Ok(Section {
        text: format!(
            "cache benchmark: {total} records over 2 topics x 6 partitions, {} runs, {} cores, \
             6-node Redis Cluster\n\n{}\n{}",
            args.bench.runs,
            cores(),
            table(&[&ceiling, &updater]),
            r.line(),
        ),
        rate: updater.median(),
        ratios: vec![r],
    })
}

fn fresh(nodes: &[String]) -> RedisConfig {
    let mut config = RedisConfig::new(nodes.to_vec());
    config.keys.prefix = format!("{}:", unique("bench"));
    config
}

/// The updater's commands for `records`, batch by batch, one pipeline each.
async fn send_partition(
    sink: &CacheSink,
    config: &RedisConfig,
    records: &[Record],
) -> Result<(), String> {
    for batch in records.chunks(BatchConfig::default().max_records) {
        let p = plan(batch, &config.keys);
        for r in sink.send(&p.ops).await.map_err(|e| e.to_string())? {
            r.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Deletes every key under `prefix`.
pub(super) async fn clean(client: &Client, prefix: &str) -> Result<(), String> {
    let keys: Vec<Key> = client
        .scan_cluster_buffered(format!("{prefix}*"), Some(1000), None)
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    for key in keys {
        let _: i64 = client.del(key).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
