//! `audit-writer`'s sink and the audit-chain verifier.
//!
//! # The chain
//! Every audit event becomes one document of `audit_logs`, never updated. Per tenant the
//! documents form a hash chain:
//!
//! - `content_hash` = SHA-256 of the [canonical encoding](canonical) of the event's content;
//! - `seq` = 1, 2, 3 … per tenant (unique index `{tenant_id, seq}`: a chain cannot fork);
//! - `prev_hash` = the `hash` of entry `seq - 1` (64 zeros for the first);
//! - `hash` = SHA-256 of `prev_hash ":" seq ":" content_hash`.
//!
//! The tenant's head (`audit_chain`: last `seq` and `hash`) moves in the same transaction as
//! the inserts, written with `w: majority, j: true`. [`verify`] recomputes every hash, so an
//! altered field, a removed entry or two swapped entries are found and named.
//!
//! # Idempotency
//! `_id` is `{tenant_id, event_id}`. An event whose `_id` is already stored with the same
//! content hash is a redelivery: nothing is written. The same `_id` with a different content
//! hash is a conflict: the record is dead-lettered and logged at ERROR; the stored entry
//! stays as it is.

use std::collections::HashMap;

use bson::{doc, Bson, DateTime, Document};
use eventpipe_events::{AnyEvent, PlatformEvent};
use eventpipe_runtime::sink::{Outcome, Record, Sink, SinkError};
use eventpipe_stores::docs::event_body;
use eventpipe_stores::mongo::{self, Failure, MongoConfig};
use metrics::counter;
use mongodb::options::{Acknowledgment, IndexOptions, ReadConcern, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use sha2::{Digest, Sha256};

mod verify;

pub use verify::{tenants, verify, Problem, Report};

pub const AUDIT_LOGS: &str = "audit_logs";
/// One document per tenant: the last `seq` and `hash` of its chain.
pub const AUDIT_CHAIN: &str = "audit_chain";
/// `prev_hash` of a tenant's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Metric: audit entries by result (`appended`, `duplicate`, `conflict`).
pub const AUDIT_ENTRIES: &str = "eventpipe_audit_entries_total";

const DAY_MS: i64 = 86_400_000;

/// The fields of an audit document that are the event's content (hashed).
pub const CONTENT_FIELDS: &[&str] = &[
    "tenant_id",
    "event_id",
    "event_type",
    "event_time",
    "actor",
    "context",
    "payload",
    "compliance_required",
    "severity",
];

/// The canonical encoding the content hash is taken over: the BSON encoding of the content
/// fields ([`CONTENT_FIELDS`]), with the keys of every (sub)document sorted by byte order.
/// Stored documents re-encode to the same bytes, so [`verify`] can recompute it.
pub fn canonical(content: &Document) -> Vec<u8> {
    let mut picked = Document::new();
    for f in CONTENT_FIELDS {
        if let Some(v) = content.get(*f) {
            picked.insert(*f, v.clone());
        }
    }
    let sorted = sort_keys(&Bson::Document(picked));
    match sorted {
        Bson::Document(d) => bson::serialize_to_vec(&d).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn sort_keys(v: &Bson) -> Bson {
    match v {
        Bson::Document(d) => {
            let mut keys: Vec<&String> = d.keys().collect();
            keys.sort();
            Bson::Document(
                keys.into_iter()
                    .map(|k| (k.clone(), sort_keys(d.get(k).unwrap_or(&Bson::Null))))
                    .collect(),
            )
        }
        Bson::Array(a) => Bson::Array(a.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `hash` of an entry.
pub fn chain_hash(prev_hash: &str, seq: i64, content_hash: &str) -> String {
    sha256_hex(format!("{prev_hash}:{seq}:{content_hash}").as_bytes())
}

/// The `$jsonSchema` validator of `audit_logs` (strict: no other fields, every field typed).
pub fn validator() -> Document {
    let hash = doc! {"bsonType": "string", "pattern": "^[0-9a-f]{64}$"};
    let opt_string = doc! {"bsonType": ["string", "null"]};
    doc! {"$jsonSchema": {
        "bsonType": "object",
        "additionalProperties": false,
        "required": [
            "_id", "tenant_id", "event_id", "event_type", "event_time", "actor", "context",
            "payload", "compliance_required", "severity", "schema_version", "seq",
            "content_hash", "prev_hash", "hash", "prev_expires_at", "expires_at", "source",
        ],
        "properties": {
            "_id": {
                "bsonType": "object",
                "additionalProperties": false,
                "required": ["tenant_id", "event_id"],
                "properties": {
                    "tenant_id": {"bsonType": "string", "minLength": 1},
                    "event_id": {"bsonType": "string", "minLength": 1},
                },
            },
            "tenant_id": {"bsonType": "string", "minLength": 1},
            "event_id": {"bsonType": "string", "minLength": 1},
            "event_type": {"bsonType": "string", "minLength": 1},
            "event_time": {"bsonType": "date"},
            "actor": {
                "bsonType": "object",
                "additionalProperties": false,
                "required": ["user_id", "session_id", "ip_address", "user_agent"],
                "properties": {
                    "user_id": {"bsonType": "string"},
                    "session_id": opt_string.clone(),
                    "ip_address": opt_string.clone(),
                    "user_agent": opt_string.clone(),
                },
            },
            "context": {
                "bsonType": "object",
                "additionalProperties": false,
                "required": ["request_id", "trace_id", "environment", "service", "service_version"],
                "properties": {
                    "request_id": opt_string.clone(),
                    "trace_id": opt_string.clone(),
                    "environment": {"bsonType": "string"},
                    "service": {"bsonType": "string"},
                    "service_version": opt_string,
                },
            },
            "payload": {"bsonType": "object", "additionalProperties": {"bsonType": "string"}},
            "compliance_required": {"bsonType": "bool"},
            "severity": {"enum": ["DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"]},
            "schema_version": {"bsonType": ["int", "null"]},
            "seq": {"bsonType": "long", "minimum": 1},
            "content_hash": hash.clone(),
            "prev_hash": hash.clone(),
            "hash": hash,
            "prev_expires_at": {"bsonType": ["date", "null"]},
            "expires_at": {"bsonType": "date"},
            "source": {
                "bsonType": "object",
                "additionalProperties": false,
                "required": ["topic", "partition", "offset"],
                "properties": {
                    "topic": {"bsonType": "string"},
                    "partition": {"bsonType": "int"},
                    "offset": {"bsonType": "long"},
                },
            },
        },
    }}
}

/// Creates `audit_logs` with its validator (or puts the validator on an existing one) and the
/// indexes. Idempotent.
pub async fn prepare(db: &Database) -> Result<(), SinkError> {
    let create = doc! {
        "create": AUDIT_LOGS,
        "validator": validator(),
        "validationLevel": "strict",
        "validationAction": "error",
    };
    match db.run_command(create).await {
        Ok(_) => {}
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 48) =>
        {
            db.run_command(doc! {
                "collMod": AUDIT_LOGS,
                "validator": validator(),
                "validationLevel": "strict",
                "validationAction": "error",
            })
            .await
            .map_err(|e| mongo::classify(&e).into_sink_error())?;
        }
        Err(e) => return Err(mongo::classify(&e).into_sink_error()),
    }
    let opts = |name: &str| IndexOptions::builder().name(name.to_owned());
    mongo::ensure_indexes(
        db,
        AUDIT_LOGS,
        vec![
            IndexModel::builder()
                .keys(doc! {"tenant_id": 1, "seq": 1})
                .options(opts("tenant_seq").unique(true).build())
                .build(),
            mongo::index(doc! {"tenant_id": 1, "event_time": -1}, "tenant_time"),
            mongo::ttl_index(),
        ],
    )
    .await
}

pub struct AuditSink {
    client: Client,
    db: Database,
    logs: Collection<Document>,
    heads: Collection<Document>,
    audit_days: u32,
}

/// A tenant's chain head.
#[derive(Debug, Clone)]
struct Head {
    seq: i64,
    hash: String,
    expires_at: Option<DateTime>,
}

/// An audit record prepared for the chain.
struct Entry<'a> {
    index: usize,
    event: &'a PlatformEvent,
    body: Document,
    content_hash: String,
}

impl AuditSink {
    pub async fn connect(config: &MongoConfig) -> Result<Self, SinkError> {
        let db = config.connect("audit-writer").await?;
        prepare(&db).await?;
        Ok(Self {
            client: db.client().clone(),
            logs: db.collection(AUDIT_LOGS),
            heads: db.collection(AUDIT_CHAIN),
            audit_days: config.retention.audit_days,
            db,
        })
    }

    /// Appends `entries` in one transaction. `Err(Failure::Permanent)` when the server refused
    /// a document (the caller then goes one entry at a time).
    async fn append(
        &self,
        batch: &[Record],
        entries: &[Entry<'_>],
        outcomes: &mut [Outcome],
    ) -> Result<(), Failure> {
        let classify = |e: mongodb::error::Error| mongo::classify(&e);
        let mut session = self.client.start_session().await.map_err(classify)?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            )
            .await
            .map_err(classify)?;

        let tenants: Vec<&str> = {
            let mut t: Vec<&str> = entries.iter().map(|e| e.event.tenant_id.as_str()).collect();
            t.sort_unstable();
            t.dedup();
            t
        };
        let mut heads: HashMap<String, Head> = HashMap::new();
        let mut cursor = self
            .heads
            .find(doc! {"_id": {"$in": &tenants}})
            .session(&mut session)
            .await
            .map_err(classify)?;
        while let Some(d) = cursor
            .next(&mut session)
            .await
            .transpose()
            .map_err(classify)?
        {
            if let (Ok(t), Ok(seq), Ok(hash)) =
                (d.get_str("_id"), d.get_i64("seq"), d.get_str("hash"))
            {
                heads.insert(
                    t.to_owned(),
                    Head {
                        seq,
                        hash: hash.to_owned(),
                        expires_at: d.get_datetime("expires_at").ok().copied(),
                    },
                );
            }
        }
        drop(cursor);
        let ids: Vec<Document> = entries
            .iter()
            .map(|e| doc! {"tenant_id": &e.event.tenant_id, "event_id": &e.event.event_id})
            .collect();
        let mut stored: HashMap<(String, String), String> = HashMap::new();
        let mut cursor = self
            .logs
            .find(doc! {"_id": {"$in": &ids}})
            .projection(doc! {"content_hash": 1})
            .session(&mut session)
            .await
            .map_err(classify)?;
        while let Some(d) = cursor
            .next(&mut session)
            .await
            .transpose()
            .map_err(classify)?
        {
            let id = d.get_document("_id").ok();
            let key = id.and_then(|id| {
                Some((
                    id.get_str("tenant_id").ok()?.to_owned(),
                    id.get_str("event_id").ok()?.to_owned(),
                ))
            });
            if let (Some(key), Ok(h)) = (key, d.get_str("content_hash")) {
                stored.insert(key, h.to_owned());
            }
        }
        drop(cursor);

        let (mut appended, mut duplicates, mut conflicts) = (0u64, 0u64, 0u64);
        let mut docs = Vec::new();
        for e in entries {
            let key = (e.event.tenant_id.clone(), e.event.event_id.clone());
            if let Some(existing) = stored.get(&key) {
                if *existing == e.content_hash {
                    duplicates += 1;
                } else {
                    conflicts += 1;
                    let r = &batch[e.index];
                    tracing::error!(
                        tenant_id = %e.event.tenant_id,
                        event_id = %e.event.event_id,
                        stored_hash = %existing,
                        incoming_hash = %e.content_hash,
                        topic = %r.source.topic,
                        partition = r.source.partition,
                        offset = r.source.offset,
                        "audit conflict: an event with this id is already in the audit log with different content; the stored entry is kept"
                    );
                    outcomes[e.index] = Outcome::Rejected {
                        reason: "audit_conflict",
                        detail: format!(
                            "audit event {}/{} is already stored with content hash {existing}; this record's content hash is {}",
                            e.event.tenant_id, e.event.event_id, e.content_hash
                        ),
                    };
                }
                continue;
            }
            stored.insert(key, e.content_hash.clone());
            let head = heads.entry(e.event.tenant_id.clone()).or_insert(Head {
                seq: 0,
                hash: GENESIS.to_owned(),
                expires_at: None,
            });
            let seq = head.seq + 1;
            let hash = chain_hash(&head.hash, seq, &e.content_hash);
            let expires_at = DateTime::from_millis(
                e.event
                    .event_time
                    .saturating_add(i64::from(self.audit_days) * DAY_MS),
            );
            let r = &batch[e.index];
            let mut d =
                doc! {"_id": {"tenant_id": &e.event.tenant_id, "event_id": &e.event.event_id}};
            d.extend(e.body.clone());
            d.insert(
                "schema_version",
                r.schema_version
                    .map_or(Bson::Null, |v| Bson::Int32(v as i32)),
            );
            d.insert("seq", seq);
            d.insert("content_hash", &e.content_hash);
            d.insert("prev_hash", &head.hash);
            d.insert("hash", &hash);
            d.insert(
                "prev_expires_at",
                head.expires_at.map_or(Bson::Null, Bson::DateTime),
            );
            d.insert("expires_at", expires_at);
            d.insert(
                "source",
                doc! {"topic": r.source.topic.as_ref(), "partition": r.source.partition, "offset": r.source.offset},
            );
            docs.push(d);
            *head = Head {
                seq,
                hash,
                expires_at: Some(expires_at),
            };
            appended += 1;
        }
        if !docs.is_empty() {
            self.logs
                .insert_many(&docs)
                .session(&mut session)
                .await
                .map_err(classify)?;
            for t in tenants {
                let Some(h) = heads.get(t) else { continue };
                self.heads
                    .replace_one(
                        doc! {"_id": t},
                        doc! {"_id": t, "seq": h.seq, "hash": &h.hash, "expires_at": h.expires_at.map_or(Bson::Null, Bson::DateTime)},
                    )
                    .upsert(true)
                    .session(&mut session)
                    .await
                    .map_err(classify)?;
            }
        }
        commit(&mut session).await?;
        counter!(AUDIT_ENTRIES, "result" => "appended").increment(appended);
        counter!(AUDIT_ENTRIES, "result" => "duplicate").increment(duplicates);
        counter!(AUDIT_ENTRIES, "result" => "conflict").increment(conflicts);
        Ok(())
    }
}

/// Commits, retrying the commit alone while its outcome is unknown (safe per the driver).
async fn commit(session: &mut mongodb::ClientSession) -> Result<(), Failure> {
    let mut attempts = 0;
    loop {
        match session.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e) if e.contains_label("UnknownTransactionCommitResult") && attempts < 3 => {
                attempts += 1;
            }
            Err(e) => return Err(mongo::classify(&e)),
        }
    }
}

impl Sink for AuditSink {
    async fn write(&self, batch: &[Record]) -> Result<Vec<Outcome>, SinkError> {
        let mut outcomes = vec![Outcome::Written; batch.len()];
        let mut entries = Vec::new();
        for (index, r) in batch.iter().enumerate() {
            match &r.event {
                AnyEvent::Platform(e) if e.is_audit() => {
                    let body = event_body(e);
                    let content_hash = sha256_hex(&canonical(&body));
                    entries.push(Entry {
                        index,
                        event: e,
                        body,
                        content_hash,
                    });
                }
                _ => {
                    outcomes[index] = Outcome::Skipped {
                        reason: "not_audit",
                    };
                }
            }
        }
        if entries.is_empty() {
            return Ok(outcomes);
        }
        match self.append(batch, &entries, &mut outcomes).await {
            Ok(()) => Ok(outcomes),
            Err(Failure::Permanent { .. }) if entries.len() > 1 => {
                // A document was refused (validator): append one at a time, reject the bad one.
                for e in &entries {
                    match self
                        .append(batch, std::slice::from_ref(e), &mut outcomes)
                        .await
                    {
                        Ok(()) => {}
                        Err(Failure::Permanent { code, detail }) => {
                            outcomes[e.index] = refused(code, detail);
                        }
                        Err(other) => return Err(other.into_sink_error()),
                    }
                }
                Ok(outcomes)
            }
            Err(Failure::Permanent { code, detail }) => {
                outcomes[entries[0].index] = refused(code, detail);
                Ok(outcomes)
            }
            Err(other) => Err(other.into_sink_error()),
        }
    }

    async fn check(&self) -> Result<(), SinkError> {
        mongo::ping(&self.db).await
    }
}

fn refused(code: i32, detail: String) -> Outcome {
    Outcome::Rejected {
        reason: if code == mongo::DOCUMENT_VALIDATION_FAILURE {
            "mongodb_validation"
        } else {
            "mongodb_rejected"
        },
        detail: format!("MongoDB refused the audit entry (code {code}): {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_ignores_key_order_and_non_content_fields() {
        let a =
            doc! {"tenant_id": "t", "event_id": "e", "payload": {"b": "2", "a": "1"}, "seq": 5_i64};
        let b =
            doc! {"payload": {"a": "1", "b": "2"}, "event_id": "e", "tenant_id": "t", "hash": "x"};
        assert_eq!(canonical(&a), canonical(&b));
        let c = doc! {"tenant_id": "t", "event_id": "e", "payload": {"a": "1", "b": "3"}};
        assert_ne!(canonical(&a), canonical(&c));
    }

    #[test]
    fn chain_hash_depends_on_every_link() {
        let h = chain_hash(GENESIS, 1, "aa");
        assert_eq!(h.len(), 64);
        assert_ne!(h, chain_hash(GENESIS, 2, "aa"));
        assert_ne!(h, chain_hash(GENESIS, 1, "ab"));
        assert_ne!(h, chain_hash(&h, 1, "aa"));
    }
}
