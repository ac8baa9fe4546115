//! Reading the cache back: what `pipelinectl cache get` prints.

use std::collections::{BTreeMap, HashMap};

use fred::prelude::*;

use crate::keys;

/// Counts by event type for every minute of `from..=to` (`yyyyMMddHHmm`, UTC) that has any.
pub async fn counters(
    client: &Client,
    prefix: &str,
    tenant: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<BTreeMap<String, BTreeMap<String, i64>>, Error> {
    let mut out = BTreeMap::new();
    let mut t = keys::floor(from_ms, keys::MINUTE_MS);
    while t <= to_ms {
        let minute =
            keys::minute(t).map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
        let key = format!("{prefix}{}", keys::counters(tenant, &minute));
        let counts: HashMap<String, i64> = client.hgetall(&key).await?;
        if !counts.is_empty() {
            out.insert(minute, counts.into_iter().collect());
        }
        t += keys::MINUTE_MS;
    }
    Ok(out)
}

/// One timeline entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub event_time: i64,
    pub event_type: String,
    pub event_id: String,
}

/// A user's timeline, newest first.
pub async fn timeline(
    client: &Client,
    prefix: &str,
    tenant: &str,
    user: &str,
) -> Result<Vec<Entry>, Error> {
    let key = format!("{prefix}{}", keys::timeline(tenant, user));
    let raw: Vec<(String, f64)> = client.zrange(&key, 0, -1, None, true, None, true).await?;
    Ok(raw
        .into_iter()
        .map(|(member, score)| {
            let (event_type, event_id) = member.split_once('|').unwrap_or(("", &member));
            Entry {
                event_time: score as i64,
                event_type: event_type.to_owned(),
                event_id: event_id.to_owned(),
            }
        })
        .collect())
}

/// Estimated distinct users of a tenant on `day` (`yyyyMMdd`), from the HyperLogLog
/// (standard error 0.81 %).
pub async fn unique_users(
    client: &Client,
    prefix: &str,
    tenant: &str,
    day: &str,
) -> Result<u64, Error> {
    client
        .pfcount(format!("{prefix}{}", keys::unique_users(tenant, day)))
        .await
}

/// A session's hash (empty when unknown or expired).
pub async fn session(
    client: &Client,
    prefix: &str,
    tenant: &str,
    session: &str,
) -> Result<BTreeMap<String, String>, Error> {
    let map: HashMap<String, String> = client
        .hgetall(format!("{prefix}{}", keys::session(tenant, session)))
        .await?;
    Ok(map.into_iter().collect())
}

/// An order's hash (empty when unknown or expired).
pub async fn order(
    client: &Client,
    prefix: &str,
    tenant: &str,
    order_id: &str,
) -> Result<BTreeMap<String, String>, Error> {
    let map: HashMap<String, String> = client
        .hgetall(format!("{prefix}{}", keys::order(tenant, order_id)))
        .await?;
    Ok(map.into_iter().collect())
}
