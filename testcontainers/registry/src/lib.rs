//! A stand-in for the Confluent Schema Registry, for the local stack and the tests.
//!
//! No real registry can be installed on the development machines (see `STACK.md`), so this
//! crate speaks the subset of Confluent's REST API that producers, `schema_registry_converter`
//! and operators use, with Confluent's JSON shapes and error codes. Avro only. Production uses
//! the real Confluent Schema Registry (see `deploy/`).
//!
//! State is durable the way Confluent's is: every change is appended to a compacted Kafka topic
//! (`_schemas` by default) and acknowledged by all in-sync replicas before the HTTP response is
//! sent; on start the topic is replayed from the beginning.
//!
//! # Layout
//! - [`model`]: subjects, versions, global ids and compatibility levels; pure and unit-tested.
//! - [`compat`]: Avro compatibility checks for each level.
//! - [`error`]: Confluent's error codes and the HTTP status each maps to.
//! - [`journal`]: the records written to and replayed from the `_schemas` topic.
//! - [`http`]: the REST routes.

pub mod compat;
pub mod error;
pub mod http;
pub mod journal;
pub mod model;

pub use http::{router, run, serve, Registry};
