//! Reading topics and a group's offsets from outside any consumer group: what `verify` and
//! `chaos` take as the ground truth of what was published and what was consumed.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use eventpipe_runtime::dlq::header as h;

const TIMEOUT: Duration = Duration::from_secs(10);

/// (topic, partition, offset)
pub type Coord = (String, i32, i64);

fn reader(bootstrap: &str, group: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Assignment and committed-offset reads need a group id; this client never joins.
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("Kafka client for {bootstrap}: {e}"))
}

fn scratch_group() -> String {
    format!("pipelinectl-reader-{}", std::process::id())
}

fn partitions_with(c: &BaseConsumer, topic: &str) -> Result<i32, String> {
    let md = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    match md.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        _ => Err(format!("topic {topic} does not exist")),
    }
}

fn highs_with(c: &BaseConsumer, topic: &str, partitions: i32) -> Result<Vec<i64>, String> {
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, TIMEOUT)
                .map(|w| w.1)
                .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))
        })
        .collect()
}

fn committed_with(
    c: &BaseConsumer,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Option<i64>>, String> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c
        .committed_offsets(tpl, TIMEOUT)
        .map_err(|e| format!("committed offsets of {group} on {topic}: {e}"))?;
    Ok((0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect())
}

pub fn partition_count(bootstrap: &str, topic: &str) -> Result<i32, String> {
    partitions_with(&reader(bootstrap, &scratch_group())?, topic)
}

/// The high watermark of each partition of `topic`.
pub fn high_watermarks(bootstrap: &str, topic: &str) -> Result<Vec<i64>, String> {
    let c = reader(bootstrap, &scratch_group())?;
    highs_with(&c, topic, partitions_with(&c, topic)?)
}

/// The offset `group` committed for each partition of `topic` (`None`: nothing committed),
/// read by a client that does not join the group.
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> Result<Vec<Option<i64>>, String> {
    let c = reader(bootstrap, group)?;
    committed_with(&c, group, topic, partitions_with(&c, topic)?)
}

/// Records in `topic` (the sum of its high watermarks) and those of them `group` has not
/// committed (an uncommitted partition counts whole).
pub fn lag(bootstrap: &str, group: &str, topic: &str) -> Result<(i64, i64), String> {
    let c = reader(bootstrap, group)?;
    let partitions = partitions_with(&c, topic)?;
    let highs = highs_with(&c, topic, partitions)?;
    let committed = committed_with(&c, group, topic, partitions)?;
    let behind = highs
        .iter()
        .zip(committed)
        .map(|(h, c)| (h - c.unwrap_or(0)).max(0))
        .sum();
    Ok((highs.iter().sum(), behind))
}

/// Calls `f` with every record of `topic` below the high watermarks read at the start,
/// partition by partition in offset order.
pub async fn scan(
    bootstrap: &str,
    topic: &str,
    mut f: impl AsyncFnMut(OwnedMessage) -> Result<(), String>,
) -> Result<u64, String> {
    let consumer = reader(bootstrap, &scratch_group())?;
    let mut seen = 0;
    for p in 0..partitions_with(&consumer, topic)? {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, TIMEOUT)
            .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))?;
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(low))
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let mut next = low;
        while next < high {
            match consumer.poll(TIMEOUT) {
                Some(Ok(m)) if m.offset() < next => continue,
                Some(Ok(m)) => {
                    if m.offset() != next {
                        return Err(format!(
                            "{topic}/{p}: offset {} read where {next} was expected",
                            m.offset()
                        ));
                    }
                    next += 1;
                    seen += 1;
                    f(m.detach()).await?;
                }
                Some(Err(e)) => return Err(format!("reading {topic}/{p}: {e}")),
                None => {
                    return Err(format!(
                        "{topic}/{p} stalled at offset {next} of {high} for {TIMEOUT:?}"
                    ))
                }
            }
        }
    }
    Ok(seen)
}

/// Every record of `topic`, partition by partition in offset order.
pub async fn read_all(bootstrap: &str, topic: &str) -> Result<Vec<OwnedMessage>, String> {
    let mut out = Vec::new();
    scan(bootstrap, topic, async |m| {
        out.push(m);
        Ok(())
    })
    .await?;
    Ok(out)
}

/// A header of `m` as text.
pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Where a dead letter or late record came from, from its headers.
pub fn source_of(m: &OwnedMessage) -> Option<Coord> {
    Some((
        header(m, h::SOURCE_TOPIC)?,
        header(m, h::SOURCE_PARTITION)?.parse().ok()?,
        header(m, h::SOURCE_OFFSET)?.parse().ok()?,
    ))
}
