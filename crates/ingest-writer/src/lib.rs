//! `ingest-writer`'s sink: every event once into `events`, every order at its newest version
//! into `orders`.
//!
//! # Idempotency
//! - `events`: `_id` is `{tenant_id, event_id}`; documents are inserted with one unordered
//!   `insert` per batch and never updated. A duplicate key means the event is already stored
//!   (a redelivery or a re-sent event): success, counted as a duplicate.
//! - `orders`: `_id` is `{tenant_id, order_id}`; one unordered `update` per batch, one
//!   upsert statement per order. Each statement is a pipeline update that replaces the stored
//!   state only if the incoming `version` is greater than the stored one, so the version check
//!   and the write are one atomic single-document operation on the server. The versions of one
//!   order within a batch are folded in offset order first, exactly as if they had been
//!   applied one by one; the ones that lose are stale.
//!
//! Replaying any range of offsets therefore leaves both collections as they were.

use std::collections::HashMap;
use std::time::Instant;

use bson::{doc, Bson, Document};
use eventpipe_events::AnyEvent;
use eventpipe_runtime::sink::{Outcome, Record, Sink, SinkError};
use eventpipe_stores::mongo::{self, Failure, MongoConfig, DUPLICATE_KEY};
use metrics::counter;
use mongodb::error::ErrorKind;
use mongodb::{Collection, Database, IndexModel};

pub mod docs;

/// Collection names.
pub const EVENTS: &str = "events";
pub const ORDERS: &str = "orders";

/// Metric: writes per collection and result (`inserted`, `duplicate`, `updated`, `stale`,
/// `rejected`).
pub const MONGO_STATEMENTS: &str = "eventpipe_mongo_statements_total";
/// Metric: order versions not applied because the stored (or an earlier record's) version is
/// the same or newer: each older record of a batch, plus each order upsert of a batch that the
/// version check left unchanged (the server does not say which of the versions it carried
/// were the stale ones, so it counts once).
pub const STALE_SKIPPED: &str = "eventpipe_orders_stale_skipped_total";

/// Statements per `update` command (the server's own limit is 100,000 and 16 MiB).
const UPDATE_CHUNK: usize = 500;
/// Immediate re-sends of an upsert that raced with another writer's insert of the same key.
const UPSERT_RACE_RETRIES: usize = 5;

pub struct IngestSink {
    db: Database,
    events: Collection<Document>,
    config: MongoConfig,
    write_concern: Document,
}

/// The indexes `ingest-writer` needs, by collection (created at start-up; creating an existing
/// index is a no-op).
pub fn indexes() -> Vec<(&'static str, Vec<IndexModel>)> {
    let named = mongo::index;
    vec![
        (
            EVENTS,
            vec![
                named(doc! {"tenant_id": 1, "event_time": -1}, "tenant_time"),
                named(
                    doc! {"tenant_id": 1, "actor.user_id": 1, "event_time": -1},
                    "tenant_user_time",
                ),
                named(
                    doc! {"tenant_id": 1, "event_type": 1, "event_time": -1},
                    "tenant_type_time",
                ),
                mongo::ttl_index(),
            ],
        ),
        (
            ORDERS,
            vec![
                named(
                    doc! {"tenant_id": 1, "status": 1, "event_time": -1},
                    "tenant_status_time",
                ),
                named(
                    doc! {"tenant_id": 1, "customer_id": 1, "event_time": -1},
                    "tenant_customer_time",
                ),
            ],
        ),
    ]
}

impl IngestSink {
    /// Connects and creates the indexes.
    pub async fn connect(config: &MongoConfig) -> Result<Self, SinkError> {
        let db = config.connect("ingest-writer").await?;
        for (collection, models) in indexes() {
            mongo::ensure_indexes(&db, collection, models).await?;
        }
        Ok(Self {
            events: db.collection(EVENTS),
            write_concern: config.write_concern_doc(),
            config: config.clone(),
            db,
        })
    }

