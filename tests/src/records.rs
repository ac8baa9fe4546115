//! Decoded records as a sink receives them, for tests that call a sink in-process.

use std::sync::Arc;

use eventpipe_events::model::{Actor, Context, Severity};
use eventpipe_events::{AnyEvent, OrderEvent, PlatformEvent};
use eventpipe_runtime::sink::{Record, Source};

/// A record of `event` at `topic`/`partition`/`offset`.
pub fn record(topic: &str, partition: i32, offset: i64, event: AnyEvent) -> Record {
    Record {
        source: Source {
            topic: Arc::from(topic),
            partition,
            offset,
            timestamp: None,
        },
        event,
        schema_id: 1,
        schema_version: Some(2),
    }
}

/// A platform event of `tenant` by `user` in the production `web` service.
pub fn platform(tenant: &str, id: &str, event_type: &str, user: &str, time: i64) -> PlatformEvent {
    PlatformEvent {
        tenant_id: tenant.into(),
        event_id: id.into(),
        event_type: event_type.into(),
        event_time: time,
        actor: Actor {
            user_id: user.into(),
            session_id: None,
            ip_address: Some("10.0.0.1".into()),
            user_agent: None,
        },
        context: Context {
            request_id: None,
            trace_id: None,
            environment: "production".into(),
            service: "web".into(),
            service_version: Some("1.4.0".into()),
        },
        payload: Default::default(),
        compliance_required: false,
        severity: Severity::Info,
    }
}

/// Version `version` of order `order_id` of `tenant`, with status `s<version>`.
pub fn order(tenant: &str, order_id: &str, version: i64, time: i64) -> OrderEvent {
    OrderEvent {
        tenant_id: tenant.into(),
        order_id: order_id.into(),
        version,
        event_type: format!("order.v{version}"),
        event_time: time,
        status: format!("s{version}"),
        customer_id: "c1".into(),
        currency: "EUR".into(),
        total_minor: 100 * version,
        items: vec![],
        refunded_minor: 0,
        channel: None,
    }
}
