//! Connection settings for the stores the sinks write to.
//!
//! # Layout
//! - [`MongoConfig`]: the `[sink]` section of the MongoDB writers.
//! - [`RedisConfig`]: the `[sink]` section of `cache-updater`.

use eventpipe_runtime::config::{Invalid, Validate};
use serde::{Deserialize, Serialize};

/// `[sink]` of `ingest-writer`, `audit-writer` and `aggregator`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// `mongodb://` or `mongodb+srv://` URI; credentials and TLS options go here.
    pub uri: String,
    pub database: String,
}

impl Validate for MongoConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            return Err(Invalid::new(
                "sink.uri",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        if self.database.is_empty() || self.database.contains(['/', '.', ' ', '"', '$']) {
            return Err(Invalid::new(
                "sink.database",
                "must be a non-empty MongoDB database name",
            ));
        }
        Ok(())
    }
}

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
    fn mongo_validation() {
        let ok = MongoConfig {
            uri: "mongodb://127.0.0.1:27017/?replicaSet=rs0".into(),
            database: "eventpipe".into(),
        };
        assert!(ok.validate().is_ok());
        let bad = MongoConfig {
            uri: "http://x".into(),
            ..ok.clone()
        };
        assert_eq!(bad.validate().map_err(|e| e.key), Err("sink.uri".into()));
        let bad = MongoConfig {
            database: "a.b".into(),
            ..ok
        };
        assert_eq!(
            bad.validate().map_err(|e| e.key),
            Err("sink.database".into())
        );
    }

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
