//! `ingest-writer` and `audit-writer` against the real broker, registry and replica set.
//!
//! What should be stored is computed from the generator (the same seed replays the same
//! stream); what is stored is read from MongoDB. Writers run as the shipped binaries where the
//! test is about delivery (kill -9, replay), and in-process where it is about one write
//! (version races, audit conflicts).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use audit_writer::{AuditSink, Problem, AUDIT_CHAIN, AUDIT_LOGS};
use bson::{doc, DateTime, Document};
use eventpipe_events::AnyEvent;
use eventpipe_runtime::sink::{Outcome, Record, Sink};
use eventpipe_stores::MongoConfig;
use eventpipe_tests::mongo::{all, count, db, fingerprint, int, millis, text};
use eventpipe_tests::pipeline::{assert_clean, workspace_binary, Fixture, Member};
use eventpipe_tests::records::{order, platform, record};
use eventpipe_tests::{database, stack, wait_for};
use ingest_writer::{IngestSink, EVENTS, MONGO_STATEMENTS, ORDERS, STALE_SKIPPED};
use mongodb::Database;
use pipelinectl::generate::Options;
use pipelinectl::verify::stores::check_ingest;

const CAUGHT_UP: Duration = Duration::from_secs(180);

/// A stream with duplicates, swapped order versions and v1 records, dated now (the TTL index
/// would remove events dated months ago).
fn mixed(seed: u64) -> Options {
    let now = DateTime::now().timestamp_millis();
    Options {
        seed,
        tenants: 20,
        duplicates: 0.05,
        out_of_order: 0.2,
        start_time_ms: now - now % 60_000,
        step_ms: 1,
        ..Options::default()
    }
}

/// The versions in an order's status history.
fn history(order: &Document) -> Vec<i64> {
    order
        .get_array("history")
        .unwrap_or_else(|e| panic!("history of {order}: {e}"))
        .iter()
        .map(|h| match h {
            bson::Bson::Document(h) => int(h, "version"),
            other => panic!("history entry {other}"),
        })
        .collect()
}

fn writer(f: &Fixture, binary: &str, name: &str) -> Member {
    f.spawn(&workspace_binary(binary), name, &f.mongo_sink())
}

