//! The expected state, computed from the source records alone by a straightforward
//! reading of the pipeline's rules: insert-once events, newest order version, every audit
//! event once, buckets by event time with the lateness rule, Redis structures with their
//! expiries. It shares no code with the writers beyond the key and bucket names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use aggregator::{
    hll_position, order_effect, Granularity, EVENT_GRANULARITIES, ORDER_GRANULARITIES,
};
use bson::{Bson, Document};
use cache_updater::keys;
use eventpipe_events::model::{OrderEvent, PlatformEvent};
use eventpipe_events::AnyEvent;
use eventpipe_stores::mongo::WindowsConfig;
use eventpipe_stores::redis::KeysConfig;

use crate::topics::Coord;

/// The sink settings the expectation depends on (they come from the binaries' configs).
#[derive(Debug, Clone)]
pub struct Settings {
    pub windows: WindowsConfig,
    pub keys: KeysConfig,
    /// Redis keys whose expiry falls before `now_ms + EXPIRY_MARGIN_MS` are not expected (and
    /// not counted as extra if still there).
    pub now_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            windows: WindowsConfig::default(),
            keys: KeysConfig::default(),
            now_ms: bson::DateTime::now().timestamp_millis(),
        }
    }
}

/// Keys this close to their expiry may or may not be there when they are read.
pub const EXPIRY_MARGIN_MS: i64 = 120_000;

