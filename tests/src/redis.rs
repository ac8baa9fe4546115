//! Reading a Redis Cluster from outside the pipeline, and crashing its nodes.

use std::collections::BTreeMap;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use futures::TryStreamExt;
use local_stack::StackSpec;

use crate::stack;

/// A cluster client on the stack under test.
pub async fn client() -> Client {
    eventpipe_stores::RedisConfig::new(stack().redis_nodes)
        .connect()
        .await
        .expect("Redis Cluster client")
}

async fn custom<R: FromValue>(client: &Client, cmd: &'static str, args: Vec<String>) -> R {
    client
        .custom(
            CustomCommand::new_static(cmd, ClusterHash::FirstKey, false),
            args,
        )
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// Every key under `prefix` (on every master) with its content and absolute expiry, as text:
/// hashes as sorted `field=value`, sorted sets as `member@score` in rank order, HyperLogLogs
/// (`uu:` keys) as their count.
pub async fn snapshot(client: &Client, prefix: &str) -> BTreeMap<String, String> {
    let keys: Vec<Key> = client
        .scan_cluster_buffered(format!("{prefix}*"), Some(1000), None)
        .try_collect()
        .await
        .expect("SCAN");
    let mut out = BTreeMap::new();
    for key in keys {
        let name = key.as_str().expect("utf-8 key").to_owned();
        let kind = name[prefix.len()..].split(':').next().unwrap_or_default();
        let value = match kind {
            "tl" => {
                let z: Vec<(String, f64)> = client
                    .zrange(&name, 0, -1, None, false, None, true)
                    .await
                    .expect("ZRANGE");
                z.iter()
                    .map(|(m, s)| format!("{m}@{s}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            "uu" => {
                let n: u64 = client.pfcount(&name).await.expect("PFCOUNT");
                n.to_string()
            }
            _ => {
                let h: BTreeMap<String, String> = client.hgetall(&name).await.expect("HGETALL");
                h.iter()
                    .map(|(f, v)| format!("{f}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let expires: i64 = custom(client, "PEXPIRETIME", vec![name.clone()]).await;
        out.insert(name, format!("{value} expires={expires}"));
    }
    out
}

/// The stack whose endpoints the tests use (to stop and start its services).
pub fn stack_spec() -> StackSpec {
    let want = stack();
    let dir = local_stack::cache_dir().join("stacks");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| StackSpec::load(&name).ok())
        .find(|s| s.endpoints() == want)
        .expect("the stack under test is a local stack")
}

/// `redis-cli` against one node (not in cluster mode); `None` if it cannot be reached.
pub fn try_node_cli(node: &str, args: &[&str]) -> Option<String> {
    let (host, port) = node.rsplit_once(':').expect("host:port");
    let out = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .expect("redis-cli runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `redis-cli` against one node (not in cluster mode): what the node itself holds.
pub fn node_cli(node: &str, args: &[&str]) -> String {
    try_node_cli(node, args).unwrap_or_else(|| panic!("redis-cli {args:?} against {node} failed"))
}

/// A master of the cluster and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub id: String,
    pub addr: String,
    pub slots: Vec<(u16, u16)>,
}

impl Master {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// The live masters that serve slots, from `CLUSTER NODES` on `seed`.
pub fn masters(seed: &str) -> Vec<Master> {
    let mut out = Vec::new();
    for line in node_cli(seed, &["cluster", "nodes"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let addr = f[1].split('@').next().expect("addr").to_owned();
        let slots = f[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .map(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().expect("slot"), b.parse().expect("slot")),
                None => {
                    let s = r.parse().expect("slot");
                    (s, s)
                }
            })
            .collect::<Vec<_>>();
        if !slots.is_empty() {
            out.push(Master {
                id: f[0].to_owned(),
                addr,
                slots,
            });
        }
    }
    out
}

/// The master serving `slot`.
pub fn master_of(masters: &[Master], slot: u16) -> &Master {
    masters
        .iter()
        .find(|m| m.serves(slot))
        .unwrap_or_else(|| panic!("slot {slot} has a master"))
}

/// Whether every node of the cluster reports `cluster_state:ok`, no node is flagged failing,
/// there are three masters and three replicas, and every replica is in sync with its master.
pub fn cluster_healthy(nodes: &[String]) -> bool {
    let Some(table) = try_node_cli(&nodes[0], &["cluster", "nodes"]) else {
        return false;
    };
    let masters = table.lines().filter(|l| l.contains("master")).count();
    let replicas = table.lines().filter(|l| l.contains("slave")).count();
    if table.contains("fail") || masters != 3 || replicas != 3 {
        return false;
    }
    nodes.iter().all(|n| {
        let Some(replication) = try_node_cli(n, &["info", "replication"]) else {
            return false;
        };
        let synced = if replication.contains("role:slave") {
            replication.contains("master_link_status:up")
        } else {
            replication.contains("state=online")
        };
        synced
            && try_node_cli(n, &["cluster", "info"]).is_some_and(|i| i.contains("cluster_state:ok"))
    })
}

/// Waits until [`cluster_healthy`] (a previous failover test may still be resyncing).
pub async fn wait_healthy() {
    let nodes = stack().redis_nodes;
    crate::wait_for(
        "a healthy Redis Cluster",
        std::time::Duration::from_secs(120),
        || async { cluster_healthy(&nodes).then_some(()) },
    )
    .await;
}
