//! `cache-updater`'s sink: per-tenant state in a Redis Cluster.
//!
//! | key | type | written |
//! |---|---|---|
//! | `cnt:{t:<tenant>}:<yyyyMMddHHmm>` | hash, count per event type | [`scripts::COUNTERS`]: only records past the key's last applied offset of their partition |
//! | `tl:{t:<tenant>}:<user>` | sorted set `<event_type>\|<event_id>` by event time, newest 100 | [`scripts::TIMELINE`] |
//! | `uu:{t:<tenant>}:<yyyyMMdd>` | HyperLogLog of user ids | `PFADD` (idempotent) |
//! | `sess:{t:<tenant>}:<session>` | hash | [`scripts::SESSION`]: only a newer event time moves it |
//! | `ord:{t:<tenant>}:<order_id>` | hash | [`scripts::ORDER`]: only a newer version replaces it |
//!
//! A batch becomes one pipeline with one command per key (records of one key are folded
//! first); commands go to the master owning their slot. Every command is idempotent, so a
//! batch that failed half way is simply sent again. Before the batch counts as written, every
//! master it touched must have passed the writes to `replica_acks` replicas (`WAIT`), so a
//! failover does not lose what was committed to Kafka.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use eventpipe_events::{AnyEvent, OrderEvent, PlatformEvent};
use eventpipe_runtime::sink::{Outcome, Record, Sink, SinkError};
use eventpipe_stores::redis::{classify, is_data_error, RedisConfig};
use fred::prelude::*;
use fred::types::config::Server;
use fred::types::{CustomCommand, InfoKind};
use metrics::counter;

pub mod keys;
pub mod read;
pub mod scripts;

use keys::{DAY_MS, MINUTE_MS};
use scripts::Scripts;

/// Metric: commands sent, by kind (`counters`, `timeline`, `unique_users`, `session`, `order`).
pub const REDIS_COMMANDS: &str = "eventpipe_redis_commands_total";
/// Metric: records whose count was already applied (a redelivery), not counted again.
pub const COUNTER_REPLAYS: &str = "eventpipe_cache_counter_replays_total";
/// Metric: order versions and session events older than what is stored, by kind.
pub const STALE_SKIPPED: &str = "eventpipe_cache_stale_skipped_total";
/// Metric: batches acknowledged by fewer replicas than configured because a master had fewer
/// connected replicas (e.g. right after a failover).
pub const UNDER_REPLICATED: &str = "eventpipe_redis_under_replicated_total";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Counters,
    Timeline,
    UniqueUsers,
    Session,
    Order,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Counters => "counters",
            Kind::Timeline => "timeline",
            Kind::UniqueUsers => "unique_users",
            Kind::Session => "session",
            Kind::Order => "order",
        }
    }
}

/// One command of a batch's pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub kind: Kind,
    pub keys: Vec<String>,
    pub args: Vec<String>,
    /// Records (indexes into the batch) whose effect this command carries.
    pub records: Vec<usize>,
    /// `PFADD`'s companion: `EXPIREAT` of the same key (unix seconds).
    pub expire_at: Option<i64>,
}

/// What a batch does to Redis, and the records that cannot be keyed.
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub rejected: Vec<(usize, String)>,
}

/// (offset or event time, counter field or timeline member, record index)
type Entry = (i64, String, usize);

