//! The consumer runtime against the real broker and registry, driven through `probe-consumer`
//! (the runtime with a sink that appends `topic partition offset` per written record): kill -9
//! and restart, members joining and leaving, a stalled sink, poison records, SIGTERM.
//!
//! Ground truth is read from outside: the topics' watermarks, the group's committed offsets
//! (by a client that does not join the group), the dead-letter topics, and the probe's file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eventpipe_runtime::dlq::header;
use eventpipe_tests::kafka::{header as header_text, read_all, source_of};
use eventpipe_tests::pipeline::{Coord, Fixture, Member};
use eventpipe_tests::{stack, wait_for};
use pipelinectl::generate::Options;
use pipelinectl::produce::{self, Target};
use rdkafka::Message;

/// A running `probe-consumer` and the file its sink appends to.
struct Probe {
    member: Member,
    record_to: PathBuf,
}

impl Probe {
    fn written(&self) -> Vec<Coord> {
        written(&self.record_to)
    }
}

impl std::ops::Deref for Probe {
    type Target = Member;
    fn deref(&self) -> &Member {
        &self.member
    }
}

impl std::ops::DerefMut for Probe {
    fn deref_mut(&mut self) -> &mut Member {
        &mut self.member
    }
}

trait StartProbe {
    fn start(&self, name: &str, extra: &str) -> Probe;
}

impl StartProbe for Fixture {
    fn start(&self, name: &str, extra: &str) -> Probe {
        let record_to = self.dir.path().join(format!("{name}.written"));
        let sink = format!("[sink]\nrecord_to = \"{}\"\n{extra}\n", record_to.display());
        let member = self.spawn(Path::new(env!("CARGO_BIN_EXE_probe-consumer")), name, &sink);
        Probe { member, record_to }
    }
}

