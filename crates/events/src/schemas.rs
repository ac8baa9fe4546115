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
