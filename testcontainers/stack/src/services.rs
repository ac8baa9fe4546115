//! Starting each service, waiting for it to be healthy, and stopping it by pid.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::process::{self, run, running_pid, spawn_detached};
use crate::spec::{StackSpec, Storage};
use crate::{install, StackError};

const HEALTH_TIMEOUT: Duration = Duration::from_secs(90);

/// One process of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Broker,
    Registry,
    Mongod,
    /// A Redis Cluster node, by port.
    Redis(u16),
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Broker => f.write_str("broker"),
            Service::Registry => f.write_str("registry"),
            Service::Mongod => f.write_str("mongod"),
            Service::Redis(port) => write!(f, "redis-{port}"),
        }
    }
}

impl Service {
    /// Parses `broker`, `registry`, `mongod` or `redis-<port>`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "broker" => Some(Service::Broker),
            "registry" => Some(Service::Registry),
            "mongod" => Some(Service::Mongod),
            _ => s.strip_prefix("redis-")?.parse().ok().map(Service::Redis),
        }
    }

    /// Every service in start order.
    pub fn all(spec: &StackSpec) -> Vec<Service> {
        let mut v = vec![Service::Broker, Service::Registry, Service::Mongod];
        v.extend(spec.redis_ports().map(Service::Redis));
        v
    }

    pub fn data_dir(&self, spec: &StackSpec) -> PathBuf {
        spec.dir().join(self.to_string())
    }

    pub fn pidfile(&self, spec: &StackSpec) -> PathBuf {
        spec.dir().join("pids").join(format!("{self}.pid"))
    }

    pub fn log(&self, spec: &StackSpec) -> PathBuf {
        spec.dir().join("logs").join(format!("{self}.log"))
    }

    pub fn endpoint(&self, spec: &StackSpec) -> String {
        let e = spec.endpoints();
        match self {
            Service::Broker => e.kafka_bootstrap,
            Service::Registry => e.schema_registry_url,
            Service::Mongod => e.mongodb_uri,
            Service::Redis(port) => format!("127.0.0.1:{port}"),
        }
    }

    /// The live pid of this service. A pid file whose process is gone, or whose pid now
    /// belongs to another program (pids are reused after a reboot), counts as not running.
    pub fn pid(&self, spec: &StackSpec) -> Option<i32> {
        let pid = running_pid(&self.pidfile(spec))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let expected = match self {
            Service::Broker => "nisshi",
            Service::Registry => "serve-registry",
            Service::Mongod => "mongod",
            Service::Redis(_) => "redis-server",
        };
        cmdline.contains(expected).then_some(pid)
    }
}

/// Brings the whole stack up: installs what is missing, starts what is not running, waits
/// until every service is healthy. Safe to run again at any time.
pub async fn up(spec: &StackSpec, registry_exe: &Path) -> Result<(), StackError> {
    if let Ok(saved) = StackSpec::load(&spec.name) {
        let running = Service::all(&saved).iter().any(|s| s.pid(&saved).is_some());
        if running && saved != *spec {
            return Err(StackError::Other(format!(
                "stack `{}` is running with other settings ({saved:?}); run `stack down --name {}` first",
                spec.name, spec.name
            )));
        }
    }
    spec.save()?;
    for dir in ["pids", "logs"] {
        let d = spec.dir().join(dir);
        std::fs::create_dir_all(&d).map_err(StackError::io(format!("creating {}", d.display())))?;
    }
    // Quick installs first so a slow broker build does not hide a failing one.
    let (redis_server, redis_cli) = install::redis()?;
    let mongod = install::mongod()?;
    let nisshi = install::nisshi()?;

    start_broker(spec, &nisshi).await?;
    start_registry(spec, registry_exe).await?;
    start_mongod(spec, &mongod).await?;
    start_redis(spec, &redis_server, &redis_cli).await?;
    Ok(())
}

/// Stops every service (reverse start order). Data stays unless `purge`.
pub fn down(spec: &StackSpec, purge: bool) -> Result<Vec<(Service, bool)>, StackError> {
    let mut stopped = Vec::new();
    for s in Service::all(spec).into_iter().rev() {
        let grace = match s {
            Service::Mongod => Duration::from_secs(60),
            _ => Duration::from_secs(15),
        };
        stopped.push((s, stop_within(spec, s, grace)));
    }
    if purge {
        let dir = spec.dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(StackError::io(format!("removing {}", dir.display())))?;
        }
    }
    Ok(stopped)
}

/// Starts one service if it is not running, and waits for it.
pub async fn start(
    spec: &StackSpec,
    service: Service,
    registry_exe: &Path,
) -> Result<(), StackError> {
    match service {
        Service::Broker => start_broker(spec, &install::nisshi()?).await,
        Service::Registry => start_registry(spec, registry_exe).await,
        Service::Mongod => start_mongod(spec, &install::mongod()?).await,
        Service::Redis(port) => {
            let (server, cli) = install::redis()?;
            start_redis_node(spec, port, &server)?;
            wait_redis_ping(spec, port, &cli).await?;
            wait_cluster_ok(spec, &cli).await
        }
    }
}

