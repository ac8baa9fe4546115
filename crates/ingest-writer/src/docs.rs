//! The documents `ingest-writer` stores, built from decoded events.
//!
//! Values that come from producers are always wrapped in `$literal` inside update pipelines,
//! so a string such as `"$status"` is stored as written, never read as a field path.

use bson::{doc, Bson, DateTime, Document};
use eventpipe_events::{AnyEvent, PlatformEvent};
use eventpipe_runtime::sink::Record;
use eventpipe_stores::docs::{event_body, opt};
use eventpipe_stores::mongo::RetentionConfig;

const DAY_MS: i64 = 86_400_000;

/// `_id` of an event: unique per tenant, the producer's idempotency key.
pub fn event_id(tenant_id: &str, event_id: &str) -> Document {
    doc! {"tenant_id": tenant_id, "event_id": event_id}
}

/// `_id` of an order.
pub fn order_id(tenant_id: &str, order_id: &str) -> Document {
    doc! {"tenant_id": tenant_id, "order_id": order_id}
}

fn schema_version(r: &Record) -> Bson {
    r.schema_version
        .map_or(Bson::Null, |v| Bson::Int32(v as i32))
}

fn source(r: &Record) -> Document {
    doc! {
        "topic": r.source.topic.as_ref(),
        "partition": r.source.partition,
        "offset": r.source.offset,
    }
}

/// Retention class of an event: audit events are kept longer.
pub fn retention_class(e: &PlatformEvent) -> &'static str {
    if e.is_audit() {
        "audit"
    } else {
        "standard"
    }
}

/// A document of `events`.
pub fn event(r: &Record, e: &PlatformEvent, retention: &RetentionConfig) -> Document {
    let class = retention_class(e);
    let days = if class == "audit" {
        retention.audit_days
    } else {
        retention.standard_days
    };
    let mut d = doc! {"_id": event_id(&e.tenant_id, &e.event_id)};
    d.extend(event_body(e));
    d.insert("schema_version", schema_version(r));
    d.insert("schema_id", i64::from(r.schema_id));
    d.insert("retention", class);
    d.insert(
        "expires_at",
        DateTime::from_millis(e.event_time.saturating_add(i64::from(days) * DAY_MS)),
    );
    d.insert("source", source(r));
    d
}

/// The upsert statement for one order: `records` are that order's records of the batch whose
/// versions ascend (see [`crate::fold_orders`]). The stored document is replaced by the
/// newest one only if its `version` is lower; the history gains the entries newer than the
/// stored version and keeps the last `history` of them.
pub fn order_update(records: &[&Record], history: usize) -> Document {
    let orders: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.event {
            AnyEvent::Order(o) => Some((*r, o)),
            AnyEvent::Platform(_) => None,
        })
        .collect();
    let Some(&(last_record, last)) = orders.last() else {
        return Document::new();
    };
    let id = order_id(&last.tenant_id, &last.order_id);
    let items: Vec<Bson> = last
        .items
        .iter()
        .map(|i| Bson::Document(doc! {"sku": &i.sku, "qty": i.qty, "price_minor": i.price_minor}))
        .collect();
    let state = doc! {
        "_id": id.clone(),
        "tenant_id": &last.tenant_id,
        "order_id": &last.order_id,
        "version": last.version,
        "event_type": &last.event_type,
        "status": &last.status,
        "event_time": DateTime::from_millis(last.event_time),
        "customer_id": &last.customer_id,
        "currency": &last.currency,
        "total_minor": last.total_minor,
        "refunded_minor": last.refunded_minor,
        "channel": opt(&last.channel),
        "items": items,
        "schema_version": schema_version(last_record),
        "source": source(last_record),
    };
    let entries: Vec<Bson> = orders
        .iter()
        .map(|(_, o)| {
            Bson::Document(doc! {
                "version": o.version,
                "event_type": &o.event_type,
                "status": &o.status,
                "event_time": DateTime::from_millis(o.event_time),
            })
        })
        .collect();
    let keep = -(history.min(i32::MAX as usize) as i32);
    doc! {
        "q": {"_id": id},
        "u": [{"$replaceWith": {"$let": {
            "vars": {"stored": {"$ifNull": ["$version", i64::MIN]}},
            "in": {"$cond": [
                {"$lt": ["$$stored", last.version]},
                {"$mergeObjects": [
                    {"$literal": state},
                    {"history": {"$slice": [
                        {"$concatArrays": [
                            {"$ifNull": ["$history", []]},
                            {"$filter": {
                                "input": {"$literal": entries},
                                "as": "e",
                                "cond": {"$gt": ["$$e.version", "$$stored"]},
                            }},
                        ]},
                        keep,
                    ]}},
                ]},
                "$$ROOT",
            ]},
        }}}],
        "upsert": true,
    }
}
