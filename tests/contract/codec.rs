//! The event contract against the real broker and registry: v1 and v2 producers publishing at
//! once are both decoded into the v2 structs; every poison class gets its own error; a seeded
//! producer run is reproducible.

use std::collections::BTreeMap;
use std::sync::Arc;

use eventpipe_events::model::Severity;
use eventpipe_events::registry::SchemaRegistry;
use eventpipe_events::{DecodeError, Decoder, OrderEvent, PlatformEvent};
use eventpipe_tests::{stack, topic};
use pipelinectl::generate::{Body, Generator, Options, SchemaVersion};
use pipelinectl::produce::{self, Target};
use pipelinectl::setup;
use rdkafka::Message;

struct Topics {
    platform: String,
    orders: String,
}

async fn fresh_topics() -> Topics {
    let t = Topics {
        platform: topic(),
        orders: topic(),
    };
    setup::create_topics(
        &stack().kafka_bootstrap,
        &[t.platform.clone(), t.orders.clone()],
        3,
    )
    .await
    .expect("topics");
    t
}

async fn publish(topics: &Topics, opts: Options, count: u64) {
    let s = stack();
    let ids = setup::register_schemas(&s.schema_registry_url, &topics.platform, &topics.orders)
        .await
        .expect("schemas registered");
    let target = Target {
        bootstrap: s.kafka_bootstrap,
        platform_topic: topics.platform.clone(),
        orders_topic: topics.orders.clone(),
        rate: None,
        count,
        progress: false,
    };
    let summary = produce::run(opts, ids, &target).await.expect("produced");
    assert_eq!((summary.acked, summary.failed), (count, 0), "{summary}");
}

type Raw = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Every record of `topic`, partition by partition in offset order.
fn read_all(topic: &str) -> Vec<Raw> {
    eventpipe_tests::kafka::read_all(&stack().kafka_bootstrap, topic)
        .into_iter()
        .map(|m| (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)))
        .collect()
}

