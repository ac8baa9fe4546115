//! What a stack is: a name (its data directory), ports and broker storage; and the endpoints
//! clients use, as environment variables.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::StackError;

/// Environment variables that carry the endpoints to clients, tests and `make run`.
pub const ENV_KAFKA: &str = "EVENTPIPE_KAFKA_BOOTSTRAP";
pub const ENV_REGISTRY: &str = "EVENTPIPE_SCHEMA_REGISTRY_URL";
pub const ENV_MONGODB: &str = "EVENTPIPE_MONGODB_URI";
pub const ENV_REDIS: &str = "EVENTPIPE_REDIS_NODES";

/// Number of Redis Cluster nodes: three masters, each with one replica.
pub const REDIS_NODES: u16 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Durable across broker restarts (a sqlite file in the stack directory).
    Sqlite,
    /// Fastest; everything is lost when the broker stops.
    Memory,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSpec {
    /// Names the data directory, so several stacks can live side by side.
    pub name: String,
    pub kafka_port: u16,
    pub registry_port: u16,
    pub mongo_port: u16,
    /// The first of six consecutive ports.
    pub redis_port: u16,
    pub storage: Storage,
}

impl Default for StackSpec {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            kafka_port: 9092,
            registry_port: 8081,
            mongo_port: 27017,
            redis_port: 7000,
            storage: Storage::Sqlite,
        }
    }
}

impl StackSpec {
    /// The default ports shifted by `offset`, for a second stack on the same machine.
    pub fn with_offset(name: &str, offset: u16, storage: Storage) -> Self {
        let d = Self::default();
        Self {
            name: name.to_owned(),
            kafka_port: d.kafka_port + offset,
            registry_port: d.registry_port + offset,
            mongo_port: d.mongo_port + offset,
            redis_port: d.redis_port + offset,
            storage,
        }
    }

    pub fn dir(&self) -> PathBuf {
        stack_dir(&self.name)
    }

    pub fn redis_ports(&self) -> impl Iterator<Item = u16> {
        let first = self.redis_port;
        (0..REDIS_NODES).map(move |i| first + i)
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            kafka_bootstrap: format!("127.0.0.1:{}", self.kafka_port),
            schema_registry_url: format!("http://127.0.0.1:{}", self.registry_port),
            mongodb_uri: format!("mongodb://127.0.0.1:{}/?replicaSet=rs0", self.mongo_port),
            redis_nodes: self
                .redis_ports()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect(),
        }
    }

    /// Records the spec in the stack directory, so `status`, `env` and `down` find it.
    pub fn save(&self) -> Result<(), StackError> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir)
            .map_err(StackError::io(format!("creating {}", dir.display())))?;
        let path = dir.join("stack.json");
        let text =
            serde_json::to_string_pretty(self).map_err(|e| StackError::Other(e.to_string()))?;
        std::fs::write(&path, text).map_err(StackError::io(format!("writing {}", path.display())))
    }

    /// The spec saved by `stack up --name name`.
    pub fn load(name: &str) -> Result<Self, StackError> {
        let path = stack_dir(name).join("stack.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            StackError::Other(format!(
                "no stack named `{name}` ({}: {e}); start it with `make stack-up`",
                path.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| StackError::Other(format!("{}: {e}", path.display())))
    }
}

pub fn stack_dir(name: &str) -> PathBuf {
    crate::cache_dir().join("stacks").join(name)
}

/// How clients reach a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub kafka_bootstrap: String,
    pub schema_registry_url: String,
    pub mongodb_uri: String,
    /// `host:port` of every cluster node (any of them works as a seed).
    pub redis_nodes: Vec<String>,
}

impl Endpoints {
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (ENV_KAFKA, self.kafka_bootstrap.clone()),
            (ENV_REGISTRY, self.schema_registry_url.clone()),
            (ENV_MONGODB, self.mongodb_uri.clone()),
            (ENV_REDIS, self.redis_nodes.join(",")),
        ]
    }

    /// Shell `export` lines, for `eval "$(stack env)"`.
    pub fn to_shell(&self) -> String {
        self.to_env()
            .into_iter()
            .map(|(k, v)| format!("export {k}={v}\n"))
            .collect()
    }

    /// All four variables from `lookup` (e.g. the process environment), or `None` if any is
    /// missing.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        Some(Self {
            kafka_bootstrap: lookup(ENV_KAFKA)?,
            schema_registry_url: lookup(ENV_REGISTRY)?,
            mongodb_uri: lookup(ENV_MONGODB)?,
            redis_nodes: lookup(ENV_REDIS)?
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_round_trip() {
        let e = StackSpec::with_offset("x", 100, Storage::Memory).endpoints();
        assert_eq!(e.kafka_bootstrap, "127.0.0.1:9192");
        assert_eq!(e.redis_nodes.len(), 6);
        let env: std::collections::HashMap<_, _> = e.to_env().into_iter().collect();
        assert_eq!(Endpoints::from_lookup(|k| env.get(k).cloned()), Some(e));
        assert_eq!(Endpoints::from_lookup(|_| None), None);
    }
}