/// Starts `binary`, kills it with SIGKILL once `coll` holds some documents, starts it again
/// and waits for the group to commit the end of every partition.
async fn run_through_a_kill_9(f: &Fixture, binary: &str, coll: &str, at_least: u64) -> Member {
    let d = db(&f.database).await;
    let mut first = writer(f, binary, "first");
    wait_for("the writer to store some documents", CAUGHT_UP, || async {
        (count(&d, coll).await >= at_least).then_some(())
    })
    .await;
    assert!(
        !f.caught_up(),
        "the writer finished before it could be killed mid-stream"
    );
    first.kill9();
    let second = writer(f, binary, "second");
    f.wait_caught_up(CAUGHT_UP).await;
    second
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_writer_stores_each_event_once_and_the_newest_order_through_kill_9_and_replay() {
    let f = Fixture::new().await;
    let opts = mixed(51);
    let count = 12_000;
    f.produce(opts.clone(), count, None).await;
    let want = f.expected("").await;
    let order_records = f.all_offsets().iter().filter(|c| c.0 == f.orders).count();
    let d = db(&f.database).await;

    let mut member = run_through_a_kill_9(&f, "ingest-writer", EVENTS, 1_000).await;

    // events: exactly the distinct (tenant, event_id)s, each as first published; orders: the
    // newest version of each (`pipelinectl verify`'s check).
    assert_clean(
        &check_ingest(&want, &d)
            .await
            .expect("read events and orders"),
    );
    // The check can fail: an event gone, one too many.
    let events = all(&d, EVENTS, doc! {}).await;
    let coll = d.collection::<Document>(EVENTS);
    coll.delete_one(doc! {"_id": events[0].get("_id").expect("_id").clone()})
        .await
        .expect("delete");
    let mut stray = events[0].clone();
    stray.insert("_id", doc! {"tenant_id": "nobody", "event_id": "stray"});
    stray.insert("tenant_id", "nobody");
    stray.insert("event_id", "stray");
    coll.insert_one(&stray).await.expect("insert");
    let rows = check_ingest(&want, &d).await.expect("read");
    assert_eq!(
        (rows[0].missing, rows[0].extra, rows[0].wrong),
        (1, 1, 0),
        "{rows:?}"
    );
    coll.delete_one(doc! {"_id": stray.get("_id").expect("_id").clone()})
        .await
        .expect("delete");
    coll.insert_one(&events[0]).await.expect("insert");

    let now = DateTime::now();
    let mut versions = BTreeMap::<i64, usize>::new();
    for e in &events {
        *versions.entry(int(e, "schema_version")).or_default() += 1;
        assert!(millis(e, "expires_at") > now.timestamp_millis(), "{e}");
        let id = e.get_document("_id").expect("_id is a document");
        assert_eq!(id.get_str("event_id").ok(), e.get_str("event_id").ok());
    }
    assert!(
        versions.contains_key(&1) && versions.contains_key(&2),
        "{versions:?}"
    );

    // orders: the newest version of each, with an ascending, bounded history ending at it.
    let orders = all(&d, ORDERS, doc! {}).await;
    assert_eq!(orders.len(), want.orders.len());
    for o in &orders {
        let key = (
            text(o, "tenant_id").to_owned(),
            text(o, "order_id").to_owned(),
        );
        let (version, status) = &want.orders[&key];
        assert_eq!(int(o, "version"), *version, "{o}");
        assert_eq!(text(o, "status"), status, "{o}");
        let history: Vec<i64> = history(o);
        assert!(history.len() <= 20 && history.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(history.last(), Some(version), "{o}");
    }
    // Replaying every record (a new group from the beginning) changes no byte.
    let before = (fingerprint(&d, EVENTS).await, fingerprint(&d, ORDERS).await);
    member.terminate(Duration::from_secs(30)).await;
    f.reset_group();
    let replay = writer(&f, "ingest-writer", "replay");
    f.wait_caught_up(CAUGHT_UP).await;
    let after = (fingerprint(&d, EVENTS).await, fingerprint(&d, ORDERS).await);
    assert_eq!(before, after, "a replay changed stored documents");
    // On the replay no order version is newer than the stored one: nothing is inserted or
    // updated, and the skipped versions are counted.
    let mut applied = 0.0;
    for result in ["updated", "inserted"] {
        let filter = format!("result=\"{result}\"");
        applied += replay
            .metric_sum(MONGO_STATEMENTS, &["collection=\"orders\"", &filter])
            .await
            .unwrap_or_default();
    }
    assert_eq!(applied, 0.0, "a replayed order version was applied");
    let stale = replay
        .metric_sum(STALE_SKIPPED, &[])
        .await
        .unwrap_or_default();
    assert!(
        stale > 0.0 && stale <= order_records as f64,
        "stale versions counted: {stale} of {order_records} order records"
    );
}

async fn stored_order(d: &Database, id: &str) -> Document {
    d.collection::<Document>(ORDERS)
        .find_one(doc! {"_id": {"tenant_id": "t1", "order_id": id}})
        .await
        .expect("find")
        .unwrap_or_else(|| panic!("order {id} stored"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_move_only_forward_under_reordering_and_concurrent_upserts() {
    let name = database();
    let sink = Arc::new(
        IngestSink::connect(&MongoConfig::new(stack().mongodb_uri, &name))
            .await
            .expect("sink"),
    );
    let d = db(&name).await;

    // 5 then 3: the older version is a no-op.
    for v in [5, 3] {
        let out = sink.write(&[order_record("a", v)]).await.expect("write");
        assert_eq!(out, vec![Outcome::Written]);
    }
    let a = stored_order(&d, "a").await;
    assert_eq!((int(&a, "version"), text(&a, "status")), (5, "s5"));
    assert_eq!(int(&a, "total_minor"), 500);

    // 1..=10 in a scrambled order, one batch each, from concurrent writers.
    let scrambled = [4, 9, 1, 10, 2, 7, 3, 8, 6, 5];
    let writes = scrambled.iter().map(|&v| {
        let sink = sink.clone();
        async move { sink.write(&[order_record("b", v)]).await }
    });
    for out in futures::future::join_all(writes).await {
        assert_eq!(out.expect("write"), vec![Outcome::Written]);
    }
    let b = stored_order(&d, "b").await;
    assert_eq!((int(&b, "version"), text(&b, "status")), (10, "s10"));

    // Within one batch, older versions after newer ones are skipped as stale.
    let batch: Vec<Record> = [2, 6, 4, 6, 7]
        .iter()
        .map(|&v| order_record("c", v))
        .collect();
    let out = sink.write(&batch).await.expect("write");
    let stale = Outcome::Skipped {
        reason: "stale_version",
    };
    assert_eq!(
        out,
        vec![
            Outcome::Written,
            Outcome::Written,
            stale.clone(),
            stale,
            Outcome::Written
        ]
    );
    let c = stored_order(&d, "c").await;
    assert_eq!(int(&c, "version"), 7);
    let history: Vec<i64> = history(&c);
    assert_eq!(history, vec![2, 6, 7]);

    // Many writers upserting the same brand-new keys at once: the losers of the insert race
    // are retried, never rejected.
    for key in 0..20 {
        let id = format!("race-{key}");
        let writes = (1..=6).map(|v| {
            let sink = sink.clone();
            let r = order_record(&id, v);
            async move { sink.write(&[r]).await }
        });
        for out in futures::future::join_all(writes).await {
            assert_eq!(out.expect("write"), vec![Outcome::Written], "{id}");
        }
        assert_eq!(int(&stored_order(&d, &id).await, "version"), 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_redeliveries_are_no_ops_and_conflicts_are_rejected() {
    let name = database();
    let sink = AuditSink::connect(&MongoConfig::new(stack().mongodb_uri, &name))
        .await
        .expect("sink");
    let d = db(&name).await;
    let first = audit_record("t1", "e1", "user.role.changed");
    assert_eq!(
        sink.write(std::slice::from_ref(&first))
            .await
            .expect("mongodb"),
        vec![Outcome::Written]
    );
    let stored = all(&d, AUDIT_LOGS, doc! {}).await;

    // The same event again, alone and next to a new one.
    let second = audit_record("t1", "e2", "data.exported");
    let out = sink.write(&[first.clone(), second]).await.expect("mongodb");
    assert_eq!(out, vec![Outcome::Written, Outcome::Written]);
    let after = all(&d, AUDIT_LOGS, doc! {}).await;
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], stored[0], "a redelivery rewrote the entry");

    // The same id with other content: rejected, stored entry untouched.
    let mut altered = first.clone();
    if let AnyEvent::Platform(e) = &mut altered.event {
        e.payload.insert("field".into(), "owner".into());
    }
    let plain = audit_record("t1", "e3", "page.view");
    let out = sink.write(&[altered, plain]).await.expect("mongodb");
    assert!(
        matches!(&out[0], Outcome::Rejected { reason: "audit_conflict", detail } if detail.contains("e1")),
        "{out:?}"
    );
    assert_eq!(
        out[1],
        Outcome::Skipped {
            reason: "not_audit"
        }
    );
    assert_eq!(all(&d, AUDIT_LOGS, doc! {}).await, after);

    let report = audit_writer::verify(&d, "t1", DateTime::now())
        .await
        .expect("mongodb");
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!((report.entries, report.head_seq), (2, Some(2)));

    // The collection's validator refuses documents that are not chain entries.
    let err = d
        .collection::<Document>(AUDIT_LOGS)
        .insert_one(doc! {"_id": {"tenant_id": "t1", "event_id": "forged"}, "tenant_id": "t1"})
        .await
        .expect_err("validator");
    assert!(
        err.to_string().contains("121") || err.to_string().contains("validation"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_chain_survives_kill_9_and_replay_and_verify_names_tampering() {
    let f = Fixture::new().await;
    let opts = mixed(52);
    let count = 15_000;
    f.produce(opts.clone(), count, None).await;
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tenant, id) in f.expected("").await.audit {
        want.entry(tenant).or_default().insert(id);
    }
    let d = db(&f.database).await;

    let mut member = run_through_a_kill_9(&f, "audit-writer", AUDIT_LOGS, 100).await;
    let now = DateTime::now();
    for (tenant, ids) in &want {
        let entries = all(&d, AUDIT_LOGS, doc! {"tenant_id": tenant}).await;
        let stored: BTreeSet<String> = entries
            .iter()
            .map(|e| text(e, "event_id").to_owned())
            .collect();
        assert_eq!(entries.len(), ids.len(), "{tenant}: one entry per event");
        assert_eq!(&stored, ids, "{tenant}");
        let report = audit_writer::verify(&d, tenant, now)
            .await
            .expect("mongodb");
        assert!(report.is_intact(), "{tenant}: {:?}", report.problems);
        assert_eq!(report.head_seq, Some(ids.len() as i64));
    }
    assert_eq!(
        audit_writer::tenants(&d).await.expect("mongodb").len(),
        want.len()
    );

    // A replay from the beginning appends nothing.
    let before = (
        fingerprint(&d, AUDIT_LOGS).await,
        fingerprint(&d, AUDIT_CHAIN).await,
    );
    member.terminate(Duration::from_secs(30)).await;
    f.reset_group();
    let mut replay = writer(&f, "audit-writer", "replay");
    f.wait_caught_up(CAUGHT_UP).await;
    replay.terminate(Duration::from_secs(30)).await;
    let after = (
        fingerprint(&d, AUDIT_LOGS).await,
        fingerprint(&d, AUDIT_CHAIN).await,
    );
    assert_eq!(before, after, "a replay changed the audit log");

    // Tamper with three tenants' chains; the fourth stays intact.
    let mut busiest: Vec<(&String, usize)> = want.iter().map(|(t, ids)| (t, ids.len())).collect();
    busiest.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let [altered, removed, swapped, untouched] = [0, 1, 2, 3].map(|i| busiest[i].0.as_str());
    assert!(busiest[3].1 >= 4, "enough audit entries per tenant");
    let logs = d.collection::<Document>(AUDIT_LOGS);
    let at = |tenant: &str, seq: i64| doc! {"tenant_id": tenant, "seq": seq};
    // Bypass the validator as an operator with collMod rights could.
    d.run_command(doc! {"collMod": AUDIT_LOGS, "validationLevel": "off"})
        .await
        .expect("mongodb");
    logs.update_one(at(altered, 2), doc! {"$set": {"payload.tampered": "yes"}})
        .await
        .expect("mongodb");
    logs.delete_one(at(removed, 2)).await.expect("mongodb");
    logs.update_one(at(swapped, 2), doc! {"$set": {"seq": -2_i64}})
        .await
        .expect("mongodb");
    logs.update_one(at(swapped, 3), doc! {"$set": {"seq": 2_i64}})
        .await
        .expect("mongodb");
    logs.update_one(at(swapped, -2), doc! {"$set": {"seq": 3_i64}})
        .await
        .expect("mongodb");

    let p = problems(&d, altered).await;
    assert!(
        matches!(p.as_slice(), [Problem::ContentAltered { seq: 2, .. }]),
        "{p:?}"
    );
    let p = problems(&d, removed).await;
    assert!(
        p.iter()
            .any(|p| matches!(p, Problem::Missing { from: 2, to: 2 })),
        "{p:?}"
    );
    let p = problems(&d, swapped).await;
    assert!(
        p.iter()
            .any(|p| matches!(p, Problem::HashAltered { seq: 2, .. })),
        "{p:?}"
    );
    assert!(problems(&d, untouched).await.is_empty());

    // The CLI names the altered entry and fails.
    let out = std::process::Command::new(workspace_binary("pipelinectl"))
        .args(["audit", "verify", "--tenant", altered])
        .args(["--mongodb-uri", &stack().mongodb_uri])
        .args(["--database", &f.database])
        .output()
        .expect("pipelinectl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("seq 2") && text.contains("content altered"),
        "{text}"
    );
}

async fn problems(d: &Database, tenant: &str) -> Vec<Problem> {
    audit_writer::verify(d, tenant, DateTime::now())
        .await
        .expect("verify")
        .problems
}

fn order_record(id: &str, version: i64) -> Record {
    let now = DateTime::now().timestamp_millis();
    record(
        "orders.events",
        0,
        version,
        AnyEvent::Order(order("t1", id, version, now)),
    )
}

fn audit_record(tenant: &str, id: &str, event_type: &str) -> Record {
    let mut e = platform(
        tenant,
        id,
        event_type,
        "u1",
        DateTime::now().timestamp_millis(),
    );
    e.payload.insert("field".to_owned(), "role".to_owned());
    record("platform.events", 0, 0, AnyEvent::Platform(e))
}