    async fn write_events(
        &self,
        batch: &[Record],
        idx: &[usize],
        outcomes: &mut [Outcome],
    ) -> Result<(), SinkError> {
        if idx.is_empty() {
            return Ok(());
        }
        let docs: Vec<Document> = idx
            .iter()
            .filter_map(|&i| match &batch[i].event {
                AnyEvent::Platform(e) => Some(docs::event(&batch[i], e, &self.config.retention)),
                AnyEvent::Order(_) => None,
            })
            .collect();
        let (errors, wce) = match self.events.insert_many(&docs).ordered(false).await {
            Ok(_) => (Vec::new(), None),
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(m) => (
                    m.write_errors
                        .iter()
                        .flatten()
                        .map(|w| (w.index, w.code, w.message.clone()))
                        .collect(),
                    m.write_concern_error.clone(),
                ),
                _ => match mongo::classify(&e) {
                    Failure::Permanent { .. } if docs.len() > 1 => {
                        return self.write_events_one_by_one(batch, idx, outcomes).await;
                    }
                    Failure::Permanent { code, detail } => {
                        outcomes[idx[0]] = rejected(code, detail);
                        return Ok(());
                    }
                    other => return Err(other.into_sink_error()),
                },
            },
        };
        if let Some(w) = wce {
            return Err(SinkError::transient(
                "mongodb_write_concern",
                format!("code {}: {}", w.code, w.message),
            ));
        }
        let mut duplicates = 0u64;
        let mut refused = 0u64;
        for (i, code, message) in errors {
            if code == DUPLICATE_KEY {
                duplicates += 1;
            } else if mongo::is_transient_code(code) {
                return Err(SinkError::transient(
                    "mongodb_retryable",
                    format!("code {code}: {message}"),
                ));
            } else {
                refused += 1;
                outcomes[idx[i]] = rejected(code, message);
            }
        }
        let inserted = docs.len() as u64 - duplicates - refused;
        count(EVENTS, "inserted", inserted);
        count(EVENTS, "duplicate", duplicates);
        count(EVENTS, "rejected", refused);
        Ok(())
    }

    /// After the server refused a whole insert because of what it carried: one document at a
    /// time, so only the offending ones are rejected.
    async fn write_events_one_by_one(
        &self,
        batch: &[Record],
        idx: &[usize],
        outcomes: &mut [Outcome],
    ) -> Result<(), SinkError> {
        for &i in idx {
            Box::pin(self.write_events(batch, &[i], outcomes)).await?;
        }
        Ok(())
    }

    async fn write_orders(
        &self,
        batch: &[Record],
        idx: &[usize],
        outcomes: &mut [Outcome],
    ) -> Result<(), SinkError> {
        if idx.is_empty() {
            return Ok(());
        }
        let folded = fold_orders(batch, idx);
        let mut stale = 0u64;
        for &i in &folded.stale {
            outcomes[i] = Outcome::Skipped {
                reason: "stale_version",
            };
            stale += 1;
        }
        let mut pending: Vec<Statement> = folded
            .orders
            .into_iter()
            .map(|o| {
                let records: Vec<&Record> = o.applied.iter().map(|&i| &batch[i]).collect();
                Statement {
                    update: docs::order_update(&records, self.config.order_history),
                    records: o.applied,
                }
            })
            .collect();
        let mut tally = Tally {
            stale,
            ..Tally::default()
        };
        let mut races = 0;
        while !pending.is_empty() {
            pending = self
                .update_orders(&pending, UPDATE_CHUNK, outcomes, &mut tally)
                .await?;
            if !pending.is_empty() {
                races += 1;
                if races > UPSERT_RACE_RETRIES {
                    return Err(SinkError::transient(
                        "mongodb_duplicate_key_race",
                        "concurrent upserts of the same order keep colliding",
                    ));
                }
            }
        }
        count(ORDERS, "inserted", tally.upserted);
        count(ORDERS, "updated", tally.updated);
        count(ORDERS, "stale", tally.stale);
        count(ORDERS, "rejected", tally.rejected);
        counter!(STALE_SKIPPED).increment(tally.stale);
        Ok(())
    }

    /// Sends `statements` in `update` commands of `chunk` statements; returns the statements
    /// whose upsert collided with a concurrent insert of the same order (to be sent again:
    /// the second time the document is there and the version check decides).
    async fn update_orders(
        &self,
        statements: &[Statement],
        chunk: usize,
        outcomes: &mut [Outcome],
        tally: &mut Tally,
    ) -> Result<Vec<Statement>, SinkError> {
        let mut raced = Vec::new();
        for part in statements.chunks(chunk) {
            let command = doc! {
                "update": ORDERS,
                "updates": part.iter().map(|s| Bson::Document(s.update.clone())).collect::<Vec<_>>(),
                "ordered": false,
                "writeConcern": self.write_concern.clone(),
            };
            let reply = match mongo::run_write(&self.db, command).await {
                Ok(r) => r,
                Err(Failure::Permanent { .. }) if part.len() > 1 => {
                    // The command was refused for what it carried: one statement at a time
                    // finds the offending order.
                    raced.extend(Box::pin(self.update_orders(part, 1, outcomes, tally)).await?);
                    continue;
                }
                Err(Failure::Permanent { code, detail }) => {
                    tally.reject(&part[0], code, &detail, outcomes);
                    continue;
                }
                Err(other) => return Err(other.into_sink_error()),
            };
            let upserted = reply.upserted.len() as u64;
            let modified = reply.modified.max(0) as u64;
            tally.upserted += upserted;
            tally.updated += modified;
            // Matched but left alone by the version check: stale or a replay.
            tally.stale += (reply.n.max(0) as u64).saturating_sub(upserted + modified);
            for (i, (code, message)) in reply.errors {
                if code == DUPLICATE_KEY {
                    raced.push(part[i].clone());
                } else if mongo::is_transient_code(code) {
                    return Err(SinkError::transient(
                        "mongodb_retryable",
                        format!("code {code}: {message}"),
                    ));
                } else {
                    tally.reject(&part[i], code, &message, outcomes);
                }
            }
        }
        Ok(raced)
    }
}