/// Stops one service (SIGTERM, then SIGKILL after a grace period).
pub fn stop(spec: &StackSpec, service: Service) -> bool {
    stop_within(spec, service, Duration::from_secs(30))
}

fn stop_within(spec: &StackSpec, service: Service, grace: Duration) -> bool {
    if service.pid(spec).is_none() {
        // Nothing of ours runs under that pid; never signal a stranger.
        let _ = std::fs::remove_file(service.pidfile(spec));
        return false;
    }
    process::stop(&service.pidfile(spec), grace)
}

/// Kills one service with SIGKILL, as a crash would.
pub fn kill(spec: &StackSpec, service: Service) -> bool {
    service.pid(spec).is_some() && process::kill_hard(&service.pidfile(spec))
}

fn unhealthy(spec: &StackSpec, service: Service, detail: impl fmt::Display) -> StackError {
    StackError::Unhealthy {
        service: service.to_string(),
        seconds: HEALTH_TIMEOUT.as_secs(),
        detail: detail.to_string(),
        log: service.log(spec).display().to_string(),
    }
}

/// Polls `check` until it returns `Ok`, the process dies, or the timeout passes.
async fn wait_healthy<F, Fut>(
    spec: &StackSpec,
    service: Service,
    mut check: F,
) -> Result<(), StackError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    loop {
        let last = match check().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // Only whether the process lives: right after the spawn its command line may still
        // be the parent's, which `Service::pid` would not recognise.
        if process::running_pid(&service.pidfile(spec)).is_none() {
            return Err(unhealthy(
                spec,
                service,
                format!("the process exited ({last})"),
            ));
        }
        if Instant::now() > deadline {
            return Err(unhealthy(spec, service, last));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn start_broker(spec: &StackSpec, nisshi: &Path) -> Result<(), StackError> {
    let service = Service::Broker;
    if service.pid(spec).is_none() {
        let dir = service.data_dir(spec);
        std::fs::create_dir_all(&dir)
            .map_err(StackError::io(format!("creating {}", dir.display())))?;
        let url = format!("tcp://127.0.0.1:{}", spec.kafka_port);
        let storage = match spec.storage {
            Storage::Sqlite => "sqlite://nisshi.db",
            Storage::Memory => "memory://nisshi/",
        };
        let mut cmd = Command::new(nisshi);
        cmd.current_dir(&dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", storage])
            .args(["--group-initial-rebalance-delay", "0s", "--silent"]);
        spawn_detached(cmd, &service.log(spec), &service.pidfile(spec))?;
    }
    let bootstrap = spec.endpoints().kafka_bootstrap;
    wait_healthy(spec, service, || broker_metadata(bootstrap.clone())).await
}

/// Healthy when the broker answers a metadata request.
async fn broker_metadata(bootstrap: String) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set_log_level(RDKafkaLogLevel::Emerg)
            .create()
            .map_err(|e| e.to_string())?;
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        if md.brokers().is_empty() {
            return Err("no brokers in metadata".to_owned());
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn start_registry(spec: &StackSpec, exe: &Path) -> Result<(), StackError> {
    let service = Service::Registry;
    if service.pid(spec).is_none() {
        let mut cmd = Command::new(exe);
        cmd.args(["serve-registry", "--listen"])
            .arg(format!("127.0.0.1:{}", spec.registry_port))
            .arg("--bootstrap-servers")
            .arg(spec.endpoints().kafka_bootstrap);
        spawn_detached(cmd, &service.log(spec), &service.pidfile(spec))?;
    }
    let url = format!("{}/subjects", spec.endpoints().schema_registry_url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| StackError::Other(e.to_string()))?;
    wait_healthy(spec, service, || {
        let req = client.get(&url);
        async move {
            let resp = req.send().await.map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("GET /subjects answered {}", resp.status()))
            }
        }
    })
    .await
}

async fn start_mongod(spec: &StackSpec, mongod: &Path) -> Result<(), StackError> {
    let service = Service::Mongod;
    if service.pid(spec).is_none() {
        let dir = service.data_dir(spec);
        std::fs::create_dir_all(&dir)
            .map_err(StackError::io(format!("creating {}", dir.display())))?;
        let log = service.log(spec);
        // `--fork` returns once the server accepts connections; the pid file names the server.
        run(Command::new(mongod)
            .arg("--dbpath")
            .arg(&dir)
            .args([
                "--bind_ip",
                "127.0.0.1",
                "--port",
                &spec.mongo_port.to_string(),
            ])
            .args(["--replSet", "rs0", "--wiredTigerCacheSizeGB", "1", "--fork"])
            .arg("--logpath")
            .arg(&log)
            .arg("--logappend")
            .arg("--pidfilepath")
            .arg(service.pidfile(spec)))
        .map_err(|e| unhealthy(spec, service, e))?;
    }
    let uri = format!(
        "mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=2000",
        spec.mongo_port
    );
    let client = mongodb::Client::with_uri_str(&uri)
        .await
        .map_err(|e| StackError::Other(e.to_string()))?;
    let admin = client.database("admin");
    let host = format!("127.0.0.1:{}", spec.mongo_port);
    wait_healthy(spec, service, || {
        let admin = admin.clone();
        let host = host.clone();
        async move {
            let status = admin.run_command(bson::doc! {"replSetGetStatus": 1}).await;
            if let Err(e) = status {
                // 94 NotYetInitialized: a fresh data directory.
                if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 94) {
                    admin
                        .run_command(bson::doc! {"replSetInitiate": {
                            "_id": "rs0",
                            "members": [{"_id": 0, "host": host}],
                        }})
                        .await
                        .map_err(|e| format!("replSetInitiate: {e}"))?;
                } else {
                    return Err(e.to_string());
                }
            }
            let hello = admin
                .run_command(bson::doc! {"hello": 1})
                .await
                .map_err(|e| e.to_string())?;
            if hello.get_bool("isWritablePrimary").unwrap_or(false) {
                Ok(())
            } else {
                Err("not yet primary".to_owned())
            }
        }
    })
    .await
}

async fn start_redis(spec: &StackSpec, server: &Path, cli: &Path) -> Result<(), StackError> {
    for port in spec.redis_ports() {
        start_redis_node(spec, port, server)?;
    }
    for port in spec.redis_ports() {
        wait_redis_ping(spec, port, cli).await?;
    }
    let first = spec.redis_port;
    let info = redis_cli(cli, first, &["cluster", "info"]).unwrap_or_default();
    if info.contains("cluster_known_nodes:1\r") || info.contains("cluster_known_nodes:1\n") {
        let mut cmd = Command::new(cli);
        cmd.arg("--cluster").arg("create");
        for port in spec.redis_ports() {
            cmd.arg(format!("127.0.0.1:{port}"));
        }
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
        run(&mut cmd).map_err(|e| unhealthy(spec, Service::Redis(first), e))?;
    }
    wait_cluster_ok(spec, cli).await
}

fn start_redis_node(spec: &StackSpec, port: u16, server: &Path) -> Result<(), StackError> {
    let service = Service::Redis(port);
    if service.pid(spec).is_some() {
        return Ok(());
    }
    let dir = service.data_dir(spec);
    std::fs::create_dir_all(&dir).map_err(StackError::io(format!("creating {}", dir.display())))?;
    let mut cmd = Command::new(server);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-node-timeout", "3000"])
        .args(["--appendonly", "yes", "--save", "", "--daemonize", "no"])
        .arg("--dir")
        .arg(&dir);
    spawn_detached(cmd, &service.log(spec), &service.pidfile(spec))?;
    Ok(())
}

fn redis_cli(cli: &Path, port: u16, args: &[&str]) -> Result<String, StackError> {
    run(Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args))
}

