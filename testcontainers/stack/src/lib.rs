//! The local stack: real services as local processes, installed on demand from the package
//! registries and cached outside the repository (no Docker engine is needed).
//!
//! | service | what runs | default port |
//! |---|---|---|
//! | broker | `nisshi` (Kafka wire protocol), sqlite or memory storage | 9092 |
//! | registry | this project's Confluent-compatible schema registry, state in `_schemas` | 8081 |
//! | mongod | MongoDB 6.0.5 as the one-node replica set `rs0` | 27017 |
//! | redis | six `redis-server` in cluster mode: 3 masters, 3 replicas | 7000–7005 |
//!
//! # Layout
//! - [`spec`]: a stack's name, ports and storage, and the endpoints it offers.
//! - [`install`]: fetching and building the services once into the cache directory.
//! - [`process`]: starting detached processes and stopping them by pid.
//! - [`services`]: starting each service, waiting for health, status, restart.
//! - [`testing`]: helpers for tests: endpoints of the running stack, fresh unique names.

pub mod install;
pub mod process;
pub mod services;
pub mod spec;
pub mod testing;

pub use spec::{Endpoints, StackSpec, Storage};

/// A stack operation that failed, with what to do about it in the message.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Install(String),
    #[error("{service} did not become healthy within {seconds}s: {detail} (log: {log})")]
    Unhealthy {
        service: String,
        seconds: u64,
        detail: String,
        log: String,
    },
    #[error("{0}")]
    Other(String),
}

impl StackError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StackError {
        let what = what.into();
        move |source| StackError::Io { what, source }
    }
}

/// Where installs and stack data live: `$EVENTPIPE_CACHE_DIR`, else `$XDG_CACHE_HOME/eventpipe`,
/// else `~/.cache/eventpipe`.
pub fn cache_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("EVENTPIPE_CACHE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return std::path::PathBuf::from(d).join("eventpipe");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    std::path::PathBuf::from(home)
        .join(".cache")
        .join("eventpipe")
}
