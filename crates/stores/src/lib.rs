//! Connection settings for the stores the sinks write to.
//!
//! # Layout
//! - [`docs`]: document pieces shared by the MongoDB writers (an event's body).
//! - [`mongo`]: the `[sink]` section of the MongoDB writers ([`MongoConfig`]), the client,
//!   batched write commands and error classification.
//! - [`redis`]: the `[sink]` section of `cache-updater` ([`RedisConfig`]), the cluster client
//!   and error classification.

pub mod docs;
pub mod mongo;
pub mod redis;

pub use mongo::MongoConfig;
pub use redis::RedisConfig;
