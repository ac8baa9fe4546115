//! Generated records to Kafka records: the Confluent wire format with the registered ids, and
//! the deliberately malformed bytes of each poison class.

use apache_avro::types::Value;
use apache_avro::Schema;
use eventpipe_events::codec::{encode, EncodeError, HEADER_LEN};
use eventpipe_events::model::Event;
use eventpipe_events::{OrderEvent, PlatformEvent};

use crate::generate::{Body, Generated, PoisonClass, SchemaVersion};
use crate::setup::{SchemaIds, INCOMPATIBLE_PLATFORM_EVENT};

/// A schema id no registry hands out in practice.
pub const UNKNOWN_SCHEMA_ID: u32 = 0x7fff_fff0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Platform,
    Orders,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    pub stream: Stream,
    pub key: Option<String>,
    pub payload: Vec<u8>,
}

fn encode_version<T: Event>(
    ids: [u32; 2],
    version: SchemaVersion,
    event: &T,
) -> Result<Vec<u8>, EncodeError> {
    let i = match version {
        SchemaVersion::V1 => 0,
        SchemaVersion::V2 => 1,
    };
    encode(ids[i], &T::schemas()[i], event)
}

/// The Kafka record for `g`.
pub fn to_wire(g: &Generated, ids: &SchemaIds) -> Result<WireRecord, EncodeError> {
    let (stream, mut payload) = match &g.body {
        Body::Platform(e) => (
            Stream::Platform,
            encode_version::<PlatformEvent>(ids.platform, g.version, e)?,
        ),
        Body::Order(e) => (
            Stream::Orders,
            encode_version::<OrderEvent>(ids.order, g.version, e)?,
        ),
    };
    let mut key = Some(g.key().to_owned());
    match g.poison {
        None => {}
        Some(PoisonClass::BadMagicByte) => payload[0] = 0x01,
        Some(PoisonClass::UnknownSchemaId) => {
            payload[1..HEADER_LEN].copy_from_slice(&UNKNOWN_SCHEMA_ID.to_be_bytes())
        }
        Some(PoisonClass::TruncatedBody) => {
            let keep = HEADER_LEN + (payload.len() - HEADER_LEN) / 2;
            payload.truncate(keep);
        }
        Some(PoisonClass::MalformedBody) => {
            // A valid header, then bytes that are no record of this schema: a huge negative
            // string length as the first field.
            payload.truncate(HEADER_LEN);
            payload.extend_from_slice(&[0x81, 0x80, 0x80, 0x80, 0x10, 0xde, 0xad, 0xbe, 0xef]);
        }
        Some(PoisonClass::IncompatibleWriterSchema) => {
            payload = incompatible_record(ids.incompatible, g)?;
        }
        Some(PoisonClass::MissingKey) => key = None,
    }
    Ok(WireRecord {
        stream,
        key,
        payload,
    })
}

fn incompatible_record(id: u32, g: &Generated) -> Result<Vec<u8>, EncodeError> {
    let err = |reason: String| EncodeError {
        event: PlatformEvent::NAME,
        reason,
    };
    let schema = Schema::parse_str(INCOMPATIBLE_PLATFORM_EVENT).map_err(|e| err(e.to_string()))?;
    let event_id = match &g.body {
        Body::Platform(e) => e.event_id.clone(),
        Body::Order(e) => e.order_id.clone(),
    };
    let value = Value::Record(vec![
        ("tenant_id".to_owned(), Value::Int(7)),
        ("event_id".to_owned(), Value::String(event_id)),
    ]);
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map_err(|e| err(e.to_string()))?;
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}
