//! A Redis master dies in the middle of the stream: its replica takes over, `cache-updater`
//! recovers on its own, and the cache ends exactly as the oracle says. The killed node is then
//! started again and rejoins as a replica, so the cluster is whole for the next test run.

use std::path::Path;
use std::time::Duration;

use eventpipe_tests::pipeline::{assert_clean, workspace_binary, Fixture};
use eventpipe_tests::redis::{client, cluster_healthy, master_of, masters, stack_spec};
use eventpipe_tests::{stack, unique, wait_for};
use local_stack::services::{self, Service};
use pipelinectl::generate::Options;
use pipelinectl::verify::stores::check_cache;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_dies_mid_stream_and_the_cache_still_matches_the_oracle() {
    let nodes = stack().redis_nodes;
    eventpipe_tests::redis::wait_healthy().await;
    let f = Fixture::new().await;
    let prefix = format!("{}:", unique("failover"));
    let now = bson::DateTime::now().timestamp_millis();
    let opts = Options {
        seed: 71,
        tenants: 30,
        duplicates: 0.02,
        out_of_order: 0.1,
        start_time_ms: now - now % 60_000,
        step_ms: 5,
        ..Options::default()
    };
    let count = 12_000;
    let producing = {
        let (f_platform, f_orders, ids, opts) =
            (f.platform.clone(), f.orders.clone(), f.ids, opts.clone());
        tokio::spawn(async move {
            let target = pipelinectl::produce::Target {
                bootstrap: stack().kafka_bootstrap,
                platform_topic: f_platform,
                orders_topic: f_orders,
                rate: Some(1_000.0),
                count,
                progress: false,
            };
            pipelinectl::produce::run(opts, ids, &target)
                .await
                .expect("produced")
        })
    };
    let sink = format!(
        "[sink]\nnodes = [{}]\nreplica_ack_timeout_ms = 1000\n\n[sink.keys]\nprefix = \"{prefix}\"\n",
        nodes.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
    );
    let member = f.spawn(&workspace_binary("cache-updater"), "c", &sink);
    let written_at_kill = wait_for(
        "the first 2,000 records written",
        Duration::from_secs(120),
        || async {
            member
                .metric_sum("eventpipe_records_written_total", &[])
                .await
                .filter(|n| *n >= 2_000.0)
        },
    )
    .await;

    // The master that serves the busiest tenant's slot dies.
    let slot = fred::util::redis_keyslot(cache_updater::keys::tag("tenant-0001").as_bytes());
    let victim = master_of(&masters(&nodes[0]), slot).addr.clone();
    let port: u16 = victim
        .rsplit_once(':')
        .expect("port")
        .1
        .parse()
        .expect("port");
    let spec = stack_spec();
    assert!(
        services::kill(&spec, Service::Redis(port)),
        "killed {victim}"
    );
    let survivor = nodes
        .iter()
        .find(|n| **n != victim)
        .expect("another node")
        .clone();
    wait_for(
        "a replica to take over the slot",
        Duration::from_secs(60),
        || async {
            let m = masters(&survivor);
            (m.len() == 3 && master_of(&m, slot).addr != victim).then_some(())
        },
    )
    .await;

    let summary = producing.await.expect("producer task");
    assert_eq!(summary.acked, count);
    f.wait_caught_up(Duration::from_secs(240)).await;
    let redis = client().await;
    let rows = check_cache(&f.expected(&prefix).await, &redis)
        .await
        .expect("read the cache");

    // Bring the node back as a replica before judging, so a failure leaves the cluster whole.
    services::start(&spec, Service::Redis(port), Path::new(""))
        .await
        .expect("the killed node starts again");
    wait_for(
        "the cluster whole again",
        Duration::from_secs(120),
        || async { cluster_healthy(&nodes).then_some(()) },
    )
    .await;

    assert_clean(&rows);
    assert!(
        written_at_kill < count as f64,
        "the master died mid-stream ({written_at_kill} of {count} written)"
    );
    let degraded = member
        .metric_sum(cache_updater::UNDER_REPLICATED, &[])
        .await
        .unwrap_or_default();
    assert!(
        degraded > 0.0,
        "writes went to the promoted replica, which had no replica of its own yet"
    );
}
