//! `schema-registry`: the local Confluent-compatible schema registry.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

/// Confluent-compatible schema registry (Avro) for the local stack.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to serve the REST API on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Bootstrap servers of the broker that keeps the registry's state.
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_KAFKA_BOOTSTRAP",
        required_unless_present = "ephemeral"
    )]
    bootstrap_servers: Option<String>,
    /// The compacted topic the state is kept in.
    #[arg(long, default_value = "_schemas")]
    topic: String,
    /// Keep state in memory only (lost on exit).
    #[arg(long, conflicts_with = "bootstrap_servers")]
    ephemeral: bool,
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
    let args = Args::parse();
    let result = match eventpipe_runtime::shutdown::on_signals() {
        Ok(shutdown) => {
            schema_registry_standin::run(
                args.listen,
                args.bootstrap_servers.as_deref(),
                &args.topic,
                shutdown,
            )
            .await
        }
        Err(e) => Err(format!("cannot install signal handlers: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
