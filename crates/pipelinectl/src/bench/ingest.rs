//! `pipelinectl bench ingest`: `ingest-writer` against what MongoDB can take and against the
//! consumer people write first.
//!
//! One backlog (platform events and order lifecycles, with a few duplicates and swapped
//! versions) is published once and read back once. Then, each run, on a fresh database with
//! the writer's indexes:
//! - ceiling: the backlog's decoded records, already in memory, written partition by partition
//!   (all partitions at once) with the writer's own documents and statements — one unordered
//!   `insert` and one `update` command per 1,000 records — and no Kafka at all;
//! - ingest-writer: the runtime with `IngestSink` over the topics in a fresh group, end to end;
//! - naive: one `StreamConsumer` that decodes each record and sends one `update_one` upsert
//!   for it (auto-commit), the usual hand-written consumer; it runs over the first
//!   `--naive-events` records only, since it is slow.
//!
//! All three use the configured write concern (`majority`, journaled, by default). Rates are
//! records per second from the first write to the last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use eventpipe_events::registry::SchemaRegistry;
use eventpipe_events::{AnyDecoder, AnyEvent};
use eventpipe_runtime::config::BatchConfig;
use eventpipe_runtime::sink::{Record, Source};
use eventpipe_stores::mongo::{self, MongoConfig, DUPLICATE_KEY};
use futures::future::try_join_all;
use ingest_writer::{docs, fold_orders, IngestSink, EVENTS, ORDERS};
use mongodb::error::ErrorKind;
use mongodb::Database;
use rdkafka::Message;

use super::{
    backlog, cores, load, ratio, recent_stream, runtime_rate, subscribed, table, unique, BenchArgs,
    Section, Series,
};

pub struct IngestArgs {
    pub bench: BenchArgs,
    pub mongodb_uri: String,
    /// Records the naive consumer handles per run.
    pub naive_events: u64,
}

/// Statements per `update` command, as in the writer.
const UPDATE_CHUNK: usize = 500;

pub async fn ingest(args: &IngestArgs) -> Result<Section, String> {
    let topics = backlog(&args.bench, recent_stream(11, args.bench.events, 1)).await?;
    eprintln!("reading the backlog back…");
    let partitions = load(&args.bench, &topics).await?;
    let total: u64 = partitions.iter().map(|p| p.len() as u64).sum();
    if total != args.bench.events {
        return Err(format!(
            "read {total} records back, published {}",
            args.bench.events
        ));
    }
    let naive_events = args.naive_events.clamp(1, total);

    let mut ceiling = Series::new("raw batched writes, no Kafka (ceiling)");
    let mut writer = Series::new("ingest-writer, end to end");
    let mut naive = Series::new("naive consumer, one update_one per record");
    for run in 1..=args.bench.runs {
        let c = on_fresh_database(&args.mongodb_uri, |config| {
            let partitions = &partitions;
            async move { ceiling_rate(&config, partitions).await }
        })
        .await?;
        eprintln!("run {run}: ceiling {c:.0} records/s");
        ceiling.rates.push(c);

        let w = on_fresh_database(&args.mongodb_uri, |config| {
            let (bench, topics) = (&args.bench, &topics);
            async move {
                let sink = IngestSink::connect(&config)
                    .await
                    .map_err(|e| e.to_string())?;
                runtime_rate(bench, topics, sink, total, BatchConfig::default()).await
            }
        })
        .await?;
        eprintln!("run {run}: ingest-writer {w:.0} records/s");
        writer.rates.push(w);

        let n = on_fresh_database(&args.mongodb_uri, |config| {
            let (bench, topics) = (&args.bench, &topics);
            async move { naive_rate(bench, topics, &config, naive_events).await }
        })
        .await?;
        eprintln!("run {run}: naive {n:.0} records/s");
        naive.rates.push(n);
    }
    let ratios = vec![
        ratio("ingest-writer/ceiling", &writer, &ceiling, Some(0.8)),
        ratio("ingest-writer/naive", &writer, &naive, Some(20.0)),
    ];
    Ok(Section {
        text: format!(
            "ingest benchmark: {total} records (naive consumer: the first {naive_events}) over 2 topics x 6 partitions, \
             {} runs, {} cores, write concern majority+journal\n\n{}\n{}{}",
            args.bench.runs,
            cores(),
            table(&[&ceiling, &writer, &naive]),
            ratios[0].line(),
            ratios[1].line(),
        ),
        rate: writer.median(),
        ratios,
    })
}

/// Runs `f` with a config for a database no one used, then drops the database.
async fn on_fresh_database<F, Fut>(uri: &str, f: F) -> Result<f64, String>
where
    F: FnOnce(MongoConfig) -> Fut,
    Fut: std::future::Future<Output = Result<f64, String>>,
{
    let config = MongoConfig::new(uri, unique("bench_ingest").replace('-', "_"));
    let rate = f(config.clone()).await;
    let db = config.connect("bench").await.map_err(|e| e.to_string())?;
    db.drop().await.map_err(|e| e.to_string())?;
    rate
}

