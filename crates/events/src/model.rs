//! The events as Rust types: the reader view, i.e. the newest schema version. Fields added in
//! later versions carry the same defaults as in the schema, so a record written with an older
//! version decodes into the same struct.

use std::collections::BTreeMap;

use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::schemas::PARSED;

/// What the codec needs to know about an event type.
pub trait Event: DeserializeOwned + Serialize + Send + Sync + 'static {
    /// The Avro full name, for messages and metrics.
    const NAME: &'static str;

    /// Every version's schema, oldest first; the last is the reader schema.
    fn schemas() -> &'static [Schema];

    fn reader_schema() -> &'static Schema {
        let all = Self::schemas();
        &all[all.len() - 1]
    }

    /// The Kafka key this event must be published under.
    fn key(&self) -> &str;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformEvent {
    pub tenant_id: String,
    /// The idempotency key within a tenant.
    pub event_id: String,
    pub event_type: String,
    /// Milliseconds since the epoch (Avro `timestamp-millis`).
    pub event_time: i64,
    pub actor: Actor,
    pub context: Context,
    pub payload: BTreeMap<String, String>,
    pub compliance_required: bool,
    /// v2; `INFO` for v1 records.
    pub severity: Severity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user_id: String,
    pub session_id: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub environment: String,
    pub service: String,
    /// v2; `None` for v1 records.
    pub service_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
    Critical,
}

/// Event types that are audit-relevant whatever `compliance_required` says.
pub const AUDIT_EVENT_TYPES: &[&str] = &[
    "user.permission.changed",
    "user.role.changed",
    "data.exported",
    "data.deleted",
    "admin.settings.changed",
    "security.alert",
    "api_key.created",
    "api_key.revoked",
];

impl PlatformEvent {
    /// Whether `audit-writer` keeps this event.
    pub fn is_audit(&self) -> bool {
        self.compliance_required || AUDIT_EVENT_TYPES.contains(&self.event_type.as_str())
    }
}

impl Event for PlatformEvent {
    const NAME: &'static str = "eventpipe.events.PlatformEvent";

    fn schemas() -> &'static [Schema] {
        &PARSED.platform_event
    }

    fn key(&self) -> &str {
        &self.tenant_id
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub tenant_id: String,
    pub order_id: String,
    /// Grows by one per step of an order; a lower version never overwrites a higher one.
    pub version: i64,
    pub event_type: String,
    pub event_time: i64,
    pub status: String,
    pub customer_id: String,
    pub currency: String,
    pub total_minor: i64,
    pub items: Vec<LineItem>,
    /// v2; 0 for v1 records.
    pub refunded_minor: i64,
    /// v2; `None` for v1 records.
    pub channel: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub qty: i32,
    pub price_minor: i64,
}

/// The order lifecycle, in the order its steps normally happen.
pub const ORDER_EVENT_TYPES: &[&str] = &[
    "order.created",
    "order.confirmed",
    "order.paid",
    "order.shipped",
    "order.delivered",
    "order.cancelled",
];

impl Event for OrderEvent {
    const NAME: &'static str = "eventpipe.events.OrderEvent";

    fn schemas() -> &'static [Schema] {
        &PARSED.order_event
    }

    fn key(&self) -> &str {
        &self.order_id
    }
}

/// Either event, as decoded by [`crate::codec::AnyDecoder`] from the writer schema's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyEvent {
    Platform(PlatformEvent),
    Order(OrderEvent),
}

impl AnyEvent {
    pub fn tenant_id(&self) -> &str {
        match self {
            AnyEvent::Platform(e) => &e.tenant_id,
            AnyEvent::Order(e) => &e.tenant_id,
        }
    }

    /// Milliseconds since the epoch at which the event happened.
    pub fn event_time(&self) -> i64 {
        match self {
            AnyEvent::Platform(e) => e.event_time,
            AnyEvent::Order(e) => e.event_time,
        }
    }
}