/// Builds the commands of a batch (one partition, offset order).
pub fn plan(batch: &[Record], k: &eventpipe_stores::redis::KeysConfig) -> Plan {
    let mut out = Plan::default();
    // Keyed by key name, so the plan (and the pipeline) is the same on every delivery.
    let mut counters: BTreeMap<String, (i64, Vec<Entry>)> = BTreeMap::new();
    let mut timelines: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let mut uniques: BTreeMap<String, (i64, BTreeSet<String>, Vec<usize>)> = BTreeMap::new();
    let mut sessions: BTreeMap<String, (usize, i64, Vec<usize>)> = BTreeMap::new();
    let mut orders: BTreeMap<String, (usize, Vec<usize>)> = BTreeMap::new();
    let source = batch
        .first()
        .map(|r| format!("{}/{}", r.source.topic, r.source.partition))
        .unwrap_or_default();

    for (i, r) in batch.iter().enumerate() {
        let (tenant, event_type, time) = match &r.event {
            AnyEvent::Platform(e) => (&e.tenant_id, &e.event_type, e.event_time),
            AnyEvent::Order(o) => (&o.tenant_id, &o.event_type, o.event_time),
        };
        let (minute, day) = match (keys::minute(time), keys::day(time)) {
            (Ok(m), Ok(d)) => (m, d),
            (Err(e), _) | (_, Err(e)) => {
                out.rejected.push((i, e.to_string()));
                continue;
            }
        };
        let expire = keys::floor(time, MINUTE_MS) / 1000 + (k.counters_ttl_hours * 3600) as i64;
        counters
            .entry(format!("{}{}", k.prefix, keys::counters(tenant, &minute)))
            .or_insert_with(|| (expire, Vec::new()))
            .1
            .push((r.source.offset, event_type.clone(), i));
        match &r.event {
            AnyEvent::Platform(e) => {
                let user = &e.actor.user_id;
                timelines
                    .entry(format!("{}{}", k.prefix, keys::timeline(tenant, user)))
                    .or_default()
                    .push((
                        e.event_time,
                        keys::timeline_member(&e.event_type, &e.event_id),
                        i,
                    ));
                let expire = (keys::floor(time, DAY_MS) + DAY_MS) / 1000
                    + (k.unique_users_ttl_days * 86_400) as i64;
                let u = uniques
                    .entry(format!("{}{}", k.prefix, keys::unique_users(tenant, &day)))
                    .or_insert_with(|| (expire, BTreeSet::new(), Vec::new()));
                u.1.insert(user.clone());
                u.2.push(i);
                if let Some(s) = &e.actor.session_id {
                    let entry = sessions
                        .entry(format!("{}{}", k.prefix, keys::session(tenant, s)))
                        .or_insert((i, time, Vec::new()));
                    if newer_event(e, platform(&batch[entry.0])) {
                        entry.0 = i;
                    }
                    entry.1 = entry.1.min(time);
                    entry.2.push(i);
                }
            }
            AnyEvent::Order(o) => {
                let entry = orders
                    .entry(format!("{}{}", k.prefix, keys::order(tenant, &o.order_id)))
                    .or_insert((i, Vec::new()));
                if o.version > order(&batch[entry.0]).version {
                    entry.0 = i;
                }
                entry.1.push(i);
            }
        }
    }

    for (key, (expire, entries)) in counters {
        let applied = keys::counters_applied(&key);
        let mut args = vec![source.clone(), expire.to_string()];
        for (offset, event_type, _) in &entries {
            args.push(offset.to_string());
            args.push(event_type.clone());
        }
        out.ops.push(Op {
            kind: Kind::Counters,
            keys: vec![key, applied],
            args,
            records: entries.iter().map(|e| e.2).collect(),
            expire_at: None,
        });
    }
    for (key, entries) in timelines {
        let mut args = vec![
            k.timeline_length.to_string(),
            (k.timeline_ttl_hours * 3_600_000).to_string(),
        ];
        for (time, member, _) in &entries {
            args.push(time.to_string());
            args.push(member.clone());
        }
        out.ops.push(Op {
            kind: Kind::Timeline,
            keys: vec![key],
            args,
            records: entries.iter().map(|e| e.2).collect(),
            expire_at: None,
        });
    }
    for (key, (expire, users, records)) in uniques {
        out.ops.push(Op {
            kind: Kind::UniqueUsers,
            keys: vec![key],
            args: users.into_iter().collect(),
            records,
            expire_at: Some(expire),
        });
    }
    for (key, (newest, earliest, records)) in sessions {
        let e = platform(&batch[newest]);
        out.ops.push(Op {
            kind: Kind::Session,
            keys: vec![key],
            args: vec![
                e.event_time.to_string(),
                e.event_id.clone(),
                e.actor.user_id.clone(),
                e.event_type.clone(),
                e.context.service.clone(),
                (k.session_idle_minutes * 60_000).to_string(),
                earliest.to_string(),
            ],
            records,
            expire_at: None,
        });
    }
    for (key, (newest, records)) in orders {
        let o = order(&batch[newest]);
        let expire = o.event_time + (k.order_ttl_days * DAY_MS as u64) as i64;
        let mut args = vec![o.version.to_string(), expire.to_string()];
        for (f, v) in order_fields(o) {
            args.push(f.to_owned());
            args.push(v);
        }
        out.ops.push(Op {
            kind: Kind::Order,
            keys: vec![key],
            args,
            records,
            expire_at: None,
        });
    }
    out
}

