//! One task per assigned partition: gathers records into batches, decodes them, hands them to
//! the sink, dead-letters what cannot be written, and only then moves the partition's durable
//! offset — so a batch is the unit of progress and offsets never pass an unwritten record.
//!
//! Records arrive in offset order and batches are written one after the other, which is what
//! keeps a partition's effects in offset order. Transient failures are retried here, in place,
//! for as long as it takes: the partition's in-flight bound fills up and the poll thread
//! pauses it, so a slow or absent sink costs neither memory nor group membership.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use eventpipe_events::{AnyDecoder, ErrorClass};
use metrics::{counter, histogram, Counter, Histogram};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::flow::{InFlight, PartitionState};
use super::Fatal;
use crate::config::{BatchConfig, RetryConfig};
use crate::dlq::{DeadLetters, RawRecord, Verdict};
use crate::metrics as m;
use crate::sink::{Outcome, Record, Sink, SinkError, Source};

/// What the poll thread sends a worker.
pub(crate) enum Input {
    Record(RawRecord),
    /// Write what has arrived without waiting for the batch to age, then stop (shutdown).
    Drain,
}

/// Everything a worker shares with its siblings.
pub(crate) struct Shared<S> {
    pub sink: Arc<S>,
    pub decoder: Arc<AnyDecoder>,
    pub dead_letters: Arc<DeadLetters>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub total: Arc<InFlight>,
    pub fatal: Arc<Fatal>,
}

pub(crate) struct Worker<S> {
    pub topic: Arc<str>,
    pub partition: i32,
    pub input: UnboundedReceiver<Input>,
    pub state: Arc<PartitionState>,
    /// Cancelled when the partition is revoked: the batch being written is finished, the rest
    /// is left for the next owner.
    pub revoked: CancellationToken,
    pub shared: Arc<Shared<S>>,
    /// Dropped when the worker ends (returns or is aborted), which is how the poll thread
    /// learns it is gone.
    pub _done: std::sync::mpsc::Sender<()>,
}

impl<S> Drop for Worker<S> {
    /// Whatever the partition still held (abandoned on revoke or shutdown) no longer counts
    /// against the consumer's total.
    fn drop(&mut self) {
        let (records, bytes) = self.state.in_flight.get();
        self.state.in_flight.release(records, bytes);
        self.shared.total.release(records, bytes);
    }
}

/// Why a worker stopped early.
enum Stop {
    Revoked,
    Fatal(String),
}

struct Meters {
    consumed: Counter,
    written: Counter,
    batch_records: Histogram,
    write_seconds: Histogram,
}

