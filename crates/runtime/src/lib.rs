//! The consumer runtime shared by every pipeline binary.
//!
//! # Layout
//! - [`config`]: `pipelines/<binary>.toml`, environment overrides, validation, redaction.
//! - [`cli`]: the command line every binary accepts (`--config`, `--check`).
//! - [`telemetry`]: tracing set-up and the admin server (`/metrics`, `/healthz`, `/readyz`).
//! - [`shutdown`]: SIGINT/SIGTERM to a cancellation token.
//! - [`app`]: start-up glue that a binary's `main` calls.

pub mod app;
pub mod cli;
pub mod config;
pub mod shutdown;
pub mod telemetry;