async fn ceiling_rate(config: &MongoConfig, partitions: &[Vec<Record>]) -> Result<f64, String> {
    let db = config.connect("bench").await.map_err(|e| e.to_string())?;
    for (collection, models) in ingest_writer::indexes() {
        mongo::ensure_indexes(&db, collection, models)
            .await
            .map_err(|e| e.to_string())?;
    }
    let total: usize = partitions.iter().map(Vec::len).sum();
    let started = Instant::now();
    try_join_all(
        partitions
            .iter()
            .map(|records| write_partition(&db, config, records)),
    )
    .await?;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The writer's documents and statements for `records`, batch by batch, without its outcome
/// bookkeeping, metrics or retries.
async fn write_partition(
    db: &Database,
    config: &MongoConfig,
    records: &[Record],
) -> Result<(), String> {
    let events = db.collection::<Document>(EVENTS);
    let write_concern = config.write_concern_doc();
    for batch in records.chunks(BatchConfig::default().max_records) {
        let mut docs_out = Vec::new();
        let mut orders = Vec::new();
        for (i, r) in batch.iter().enumerate() {
            match &r.event {
                AnyEvent::Platform(e) => docs_out.push(docs::event(r, e, &config.retention)),
                AnyEvent::Order(_) => orders.push(i),
            }
        }
        if !docs_out.is_empty() {
            if let Err(e) = events.insert_many(&docs_out).ordered(false).await {
                only_duplicates(&e)?;
            }
        }
        let statements: Vec<bson::Bson> = fold_orders(batch, &orders)
            .orders
            .into_iter()
            .map(|o| {
                let applied: Vec<&Record> = o.applied.iter().map(|&i| &batch[i]).collect();
                bson::Bson::Document(docs::order_update(&applied, config.order_history))
            })
            .collect();
        for part in statements.chunks(UPDATE_CHUNK) {
            let reply = mongo::run_write(
                db,
                doc! {"update": ORDERS, "updates": part, "ordered": false, "writeConcern": write_concern.clone()},
            )
            .await
            .map_err(|e| format!("{e:?}"))?;
            if let Some((code, message)) = reply.errors.values().next() {
                return Err(format!("update refused: code {code}: {message}"));
            }
        }
    }
    Ok(())
}

/// Accepts an insert error made only of duplicate keys (re-sent events).
fn only_duplicates(e: &mongodb::error::Error) -> Result<(), String> {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m)
            if m.write_concern_error.is_none()
                && m.write_errors
                    .iter()
                    .flatten()
                    .all(|w| w.code == DUPLICATE_KEY) =>
        {
            Ok(())
        }
        _ => Err(e.to_string()),
    }
}

/// One record at a time: decode, one `update_one` upsert, next.
async fn naive_rate(
    args: &BenchArgs,
    topics: &[String],
    config: &MongoConfig,
    count: u64,
) -> Result<f64, String> {
    let db = config.connect("bench").await.map_err(|e| e.to_string())?;
    for (collection, models) in ingest_writer::indexes() {
        mongo::ensure_indexes(&db, collection, models)
            .await
            .map_err(|e| e.to_string())?;
    }
    let (events, orders) = (
        db.collection::<Document>(EVENTS),
        db.collection::<Document>(ORDERS),
    );
    // Auto-commit, as such consumers usually run.
    let consumer = subscribed(args, topics, true)?;
    let decoder = AnyDecoder::new(Arc::new(SchemaRegistry::new(&args.registry)));
    let mut first = None;
    for seen in 0..count {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .map_err(|_| format!("naive consumer stalled at {seen} records"))?
            .map_err(|e| e.to_string())?;
        first.get_or_insert_with(Instant::now);
        let d = decoder
            .decode(m.key(), m.payload())
            .await
            .map_err(|e| e.to_string())?;
        let record = Record {
            source: Source {
                topic: Arc::from(m.topic()),
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
            },
            event: d.event,
            schema_id: d.schema_id,
            schema_version: d.schema_version,
        };
        match &record.event {
            AnyEvent::Platform(e) => {
                let doc = docs::event(&record, e, &config.retention);
                let id = doc.get("_id").cloned().unwrap_or(bson::Bson::Null);
                events
                    .update_one(doc! {"_id": id}, doc! {"$setOnInsert": doc})
                    .upsert(true)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            AnyEvent::Order(_) => {
                let statement = docs::order_update(&[&record], config.order_history);
                let (Ok(q), Ok(u)) = (statement.get_document("q"), statement.get_array("u")) else {
                    return Err("order statement without q/u".into());
                };
                let pipeline: Vec<Document> =
                    u.iter().filter_map(|s| s.as_document().cloned()).collect();
                orders
                    .update_one(q.clone(), pipeline)
                    .upsert(true)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    Ok(count as f64 / elapsed.as_secs_f64())
}
