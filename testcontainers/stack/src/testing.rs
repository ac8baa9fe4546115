//! Helpers for tests that run against the local stack.
//!
//! Tests never share names: each asks for a fresh topic, group or database, so tests can run
//! in parallel against one stack and re-runs never see old data.

use rand::RngExt;

use crate::spec::{Endpoints, StackSpec};
use crate::StackError;

/// Environment variable naming the stack to use when the endpoint variables are not set.
pub const ENV_STACK_NAME: &str = "EVENTPIPE_STACK";

/// The endpoints of the stack under test: from the `EVENTPIPE_*` variables when set (as `make
/// test` does), else from the saved spec of the stack named by `$EVENTPIPE_STACK` (default
/// `default`).
pub fn endpoints() -> Result<Endpoints, StackError> {
    if let Some(e) = Endpoints::from_lookup(|k| std::env::var(k).ok()) {
        return Ok(e);
    }
    let name = std::env::var(ENV_STACK_NAME).unwrap_or_else(|_| "default".to_owned());
    Ok(StackSpec::load(&name)?.endpoints())
}

/// [`endpoints`], panicking with the way out: tests cannot run without a stack.
pub fn stack() -> Endpoints {
    match endpoints() {
        Ok(e) => e,
        Err(e) => {
            panic!("no local stack to test against: {e}. Run `make test` (or `make stack-up`)")
        }
    }
}

/// `prefix` followed by a random suffix, valid as a topic, group, database or key name.
pub fn unique(prefix: &str) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..10)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect();
    format!("{prefix}-{suffix}")
}

/// A fresh topic name.
pub fn topic() -> String {
    unique("t")
}

/// A fresh consumer group id.
pub fn group() -> String {
    unique("g")
}

/// A fresh MongoDB database name (no `-`, which MongoDB allows but shells dislike).
pub fn database() -> String {
    unique("db").replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fresh_and_valid() {
        let a = topic();
        let b = topic();
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
        assert!(!database().contains('-'));
    }
}
