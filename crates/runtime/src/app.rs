//! Start-up glue: parse the command line, load and validate the config (or print it with
//! `--check`), set up logging, metrics and the admin server, then hand over to the binary.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::Args;
use crate::config::{self, PipelineConfig, Validate};
use crate::telemetry::{self, Readiness};

/// Exit code for an invalid configuration (distinct from 1, a fatal runtime error).
pub const EXIT_CONFIG: u8 = 2;

/// What a binary's body receives once start-up succeeded.
pub struct Context<S> {
    pub binary: &'static str,
    pub config: PipelineConfig<S>,
    /// Cancelled on SIGINT/SIGTERM.
    pub shutdown: CancellationToken,
    pub readiness: Readiness,
    /// Where the admin server listens (the configured port may be 0).
    pub admin_addr: SocketAddr,
}

/// Runs a consumer binary: everything up to the point where its own work starts is done here.
pub fn main<S, F, Fut>(binary: &'static str, body: F) -> ExitCode
where
    S: DeserializeOwned + Serialize + Validate,
    F: FnOnce(Context<S>) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let args = Args::parse();
    let config: PipelineConfig<S> = match config::load(&args.config, binary) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{binary}: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        println!("# {binary}: {} is valid", args.config.display());
        print!("{}", config::redacted_toml(&config));
        return ExitCode::SUCCESS;
    }
    telemetry::init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{binary}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match start(binary, config, body).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "{binary} stopped with a fatal error");
                ExitCode::FAILURE
            }
        }
    })
}

async fn start<S, F, Fut>(
    binary: &'static str,
    config: PipelineConfig<S>,
    body: F,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: Serialize,
    F: FnOnce(Context<S>) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let shutdown = crate::shutdown::on_signals()?;
    let metrics = telemetry::install_metrics_recorder()?;
    let readiness = Readiness::default();
    let (admin_addr, admin) = telemetry::serve_admin(
        config.admin.listen,
        metrics,
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| format!("cannot bind admin.listen {}: {e}", config.admin.listen))?;
    tracing::info!(
        %admin_addr,
        group = %config.consumer.group_id,
        topics = ?config.consumer.topics,
        "{binary} started"
    );
    tracing::debug!(config = %config::redacted_toml(&config), "effective config");
    let result = body(Context {
        binary,
        config,
        shutdown: shutdown.clone(),
        readiness,
        admin_addr,
    })
    .await;
    shutdown.cancel();
    let _ = admin.await;
    result
}
