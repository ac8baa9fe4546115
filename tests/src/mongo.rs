//! Reading MongoDB from outside the pipeline.

use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::{Client, Database};
use sha2::{Digest, Sha256};

use crate::stack;

pub async fn db(name: &str) -> Database {
    Client::with_uri_str(stack().mongodb_uri)
        .await
        .expect("mongo client")
        .database(name)
}

/// The documents of `coll` matching `filter`, in `_id` order.
pub async fn all(db: &Database, coll: &str, filter: Document) -> Vec<Document> {
    db.collection::<Document>(coll)
        .find(filter)
        .sort(doc! {"_id": 1})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("cursor")
}

/// Document count and SHA-256 over every document's bytes in `_id` order.
pub async fn fingerprint(db: &Database, coll: &str) -> (usize, String) {
    let docs = all(db, coll, doc! {}).await;
    let mut h = Sha256::new();
    for d in &docs {
        h.update(bson::serialize_to_vec(d).expect("bson"));
    }
    (docs.len(), hex::encode(h.finalize()))
}

pub async fn count(db: &Database, coll: &str) -> u64 {
    db.collection::<Document>(coll)
        .count_documents(doc! {})
        .await
        .expect("count")
}

pub fn text<'a>(d: &'a Document, key: &str) -> &'a str {
    d.get_str(key)
        .unwrap_or_else(|e| panic!("{key} of {d}: {e}"))
}

/// A numeric field (int32, int64, or a double holding an integer) as i64.
pub fn int(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) if v.fract() == 0.0 => *v as i64,
        other => panic!("{key} of {d} is not an integer: {other:?}"),
    }
}

/// A date field, in ms since the epoch.
pub fn millis(d: &Document, key: &str) -> i64 {
    d.get_datetime(key)
        .unwrap_or_else(|e| panic!("{key} of {d}: {e}"))
        .timestamp_millis()
}
