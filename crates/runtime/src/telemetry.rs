//! Logging and the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::metrics as rt_metrics;

/// Installs the global tracing subscriber. `RUST_LOG`, when set, wins over `log.level`.
pub fn init_tracing(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already installed (tests), which is fine.
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Whether the binary is ready to do its job (partitions assigned, sink reachable). Shared
/// between the runtime, which sets it, and `/readyz`, which reports it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install_metrics_recorder() -> Result<PrometheusHandle, String> {
    let err = |e: metrics_exporter_prometheus::BuildError| {
        format!("cannot install the Prometheus recorder: {e}")
    };
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(rt_metrics::BATCH_RECORDS.to_owned()),
            rt_metrics::BATCH_RECORDS_BUCKETS,
        )
        .map_err(err)?
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            rt_metrics::SECONDS_BUCKETS,
        )
        .map_err(err)?
        .install_recorder()
        .map_err(err)?;
    rt_metrics::describe();
    Ok(handle)
}

/// Binds `listen` and serves the admin endpoints until `shutdown` fires. Returns the bound
/// address (useful when the configured port is 0).
pub async fn serve_admin(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AdminState { metrics, readiness });
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "admin server stopped");
        }
    });
    Ok((addr, handle))
}

async fn metrics_handler(State(state): State<AdminState>) -> String {
    state.metrics.render()
}

async fn ready_handler(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
