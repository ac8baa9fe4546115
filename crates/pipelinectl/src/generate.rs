//! A deterministic stream of realistic events: Zipf-skewed tenants, users with sessions, order
//! lifecycles, and on request v1-encoded records, duplicates, out-of-order order versions and
//! poison records. The same options give the same stream, record for record.

use std::collections::{BTreeMap, VecDeque};

use eventpipe_events::model::{
    Actor, Context, LineItem, OrderEvent, PlatformEvent, Severity, AUDIT_EVENT_TYPES,
};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// The ways a record can be bad, one per decode error the consumers distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoisonClass {
    BadMagicByte,
    UnknownSchemaId,
    TruncatedBody,
    MalformedBody,
    IncompatibleWriterSchema,
    MissingKey,
}

impl PoisonClass {
    pub const ALL: [PoisonClass; 6] = [
        PoisonClass::BadMagicByte,
        PoisonClass::UnknownSchemaId,
        PoisonClass::TruncatedBody,
        PoisonClass::MalformedBody,
        PoisonClass::IncompatibleWriterSchema,
        PoisonClass::MissingKey,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PoisonClass::BadMagicByte => "bad_magic_byte",
            PoisonClass::UnknownSchemaId => "unknown_schema_id",
            PoisonClass::TruncatedBody => "truncated_body",
            PoisonClass::MalformedBody => "malformed_body",
            PoisonClass::IncompatibleWriterSchema => "incompatible_writer_schema",
            PoisonClass::MissingKey => "missing_key",
        }
    }
}

/// Which schema version a record is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Platform(PlatformEvent),
    Order(OrderEvent),
}

/// One record of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub body: Body,
    pub version: SchemaVersion,
    /// `Some` for a deliberately malformed record (built from `body`).
    pub poison: Option<PoisonClass>,
    /// A re-send of an earlier record.
    pub duplicate: bool,
    /// An order version published before the previous version of the same order.
    pub out_of_order: bool,
}

impl Generated {
    /// The Kafka key: tenant id for platform events, order id for orders.
    pub fn key(&self) -> &str {
        match &self.body {
            Body::Platform(e) => &e.tenant_id,
            Body::Order(e) => &e.order_id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub tenants: u32,
    /// Zipf exponent of tenant popularity (0 = uniform).
    pub zipf_exponent: f64,
    /// Share of records that are order events (the rest are platform events).
    pub orders_share: f64,
    /// Share of records written with the v1 schema.
    pub v1_share: f64,
    pub duplicates: f64,
    pub out_of_order: f64,
    pub poison: f64,
    /// Event time of the first record, ms since the epoch.
    pub start_time_ms: i64,
    /// Event-time distance between consecutive records.
    pub step_ms: i64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: 1,
            tenants: 100,
            zipf_exponent: 1.1,
            orders_share: 0.3,
            v1_share: 0.3,
            duplicates: 0.0,
            out_of_order: 0.0,
            poison: 0.0,
            start_time_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            step_ms: 10,
        }
    }
}

const USERS_PER_TENANT: u64 = 200;
const MAX_OPEN_ORDERS: usize = 5_000;
const RECENT: usize = 1_000;
const PLAIN_TYPES: &[(&str, u32)] = &[
    ("page.view", 45),
    ("api.call", 30),
    ("user.login", 10),
    ("user.logout", 5),
];
const ENVIRONMENTS: &[(&str, u32)] = &[("production", 80), ("staging", 15), ("development", 5)];
const SERVICES: &[&str] = &["web", "api-gateway", "billing", "search", "auth"];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY"];
const CHANNELS: &[&str] = &["web", "mobile", "api"];

struct OpenOrder {
    event: OrderEvent,
    /// Index into the lifecycle: created, confirmed, paid, shipped, delivered.
    step: usize,
}

pub struct Generator {
    opts: Options,
    rng: Xoshiro256PlusPlus,
    tenants: Zipf<f64>,
    index: u64,
    next_order: u64,
    open_orders: Vec<OpenOrder>,
    /// Records waiting to be emitted (the earlier half of an out-of-order pair).
    pending: VecDeque<Generated>,
    recent: VecDeque<Generated>,
    poison_turn: usize,
}

