//! `pipelinectl bench all` (`make bench`): every benchmark in one go, written as one Markdown
//! report (`bench/results.md`):
//! - the four throughput benchmarks (runtime, ingest, cache, aggregate) with their ratios;
//! - produce→visible latency per binary at half of its measured rate: records are published
//!   at that steady rate while the binary's sink runs in the consumer runtime; a record's
//!   latency is from its Kafka timestamp (set by the producer when it hands the record over)
//!   to the moment the sink's write returned (acknowledged by the store, so visible to
//!   readers);
//! - peak RSS of each shipped binary (release build, shipped config) started against a
//!   backlog of 1M records: the kernel's high-water mark (`VmHWM`) once the group has caught
//!   up or the window ended.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aggregator::AggregatorSink;
use audit_writer::AuditSink;
use cache_updater::CacheSink;
use eventpipe_runtime::config::BatchConfig;
use eventpipe_runtime::sink::{Sink, SinkError};
use eventpipe_stores::{MongoConfig, RedisConfig};
use ingest_writer::IngestSink;

use super::aggregate::AggregateArgs;
use super::cache::CacheArgs;
use super::ingest::IngestArgs;
use super::{
    backlog, cores, drop_database, median, percentile, recent_stream, runtime_run, topics_for,
    unique, BenchArgs, Ratio, Section,
};
use crate::chaos::{environment, spawn_member, BINARIES};
use crate::produce::{self, Target};
use crate::{setup, topics, verify};

pub struct AllArgs {
    pub bench: BenchArgs,
    pub mongodb_uri: String,
    pub redis_nodes: Vec<String>,
    pub naive_events: u64,
    /// Records in the backlog the binaries' memory is measured under.
    pub rss_events: u64,
    /// Longest a binary runs against that backlog.
    pub rss_window: Duration,
    /// How long records are published at half the rate for the latency figures.
    pub latency_seconds: u64,
    pub pipelines: PathBuf,
    pub bin_dir: PathBuf,
    pub work_dir: PathBuf,
}

/// One binary's latency run.
struct Latency {
    binary: &'static str,
    max_rate: f64,
    offered: f64,
    records: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// One binary's memory run.
struct Memory {
    binary: &'static str,
    peak_rss_mib: f64,
    consumed: i64,
    seconds: f64,
}

pub async fn all(args: &AllArgs) -> Result<String, String> {
    let started = Instant::now();
    let b = &args.bench;
    let copy = |events: u64| BenchArgs {
        bootstrap: b.bootstrap.clone(),
        registry: b.registry.clone(),
        events,
        runs: b.runs,
    };
    eprintln!("== runtime");
    let runtime = super::runtime(&copy(b.events)).await?;
    eprintln!("== ingest");
    let ingest = super::ingest::ingest(&IngestArgs {
        bench: copy(b.events),
        mongodb_uri: args.mongodb_uri.clone(),
        naive_events: args.naive_events,
    })
    .await?;
    eprintln!("== cache");
    let cache = super::cache::cache(&CacheArgs {
        bench: copy(b.events),
        redis_nodes: args.redis_nodes.clone(),
    })
    .await?;
    eprintln!("== aggregate");
    let aggregate = super::aggregate::aggregate(&AggregateArgs {
        bench: copy(b.events),
        mongodb_uri: args.mongodb_uri.clone(),
    })
    .await?;
    eprintln!("== audit-writer rate");
    let audit_rate = audit_rate(args).await?;

    let pipelines = verify::Pipelines::load(&args.pipelines, &[])?;
    let mut latencies = Vec::new();
    for (binary, rate) in [
        ("ingest-writer", ingest.rate),
        ("audit-writer", audit_rate),
        ("aggregator", aggregate.rate),
        ("cache-updater", cache.rate),
    ] {
        eprintln!("== {binary}: latency at half of {rate:.0} records/s");
        latencies.push(latency(args, &pipelines, binary, rate).await?);
    }
    eprintln!("== peak RSS under a {}-record backlog", args.rss_events);
    let memory = memory(args).await?;

    let sections = [&runtime, &ingest, &cache, &aggregate];
    Ok(render(
        args,
        &sections,
        audit_rate,
        &latencies,
        &memory,
        started.elapsed(),
    ))
}

fn render(
    args: &AllArgs,
    sections: &[&Section],
    audit_rate: f64,
    latencies: &[Latency],
    memory: &[Memory],
    took: Duration,
) -> String {
    let mut out = format!(
        "# Benchmark results\n\n{} cores, {} GiB memory; broker, registry, mongod and the Redis \
         Cluster on the same machine. `make bench` (release build), {} runs per contender \
         (medians), {:.0} minutes in all.\n\n## Ratios\n\n| ratio | target | measured | |\n|---|---|---|---|\n",
        cores(),
        memory_gib(),
        args.bench.runs,
        took.as_secs_f64() / 60.0
    );
    let ratios: Vec<&Ratio> = sections.iter().flat_map(|s| &s.ratios).collect();
    for r in ratios {
        out += &format!(
            "| {} | {} | {:.2} | {} |\n",
            r.label,
            r.target.map_or("—".to_owned(), |t| format!("≥ {t}")),
            r.value,
            match r.met() {
                Some(true) => "met",
                Some(false) => "not met",
                None => "",
            }
        );
    }
    out += "\n## Rates (records/s, median)\n\n| binary | end-to-end rate |\n|---|---|\n";
    for (binary, rate) in [
        ("consumer runtime, no-op sink", sections[0].rate),
        ("ingest-writer", sections[1].rate),
        ("cache-updater", sections[2].rate),
        ("aggregator (events folded)", sections[3].rate),
        ("audit-writer", audit_rate),
    ] {
        out += &format!("| {binary} | {rate:.0} |\n");
    }
    out += "\n## Produce→visible latency at half the measured rate\n\n\
            | binary | max rate (records/s) | offered (records/s) | records | p50 (ms) | p99 (ms) |\n\
            |---|---|---|---|---|---|\n";
    for l in latencies {
        out += &format!(
            "| {} | {:.0} | {:.0} | {} | {:.0} | {:.0} |\n",
            l.binary, l.max_rate, l.offered, l.records, l.p50_ms, l.p99_ms
        );
    }
    out += &format!(
        "\n## Peak RSS under a backlog of {} records\n\n\
         | binary | peak RSS (MiB) | records committed in the window | window (s) |\n|---|---|---|---|\n",
        args.rss_events
    );
    for m in memory {
        out += &format!(
            "| {} | {:.0} | {} | {:.0} |\n",
            m.binary, m.peak_rss_mib, m.consumed, m.seconds
        );
    }
    out += "\n## Each benchmark\n";
    for s in sections {
        out += &format!("\n```\n{}```\n", s.text);
    }
    out
}

fn memory_gib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| (kb + (1 << 19)) >> 20)
}

