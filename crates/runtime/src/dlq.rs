//! The dead-letter topic: records that can never be written go to `<topic><dlq_suffix>` with
//! their original key, value and headers, plus headers saying why and where they came from, so
//! they can be inspected and replayed. Records a sink finds outside its time window go the same
//! way to `<topic><late_suffix>` (error class `late`).
//!
//! The producer is idempotent with `acks=all`; a record counts as dead-lettered (and its
//! offset may be committed) only once the broker has acknowledged it.

use std::time::Duration;

use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::config::PipelineConfig;

/// Header names on every dead letter.
pub mod header {
    pub const ERROR_CLASS: &str = "eventpipe.error.class";
    pub const ERROR_REASON: &str = "eventpipe.error.reason";
    pub const ERROR_MESSAGE: &str = "eventpipe.error.message";
    pub const SOURCE_TOPIC: &str = "eventpipe.source.topic";
    pub const SOURCE_PARTITION: &str = "eventpipe.source.partition";
    pub const SOURCE_OFFSET: &str = "eventpipe.source.offset";
    pub const SOURCE_TIMESTAMP: &str = "eventpipe.source.timestamp";
    pub const CONSUMER: &str = "eventpipe.consumer";
    pub const SCHEMA_ID: &str = "eventpipe.schema.id";
}

/// A raw record as fetched, kept until it is written or dead-lettered.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

impl RawRecord {
    /// What the record costs in memory while in flight, for backpressure.
    pub fn size(&self) -> usize {
        const OVERHEAD: usize = 96;
        OVERHEAD + self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len)
    }
}

/// Where a record that is not written goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// `<topic><dlq_suffix>`: it can never be written.
    Dead,
    /// `<topic><late_suffix>`: valid, but outside the sink's time window.
    Late,
}

impl Lane {
    /// The `eventpipe.error.class` header.
    pub fn class(self) -> &'static str {
        match self {
            Lane::Dead => "permanent",
            Lane::Late => "late",
        }
    }
}

/// Why a record is dead-lettered (or sent to the late topic).
#[derive(Debug, Clone)]
pub struct Verdict {
    pub reason: &'static str,
    pub message: String,
    pub schema_id: Option<u32>,
    pub lane: Lane,
}