/// (tenant, event_type, environment, granularity, bucket_start ms)
pub type EventKey = (String, String, String, &'static str, i64);
/// (tenant, currency, granularity, bucket_start ms)
pub type OrderKey = (String, String, &'static str, i64);

/// An event bucket: records counted, their users (exactly and as sketch registers), first and
/// last event time.
#[derive(Debug, Clone)]
pub struct EventBucket {
    pub count: i64,
    pub users: HashSet<String>,
    pub registers: Vec<i32>,
    pub first: i64,
    pub last: i64,
}

/// A session hash: newest event time, its event id, earliest event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub last: i64,
    pub last_id: String,
    pub started: i64,
}

/// The expected state of every store.
#[derive(Debug, Default)]
pub struct Expected {
    pub settings: Settings,
    /// Source records read (decodable or not).
    pub records: u64,
    /// (tenant, event_id) → digest of the first stored body ([`body_digest`]).
    pub events: HashMap<(String, String), u64>,
    /// (tenant, order_id) → (newest version, its status).
    pub orders: HashMap<(String, String), (i64, String)>,
    /// (tenant, event_id) of every audit event.
    pub audit: HashSet<(String, String)>,
    pub event_buckets: HashMap<EventKey, EventBucket>,
    pub order_buckets: HashMap<OrderKey, [i64; 4]>,
    /// Per source partition: the newest event time folded so far.
    watermarks: HashMap<(String, i32), i64>,
    /// Records the aggregator must send to `<topic>.late`, with the reason.
    pub late: BTreeMap<Coord, &'static str>,
    /// Records no consumer can decode, with the reason: every group dead-letters them.
    pub dead: BTreeMap<Coord, String>,
    /// Redis, keys with the configured prefix: counters by event type.
    pub counters: HashMap<String, BTreeMap<String, i64>>,
    /// Timeline entries (event time, member) in score order, newest `timeline_length` kept.
    pub timelines: HashMap<String, Vec<(i64, String)>>,
    pub unique_users: HashMap<String, HashSet<String>>,
    pub sessions: HashMap<String, Session>,
    /// Order hashes: (version, status, event time of that version).
    pub cache_orders: HashMap<String, (i64, String, i64)>,
    /// Keys that expire within [`EXPIRY_MARGIN_MS`] of now or earlier: neither expected nor
    /// extra.
    pub expiring: HashSet<String>,
}

/// A digest of the fields an `events` document carries from the event itself (the same fields
/// the audit log hashes), in document order; ingestion metadata (`_id`, schema, retention,
/// expiry, source) is left out, so the stored document and `stores::docs::event_body` of the
/// expected event digest alike.
pub fn body_digest(d: &Document) -> u64 {
    let mut h = DefaultHasher::new();
    for (k, v) in d {
        if audit_writer::CONTENT_FIELDS.contains(&k.as_str()) {
            k.hash(&mut h);
            bson::serialize_to_vec(&bson::doc! {"v": v})
                .unwrap_or_default()
                .hash(&mut h);
        }
    }
    h.finish()
}

impl Expected {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// A record no consumer could decode.
    pub fn add_undecodable(&mut self, at: Coord, reason: &str) {
        self.records += 1;
        self.dead.insert(at, reason.to_owned());
    }

    /// A decoded record at `at`, in offset order within its partition.
    pub fn add(&mut self, at: Coord, event: &AnyEvent) {
        self.records += 1;
        match event {
            AnyEvent::Platform(e) => {
                self.events
                    .entry((e.tenant_id.clone(), e.event_id.clone()))
                    .or_insert_with(|| body_digest(&eventpipe_stores::docs::event_body(e)));
                if e.is_audit() {
                    self.audit.insert((e.tenant_id.clone(), e.event_id.clone()));
                }
                self.cache_platform(e);
            }
            AnyEvent::Order(o) => {
                let slot = self
                    .orders
                    .entry((o.tenant_id.clone(), o.order_id.clone()))
                    .or_insert((i64::MIN, String::new()));
                if o.version > slot.0 {
                    *slot = (o.version, o.status.clone());
                }
                self.cache_order(o);
            }
        }
        self.count(event);
        self.fold(at, event);
    }

    fn expiring(&mut self, key: &str, expires_ms: i64) -> bool {
        if expires_ms <= self.settings.now_ms + EXPIRY_MARGIN_MS {
            self.expiring.insert(key.to_owned());
            true
        } else {
            false
        }
    }

    fn key(&self, name: String) -> String {
        format!("{}{name}", self.settings.keys.prefix)
    }

    fn count(&mut self, event: &AnyEvent) {
        let (tenant, event_type, time) = match event {
            AnyEvent::Platform(e) => (&e.tenant_id, &e.event_type, e.event_time),
            AnyEvent::Order(o) => (&o.tenant_id, &o.event_type, o.event_time),
        };
        let Ok(minute) = keys::minute(time) else {
            return;
        };
        let key = self.key(keys::counters(tenant, &minute));
        let ttl = self.settings.keys.counters_ttl_hours as i64 * 3_600_000;
        if self.expiring(&key, keys::floor(time, keys::MINUTE_MS) + ttl) {
            return;
        }
        *self
            .counters
            .entry(key)
            .or_default()
            .entry(event_type.clone())
            .or_default() += 1;
    }

    fn cache_platform(&mut self, e: &PlatformEvent) {
        let k = self.settings.keys.clone();
        let (Ok(day), time) = (keys::day(e.event_time), e.event_time) else {
            return;
        };
        let timeline = self.key(keys::timeline(&e.tenant_id, &e.actor.user_id));
        self.timelines
            .entry(timeline)
            .or_default()
            .push((time, keys::timeline_member(&e.event_type, &e.event_id)));

        let uu = self.key(keys::unique_users(&e.tenant_id, &day));
        let uu_expires = keys::floor(time, keys::DAY_MS)
            + keys::DAY_MS
            + k.unique_users_ttl_days as i64 * keys::DAY_MS;
        if !self.expiring(&uu, uu_expires) {
            self.unique_users
                .entry(uu)
                .or_default()
                .insert(e.actor.user_id.clone());
        }

        if let Some(s) = &e.actor.session_id {
            let key = self.key(keys::session(&e.tenant_id, s));
            let entry = self.sessions.entry(key).or_insert_with(|| Session {
                last: time,
                last_id: e.event_id.clone(),
                started: time,
            });
            if (time, &e.event_id) > (entry.last, &entry.last_id) {
                entry.last = time;
                entry.last_id = e.event_id.clone();
            }
            entry.started = entry.started.min(time);
        }
    }

    fn cache_order(&mut self, o: &OrderEvent) {
        let key = self.key(keys::order(&o.tenant_id, &o.order_id));
        let slot = self
            .cache_orders
            .entry(key)
            .or_insert((i64::MIN, String::new(), o.event_time));
        if o.version > slot.0 {
            *slot = (o.version, o.status.clone(), o.event_time);
        }
    }

    fn fold(&mut self, at: Coord, event: &AnyEvent) {
        let w = &self.settings.windows;
        let time = match event {
            AnyEvent::Platform(e) => e.event_time,
            AnyEvent::Order(o) => o.event_time,
        };
        if time > self.settings.now_ms.saturating_add(w.future_skew_ms) {
            self.late.insert(at, "future_event");
            return;
        }
        let granularities: &[Granularity] = match event {
            AnyEvent::Platform(_) => &EVENT_GRANULARITIES,
            AnyEvent::Order(_) => &ORDER_GRANULARITIES,
        };
        let watermark = self
            .watermarks
            .entry((at.0.clone(), at.1))
            .or_insert(i64::MIN);
        let open: Vec<Granularity> = granularities
            .iter()
            .copied()
            .filter(|g| time.saturating_add(lateness(w, *g)) >= *watermark)
            .collect();
        if open.is_empty() {
            self.late.insert(at, "late_event");
            return;
        }
        *watermark = (*watermark).max(time);
        for g in open {
            match event {
                AnyEvent::Platform(e) => {
                    let key = (
                        e.tenant_id.clone(),
                        e.event_type.clone(),
                        e.context.environment.clone(),
                        g.label(),
                        g.bucket(time),
                    );
                    let b = self
                        .event_buckets
                        .entry(key)
                        .or_insert_with(|| EventBucket {
                            count: 0,
                            users: HashSet::new(),
                            registers: vec![0; aggregator::HLL_REGISTERS],
                            first: time,
                            last: time,
                        });
                    b.count += 1;
                    b.users.insert(e.actor.user_id.clone());
                    let (i, rank) = hll_position(&e.actor.user_id);
                    b.registers[i] = b.registers[i].max(rank);
                    b.first = b.first.min(time);
                    b.last = b.last.max(time);
                }
                AnyEvent::Order(o) => {
                    let key = (
                        o.tenant_id.clone(),
                        o.currency.clone(),
                        g.label(),
                        g.bucket(time),
                    );
                    let b = self.order_buckets.entry(key).or_default();
                    for (x, d) in b.iter_mut().zip(order_effect(o)) {
                        *x += d;
                    }
                }
            }
        }
    }

    /// Ends the stream: timelines sorted, deduplicated and cut to their length; keys that
    /// have expired by now dropped.
    pub fn finish(&mut self) {
        let k = self.settings.keys.clone();
        let length = k.timeline_length as usize;
        let ttl = k.timeline_ttl_hours as i64 * 3_600_000;
        let mut expiring = Vec::new();
        self.timelines.retain(|key, entries| {
            entries.sort();
            entries.dedup();
            let skip = entries.len().saturating_sub(length);
            entries.drain(..skip);
            let newest = entries.last().map_or(i64::MIN, |e| e.0);
            let keep = newest.saturating_add(ttl) > self.settings.now_ms + EXPIRY_MARGIN_MS;
            if !keep {
                expiring.push(key.clone());
            }
            keep
        });
        let idle = k.session_idle_minutes as i64 * 60_000;
        self.sessions.retain(|key, s| {
            let keep = s.last + idle > self.settings.now_ms + EXPIRY_MARGIN_MS;
            if !keep {
                expiring.push(key.clone());
            }
            keep
        });
        let order_ttl = k.order_ttl_days as i64 * keys::DAY_MS;
        self.cache_orders.retain(|key, o| {
            let keep = o.2 + order_ttl > self.settings.now_ms + EXPIRY_MARGIN_MS;
            if !keep {
                expiring.push(key.clone());
            }
            keep
        });
        self.expiring.extend(expiring);
        // A key can become expiring after it was first expected (counters of an old minute).
        for key in &self.expiring {
            self.counters.remove(key);
            self.unique_users.remove(key);
        }
    }
}

fn lateness(w: &WindowsConfig, g: Granularity) -> i64 {
    match g {
        Granularity::Minute => w.minute_lateness_ms,
        Granularity::Hour => w.hour_lateness_ms,
        Granularity::Day => w.day_lateness_ms,
    }
}

/// A BSON value as milliseconds (dates) or an integer.
pub fn as_i64(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::DateTime(d) => Some(d.timestamp_millis()),
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}