impl Generator {
    pub fn new(opts: Options) -> Self {
        let n = f64::from(opts.tenants.max(1));
        let tenants = Zipf::new(n, opts.zipf_exponent.max(0.0))
            .unwrap_or_else(|_| Zipf::new(n, 0.0).unwrap_or_else(|_| unreachable!("n >= 1")));
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(opts.seed),
            tenants,
            opts,
            index: 0,
            next_order: 0,
            open_orders: Vec::new(),
            pending: VecDeque::new(),
            recent: VecDeque::with_capacity(RECENT),
            poison_turn: 0,
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    fn tenant(&mut self) -> String {
        let k = self.tenants.sample(&mut self.rng) as u32;
        format!("tenant-{k:04}")
    }

    fn id(&mut self) -> String {
        format!("{:016x}{:016x}", self.rng.next_u64(), self.rng.next_u64())
    }

    fn weighted<'a>(&mut self, items: &'a [(&'a str, u32)]) -> &'a str {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut x = self.rng.random_range(0..total);
        for (item, w) in items {
            if x < *w {
                return item;
            }
            x -= w;
        }
        items[0].0
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    fn event_time(&self) -> i64 {
        self.opts.start_time_ms + self.index as i64 * self.opts.step_ms
    }

    fn version(&mut self) -> SchemaVersion {
        if self.chance(self.opts.v1_share) {
            SchemaVersion::V1
        } else {
            SchemaVersion::V2
        }
    }

    fn platform_event(&mut self) -> PlatformEvent {
        let tenant_id = self.tenant();
        let user = self.rng.random_range(0..USERS_PER_TENANT);
        let audit = self.chance(0.1);
        let event_type = if audit {
            self.pick(AUDIT_EVENT_TYPES).to_owned()
        } else {
            self.weighted(PLAIN_TYPES).to_owned()
        };
        let compliance_required = audit || self.chance(0.02);
        let severity = match event_type.as_str() {
            "security.alert" => Severity::Critical,
            "data.deleted" | "api_key.revoked" => Severity::Warn,
            _ if self.chance(0.05) => Severity::Error,
            _ => Severity::Info,
        };
        let environment = self.weighted(ENVIRONMENTS).to_owned();
        let service = self.pick(SERVICES).to_owned();
        let mut payload = BTreeMap::new();
        match event_type.as_str() {
            "page.view" => {
                payload.insert(
                    "path".to_owned(),
                    format!("/p/{}", self.rng.random_range(0..500)),
                );
            }
            "api.call" => {
                payload.insert(
                    "endpoint".to_owned(),
                    format!("/v1/items/{}", self.rng.random_range(0..50)),
                );
                payload.insert(
                    "status".to_owned(),
                    ["200", "201", "404", "500"][self.rng.random_range(0..4)].to_owned(),
                );
            }
            _ => {}
        }
        PlatformEvent {
            event_id: self.id(),
            event_type,
            event_time: self.event_time(),
            actor: Actor {
                user_id: format!("user-{user}"),
                // A user's session changes every few thousand records.
                session_id: Some(format!("sess-{tenant_id}-{user}-{}", self.index / 5_000)),
                ip_address: Some(format!(
                    "10.{}.{}.{}",
                    user % 250,
                    (user * 7) % 250,
                    self.rng.random_range(1..250)
                )),
                user_agent: Some(
                    ["Mozilla/5.0", "curl/8.5", "okhttp/4.12"][self.rng.random_range(0..3)]
                        .to_owned(),
                ),
            },
            context: Context {
                request_id: Some(self.id()),
                trace_id: Some(self.id()),
                environment,
                service,
                service_version: Some(format!("1.{}.0", self.rng.random_range(0..5))),
            },
            payload,
            compliance_required,
            severity,
            tenant_id,
        }
    }

    /// A new order, or the next step of an open one. Returns one event, or two when the step
    /// is published out of order (the later version first).
    fn order_events(&mut self) -> Vec<OrderEvent> {
        let start_new = self.open_orders.is_empty()
            || (self.open_orders.len() < MAX_OPEN_ORDERS && self.chance(0.35));
        if start_new {
            let tenant_id = self.tenant();
            self.next_order += 1;
            let items: Vec<LineItem> = (0..self.rng.random_range(1..4))
                .map(|_| LineItem {
                    sku: format!("sku-{}", self.rng.random_range(0..1000)),
                    qty: self.rng.random_range(1..5),
                    price_minor: self.rng.random_range(100..20_000),
                })
                .collect();
            let total_minor = items.iter().map(|i| i64::from(i.qty) * i.price_minor).sum();
            let event = OrderEvent {
                order_id: format!("order-{}-{:08}", self.opts.seed, self.next_order),
                customer_id: format!("cust-{}", self.rng.random_range(0..10_000)),
                currency: self.pick(CURRENCIES).to_owned(),
                channel: Some(self.pick(CHANNELS).to_owned()),
                version: 1,
                event_type: "order.created".to_owned(),
                status: "created".to_owned(),
                event_time: self.event_time(),
                total_minor,
                items,
                refunded_minor: 0,
                tenant_id,
            };
            self.open_orders.push(OpenOrder {
                event: event.clone(),
                step: 0,
            });
            return vec![event];
        }
        let i = self.rng.random_range(0..self.open_orders.len());
        let steps = if self.chance(self.opts.out_of_order) {
            2
        } else {
            1
        };
        let event_time = self.event_time();
        let mut out = Vec::new();
        for _ in 0..steps {
            let Some(order) = self.open_orders.get_mut(i) else {
                break;
            };
            let cancel = order.step < 3 && self.rng.random::<f64>() < 0.08;
            let (event_type, status) = if cancel {
                ("order.cancelled", "cancelled")
            } else {
                match order.step {
                    0 => ("order.confirmed", "confirmed"),
                    1 => ("order.paid", "paid"),
                    2 => ("order.shipped", "shipped"),
                    _ => ("order.delivered", "delivered"),
                }
            };
            let was_paid = order.step >= 2;
            order.step += 1;
            let e = &mut order.event;
            e.version += 1;
            e.event_type = event_type.to_owned();
            e.status = status.to_owned();
            e.event_time = event_time;
            if cancel && was_paid {
                e.refunded_minor = e.total_minor;
            }
            out.push(e.clone());
            if cancel || order.step >= 4 {
                self.open_orders.swap_remove(i);
                break;
            }
        }
        out.reverse();
        out
    }

    fn remember(&mut self, g: &Generated) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(g.clone());
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        if let Some(g) = self.pending.pop_front() {
            self.index += 1;
            return Some(g);
        }
        if !self.recent.is_empty() && self.chance(self.opts.duplicates) {
            let i = self.rng.random_range(0..self.recent.len());
            let mut g = self.recent[i].clone();
            g.duplicate = true;
            self.index += 1;
            return Some(g);
        }
        if self.chance(self.opts.poison) {
            let class = PoisonClass::ALL[self.poison_turn % PoisonClass::ALL.len()];
            self.poison_turn += 1;
            let body = Body::Platform(self.platform_event());
            self.index += 1;
            return Some(Generated {
                body,
                version: SchemaVersion::V2,
                poison: Some(class),
                duplicate: false,
                out_of_order: false,
            });
        }
        let version = self.version();
        let g = if self.chance(self.opts.orders_share) {
            let mut events = self.order_events().into_iter();
            let first = events.next()?;
            let swapped = events.len() > 0;
            for later in events {
                let g = Generated {
                    body: Body::Order(later),
                    version,
                    poison: None,
                    duplicate: false,
                    out_of_order: false,
                };
                self.remember(&g);
                self.pending.push_back(g);
            }
            Generated {
                body: Body::Order(first),
                version,
                poison: None,
                duplicate: false,
                out_of_order: swapped,
            }
        } else {
            Generated {
                body: Body::Platform(self.platform_event()),
                version,
                poison: None,
                duplicate: false,
                out_of_order: false,
            }
        };
        self.remember(&g);
        self.index += 1;
        Some(g)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn opts() -> Options {
        Options {
            seed: 42,
            duplicates: 0.05,
            out_of_order: 0.2,
            poison: 0.02,
            ..Options::default()
        }
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let a: Vec<_> = Generator::new(opts()).take(5_000).collect();
        let b: Vec<_> = Generator::new(opts()).take(5_000).collect();
        assert_eq!(a, b);
        let c: Vec<_> = Generator::new(Options { seed: 43, ..opts() })
            .take(5_000)
            .collect();
        assert_ne!(a, c);
    }

    #[test]
    fn shares_are_roughly_as_asked() {
        let all: Vec<_> = Generator::new(opts()).take(20_000).collect();
        let share = |f: &dyn Fn(&Generated) -> bool| {
            all.iter().filter(|g| f(g)).count() as f64 / all.len() as f64
        };
        assert!((share(&|g| g.duplicate) - 0.05).abs() < 0.02);
        assert!((share(&|g| g.poison.is_some()) - 0.02).abs() < 0.01);
        let v1 = share(&|g| g.version == SchemaVersion::V1);
        assert!((v1 - 0.3).abs() < 0.05, "v1 share {v1}");
        assert!(share(&|g| g.out_of_order) > 0.0);
        // Every poison class shows up.
        for class in PoisonClass::ALL {
            assert!(all.iter().any(|g| g.poison == Some(class)), "{class:?}");
        }
    }

    #[test]
    fn order_versions_grow_by_one_and_out_of_order_pairs_are_swapped() {
        let mut last: HashMap<String, i64> = HashMap::new();
        let mut swapped = 0;
        for g in Generator::new(opts()).take(20_000) {
            let Body::Order(o) = &g.body else { continue };
            if g.duplicate {
                continue;
            }
            let prev = last.get(&o.order_id).copied().unwrap_or(0);
            if o.version < prev {
                swapped += 1;
            } else {
                assert!(
                    o.version <= prev + 2,
                    "{} jumped from {prev} to {}",
                    o.order_id,
                    o.version
                );
            }
            last.insert(o.order_id.clone(), prev.max(o.version));
        }
        assert!(swapped > 0);
    }

    #[test]
    fn tenants_are_skewed() {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for g in Generator::new(Options {
            poison: 0.0,
            ..opts()
        })
        .take(20_000)
        {
            if let Body::Platform(e) = &g.body {
                *counts.entry(e.tenant_id.clone()).or_default() += 1;
            }
        }
        let top = counts.get("tenant-0001").copied().unwrap_or(0);
        let median = {
            let mut v: Vec<_> = counts.values().copied().collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        assert!(top > 10 * median, "top {top}, median {median}");
    }
}