fn platform(r: &Record) -> &PlatformEvent {
    match &r.event {
        AnyEvent::Platform(e) => e,
        AnyEvent::Order(_) => unreachable!("only platform events are indexed here"),
    }
}

fn order(r: &Record) -> &OrderEvent {
    match &r.event {
        AnyEvent::Order(o) => o,
        AnyEvent::Platform(_) => unreachable!("only order events are indexed here"),
    }
}

/// Whether `a` is newer than `b` (event time, then event id: the same order everywhere).
fn newer_event(a: &PlatformEvent, b: &PlatformEvent) -> bool {
    (a.event_time, &a.event_id) > (b.event_time, &b.event_id)
}

/// The fields of an `ord:` hash besides `version`.
pub fn order_fields(o: &OrderEvent) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("tenant_id", o.tenant_id.clone()),
        ("order_id", o.order_id.clone()),
        ("status", o.status.clone()),
        ("event_type", o.event_type.clone()),
        ("event_time", o.event_time.to_string()),
        ("customer_id", o.customer_id.clone()),
        ("currency", o.currency.clone()),
        ("total_minor", o.total_minor.to_string()),
        ("refunded_minor", o.refunded_minor.to_string()),
        ("items", o.items.len().to_string()),
    ];
    if let Some(c) = &o.channel {
        f.push(("channel", c.clone()));
    }
    f
}

pub struct CacheSink {
    client: Client,
    config: RedisConfig,
    scripts: Scripts,
}

