//! Redis Cluster: `[sink]` of `cache-updater`, the client and how its errors are treated.

use std::time::Duration;

use eventpipe_runtime::config::{Invalid, Validate};
use eventpipe_runtime::sink::SinkError;
use fred::prelude::*;
use fred::types::config::{ClusterDiscoveryPolicy, TlsConnector};
use serde::{Deserialize, Serialize};

/// `[sink]` of `cache-updater`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Seed nodes of the cluster as `host:port`; the rest is discovered.
    pub nodes: Vec<String>,
    /// ACL user (Redis 6+); `None` with a password is the `default` user.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// TLS to every node, verified against the system's root certificates.
    #[serde(default)]
    pub tls: bool,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A command without a reply after this long fails (transient: the batch is retried).
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// Replicas that must hold a batch's writes before its offsets may be committed (`WAIT`);
    /// a master that currently has fewer connected replicas needs only those it has.
    #[serde(default = "default_replica_acks")]
    pub replica_acks: u32,
    #[serde(default = "default_replica_ack_timeout_ms")]
    pub replica_ack_timeout_ms: u64,
    #[serde(default)]
    pub keys: KeysConfig,
}

/// Sizes and lifetimes of the keys `cache-updater` maintains. Expiry is computed from event
/// time (not from when a record is processed), so a replay sets the same expiry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// Prepended to every key name (e.g. `"staging:"` when environments share a cluster).
    pub prefix: String,
    /// `cnt:` counters live this long after their minute.
    pub counters_ttl_hours: u64,
    /// Entries per `tl:` timeline.
    pub timeline_length: u32,
    /// A timeline lives this long after its newest entry.
    pub timeline_ttl_hours: u64,
    /// `uu:` unique-user counts live this long after their day.
    pub unique_users_ttl_days: u64,
    /// A `sess:` session expires this long after its newest event.
    pub session_idle_minutes: u64,
    /// An `ord:` order expires this long after its newest version's event time.
    pub order_ttl_days: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            counters_ttl_hours: 48,
            timeline_length: 100,
            timeline_ttl_hours: 24,
            unique_users_ttl_days: 35,
            session_idle_minutes: 30,
            order_ttl_days: 30,
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_command_timeout_ms() -> u64 {
    10_000
}
fn default_replica_acks() -> u32 {
    1
}
fn default_replica_ack_timeout_ms() -> u64 {
    2_000
}

impl RedisConfig {
    /// `nodes` with every other key at its default.
    pub fn new(nodes: Vec<String>) -> Self {
        Self {
            nodes,
            username: None,
            password: None,
            tls: false,
            connect_timeout_ms: default_connect_timeout_ms(),
            command_timeout_ms: default_command_timeout_ms(),
            replica_acks: default_replica_acks(),
            replica_ack_timeout_ms: default_replica_ack_timeout_ms(),
            keys: KeysConfig::default(),
        }
    }

    fn hosts(&self) -> Vec<(String, u16)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let (h, p) = n.rsplit_once(':')?;
                Some((h.to_owned(), p.parse().ok()?))
            })
            .collect()
    }

    /// A cluster client, connected. Reconnects forever with capped exponential backoff;
    /// follows MOVED/ASK and refreshes the slot map on its own.
    pub async fn connect(&self) -> Result<Client, SinkError> {
        let config = Config {
            server: ServerConfig::Clustered {
                hosts: self
                    .hosts()
                    .into_iter()
                    .map(|(h, p)| Server::new(h, p))
                    .collect(),
                policy: ClusterDiscoveryPolicy::default(),
            },
            username: self.username.clone(),
            password: self.password.clone(),
            tls: if self.tls {
                Some(
                    TlsConnector::default_rustls()
                        .map_err(|e| SinkError::Fatal(format!("sink.tls: {e}")))?
                        .into(),
                )
            } else {
                None
            },
            ..Config::default()
        };
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_millis(self.connect_timeout_ms);
                c.internal_command_timeout = Duration::from_millis(self.command_timeout_ms);
                c.max_command_attempts = 3;
                c.max_redirections = 10;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_millis(self.command_timeout_ms);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()
            .map_err(|e| SinkError::Fatal(format!("sink: {e}")))?;
        client.init().await.map_err(|e| classify(&e))?;
        tracing::info!(nodes = ?self.nodes, tls = self.tls, "connected to the Redis Cluster");
        Ok(client)
    }
}

/// Server errors that mean "not now": a failover, a slot in migration, a node loading.
const TRANSIENT_PREFIXES: &[&str] = &[
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MOVED",
    "ASK",
    "LOADING",
    "MASTERDOWN",
    "READONLY",
    "BUSY",
    "NOREPLICAS",
    "NOSCRIPT",
];

