//! The broker is a real Kafka-wire broker: rdkafka produces with the idempotent producer and
//! consumes in a consumer group, commits, and a new member resumes exactly after the commit.

use std::collections::HashMap;
use std::time::Duration;

use eventpipe_tests::kafka::{committed_offsets, high_watermarks};
use eventpipe_tests::{group, stack, topic, wait_for};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

const PARTITIONS: i32 = 3;

async fn create_topic(bootstrap: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            [&NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create_topics answered");
    for r in results {
        r.expect("topic created");
    }
}

async fn produce(bootstrap: &str, topic: &str, range: std::ops::Range<u32>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("producer");
    let sends = range.map(|i| {
        let producer = producer.clone();
        let topic = topic.to_owned();
        async move {
            let key = format!("key-{}", i % 30);
            let value = i.to_string();
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("record acknowledged");
        }
    });
    futures::future::join_all(sends).await;
}

fn consumer(bootstrap: &str, group: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

/// Receives until `n` records arrived; returns (key, value, partition, offset) in arrival order.
async fn receive(c: &StreamConsumer, n: usize) -> Vec<(String, u32, i32, i64)> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .expect("a record within 60s")
            .expect("no consume error");
        let key = String::from_utf8(m.key().expect("key").to_vec()).expect("utf-8 key");
        let value: u32 = std::str::from_utf8(m.payload().expect("payload"))
            .expect("utf-8")
            .parse()
            .expect("number");
        got.push((key, value, m.partition(), m.offset()));
    }
    got
}

#[tokio::test]
async fn produce_consume_commit_and_resume_in_a_group() {
    let endpoints = stack();
    let bootstrap = endpoints.kafka_bootstrap.as_str();
    let topic = topic();
    let group = group();
    create_topic(bootstrap, &topic).await;
    produce(bootstrap, &topic, 0..300).await;

    let first = consumer(bootstrap, &group, &topic);
    let got = receive(&first, 300).await;
    let mut values: Vec<u32> = got.iter().map(|r| r.1).collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (0..300).collect::<Vec<_>>(),
        "each record exactly once"
    );
    // One key, one partition; within a partition, offsets only grow.
    let mut partition_of_key = HashMap::new();
    let mut last_offset = HashMap::new();
    for (key, _, partition, offset) in &got {
        assert_eq!(
            *partition_of_key.entry(key.clone()).or_insert(*partition),
            *partition
        );
        let prev = last_offset.insert(*partition, *offset);
        assert!(prev.is_none_or(|p| p < *offset), "offsets out of order");
    }
    assert!(last_offset.len() > 1, "records spread over partitions");

    first
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    drop(first);

    // The group's committed offsets, read by a client outside the group, are the ends of the
    // partitions.
    let committed = committed_offsets(bootstrap, &group, &topic);
    let highs = high_watermarks(bootstrap, &topic);
    assert_eq!(committed.len(), PARTITIONS as usize);
    let mut committed_total = 0;
    for (p, (offset, high)) in committed.iter().zip(&highs).enumerate() {
        match offset {
            Some(o) => {
                assert_eq!(o, high, "partition {p} committed at its end");
                committed_total += o;
            }
            None => assert_eq!(
                *high, 0,
                "partition {p} has records but nothing is committed"
            ),
        }
    }
    assert_eq!(committed_total, 300);

    // A new member of the same group starts at the committed offsets: only new records arrive.
    produce(bootstrap, &topic, 300..330).await;
    let second = consumer(bootstrap, &group, &topic);
    let got = receive(&second, 30).await;
    let mut values: Vec<u32> = got.iter().map(|r| r.1).collect();
    values.sort_unstable();
    assert_eq!(values, (300..330).collect::<Vec<_>>());
    // And nothing else is pending.
    let extra = tokio::time::timeout(Duration::from_secs(2), second.recv()).await;
    assert!(extra.is_err(), "no record beyond the committed ones");

    // The group is known to the broker.
    let groups = wait_for(
        "the group to be listed",
        Duration::from_secs(20),
        || async {
            second
                .fetch_group_list(Some(&group), Duration::from_secs(5))
                .ok()
                .filter(|l| !l.groups().is_empty())
        },
    )
    .await;
    assert_eq!(groups.groups()[0].name(), group);
}
