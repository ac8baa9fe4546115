//! `pipelinectl`'s library: what the command line and the tests share.
//!
//! # Layout
//! - [`generate`]: a deterministic stream of realistic events (pure; same seed, same stream).
//! - [`wire`]: turning generated records into Kafka records (schema ids, poison bytes).
//! - [`setup`]: creating topics and registering the schemas.
//! - [`produce`]: publishing at a target rate with the idempotent producer, with progress.
//! - [`bench`]: benchmarks that print their rates, medians and ratios in one run.
//! - [`topics`]: reading topics and committed offsets from outside any group.
//! - [`verify`]: the expected state from the source topics, diffed against every store.

pub mod bench;
pub mod chaos;
pub mod generate;
pub mod produce;
pub mod setup;
pub mod topics;
pub mod verify;
pub mod wire;