/// Server errors about credentials or permissions: retrying will not help.
const FATAL_PREFIXES: &[&str] = &["NOAUTH", "WRONGPASS", "NOPERM"];

/// How a Redis error is treated: transient (retry the batch), fatal (exit) or, for an error
/// caused by a key's contents (`WRONGTYPE`, a script error), [`SinkError::Transient`] is
/// still returned here and the caller decides per command with [`is_data_error`].
pub fn classify(e: &Error) -> SinkError {
    let detail = e.to_string();
    let upper = e.details().to_ascii_uppercase();
    if matches!(e.kind(), ErrorKind::Auth) || FATAL_PREFIXES.iter().any(|p| upper.starts_with(p)) {
        return SinkError::Fatal(format!("Redis refused the credentials: {detail}"));
    }
    if matches!(e.kind(), ErrorKind::Config | ErrorKind::Url) {
        return SinkError::Fatal(format!("Redis configuration: {detail}"));
    }
    let reason = if TRANSIENT_PREFIXES.iter().any(|p| upper.starts_with(p)) {
        "redis_cluster_unavailable"
    } else if matches!(e.kind(), ErrorKind::Timeout) {
        "redis_timeout"
    } else if matches!(
        e.kind(),
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Cluster | ErrorKind::Routing
    ) {
        "redis_unreachable"
    } else {
        "redis_error"
    };
    SinkError::transient(reason, detail)
}

/// Whether a command failed because of what a key holds (the wrong type, a value a script
/// cannot read): retrying the same command will fail the same way.
pub fn is_data_error(e: &Error) -> bool {
    let upper = e.details().to_ascii_uppercase();
    upper.starts_with("WRONGTYPE") || (upper.starts_with("ERR") && upper.contains("SCRIPT"))
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
        if self.username.is_some() && self.password.is_none() {
            return Err(Invalid::new(
                "sink.password",
                "is required when sink.username is set",
            ));
        }
        if self.command_timeout_ms == 0 {
            return Err(Invalid::new("sink.command_timeout_ms", "must be ≥ 1"));
        }
        if self.replica_acks > 0 && self.replica_ack_timeout_ms == 0 {
            return Err(Invalid::new(
                "sink.replica_ack_timeout_ms",
                "must be ≥ 1 when sink.replica_acks > 0",
            ));
        }
        let k = &self.keys;
        if k.prefix.contains(['{', '}']) {
            return Err(Invalid::new(
                "sink.keys.prefix",
                "must not contain `{` or `}` (the tenant hash tag must be the first one)",
            ));
        }
        if !(1..=10_000).contains(&k.timeline_length) {
            return Err(Invalid::new(
                "sink.keys.timeline_length",
                "must be 1..=10000",
            ));
        }
        for (key, v) in [
            ("sink.keys.counters_ttl_hours", k.counters_ttl_hours),
            ("sink.keys.timeline_ttl_hours", k.timeline_ttl_hours),
            ("sink.keys.unique_users_ttl_days", k.unique_users_ttl_days),
            ("sink.keys.session_idle_minutes", k.session_idle_minutes),
            ("sink.keys.order_ttl_days", k.order_ttl_days),
        ] {
            if v == 0 {
                return Err(Invalid::new(key, "must be ≥ 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let mut c = RedisConfig::new(vec!["127.0.0.1:7000".into()]);
        assert!(c.validate().is_ok());
        c.nodes = vec!["127.0.0.1".into()];
        assert_eq!(c.validate().map_err(|e| e.key), Err("sink.nodes".into()));
        c.nodes.clear();
        assert!(c.validate().is_err());
        let mut c = RedisConfig::new(vec!["127.0.0.1:7000".into()]);
        c.keys.timeline_length = 0;
        assert_eq!(
            c.validate().map_err(|e| e.key),
            Err("sink.keys.timeline_length".into())
        );
        let mut c = RedisConfig::new(vec!["127.0.0.1:7000".into()]);
        c.username = Some("app".into());
        assert_eq!(c.validate().map_err(|e| e.key), Err("sink.password".into()));
    }

    #[test]
    fn errors_are_classified() {
        let server = |m: &str| Error::new(ErrorKind::Unknown, m.to_owned());
        assert!(matches!(
            classify(&server("CLUSTERDOWN The cluster is down")),
            SinkError::Transient { .. }
        ));
        assert!(matches!(
            classify(&Error::new(ErrorKind::IO, "connection reset")),
            SinkError::Transient {
                reason: "redis_unreachable",
                ..
            }
        ));
        assert!(matches!(
            classify(&server("WRONGPASS invalid username-password pair")),
            SinkError::Fatal(_)
        ));
        assert!(is_data_error(&server(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        )));
        assert!(!is_data_error(&server("TRYAGAIN")));
    }
}
