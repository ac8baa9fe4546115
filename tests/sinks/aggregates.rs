//! `aggregator` against the real broker, registry and replica set: the buckets equal a
//! straightforward computation over the same events, through replays, kill -9s and
//! redeliveries cut at other offsets; late and future events go to `<topic>.late`.

use std::collections::BTreeMap;
use std::time::Duration;

use aggregator::{AggregatorSink, EVENT_AGGREGATES, EVENT_GRANULARITIES, ORDER_AGGREGATES};
use bson::{doc, DateTime, Document};
use eventpipe_events::AnyEvent;
use eventpipe_runtime::dlq::header;
use eventpipe_runtime::sink::{Outcome, Record, Sink};
use eventpipe_stores::MongoConfig;
use eventpipe_tests::kafka::{header as header_text, read_all};
use eventpipe_tests::mongo::{db, fingerprint, int, millis};
use eventpipe_tests::pipeline::{assert_clean, workspace_binary, Fixture, Member};
use eventpipe_tests::records::{platform, record};
use eventpipe_tests::{database, stack, wait_for};
use mongodb::Database;
use pipelinectl::generate::Options;
use pipelinectl::verify::stores::{check_aggregates, check_diverted};

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

/// The buckets equal `pipelinectl verify`'s expectation from the topics: counts, times and
/// sketch registers exactly, unique users within the sketch's error.
async fn assert_buckets_as_expected(f: &Fixture, d: &Database) {
    let want = f.expected("").await;
    assert_clean(&check_aggregates(&want, d).await.expect("read the buckets"));
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
    assert_buckets_as_expected(&f, &d).await;
    // The check can fail: one count off is reported as a wrong bucket.
    d.collection::<Document>(EVENT_AGGREGATES)
        .update_one(doc! {}, doc! {"$inc": {"count": 1_i64}})
        .await
        .expect("tamper");
    let rows = check_aggregates(&f.expected("").await, &d)
        .await
        .expect("read");
    assert_eq!(
        (rows[0].wrong, rows[0].missing, rows[0].extra),
        (1, 0, 0),
        "{rows:?}"
    );
    d.collection::<Document>(EVENT_AGGREGATES)
        .update_one(doc! {}, doc! {"$inc": {"count": -1_i64}})
        .await
        .expect("restore");
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
    // Only on-time events in buckets; the late and future ones in `.late`, each once.
    let want = f.expected("").await;
    assert_eq!(want.late.len(), 600, "the expectation diverts them too");
    assert_buckets_as_expected(&f, &d).await;
    let consumer = [format!("aggregator/{}", f.group)];
    for t in f.topics() {
        let late: BTreeMap<_, _> = want.late.iter().filter(|(at, _)| at.0 == t).collect();
        let late: BTreeMap<_, _> = late.into_iter().map(|(a, r)| (a.clone(), *r)).collect();
        let row = check_diverted(
            "late",
            &stack().kafka_bootstrap,
            &format!("{t}.late"),
            &late,
            &consumer,
        )
        .await
        .expect("read the late topic");
        assert_clean(&[row]);
    }

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
    assert_buckets_as_expected(&f, &d).await;
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
