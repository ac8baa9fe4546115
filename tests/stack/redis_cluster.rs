//! The Redis Cluster is real: fred in cluster mode routes keys to all three masters, and a write
//! keeps working after its slot moves to another master (the client follows the MOVED).

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use eventpipe_tests::{stack, unique};
use fred::prelude::*;
use fred::util::redis_keyslot;

fn host_port(node: &str) -> (String, u16) {
    let (h, p) = node.rsplit_once(':').expect("host:port");
    (h.to_owned(), p.parse().expect("port"))
}

/// `redis-cli` against one node (not in cluster mode): what the node itself holds.
fn node_cli(node: &str, args: &[&str]) -> String {
    let (host, port) = host_port(node);
    let out = Command::new("redis-cli")
        .args(["-h", &host, "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Masters by node id: address and the slot ranges each one serves.
type Masters = HashMap<String, (String, Vec<(u16, u16)>)>;

/// The masters, from `CLUSTER NODES`.
fn masters(seed: &str) -> Masters {
    let mut out = HashMap::new();
    for line in node_cli(seed, &["cluster", "nodes"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let addr = f[1].split('@').next().expect("addr").to_owned();
        let ranges = f[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .map(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().expect("slot"), b.parse().expect("slot")),
                None => {
                    let s = r.parse().expect("slot");
                    (s, s)
                }
            })
            .collect();
        out.insert(f[0].to_owned(), (addr, ranges));
    }
    out
}

fn owner(masters: &Masters, slot: u16) -> (String, String) {
    masters
        .iter()
        .find(|(_, (_, ranges))| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .map(|(id, (addr, _))| (id.clone(), addr.clone()))
        .expect("every slot has a master")
}

/// Moves `slot` with its keys from one master to another, as `redis-cli --cluster reshard`
/// does: IMPORTING/MIGRATING, MIGRATE the keys, then assign the slot on every master.
fn move_slot(slot: u16, from: (&str, &str), to: (&str, &str), all_masters: &[String]) {
    let s = slot.to_string();
    node_cli(to.1, &["cluster", "setslot", &s, "importing", from.0]);
    node_cli(from.1, &["cluster", "setslot", &s, "migrating", to.0]);
    let keys = node_cli(from.1, &["cluster", "getkeysinslot", &s, "1000"]);
    let (to_host, to_port) = host_port(to.1);
    for key in keys.lines().filter(|k| !k.is_empty()) {
        node_cli(
            from.1,
            &["migrate", &to_host, &to_port.to_string(), key, "0", "5000"],
        );
    }
    for m in all_masters {
        node_cli(m, &["cluster", "setslot", &s, "node", to.0]);
    }
}

#[tokio::test]
async fn writes_route_across_slots_and_survive_a_slot_move() {
    let nodes = stack().redis_nodes;
    let hosts: Vec<(String, u16)> = nodes.iter().map(|n| host_port(n)).collect();
    let config = Config {
        server: ServerConfig::new_clustered(hosts),
        ..Config::default()
    };
    let client = Builder::from_config(config).build().expect("client");
    client.init().await.expect("connected to the cluster");

    // 300 keys land on all three masters, each on the master that owns its slot.
    let prefix = unique("stack-test");
    let keys: Vec<String> = (0..300).map(|i| format!("{prefix}:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let _: () = client
            .set(k, i as i64, None, None, false)
            .await
            .expect("set");
    }
    let masters = masters(&nodes[0]);
    assert_eq!(masters.len(), 3, "three masters");
    let mut used = BTreeSet::new();
    for (i, k) in keys.iter().enumerate() {
        let (_, addr) = owner(&masters, redis_keyslot(k.as_bytes()));
        assert_eq!(
            node_cli(&addr, &["get", k]),
            i.to_string(),
            "{k} on its slot's master"
        );
        used.insert(addr);
    }
    assert_eq!(used.len(), 3, "keys spread over every master");

    // Move one key's slot to another master behind the client's back; the next write gets
    // MOVED, which the client follows.
    let key = &keys[7];
    let slot = redis_keyslot(key.as_bytes());
    let (from_id, from_addr) = owner(&masters, slot);
    let (to_id, (to_addr, _)) = masters
        .iter()
        .find(|(id, _)| **id != from_id)
        .map(|(id, v)| (id.clone(), v.clone()))
        .expect("another master");
    let master_addrs: Vec<String> = masters.values().map(|(a, _)| a.clone()).collect();
    move_slot(
        slot,
        (&from_id, &from_addr),
        (&to_id, &to_addr),
        &master_addrs,
    );

    let after: i64 = client.incr(key).await.expect("incr after the slot moved");
    assert_eq!(after, 8);
    assert_eq!(
        node_cli(&to_addr, &["get", key]),
        "8",
        "the write went to the new owner"
    );
    let on_old = node_cli(&from_addr, &["get", key]);
    assert!(on_old.starts_with("MOVED"), "old owner redirects: {on_old}");

    // Put the slot back so the cluster layout stays as `stack up` made it.
    move_slot(
        slot,
        (&to_id, &to_addr),
        (&from_id, &from_addr),
        &master_addrs,
    );
    let back: i64 = client
        .incr(key)
        .await
        .expect("incr after the slot moved back");
    assert_eq!(back, 9);

    let _: i64 = client.del(keys).await.unwrap_or_default();
    client.quit().await.expect("quit");
}
