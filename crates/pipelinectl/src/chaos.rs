//! `pipelinectl chaos`: the four binaries, several members each, against a local stack while
//! a producer publishes at a steady rate; meanwhile members are killed with SIGKILL, the
//! broker and mongod are restarted and a Redis master is killed. Once every group has
//! committed the end of every partition, [`crate::verify`] compares every store with the
//! expectation computed from the topics.
//!
//! Each run has its own topics, groups, database and Redis key prefix (`chaos-<time>`), so
//! runs do not disturb each other or the `make run` pipeline (faults do hit the shared
//! services of the stack).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::generate::Options;
use crate::produce::{self, Summary, Target};
use crate::{setup, topics, verify};

pub const BINARIES: [&str; 4] = [
    "ingest-writer",
    "audit-writer",
    "aggregator",
    "cache-updater",
];

/// Where the services are.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub bootstrap: String,
    pub registry: String,
    pub mongodb_uri: String,
    pub redis_nodes: Vec<String>,
}

/// Where the stack is and what to do to it.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// `stack` name (its services are restarted through `stack restart --name <stack>`).
    pub stack: String,
    pub endpoints: Endpoints,
    /// Directory of the binaries' config files.
    pub pipelines: PathBuf,
    /// Directory holding the four binaries and `stack`.
    pub bin_dir: PathBuf,
    /// Where member logs go (a directory per run is made inside).
    pub work_dir: PathBuf,
    pub events: u64,
    /// Records per second.
    pub rate: f64,
    pub members: usize,
    pub kills: usize,
    pub broker_restarts: usize,
    pub mongod_restarts: usize,
    pub redis_master_kills: usize,
    pub partitions: i32,
    pub seed: u64,
    /// How long the groups may take to catch up after the last record and fault.
    pub settle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillMember,
    RestartBroker,
    RestartMongod,
    KillRedisMaster,
}

