//! The durable log of registry changes: a single-partition, compacted Kafka topic whose keys
//! and values follow the layout of Confluent's `_schemas` topic, so the latest record per key is
//! all that needs to survive compaction.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::compat::Level;

/// One change to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A subject version, live or soft-deleted.
    Schema {
        subject: String,
        version: u32,
        id: u32,
        schema: String,
        deleted: bool,
    },
    /// A permanently deleted subject version.
    SchemaTombstone { subject: String, version: u32 },
    /// The global level (`subject: None`) or a subject's; `level: None` removes a subject's.
    Config {
        subject: Option<String>,
        level: Option<Level>,
    },
}

#[derive(Deserialize)]
struct Key {
    keytype: String,
    subject: Option<String>,
    version: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct SchemaValue {
    subject: String,
    version: u32,
    id: u32,
    schema: String,
    deleted: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigValue {
    compatibility_level: Level,
}

impl Entry {
    /// The record's key and value (`None` = tombstone).
    pub fn to_record(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            Entry::Schema {
                subject,
                version,
                id,
                schema,
                deleted,
            } => {
                let key = json!({"keytype": "SCHEMA", "subject": subject, "version": version, "magic": 1});
                let value = SchemaValue {
                    subject: subject.clone(),
                    version: *version,
                    id: *id,
                    schema: schema.clone(),
                    deleted: *deleted,
                };
                (
                    key.to_string().into_bytes(),
                    serde_json::to_vec(&value).ok(),
                )
            }
            Entry::SchemaTombstone { subject, version } => {
                let key = json!({"keytype": "SCHEMA", "subject": subject, "version": version, "magic": 1});
                (key.to_string().into_bytes(), None)
            }
            Entry::Config { subject, level } => {
                let key = json!({"keytype": "CONFIG", "subject": subject, "magic": 0});
                let value = level.map(|l| {
                    serde_json::to_vec(&ConfigValue {
                        compatibility_level: l,
                    })
                    .unwrap_or_default()
                });
                (key.to_string().into_bytes(), value)
            }
        }
    }

    /// Reads a record back. `Ok(None)` for record kinds this registry does not use.
    pub fn from_record(key: &[u8], value: Option<&[u8]>) -> Result<Option<Entry>, String> {
        let key: Key = serde_json::from_slice(key).map_err(|e| format!("bad key: {e}"))?;
        match key.keytype.as_str() {
            "SCHEMA" => match value {
                Some(v) => {
                    let v: SchemaValue =
                        serde_json::from_slice(v).map_err(|e| format!("bad schema value: {e}"))?;
                    Ok(Some(Entry::Schema {
                        subject: v.subject,
                        version: v.version,
                        id: v.id,
                        schema: v.schema,
                        deleted: v.deleted,
                    }))
                }
                None => Ok(Some(Entry::SchemaTombstone {
                    subject: key.subject.ok_or("tombstone without subject")?,
                    version: key.version.ok_or("tombstone without version")?,
                })),
            },
            "CONFIG" => {
                let level = match value {
                    Some(v) => Some(
                        serde_json::from_slice::<ConfigValue>(v)
                            .map_err(|e| format!("bad config value: {e}"))?
                            .compatibility_level,
                    ),
                    None => None,
                };
                Ok(Some(Entry::Config {
                    subject: key.subject,
                    level,
                }))
            }
            _ => Ok(None),
        }
    }
}

/// Where entries go. `Ephemeral` keeps nothing, for unit tests and throwaway registries.
pub enum Journal {
    Kafka(KafkaJournal),
    Ephemeral,
}

impl Journal {
    /// Appends entries in order and returns once every one is acknowledged.
    pub async fn append(&self, entries: &[Entry]) -> Result<(), String> {
        match self {
            Journal::Kafka(k) => k.append(entries).await,
            Journal::Ephemeral => Ok(()),
        }
    }
}

pub struct KafkaJournal {
    producer: FutureProducer,
    topic: String,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl KafkaJournal {
    /// Creates the topic if needed and replays it. Returns the journal and every entry in it.
    pub async fn open(bootstrap: &str, topic: &str) -> Result<(Self, Vec<Entry>), String> {
        ensure_topic(bootstrap, topic).await?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("max.in.flight.requests.per.connection", "1")
            .create()
            .map_err(|e| format!("cannot create the journal producer: {e}"))?;
        let bootstrap = bootstrap.to_owned();
        let topic_owned = topic.to_owned();
        let entries = tokio::task::spawn_blocking(move || replay(&bootstrap, &topic_owned))
            .await
            .map_err(|e| format!("replay task failed: {e}"))??;
        Ok((
            Self {
                producer,
                topic: topic.to_owned(),
            },
            entries,
        ))
    }

    async fn append(&self, entries: &[Entry]) -> Result<(), String> {
        for entry in entries {
            let (key, value) = entry.to_record();
            let mut record = FutureRecord::to(&self.topic).key(&key).partition(0);
            if let Some(v) = &value {
                record = record.payload(v);
            }
            self.producer
                .send(record, TIMEOUT)
                .await
                .map_err(|(e, _)| format!("cannot write to topic {}: {e}", self.topic))?;
        }
        Ok(())
    }
}

async fn ensure_topic(bootstrap: &str, topic: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| format!("cannot create an admin client: {e}"))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let results = admin
        .create_topics([&new], &AdminOptions::new().request_timeout(Some(TIMEOUT)))
        .await
        .map_err(|e| format!("cannot create topic {topic}: {e}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("cannot create topic {t}: {code}")),
        }
    }
    Ok(())
}

fn replay(bootstrap: &str, topic: &str) -> Result<Vec<Entry>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "schema-registry-replay")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| format!("cannot create the replay consumer: {e}"))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, TIMEOUT)
        .map_err(|e| format!("cannot read the watermarks of {topic}: {e}"))?;
    let mut entries = Vec::new();
    if high <= low {
        return Ok(entries);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + TIMEOUT * 4;
    loop {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "replaying {topic} did not reach offset {high} in time"
            ));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.map_err(|e| format!("cannot read {topic}: {e}"))?;
        if let Some(key) = msg.key() {
            match Entry::from_record(key, msg.payload()) {
                Ok(Some(e)) => entries.push(e),
                Ok(None) => {}
                Err(e) => tracing::warn!(offset = msg.offset(), "skipping journal record: {e}"),
            }
        }
        if msg.offset() + 1 >= high {
            return Ok(entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_records() {
        let entries = [
            Entry::Schema {
                subject: "t-value".into(),
                version: 3,
                id: 7,
                schema: "\"string\"".into(),
                deleted: true,
            },
            Entry::SchemaTombstone {
                subject: "t-value".into(),
                version: 3,
            },
            Entry::Config {
                subject: None,
                level: Some(Level::FullTransitive),
            },
            Entry::Config {
                subject: Some("t-value".into()),
                level: None,
            },
        ];
        for e in entries {
            let (k, v) = e.to_record();
            assert_eq!(Entry::from_record(&k, v.as_deref()), Ok(Some(e)));
        }
    }

    #[test]
    fn unknown_record_kinds_are_ignored() {
        let key = br#"{"keytype":"NOOP","magic":0}"#;
        assert_eq!(Entry::from_record(key, None), Ok(None));
    }
}
