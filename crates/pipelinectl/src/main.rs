//! `pipelinectl`: tools for producers and operators of the event pipeline.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pipelinectl::generate::Options;
use pipelinectl::produce::{self, Target};
use pipelinectl::setup;

#[derive(Parser)]
#[command(version, about = "Tools for the event pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct Endpoints {
    #[arg(
        long,
        env = "EVENTPIPE_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_servers: String,
    #[arg(
        long,
        env = "EVENTPIPE_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    schema_registry: String,
    #[arg(long, default_value = "platform.events")]
    platform_topic: String,
    #[arg(long, default_value = "orders.events")]
    orders_topic: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the source topics and their `.dlq` and `.late` companions (existing ones are kept).
    Topics {
        #[command(flatten)]
        endpoints: Endpoints,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
    },
    /// Register every schema version in schemas/ under `<topic>-value`; prints the ids.
    Schemas {
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Register the schemas and publish realistic events.
    Produce(ProduceArgs),
    /// Benchmarks against the running stack; each prints its rates, medians and ratios.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The Redis cache that cache-updater maintains.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Read the source topics from the beginning, compute what every store must hold and
    /// compare: one row per store (expected, found, missing, extra, wrong). Exit 1 on any
    /// difference. Where to look comes from the binaries' configs and environment overrides.
    Verify {
        /// Directory of the binaries' config files.
        #[arg(long, default_value = "pipelines")]
        pipelines: std::path::PathBuf,
    },
    /// Run the four binaries against a local stack while producing, kill members and
    /// restart services meanwhile, wait for the groups to catch up and verify.
    Chaos(ChaosArgs),
}

/// Every service of a stack: Kafka and the registry, MongoDB, the Redis Cluster.
#[derive(Args)]
struct Services {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(flatten)]
    mongo: MongoUri,
    #[command(flatten)]
    redis: RedisNodes,
}

#[derive(Args)]
struct ChaosArgs {
    #[command(flatten)]
    stack: Services,
    /// The local stack whose services are restarted (`stack ... --name`).
    #[arg(long = "stack", default_value = "chaos")]
    stack_name: String,
    /// Directory of the binaries' config files.
    #[arg(long, default_value = "pipelines")]
    pipelines: std::path::PathBuf,
    /// Member logs go to <work-dir>/<run>/.
    #[arg(long, default_value = "target/chaos")]
    work_dir: std::path::PathBuf,
    /// Records to publish.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Records per second.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Members of each binary's group.
    #[arg(long, default_value_t = 2)]
    members: usize,
    /// Members killed with SIGKILL (and started again).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    #[arg(long, default_value_t = 1)]
    broker_restarts: usize,
    #[arg(long, default_value_t = 1)]
    mongod_restarts: usize,
    #[arg(long, default_value_t = 1)]
    redis_master_kills: usize,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Seeds the records and the order and targets of the faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds the groups may take to catch up after the producer finished.
    #[arg(long, default_value_t = 1800)]
    settle_timeout_s: u64,
}

#[derive(Args, Clone)]
struct RedisNodes {
    /// Seed nodes of the Redis Cluster, comma-separated.
    #[arg(
        long,
        env = "EVENTPIPE_REDIS_NODES",
        default_value = "127.0.0.1:7000",
        value_delimiter = ','
    )]
    redis_nodes: Vec<String>,
}

#[derive(Args, Clone)]
struct Redis {
    #[command(flatten)]
    nodes: RedisNodes,
    /// `sink.keys.prefix` of the cache-updater that wrote the keys.
    #[arg(long, default_value = "")]
    prefix: String,
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Read one of the cache's structures.
    Get {
        #[command(flatten)]
        redis: Redis,
        #[command(subcommand)]
        what: CacheGet,
    },
}

