//! The Redis Cluster is real: fred in cluster mode routes keys to all three masters, and a write
//! keeps working after its slot moves to another master (the client follows the MOVED).

use std::collections::BTreeSet;

use eventpipe_tests::redis::{master_of, masters, node_cli};
use eventpipe_tests::{stack, unique};
use fred::prelude::*;
use fred::util::redis_keyslot;

fn host_port(node: &str) -> (String, u16) {
    let (h, p) = node.rsplit_once(':').expect("host:port");
    (h.to_owned(), p.parse().expect("port"))
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
        let addr = master_of(&masters, redis_keyslot(k.as_bytes()))
            .addr
            .clone();
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
    let from = master_of(&masters, slot);
    let to = masters
        .iter()
        .find(|m| m.id != from.id)
        .expect("another master");
    let (from_id, from_addr) = (from.id.clone(), from.addr.clone());
    let (to_id, to_addr) = (to.id.clone(), to.addr.clone());
    let master_addrs: Vec<String> = masters.iter().map(|m| m.addr.clone()).collect();
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
