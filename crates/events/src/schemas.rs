//! The schemas in `schemas/`, compiled in. Index 0 is v1; the last entry is the reader schema.

use std::sync::LazyLock;

use apache_avro::Schema;

pub const PLATFORM_EVENT: &[&str] = &[
    include_str!("../../../schemas/platform_event/v1.avsc"),
    include_str!("../../../schemas/platform_event/v2.avsc"),
];

pub const ORDER_EVENT: &[&str] = &[
    include_str!("../../../schemas/order_event/v1.avsc"),
    include_str!("../../../schemas/order_event/v2.avsc"),
];

/// Every version of both events, parsed once.
pub static PARSED: LazyLock<Parsed> = LazyLock::new(|| Parsed {
    platform_event: parse_all(PLATFORM_EVENT),
    order_event: parse_all(ORDER_EVENT),
});

pub struct Parsed {
    pub platform_event: Vec<Schema>,
    pub order_event: Vec<Schema>,
}

fn parse_all(texts: &[&str]) -> Vec<Schema> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| match Schema::parse_str(t) {
            Ok(s) => s,
            // The files are part of the build; `schemas_parse` below keeps this unreachable.
            Err(e) => panic!("schemas/ v{} does not parse: {e}", i + 1),
        })
        .collect()
}

/// The registry subject of a topic's values (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

#[cfg(test)]
mod tests {
    use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

    use super::*;

    #[test]
    fn schemas_parse() {
        assert_eq!(PARSED.platform_event.len(), PLATFORM_EVENT.len());
        assert_eq!(PARSED.order_event.len(), ORDER_EVENT.len());
    }

    /// `make schemas-check`: each version can read data written with every earlier one
    /// (BACKWARD_TRANSITIVE), so consumers may upgrade before producers.
    #[test]
    fn schemas_every_version_is_backward_compatible_with_all_earlier_ones() {
        for (name, versions) in [
            ("PlatformEvent", &PARSED.platform_event),
            ("OrderEvent", &PARSED.order_event),
        ] {
            for (new, reader) in versions.iter().enumerate() {
                for (old, writer) in versions[..new].iter().enumerate() {
                    let c = SchemaCompatibility::can_read(writer, reader);
                    assert!(
                        matches!(c, Ok(Compatibility::Full)),
                        "{name} v{} cannot read v{}: {c:?}",
                        new + 1,
                        old + 1
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod sample_tests {
    use serde_json::{json, Value};

    use crate::codec::{decode_body, encode, HEADER_LEN};
    use crate::model::{Event, OrderEvent, PlatformEvent};

    fn sample(path: &str) -> Value {
        let text = std::fs::read_to_string(format!(
            "{}/../../schemas/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap_or_else(|e| panic!("schemas/{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("schemas/{path}: {e}"))
    }

    /// A sample of version `v` encodes with that version's schema and decodes through the
    /// reader schema into `expected` (the sample plus the defaults of later fields).
    fn round_trip<T: Event + PartialEq + std::fmt::Debug>(
        v: usize,
        sample: Value,
        expected: Value,
    ) {
        let event: T = serde_json::from_value(expected.clone()).expect("sample fits the struct");
        let bytes = encode(v as u32, &T::schemas()[v - 1], &event)
            .expect("sample encodes with its version");
        let back: T = decode_body(
            v as u32,
            &T::schemas()[v - 1],
            T::reader_schema(),
            &bytes[HEADER_LEN..],
        )
        .expect("decodes through the reader schema");
        assert_eq!(
            back,
            serde_json::from_value::<T>(expected).expect("expected")
        );
        // The sample names exactly the fields of its version.
        let Some(apache_avro::Schema::Record(r)) = Some(&T::schemas()[v - 1]) else {
            panic!("record schema")
        };
        let names: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
        let keys: Vec<&str> = sample
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut names_sorted = names.clone();
        names_sorted.sort_unstable();
        assert_eq!(keys, names_sorted, "sample v{v} fields");
    }

    #[test]
    fn samples_match_their_schema_versions() {
        let p1 = sample("platform_event/samples/v1.json");
        let mut p1_read = p1.clone();
        p1_read["severity"] = json!("INFO");
        p1_read["context"]["service_version"] = Value::Null;
        round_trip::<PlatformEvent>(1, p1, p1_read);
        let p2 = sample("platform_event/samples/v2.json");
        round_trip::<PlatformEvent>(2, p2.clone(), p2);

        let o1 = sample("order_event/samples/v1.json");
        let mut o1_read = o1.clone();
        o1_read["refunded_minor"] = json!(0);
        o1_read["channel"] = Value::Null;
        round_trip::<OrderEvent>(1, o1, o1_read);
        let o2 = sample("order_event/samples/v2.json");
        round_trip::<OrderEvent>(2, o2.clone(), o2);
    }
}
