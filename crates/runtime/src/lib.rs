//! The consumer runtime shared by every pipeline binary.
//!
//! # Layout
//! - [`config`]: `pipelines/<binary>.toml`, environment overrides, validation, redaction.
//! - [`cli`]: the command line every binary accepts (`--config`, `--check`).
//! - [`telemetry`]: tracing set-up and the admin server (`/metrics`, `/healthz`, `/readyz`).
//! - [`shutdown`]: SIGINT/SIGTERM to a cancellation token.
//! - [`app`]: start-up glue that a binary's `main` calls.
//! - [`sink`]: the trait a binary implements: write a batch, report each record's outcome.
//! - [`consumer`]: Kafka to sink, at least once: batching, backpressure, rebalances, retries,
//!   commits, lag.
//! - [`dlq`]: the dead-letter topic and its headers.
//! - [`metrics`]: the names of everything on `/metrics`.

pub mod app;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod metrics;
pub mod shutdown;
pub mod sink;
pub mod telemetry;
