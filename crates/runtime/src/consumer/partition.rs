//! One task per assigned partition: takes records from the partition's own librdkafka queue,
//! gathers them into a batch, decodes it, hands it to the sink, dead-letters what cannot be
//! written, and only then moves the partition's durable offset — so a batch is the unit of
//! progress and offsets never pass an unwritten record.
//!
//! Records are taken in offset order and batches are written one after the other, which keeps
//! a partition's effects in offset order. A worker takes no records while it writes, so a slow
//! sink leaves records in librdkafka's per-partition queue (bounded by `queued.*`), and the
//! poll thread pauses a partition whose write is taking long. Transient failures are retried
//! in place for as long as it takes; nothing is skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use eventpipe_events::{AnyDecoder, ErrorClass};
use metrics::{counter, histogram, Counter, Histogram};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::flow::{Gate, PartitionState};
use super::poller::PipelineContext;
use super::Fatal;
use crate::config::{BatchConfig, RetryConfig};
use crate::dlq::{DeadLetters, Lane, RawRecord, Verdict};
use crate::metrics as m;
use crate::sink::{Outcome, Record, Sink, SinkError, Source};

/// Everything a worker shares with its siblings.
pub(crate) struct Shared<S> {
    pub sink: Arc<S>,
    pub decoder: Arc<AnyDecoder>,
    pub dead_letters: Arc<DeadLetters>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub gate: Arc<Gate>,
    pub fatal: Arc<Fatal>,
    /// Cancelled on shutdown: write what has been taken, take nothing more, stop.
    pub drain: CancellationToken,
}

pub(crate) struct Worker<S: Sink> {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The partition's own queue, split off the consumer's.
    pub queue: PartitionQueue<PipelineContext<S>>,
    /// Signalled by librdkafka when `queue` becomes non-empty.
    pub arrived: Arc<Notify>,
    /// Records of this partition that reached the consumer's main queue before the split
    /// took effect; they precede anything in `queue`.
    pub early: UnboundedReceiver<RawRecord>,
    pub state: Arc<PartitionState>,
    /// Cancelled when the partition is revoked: the batch being written is finished, nothing
    /// more is taken.
    pub revoked: CancellationToken,
    pub shared: Arc<Shared<S>>,
    /// A record taken from `early` while waiting, handled before anything else.
    pub pushed_back: Option<RawRecord>,
    /// Dropped when the worker ends (returns or is aborted), after the queue, which is how the
    /// poll thread learns it is gone.
    pub _done: std::sync::mpsc::Sender<()>,
}

impl<S: Sink> Drop for Worker<S> {
    /// Whatever the partition still held (abandoned on revoke or shutdown) no longer counts
    /// against the consumer's total.
    fn drop(&mut self) {
        let (records, bytes) = self.state.in_flight.get();
        self.state.in_flight.release(records, bytes);
        self.shared.gate.release(records, bytes);
        self.state.set_writing_since(None);
    }
}

