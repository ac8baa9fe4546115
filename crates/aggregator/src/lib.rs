//! `aggregator`'s sink: event-time buckets in `event_aggregates` and `order_aggregates`.
//!
//! # Exactly-once effect
//! A batch (one partition, offset order, up to `batch.max_records` / `batch.max_age_ms`: the
//! in-memory pre-aggregation window) is folded into one upsert per bucket document. Each
//! document keeps, per source partition, the last offset folded into it (`wm`). The statement
//! carries the batch's contributions to that document as running totals by offset, and the
//! server adds only the part past the stored offset — the check and the increment are one
//! atomic single-document update, with no read before. A record redelivered after a crash, a
//! rebalance or a group reset is therefore never counted twice, whatever the batch boundaries
//! of the redelivery, and a record not yet folded is always folded. Unique users are
//! HyperLogLog registers merged by maximum and first/last event times by min/max: idempotent
//! by nature.
//!
//! # Late and early events
//! Per partition the newest event time seen so far is the watermark (kept in
//! `aggregator_partitions`, so it survives restarts). An event older than the watermark minus
//! a granularity's allowed lateness is not folded into that granularity; one that is late for
//! every granularity, or stamped beyond `future_skew_ms` ahead of the clock, is not folded at
//! all and goes to `<topic>.late`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bson::raw::cstr;
use bson::{doc, Bson, DateTime, Document, RawArrayBuf, RawDocumentBuf};
use eventpipe_events::{AnyEvent, OrderEvent, PlatformEvent};
use eventpipe_runtime::sink::{Outcome, Record, Sink, SinkError};
use eventpipe_stores::mongo::{self, Failure, MongoConfig, DUPLICATE_KEY};
use metrics::{counter, histogram};
use mongodb::{Database, IndexModel};
use sha2::{Digest, Sha256};

pub const EVENT_AGGREGATES: &str = "event_aggregates";
pub const ORDER_AGGREGATES: &str = "order_aggregates";
/// Per source partition: the event-time watermark.
pub const PARTITIONS: &str = "aggregator_partitions";

/// Metric: records folded, and records not folded into a granularity because late.
pub const FOLDED: &str = "eventpipe_aggregate_records_folded_total";
pub const LATE_BY_GRANULARITY: &str = "eventpipe_aggregate_late_total";
/// Metric: seconds from a record's Kafka timestamp to its buckets being written.
pub const FRESHNESS: &str = "eventpipe_aggregate_freshness_seconds";
/// Metric: bucket upserts sent.
pub const STATEMENTS: &str = "eventpipe_aggregate_statements_total";

