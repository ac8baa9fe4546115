//! The Confluent wire format and typed decoding.
//!
//! A record decodes in four steps, each with its own error: the key is there; the 5-byte
//! header is (magic 0, schema id); the writer schema is fetched by id and can be resolved to
//! the reader schema; the body decodes with the writer schema, resolved to the reader's, into
//! the Rust type. Every error but [`DecodeError::RegistryUnavailable`] is the record's fault
//! and permanent: the runtime dead-letters it with [`DecodeError::reason`] as the reason.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::model::{AnyEvent, Event, OrderEvent, PlatformEvent};
use crate::registry::{FetchError, SchemaRegistry};

pub const MAGIC_BYTE: u8 = 0;
pub const HEADER_LEN: usize = 5;

/// How the runtime treats an error: retry the record later, or dead-letter it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Transient,
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no key; {event} records are keyed by {key_field}")]
    MissingKey {
        event: &'static str,
        key_field: &'static str,
    },
    #[error("record has no value (empty payload or tombstone)")]
    EmptyValue,
    #[error("bad magic byte {found:#04x}; expected 0x00 (Confluent wire format)")]
    BadMagic { found: u8 },
    #[error("schema id {id} is not known to the registry")]
    UnknownSchemaId { id: u32 },
    #[error("writer schema id {id} cannot be resolved to the reader schema of {event}: {reason}")]
    IncompatibleWriter {
        id: u32,
        event: &'static str,
        reason: String,
    },
    #[error("body is truncated: {len} bytes end before the record does (schema id {id:?})")]
    Truncated { id: Option<u32>, len: usize },
    #[error("body is not a valid record of writer schema id {id}: {reason}")]
    MalformedBody { id: u32, reason: String },
    #[error("key {key:?} does not match {field} {value:?}")]
    KeyMismatch {
        key: String,
        field: &'static str,
        value: String,
    },
    #[error("{0}")]
    RegistryUnavailable(FetchError),
}

impl DecodeError {
    pub fn class(&self) -> ErrorClass {
        match self {
            DecodeError::RegistryUnavailable(_) => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }

    /// A short, fixed label: the DLQ reason header and the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::MissingKey { .. } => "missing_key",
            DecodeError::EmptyValue => "empty_value",
            DecodeError::BadMagic { .. } => "bad_magic_byte",
            DecodeError::UnknownSchemaId { .. } => "unknown_schema_id",
            DecodeError::IncompatibleWriter { .. } => "incompatible_writer_schema",
            DecodeError::Truncated { .. } => "truncated_body",
            DecodeError::MalformedBody { .. } => "malformed_body",
            DecodeError::KeyMismatch { .. } => "key_mismatch",
            DecodeError::RegistryUnavailable(_) => "registry_unavailable",
        }
    }

    /// The writer schema id, when the header was readable.
    pub fn schema_id(&self) -> Option<u32> {
        match self {
            DecodeError::UnknownSchemaId { id }
            | DecodeError::IncompatibleWriter { id, .. }
            | DecodeError::MalformedBody { id, .. } => Some(*id),
            DecodeError::Truncated { id, .. } => *id,
            DecodeError::RegistryUnavailable(
                FetchError::Unavailable { id, .. } | FetchError::Invalid { id, .. },
            ) => Some(*id),
            _ => None,
        }
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    pub event: T,
    /// The writer schema id from the header.
    pub schema_id: u32,
    /// The version in `schemas/` the writer schema is (1 = v1 …), by Parsing Canonical Form;
    /// `None` for a compatible writer schema this build does not carry.
    pub schema_version: Option<u32>,
}

