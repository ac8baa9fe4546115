//! Reading a topic and a group's offsets from outside the group, as the tests' ground truth.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn client(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Assignment needs a group id even though this reader never joins or commits.
        .set("group.id", crate::group())
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka reader")
}

pub fn partition_count(bootstrap: &str, topic: &str) -> i32 {
    let md = client(bootstrap)
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()[0].partitions().len() as i32
}

/// The high watermark of each partition of `topic`.
pub fn high_watermarks(bootstrap: &str, topic: &str) -> Vec<i64> {
    let c = client(bootstrap);
    (0..partition_count(bootstrap, topic))
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// The offset `group` committed for each partition of `topic` (`None`: nothing committed),
/// read by a client that does not join the group.
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> Vec<Option<i64>> {
    let partitions = partition_count(bootstrap, topic);
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect()
}

/// Every record of `topic`, partition by partition in offset order.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer = client(bootstrap);
    let mut out = Vec::new();
    for p in 0..partition_count(bootstrap, topic) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
        consumer.assign(&tpl).expect("assign");
        let mut next = low;
        while next < high {
            match consumer.poll(Duration::from_secs(10)) {
                Some(Ok(m)) => {
                    assert_eq!(m.offset(), next, "offsets in order");
                    next += 1;
                    out.push(m.detach());
                }
                Some(Err(e)) => panic!("consume error: {e}"),
                None => panic!("partition {p} of {topic} stalled at {next} of {high}"),
            }
        }
    }
    out
}

/// Commits offset 0 for every partition of `topic` on behalf of `group` (as `kafka-consumer-groups
/// --reset-offsets --to-earliest` does): the group's next member starts from the beginning.
/// The group must have no members.
pub fn reset_offsets(bootstrap: &str, group: &str, topic: &str) {
    let partitions = partition_count(bootstrap, topic);
    let resetter: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offset resetter");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))
            .expect("tpl");
    }
    resetter
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .expect("offsets reset");
}

/// A header of `m` as text.
pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Where a dead letter or late record came from: (topic, partition, offset) from its headers.
pub fn source_of(m: &OwnedMessage) -> (String, i32, i64) {
    use eventpipe_runtime::dlq::header as h;
    (
        header(m, h::SOURCE_TOPIC).expect("source topic header"),
        header(m, h::SOURCE_PARTITION)
            .and_then(|v| v.parse().ok())
            .expect("source partition header"),
        header(m, h::SOURCE_OFFSET)
            .and_then(|v| v.parse().ok())
            .expect("source offset header"),
    )
}