/// The headers of a dead letter: the record's own first, then ours.
pub fn headers(record: &RawRecord, verdict: &Verdict, consumer: &str) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(original) = &record.headers {
        for h in original.iter() {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let partition = record.partition.to_string();
    let offset = record.offset.to_string();
    let timestamp = record.timestamp.map(|t| t.to_string());
    let schema_id = verdict.schema_id.map(|id| id.to_string());
    let ours: [(&str, Option<&str>); 9] = [
        (header::ERROR_CLASS, Some(verdict.lane.class())),
        (header::ERROR_REASON, Some(verdict.reason)),
        (header::ERROR_MESSAGE, Some(&verdict.message)),
        (header::SOURCE_TOPIC, Some(&record.topic)),
        (header::SOURCE_PARTITION, Some(&partition)),
        (header::SOURCE_OFFSET, Some(&offset)),
        (header::SOURCE_TIMESTAMP, timestamp.as_deref()),
        (header::CONSUMER, Some(consumer)),
        (header::SCHEMA_ID, schema_id.as_deref()),
    ];
    for (key, value) in ours {
        if let Some(value) = value {
            out = out.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    out
}

/// Properties the dead-letter producer shares with the consumer: how to reach and
/// authenticate to the cluster, not how to consume.
pub(crate) fn is_connection_property(key: &str) -> bool {
    [
        "security.",
        "ssl.",
        "sasl.",
        "socket.",
        "broker.",
        "client.",
        "reconnect.",
    ]
    .iter()
    .any(|p| key.starts_with(p))
        || key == "debug"
}

pub struct DeadLetters {
    producer: FutureProducer,
    suffix: String,
    late_suffix: String,
    /// `<binary>/<group>`, the `eventpipe.consumer` header.
    consumer: String,
}

impl DeadLetters {
    pub fn new<S>(binary: &str, config: &PipelineConfig<S>) -> Result<Self, String> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.kafka.bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "zstd");
        for (k, v) in &config.kafka.properties {
            if is_connection_property(k) {
                client.set(k, v);
            }
        }
        let producer = client
            .create()
            .map_err(|e| format!("cannot create the dead-letter producer: {e}"))?;
        Ok(Self {
            producer,
            suffix: config.consumer.dlq_suffix.clone(),
            late_suffix: config.consumer.late_suffix.clone(),
            consumer: format!("{binary}/{}", config.consumer.group_id),
        })
    }

    pub fn topic_for(&self, source_topic: &str) -> String {
        self.lane_topic(source_topic, Lane::Dead)
    }

    pub fn lane_topic(&self, source_topic: &str, lane: Lane) -> String {
        match lane {
            Lane::Dead => format!("{source_topic}{}", self.suffix),
            Lane::Late => format!("{source_topic}{}", self.late_suffix),
        }
    }

    /// Sends one dead letter (or late record) and waits for the broker's acknowledgement.
    pub async fn send(&self, record: &RawRecord, verdict: &Verdict) -> Result<(), String> {
        let topic = self.lane_topic(&record.topic, verdict.lane);
        let mut out: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&topic).headers(headers(record, verdict, &self.consumer));
        if let Some(k) = &record.key {
            out = out.key(k.as_slice());
        }
        if let Some(p) = &record.payload {
            out = out.payload(p.as_slice());
        }
        self.producer
            .send(out, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("dead letter to {topic} not acknowledged: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_map(h: &OwnedHeaders) -> Vec<(String, String)> {
        h.iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn dead_letter_headers_keep_the_originals_and_say_why_and_where() {
        let record = RawRecord {
            topic: "platform.events".into(),
            partition: 2,
            offset: 41,
            timestamp: Some(1_700_000_000_000),
            key: Some(b"t1".to_vec()),
            payload: Some(vec![1, 2, 3]),
            headers: Some(OwnedHeaders::new().insert(Header {
                key: "trace",
                value: Some("abc"),
            })),
        };
        let verdict = Verdict {
            reason: "malformed_body",
            message: "bad varint".into(),
            schema_id: Some(7),
            lane: Lane::Dead,
        };
        let h = header_map(&headers(&record, &verdict, "ingest-writer/g"));
        let get = |k: &str| h.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(h[0], ("trace".into(), "abc".into()));
        assert_eq!(get(header::ERROR_CLASS), Some("permanent"));
        assert_eq!(get(header::ERROR_REASON), Some("malformed_body"));
        assert_eq!(get(header::ERROR_MESSAGE), Some("bad varint"));
        assert_eq!(get(header::SOURCE_TOPIC), Some("platform.events"));
        assert_eq!(get(header::SOURCE_PARTITION), Some("2"));
        assert_eq!(get(header::SOURCE_OFFSET), Some("41"));
        assert_eq!(get(header::SOURCE_TIMESTAMP), Some("1700000000000"));
        assert_eq!(get(header::CONSUMER), Some("ingest-writer/g"));
        assert_eq!(get(header::SCHEMA_ID), Some("7"));
    }

    #[test]
    fn a_record_without_schema_id_or_timestamp_gets_no_such_headers() {
        let record = RawRecord {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            payload: None,
            headers: None,
        };
        let verdict = Verdict {
            reason: "missing_key",
            message: "no key".into(),
            schema_id: None,
            lane: Lane::Late,
        };
        let h = header_map(&headers(&record, &verdict, "c"));
        assert!(h.iter().all(|(k, _)| k != header::SCHEMA_ID));
        assert!(h.iter().all(|(k, _)| k != header::SOURCE_TIMESTAMP));
        assert!(h.contains(&(header::ERROR_CLASS.to_owned(), "late".to_owned())));
        assert_eq!(h.len(), 7);
    }

    #[test]
    fn only_connection_properties_reach_the_producer() {
        assert!(is_connection_property("security.protocol"));
        assert!(is_connection_property("sasl.mechanism"));
        assert!(is_connection_property("ssl.ca.location"));
        assert!(!is_connection_property("session.timeout.ms"));
        assert!(!is_connection_property("partition.assignment.strategy"));
    }
}