/// Splits the wire-format header off a payload.
pub fn split_header(payload: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match payload {
        [] => Err(DecodeError::EmptyValue),
        [magic, ..] if *magic != MAGIC_BYTE => Err(DecodeError::BadMagic { found: *magic }),
        [_, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        short => Err(DecodeError::Truncated {
            id: None,
            len: short.len(),
        }),
    }
}

/// Decodes records of one event type, resolving every writer schema to `T`'s reader schema.
pub struct Decoder<T: Event> {
    registry: Arc<SchemaRegistry>,
    /// Per writer id: whether it resolves to the reader schema (`Err` = why not) and which
    /// of the compiled-in versions it is.
    compatibility: Mutex<HashMap<u32, Result<Option<u32>, String>>>,
    key_field: &'static str,
    _event: PhantomData<fn() -> T>,
}

impl<T: Event> Decoder<T> {
    /// `key_field` names the field the record key must equal (`tenant_id`, `order_id`).
    pub fn new(registry: Arc<SchemaRegistry>, key_field: &'static str) -> Self {
        Self {
            registry,
            compatibility: Mutex::new(HashMap::new()),
            key_field,
            _event: PhantomData,
        }
    }

    pub async fn decode(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<Decoded<T>, DecodeError> {
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or(DecodeError::MissingKey {
                event: T::NAME,
                key_field: self.key_field,
            })?;
        let (id, body) = split_header(payload.unwrap_or_default())?;
        let writer = writer_schema(&self.registry, id).await?;
        self.decode_with(key, id, &writer, body)
    }

    /// Decodes a body whose header has been split off and whose writer schema is at hand.
    fn decode_with(
        &self,
        key: &[u8],
        id: u32,
        writer: &Schema,
        body: &[u8],
    ) -> Result<Decoded<T>, DecodeError> {
        let schema_version = self.check_resolvable(id, writer)?;
        let event: T = decode_body(id, writer, T::reader_schema(), body)?;
        if event.key().as_bytes() != key {
            return Err(DecodeError::KeyMismatch {
                key: String::from_utf8_lossy(key).into_owned(),
                field: self.key_field,
                value: event.key().to_owned(),
            });
        }
        Ok(Decoded {
            event,
            schema_id: id,
            schema_version,
        })
    }

    /// Whether `writer` resolves to the reader schema, and which compiled-in version it is.
    fn check_resolvable(&self, id: u32, writer: &Schema) -> Result<Option<u32>, DecodeError> {
        let mut known = self.compatibility.lock().unwrap_or_else(|p| p.into_inner());
        let verdict = known.entry(id).or_insert_with(|| {
            match SchemaCompatibility::can_read(writer, T::reader_schema()) {
                Ok(Compatibility::Full) => Ok(T::schemas()
                    .iter()
                    .position(|s| s == writer)
                    .map(|i| i as u32 + 1)),
                Ok(Compatibility::Partial) => Err(
                    "some values cannot be resolved (enum symbols or union branches missing)"
                        .to_owned(),
                ),
                Err(e) => Err(e.to_string()),
            }
        });
        verdict
            .clone()
            .map_err(|reason| DecodeError::IncompatibleWriter {
                id,
                event: T::NAME,
                reason,
            })
    }
}

async fn writer_schema(registry: &SchemaRegistry, id: u32) -> Result<Arc<Schema>, DecodeError> {
    registry.writer_schema(id).await.map_err(|e| match e {
        FetchError::NotFound(id) => DecodeError::UnknownSchemaId { id },
        other => DecodeError::RegistryUnavailable(other),
    })
}

/// Decodes records of any event type, choosing the type by the writer schema's full name, so a
/// topic may carry more than one type and a binary may read several topics with one decoder.
pub struct AnyDecoder {
    registry: Arc<SchemaRegistry>,
    platform: Decoder<PlatformEvent>,
    order: Decoder<OrderEvent>,
}

impl AnyDecoder {
    pub fn new(registry: Arc<SchemaRegistry>) -> Self {
        Self {
            platform: Decoder::new(registry.clone(), "tenant_id"),
            order: Decoder::new(registry.clone(), "order_id"),
            registry,
        }
    }

    pub async fn decode(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<Decoded<AnyEvent>, DecodeError> {
        let (id, body) = split_header(payload.unwrap_or_default())?;
        let writer = writer_schema(&self.registry, id).await?;
        let name = match writer.as_ref() {
            Schema::Record(r) => r.name.fullname(None),
            other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
        };
        let key_of = |event: &'static str, key_field: &'static str| {
            key.filter(|k| !k.is_empty())
                .ok_or(DecodeError::MissingKey { event, key_field })
        };
        if name == PlatformEvent::NAME {
            let key = key_of(PlatformEvent::NAME, self.platform.key_field)?;
            let d = self.platform.decode_with(key, id, &writer, body)?;
            Ok(Decoded {
                event: AnyEvent::Platform(d.event),
                schema_id: id,
                schema_version: d.schema_version,
            })
        } else if name == OrderEvent::NAME {
            let key = key_of(OrderEvent::NAME, self.order.key_field)?;
            let d = self.order.decode_with(key, id, &writer, body)?;
            Ok(Decoded {
                event: AnyEvent::Order(d.event),
                schema_id: id,
                schema_version: d.schema_version,
            })
        } else {
            Err(DecodeError::IncompatibleWriter {
                id,
                event: "any known event",
                reason: format!(
                    "writer schema is {name}; this pipeline reads {} and {}",
                    PlatformEvent::NAME,
                    OrderEvent::NAME
                ),
            })
        }
    }
}

/// Decodes an Avro body written with `writer` into `T` through `reader`.
pub fn decode_body<T: Event>(
    id: u32,
    writer: &Schema,
    reader: &Schema,
    body: &[u8],
) -> Result<T, DecodeError> {
    let mut rest = body;
    let datum_reader = GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .build()
        .map_err(|e| DecodeError::IncompatibleWriter {
            id,
            event: T::NAME,
            reason: e.to_string(),
        })?;
    let value = datum_reader.read_value(&mut rest).map_err(|e| {
        if is_unexpected_eof(&e) {
            DecodeError::Truncated {
                id: Some(id),
                len: body.len(),
            }
        } else {
            DecodeError::MalformedBody {
                id,
                reason: e.to_string(),
            }
        }
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::MalformedBody {
            id,
            reason: format!("{} bytes left over after the record", rest.len()),
        });
    }
    apache_avro::from_value(&value).map_err(|e| DecodeError::MalformedBody {
        id,
        reason: e.to_string(),
    })
}

fn is_unexpected_eof(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Why an event could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {event} with the given writer schema: {reason}")]
pub struct EncodeError {
    pub event: &'static str,
    pub reason: String,
}

/// Encodes `event` with `writer` (any version: fields the writer does not have are dropped)
/// in the Confluent wire format under `schema_id`.
pub fn encode<T: Event>(
    schema_id: u32,
    writer: &Schema,
    event: &T,
) -> Result<Vec<u8>, EncodeError> {
    let err = |reason: String| EncodeError {
        event: T::NAME,
        reason,
    };
    let value = apache_avro::to_value(event).map_err(|e| err(e.to_string()))?;
    let value = value.resolve(writer).map_err(|e| err(e.to_string()))?;
    let body = GenericDatumWriter::builder(writer)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map_err(|e| err(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Context, OrderEvent, PlatformEvent, Severity};

    pub(crate) fn platform_event() -> PlatformEvent {
        PlatformEvent {
            tenant_id: "t-1".into(),
            event_id: "e-1".into(),
            event_type: "user.login".into(),
            event_time: 1_700_000_000_000,
            actor: Actor {
                user_id: "u-1".into(),
                session_id: Some("s-1".into()),
                ip_address: None,
                user_agent: Some("curl/8".into()),
            },
            context: Context {
                request_id: None,
                trace_id: Some("tr".into()),
                environment: "prod".into(),
                service: "web".into(),
                service_version: Some("2.1.0".into()),
            },
            payload: [("k".to_owned(), "v".to_owned())].into(),
            compliance_required: false,
            severity: Severity::Warn,
        }
    }

    fn body_of(bytes: &[u8]) -> &[u8] {
        &bytes[HEADER_LEN..]
    }

    #[test]
    fn v1_bytes_decode_into_the_v2_struct_with_defaults() {
        let schemas = PlatformEvent::schemas();
        let ev = platform_event();
        let v1 = encode(1, &schemas[0], &ev).expect("encodes as v1");
        let back: PlatformEvent =
            decode_body(1, &schemas[0], PlatformEvent::reader_schema(), body_of(&v1))
                .expect("decodes");
        let mut expected = ev.clone();
        expected.severity = Severity::Info;
        expected.context.service_version = None;
        assert_eq!(back, expected);

        let v2 = encode(2, &schemas[1], &ev).expect("encodes as v2");
        let back: PlatformEvent =
            decode_body(2, &schemas[1], PlatformEvent::reader_schema(), body_of(&v2))
                .expect("decodes");
        assert_eq!(back, ev);
        assert!(v1.len() < v2.len());
    }

    #[test]
    fn truncated_and_garbage_bodies_are_told_apart() {
        let schemas = PlatformEvent::schemas();
        let bytes = encode(2, &schemas[1], &platform_event()).expect("encodes");
        let body = body_of(&bytes);
        let cut = &body[..body.len() / 2];
        let r = decode_body::<PlatformEvent>(2, &schemas[1], &schemas[1], cut);
        assert_eq!(r.map_err(|e| e.reason()), Err("truncated_body"));
        let garbage = [0xffu8; 40];
        let r = decode_body::<PlatformEvent>(2, &schemas[1], &schemas[1], &garbage);
        assert_eq!(r.map_err(|e| e.reason()), Err("malformed_body"));
        let mut long = body.to_vec();
        long.extend_from_slice(b"xx");
        let r = decode_body::<PlatformEvent>(2, &schemas[1], &schemas[1], &long);
        assert_eq!(r.map_err(|e| e.reason()), Err("malformed_body"));
    }

    #[test]
    fn header_errors() {
        assert_eq!(split_header(&[]), Err(DecodeError::EmptyValue));
        assert_eq!(
            split_header(&[1, 0, 0, 0, 1, 2]),
            Err(DecodeError::BadMagic { found: 1 })
        );
        assert_eq!(
            split_header(&[0, 0, 1]),
            Err(DecodeError::Truncated { id: None, len: 3 })
        );
        assert_eq!(split_header(&[0, 0, 0, 1, 2, 9]), Ok((258, &[9u8][..])));
    }

    #[test]
    fn order_events_round_trip_through_v1() {
        let schemas = OrderEvent::schemas();
        let ev = OrderEvent {
            tenant_id: "t".into(),
            order_id: "o".into(),
            version: 3,
            event_type: "order.paid".into(),
            event_time: 5,
            status: "paid".into(),
            customer_id: "c".into(),
            currency: "EUR".into(),
            total_minor: 1234,
            items: vec![crate::model::LineItem {
                sku: "s".into(),
                qty: 2,
                price_minor: 617,
            }],
            refunded_minor: 10,
            channel: Some("web".into()),
        };
        let v1 = encode(1, &schemas[0], &ev).expect("encodes");
        let back: OrderEvent =
            decode_body(1, &schemas[0], OrderEvent::reader_schema(), body_of(&v1))
                .expect("decodes");
        assert_eq!(back.refunded_minor, 0);
        assert_eq!(back.channel, None);
        assert_eq!(back.items, ev.items);
    }
}