/// audit-writer's end-to-end rate over a backlog (no other benchmark measures it).
async fn audit_rate(args: &AllArgs) -> Result<f64, String> {
    let b = &args.bench;
    let topics = backlog(b, recent_stream(19, b.events, 1)).await?;
    let mut rates = Vec::new();
    for _ in 0..b.runs {
        let config = MongoConfig::new(&args.mongodb_uri, unique("bench_audit").replace('-', "_"));
        let sink = AuditSink::connect(&config)
            .await
            .map_err(|e| e.to_string())?;
        let run = runtime_run(
            b,
            &topics[..1],
            sink,
            topics_for(b, &topics[..1])?,
            BatchConfig::default(),
            false,
        )
        .await?;
        drop_database(&config).await?;
        eprintln!("audit-writer {:.0} records/s", run.rate);
        rates.push(run.rate);
    }
    Ok(median(&rates))
}

/// Publishes at half of `max_rate` for `latency_seconds` while `binary`'s sink consumes.
async fn latency(
    args: &AllArgs,
    pipelines: &verify::Pipelines,
    binary: &'static str,
    max_rate: f64,
) -> Result<Latency, String> {
    let offered = (max_rate / 2.0).max(1.0);
    let count = (offered * args.latency_seconds as f64) as u64;
    let b = BenchArgs {
        events: 0,
        ..args.bench.clone()
    };
    let topics = backlog(&b, recent_stream(23, 0, 1)).await?;
    let sources: Vec<String> = if binary == "audit-writer" {
        topics[..1].to_vec()
    } else {
        topics.clone()
    };
    let ids = setup::register_schemas(&b.registry, &topics[0], &topics[1]).await?;
    // Event times advance with the clock, so none is late or from the future.
    let opts = crate::generate::Options {
        step_ms: 1,
        ..recent_stream(29, 0, 1)
    };
    let target = Target {
        bootstrap: b.bootstrap.clone(),
        platform_topic: topics[0].clone(),
        orders_topic: topics[1].clone(),
        rate: Some(offered),
        count,
        progress: false,
    };
    let producer = tokio::spawn(async move { produce::run(opts, ids, &target).await });
    // Records of the consumed topics only (audit-writer reads the platform topic).
    let expected = if binary == "audit-writer" {
        let share = crate::generate::Options::default().orders_share;
        (count as f64 * (1.0 - share) * 0.97) as u64
    } else {
        count
    };
    let database = unique("bench_latency").replace('-', "_");
    let mongo = MongoConfig::new(&args.mongodb_uri, &database);
    let run = match binary {
        "ingest-writer" => {
            let sink = IngestSink::connect(&mongo).await;
            timed(&b, &sources, sink, expected, &pipelines.ingest.batch).await?
        }
        "audit-writer" => {
            let sink = AuditSink::connect(&mongo).await;
            timed(&b, &sources, sink, expected, &pipelines.audit.batch).await?
        }
        "aggregator" => {
            let sink = AggregatorSink::connect(&mongo).await;
            timed(&b, &sources, sink, expected, &pipelines.aggregator.batch).await?
        }
        _ => {
            let mut config = RedisConfig::new(args.redis_nodes.clone());
            config.keys.prefix = format!("{database}:");
            let sink = CacheSink::connect(&config).await;
            timed(&b, &sources, sink, expected, &pipelines.cache.batch).await?
        }
    };
    let summary = producer
        .await
        .map_err(|e| format!("producer task: {e}"))??;
    if binary != "cache-updater" {
        drop_database(&mongo).await?;
    }
    // The first tenth includes the group join; the figures are for the steady state.
    let mut l = run.latencies;
    let skip = l.len() / 10;
    l.drain(..skip);
    eprintln!(
        "{binary}: offered {offered:.0}/s, producer {:.0}/s, p50 {:.0} ms, p99 {:.0} ms",
        summary.rate(),
        percentile(&l, 0.5),
        percentile(&l, 0.99)
    );
    Ok(Latency {
        binary,
        max_rate,
        offered: summary.rate(),
        records: l.len(),
        p50_ms: percentile(&l, 0.5),
        p99_ms: percentile(&l, 0.99),
    })
}