impl CacheSink {
    /// Connects and loads the scripts on every master.
    pub async fn connect(config: &RedisConfig) -> Result<Self, SinkError> {
        let client = config.connect().await?;
        let sink = Self {
            client,
            config: config.clone(),
            scripts: Scripts::new(),
        };
        sink.load_scripts().await?;
        Ok(sink)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn load_scripts(&self) -> Result<(), SinkError> {
        for s in self.scripts.all() {
            s.load(&self.client).await.map_err(|e| classify(&e))?;
        }
        Ok(())
    }

    /// Sends the plan as one pipeline, nothing else (no outcome mapping, no `WAIT`); one
    /// result per command (two for a `PFADD` with its `EXPIREAT`).
    pub async fn send(&self, ops: &[Op]) -> Result<Vec<Result<Value, Error>>, SinkError> {
        let pipeline = self.client.pipeline();
        let queue = |r: Result<(), Error>| r.map_err(|e| classify(&e));
        for op in ops {
            counter!(REDIS_COMMANDS, "kind" => op.kind.label()).increment(1);
            let script = match op.kind {
                Kind::Counters => &self.scripts.counters,
                Kind::Timeline => &self.scripts.timeline,
                Kind::Session => &self.scripts.session,
                Kind::Order => &self.scripts.order,
                Kind::UniqueUsers => {
                    queue(pipeline.pfadd(op.keys[0].as_str(), op.args.clone()).await)?;
                    if let Some(at) = op.expire_at {
                        queue(pipeline.expire_at(op.keys[0].as_str(), at, None).await)?;
                    }
                    continue;
                }
            };
            // EVALSHA sha numkeys key… arg…, routed by the first key's slot (all keys of an
            // op share it).
            let slot = fred::util::redis_keyslot(op.keys[0].as_bytes());
            let mut args: Vec<String> = Vec::with_capacity(2 + op.keys.len() + op.args.len());
            args.push(script.sha1().to_string());
            args.push(op.keys.len().to_string());
            args.extend(op.keys.iter().cloned());
            args.extend(op.args.iter().cloned());
            queue(
                pipeline
                    .custom(
                        CustomCommand::new_static("EVALSHA", Some(slot), false),
                        args,
                    )
                    .await,
            )?;
        }
        Ok(pipeline.try_all::<Value>().await)
    }

    /// Waits until every master holding one of `ops`' keys has passed its writes to the
    /// configured number of replicas (or to all it currently has).
    async fn wait_replicas(&self, ops: &[Op]) -> Result<(), SinkError> {
        let wanted = i64::from(self.config.replica_acks);
        if wanted == 0 || ops.is_empty() {
            return Ok(());
        }
        let Some(routing) = self.client.cached_cluster_state() else {
            return Err(SinkError::transient(
                "redis_unreachable",
                "no cluster slot map yet",
            ));
        };
        let servers: BTreeSet<Server> = ops
            .iter()
            .filter_map(|op| {
                let slot = fred::util::redis_keyslot(op.keys[0].as_bytes());
                routing.get_server(slot).cloned()
            })
            .collect();
        for server in servers {
            let node = self.client.with_cluster_node(server.clone());
            let acked: i64 = node
                .wait(wanted, self.config.replica_ack_timeout_ms as i64)
                .await
                .map_err(|e| classify(&e))?;
            if acked >= wanted {
                continue;
            }
            let info: String = node
                .info(Some(InfoKind::Replication))
                .await
                .map_err(|e| classify(&e))?;
            let connected = connected_replicas(&info);
            if acked >= connected {
                counter!(UNDER_REPLICATED).increment(1);
                tracing::warn!(%server, acked, connected, wanted, "master has fewer replicas than sink.replica_acks; writes acknowledged by all it has");
                continue;
            }
            return Err(SinkError::transient(
                "redis_replication_lag",
                format!(
                    "{server}: {acked} of {wanted} replicas acknowledged within {} ms",
                    self.config.replica_ack_timeout_ms
                ),
            ));
        }
        Ok(())
    }
}

/// `connected_slaves:<n>` of `INFO replication`.
fn connected_replicas(info: &str) -> i64 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl Sink for CacheSink {
    async fn write(&self, batch: &[Record]) -> Result<Vec<Outcome>, SinkError> {
        let plan = plan(batch, &self.config.keys);
        let mut outcomes = vec![Outcome::Written; batch.len()];
        for (i, detail) in &plan.rejected {
            outcomes[*i] = Outcome::Rejected {
                reason: "event_time_out_of_range",
                detail: detail.clone(),
            };
        }
        let mut results = self.send(&plan.ops).await?;
        let noscript = results
            .iter()
            .any(|r| matches!(r, Err(e) if e.details().starts_with("NOSCRIPT")));
        if noscript {
            // A master without the scripts (a replica promoted since start-up): load them
            // everywhere and send the whole batch again; every command is idempotent.
            tracing::info!("scripts missing on a master; loading them again");
            self.load_scripts().await?;
            results = self.send(&plan.ops).await?;
        }

        let mut stale: HashMap<&'static str, u64> = HashMap::new();
        let mut replays = 0u64;
        let mut results = results.into_iter();
        for op in &plan.ops {
            let mut op_results = vec![results.next()];
            if op.expire_at.is_some() {
                op_results.push(results.next());
            }
            for r in op_results {
                let Some(r) = r else {
                    return Err(SinkError::transient(
                        "redis_error",
                        "fewer pipeline replies than commands",
                    ));
                };
                match r {
                    Ok(v) => {
                        let n = v.as_i64().unwrap_or(0);
                        match op.kind {
                            Kind::Counters => replays += op.records.len() as u64 - n.max(0) as u64,
                            Kind::Order => {
                                *stale.entry("order").or_default() +=
                                    op.records.len() as u64 - u64::from(n == 1);
                            }
                            Kind::Session => {
                                *stale.entry("session").or_default() +=
                                    op.records.len() as u64 - u64::from(n == 1);
                            }
                            Kind::Timeline | Kind::UniqueUsers => {}
                        }
                    }
                    Err(e) if is_data_error(&e) => {
                        for &i in &op.records {
                            outcomes[i] = Outcome::Rejected {
                                reason: "redis_rejected",
                                detail: format!("{} {}: {e}", op.kind.label(), op.keys[0]),
                            };
                        }
                    }
                    Err(e) => return Err(classify(&e)),
                }
            }
        }
        self.wait_replicas(&plan.ops).await?;
        counter!(COUNTER_REPLAYS).increment(replays);
        for (kind, n) in stale {
            counter!(STALE_SKIPPED, "kind" => kind).increment(n);
        }
        Ok(outcomes)
    }

    async fn check(&self) -> Result<(), SinkError> {
        let _: String = self.client.ping(None).await.map_err(|e| classify(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventpipe_events::model::{Actor, Context, Severity};
    use eventpipe_runtime::sink::Source;
    use eventpipe_stores::redis::KeysConfig;
    use std::sync::Arc;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn record(offset: i64, event: AnyEvent) -> Record {
        Record {
            source: Source {
                topic: Arc::from("platform.events"),
                partition: 2,
                offset,
                timestamp: None,
            },
            event,
            schema_id: 1,
            schema_version: Some(2),
        }
    }

    fn event(id: &str, user: &str, session: Option<&str>, time: i64) -> AnyEvent {
        AnyEvent::Platform(PlatformEvent {
            tenant_id: "acme".into(),
            event_id: id.into(),
            event_type: "page.view".into(),
            event_time: time,
            actor: Actor {
                user_id: user.into(),
                session_id: session.map(Into::into),
                ip_address: None,
                user_agent: None,
            },
            context: Context {
                request_id: None,
                trace_id: None,
                environment: "production".into(),
                service: "web".into(),
                service_version: None,
            },
            payload: Default::default(),
            compliance_required: false,
            severity: Severity::Info,
        })
    }

    #[test]
    fn a_batch_folds_into_one_command_per_key() {
        let batch = vec![
            record(10, event("e1", "u1", Some("s1"), T0 + 5_000)),
            record(11, event("e2", "u1", Some("s1"), T0 + 1_000)),
            record(12, event("e3", "u2", None, T0 + 61_000)),
        ];
        let p = plan(&batch, &KeysConfig::default());
        assert!(p.rejected.is_empty());
        let kinds: Vec<(Kind, &str)> = p.ops.iter().map(|o| (o.kind, o.keys[0].as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::Counters, "cnt:{t:acme}:202601010000"),
                (Kind::Counters, "cnt:{t:acme}:202601010001"),
                (Kind::Timeline, "tl:{t:acme}:u1"),
                (Kind::Timeline, "tl:{t:acme}:u2"),
                (Kind::UniqueUsers, "uu:{t:acme}:20260101"),
                (Kind::Session, "sess:{t:acme}:s1"),
            ]
        );
        let counters = &p.ops[0];
        assert_eq!(counters.keys[1], "cnt:{t:acme}:202601010000:applied");
        assert_eq!(
            counters.args,
            vec![
                "platform.events/2",
                &((T0 / 1000) + 48 * 3600).to_string(),
                "10",
                "page.view",
                "11",
                "page.view"
            ]
        );
        // The session takes the newest event and the earliest time of the batch.
        let session = &p.ops[5];
        assert_eq!(session.args[0], (T0 + 5_000).to_string());
        assert_eq!(session.args[1], "e1");
        assert_eq!(session.args[6], (T0 + 1_000).to_string());
        assert_eq!(p.ops[4].args, vec!["u1", "u2"]);
    }

    #[test]
    fn an_unnameable_event_time_is_rejected() {
        let batch = vec![record(1, event("e1", "u1", None, i64::MAX))];
        let p = plan(&batch, &KeysConfig::default());
        assert_eq!(p.rejected.len(), 1);
        assert!(p.ops.is_empty());
    }

    #[test]
    fn replication_info_is_read() {
        assert_eq!(
            connected_replicas("# Replication\r\nrole:master\r\nconnected_slaves:1\r\n"),
            1
        );
        assert_eq!(connected_replicas("role:master\r\n"), 0);
    }
}