async fn wait_redis_ping(spec: &StackSpec, port: u16, cli: &Path) -> Result<(), StackError> {
    wait_healthy(spec, Service::Redis(port), || {
        let r = redis_cli(cli, port, &["ping"]);
        async move {
            match r {
                Ok(out) if out.trim() == "PONG" => Ok(()),
                Ok(out) => Err(out),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

/// Every live node reports `cluster_state:ok` and all slots are covered.
async fn wait_cluster_ok(spec: &StackSpec, cli: &Path) -> Result<(), StackError> {
    let ports: Vec<u16> = spec
        .redis_ports()
        .filter(|p| Service::Redis(*p).pid(spec).is_some())
        .collect();
    let first = ports.first().copied().unwrap_or(spec.redis_port);
    wait_healthy(spec, Service::Redis(first), || {
        let result = ports.iter().try_for_each(|port| {
            let info = redis_cli(cli, *port, &["cluster", "info"]).map_err(|e| e.to_string())?;
            if info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384") {
                Ok(())
            } else {
                Err(format!(
                    "node {port} reports: {}",
                    info.lines().next().unwrap_or("")
                ))
            }
        });
        async move { result }
    })
    .await
}

/// One line per service: name, pid or `stopped`, endpoint.
pub fn status(spec: &StackSpec) -> Vec<(Service, Option<i32>, String)> {
    Service::all(spec)
        .into_iter()
        .map(|s| (s, s.pid(spec), s.endpoint(spec)))
        .collect()
}