/// The runtime with `sink` until `expected` records are written, recording their latencies.
async fn timed<S: Sink>(
    b: &BenchArgs,
    sources: &[String],
    sink: Result<S, SinkError>,
    expected: u64,
    batch: &BatchConfig,
) -> Result<super::Run, String> {
    let sink = sink.map_err(|e| e.to_string())?;
    runtime_run(b, sources, sink, expected, batch.clone(), true).await
}

/// Each shipped binary, alone, against a backlog of `rss_events` records.
async fn memory(args: &AllArgs) -> Result<Vec<Memory>, String> {
    let b = BenchArgs {
        events: args.rss_events,
        ..args.bench.clone()
    };
    let topics = backlog(&b, recent_stream(31, b.events, 1)).await?;
    let id = unique("bench-rss");
    let env = environment(
        &crate::chaos::Endpoints {
            bootstrap: b.bootstrap.clone(),
            registry: b.registry.clone(),
            mongodb_uri: args.mongodb_uri.clone(),
            redis_nodes: args.redis_nodes.clone(),
        },
        &id,
        &topics[0],
        &topics[1],
    );
    let dir = args.work_dir.join(&id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for binary in BINARIES {
        let group = format!("{id}-{binary}");
        let sources: Vec<&String> = if binary == "audit-writer" {
            topics[..1].iter().collect()
        } else {
            topics.iter().collect()
        };
        let mut child = spawn_member(
            &args.bin_dir,
            &args.pipelines,
            binary,
            &env,
            &dir.join(format!("{binary}.log")),
        )?;
        let started = Instant::now();
        let (mut total, mut behind) = (0, 1);
        while behind > 0 && started.elapsed() < args.rss_window {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{binary} exited with {status} (log in {})",
                    dir.display()
                ));
            }
            (total, behind) = (0, 0);
            for t in &sources {
                let (records, lag) = topics::lag(&b.bootstrap, &group, t)?;
                total += records;
                behind += lag;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let peak = peak_rss_kib(child.id()).unwrap_or(0) as f64 / 1024.0;
        let _ = child.kill();
        let _ = child.wait();
        eprintln!(
            "{binary}: peak RSS {peak:.0} MiB, {} of {total} records committed in {seconds:.0} s",
            total - behind
        );
        out.push(Memory {
            binary,
            peak_rss_mib: peak,
            consumed: total - behind,
            seconds,
        });
    }
    // The binaries' stores: the database and the key prefix of this run.
    let database = id.replace(['-', '.'], "_");
    drop_database(&MongoConfig::new(&args.mongodb_uri, &database)).await?;
    let redis = RedisConfig::new(args.redis_nodes.clone())
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    super::cache::clean(&redis, &format!("{id}:")).await?;
    Ok(out)
}

/// `VmHWM` of a process: the most resident memory it ever had.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