/// HyperLogLog precision: 2^10 registers, standard error 1.04/√1024 ≈ 3.3 %.
pub const HLL_BITS: u32 = 10;
pub const HLL_REGISTERS: usize = 1 << HLL_BITS;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Statements per `update` command.
const UPDATE_CHUNK: usize = 500;
const UPSERT_RACE_RETRIES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub fn label(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn millis(self) -> i64 {
        match self {
            Granularity::Minute => MINUTE_MS,
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }

    /// The start of the bucket holding `ms`.
    pub fn bucket(self, ms: i64) -> i64 {
        ms - ms.rem_euclid(self.millis())
    }

    fn lateness(self, w: &eventpipe_stores::mongo::WindowsConfig) -> i64 {
        match self {
            Granularity::Minute => w.minute_lateness_ms,
            Granularity::Hour => w.hour_lateness_ms,
            Granularity::Day => w.day_lateness_ms,
        }
    }
}

pub const EVENT_GRANULARITIES: [Granularity; 3] =
    [Granularity::Minute, Granularity::Hour, Granularity::Day];
pub const ORDER_GRANULARITIES: [Granularity; 2] = [Granularity::Hour, Granularity::Day];

/// The register index and rank of `user` in a HyperLogLog of [`HLL_REGISTERS`] registers.
pub fn hll_position(user: &str) -> (usize, i32) {
    let digest = Sha256::digest(user.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    let h = u64::from_be_bytes(bytes);
    let index = (h >> (64 - HLL_BITS)) as usize;
    let rest = h << HLL_BITS;
    let rank = (rest.leading_zeros().min(64 - HLL_BITS) + 1).min(SCALE as u32) as i32;
    (index, rank)
}

/// The HyperLogLog estimate of `registers` (with the small-range correction).
pub fn hll_estimate(registers: &[i32]) -> f64 {
    let m = registers.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = registers.iter().map(|r| 2f64.powi(-r)).sum();
    let e = alpha * m * m / sum;
    let zeros = registers.iter().filter(|r| **r == 0).count() as f64;
    if e <= 2.5 * m && zeros > 0.0 {
        m * (m / zeros).ln()
    } else {
        e
    }
}

/// Register ranks are capped here so that Σ 2^(SCALE − rank) is an exact integer.
const SCALE: i32 = 50;

/// The estimate as an aggregation expression over the stored exact register sum
/// (`hll_sum` = Σ 2^(50 − rank)) and the count of empty registers (`hll_zeros`): the same
/// formula as [`hll_estimate`], in O(1) per update.
fn hll_estimate_expr() -> Document {
    let m = HLL_REGISTERS as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    doc! {"$let": {
        "vars": {
            "sum": {"$divide": [{"$toDouble": "$hll_sum"}, 2f64.powi(SCALE)]},
            "zeros": "$hll_zeros",
        },
        "in": {"$let": {
            "vars": {"e": {"$divide": [alpha * m * m, "$$sum"]}},
            "in": {"$round": [{"$cond": [
                {"$and": [{"$lte": ["$$e", 2.5 * m]}, {"$gt": ["$$zeros", 0]}]},
                {"$multiply": [m, {"$ln": {"$divide": [m, "$$zeros"]}}]},
                "$$e",
            ]}, 0]},
        }},
    }}
}

/// Pipeline expressions merging the sparse `incoming` registers (index, rank; ascending)
/// into the array at `$_h`: the new array, the change of `hll_sum`, the change of
/// `hll_zeros`. O(incoming) expressions, whatever the number of registers.
fn hll_merge(incoming: &[(usize, i32)]) -> (Bson, Bson, Bson) {
    let at = |i: usize| doc! {"$arrayElemAt": ["$_h", i as i32]};
    let mut parts: Vec<Bson> = Vec::new();
    let mut sum_deltas: Vec<Bson> = Vec::new();
    let mut zero_deltas: Vec<Bson> = Vec::new();
    let mut next = 0usize;
    for &(i, rank) in incoming {
        if i > next {
            parts.push(Bson::Document(
                doc! {"$slice": ["$_h", next as i32, (i - next) as i32]},
            ));
        }
        let new = doc! {"$max": [at(i), rank]};
        parts.push(Bson::Array(vec![Bson::Document(new.clone())]));
        sum_deltas.push(Bson::Document(doc! {"$subtract": [
            {"$toLong": {"$pow": [2_i64, {"$subtract": [SCALE, new]}]}},
            {"$toLong": {"$pow": [2_i64, {"$subtract": [SCALE, at(i)]}]}},
        ]}));
        zero_deltas.push(Bson::Document(doc! {"$cond": [{"$eq": [at(i), 0]}, -1, 0]}));
        next = i + 1;
    }
    if next < HLL_REGISTERS {
        parts.push(Bson::Document(
            doc! {"$slice": ["$_h", next as i32, (HLL_REGISTERS - next) as i32]},
        ));
    }
    (
        Bson::Document(doc! {"$concatArrays": parts}),
        Bson::Document(doc! {"$sum": sum_deltas}),
        Bson::Document(doc! {"$sum": zero_deltas}),
    )
}

/// What one batch adds to one `event_aggregates` bucket.
#[derive(Debug, Default, Clone)]
struct EventBucket {
    /// (offset, running count up to and including that offset)
    cum: Vec<(i64, i64)>,
    registers: Vec<i32>,
    first: i64,
    last: i64,
    records: Vec<usize>,
}

/// What one batch adds to one `order_aggregates` bucket, as running totals by offset.
#[derive(Debug, Default, Clone)]
struct OrderBucket {
    /// (offset, created, paid, cancelled, revenue_minor), running.
    cum: Vec<(i64, [i64; 4])>,
    records: Vec<usize>,
}

/// The contribution of an order event: created, paid, cancelled, revenue. Revenue is the
/// total when an order is paid, minus the refund when a paid order is cancelled.
pub fn order_effect(o: &OrderEvent) -> [i64; 4] {
    match o.status.as_str() {
        "created" => [1, 0, 0, 0],
        "paid" => [0, 1, 0, o.total_minor],
        "cancelled" => [0, 0, 1, -o.refunded_minor],
        _ => [0, 0, 0, 0],
    }
}

type EventKey = (String, String, String, Granularity, i64);
type OrderKey = (String, String, Granularity, i64);

/// A batch folded: bucket contributions and each record's fate.
struct Folded {
    events: BTreeMap<EventKey, EventBucket>,
    orders: BTreeMap<OrderKey, OrderBucket>,
    outcomes: Vec<Outcome>,
    late_by_granularity: HashMap<Granularity, u64>,
    watermark: i64,
}

fn fold(
    batch: &[Record],
    watermark: i64,
    now: i64,
    w: &eventpipe_stores::mongo::WindowsConfig,
) -> Folded {
    let mut f = Folded {
        events: BTreeMap::new(),
        orders: BTreeMap::new(),
        outcomes: vec![Outcome::Written; batch.len()],
        late_by_granularity: HashMap::new(),
        watermark,
    };
    for (i, r) in batch.iter().enumerate() {
        let time = match &r.event {
            AnyEvent::Platform(e) => e.event_time,
            AnyEvent::Order(o) => o.event_time,
        };
        if time > now.saturating_add(w.future_skew_ms) {
            f.outcomes[i] = Outcome::Late {
                reason: "future_event",
                detail: format!(
                    "event_time {time} is more than {} ms ahead of the clock ({now})",
                    w.future_skew_ms
                ),
            };
            continue;
        }
        let granularities: &[Granularity] = match &r.event {
            AnyEvent::Platform(_) => &EVENT_GRANULARITIES,
            AnyEvent::Order(_) => &ORDER_GRANULARITIES,
        };
        let open: Vec<Granularity> = granularities
            .iter()
            .copied()
            .filter(|g| time.saturating_add(g.lateness(w)) >= f.watermark)
            .collect();
        for g in granularities.iter().filter(|g| !open.contains(g)) {
            *f.late_by_granularity.entry(*g).or_default() += 1;
        }
        if open.is_empty() {
            f.outcomes[i] = Outcome::Late {
                reason: "late_event",
                detail: format!(
                    "event_time {time} is older than the partition's watermark {} minus the allowed lateness",
                    f.watermark
                ),
            };
            continue;
        }
        f.watermark = f.watermark.max(time);
        let offset = r.source.offset;
        match &r.event {
            AnyEvent::Platform(e) => fold_event(&mut f, e, &open, offset, i),
            AnyEvent::Order(o) => {
                let effect = order_effect(o);
                for g in &open {
                    let key = (o.tenant_id.clone(), o.currency.clone(), *g, g.bucket(time));
                    let b = f.orders.entry(key).or_default();
                    let mut run = b.cum.last().map_or([0; 4], |c| c.1);
                    for (x, d) in run.iter_mut().zip(effect) {
                        *x += d;
                    }
                    b.cum.push((offset, run));
                    b.records.push(i);
                }
            }
        }
    }
    f
}

fn fold_event(f: &mut Folded, e: &PlatformEvent, open: &[Granularity], offset: i64, i: usize) {
    let (index, rank) = hll_position(&e.actor.user_id);
    for g in open {
        let key = (
            e.tenant_id.clone(),
            e.event_type.clone(),
            e.context.environment.clone(),
            *g,
            g.bucket(e.event_time),
        );
        let b = f.events.entry(key).or_insert_with(|| EventBucket {
            registers: vec![0; HLL_REGISTERS],
            first: e.event_time,
            last: e.event_time,
            ..EventBucket::default()
        });
        let run = b.cum.last().map_or(0, |c| c.1) + 1;
        b.cum.push((offset, run));
        b.registers[index] = b.registers[index].max(rank);
        b.first = b.first.min(e.event_time);
        b.last = b.last.max(e.event_time);
        b.records.push(i);
    }
}

/// `$$wm`: the last offset from `source` folded into the document (-1: none).
fn stored_offset(source: &str) -> Bson {
    Bson::Document(
        doc! {"$ifNull": [{"$getField": {"field": source, "input": {"$ifNull": ["$wm", {}]}}}, -1]},
    )
}

/// `$$done`: the running totals of the contributions already folded (those at or below the
/// stored offset), or null.
fn done(cum: Bson) -> Document {
    doc! {"$last": {"$filter": {"input": cum, "cond": {"$lte": ["$$this.o", "$$wm"]}}}}
}

fn common_tail(source: &str, last_offset: i64) -> Document {
    doc! {
        "wm": {"$setField": {
            "field": source,
            "input": {"$ifNull": ["$wm", {}]},
            "value": {"$max": [stored_offset(source), last_offset]},
        }},
        "updated_at": {"$cond": [{"$gt": ["$_new", 0]}, "$$NOW", "$updated_at"]},
    }
}

fn event_statement(key: &EventKey, b: &EventBucket, source: &str, expires: DateTime) -> Document {
    let (tenant, event_type, environment, g, start) = key;
    let total = b.cum.last().map_or(0, |c| c.1);
    let cum: Vec<Bson> = b
        .cum
        .iter()
        .map(|(o, c)| Bson::Document(doc! {"o": o, "c": c}))
        .collect();
    let last_offset = b.cum.last().map_or(-1, |c| c.0);
    let id = doc! {
        "tenant_id": tenant, "event_type": event_type, "environment": environment,
        "granularity": g.label(), "bucket_start": DateTime::from_millis(*start),
    };
    let incoming: Vec<(usize, i32)> = b
        .registers
        .iter()
        .enumerate()
        .filter(|(_, r)| **r > 0)
        .map(|(i, r)| (i, *r))
        .collect();
    let (hll, sum_delta, zeros_delta) = hll_merge(&incoming);
    let mut tail = common_tail(source, last_offset);
    tail.extend(doc! {
        "tenant_id": tenant, "event_type": event_type, "environment": environment,
        "granularity": g.label(), "bucket_start": DateTime::from_millis(*start),
        "count": {"$add": [{"$ifNull": ["$count", 0_i64]}, "$_new"]},
        "hll": hll,
        "hll_sum": {"$add": [{"$ifNull": ["$hll_sum", (HLL_REGISTERS as i64) << SCALE]}, sum_delta]},
        "hll_zeros": {"$add": [{"$ifNull": ["$hll_zeros", HLL_REGISTERS as i32]}, zeros_delta]},
        "first_event_time": {"$min": [{"$ifNull": ["$first_event_time", DateTime::from_millis(b.first)]}, DateTime::from_millis(b.first)]},
        "last_event_time": {"$max": [{"$ifNull": ["$last_event_time", DateTime::from_millis(b.last)]}, DateTime::from_millis(b.last)]},
        "expires_at": expires,
    });
    doc! {
        "q": {"_id": id},
        "u": [
            {"$set": {
                "_new": {"$let": {
                    "vars": {"wm": stored_offset(source)},
                    "in": {"$subtract": [total, {"$ifNull": [{"$getField": {"field": "c", "input": done(Bson::Array(cum))}}, 0_i64]}]},
                }},
                "_h": {"$cond": [
                    {"$isArray": "$hll"},
                    "$hll",
                    {"$map": {"input": {"$range": [0, HLL_REGISTERS as i32]}, "in": 0}},
                ]},
            }},
            {"$set": tail},
            {"$set": {"unique_users": hll_estimate_expr()}},
            {"$unset": ["_new", "_h"]},
        ],
        "upsert": true,
    }
}

const ORDER_FIELDS: [&str; 4] = ["created", "paid", "cancelled", "revenue_minor"];

fn order_statement(key: &OrderKey, b: &OrderBucket, source: &str, expires: DateTime) -> Document {
    let (tenant, currency, g, start) = key;
    let total = b.cum.last().map_or([0; 4], |c| c.1);
    let cum: Vec<Bson> = b
        .cum
        .iter()
        .map(|(o, c)| {
            let mut d = doc! {"o": o};
            for (f, v) in ORDER_FIELDS.iter().zip(c) {
                d.insert(*f, v);
            }
            Bson::Document(d)
        })
        .collect();
    let last_offset = b.cum.last().map_or(-1, |c| c.0);
    let id = doc! {
        "tenant_id": tenant, "currency": currency, "granularity": g.label(),
        "bucket_start": DateTime::from_millis(*start),
    };
    // _new: {created, paid, cancelled, revenue_minor, n} not yet folded.
    let mut new = Document::new();
    for (f, t) in ORDER_FIELDS.iter().zip(total) {
        new.insert(
            *f,
            doc! {"$subtract": [t, {"$ifNull": [{"$getField": {"field": *f, "input": "$$done"}}, 0_i64]}]},
        );
    }
    new.insert(
        "n",
        doc! {"$size": {"$filter": {"input": Bson::Array(cum.clone()), "cond": {"$gt": ["$$this.o", "$$wm"]}}}},
    );
    let mut tail = common_tail(source, last_offset);
    for f in ORDER_FIELDS {
        tail.insert(
            f,
            doc! {"$add": [{"$ifNull": [format!("${f}"), 0_i64]}, format!("$_d.{f}")]},
        );
    }
    tail.extend(doc! {
        "tenant_id": tenant, "currency": currency, "granularity": g.label(),
        "bucket_start": DateTime::from_millis(*start), "expires_at": expires,
    });
    doc! {
        "q": {"_id": id},
        "u": [
            {"$set": {"_d": {"$let": {
                "vars": {"wm": stored_offset(source)},
                "in": {"$let": {"vars": {"done": done(Bson::Array(cum))}, "in": new}},
            }}}},
            {"$set": {"_new": "$_d.n"}},
            {"$set": tail},
            {"$unset": ["_new", "_d"]},
        ],
        "upsert": true,
    }
}

/// The indexes the analysts' queries need, by collection.
pub fn indexes() -> Vec<(&'static str, Vec<IndexModel>)> {
    let named = mongo::index;
    let ttl = mongo::ttl_index;
    vec![
        (
            EVENT_AGGREGATES,
            vec![
                // tenant T, hour buckets, last 7 days, by event_type
                named(
                    doc! {"tenant_id": 1, "granularity": 1, "bucket_start": -1, "event_type": 1},
                    "tenant_granularity_bucket_type",
                ),
                // top tenants by count for a day
                named(
                    doc! {"granularity": 1, "bucket_start": 1, "tenant_id": 1},
                    "granularity_bucket_tenant",
                ),
                ttl(),
            ],
        ),
        (
            ORDER_AGGREGATES,
            vec![
                named(
                    doc! {"tenant_id": 1, "granularity": 1, "bucket_start": -1, "currency": 1},
                    "tenant_granularity_bucket_currency",
                ),
                ttl(),
            ],
        ),
    ]
}

pub struct AggregatorSink {
    db: Database,
    config: MongoConfig,
    write_concern: Document,
    /// Per source partition (`topic:partition`): the event-time watermark.
    watermarks: Mutex<HashMap<String, i64>>,
    /// Bucket upserts sent, for the benchmark.
    pub statements: AtomicU64,
}

impl AggregatorSink {
    pub async fn connect(config: &MongoConfig) -> Result<Self, SinkError> {
        let db = config.connect("aggregator").await?;
        for (collection, models) in indexes() {
            mongo::ensure_indexes(&db, collection, models).await?;
        }
        Ok(Self {
            write_concern: config.write_concern_doc(),
            config: config.clone(),
            db,
            watermarks: Mutex::new(HashMap::new()),
            statements: AtomicU64::new(0),
        })
    }

    async fn watermark(&self, source: &str) -> Result<i64, SinkError> {
        if let Some(w) = self.lock().get(source) {
            return Ok(*w);
        }
        let stored = self
            .db
            .collection::<Document>(PARTITIONS)
            .find_one(doc! {"_id": source})
            .await
            .map_err(|e| mongo::classify(&e).into_sink_error())?
            .and_then(|d| {
                d.get_datetime("watermark")
                    .ok()
                    .map(|t| t.timestamp_millis())
            })
            .unwrap_or(i64::MIN);
        Ok(*self.lock().entry(source.to_owned()).or_insert(stored))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.watermarks.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn save_watermark(&self, source: &str, watermark: i64) -> Result<(), SinkError> {
        if watermark == i64::MIN {
            return Ok(());
        }
        self.db
            .collection::<Document>(PARTITIONS)
            .update_one(
                doc! {"_id": source},
                doc! {"$max": {"watermark": DateTime::from_millis(watermark)}},
            )
            .upsert(true)
            .await
            .map_err(|e| mongo::classify(&e).into_sink_error())?;
        let mut w = self.lock();
        let slot = w.entry(source.to_owned()).or_insert(watermark);
        *slot = (*slot).max(watermark);
        Ok(())
    }

    /// Sends `statements` to `collection` in unordered `update` commands; statements that lost
    /// an upsert race on a new bucket are sent again (the second time the bucket exists).
    async fn update(
        &self,
        collection: &str,
        statements: Vec<RawDocumentBuf>,
    ) -> Result<(), SinkError> {
        let head = encode(doc! {
            "update": collection,
            "ordered": false,
            "writeConcern": self.write_concern.clone(),
        })?;
        let mut pending = statements;
        for _ in 0..=UPSERT_RACE_RETRIES {
            if pending.is_empty() {
                return Ok(());
            }
            let mut raced = Vec::new();
            for part in pending.chunks(UPDATE_CHUNK) {
                self.statements
                    .fetch_add(part.len() as u64, Ordering::Relaxed);
                counter!(STATEMENTS, "collection" => collection.to_owned())
                    .increment(part.len() as u64);
                let mut command = head.clone();
                command.append(cstr!("updates"), part.iter().collect::<RawArrayBuf>());
                let reply = mongo::run_raw_write(&self.db, command)
                    .await
                    .map_err(|f| match f {
                        // A refused bucket update is a bug here, not bad input: retrying keeps
                        // the partition waiting visibly instead of losing counts.
                        Failure::Permanent { code, detail } => SinkError::transient(
                            "mongodb_refused",
                            format!("code {code}: {detail}"),
                        ),
                        other => other.into_sink_error(),
                    })?;
                for (i, (code, message)) in reply.errors {
                    if code == DUPLICATE_KEY {
                        raced.push(part[i].clone());
                    } else {
                        return Err(SinkError::transient(
                            "mongodb_statement_failed",
                            format!("{collection}: code {code}: {message}"),
                        ));
                    }
                }
            }
            pending = raced;
        }
        Err(SinkError::transient(
            "mongodb_duplicate_key_race",
            "concurrent upserts of the same bucket keep colliding",
        ))
    }
}

/// A statement as BSON bytes. The pipeline-update trees are many times larger in memory than
/// encoded (an HLL merge alone is hundreds of small documents), so each is encoded as soon as it
/// is built and a batch's statements are held as bytes.
fn encode(statement: Document) -> Result<RawDocumentBuf, SinkError> {
    RawDocumentBuf::try_from(&statement)
        .map_err(|e| SinkError::transient("bson_encode", format!("encoding a statement: {e}")))
}

impl Sink for AggregatorSink {
    const DIVERTS_LATE: bool = true;

    async fn write(&self, batch: &[Record]) -> Result<Vec<Outcome>, SinkError> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let source = format!("{}:{}", first.source.topic, first.source.partition);
        let watermark = self.watermark(&source).await?;
        let now = DateTime::now().timestamp_millis();
        let folded = fold(batch, watermark, now, &self.config.windows);
        let days = i64::from(self.config.retention.aggregates_days) * DAY_MS;
        let expires = |start: i64| DateTime::from_millis(start.saturating_add(days));

        let events = folded
            .events
            .iter()
            .map(|(k, b)| encode(event_statement(k, b, &source, expires(k.4))))
            .collect::<Result<Vec<_>, _>>()?;
        let orders = folded
            .orders
            .iter()
            .map(|(k, b)| encode(order_statement(k, b, &source, expires(k.3))))
            .collect::<Result<Vec<_>, _>>()?;
        self.update(EVENT_AGGREGATES, events).await?;
        self.update(ORDER_AGGREGATES, orders).await?;
        self.save_watermark(&source, folded.watermark).await?;

        let folded_records = folded
            .outcomes
            .iter()
            .filter(|o| **o == Outcome::Written)
            .count();
        counter!(FOLDED).increment(folded_records as u64);
        for (g, n) in &folded.late_by_granularity {
            counter!(LATE_BY_GRANULARITY, "granularity" => g.label()).increment(*n);
        }
        if let Some(oldest) = batch.iter().filter_map(|r| r.source.timestamp).min() {
            histogram!(FRESHNESS).record((now - oldest).max(0) as f64 / 1000.0);
        }
        Ok(folded.outcomes)
    }

    async fn check(&self) -> Result<(), SinkError> {
        mongo::ping(&self.db).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hll_estimates_small_and_large_sets() {
        for n in [1usize, 10, 100, 1_000, 20_000] {
            let mut regs = vec![0; HLL_REGISTERS];
            for u in 0..n {
                let (i, r) = hll_position(&format!("user-{u}"));
                regs[i] = regs[i].max(r);
            }
            let e = hll_estimate(&regs);
            let error = (e - n as f64).abs() / n as f64;
            assert!(error < 0.1, "{n}: estimated {e}");
        }
    }

    #[test]
    fn buckets_and_effects() {
        let t = 1_767_225_600_000 + 3_723_456; // 2026-01-01T01:02:03.456Z
        assert_eq!(Granularity::Minute.bucket(t), 1_767_225_600_000 + 3_720_000);
        assert_eq!(Granularity::Hour.bucket(t), 1_767_225_600_000 + 3_600_000);
        assert_eq!(Granularity::Day.bucket(t), 1_767_225_600_000);
        let mut o = OrderEvent {
            tenant_id: "t".into(),
            order_id: "o".into(),
            version: 1,
            event_type: "order.created".into(),
            event_time: t,
            status: "created".into(),
            customer_id: "c".into(),
            currency: "EUR".into(),
            total_minor: 500,
            items: vec![],
            refunded_minor: 0,
            channel: None,
        };
        assert_eq!(order_effect(&o), [1, 0, 0, 0]);
        o.status = "paid".into();
        assert_eq!(order_effect(&o), [0, 1, 0, 500]);
        o.status = "cancelled".into();
        o.refunded_minor = 500;
        assert_eq!(order_effect(&o), [0, 0, 1, -500]);
    }
}
