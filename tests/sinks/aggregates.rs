//! `aggregator` against the real broker, registry and replica set: the buckets equal a
//! straightforward computation over the same events, through replays, kill -9s and
//! redeliveries cut at other offsets; late and future events go to `<topic>.late`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aggregator::{
    hll_estimate, hll_position, order_effect, AggregatorSink, Granularity, EVENT_AGGREGATES,
    EVENT_GRANULARITIES, HLL_REGISTERS, ORDER_AGGREGATES, ORDER_GRANULARITIES,
};
use bson::{doc, DateTime, Document};
use eventpipe_events::AnyEvent;
use eventpipe_runtime::dlq::header;
use eventpipe_runtime::sink::{Outcome, Record, Sink};
use eventpipe_stores::MongoConfig;
use eventpipe_tests::kafka::{header as header_text, read_all};
use eventpipe_tests::mongo::{all, db, fingerprint, int, millis, text};
use eventpipe_tests::pipeline::{workspace_binary, Fixture, Member};
use eventpipe_tests::records::{platform, record};
use eventpipe_tests::{database, stack, wait_for};
use mongodb::Database;
use pipelinectl::generate::{Body, Generator, Options, SchemaVersion};

const CAUGHT_UP: Duration = Duration::from_secs(300);

fn now_minute() -> i64 {
    let now = DateTime::now().timestamp_millis();
    now - now % 60_000
}

fn stream(seed: u64, start_time_ms: i64) -> Options {
    Options {
        seed,
        tenants: 20,
        duplicates: 0.03,
        out_of_order: 0.1,
        start_time_ms,
        step_ms: 3,
        ..Options::default()
    }
}

