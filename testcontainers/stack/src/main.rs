//! `stack`: bring the local stack up, tear it down, show its status and endpoints.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use local_stack::services::{self, Service};
use local_stack::{StackSpec, Storage};

#[derive(Parser)]
#[command(
    version,
    about = "Real broker, schema registry, mongod and Redis Cluster as local processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing, start what is not running, wait for health, print the endpoints.
    Up(UpArgs),
    /// Stop every service of a stack by pid.
    Down {
        #[command(flatten)]
        name: NameArg,
        /// Also delete the stack's data.
        #[arg(long)]
        purge: bool,
    },
    /// Show each service's pid and endpoint.
    Status(NameArg),
    /// Print the endpoints as `export` lines (`eval "$(stack env)"`).
    Env(NameArg),
    /// Restart one service (`broker`, `registry`, `mongod`, `redis-<port>`).
    Restart {
        #[command(flatten)]
        name: NameArg,
        service: String,
    },
    /// Kill one service with SIGKILL, as a crash would (`stack up` brings it back).
    Kill {
        #[command(flatten)]
        name: NameArg,
        service: String,
    },
    /// Run the schema registry in the foreground (what `up` starts).
    #[command(hide = true)]
    ServeRegistry {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        bootstrap_servers: String,
        #[arg(long, default_value = "_schemas")]
        topic: String,
    },
}

#[derive(Args)]
struct NameArg {
    /// The stack's name (its data directory under the cache directory).
    #[arg(long, default_value = "default", env = "EVENTPIPE_STACK")]
    name: String,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    name: NameArg,
    /// Added to every default port (9092, 8081, 27017, 7000–7005), for a second stack.
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
    #[arg(long)]
    kafka_port: Option<u16>,
    #[arg(long)]
    registry_port: Option<u16>,
    #[arg(long)]
    mongo_port: Option<u16>,
    /// First of the six Redis Cluster ports.
    #[arg(long)]
    redis_port: Option<u16>,
    /// Broker storage: sqlite survives restarts, memory is fastest.
    #[arg(long, value_enum, default_value = "sqlite")]
    storage: Storage,
}

impl UpArgs {
    fn spec(&self) -> StackSpec {
        let mut spec = StackSpec::with_offset(&self.name.name, self.port_offset, self.storage);
        if let Some(p) = self.kafka_port {
            spec.kafka_port = p;
        }
        if let Some(p) = self.registry_port {
            spec.registry_port = p;
        }
        if let Some(p) = self.mongo_port {
            spec.mongo_port = p;
        }
        if let Some(p) = self.redis_port {
            spec.redis_port = p;
        }
        spec
    }
}

fn self_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot locate the stack binary: {e}"))
}

async fn execute(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Up(args) => {
            let spec = args.spec();
            services::up(&spec, &self_exe()?)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("stack `{}` is up ({})", spec.name, spec.dir().display());
            print!("{}", spec.endpoints().to_shell());
        }
        Cmd::Down { name, purge } => {
            let spec = StackSpec::load(&name.name).map_err(|e| e.to_string())?;
            for (service, was_running) in services::down(&spec, purge).map_err(|e| e.to_string())? {
                if was_running {
                    eprintln!("stopped {service}");
                }
            }
        }
        Cmd::Status(name) => {
            let spec = StackSpec::load(&name.name).map_err(|e| e.to_string())?;
            println!(
                "stack `{}` ({:?} broker storage) in {}",
                spec.name,
                spec.storage,
                spec.dir().display()
            );
            for (service, pid, endpoint) in services::status(&spec) {
                let state = pid.map_or_else(|| "stopped".to_owned(), |p| format!("pid {p}"));
                println!("  {:<12} {:<10} {}", service.to_string(), state, endpoint);
            }
        }
        Cmd::Env(name) => {
            let spec = StackSpec::load(&name.name).map_err(|e| e.to_string())?;
            print!("{}", spec.endpoints().to_shell());
        }
        Cmd::Restart { name, service } => {
            let spec = StackSpec::load(&name.name).map_err(|e| e.to_string())?;
            let s = parse_service(&spec, &service)?;
            services::stop(&spec, s);
            services::start(&spec, s, &self_exe()?)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("restarted {s}");
        }
        Cmd::Kill { name, service } => {
            let spec = StackSpec::load(&name.name).map_err(|e| e.to_string())?;
            let s = parse_service(&spec, &service)?;
            if !services::kill(&spec, s) {
                return Err(format!("{s} is not running"));
            }
            eprintln!("killed {s}");
        }
        Cmd::ServeRegistry {
            listen,
            bootstrap_servers,
            topic,
        } => {
            let shutdown = eventpipe_runtime::shutdown::on_signals()
                .map_err(|e| format!("cannot install signal handlers: {e}"))?;
            schema_registry_standin::run(listen, Some(&bootstrap_servers), &topic, shutdown)
                .await?;
        }
    }
    Ok(())
}

fn parse_service(spec: &StackSpec, name: &str) -> Result<Service, String> {
    Service::parse(name)
        .filter(|s| Service::all(spec).contains(s))
        .ok_or_else(|| {
            let names: Vec<String> = Service::all(spec).iter().map(|s| s.to_string()).collect();
            format!("unknown service `{name}`; one of: {}", names.join(", "))
        })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match execute(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stack: {e}");
            ExitCode::FAILURE
        }
    }
}
