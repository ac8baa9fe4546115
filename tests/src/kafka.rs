//! Reading a topic and a group's offsets from outside the group, as the tests' ground truth.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub use pipelinectl::topics::header;

pub fn partition_count(bootstrap: &str, topic: &str) -> i32 {
    pipelinectl::topics::partition_count(bootstrap, topic).expect("partition count")
}

/// The high watermark of each partition of `topic`.
pub fn high_watermarks(bootstrap: &str, topic: &str) -> Vec<i64> {
    pipelinectl::topics::high_watermarks(bootstrap, topic).expect("watermarks")
}

/// The offset `group` committed for each partition of `topic` (`None`: nothing committed),
/// read by a client that does not join the group.
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> Vec<Option<i64>> {
    pipelinectl::topics::committed_offsets(bootstrap, group, topic).expect("committed offsets")
}

/// Every record of `topic`, partition by partition in offset order.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    // Callable from sync and async tests alike.
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(pipelinectl::topics::read_all(&bootstrap, &topic))
    })
    .join()
    .expect("reader thread")
    .expect("read the topic")
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

/// Where a dead letter or late record came from: (topic, partition, offset) from its headers.
pub fn source_of(m: &OwnedMessage) -> (String, i32, i64) {
    pipelinectl::topics::source_of(m).expect("source topic, partition and offset headers")
}
