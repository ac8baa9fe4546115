//! The event contract every binary shares.
//!
//! Events are Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro
//! binary body), registered under `<topic>-value` with BACKWARD compatibility. The schemas live
//! in `schemas/` with their versions side by side; the structs here are the *reader* view (the
//! newest version), and every record is decoded with the *writer* schema it was produced with,
//! fetched from the registry by id, then resolved to the reader schema.
//!
//! # Layout
//! - [`schemas`]: the `.avsc` files compiled in, per event and version.
//! - [`model`]: `PlatformEvent` and `OrderEvent` as Rust types.
//! - [`registry`]: writer schemas by id: fetched once, cached, bounded retries.
//! - [`codec`]: framing, decoding into typed events, the error for each way a record is bad.

pub mod codec;
pub mod model;
pub mod registry;
pub mod schemas;

pub use codec::{AnyDecoder, DecodeError, Decoded, Decoder, ErrorClass};
pub use model::{AnyEvent, Event, OrderEvent, PlatformEvent};
