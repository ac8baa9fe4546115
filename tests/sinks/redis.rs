//! `cache-updater` against the real 6-node Redis Cluster: replay, stale guards, redelivered
//! counters, and where tenants' keys land. The failover test is `redis_failover.rs` (its own
//! binary, so killing a master never disturbs these).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cache_updater::{keys, read, CacheSink};
use eventpipe_events::AnyEvent;
use eventpipe_runtime::sink::{Outcome, Record, Sink};
use eventpipe_stores::RedisConfig;
use eventpipe_tests::pipeline::{assert_clean, workspace_binary, Fixture};
use eventpipe_tests::records::{order, platform, record};
use eventpipe_tests::redis::{client, master_of, masters, snapshot};
use eventpipe_tests::{stack, unique};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use pipelinectl::generate::Options;
use pipelinectl::verify::stores::check_cache;

const CAUGHT_UP: Duration = Duration::from_secs(180);

fn now_minute() -> i64 {
    let now = bson::DateTime::now().timestamp_millis();
    now - now % 60_000
}

/// A sink section for `cache-updater` with its own key prefix.
pub fn cache_sink(prefix: &str) -> String {
    let nodes: Vec<String> = stack()
        .redis_nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect();
    format!(
        "[sink]\nnodes = [{}]\n\n[sink.keys]\nprefix = \"{prefix}\"\n",
        nodes.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_equals_the_oracle_and_a_replay_changes_nothing() {
    eventpipe_tests::redis::wait_healthy().await;
    let f = Fixture::new().await;
    let prefix = format!("{}:", unique("replay"));
    let opts = Options {
        seed: 61,
        tenants: 20,
        duplicates: 0.05,
        out_of_order: 0.2,
        start_time_ms: now_minute(),
        step_ms: 7,
        ..Options::default()
    };
    let count = 10_000;
    f.produce(opts.clone(), count, None).await;
    let binary = workspace_binary("cache-updater");
    let mut first = f.spawn(&binary, "first", &cache_sink(&prefix));
    f.wait_caught_up(CAUGHT_UP).await;

    let redis = client().await;
    let want = f.expected(&prefix).await;
    assert_clean(&check_cache(&want, &redis).await.expect("read the cache"));
    let before = snapshot(&redis, &prefix).await;
    let expected_keys = want.counters.len() * 2 // hash + :applied
        + want.timelines.len()
        + want.unique_users.len()
        + want.sessions.len()
        + want.cache_orders.len();
    assert_eq!(before.len(), expected_keys, "no key more, none less");

    // The check can fail: a counter off by one, a timeline gone, a key too many.
    let (counter, timeline) = (
        want.counters.keys().next().expect("a counters key").clone(),
        want.timelines.keys().next().expect("a timeline").clone(),
    );
    let _: i64 = redis
        .hincrby(&counter, "page.view", 1)
        .await
        .expect("HINCRBY");
    let _: i64 = redis.del(&timeline).await.expect("DEL");
    let stray = format!("{prefix}{}", cache_updater::keys::order("acme", "stray"));
    let _: () = redis.hset(&stray, ("version", "1")).await.expect("HSET");
    let rows = check_cache(&want, &redis).await.expect("read the cache");
    let by_store: BTreeMap<&str, (u64, u64, u64)> = rows
        .iter()
        .map(|r| (r.store.as_str(), (r.missing, r.extra, r.wrong)))
        .collect();
    assert_eq!(by_store["redis counters"], (0, 0, 1), "{rows:?}");
    assert_eq!(by_store["redis timelines"], (1, 0, 0), "{rows:?}");
    assert_eq!(by_store["redis orders"], (0, 1, 0), "{rows:?}");
    let _: i64 = redis
        .hincrby(&counter, "page.view", -1)
        .await
        .expect("HINCRBY");
    let _: i64 = redis.del(&stray).await.expect("DEL");
    let stale = first
        .metric_sum(cache_updater::STALE_SKIPPED, &["kind=\"order\""])
        .await;
    assert!(
        stale.is_some_and(|s| s > 0.0),
        "stale order versions counted: {stale:?}"
    );

    // Every record again: nothing changes, not even an expiry.
    first.terminate(Duration::from_secs(30)).await;
    f.reset_group();
    let mut replay = f.spawn(&binary, "replay", &cache_sink(&prefix));
    f.wait_caught_up(CAUGHT_UP).await;
    // (The timeline deleted above is written again by the replay, identically.)
    let after = snapshot(&redis, &prefix).await;
    let changed: Vec<&String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        changed.is_empty(),
        "a replay changed {} keys: {:?}",
        changed.len(),
        &changed[..changed.len().min(5)]
    );
    assert_eq!(before.len(), after.len());
    let replays = replay
        .metric_sum(cache_updater::COUNTER_REPLAYS, &[])
        .await
        .unwrap_or_default();
    assert_eq!(
        replays, count as f64,
        "every replayed record was recognised"
    );
    replay.terminate(Duration::from_secs(30)).await;
}

async fn sink(prefix: &str) -> CacheSink {
    eventpipe_tests::redis::wait_healthy().await;
    let mut config = RedisConfig::new(stack().redis_nodes);
    config.keys.prefix = prefix.to_owned();
    CacheSink::connect(&config).await.expect("cache sink")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_versions_and_events_never_overwrite_newer_ones() {
    let prefix = format!("{}:", unique("stale"));
    let sink = sink(&prefix).await;
    let redis = client().await;

    for (v, offset) in [(7, 1), (4, 2)] {
        let out = sink
            .write(&[order_record("acme", v, offset)])
            .await
            .expect("write");
        assert_eq!(out, vec![Outcome::Written]);
    }
    let o = read::order(&redis, &prefix, "acme", "o1")
        .await
        .expect("order");
    assert_eq!((o["version"].as_str(), o["status"].as_str()), ("7", "s7"));

    // Sessions keep the newest event time, and the earliest start.
    let t = bson::DateTime::now().timestamp_millis();
    sink.write(&[page_view("acme", "e2", "s1", t, 10)])
        .await
        .expect("write");
    sink.write(&[page_view("acme", "e1", "s1", t - 60_000, 11)])
        .await
        .expect("write");
    let s = read::session(&redis, &prefix, "acme", "s1")
        .await
        .expect("session");
    assert_eq!(s["last_event_id"], "e2");
    assert_eq!(s["last_event_time"], t.to_string());
    assert_eq!(s["started_at"], (t - 60_000).to_string());
    let expires: i64 = redis
        .custom(
            CustomCommand::new_static("PEXPIRETIME", ClusterHash::FirstKey, false),
            vec![format!("{prefix}{}", keys::session("acme", "s1"))],
        )
        .await
        .expect("PEXPIRETIME");
    assert_eq!(
        expires,
        t + 30 * 60_000,
        "sliding expiry from the newest event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_records_are_not_counted_twice_whatever_the_batch_boundaries() {
    let prefix = format!("{}:", unique("redeliver"));
    let sink = sink(&prefix).await;
    let redis = client().await;
    let t = now_minute();
    let records: Vec<Record> = (0..10)
        .map(|i| page_view("acme", &format!("e{i}"), "s1", t + i, 100 + i))
        .collect();

    sink.write(&records[..6]).await.expect("write");
    // A crash before the commit: the records come again, cut differently.
    sink.write(&records[..3]).await.expect("write");
    sink.write(&records[3..8]).await.expect("write");
    sink.write(&records[8..]).await.expect("write");
    sink.write(&records).await.expect("write");

    let counts = read::counters(&redis, &prefix, "acme", t, t)
        .await
        .expect("counters");
    let minute = keys::minute(t).expect("minute");
    assert_eq!(counts[&minute]["page.view"], 10);
    let timeline = read::timeline(&redis, &prefix, "acme", "u1")
        .await
        .expect("timeline");
    assert_eq!(timeline.len(), 10);
    assert_eq!(timeline[0].event_id, "e9", "newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tenants_spread_over_every_master_with_all_their_keys_in_one_slot() {
    eventpipe_tests::redis::wait_healthy().await;
    let redis = client().await;
    let nodes = stack().redis_nodes;
    let masters = masters(&nodes[0]);
    assert_eq!(masters.len(), 3, "three masters: {masters:?}");
    let mut per_master: BTreeMap<String, usize> = BTreeMap::new();
    let keyslot = |key: String| {
        let redis = redis.clone();
        async move {
            redis
                .custom::<i64, _>(
                    CustomCommand::new_static("CLUSTER", ClusterHash::Random, false),
                    vec!["KEYSLOT".to_owned(), key],
                )
                .await
                .expect("CLUSTER KEYSLOT")
        }
    };
    for i in 0..1000 {
        let t = format!("tenant-{i:04}");
        let all = [
            keys::counters(&t, "202611230900"),
            keys::counters_applied(&keys::counters(&t, "202611230900")),
            keys::timeline(&t, "user-17"),
            keys::unique_users(&t, "20261123"),
            keys::session(&t, "sess-9"),
            keys::order(&t, "order-3"),
        ];
        let mut slots = BTreeSet::new();
        for k in all {
            slots.insert(keyslot(k).await);
        }
        assert_eq!(slots.len(), 1, "{t}: all keys in one slot, got {slots:?}");
        let slot = *slots.first().expect("slot") as u16;
        *per_master
            .entry(master_of(&masters, slot).addr.clone())
            .or_default() += 1;
    }
    assert_eq!(per_master.len(), 3, "{per_master:?}");
    assert!(
        per_master.values().all(|&n| n >= 250),
        "tenants spread evenly: {per_master:?}"
    );
}

fn page_view(tenant: &str, id: &str, session: &str, time: i64, offset: i64) -> Record {
    let mut e = platform(tenant, id, "page.view", "u1", time);
    e.actor.session_id = Some(session.into());
    record("platform.events", 0, offset, AnyEvent::Platform(e))
}

fn order_record(tenant: &str, version: i64, offset: i64) -> Record {
    let now = bson::DateTime::now().timestamp_millis();
    record(
        "orders.events",
        0,
        offset,
        AnyEvent::Order(order(tenant, "o1", version, now)),
    )
}