#[derive(Subcommand)]
enum CacheGet {
    /// Counts by event type per minute.
    Counters {
        #[arg(long)]
        tenant: String,
        /// First minute, yyyyMMddHHmm (UTC); default: 10 minutes before --to.
        #[arg(long)]
        from: Option<String>,
        /// Last minute, yyyyMMddHHmm (UTC); default: now.
        #[arg(long)]
        to: Option<String>,
    },
    /// A user's recent events, newest first.
    Timeline {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
    },
    /// Distinct users of a tenant on a day (HyperLogLog estimate).
    UniqueUsers {
        #[arg(long)]
        tenant: String,
        /// yyyyMMdd (UTC); default: today.
        #[arg(long)]
        day: Option<String>,
    },
    /// A session's state.
    Session {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        session: String,
    },
    /// An order's newest state.
    Order {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        order: String,
    },
}

#[derive(Args, Clone)]
struct MongoUri {
    #[arg(
        long,
        env = "EVENTPIPE_MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
    )]
    mongodb_uri: String,
}

#[derive(Args, Clone)]
struct Mongo {
    #[command(flatten)]
    uri: MongoUri,
    #[arg(long, default_value = "eventpipe")]
    database: String,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute every content hash and chain link of a tenant's audit log (all tenants
    /// without --tenant); names each altered, removed or reordered entry. Exit 1 if any.
    Verify {
        #[command(flatten)]
        mongo: Mongo,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Args)]
