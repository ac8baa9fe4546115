//! Compatibility levels and the Avro checks behind them.
//!
//! BACKWARD means consumers using the new schema can read data written with the old one (the
//! new schema is the *reader*); FORWARD the reverse; FULL both. The non-transitive levels check
//! against the latest live version only, the `_TRANSITIVE` ones against every live version.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    fn checks_backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn checks_forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = ();

    /// Case-insensitive, as Confluent accepts `backward` and `BACKWARD` alike.
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => Level::None,
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            _ => return Err(()),
        })
    }
}

/// Checks `candidate` against `existing` (oldest first) at `level`. Returns one message per
/// problem found; empty means compatible.
pub fn check(level: Level, candidate: &Schema, existing: &[&Schema]) -> Vec<String> {
    let against: &[&Schema] = if level.is_transitive() {
        existing
    } else {
        existing.last().map(std::slice::from_ref).unwrap_or(&[])
    };
    let mut problems = Vec::new();
    for (i, old) in against.iter().enumerate() {
        let which = if level.is_transitive() {
            format!("version index {i}")
        } else {
            "the latest version".to_owned()
        };
        if level.checks_backward() {
            if let Some(p) = can_read(old, candidate) {
                problems.push(format!(
                    "new schema cannot read data written with {which}: {p}"
                ));
            }
        }
        if level.checks_forward() {
            if let Some(p) = can_read(candidate, old) {
                problems.push(format!(
                    "{which} cannot read data written with the new schema: {p}"
                ));
            }
        }
    }
    problems
}

/// `None` when data written with `writer` can always be read with `reader`.
fn can_read(writer: &Schema, reader: &Schema) -> Option<String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => None,
        // Partial: resolution fails for some values (an enum symbol or union branch the reader
        // lacks). Confluent rejects these, so do we.
        Ok(Compatibility::Partial) => Some(
            "some values cannot be resolved (enum symbols or union branches missing in the reader)"
                .to_owned(),
        ),
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"E","fields":[{fields}]}}"#
        ))
        .expect("test schema parses")
    }

    #[test]
    fn adding_a_field_with_default_is_backward_and_forward_compatible() {
        let v1 = schema(r#"{"name":"a","type":"string"}"#);
        let v2 = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        assert!(check(Level::Backward, &v2, &[&v1]).is_empty());
        assert!(check(Level::Full, &v2, &[&v1]).is_empty());
    }

    #[test]
    fn adding_a_field_without_default_is_not_backward_compatible() {
        let v1 = schema(r#"{"name":"a","type":"string"}"#);
        let v2 = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        assert_eq!(check(Level::Backward, &v2, &[&v1]).len(), 1);
        // Old readers simply ignore the new field.
        assert!(check(Level::Forward, &v2, &[&v1]).is_empty());
        assert!(check(Level::None, &v2, &[&v1]).is_empty());
    }

    #[test]
    fn transitive_levels_check_every_version() {
        let v1 = schema(r#"{"name":"a","type":"string"}"#);
        let v2 = schema(r#"{"name":"b","type":"int","default":0}"#);
        let v3 = schema(r#"{"name":"b","type":"int","default":0},{"name":"c","type":"int"}"#);
        // v3 against v2 only: `c` has no default, so BACKWARD fails either way; use a case
        // where only the older version is a problem.
        let v3_ok = schema(r#"{"name":"b","type":"int","default":0}"#);
        assert!(check(Level::Backward, &v3_ok, &[&v1, &v2]).is_empty());
        assert!(check(Level::Forward, &v3_ok, &[&v1, &v2]).is_empty());
        // v1 readers need `a`, which v3_ok lacks and which has no default.
        assert_eq!(
            check(Level::ForwardTransitive, &v3_ok, &[&v1, &v2]).len(),
            1
        );
        assert!(!check(Level::BackwardTransitive, &v3, &[&v1, &v2]).is_empty());
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!("full_transitive".parse(), Ok(Level::FullTransitive));
        assert_eq!("BACKWARD".parse(), Ok(Level::Backward));
        assert!("SIDEWAYS".parse::<Level>().is_err());
    }
}
