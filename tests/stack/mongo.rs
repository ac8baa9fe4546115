//! mongod is a real replica set: upserts, unique indexes and multi-document transactions work.

use bson::{doc, Document};
use eventpipe_tests::{database, stack};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

#[tokio::test]
async fn upsert_unique_index_and_transactions() {
    let client = Client::with_uri_str(&stack().mongodb_uri)
        .await
        .expect("client");
    let db = client.database(&database());
    let orders = db.collection::<Document>("orders");
    let history = db.collection::<Document>("history");

    // An upsert creates, a second one updates only if the version is newer.
    for (version, status) in [(1, "created"), (3, "paid"), (2, "confirmed")] {
        orders
            .update_one(
                doc! {"_id": "o-1", "version": {"$lt": version}},
                doc! {"$set": {"version": version, "status": status}, "$setOnInsert": {"first_seen": version}},
            )
            .upsert(true)
            .await
            .map(|_| ())
            .or_else(|e| match *e.kind {
                // The stale write matches nothing and its upsert collides with `_id`: a no-op.
                mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref w)) if w.code == 11000 => Ok(()),
                _ => Err(e),
            })
            .expect("upsert");
    }
    let stored = orders
        .find_one(doc! {"_id": "o-1"})
        .await
        .expect("find")
        .expect("exists");
    assert_eq!(stored.get_i32("version").ok(), Some(3));
    assert_eq!(stored.get_str("status").ok(), Some("paid"));
    assert_eq!(stored.get_i32("first_seen").ok(), Some(1));

    orders
        .create_index(
            IndexModel::builder()
                .keys(doc! {"tenant_id": 1, "order_id": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .expect("unique index");
    orders
        .insert_one(doc! {"_id": "a", "tenant_id": "t", "order_id": "x"})
        .await
        .expect("insert");
    let dup = orders
        .insert_one(doc! {"_id": "b", "tenant_id": "t", "order_id": "x"})
        .await;
    assert!(dup
        .expect_err("duplicate rejected")
        .to_string()
        .contains("E11000"));

    // Collections must exist before a transaction writes to them on 6.0.
    db.create_collection("history")
        .await
        .expect("create history");

    // A committed transaction writes both documents; an aborted one writes neither.
    let mut session = client.start_session().await.expect("session");
    session.start_transaction().await.expect("start");
    orders
        .insert_one(doc! {"_id": "tx-1", "tenant_id": "t", "order_id": "tx-1"})
        .session(&mut session)
        .await
        .expect("insert in tx");
    history
        .insert_one(doc! {"_id": "tx-1", "event": "created"})
        .session(&mut session)
        .await
        .expect("insert in tx");
    session.commit_transaction().await.expect("commit");

    session.start_transaction().await.expect("start");
    orders
        .insert_one(doc! {"_id": "tx-2", "tenant_id": "t", "order_id": "tx-2"})
        .session(&mut session)
        .await
        .expect("insert in tx");
    history
        .insert_one(doc! {"_id": "tx-2", "event": "created"})
        .session(&mut session)
        .await
        .expect("insert in tx");
    // Not visible outside the transaction before commit.
    assert!(history
        .find_one(doc! {"_id": "tx-2"})
        .await
        .expect("find")
        .is_none());
    session.abort_transaction().await.expect("abort");

    assert!(orders
        .find_one(doc! {"_id": "tx-1"})
        .await
        .expect("find")
        .is_some());
    assert!(history
        .find_one(doc! {"_id": "tx-1"})
        .await
        .expect("find")
        .is_some());
    assert!(orders
        .find_one(doc! {"_id": "tx-2"})
        .await
        .expect("find")
        .is_none());
    assert!(history
        .find_one(doc! {"_id": "tx-2"})
        .await
        .expect("find")
        .is_none());

    db.drop().await.expect("drop test database");
}