impl<S: Sink> Worker<S> {
    pub async fn run(mut self) {
        let meters = Meters {
            consumed: counter!(m::RECORDS_CONSUMED, "topic" => self.topic.to_string()),
            written: counter!(m::RECORDS_WRITTEN, "topic" => self.topic.to_string()),
            batch_records: histogram!(m::BATCH_RECORDS, "topic" => self.topic.to_string()),
            write_seconds: histogram!(m::SINK_WRITE_SECONDS, "topic" => self.topic.to_string()),
        };
        let max_records = self.shared.batch.max_records;
        let max_bytes = self.shared.batch.max_bytes;
        let max_age = Duration::from_millis(self.shared.batch.max_age_ms);
        let mut pending: Vec<RawRecord> = Vec::with_capacity(max_records);
        let mut pending_bytes = 0usize;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut draining = false;
        loop {
            // Gather: take what is queued without waiting, then wait for more only while the
            // batch is neither full nor old.
            while !draining && pending.len() < max_records && pending_bytes < max_bytes {
                let next = match self.input.try_recv() {
                    Ok(input) => Some(input),
                    Err(TryRecvError::Disconnected) => None,
                    Err(TryRecvError::Empty) => {
                        let waited = match deadline {
                            Some(at) => tokio::select! {
                                biased;
                                _ = self.revoked.cancelled() => return,
                                input = self.input.recv() => Ok(input),
                                _ = tokio::time::sleep_until(at) => Err(()),
                            },
                            None => tokio::select! {
                                biased;
                                _ = self.revoked.cancelled() => return,
                                input = self.input.recv() => Ok(input),
                            },
                        };
                        match waited {
                            Ok(input) => input,
                            Err(()) => break,
                        }
                    }
                };
                match next {
                    Some(Input::Record(record)) => {
                        if pending.is_empty() {
                            deadline = Some(tokio::time::Instant::now() + max_age);
                            self.state.set_head_timestamp(record.timestamp.or(Some(super::now_ms())));
                        }
                        pending_bytes += record.size();
                        pending.push(record);
                    }
                    Some(Input::Drain) | None => draining = true,
                }
            }
            if !pending.is_empty() {
                let batch = std::mem::replace(&mut pending, Vec::with_capacity(max_records));
                let bytes = std::mem::take(&mut pending_bytes);
                deadline = None;
                match self.flush(batch, bytes, &meters).await {
                    Ok(()) => {}
                    Err(Stop::Revoked) => return,
                    Err(Stop::Fatal(message)) => {
                        self.shared.fatal.raise(message);
                        return;
                    }
                }
            }
            if draining || self.revoked.is_cancelled() {
                return;
            }
        }
    }

