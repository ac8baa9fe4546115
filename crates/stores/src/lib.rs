//! Connection settings for the stores the sinks write to.
//!
//! # Layout
//! - [`docs`]: document pieces shared by the MongoDB writers (an event's body).
//! - [`mongo`]: the `[sink]` section of the MongoDB writers ([`MongoConfig`]), the client,
//!   batched write commands and error classification.
//! - [`RedisConfig`]: the `[sink]` section of `cache-updater`.

pub mod docs;
pub mod mongo;

pub use mongo::MongoConfig;

use eventpipe_runtime::config::{Invalid, Validate};
use serde::{Deserialize, Serialize};

/// `[sink]` of `cache-updater`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Seed nodes of the cluster as `host:port`; the rest is discovered.
    pub nodes: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl Validate for RedisConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.nodes.is_empty() {
            return Err(Invalid::new(
                "sink.nodes",
                "must name at least one seed node",
            ));
        }
        for n in &self.nodes {
            let port_ok = n
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(Invalid::new(
                    "sink.nodes",
                    format!("`{n}` is not host:port"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_validation() {
        let mut c = RedisConfig {
            nodes: vec!["127.0.0.1:7000".into()],
            username: None,
            password: None,
        };
        assert!(c.validate().is_ok());
        c.nodes = vec!["127.0.0.1".into()];
        assert!(c.validate().is_err());
        c.nodes.clear();
        assert!(c.validate().is_err());
    }
}
