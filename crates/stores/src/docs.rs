//! Document pieces shared by the MongoDB writers.

use bson::{doc, Bson, DateTime, Document};
use eventpipe_events::model::Severity;
use eventpipe_events::PlatformEvent;

/// An optional string as BSON (`null` when absent).
pub fn opt(s: &Option<String>) -> Bson {
    s.as_ref().map_or(Bson::Null, |s| Bson::String(s.clone()))
}

/// The `actor`, `context`, `payload` … part shared by `events` and `audit_logs`.
pub fn event_body(e: &PlatformEvent) -> Document {
    let payload: Document = e
        .payload
        .iter()
        .map(|(k, v)| (k.clone(), Bson::String(v.clone())))
        .collect();
    doc! {
        "tenant_id": &e.tenant_id,
        "event_id": &e.event_id,
        "event_type": &e.event_type,
        "event_time": DateTime::from_millis(e.event_time),
        "actor": {
            "user_id": &e.actor.user_id,
            "session_id": opt(&e.actor.session_id),
            "ip_address": opt(&e.actor.ip_address),
            "user_agent": opt(&e.actor.user_agent),
        },
        "context": {
            "request_id": opt(&e.context.request_id),
            "trace_id": opt(&e.context.trace_id),
            "environment": &e.context.environment,
            "service": &e.context.service,
            "service_version": opt(&e.context.service_version),
        },
        "payload": payload,
        "compliance_required": e.compliance_required,
        "severity": severity(e),
    }
}

pub fn severity(e: &PlatformEvent) -> &'static str {
    match e.severity {
        Severity::Debug => "DEBUG",
        Severity::Info => "INFO",
        Severity::Warn => "WARN",
        Severity::Error => "ERROR",
        Severity::Critical => "CRITICAL",
    }
}
