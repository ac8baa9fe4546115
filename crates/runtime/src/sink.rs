//! What a binary implements: a sink that writes batches of decoded records.
//!
//! The runtime hands a sink the records of one partition at a time, in offset order, already
//! decoded; the sink writes them and says, per record, what became of it. It never sees
//! offsets it has to commit or a Kafka client: a batch is only acknowledged upstream once
//! [`Sink::write`] has returned and every rejected record is in the dead-letter topic.
//!
//! A batch may be delivered more than once (after a crash, a rebalance or a transient error),
//! so writes must be idempotent; the record's source coordinates are there for sinks that
//! need them to be (offset watermarks).

use std::future::Future;
use std::sync::Arc;

use eventpipe_events::AnyEvent;

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka record timestamp (ms since the epoch), when it has one.
    pub timestamp: Option<i64>,
}

/// A decoded record as a sink receives it.
#[derive(Debug, Clone)]
pub struct Record {
    pub source: Source,
    pub event: AnyEvent,
    /// The writer schema id from the wire header.
    pub schema_id: u32,
    /// Which version in `schemas/` the writer schema is (`None`: a compatible writer schema
    /// this build does not carry).
    pub schema_version: Option<u32>,
}

/// What became of one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durably written (or found already written: a replay is a success).
    Written,
    /// Not this sink's business (e.g. a non-audit event at the audit writer); counted, not
    /// dead-lettered.
    Skipped { reason: &'static str },
    /// The record itself is bad for this sink (the store refused the document, a validation
    /// rule failed): it goes to the dead-letter topic with `reason` and `detail`.
    Rejected {
        reason: &'static str,
        detail: String,
    },
    /// The record is valid but outside what the sink accepts in time (older than the allowed
    /// lateness, or too far in the future): not written, forwarded to
    /// `<topic><consumer.late_suffix>` with `reason` and `detail`. Only sinks that declare
    /// [`Sink::DIVERTS_LATE`] may return it (their late topics are checked at start-up).
    Late {
        reason: &'static str,
        detail: String,
    },
}

/// A failure of the whole batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The store is unreachable, overloaded, electing a primary, moving a slot…: the batch is
    /// retried with backoff, never skipped.
    #[error("transient sink error ({reason}): {detail}")]
    Transient {
        reason: &'static str,
        detail: String,
    },
    /// Nothing will get better by retrying (authentication refused, bad configuration): the
    /// binary commits what is durable and exits non-zero.
    #[error("fatal sink error: {0}")]
    Fatal(String),
}

impl SinkError {
    pub fn transient(reason: &'static str, detail: impl ToString) -> Self {
        SinkError::Transient {
            reason,
            detail: detail.to_string(),
        }
    }
}

pub trait Sink: Send + Sync + 'static {
    /// Whether [`Outcome::Late`] can come back from this sink; if so, the late topics of the
    /// source topics must exist at start-up.
    const DIVERTS_LATE: bool = false;

    /// Writes `batch` (one partition, offset order) and returns one outcome per record, in
    /// the same order. An `Err` means nothing in the batch may be considered written.
    fn write(
        &self,
        batch: &[Record],
    ) -> impl Future<Output = Result<Vec<Outcome>, SinkError>> + Send;

    /// Whether the store is reachable, for `/readyz`.
    fn check(&self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// A shared sink is a sink (the caller keeps a handle, e.g. to read what it counted).
impl<T: Sink> Sink for Arc<T> {
    const DIVERTS_LATE: bool = T::DIVERTS_LATE;

    fn write(
        &self,
        batch: &[Record],
    ) -> impl Future<Output = Result<Vec<Outcome>, SinkError>> + Send {
        T::write(self, batch)
    }

    fn check(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        T::check(self)
    }
}