/// One order's upsert and the records it carries.
#[derive(Debug, Clone)]
struct Statement {
    update: Document,
    records: Vec<usize>,
}

#[derive(Debug, Default)]
struct Tally {
    upserted: u64,
    updated: u64,
    stale: u64,
    rejected: u64,
}

impl Tally {
    fn reject(&mut self, s: &Statement, code: i32, detail: &str, outcomes: &mut [Outcome]) {
        for &r in &s.records {
            outcomes[r] = rejected(code, detail.to_owned());
        }
        self.rejected += s.records.len() as u64;
    }
}

fn rejected(code: i32, detail: String) -> Outcome {
    Outcome::Rejected {
        reason: if code == mongo::DOCUMENT_VALIDATION_FAILURE {
            "mongodb_validation"
        } else {
            "mongodb_rejected"
        },
        detail: format!("MongoDB refused the write (code {code}): {detail}"),
    }
}

fn count(collection: &'static str, result: &'static str, n: u64) {
    if n > 0 {
        counter!(MONGO_STATEMENTS, "collection" => collection, "result" => result).increment(n);
    }
}

/// The orders of a batch after folding each order's versions in offset order.
#[derive(Debug, Default)]
pub struct Folded {
    /// Per order, in first-seen order: the records whose version was newer than every earlier
    /// record of the same order in the batch (ascending versions; the last is the new state).
    pub orders: Vec<FoldedOrder>,
    /// Records already superseded within the batch.
    pub stale: Vec<usize>,
}

#[derive(Debug)]
pub struct FoldedOrder {
    pub applied: Vec<usize>,
}

pub fn fold_orders(batch: &[Record], idx: &[usize]) -> Folded {
    let mut out = Folded::default();
    let mut by_key: HashMap<(&str, &str), usize> = HashMap::new();
    for &i in idx {
        let AnyEvent::Order(o) = &batch[i].event else {
            continue;
        };
        let slot = *by_key
            .entry((o.tenant_id.as_str(), o.order_id.as_str()))
            .or_insert_with(|| {
                out.orders.push(FoldedOrder {
                    applied: Vec::new(),
                });
                out.orders.len() - 1
            });
        let applied = &mut out.orders[slot].applied;
        let newest = applied.last().and_then(|&j| match &batch[j].event {
            AnyEvent::Order(p) => Some(p.version),
            AnyEvent::Platform(_) => None,
        });
        if newest.is_some_and(|v| o.version <= v) {
            out.stale.push(i);
        } else {
            applied.push(i);
        }
    }
    out
}

impl Sink for IngestSink {
    async fn write(&self, batch: &[Record]) -> Result<Vec<Outcome>, SinkError> {
        let started = Instant::now();
        let mut outcomes = vec![Outcome::Written; batch.len()];
        let (mut platform, mut orders) = (Vec::new(), Vec::new());
        for (i, r) in batch.iter().enumerate() {
            match r.event {
                AnyEvent::Platform(_) => platform.push(i),
                AnyEvent::Order(_) => orders.push(i),
            }
        }
        self.write_events(batch, &platform, &mut outcomes).await?;
        self.write_orders(batch, &orders, &mut outcomes).await?;
        tracing::trace!(records = batch.len(), elapsed = ?started.elapsed(), "batch written");
        Ok(outcomes)
    }

    async fn check(&self) -> Result<(), SinkError> {
        mongo::ping(&self.db).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventpipe_events::OrderEvent;
    use eventpipe_runtime::sink::Source;
    use std::sync::Arc;

    fn order(id: &str, version: i64) -> Record {
        Record {
            source: Source {
                topic: Arc::from("orders.events"),
                partition: 0,
                offset: version,
                timestamp: None,
            },
            event: AnyEvent::Order(OrderEvent {
                tenant_id: "t".into(),
                order_id: id.into(),
                version,
                event_type: "order.paid".into(),
                event_time: 0,
                status: "paid".into(),
                customer_id: "c".into(),
                currency: "EUR".into(),
                total_minor: 1,
                items: vec![],
                refunded_minor: 0,
                channel: None,
            }),
            schema_id: 1,
            schema_version: Some(2),
        }
    }

    #[test]
    fn folding_keeps_what_sequential_application_would_apply() {
        // a: 1, 3, 2 (stale), 4; b: 5, 5 (equal: stale)
        let batch = vec![
            order("a", 1),
            order("b", 5),
            order("a", 3),
            order("a", 2),
            order("b", 5),
            order("a", 4),
        ];
        let f = fold_orders(&batch, &[0, 1, 2, 3, 4, 5]);
        assert_eq!(f.orders.len(), 2);
        assert_eq!(f.orders[0].applied, vec![0, 2, 5]);
        assert_eq!(f.orders[1].applied, vec![1]);
        assert_eq!(f.stale, vec![3, 4]);
    }
}