/// (tenant, event_type, environment, granularity, bucket_start ms)
type EventKey = (String, String, String, &'static str, i64);
/// (tenant, currency, granularity, bucket_start ms)
type OrderKey = (String, String, &'static str, i64);

/// count, users, first and last event time, sketch registers
type EventBucket = (i64, BTreeSet<String>, i64, i64, Vec<i32>);

/// The buckets a stream should produce: every record counted once; unique users as the
/// exact set and as the registers the sketch must hold.
#[derive(Default)]
struct Oracle {
    events: BTreeMap<EventKey, EventBucket>,
    orders: BTreeMap<OrderKey, [i64; 4]>,
}

impl Oracle {
    fn new(opts: &Options, count: u64) -> Self {
        let mut o = Oracle::default();
        for g in Generator::new(opts.clone()).take(count as usize) {
            match g.body {
                Body::Platform(e) => {
                    for gr in EVENT_GRANULARITIES {
                        let key = (
                            e.tenant_id.clone(),
                            e.event_type.clone(),
                            e.context.environment.clone(),
                            gr.label(),
                            gr.bucket(e.event_time),
                        );
                        let b = o.events.entry(key).or_insert((
                            0,
                            BTreeSet::new(),
                            e.event_time,
                            e.event_time,
                            vec![0; HLL_REGISTERS],
                        ));
                        b.0 += 1;
                        b.1.insert(e.actor.user_id.clone());
                        let (i, rank) = hll_position(&e.actor.user_id);
                        b.4[i] = b.4[i].max(rank);
                        b.2 = b.2.min(e.event_time);
                        b.3 = b.3.max(e.event_time);
                    }
                }
                Body::Order(mut e) => {
                    // A v1 order event carries no refund: consumers read refunded_minor = 0.
                    if g.version == SchemaVersion::V1 {
                        e.refunded_minor = 0;
                    }
                    for gr in ORDER_GRANULARITIES {
                        let key = (
                            e.tenant_id.clone(),
                            e.currency.clone(),
                            gr.label(),
                            gr.bucket(e.event_time),
                        );
                        let b = o.orders.entry(key).or_default();
                        for (x, d) in b.iter_mut().zip(order_effect(&e)) {
                            *x += d;
                        }
                    }
                }
            }
        }
        o
    }

    /// Differences between the oracle and the stored buckets: counts, times and sketch
    /// registers exactly; the estimate from those registers, and within the sketch's error
    /// of the exact number of users.
    async fn diff(&self, db: &Database) -> Vec<String> {
        let mut out = Vec::new();
        let events = all(db, EVENT_AGGREGATES, doc! {}).await;
        if events.len() != self.events.len() {
            out.push(format!(
                "{} event buckets stored, {} expected",
                events.len(),
                self.events.len()
            ));
        }
        for d in &events {
            let key: EventKey = (
                text(d, "tenant_id").to_owned(),
                text(d, "event_type").to_owned(),
                text(d, "environment").to_owned(),
                granularity(text(d, "granularity")),
                millis(d, "bucket_start"),
            );
            let Some((count, users, first, last, registers)) = self.events.get(&key) else {
                out.push(format!("unexpected bucket {key:?}"));
                continue;
            };
            let got = (
                int(d, "count"),
                millis(d, "first_event_time"),
                millis(d, "last_event_time"),
            );
            if got != (*count, *first, *last) {
                out.push(format!("{key:?}: {got:?} != {:?}", (count, first, last)));
            }
            let stored: Vec<i32> = d
                .get_array("hll")
                .unwrap_or_else(|e| panic!("hll of {d}: {e}"))
                .iter()
                .map(|r| r.as_i32().expect("register"))
                .collect();
            if &stored != registers {
                out.push(format!("{key:?}: sketch registers differ"));
            }
            let estimate = int(d, "unique_users") as f64;
            if estimate != hll_estimate(registers).round() {
                out.push(format!(
                    "{key:?}: unique users {estimate} is not the registers' estimate"
                ));
            }
            // Users colliding in a register are not told apart; 16 users in 1,024 registers
            // can lose a few, large sets stay within three standard errors.
            let exact = users.len() as f64;
            if (estimate - exact).abs() > (exact * 0.1).max(5.0) {
                out.push(format!("{key:?}: unique users {estimate} vs {exact}"));
            }
        }
        let orders = all(db, ORDER_AGGREGATES, doc! {}).await;
        if orders.len() != self.orders.len() {
            out.push(format!(
                "{} order buckets stored, {} expected",
                orders.len(),
                self.orders.len()
            ));
        }
        for d in &orders {
            let key: OrderKey = (
                text(d, "tenant_id").to_owned(),
                text(d, "currency").to_owned(),
                granularity(text(d, "granularity")),
                millis(d, "bucket_start"),
            );
            let got = [
                int(d, "created"),
                int(d, "paid"),
                int(d, "cancelled"),
                int(d, "revenue_minor"),
            ];
            if self.orders.get(&key) != Some(&got) {
                out.push(format!("{key:?}: {got:?} != {:?}", self.orders.get(&key)));
            }
        }
        out
    }
}

fn granularity(label: &str) -> &'static str {
    [Granularity::Minute, Granularity::Hour, Granularity::Day]
        .into_iter()
        .map(Granularity::label)
        .find(|l| *l == label)
        .unwrap_or_else(|| panic!("granularity {label}"))
}

fn aggregator(f: &Fixture, name: &str) -> Member {
    f.spawn(&workspace_binary("aggregator"), name, &f.mongo_sink())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_equal_the_oracle_and_a_replay_changes_nothing() {
    let f = Fixture::new().await;
    let opts = stream(81, now_minute());
    let count = 10_000;
    f.produce(opts.clone(), count, None).await;
    let mut first = aggregator(&f, "first");
    f.wait_caught_up(CAUGHT_UP).await;
    let d = db(&f.database).await;
    let diff = Oracle::new(&opts, count).diff(&d).await;
    assert!(
        diff.is_empty(),
        "{} differences: {:#?}",
        diff.len(),
        &diff[..diff.len().min(10)]
    );
    let before = (
        fingerprint(&d, EVENT_AGGREGATES).await,
        fingerprint(&d, ORDER_AGGREGATES).await,
    );

    first.terminate(Duration::from_secs(30)).await;
    f.reset_group();
    let mut replay = aggregator(&f, "replay");
    f.wait_caught_up(CAUGHT_UP).await;
    replay.terminate(Duration::from_secs(30)).await;
    let after = (
        fingerprint(&d, EVENT_AGGREGATES).await,
        fingerprint(&d, ORDER_AGGREGATES).await,
    );
    assert_eq!(before, after, "a replay changed the aggregates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_future_events_go_to_the_late_topic_not_into_buckets() {
    let f = Fixture::new().await;
    let now = now_minute();
    let on_time = stream(82, now);
    f.produce(on_time.clone(), 3_000, None).await;
    // Three days old (beyond the 2-day lateness of day buckets), then an hour ahead (beyond the
    // 5-minute skew).
    f.produce(stream(83, now - 3 * 86_400_000), 400, None).await;
    f.produce(stream(84, now + 3_600_000), 200, None).await;
    let mut member = aggregator(&f, "a");
    f.wait_caught_up(CAUGHT_UP).await;
    let late_metric = member
        .metric_sum("eventpipe_records_late_total", &["reason=\"late_event\""])
        .await;
    let future_metric = member
        .metric_sum("eventpipe_records_late_total", &["reason=\"future_event\""])
        .await;
    member.terminate(Duration::from_secs(30)).await;

    let d = db(&f.database).await;
    let diff = Oracle::new(&on_time, 3_000).diff(&d).await;
    assert!(
        diff.is_empty(),
        "only on-time events in buckets: {:#?}",
        &diff[..diff.len().min(10)]
    );

    let bootstrap = stack().kafka_bootstrap;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for t in f.topics() {
        for m in read_all(&bootstrap, &format!("{t}.late")) {
            let reason = header_text(&m, header::ERROR_REASON).expect("reason header");
            *reasons.entry(reason).or_default() += 1;
        }
    }
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("future_event".to_owned(), 200),
            ("late_event".to_owned(), 400)
        ])
    );
    assert_eq!((late_metric, future_metric), (Some(400.0), Some(200.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kill_9s_while_folding_200k_events_leave_exact_counts() {
    let f = Fixture::new().await;
    let count = 200_000;
    // 200k records 3 ms apart span ten minutes: they end now, none is from the future.
    let opts = stream(85, now_minute() - count as i64 * 3);
    f.produce(opts.clone(), count, None).await;
    let total: i64 = f.all_offsets().len() as i64;
    let committed = || -> i64 { f.committed().values().map(|c| c.unwrap_or(0)).sum() };
    // Ten kill points spread over the stream, jittered by the clock.
    let jitter = DateTime::now().timestamp_millis() % 1000;
    let mut member = aggregator(&f, "a0");
    for k in 1..=10 {
        let at = total * k / 12 + jitter * total / 40_000;
        wait_for(
            &format!("progress past {at} records"),
            CAUGHT_UP,
            || async { (committed() >= at).then_some(()) },
        )
        .await;
        member.kill9();
        member = aggregator(&f, &format!("a{k}"));
    }
    f.wait_caught_up(CAUGHT_UP).await;
    member.terminate(Duration::from_secs(30)).await;
    let d = db(&f.database).await;
    let diff = Oracle::new(&opts, count).diff(&d).await;
    assert!(
        diff.is_empty(),
        "{} differences after 10 kills: {:#?}",
        diff.len(),
        &diff[..diff.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_cut_at_other_offsets_are_not_counted_twice() {
    let name = database();
    let sink = AggregatorSink::connect(&MongoConfig::new(stack().mongodb_uri, &name))
        .await
        .expect("sink");
    let t = now_minute();
    let records: Vec<Record> = (0..10)
        .map(|i| view(&format!("e{i}"), 100 + i, t + i))
        .collect();
    for range in [0..6, 0..3, 3..8, 8..10, 0..10] {
        let out = sink.write(&records[range]).await.expect("write");
        assert!(out.iter().all(|o| *o == Outcome::Written), "{out:?}");
    }
    let d = db(&name).await;
    for gr in EVENT_GRANULARITIES {
        let doc = d
            .collection::<Document>(EVENT_AGGREGATES)
            .find_one(doc! {"granularity": gr.label()})
            .await
            .expect("find")
            .expect("bucket");
        assert_eq!(int(&doc, "count"), 10, "{}", gr.label());
        assert_eq!(int(&doc, "unique_users"), 3);
        assert_eq!(millis(&doc, "first_event_time"), t);
        assert_eq!(millis(&doc, "last_event_time"), t + 9);
    }
}

/// A page view by one of three users, on partition 4.
fn view(id: &str, offset: i64, time: i64) -> Record {
    let user = format!("u{}", offset % 3);
    let e = platform("acme", id, "page.view", &user, time);
    record("platform.events", 4, offset, AnyEvent::Platform(e))
}
