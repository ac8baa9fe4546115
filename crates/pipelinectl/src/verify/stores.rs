//! Reading what the stores hold and comparing it with the [`Expected`] state, one [`Row`] per
//! store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

use aggregator::{hll_estimate, EVENT_AGGREGATES, ORDER_AGGREGATES};
use audit_writer::{AUDIT_CHAIN, AUDIT_LOGS};
use bson::{doc, Document};
use fred::prelude::*;
use futures::stream::{self, StreamExt, TryStreamExt};
use mongodb::Database;

use super::oracle::{as_i64, body_digest, EventKey, Expected, OrderKey, Session};
use super::Row;
use crate::topics::{self, Coord};
use eventpipe_runtime::dlq::header;

/// Compares `expected` with `found` key by key; `check` describes a wrong value.
pub fn diff<K, E, F>(
    store: &str,
    expected: &HashMap<K, E>,
    found: &HashMap<K, F>,
    ignore: impl Fn(&K) -> bool,
    check: impl Fn(&E, &F) -> Option<String>,
) -> Row
where
    K: Hash + Eq + Debug,
{
    let mut row = Row::new(store);
    row.expected = expected.len() as u64;
    row.found = found.keys().filter(|k| !ignore(k)).count() as u64;
    for (k, e) in expected {
        match found.get(k) {
            None => row.missing(format!("{k:?}")),
            Some(f) => {
                if let Some(why) = check(e, f) {
                    row.wrong(format!("{k:?}: {why}"));
                }
            }
        }
    }
    for k in found.keys() {
        if !expected.contains_key(k) && !ignore(k) {
            row.extra(format!("{k:?}"));
        }
    }
    row
}

fn set<K: Hash + Eq + Clone>(keys: &HashSet<K>) -> HashMap<K, ()> {
    keys.iter().map(|k| (k.clone(), ())).collect()
}

async fn documents(db: &Database, coll: &str) -> Result<Vec<Document>, String> {
    db.collection::<Document>(coll)
        .find(doc! {})
        .await
        .map_err(|e| format!("{coll}: {e}"))?
        .try_collect()
        .await
        .map_err(|e| format!("{coll}: {e}"))
}

fn text(d: &Document, field: &str) -> String {
    d.get_str(field).unwrap_or_default().to_owned()
}

fn int(d: &Document, field: &str) -> i64 {
    as_i64(d.get(field)).unwrap_or(i64::MIN)
}

/// `events` and `orders` (ingest-writer).
pub async fn check_ingest(want: &Expected, db: &Database) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let mut events = HashMap::new();
    let mut cursor = db
        .collection::<Document>(ingest_writer::EVENTS)
        .find(doc! {})
        .await
        .map_err(|e| format!("events: {e}"))?;
    while let Some(d) = cursor
        .try_next()
        .await
        .map_err(|e| format!("events: {e}"))?
    {
        events.insert(
            (text(&d, "tenant_id"), text(&d, "event_id")),
            body_digest(&d),
        );
    }
    rows.push(diff(
        "mongo events",
        &want.events,
        &events,
        |_| false,
        |e, f| {
            (e != f).then(|| "stored fields differ from the first record of the event".to_owned())
        },
    ));

    let orders: HashMap<(String, String), (i64, String)> = documents(db, ingest_writer::ORDERS)
        .await?
        .iter()
        .map(|d| {
            (
                (text(d, "tenant_id"), text(d, "order_id")),
                (int(d, "version"), text(d, "status")),
            )
        })
        .collect();
    rows.push(diff(
        "mongo orders",
        &want.orders,
        &orders,
        |_| false,
        |e, f| (e != f).then(|| format!("version/status {f:?}, expected {e:?}")),
    ));
    Ok(rows)
}

/// `audit_logs` and every tenant's chain (audit-writer).
pub async fn check_audit(want: &Expected, db: &Database) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    {
        let logs: HashSet<(String, String)> = documents(db, AUDIT_LOGS)
            .await?
            .iter()
            .map(|d| (text(d, "tenant_id"), text(d, "event_id")))
            .collect();
        rows.push(diff(
            "mongo audit_logs",
            &set(&want.audit),
            &set(&logs),
            |_| false,
            |_, _| None,
        ));

        let tenants: HashSet<String> = want.audit.iter().map(|(t, _)| t.clone()).collect();
        let now = bson::DateTime::now();
        let mut chains = HashMap::new();
        for tenant in audit_writer::tenants(db)
            .await
            .map_err(|e| format!("{AUDIT_CHAIN}: {e}"))?
        {
            let report = audit_writer::verify(db, &tenant, now)
                .await
                .map_err(|e| format!("{AUDIT_LOGS}: {e}"))?;
            chains.insert(
                tenant,
                report
                    .problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            );
        }
        rows.push(diff(
            "mongo audit chains",
            &set(&tenants),
            &chains,
            |_| false,
            |_, problems| (!problems.is_empty()).then(|| problems.join("; ")),
        ));
    }
    Ok(rows)
}