/// Copies a fetched record out of librdkafka's buffer.
pub(crate) fn raw_record(message: &BorrowedMessage<'_>, topic: &Arc<str>) -> RawRecord {
    RawRecord {
        topic: topic.clone(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message.timestamp().to_millis(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers: message.headers().map(BorrowedHeaders::detach),
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

/// What the gathering step ended with.
enum Gathered {
    /// Write the batch (full, aged, or the total bound reached), then go on.
    Flush,
    /// Write the batch, then stop (shutdown).
    Last,
}

impl<S: Sink> Worker<S> {
    pub async fn run(mut self) {
        let meters = Meters {
            consumed: counter!(m::RECORDS_CONSUMED, "topic" => self.topic.to_string()),
            written: counter!(m::RECORDS_WRITTEN, "topic" => self.topic.to_string()),
            batch_records: histogram!(m::BATCH_RECORDS, "topic" => self.topic.to_string()),
            write_seconds: histogram!(m::SINK_WRITE_SECONDS, "topic" => self.topic.to_string()),
        };
        let mut pending: Vec<RawRecord> = Vec::with_capacity(self.shared.batch.max_records);
        loop {
            let Some(gathered) = self.gather(&mut pending).await else {
                return;
            };
            if !pending.is_empty() {
                let batch = std::mem::replace(
                    &mut pending,
                    Vec::with_capacity(self.shared.batch.max_records),
                );
                match self.flush(batch, &meters).await {
                    Ok(()) => {}
                    Err(Stop::Revoked) => return,
                    Err(Stop::Fatal(message)) => {
                        self.shared.fatal.raise(message);
                        return;
                    }
                }
            }
            if matches!(gathered, Gathered::Last) || self.revoked.is_cancelled() {
                return;
            }
        }
    }

    /// Takes records into `pending` until the batch is full or old enough, or the total bound
    /// is reached. `None`: the partition was revoked (pending records are abandoned).
    async fn gather(&mut self, pending: &mut Vec<RawRecord>) -> Option<Gathered> {
        let max_records = self.shared.batch.max_records;
        let max_bytes = self.shared.batch.max_bytes;
        let mut bytes: usize = pending.iter().map(RawRecord::size).sum();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if self.revoked.is_cancelled() {
                return None;
            }
            if self.shared.drain.is_cancelled() {
                return Some(Gathered::Last);
            }
            if pending.len() >= max_records || bytes >= max_bytes {
                return Some(Gathered::Flush);
            }
            if !self.shared.gate.has_room() {
                if !pending.is_empty() {
                    return Some(Gathered::Flush);
                }
                tokio::select! {
                    biased;
                    _ = self.revoked.cancelled() => return None,
                    _ = self.shared.drain.cancelled() => return Some(Gathered::Last),
                    _ = self.shared.gate.room() => continue,
                }
            }
            if let Some(record) = self.take() {
                if pending.is_empty() {
                    deadline = Some(
                        tokio::time::Instant::now()
                            + Duration::from_millis(self.shared.batch.max_age_ms),
                    );
                    self.state
                        .set_head_timestamp(record.timestamp.or(Some(super::now_ms())));
                }
                self.state.init_durable(record.offset);
                let size = record.size();
                self.state.in_flight.add(1, size);
                self.shared.gate.in_flight.add(1, size);
                bytes += size;
                pending.push(record);
                continue;
            }
            // Nothing queued: wait for a record, the batch's age, or a stop.
            let arrived = self.arrived.clone();
            let aged = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.revoked.cancelled() => return None,
                _ = self.shared.drain.cancelled() => return Some(Gathered::Last),
                _ = arrived.notified() => {}
                early = self.early.recv() => {
                    if let Some(record) = early {
                        // Put it back in front by handling it on the next turn.
                        self.pushed_back = Some(record);
                    }
                }
                _ = aged => return Some(Gathered::Flush),
            }
        }
    }

    /// The next record of the partition, if one is queued.
    fn take(&mut self) -> Option<RawRecord> {
        if let Some(record) = self.pushed_back.take() {
            return Some(record);
        }
        if let Ok(record) = self.early.try_recv() {
            return Some(record);
        }
        loop {
            match self.queue.poll(Duration::ZERO) {
                Some(Ok(message)) => return Some(raw_record(&message, &self.topic)),
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, partition = self.partition, error = %e, "partition queue error");
                }
                None => return None,
            }
        }
    }

    /// Decodes, writes and dead-letters one batch, then makes it durable.
    async fn flush(&self, batch: Vec<RawRecord>, meters: &Meters) -> Result<(), Stop> {
        let bytes: usize = batch.iter().map(RawRecord::size).sum();
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
        // From here until the batch is durable the partition takes nothing; past
        // `flow.pause_after_ms` the poll thread pauses its fetching.
        self.state.set_writing_since(Some(super::now_ms()));
        let result = async {
            meters.consumed.increment(batch.len() as u64);
            meters.batch_records.record(batch.len() as f64);
            let (raw_indexes, records, mut dead) = self.decode(&batch).await;
            if !records.is_empty() {
                let outcomes = self.write(&records, meters).await?;
                for (record_index, outcome) in outcomes.into_iter().enumerate() {
                    let (reason, message, lane) = match outcome {
                        Outcome::Written => {
                            meters.written.increment(1);
                            continue;
                        }
                        Outcome::Skipped { reason } => {
                            counter!(
                                m::RECORDS_SKIPPED,
                                "topic" => self.topic.to_string(),
                                "reason" => reason
                            )
                            .increment(1);
                            continue;
                        }
                        Outcome::Rejected { reason, detail } => (reason, detail, Lane::Dead),
                        Outcome::Late { reason, detail } => (reason, detail, Lane::Late),
                    };
                    dead.push((
                        raw_indexes[record_index],
                        Verdict {
                            reason,
                            message,
                            schema_id: Some(records[record_index].schema_id),
                            lane,
                        },
                    ));
                }
            }
            self.dead_letter(&batch, dead).await?;
            self.state.advance_durable(last_offset + 1);
            self.state.set_head_timestamp(None);
            self.state.in_flight.release(batch.len(), bytes);
            self.shared.gate.release(batch.len(), bytes);
            tracing::debug!("batch durable");
            Ok(())
        }
        .instrument(span)
        .await;
        self.state.set_writing_since(None);
        result
    }

    /// Decodes every record; those that cannot be decoded come back as dead letters. A
    /// registry outage is waited out, not dead-lettered.
    /// The decoded records come with the index of their raw record in `batch`.
    async fn decode(
        &self,
        batch: &[RawRecord],
    ) -> (Vec<usize>, Vec<Record>, Vec<(usize, Verdict)>) {
        let mut raw_indexes = Vec::with_capacity(batch.len());
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
                        raw_indexes.push(index);
                        records.push(Record {
                            source: Source {
                                topic: raw.topic.clone(),
                                partition: raw.partition,
                                offset: raw.offset,
                                timestamp: raw.timestamp,
                            },
                            event: decoded.event,
                            schema_id: decoded.schema_id,
                            schema_version: decoded.schema_version,
                        });
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
                                lane: Lane::Dead,
                            },
                        ));
                        break;
                    }
                }
            }
        }
        (raw_indexes, records, dead)
    }

    /// Writes until the sink succeeds (transient errors are retried, never skipped).
    async fn write(&self, batch: &[Record], meters: &Meters) -> Result<Vec<Outcome>, Stop> {
        let mut backoff = self.backoff();
        loop {
            let started = Instant::now();
            match self.shared.sink.write(batch).await {
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
            let sends = remaining
                .iter()
                .map(|(index, verdict)| self.shared.dead_letters.send(&batch[*index], verdict));
            let results = futures::future::join_all(sends).await;
            let mut failed = Vec::new();
            for ((index, verdict), result) in remaining.into_iter().zip(results) {
                match result {
                    Ok(()) => counter!(
                        match verdict.lane {
                            Lane::Dead => m::RECORDS_DEAD_LETTERED,
                            Lane::Late => m::RECORDS_LATE,
                        },
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