fn written(path: &Path) -> Vec<Coord> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((
                it.next()?.to_owned(),
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// Nothing below a committed offset is missing from `written`.
fn assert_committed_never_passes_unwritten(
    committed: &BTreeMap<(String, i32), Option<i64>>,
    written: &BTreeSet<Coord>,
) {
    for ((t, p), c) in committed {
        if let Some(c) = c {
            for o in 0..*c {
                assert!(
                    written.contains(&(t.clone(), *p, o)),
                    "{t}/{p} committed at {c} but offset {o} was never written"
                );
            }
        }
    }
}

fn duplicates(all: &[Coord]) -> usize {
    all.len() - all.iter().collect::<BTreeSet<_>>().len()
}

fn plain(seed: u64) -> Options {
    Options {
        seed,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let f = Fixture::new().await;
    f.produce(plain(21), 30_000, None).await;
    let mut probe = f.start("a", "");
    let kills = [3_000usize, 12_000, 20_000];
    for (round, at) in kills.into_iter().enumerate() {
        wait_for(
            &format!("{at} records written before kill {round}"),
            Duration::from_secs(90),
            || {
                let n = written(&probe.record_to).len();
                async move { (n >= at).then_some(()) }
            },
        )
        .await;
        probe.kill9();
        let committed = f.committed();
        let got: BTreeSet<Coord> = written(&probe.record_to).into_iter().collect();
        assert_committed_never_passes_unwritten(&committed, &got);
        assert!(
            committed.values().any(Option::is_some),
            "something was committed before kill {round}"
        );
        // Restarting appends to the same file.
        probe = f.start("a", "");
    }
    f.wait_caught_up(Duration::from_secs(120)).await;
    let all = probe.written();
    let got: BTreeSet<Coord> = all.iter().cloned().collect();
    let expected = f.all_offsets();
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    assert!(missing.is_empty(), "never written: {missing:?}");
    assert_eq!(got.len(), expected.len(), "only source offsets written");
    // Redelivery after each kill is bounded by what was in flight.
    assert!(
        duplicates(&all) <= kills.len() * 6 * 5_000,
        "{} duplicates",
        duplicates(&all)
    );
    let (status, _) = probe.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "clean exit after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_during_the_stream_without_loss() {
    let f = Fixture::new().await;
    let producing = {
        let target_count = 30_000;
        let f_platform = f.platform.clone();
        let f_orders = f.orders.clone();
        let ids = f.ids;
        tokio::spawn(async move {
            let target = Target {
                bootstrap: stack().kafka_bootstrap,
                platform_topic: f_platform,
                orders_topic: f_orders,
                rate: Some(2_000.0),
                count: target_count,
                progress: false,
            };
            produce::run(plain(22), ids, &target)
                .await
                .expect("produced")
        })
    };
    let a = f.start("a", "");
    let mut b = f.start("b", "");
    wait_for(
        "a and b to share the partitions",
        Duration::from_secs(60),
        || async {
            let (x, y) = (assigned(&a).await?, assigned(&b).await?);
            (x > 0.0 && y > 0.0 && x + y == 6.0).then_some(())
        },
    )
    .await;
    let c = f.start("c", "");
    wait_for("c to get partitions", Duration::from_secs(60), || async {
        (assigned(&c).await? > 0.0).then_some(())
    })
    .await;
    let (status, _) = b.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "b left cleanly: {status}");
    wait_for(
        "a and c to hold every partition",
        Duration::from_secs(60),
        || async {
            let (x, y) = (assigned(&a).await?, assigned(&c).await?);
            (x + y == 6.0).then_some(())
        },
    )
    .await;
    let summary = producing.await.expect("producer task");
    assert_eq!(summary.acked, 30_000);
    f.wait_caught_up(Duration::from_secs(120)).await;

    let mut all = a.written();
    all.extend(b.written());
    all.extend(c.written());
    let got: BTreeSet<Coord> = all.iter().cloned().collect();
    let expected = f.all_offsets();
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    assert!(missing.is_empty(), "never written: {missing:?}");
    // Revoked partitions commit before they move, so only a batch abandoned mid-write could
    // repeat; at most the in-flight window of the partitions that moved.
    let dups = duplicates(&all);
    assert!(
        dups <= 6 * 500,
        "{dups} duplicates exceed the in-flight window"
    );
    eprintln!("members test: {} records, {dups} duplicates", got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_stalled_beyond_max_poll_interval_keeps_membership_and_memory() {
    let f = Fixture::new().await;
    let (stall, extra) = stalled(&f);
    f.produce(plain(23), 30_000, None).await;
    let mut probe = f.start("s", &extra);
    wait_for(
        "every partition paused by its stalled write",
        Duration::from_secs(60),
        || async {
            (probe.metric_sum("eventpipe_paused_partitions", &[]).await? == 6.0).then_some(())
        },
    )
    .await;
    let rss_before = probe.rss_bytes();
    let stall_started = Instant::now();
    f.produce(plain(24), 100_000, None).await;
    let backlog = 130_000.0 - 6.0 * 500.0;
    wait_for(
        "lag to cover the backlog",
        Duration::from_secs(60),
        || async {
            (probe
                .metric_sum("eventpipe_consumer_lag_records", &[])
                .await?
                >= backlog)
                .then_some(())
        },
    )
    .await;
    // The stall must outlast max.poll.interval.ms (8 s in the probe's config).
    wait_for(
        "the stall to outlast max.poll.interval.ms",
        Duration::from_secs(60),
        || async {
            let lag_s = probe.metric_max("eventpipe_consumer_lag_seconds").await?;
            (stall_started.elapsed() > Duration::from_secs(10) && lag_s >= 9.0).then_some(())
        },
    )
    .await;
    let rss_during = probe.rss_bytes();
    let in_flight = probe
        .metric_sum("eventpipe_in_flight_records", &[])
        .await
        .expect("in-flight gauge");
    assert!(
        in_flight <= 6.0 * 500.0,
        "in flight {in_flight}: more than one batch per partition"
    );
    std::fs::remove_file(&stall).expect("release the stall");
    f.wait_caught_up(Duration::from_secs(180)).await;
    wait_for("lag to return to zero", Duration::from_secs(30), || async {
        (probe
            .metric_sum("eventpipe_consumer_lag_records", &[])
            .await?
            == 0.0)
            .then_some(())
    })
    .await;

    let all = probe.written();
    assert_eq!(
        duplicates(&all),
        0,
        "a member that never left redelivers nothing"
    );
    assert_eq!(
        all.iter().cloned().collect::<BTreeSet<_>>(),
        f.all_offsets(),
        "everything written after the stall"
    );
    let assigns = probe
        .metric_sum("eventpipe_rebalances_total", &["kind=\"assign\""])
        .await
        .expect("rebalance counter");
    assert_eq!(
        assigns, 1.0,
        "one assignment: the member never left the group"
    );
    let grown = rss_during.saturating_sub(rss_before);
    eprintln!(
        "stall test: RSS {} MiB before, {} MiB after 100k more records of backlog",
        rss_before >> 20,
        rss_during >> 20
    );
    assert!(
        grown < 16 << 20,
        "RSS grew by {} MiB while the backlog grew by 100k records",
        grown >> 20
    );
    let (status, _) = probe.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
    assert!(
        !probe.log_text().contains("maximum poll interval"),
        "librdkafka reported no poll-interval expiry"
    );
}

/// A stall file, present (the probe's writes block until it is removed), and the probe
/// config that uses it, pausing a partition after 500 ms of writing.
fn stalled(f: &Fixture) -> (PathBuf, String) {
    let stall = f.dir.path().join("stall");
    std::fs::write(&stall, "").expect("stall file");
    let extra = format!(
        "stall_file = \"{}\"\n\n[flow]\npause_after_ms = 500\n",
        stall.display()
    );
    (stall, extra)
}

async fn assigned(p: &Probe) -> Option<f64> {
    p.metric_sum("eventpipe_assigned_partitions", &[]).await
}

/// librdkafka keeps an application's pause across rebalances: partitions a member paused
/// (stalled writes) and lost to another member must be fetched again when they come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_paused_when_revoked_flow_again_when_they_come_back() {
    let f = Fixture::new().await;
    let (stall, extra) = stalled(&f);
    f.produce(plain(25), 6_000, None).await;
    let a = f.start("a", &extra);
    wait_for(
        "every partition of a paused by its stalled write",
        Duration::from_secs(60),
        || async { (a.metric_sum("eventpipe_paused_partitions", &[]).await? == 6.0).then_some(()) },
    )
    .await;
    let mut b = f.start("b", "");
    wait_for(
        "b to take some of a's paused partitions",
        Duration::from_secs(60),
        || async {
            let (x, y) = (assigned(&a).await?, assigned(&b).await?);
            (y > 0.0 && x + y == 6.0).then_some(())
        },
    )
    .await;
    std::fs::remove_file(&stall).expect("release the stall");
    let (status, _) = b.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "b left cleanly: {status}");
    wait_for(
        "a to hold every partition again",
        Duration::from_secs(60),
        || async { (assigned(&a).await? == 6.0).then_some(()) },
    )
    .await;
    f.produce(plain(26), 6_000, None).await;
    f.wait_caught_up(Duration::from_secs(90)).await;

    let mut all = a.written();
    all.extend(b.written());
    assert_eq!(
        all.iter().cloned().collect::<BTreeSet<_>>(),
        f.all_offsets(),
        "every record written, including those of the partitions that came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_late_records_land_in_their_topics_with_headers_and_the_partition_flows() {
    let f = Fixture::new().await;
    let opts = Options {
        seed: 25,
        poison: 0.03,
        ..Options::default()
    };
    let summary = f.produce(opts, 4_000, None).await;
    let mut probe = f.start(
        "p",
        "reject_event_type = \"security.alert\"\nlate_event_type = \"user.logout\"",
    );
    f.wait_caught_up(Duration::from_secs(120)).await;
    let late_metric = probe
        .metric_sum("eventpipe_records_late_total", &["reason=\"probe_late\""])
        .await;
    let (status, _) = probe.terminate(Duration::from_secs(30)).await;
    assert!(status.success());

    let bootstrap = stack().kafka_bootstrap;
    let mut source: HashMap<Coord, rdkafka::message::OwnedMessage> = HashMap::new();
    for t in f.topics() {
        for m in read_all(&bootstrap, t) {
            source.insert((t.to_owned(), m.partition(), m.offset()), m);
        }
    }
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let mut dead: BTreeSet<Coord> = BTreeSet::new();
    for t in f.topics() {
        for m in read_all(&bootstrap, &format!("{t}.dlq")) {
            let h = |k: &str| header_text(&m, k);
            assert_eq!(h(header::ERROR_CLASS).as_deref(), Some("permanent"));
            assert_eq!(h(header::SOURCE_TOPIC).as_deref(), Some(t));
            assert_eq!(
                h(header::CONSUMER),
                Some(format!("probe-consumer/{}", f.group))
            );
            assert!(h(header::SOURCE_TIMESTAMP).is_some());
            assert!(h(header::ERROR_MESSAGE).is_some_and(|m| !m.is_empty()));
            let reason = h(header::ERROR_REASON).expect("reason header");
            let coord = source_of(&m);
            let original = source.get(&coord).expect("the source record exists");
            assert_eq!(original.payload(), m.payload(), "payload kept at {coord:?}");
            assert_eq!(original.key(), m.key(), "key kept at {coord:?}");
            let has_id = h(header::SCHEMA_ID).is_some();
            match reason.as_str() {
                "missing_key" | "empty_value" | "bad_magic_byte" => assert!(!has_id, "{reason}"),
                "unknown_schema_id"
                | "incompatible_writer_schema"
                | "malformed_body"
                | "probe_rejected" => assert!(has_id, "{reason} carries the schema id"),
                _ => {}
            }
            assert!(dead.insert(coord), "dead-lettered once");
            *by_reason.entry(reason).or_default() += 1;
        }
    }
    let rejected = by_reason.remove("probe_rejected").unwrap_or(0);
    assert!(rejected > 0, "the sink rejected some security.alert events");
    let expected: BTreeMap<String, u64> = summary
        .poison
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(
        by_reason, expected,
        "one dead letter per poison record, by class"
    );
    assert_eq!(expected.len(), 6, "all six poison classes produced");

    // Late records: in `<topic>.late`, class `late`, original payload, counted.
    let mut late: BTreeSet<Coord> = BTreeSet::new();
    for t in f.topics() {
        for m in read_all(&bootstrap, &format!("{t}.late")) {
            let h = |k: &str| header_text(&m, k);
            assert_eq!(h(header::ERROR_CLASS).as_deref(), Some("late"));
            assert_eq!(h(header::ERROR_REASON).as_deref(), Some("probe_late"));
            let coord = source_of(&m);
            let original = source.get(&coord).expect("the source record exists");
            assert_eq!(original.payload(), m.payload(), "payload kept at {coord:?}");
            assert!(late.insert(coord), "sent to the late topic once");
        }
    }
    assert!(
        !late.is_empty(),
        "the sink found some user.logout events late"
    );
    assert_eq!(late_metric, Some(late.len() as f64), "late records counted");

    let got: BTreeSet<Coord> = written(&probe.record_to).into_iter().collect();
    assert!(
        got.is_disjoint(&dead) && got.is_disjoint(&late) && dead.is_disjoint(&late),
        "each record in exactly one place"
    );
    let all: BTreeSet<Coord> = got.union(&dead).chain(late.iter()).cloned().collect();
    assert_eq!(
        all,
        f.all_offsets(),
        "every record written, dead-lettered or sent to the late topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_commits_so_a_restart_redelivers_nothing_written() {
    let f = Fixture::new().await;
    f.produce(plain(26), 20_000, None).await;
    let mut probe = f.start("t", "");
    let ready = format!("http://127.0.0.1:{}/readyz", probe.admin_port());
    wait_for(
        "/readyz to report ready",
        Duration::from_secs(60),
        || async {
            let status = reqwest::get(&ready).await.ok()?.status();
            status.is_success().then_some(())
        },
    )
    .await;
    wait_for("some records written", Duration::from_secs(60), || {
        let n = written(&probe.record_to).len();
        async move { (n >= 3_000).then_some(()) }
    })
    .await;
    let (status, took) = probe.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "exit 0 after SIGTERM: {status}");
    assert!(
        took < Duration::from_secs(20),
        "within the deadline: {took:?}"
    );
    let first = probe.written();
    let committed = f.committed();
    for (t, p, o) in &first {
        let c = committed[&(t.clone(), *p)].expect("committed");
        assert!(
            *o < c,
            "{t}/{p}@{o} written but not committed (committed {c})"
        );
    }
    assert_committed_never_passes_unwritten(&committed, &first.iter().cloned().collect());

    let mut probe = f.start("t", "");
    f.wait_caught_up(Duration::from_secs(120)).await;
    let (status, _) = probe.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
    let all = probe.written();
    assert_eq!(
        duplicates(&all),
        0,
        "nothing written before SIGTERM came again"
    );
    assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), f.all_offsets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_sink_error_commits_what_is_durable_and_exits_non_zero() {
    let f = Fixture::new().await;
    f.produce(plain(27), 10_000, None).await;
    let mut probe = f.start("f", "fatal_after = 2000");
    let status = wait_for(
        "the probe to stop on its own",
        Duration::from_secs(60),
        || {
            let s = probe.exited();
            async move { s }
        },
    )
    .await;
    assert_eq!(status.code(), Some(1), "a fatal error exits with status 1");
    let written: BTreeSet<Coord> = probe.written().into_iter().collect();
    let committed = f.committed();
    assert_committed_never_passes_unwritten(&committed, &written);
    let committed_records: i64 = committed.values().flatten().sum();
    assert_eq!(
        committed_records as usize,
        written.len(),
        "everything written (and nothing more) was committed before the exit"
    );
    assert!(
        probe.log_text().contains("probe configured to fail"),
        "the cause is logged"
    );
}

#[test]
fn every_shipped_pipeline_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for binary in [
        "ingest-writer",
        "audit-writer",
        "aggregator",
        "cache-updater",
    ] {
        let config = root.join("pipelines").join(format!("{binary}.toml"));
        let out = std::process::Command::new(eventpipe_tests::pipeline::workspace_binary(binary))
            .arg("--config")
            .arg(&config)
            .arg("--check")
            // The environment may carry the test stack's overrides; the file alone is checked.
            .env_clear()
            .output()
            .expect("binary runs");
        assert!(
            out.status.success(),
            "{binary} --check {}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