/// `event_aggregates` and `order_aggregates`: counts, times and sketch registers exactly;
/// the stored estimate must be the registers' estimate and within the sketch's error of the
/// exact number of users.
pub async fn check_aggregates(want: &Expected, db: &Database) -> Result<Vec<Row>, String> {
    let mut found: HashMap<EventKey, Document> = HashMap::new();
    for d in documents(db, EVENT_AGGREGATES).await? {
        let key = (
            text(&d, "tenant_id"),
            text(&d, "event_type"),
            text(&d, "environment"),
            granularity(&text(&d, "granularity")),
            int(&d, "bucket_start"),
        );
        found.insert(key, d);
    }
    let events = diff(
        "mongo event_aggregates",
        &want.event_buckets,
        &found,
        |_| false,
        |e, d| {
            let got = (
                int(d, "count"),
                int(d, "first_event_time"),
                int(d, "last_event_time"),
            );
            if got != (e.count, e.first, e.last) {
                return Some(format!(
                    "count/first/last {got:?}, expected {:?}",
                    (e.count, e.first, e.last)
                ));
            }
            let registers: Vec<i32> = d
                .get_array("hll")
                .map(|a| a.iter().filter_map(bson::Bson::as_i32).collect())
                .unwrap_or_default();
            if registers != e.registers {
                return Some("sketch registers differ".to_owned());
            }
            let estimate = int(d, "unique_users") as f64;
            if estimate != hll_estimate(&e.registers).round() {
                return Some(format!(
                    "unique_users {estimate} is not the registers' estimate"
                ));
            }
            // Users sharing a register are not told apart: a few lost among a handful, three
            // standard errors (1.04/√1024 each) for large sets.
            let exact = e.users.len() as f64;
            ((estimate - exact).abs() > (exact * 0.1).max(5.0))
                .then(|| format!("unique_users {estimate}, exactly {exact}"))
        },
    );

    let found: HashMap<OrderKey, [i64; 4]> = documents(db, ORDER_AGGREGATES)
        .await?
        .iter()
        .map(|d| {
            (
                (
                    text(d, "tenant_id"),
                    text(d, "currency"),
                    granularity(&text(d, "granularity")),
                    int(d, "bucket_start"),
                ),
                [
                    int(d, "created"),
                    int(d, "paid"),
                    int(d, "cancelled"),
                    int(d, "revenue_minor"),
                ],
            )
        })
        .collect();
    let orders = diff(
        "mongo order_aggregates",
        &want.order_buckets,
        &found,
        |_| false,
        |e, f| (e != f).then(|| format!("created/paid/cancelled/revenue {f:?}, expected {e:?}")),
    );
    Ok(vec![events, orders])
}

fn granularity(label: &str) -> &'static str {
    [
        aggregator::Granularity::Minute,
        aggregator::Granularity::Hour,
        aggregator::Granularity::Day,
    ]
    .into_iter()
    .map(aggregator::Granularity::label)
    .find(|l| *l == label)
    .unwrap_or("unknown")
}

/// Keys under `pattern` on every master.
async fn scan(client: &Client, pattern: String) -> Result<Vec<String>, String> {
    let keys: Vec<Key> = client
        .scan_cluster_buffered(pattern.clone(), Some(1000), None)
        .try_collect()
        .await
        .map_err(|e| format!("SCAN {pattern}: {e}"))?;
    Ok(keys
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect())
}

/// Every hash whose key matches `pattern`, with its fields.
async fn read_hashes(
    client: &Client,
    pattern: String,
) -> Result<HashMap<String, HashMap<String, String>>, String> {
    read_keys(client, pattern, |c, k| async move { c.hgetall(k).await }).await
}