    /// Decodes, writes and dead-letters one batch, then makes it durable.
    async fn flush(&self, batch: Vec<RawRecord>, bytes: usize, meters: &Meters) -> Result<(), Stop> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let (first_offset, last_offset) = (first.offset, last.offset);
        let span = tracing::info_span!(
            "batch",
            topic = %self.topic,
            partition = self.partition,
            first_offset,
            last_offset,
            records = batch.len()
        );
        async {
            meters.consumed.increment(batch.len() as u64);
            meters.batch_records.record(batch.len() as f64);
            let (records, mut dead) = self.decode(&batch).await;
            if !records.is_empty() {
                let outcomes = self.write(&records, meters).await?;
                for (record_index, outcome) in outcomes.into_iter().enumerate() {
                    match outcome {
                        Outcome::Written => meters.written.increment(1),
                        Outcome::Skipped { reason } => counter!(
                            m::RECORDS_SKIPPED,
                            "topic" => self.topic.to_string(),
                            "reason" => reason
                        )
                        .increment(1),
                        Outcome::Rejected { reason, detail } => {
                            let (raw_index, record) = &records[record_index];
                            dead.push((
                                *raw_index,
                                Verdict {
                                    reason,
                                    message: detail,
                                    schema_id: Some(record.schema_id),
                                },
                            ))
                        }
                    }
                }
            }
            self.dead_letter(&batch, dead).await?;
            self.state.advance_durable(last_offset + 1);
            self.state.set_head_timestamp(None);
            self.state.in_flight.release(batch.len(), bytes);
            self.shared.total.release(batch.len(), bytes);
            tracing::debug!("batch durable");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Decodes every record; those that cannot be decoded come back as dead letters. A
    /// registry outage is waited out, not dead-lettered.
    async fn decode(
        &self,
        batch: &[RawRecord],
    ) -> (Vec<(usize, Record)>, Vec<(usize, Verdict)>) {
        let mut records = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for (index, raw) in batch.iter().enumerate() {
            let mut backoff = self.backoff();
            loop {
                match self
                    .shared
                    .decoder
                    .decode(raw.key.as_deref(), raw.payload.as_deref())
                    .await
                {
                    Ok(decoded) => {
                        records.push((
                            index,
                            Record {
                                source: Source {
                                    topic: raw.topic.clone(),
                                    partition: raw.partition,
                                    offset: raw.offset,
                                    timestamp: raw.timestamp,
                                },
                                event: decoded.event,
                                schema_id: decoded.schema_id,
                            },
                        ));
                        break;
                    }
                    Err(e) if e.class() == ErrorClass::Transient => {
                        let delay = next_delay(&mut backoff);
                        counter!(m::RETRIES, "stage" => "decode", "reason" => e.reason())
                            .increment(1);
                        tracing::warn!(error = %e, offset = raw.offset, ?delay, "decode failed transiently; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, offset = raw.offset, reason = e.reason(), "record cannot be decoded; dead-lettering");
                        dead.push((
                            index,
                            Verdict {
                                reason: e.reason(),
                                message: e.to_string(),
                                schema_id: e.schema_id(),
                            },
                        ));
                        break;
                    }
                }
            }
        }
        (records, dead)
    }

    /// Writes until the sink succeeds (transient errors are retried, never skipped).
    async fn write(
        &self,
        records: &[(usize, Record)],
        meters: &Meters,
    ) -> Result<Vec<Outcome>, Stop> {
        let batch: Vec<Record> = records.iter().map(|(_, r)| r.clone()).collect();
        let mut backoff = self.backoff();
        loop {
            let started = Instant::now();
            match self.shared.sink.write(&batch).await {
                Ok(outcomes) if outcomes.len() == batch.len() => {
                    meters.write_seconds.record(started.elapsed().as_secs_f64());
                    return Ok(outcomes);
                }
                Ok(outcomes) => {
                    return Err(Stop::Fatal(format!(
                        "the sink returned {} outcomes for a batch of {}",
                        outcomes.len(),
                        batch.len()
                    )))
                }
                Err(SinkError::Transient { reason, detail }) => {
                    let delay = next_delay(&mut backoff);
                    counter!(m::RETRIES, "stage" => "sink", "reason" => reason).increment(1);
                    tracing::warn!(reason, %detail, ?delay, "sink write failed transiently; retrying the batch");
                    self.sleep_unless_revoked(delay).await?;
                }
                Err(SinkError::Fatal(message)) => return Err(Stop::Fatal(message)),
            }
        }
    }

    /// Sends the dead letters and waits until the broker has acknowledged every one.
    async fn dead_letter(
        &self,
        batch: &[RawRecord],
        dead: Vec<(usize, Verdict)>,
    ) -> Result<(), Stop> {
        let mut backoff = self.backoff();
        let mut remaining = dead;
        while !remaining.is_empty() {
            let sends = remaining.iter().map(|(index, verdict)| {
                self.shared.dead_letters.send(&batch[*index], verdict)
            });
            let results = futures::future::join_all(sends).await;
            let mut failed = Vec::new();
            for ((index, verdict), result) in remaining.into_iter().zip(results) {
                match result {
                    Ok(()) => counter!(
                        m::RECORDS_DEAD_LETTERED,
                        "topic" => self.topic.to_string(),
                        "reason" => verdict.reason
                    )
                    .increment(1),
                    Err(e) => {
                        tracing::warn!(error = %e, offset = batch[index].offset, "dead letter not acknowledged; retrying");
                        failed.push((index, verdict));
                    }
                }
            }
            remaining = failed;
            if !remaining.is_empty() {
                counter!(m::RETRIES, "stage" => "dlq", "reason" => "not_acknowledged").increment(1);
                self.sleep_unless_revoked(next_delay(&mut backoff)).await?;
            }
        }
        Ok(())
    }

    /// A revoked partition stops retrying: its next owner will redo the batch.
    async fn sleep_unless_revoked(&self, delay: Duration) -> Result<(), Stop> {
        tokio::select! {
            _ = self.revoked.cancelled() => Err(Stop::Revoked),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(self.shared.retry.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.shared.retry.max_backoff_ms))
            .with_jitter()
            .without_max_times()
            .build()
    }
}

fn next_delay(backoff: &mut ExponentialBackoff) -> Duration {
    // Unlimited by construction; the fallback only guards against a library change.
    backoff.next().unwrap_or(Duration::from_secs(1))
}