/// What a run did and found.
#[derive(Debug)]
pub struct Outcome {
    pub run: String,
    pub actions: Vec<String>,
    pub producer: Result<Summary, String>,
    /// Members that exited without being killed (restarted, as an orchestrator would).
    pub unexpected_exits: Vec<String>,
    pub report: verify::Report,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.report.is_clean() && self.producer.is_ok()
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "chaos run {} ({:.0} s)",
            self.run,
            self.elapsed.as_secs_f64()
        )?;
        for a in &self.actions {
            writeln!(f, "  {a}")?;
        }
        match &self.producer {
            Ok(s) => write!(f, "producer: {s}")?,
            Err(e) => writeln!(f, "producer FAILED: {e}")?,
        }
        if !self.unexpected_exits.is_empty() {
            writeln!(f, "members that exited by themselves (restarted):")?;
            for e in &self.unexpected_exits {
                writeln!(f, "  {e}")?;
            }
        }
        writeln!(f, "{}", self.report)?;
        write!(
            f,
            "chaos verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

struct Member {
    name: String,
    binary: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Member {
    fn drop(&mut self) {
        // A run that ends early leaves no member behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    opts: ChaosOptions,
    id: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
    members: Vec<Member>,
    started: Instant,
    actions: Vec<String>,
    unexpected_exits: Vec<String>,
    spawned: usize,
    /// Faults applied, by [`Fault`].
    done: [usize; 4],
}

impl Run {
    fn log(&mut self, what: String) {
        let line = format!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        self.actions.push(line);
    }

    fn spawn(&mut self, binary: &'static str, slot: usize) -> Result<Member, String> {
        self.spawned += 1;
        let name = format!("{binary}-{slot}");
        let log = self.dir.join(format!("{name}.{}.log", self.spawned));
        let child = spawn_member(
            &self.opts.bin_dir,
            &self.opts.pipelines,
            binary,
            &self.env,
            &log,
        )?;
        Ok(Member {
            name,
            binary,
            child,
            log,
        })
    }

    /// Restarts members that exited on their own.
    fn supervise(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            if let Ok(Some(status)) = self.members[i].child.try_wait() {
                let m = &self.members[i];
                let what = format!("{} exited with {status} (log {})", m.name, m.log.display());
                let (binary, slot) = (m.binary, i % self.opts.members);
                self.unexpected_exits.push(what.clone());
                self.log(format!("{what}; restarting it"));
                self.members[i] = self.spawn(binary, slot)?;
            }
        }
        Ok(())
    }

    /// `stack <args> --name <stack>` (it waits for the service's health), off the async
    /// threads.
    fn stack(&self, args: &[&str]) -> Result<(), String> {
        let exe = self.opts.bin_dir.join("stack");
        let out = tokio::task::block_in_place(|| {
            Command::new(&exe)
                .args(args)
                .args(["--name", &self.opts.stack])
                .output()
        })
        .map_err(|e| format!("{}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "stack {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `stack restart <service>`: stops it, starts it and waits until it is healthy.
    fn restart(&mut self, service: &str) -> Result<(), String> {
        let t = Instant::now();
        self.stack(&["restart", service])?;
        self.log(format!(
            "{service} restarted ({:.1} s)",
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    async fn apply(&mut self, fault: Fault, rng: &mut Xoshiro256PlusPlus) -> Result<(), String> {
        self.done[fault as usize] += 1;
        match fault {
            Fault::KillMember => {
                let i = rng.random_range(0..self.members.len());
                let _ = self.members[i].child.kill();
                let _ = self.members[i].child.wait();
                let (binary, slot) = (self.members[i].binary, i % self.opts.members);
                let name = self.members[i].name.clone();
                self.members[i] = self.spawn(binary, slot)?;
                self.log(format!("kill -9 {name}, started again"));
            }
            Fault::RestartBroker => self.restart("broker")?,
            Fault::RestartMongod => self.restart("mongod")?,
            Fault::KillRedisMaster => {
                let master = self
                    .opts
                    .endpoints
                    .redis_nodes
                    .iter()
                    .find(|n| redis_cli(n, &["role"]).is_some_and(|r| r.starts_with("master")))
                    .cloned()
                    .ok_or("no Redis master answers")?;
                let port = master
                    .rsplit_once(':')
                    .map(|p| p.1)
                    .unwrap_or_default()
                    .to_owned();
                let t = Instant::now();
                self.stack(&["kill", &format!("redis-{port}")])?;
                let survivors: Vec<String> = self
                    .opts
                    .endpoints
                    .redis_nodes
                    .iter()
                    .filter(|n| **n != master)
                    .cloned()
                    .collect();
                wait_until(Duration::from_secs(120), || {
                    let nodes = redis_cli(&survivors[0], &["cluster", "nodes"]).unwrap_or_default();
                    let failed = nodes
                        .lines()
                        .any(|l| l.contains(&master) && l.contains("fail") && !l.contains("fail?"));
                    failed
                        && redis_cli(&survivors[0], &["cluster", "info"])
                            .is_some_and(|i| i.contains("cluster_state:ok"))
                })
                .await
                .map_err(|_| format!("no replica took over from {master} within 120 s"))?;
                let failover = t.elapsed();
                self.stack(&["restart", &format!("redis-{port}")])?;
                self.log(format!(
                    "kill -9 Redis master {master}: a replica took over after {:.1} s; node restarted as a replica",
                    failover.as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    fn lag(&self, groups: &[(String, Vec<String>)]) -> Result<i64, String> {
        let mut total = 0;
        for (group, group_topics) in groups {
            for t in group_topics {
                total += topics::lag(&self.opts.endpoints.bootstrap, group, t)?.1;
            }
        }
        Ok(total)
    }
}

fn redis_cli(node: &str, args: &[&str]) -> Option<String> {
    let (host, port) = node.rsplit_once(':')?;
    let out = Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Starts `<bin_dir>/<binary> --config <pipelines>/<binary>.toml` with `env`, its log in
/// `log` and its admin endpoints on a port of its own.
pub fn spawn_member(
    bin_dir: &Path,
    pipelines: &Path,
    binary: &str,
    env: &[(String, String)],
    log: &Path,
) -> Result<Child, String> {
    let exe = bin_dir.join(binary);
    let own = binary.to_ascii_uppercase().replace('-', "_");
    Command::new(&exe)
        .arg("--config")
        .arg(pipelines.join(format!("{binary}.toml")))
        .envs(env.iter().cloned())
        .env(format!("{own}__ADMIN__LISTEN"), "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?)
        .spawn()
        .map_err(|e| format!("{} does not start: {e}", exe.display()))
}

fn now_ms() -> i64 {
    bson::DateTime::now().timestamp_millis()
}

/// A run's environment overrides: its topics, groups (`<id>-<binary>`), database and key
/// prefix (`<id>:`), and the stack's endpoints. The same overrides make `verify` look where
/// the members wrote.
pub fn environment(o: &Endpoints, id: &str, platform: &str, orders: &str) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "EVENTPIPE__KAFKA__BOOTSTRAP_SERVERS".into(),
            o.bootstrap.clone(),
        ),
        ("EVENTPIPE__SCHEMA_REGISTRY__URL".into(), o.registry.clone()),
        (
            "EVENTPIPE__CONSUMER__TOPICS".into(),
            format!("[\"{platform}\", \"{orders}\"]"),
        ),
        (
            "AUDIT_WRITER__CONSUMER__TOPICS".into(),
            format!("[\"{platform}\"]"),
        ),
        // A killed member's partitions move after this long.
        (
            "EVENTPIPE__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS".into(),
            "10000".into(),
        ),
        ("EVENTPIPE__LOG__FORMAT".into(), "json".into()),
    ];
    let database = id.replace(['-', '.'], "_");
    for b in BINARIES {
        let own = b.to_ascii_uppercase().replace('-', "_");
        env.push((format!("{own}__CONSUMER__GROUP_ID"), format!("{id}-{b}")));
        if b == "cache-updater" {
            let nodes: Vec<String> = o.redis_nodes.iter().map(|n| format!("\"{n}\"")).collect();
            env.push((
                format!("{own}__SINK__NODES"),
                format!("[{}]", nodes.join(", ")),
            ));
            env.push((format!("{own}__SINK__KEYS__PREFIX"), format!("{id}:")));
        } else {
            env.push((format!("{own}__SINK__URI"), o.mongodb_uri.clone()));
            env.push((format!("{own}__SINK__DATABASE"), database.clone()));
        }
    }
    env
}

/// The fault schedule: every fault once, in a seeded order, spread over the production time.
fn schedule(o: &ChaosOptions, rng: &mut Xoshiro256PlusPlus) -> Vec<Fault> {
    let mut faults = vec![Fault::KillMember; o.kills];
    faults.extend(vec![Fault::RestartBroker; o.broker_restarts]);
    faults.extend(vec![Fault::RestartMongod; o.mongod_restarts]);
    faults.extend(vec![Fault::KillRedisMaster; o.redis_master_kills]);
    faults.shuffle(rng);
    faults
}

pub async fn run(o: ChaosOptions) -> Result<Outcome, String> {
    let started = Instant::now();
    let id = format!("chaos-{}", now_ms() / 1000);
    let dir = o.work_dir.join(&id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (platform, orders) = (format!("{id}.platform"), format!("{id}.orders"));
    let all: Vec<String> = [&platform, &orders]
        .iter()
        .flat_map(|t| [t.to_string(), format!("{t}.dlq"), format!("{t}.late")])
        .collect();
    setup::create_topics(&o.endpoints.bootstrap, &all, o.partitions).await?;
    let ids = setup::register_schemas(&o.endpoints.registry, &platform, &orders).await?;
    let env = environment(&o.endpoints, &id, &platform, &orders);
    let pipelines = verify::Pipelines::load(&o.pipelines, &env)?;

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(o.seed);
    let mut run = Run {
        opts: o.clone(),
        id: id.clone(),
        dir: dir.clone(),
        env,
        members: Vec::new(),
        started,
        actions: Vec::new(),
        unexpected_exits: Vec::new(),
        spawned: 0,
        done: [0; 4],
    };
    for b in BINARIES {
        for slot in 0..o.members {
            let m = run.spawn(b, slot)?;
            run.members.push(m);
        }
    }
    run.log(format!(
        "{} members of {} started (logs in {})",
        run.members.len(),
        BINARIES.join(", "),
        dir.display()
    ));

    // Event times 1 ms apart ending about now: nothing from the future, nothing late.
    let step_ms = 1;
    let opts = Options {
        seed: o.seed,
        duplicates: 0.01,
        out_of_order: 0.02,
        poison: 0.001,
        start_time_ms: now_ms() - o.events as i64 * step_ms,
        step_ms,
        ..Options::default()
    };
    let target = Target {
        bootstrap: o.endpoints.bootstrap.clone(),
        platform_topic: platform.clone(),
        orders_topic: orders.clone(),
        rate: Some(o.rate),
        count: o.events,
        progress: false,
    };
    run.log(format!(
        "producing {} records at {:.0}/s (seed {})",
        o.events, o.rate, o.seed
    ));
    let producer = tokio::spawn(async move { produce::run(opts, ids, &target).await });

    let faults = schedule(&o, &mut rng);
    let production = Duration::from_secs_f64(o.events as f64 / o.rate);
    for (i, fault) in faults.iter().enumerate() {
        let at = production.mul_f64((i + 1) as f64 / (faults.len() + 1) as f64);
        while started.elapsed() < at {
            run.supervise()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        run.apply(*fault, &mut rng).await?;
    }
    while !producer.is_finished() {
        run.supervise()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let producer = producer.await.map_err(|e| format!("producer task: {e}"))?;
    match &producer {
        Ok(s) => run.log(format!(
            "producer done: {} acked, {} failed",
            s.acked, s.failed
        )),
        Err(e) => run.log(format!("producer failed: {e}")),
    }

    let groups: Vec<(String, Vec<String>)> = BINARIES
        .iter()
        .map(|b| {
            let t = if *b == "audit-writer" {
                vec![platform.clone()]
            } else {
                vec![platform.clone(), orders.clone()]
            };
            (format!("{id}-{b}"), t)
        })
        .collect();
    let settle = Instant::now();
    let mut last_report = Instant::now();
    loop {
        run.supervise()?;
        let lag = run.lag(&groups)?;
        if lag == 0 {
            break;
        }
        if settle.elapsed() > o.settle_timeout {
            run.log(format!(
                "groups still {lag} records behind after {:?}",
                o.settle_timeout
            ));
            break;
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            run.log(format!("waiting for the groups: {lag} records to commit"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    run.log("every group committed the end of every partition".into());
    for m in &mut run.members {
        if let Ok(pid) = i32::try_from(m.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for m in &mut run.members {
        let _ = m.child.wait();
    }
    run.log("members stopped (SIGTERM); verifying".into());
    let report = verify::run(&pipelines).await?;
    let [kills, broker, mongod, redis] = run.done;
    run.log(format!(
        "faults: {kills} member kills, {broker} broker restarts, {mongod} mongod restarts, {redis} Redis master kills"
    ));
    let actions = std::mem::take(&mut run.actions);
    Ok(Outcome {
        run: run.id.clone(),
        actions,
        producer,
        unexpected_exits: run.unexpected_exits.clone(),
        report,
        elapsed: started.elapsed(),
    })
}

/// The directory of the running executable (where cargo puts the workspace's binaries).
pub fn own_dir() -> Result<PathBuf, String> {
    std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "the executable has no directory".to_owned())
}