/// Reads every key under `pattern` with `read`, 64 at a time.
async fn read_keys<T, F, Fut>(
    client: &Client,
    pattern: String,
    read: F,
) -> Result<HashMap<String, T>, String>
where
    F: Fn(Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<T, fred::error::Error>>,
{
    let keys = scan(client, pattern).await?;
    stream::iter(keys)
        .map(|k| {
            let fut = read(client.clone(), k.clone());
            async move {
                fut.await
                    .map(|v| (k.clone(), v))
                    .map_err(|e| format!("{k}: {e}"))
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await
}

/// The cache-updater's keys under the configured prefix.
pub async fn check_cache(want: &Expected, client: &Client) -> Result<Vec<Row>, String> {
    let prefix = &want.settings.keys.prefix;
    let ignore = |k: &String| want.expiring.contains(k);
    let mut rows = Vec::new();

    let mut counters: HashMap<String, BTreeMap<String, i64>> =
        read_keys(client, format!("{prefix}cnt:*"), |c, k| async move {
            c.hgetall(k).await
        })
        .await?;
    counters.retain(|k, _| !k.ends_with(":applied"));
    rows.push(diff(
        "redis counters",
        &want.counters,
        &counters,
        ignore,
        |e, f| (e != f).then(|| format!("{f:?}, expected {e:?}")),
    ));

    let timelines: HashMap<String, Vec<(String, f64)>> =
        read_keys(client, format!("{prefix}tl:*"), |c, k| async move {
            c.zrange(k, 0, -1, None, false, None, true).await
        })
        .await?;
    let timelines: HashMap<String, Vec<(i64, String)>> = timelines
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|(m, s)| (s as i64, m)).collect()))
        .collect();
    rows.push(diff(
        "redis timelines",
        &want.timelines,
        &timelines,
        ignore,
        |e, f| (e != f).then(|| format!("{} entries, expected {}", f.len(), e.len())),
    ));

    let unique: HashMap<String, u64> =
        read_keys(client, format!("{prefix}uu:*"), |c, k| async move {
            c.pfcount(k).await
        })
        .await?;
    rows.push(diff(
        "redis unique users",
        &want.unique_users,
        &unique,
        ignore,
        |e, f| {
            // Redis' HyperLogLog: 0.81 % standard error; small sets are exact in practice.
            let (want, got) = (e.len() as f64, *f as f64);
            ((got - want).abs() > (want * 0.03).max(2.0))
                .then(|| format!("PFCOUNT {got}, exactly {want}"))
        },
    ));

    let sessions = read_hashes(client, format!("{prefix}sess:*")).await?;
    rows.push(diff(
        "redis sessions",
        &want.sessions,
        &sessions,
        ignore,
        |e: &Session, f| {
            let got = (
                f.get("last_event_time").and_then(|v| v.parse().ok()),
                f.get("last_event_id").cloned(),
                f.get("started_at").and_then(|v| v.parse().ok()),
            );
            (got != (Some(e.last), Some(e.last_id.clone()), Some(e.started)))
                .then(|| format!("last/last id/started {got:?}, expected {e:?}"))
        },
    ));

    let orders = read_hashes(client, format!("{prefix}ord:*")).await?;
    rows.push(diff(
        "redis orders",
        &want.cache_orders,
        &orders,
        ignore,
        |e, f| {
            let got = (
                f.get("version").and_then(|v| v.parse::<i64>().ok()),
                f.get("status").cloned(),
            );
            (got != (Some(e.0), Some(e.1.clone())))
                .then(|| format!("version/status {got:?}, expected {e:?}"))
        },
    ));
    Ok(rows)
}

/// A diverted-records topic (`<topic>.dlq` or `<topic>.late`): every expected record once per
/// consumer in `consumers` (`<binary>/<group>`) with the expected reason, nothing else from
/// them. Copies of one record (a redelivery after a crash) count once.
pub async fn check_diverted(
    store: &str,
    bootstrap: &str,
    topic: &str,
    expected: &BTreeMap<Coord, impl AsRef<str>>,
    consumers: &[String],
) -> Result<Row, String> {
    let want: HashMap<(String, Coord), String> = consumers
        .iter()
        .flat_map(|c| {
            expected
                .iter()
                .map(move |(at, reason)| ((c.clone(), at.clone()), reason.as_ref().to_owned()))
        })
        .collect();
    let mut found: HashMap<(String, Coord), String> = HashMap::new();
    let mut unreadable = 0u64;
    let exists = topics::partition_count(bootstrap, topic).is_ok();
    if exists {
        topics::scan(bootstrap, topic, async |m| {
            let consumer = topics::header(&m, header::CONSUMER).unwrap_or_default();
            if !consumers.contains(&consumer) {
                return Ok(());
            }
            match (
                topics::source_of(&m),
                topics::header(&m, header::ERROR_REASON),
            ) {
                (Some(at), Some(reason)) => {
                    found.insert((consumer, at), reason);
                }
                _ => unreadable += 1,
            }
            Ok(())
        })
        .await?;
    }
    let mut row = diff(
        store,
        &want,
        &found,
        |_| false,
        |e, f| (e != f).then(|| format!("reason {f}, expected {e}")),
    );
    for _ in 0..unreadable {
        row.wrong("a record without source or reason headers".to_owned());
    }
    Ok(row)
}

/// Records each group has not committed on its topics.
pub fn check_lag(bootstrap: &str, groups: &[(String, Vec<String>)]) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (group, group_topics) in groups {
        let mut row = Row::new(&format!("committed offsets {group}"));
        for t in group_topics {
            let (records, lag) = topics::lag(bootstrap, group, t)?;
            row.expected += records as u64;
            row.found += (records - lag) as u64;
            if lag > 0 {
                row.missing += lag as u64 - 1;
                row.missing(format!("{t}: {lag} records not committed"));
            }
        }
        rows.push(row);
    }
    Ok(rows)
}
