//! Running a consumer binary against fresh topics: the [`Fixture`] creates the topics (with
//! their `.dlq` companions), registers the schemas and names a group and a database; a
//! [`Member`] is one running consumer process, started from a generated config file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use eventpipe_runtime::config::RegistryConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pipelinectl::generate::Options;
use pipelinectl::produce::{self, Summary, Target};
use pipelinectl::setup::{self, SchemaIds};
use pipelinectl::verify::{self, Expected, Row, Settings};

use crate::kafka::{committed_offsets, high_watermarks};
use crate::{database, group, stack, topic, wait_for};

pub const PARTITIONS: i32 = 3;

/// (topic, partition, offset)
pub type Coord = (String, i32, i64);

/// Fresh topics (with `.dlq` and `.late` companions), registered schemas, a group, a database
/// name and a scratch directory.
pub struct Fixture {
    pub platform: String,
    pub orders: String,
    pub group: String,
    pub database: String,
    pub ids: SchemaIds,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn new() -> Self {
        let s = stack();
        let (platform, orders) = (topic(), topic());
        let all: Vec<String> = [&platform, &orders]
            .iter()
            .flat_map(|t| [t.to_string(), format!("{t}.dlq"), format!("{t}.late")])
            .collect();
        setup::create_topics(&s.kafka_bootstrap, &all, PARTITIONS)
            .await
            .expect("topics");
        let ids = setup::register_schemas(&s.schema_registry_url, &platform, &orders)
            .await
            .expect("schemas");
        Self {
            platform,
            orders,
            group: group(),
            database: database(),
            ids,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn topics(&self) -> [&str; 2] {
        [&self.platform, &self.orders]
    }

    /// Produces `count` generated events to the fixture's topics, all acknowledged.
    pub async fn produce(&self, opts: Options, count: u64, rate: Option<f64>) -> Summary {
        let target = Target {
            bootstrap: stack().kafka_bootstrap,
            platform_topic: self.platform.clone(),
            orders_topic: self.orders.clone(),
            rate,
            count,
            progress: false,
        };
        let summary = produce::run(opts, self.ids, &target)
            .await
            .expect("produced");
        assert_eq!((summary.acked, summary.failed), (count, 0), "{summary}");
        summary
    }

    /// What the stores must hold after consuming the fixture's topics (`pipelinectl verify`'s
    /// expectation), with Redis keys under `prefix`.
    pub async fn expected(&self, prefix: &str) -> Expected {
        let s = stack();
        let mut settings = Settings::default();
        settings.keys.prefix = prefix.to_owned();
        let registry = RegistryConfig {
            url: s.schema_registry_url,
            username: None,
            password: None,
        };
        let topics = [self.platform.clone(), self.orders.clone()];
        verify::expected_from_topics(&s.kafka_bootstrap, &registry, &topics, settings)
            .await
            .expect("expected state from the topics")
    }

    /// Every offset of both source topics.
    pub fn all_offsets(&self) -> BTreeSet<Coord> {
        let bootstrap = stack().kafka_bootstrap;
        let mut out = BTreeSet::new();
        for t in self.topics() {
            for (p, high) in high_watermarks(&bootstrap, t).into_iter().enumerate() {
                out.extend((0..high).map(|o| (t.to_owned(), p as i32, o)));
            }
        }
        out
    }

    /// The group's committed offset per (topic, partition).
    pub fn committed(&self) -> BTreeMap<(String, i32), Option<i64>> {
        let bootstrap = stack().kafka_bootstrap;
        let mut out = BTreeMap::new();
        for t in self.topics() {
            for (p, c) in committed_offsets(&bootstrap, &self.group, t)
                .into_iter()
                .enumerate()
            {
                out.insert((t.to_owned(), p as i32), c);
            }
        }
        out
    }

    /// Whether the group has committed the end of every partition.
    pub fn caught_up(&self) -> bool {
        let bootstrap = stack().kafka_bootstrap;
        self.topics().iter().all(|t| {
            let highs = high_watermarks(&bootstrap, t);
            let committed = committed_offsets(&bootstrap, &self.group, t);
            highs
                .iter()
                .zip(committed)
                .all(|(h, c)| *h == 0 || c == Some(*h))
        })
    }

    /// Moves the group's committed offsets back to the beginning of every partition (the
    /// group must have no running member).
    pub fn reset_group(&self) {
        let bootstrap = stack().kafka_bootstrap;
        for t in self.topics() {
            crate::kafka::reset_offsets(&bootstrap, &self.group, t);
        }
        assert!(
            self.committed().values().all(|c| *c == Some(0)),
            "offsets reset to 0: {:?}",
            self.committed()
        );
    }

    pub async fn wait_caught_up(&self, timeout: Duration) {
        wait_for(
            "the group to commit the end of every partition",
            timeout,
            || async { self.caught_up().then_some(()) },
        )
        .await;
    }

    /// A consumer config for the fixture's topics and group with short timings, followed by
    /// `sink` (the `[sink]` section and anything after it).
    pub fn config(&self, admin: u16, sink: &str) -> String {
        let s = stack();
        format!(
            r#"
[consumer]
group_id = "{group}"
topics = ["{platform}", "{orders}"]
commit_interval_ms = 200
lag_interval_ms = 300
shutdown_deadline_ms = 20000
revoke_timeout_ms = 5000

[kafka]
bootstrap_servers = "{bootstrap}"

[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
# Short, so that a stalled sink outlasts it.
"max.poll.interval.ms" = "8000"

[schema_registry]
url = "{registry}"

[batch]
max_records = 500
max_age_ms = 50

[admin]
listen = "127.0.0.1:{admin}"

[log]
level = "info,eventpipe_runtime=debug"

{sink}
"#,
            group = self.group,
            platform = self.platform,
            orders = self.orders,
            bootstrap = s.kafka_bootstrap,
            registry = s.schema_registry_url,
        )
    }

    /// The `[sink]` section of a MongoDB writer on the fixture's database.
    pub fn mongo_sink(&self) -> String {
        format!(
            "[sink]\nuri = \"{}\"\ndatabase = \"{}\"\n",
            stack().mongodb_uri,
            self.database
        )
    }

    /// Starts `binary` as member `name` with [`Fixture::config`] and `sink`.
    pub fn spawn(&self, binary: &Path, name: &str, sink: &str) -> Member {
        let admin = free_port();
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, self.config(admin, sink)).expect("member config");
        let log = self.dir.path().join(format!("{name}.log"));
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("member log"))
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", binary.display()));
        Member { child, admin, log }
    }
}

/// A binary of this workspace, built next to the test executable (`make test` builds them all
/// before running the tests).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (`make test` does)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One running consumer process; killed when dropped.
pub struct Member {
    child: Child,
    admin: u16,
    log: PathBuf,
}

impl Member {
    /// The port of the member's admin endpoint (`/metrics`, `/readyz`).
    pub fn admin_port(&self) -> u16 {
        self.admin
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn kill9(&mut self) {
        kill(self.pid(), Signal::SIGKILL).expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status and how long the drain took.
    pub async fn terminate(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        let status = wait_for("the member to exit after SIGTERM", timeout, || {
            let s = self.child.try_wait().expect("try_wait");
            async move { s }
        })
        .await;
        (status, started.elapsed())
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> Option<String> {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// Sum of a metric's samples whose line contains every one of `filters`.
    pub async fn metric_sum(&self, name: &str, filters: &[&str]) -> Option<f64> {
        let text = self.metrics().await?;
        let mut found = None;
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let base = series.split('{').next().unwrap_or_default();
            if base == name && filters.iter().all(|f| series.contains(f)) {
                if let Ok(v) = value.parse::<f64>() {
                    *found.get_or_insert(0.0) += v;
                }
            }
        }
        found
    }

    pub async fn metric_max(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await?;
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .reduce(f64::max)
    }

    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Panics with the rows and their examples unless every row is clean.
pub fn assert_clean(rows: &[Row]) {
    let report = verify::Report {
        records: 0,
        rows: rows.to_vec(),
    };
    assert!(
        report.is_clean(),
        "the stores differ from the topics:\n{report}"
    );
}
