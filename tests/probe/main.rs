//! `probe-consumer`: the consumer runtime with a sink that only records what it was given, for
//! the runtime's integration tests (`tests/runtime/`). Each written record becomes a line
//! `topic partition offset` in `sink.record_to`, appended before the batch is acknowledged, so
//! after a kill -9 the file holds at least everything whose offset was committed.
//!
//! `sink.stall_file`: while that file exists every write waits, like a sink that hangs.
//! `sink.reject_event_type`: records of that event type are rejected (dead-lettered).
//! `sink.late_event_type`: records of that event type are late (sent to the late topic).
//! `sink.fatal_after`: once that many records are written, the next batch fails fatally.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use eventpipe_events::AnyEvent;
use eventpipe_runtime::config::{Invalid, Validate};
use eventpipe_runtime::sink::{Outcome, Record, Sink, SinkError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeConfig {
    record_to: PathBuf,
    #[serde(default)]
    stall_file: Option<PathBuf>,
    #[serde(default)]
    reject_event_type: Option<String>,
    #[serde(default)]
    late_event_type: Option<String>,
    #[serde(default)]
    fatal_after: Option<u64>,
}

impl Validate for ProbeConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.record_to.as_os_str().is_empty() {
            return Err(Invalid::new("sink.record_to", "must not be empty"));
        }
        Ok(())
    }
}

struct ProbeSink {
    config: ProbeConfig,
    out: Mutex<std::fs::File>,
    written: std::sync::atomic::AtomicU64,
}

impl Sink for ProbeSink {
    const DIVERTS_LATE: bool = true;

    async fn write(&self, batch: &[Record]) -> Result<Vec<Outcome>, SinkError> {
        if let Some(stall) = &self.config.stall_file {
            while stall.exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let written = self.written.load(std::sync::atomic::Ordering::Relaxed);
        if self.config.fatal_after.is_some_and(|n| written >= n) {
            return Err(SinkError::Fatal(format!(
                "probe configured to fail after {written} records"
            )));
        }
        let mut lines = String::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for r in batch {
            let event_type = match &r.event {
                AnyEvent::Platform(e) => &e.event_type,
                AnyEvent::Order(e) => &e.event_type,
            };
            if self.config.reject_event_type.as_deref() == Some(event_type.as_str()) {
                outcomes.push(Outcome::Rejected {
                    reason: "probe_rejected",
                    detail: format!("event type {event_type} is rejected by configuration"),
                });
                continue;
            }
            if self.config.late_event_type.as_deref() == Some(event_type.as_str()) {
                outcomes.push(Outcome::Late {
                    reason: "probe_late",
                    detail: format!("event type {event_type} is late by configuration"),
                });
                continue;
            }
            lines.push_str(&format!(
                "{} {} {}\n",
                r.source.topic, r.source.partition, r.source.offset
            ));
            outcomes.push(Outcome::Written);
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(lines.as_bytes())
            .map_err(|e| SinkError::transient("io", e))?;
        let n = outcomes.iter().filter(|o| **o == Outcome::Written).count();
        self.written
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(outcomes)
    }

    async fn check(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn main() -> ExitCode {
    eventpipe_runtime::app::main::<ProbeConfig, _, _>("probe-consumer", |ctx| async move {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ctx.config.sink.record_to)?;
        let sink = ProbeSink {
            config: ctx.config.sink.clone(),
            out: Mutex::new(out),
            written: std::sync::atomic::AtomicU64::new(0),
        };
        eventpipe_runtime::consumer::run(&ctx, sink).await?;
        Ok(())
    })
}