fn registry() -> Arc<SchemaRegistry> {
    Arc::new(SchemaRegistry::new(&stack().schema_registry_url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_producers_at_once_decode_into_v2_structs() {
    let topics = fresh_topics().await;
    let v1_only = Options {
        seed: 11,
        v1_share: 1.0,
        ..Options::default()
    };
    let v2_only = Options {
        seed: 12,
        v1_share: 0.0,
        ..Options::default()
    };
    tokio::join!(
        publish(&topics, v1_only.clone(), 1500),
        publish(&topics, v2_only.clone(), 1500)
    );

    // What each producer sent, as the v2 reader should see it.
    let mut expected_platform = BTreeMap::new();
    let mut expected_orders = BTreeMap::new();
    for g in Generator::new(v1_only)
        .take(1500)
        .chain(Generator::new(v2_only).take(1500))
    {
        match g.body {
            Body::Platform(mut e) => {
                if g.version == SchemaVersion::V1 {
                    e.severity = Severity::Info;
                    e.context.service_version = None;
                }
                expected_platform.insert(e.event_id.clone(), e);
            }
            Body::Order(mut o) => {
                if g.version == SchemaVersion::V1 {
                    o.refunded_minor = 0;
                    o.channel = None;
                }
                expected_orders.insert((o.order_id.clone(), o.version), o);
            }
        }
    }

    let decoder = Decoder::<PlatformEvent>::new(registry(), "tenant_id");
    let mut got_platform = BTreeMap::new();
    let mut schema_ids = BTreeMap::new();
    for (key, payload) in read_all(&topics.platform) {
        let d = decoder
            .decode(key.as_deref(), payload.as_deref())
            .await
            .expect("decodes");
        *schema_ids.entry(d.schema_id).or_insert(0) += 1;
        got_platform.insert(d.event.event_id.clone(), d.event);
    }
    assert_eq!(
        schema_ids.len(),
        2,
        "both versions on the topic: {schema_ids:?}"
    );
    assert_eq!(got_platform, expected_platform);

    let decoder = Decoder::<OrderEvent>::new(registry(), "order_id");
    let mut got_orders = BTreeMap::new();
    for (key, payload) in read_all(&topics.orders) {
        let d = decoder
            .decode(key.as_deref(), payload.as_deref())
            .await
            .expect("decodes");
        got_orders.insert((d.event.order_id.clone(), d.event.version), d.event);
    }
    assert_eq!(got_orders, expected_orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_poison_class_yields_its_own_error() {
    let topics = fresh_topics().await;
    let opts = Options {
        seed: 5,
        poison: 1.0,
        orders_share: 0.0,
        ..Options::default()
    };
    publish(&topics, opts.clone(), 60).await;
    let expected: BTreeMap<String, &'static str> = Generator::new(opts)
        .take(60)
        .map(|g| match (&g.body, g.poison) {
            (Body::Platform(e), Some(p)) => (e.tenant_id.clone() + &e.event_id, p.label()),
            other => panic!("expected poison platform events only, got {other:?}"),
        })
        .collect();
    let decoder = Decoder::<PlatformEvent>::new(registry(), "tenant_id");
    let mut seen = BTreeMap::new();
    let records = read_all(&topics.platform);
    assert_eq!(records.len(), 60);
    for (key, payload) in records {
        let err: DecodeError = decoder
            .decode(key.as_deref(), payload.as_deref())
            .await
            .expect_err("poison must not decode");
        assert_eq!(
            err.class(),
            eventpipe_events::ErrorClass::Permanent,
            "{err}"
        );
        *seen.entry(err.reason()).or_insert(0) += 1;
    }
    let mut want = BTreeMap::new();
    for label in expected.values() {
        *want.entry(*label).or_insert(0) += 1;
    }
    assert_eq!(seen, want);
    assert_eq!(seen.len(), 6, "six distinct error variants");
}

/// A record as its reader sees it: the event, or why it does not decode.
async fn view(
    platform: &Decoder<PlatformEvent>,
    orders: &Decoder<OrderEvent>,
    is_platform: bool,
    r: &Raw,
) -> Result<String, &'static str> {
    let (k, p) = (r.0.as_deref(), r.1.as_deref());
    if is_platform {
        platform
            .decode(k, p)
            .await
            .map(|d| format!("{:?}", d.event))
            .map_err(|e| e.reason())
    } else {
        orders
            .decode(k, p)
            .await
            .map(|d| format!("{:?}", d.event))
            .map_err(|e| e.reason())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_run_is_reproducible() {
    let opts = Options {
        seed: 99,
        duplicates: 0.05,
        out_of_order: 0.2,
        poison: 0.01,
        ..Options::default()
    };
    let a = fresh_topics().await;
    let b = fresh_topics().await;
    publish(&a, opts.clone(), 2000).await;
    publish(&b, opts, 2000).await;
    // Same keys and values, record for record, in the same partitions and order. Values are
    // compared decoded: Avro maps have no canonical byte order.
    let platform = Decoder::<PlatformEvent>::new(registry(), "tenant_id");
    let orders = Decoder::<OrderEvent>::new(registry(), "order_id");
    for (x, y) in [(&a.platform, &b.platform), (&a.orders, &b.orders)] {
        // Keyless records (the missing-key poison class) land on a random partition, so keyed
        // records are compared in order and keyless ones as a set.
        let (mut rx, mut ry) = (read_all(x), read_all(y));
        let keyless = |r: &mut Vec<Raw>| {
            let mut k: Vec<Raw> = r.iter().filter(|r| r.0.is_none()).cloned().collect();
            r.retain(|r| r.0.is_some());
            k.sort();
            k
        };
        assert_eq!(
            keyless(&mut rx).len(),
            keyless(&mut ry).len(),
            "keyless records"
        );
        assert!(!rx.is_empty());
        assert_eq!(rx.len(), ry.len(), "record counts of {x} and {y}");
        for (i, (rec_x, rec_y)) in rx.iter().zip(&ry).enumerate() {
            assert_eq!(rec_x.0, rec_y.0, "keys of record {i}");
            let is_platform = x == &a.platform;
            assert_eq!(
                view(&platform, &orders, is_platform, rec_x).await,
                view(&platform, &orders, is_platform, rec_y).await,
                "record {i} of {x} and {y}"
            );
        }
    }
}