struct BenchAll {
    #[command(flatten)]
    stack: Services,
    /// Records in each throughput benchmark's backlog (fewer make the runtime's start-up
    /// weigh on its rate).
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Records the naive consumer handles per run.
    #[arg(long, default_value_t = 5_000)]
    naive_events: u64,
    /// Runs of each contender (alternating); medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of publishing at half the measured rate, per binary, for the latency figures.
    #[arg(long, default_value_t = 30)]
    latency_seconds: u64,
    /// Records in the backlog the binaries' peak RSS is measured under.
    #[arg(long, default_value_t = 1_000_000)]
    rss_events: u64,
    /// Longest each binary runs against that backlog, seconds.
    #[arg(long, default_value_t = 90)]
    rss_window_s: u64,
    /// Directory of the binaries' config files.
    #[arg(long, default_value = "pipelines")]
    pipelines: std::path::PathBuf,
    /// Logs of the binaries started for the memory figures.
    #[arg(long, default_value = "target/bench")]
    work_dir: std::path::PathBuf,
    /// Where the Markdown report goes.
    #[arg(long, default_value = "bench/results.md")]
    out: std::path::PathBuf,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Every benchmark in one go, plus latency at half the measured rates and peak RSS under a
    /// 1M-record backlog; writes a Markdown report (bench/results.md).
    All(BenchAll),
    /// Raw rdkafka consume+decode rate vs. the consumer runtime with a no-op sink.
    Runtime {
        #[command(flatten)]
        endpoints: Endpoints,
        /// Records in the backlog each reader consumes.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Runs of each reader (alternating); medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// ingest-writer end to end vs. raw batched writes of the same documents (no Kafka) and
    /// vs. a naive one-update_one-per-record consumer.
    Ingest {
        #[command(flatten)]
        endpoints: Endpoints,
        /// Each contender writes to a fresh database there, dropped afterwards.
        #[command(flatten)]
        mongo: MongoUri,
        /// Records in the backlog.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Records the naive consumer handles per run (it is slow).
        #[arg(long, default_value_t = 10_000)]
        naive_events: u64,
        /// Runs of each contender (alternating); medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// aggregator's events folded and bucket writes per second vs. raw consume+decode.
    Aggregate {
        #[command(flatten)]
        endpoints: Endpoints,
        /// Each run folds into a fresh database there, dropped afterwards.
        #[command(flatten)]
        mongo: MongoUri,
        /// Records in the backlog.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Runs of each contender (alternating); medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// cache-updater end to end vs. the same Redis commands sent as raw fred pipelines.
    Cache {
        #[command(flatten)]
        endpoints: Endpoints,
        /// Each run writes under a fresh key prefix and deletes its keys afterwards.
        #[command(flatten)]
        redis: RedisNodes,
        /// Records in the backlog.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Runs of each contender (alternating); medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

#[derive(Args)]
struct ProduceArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Records to publish (duplicates and poison records included).
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Records per second; omit to publish as fast as the broker acknowledges.
    #[arg(long)]
    rate: Option<f64>,
    /// Same seed and options, same records (keys, ids, values).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 100)]
    tenants: u32,
    /// Zipf exponent of tenant popularity (0 = uniform).
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Share of order events among all records.
    #[arg(long, default_value_t = 0.3)]
    orders_share: f64,
    /// Share of records written with the v1 schemas.
    #[arg(long, default_value_t = 0.3)]
    v1_share: f64,
    /// Share of records that re-send an earlier record.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Share of order steps published before the previous version of the same order.
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// Share of malformed records, cycling through every poison class.
    #[arg(long, default_value_t = 0.0)]
    poison: f64,
    /// Event time of the first record, ms since the epoch (default: now, to the minute; printed
    /// at the end so the same records can be generated again).
    #[arg(long)]
    start_time_ms: Option<i64>,
    /// Event-time step between records, ms.
    #[arg(long, default_value_t = 10)]
    step_ms: i64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn share(name: &str, v: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("--{name} must be between 0 and 1, got {v}"))
    }
}

async fn execute(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Topics {
            endpoints: e,
            partitions,
        } => {
            let mut topics = Vec::new();
            for t in [&e.platform_topic, &e.orders_topic] {
                topics.extend([t.clone(), format!("{t}.dlq"), format!("{t}.late")]);
            }
            setup::create_topics(&e.bootstrap_servers, &topics, partitions).await?;
            println!("topics ready: {}", topics.join(", "));
        }
        Cmd::Schemas { endpoints: e } => {
            let ids =
                setup::register_schemas(&e.schema_registry, &e.platform_topic, &e.orders_topic)
                    .await?;
            println!(
                "{}-value: v1 id {}, v2 id {}",
                e.platform_topic, ids.platform[0], ids.platform[1]
            );
            println!(
                "{}-value: v1 id {}, v2 id {}",
                e.orders_topic, ids.order[0], ids.order[1]
            );
        }
        Cmd::Produce(a) => {
            let opts = Options {
                seed: a.seed,
                tenants: a.tenants.max(1),
                zipf_exponent: a.zipf,
                orders_share: share("orders-share", a.orders_share)?,
                v1_share: share("v1-share", a.v1_share)?,
                duplicates: share("duplicates", a.duplicates)?,
                out_of_order: share("out-of-order", a.out_of_order)?,
                poison: share("poison", a.poison)?,
                start_time_ms: a.start_time_ms.unwrap_or_else(now_minute_ms),
                step_ms: a.step_ms,
            };
            if a.rate.is_some_and(|r| r <= 0.0) {
                return Err("--rate must be positive".to_owned());
            }
            let e = a.endpoints;
            setup::create_topics(
                &e.bootstrap_servers,
                &[e.platform_topic.clone(), e.orders_topic.clone()],
                6,
            )
            .await?;
            let ids =
                setup::register_schemas(&e.schema_registry, &e.platform_topic, &e.orders_topic)
                    .await?;
            let target = Target {
                bootstrap: e.bootstrap_servers,
                platform_topic: e.platform_topic,
                orders_topic: e.orders_topic,
                rate: a.rate,
                count: a.count,
                progress: !a.quiet,
            };
            let (seed, start) = (opts.seed, opts.start_time_ms);
            let summary = produce::run(opts, ids, &target).await?;
            print!("{summary}");
            println!("regenerate with: --seed {seed} --start-time-ms {start}");
            if summary.failed > 0 {
                return Err(format!("{} records were not acknowledged", summary.failed));
            }
        }
        Cmd::Bench(BenchCmd::Runtime {
            endpoints: e,
            events,
            runs,
        }) => {
            let _metrics = eventpipe_runtime::telemetry::install_metrics_recorder()?;
            let report = pipelinectl::bench::runtime(&bench_args(e, events, runs)).await?;
            print!("{report}");
        }
        Cmd::Bench(BenchCmd::Ingest {
            endpoints: e,
            mongo,
            events,
            naive_events,
            runs,
        }) => {
            let _metrics = eventpipe_runtime::telemetry::install_metrics_recorder()?;
            let report =
                pipelinectl::bench::ingest::ingest(&pipelinectl::bench::ingest::IngestArgs {
                    bench: bench_args(e, events, runs),
                    mongodb_uri: mongo.mongodb_uri,
                    naive_events,
                })
                .await?;
            print!("{report}");
        }
        Cmd::Bench(BenchCmd::Cache {
            endpoints: e,
            redis,
            events,
            runs,
        }) => {
            let _metrics = eventpipe_runtime::telemetry::install_metrics_recorder()?;
            let report = pipelinectl::bench::cache::cache(&pipelinectl::bench::cache::CacheArgs {
                bench: bench_args(e, events, runs),
                redis_nodes: redis.redis_nodes,
            })
            .await?;
            print!("{report}");
        }
        Cmd::Bench(BenchCmd::Aggregate {
            endpoints: e,
            mongo,
            events,
            runs,
        }) => {
            use pipelinectl::bench::aggregate::{aggregate, AggregateArgs};
            let _metrics = eventpipe_runtime::telemetry::install_metrics_recorder()?;
            let report = aggregate(&AggregateArgs {
                bench: bench_args(e, events, runs),
                mongodb_uri: mongo.mongodb_uri,
            })
            .await?;
            print!("{report}");
        }
        Cmd::Bench(BenchCmd::All(a)) => {
            let _metrics = eventpipe_runtime::telemetry::install_metrics_recorder()?;
            let report = pipelinectl::bench::report::all(&pipelinectl::bench::report::AllArgs {
                bench: bench_args(a.stack.endpoints, a.events, a.runs),
                mongodb_uri: a.stack.mongo.mongodb_uri,
                redis_nodes: a.stack.redis.redis_nodes,
                naive_events: a.naive_events,
                rss_events: a.rss_events,
                rss_window: std::time::Duration::from_secs(a.rss_window_s),
                latency_seconds: a.latency_seconds,
                pipelines: a.pipelines,
                bin_dir: pipelinectl::chaos::own_dir()?,
                work_dir: a.work_dir,
            })
            .await?;
            if let Some(dir) = a.out.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::write(&a.out, &report).map_err(|e| format!("{}: {e}", a.out.display()))?;
            print!("{report}");
            eprintln!("written to {}", a.out.display());
        }
        Cmd::Cache(CacheCmd::Get { redis, what }) => cache_get(redis, what).await?,
        Cmd::Verify { pipelines } => {
            let env: Vec<(String, String)> = std::env::vars().collect();
            let p = pipelinectl::verify::Pipelines::load(&pipelines, &env)?;
            let report = pipelinectl::verify::run(&p).await?;
            println!("{report}");
            if !report.is_clean() {
                return Err("the stores differ from what the topics say they must hold".into());
            }
        }
        Cmd::Chaos(a) => {
            let outcome = pipelinectl::chaos::run(pipelinectl::chaos::ChaosOptions {
                stack: a.stack_name,
                endpoints: pipelinectl::chaos::Endpoints {
                    bootstrap: a.stack.endpoints.bootstrap_servers,
                    registry: a.stack.endpoints.schema_registry,
                    mongodb_uri: a.stack.mongo.mongodb_uri,
                    redis_nodes: a.stack.redis.redis_nodes,
                },
                pipelines: a.pipelines,
                bin_dir: pipelinectl::chaos::own_dir()?,
                work_dir: a.work_dir,
                events: a.events,
                rate: a.rate,
                members: a.members,
                kills: a.kills,
                broker_restarts: a.broker_restarts,
                mongod_restarts: a.mongod_restarts,
                redis_master_kills: a.redis_master_kills,
                partitions: a.partitions,
                seed: a.seed,
                settle_timeout: std::time::Duration::from_secs(a.settle_timeout_s),
            })
            .await?;
            println!("{outcome}");
            if !outcome.passed() {
                return Err(format!("chaos run {} failed", outcome.run));
            }
        }
        Cmd::Audit(AuditCmd::Verify { mongo, tenant }) => {
            let client = mongodb::Client::with_uri_str(&mongo.uri.mongodb_uri)
                .await
                .map_err(|e| format!("--mongodb-uri: {e}"))?;
            let db = client.database(&mongo.database);
            let tenants = match tenant {
                Some(t) => vec![t],
                None => audit_writer::tenants(&db)
                    .await
                    .map_err(|e| format!("cannot list tenants: {e}"))?,
            };
            let mut broken = 0;
            for t in &tenants {
                let report = audit_writer::verify(&db, t, bson::DateTime::now())
                    .await
                    .map_err(|e| format!("cannot read the audit log of {t}: {e}"))?;
                let head = report.head_seq.unwrap_or(0);
                if report.is_intact() {
                    println!(
                        "{t}: intact ({} entries, head seq {head}{})",
                        report.entries,
                        if report.expired > 0 {
                            format!(", {} expired by retention", report.expired)
                        } else {
                            String::new()
                        }
                    );
                } else {
                    broken += 1;
                    println!("{t}: BROKEN ({} entries, head seq {head})", report.entries);
                    for p in &report.problems {
                        println!("  {p}");
                    }
                }
            }
            if broken > 0 {
                return Err(format!(
                    "{broken} of {} audit chains are broken",
                    tenants.len()
                ));
            }
            println!("{} audit chains verified", tenants.len());
        }
    }
    Ok(())
}

/// Now, rounded down to the minute (the default first event time of `produce`).
fn now_minute_ms() -> i64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    ms - ms % 60_000
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match execute(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pipelinectl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cache_get(redis: Redis, what: CacheGet) -> Result<(), String> {
    use cache_updater::{keys, read};
    let config = eventpipe_stores::RedisConfig::new(redis.nodes.redis_nodes);
    let client = config.connect().await.map_err(|e| e.to_string())?;
    let p = redis.prefix.as_str();
    let err = |e: fred::error::Error| e.to_string();
    match what {
        CacheGet::Counters { tenant, from, to } => {
            let to = match to {
                Some(m) => keys::parse_minute(&m)?,
                None => bson::DateTime::now().timestamp_millis(),
            };
            let from = match from {
                Some(m) => keys::parse_minute(&m)?,
                None => to - 10 * keys::MINUTE_MS,
            };
            let counts = read::counters(&client, p, &tenant, from, to)
                .await
                .map_err(err)?;
            if counts.is_empty() {
                println!("no counters for {tenant} in that range");
            }
            for (minute, by_type) in counts {
                let line: Vec<String> = by_type.iter().map(|(t, n)| format!("{t}={n}")).collect();
                println!("{minute}  {}", line.join(" "));
            }
        }
        CacheGet::Timeline { tenant, user } => {
            for e in read::timeline(&client, p, &tenant, &user)
                .await
                .map_err(err)?
            {
                let at = bson::DateTime::from_millis(e.event_time)
                    .try_to_rfc3339_string()
                    .unwrap_or_else(|_| e.event_time.to_string());
                println!("{at}  {:<28} {}", e.event_type, e.event_id);
            }
        }
        CacheGet::UniqueUsers { tenant, day } => {
            let day = match day {
                Some(d) => d,
                None => keys::day(bson::DateTime::now().timestamp_millis())
                    .map_err(|e| e.to_string())?,
            };
            let n = read::unique_users(&client, p, &tenant, &day)
                .await
                .map_err(err)?;
            println!("{tenant} {day}: ~{n} distinct users");
        }
        CacheGet::Session { tenant, session } => {
            print_hash(
                read::session(&client, p, &tenant, &session)
                    .await
                    .map_err(err)?,
            );
        }
        CacheGet::Order { tenant, order } => {
            print_hash(
                read::order(&client, p, &tenant, &order)
                    .await
                    .map_err(err)?,
            );
        }
    }
    Ok(())
}

fn print_hash(map: std::collections::BTreeMap<String, String>) {
    if map.is_empty() {
        println!("not in the cache (unknown or expired)");
    }
    for (k, v) in map {
        println!("{k}: {v}");
    }
}

fn bench_args(e: Endpoints, events: u64, runs: usize) -> pipelinectl::bench::BenchArgs {
    pipelinectl::bench::BenchArgs {
        bootstrap: e.bootstrap_servers,
        registry: e.schema_registry,
        events,
        runs: runs.max(1),
    }
}
