//! In-flight accounting: what partition workers have taken from their queues and not yet
//! made durable, per partition and in total, plus the state the poll thread reads to commit,
//! pause and measure lag.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::config::FlowConfig;

/// Records and bytes fetched but not yet written or dead-lettered.
#[derive(Debug, Default)]
pub struct InFlight {
    records: AtomicUsize,
    bytes: AtomicUsize,
}

impl InFlight {
    pub fn add(&self, records: usize, bytes: usize) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn release(&self, records: usize, bytes: usize) {
        self.records.fetch_sub(records, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> (usize, usize) {
        (
            self.records.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// The total bound: workers take records only while there is room, and wait for a release
/// otherwise.
#[derive(Debug)]
pub struct Gate {
    pub in_flight: InFlight,
    limits: FlowConfig,
    released: Notify,
}

impl Gate {
    pub fn new(limits: FlowConfig) -> Self {
        Self {
            in_flight: InFlight::default(),
            limits,
            released: Notify::new(),
        }
    }

    pub fn has_room(&self) -> bool {
        let (records, bytes) = self.in_flight.get();
        records < self.limits.max_records && bytes < self.limits.max_bytes
    }

    pub fn release(&self, records: usize, bytes: usize) {
        self.in_flight.release(records, bytes);
        self.released.notify_waiters();
    }

    /// Returns once there is room (immediately if there is).
    pub async fn room(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.has_room() {
                return;
            }
            released.await;
        }
    }
}

/// What the runtime knows about one assigned partition, shared between threads.
#[derive(Debug)]
pub struct PartitionState {
    pub in_flight: InFlight,
    /// The next offset to commit: every record below it is written or dead-lettered. -1 until
    /// known (first record handed out, or the consumer's position when nothing has been).
    durable: AtomicI64,
    /// Kafka timestamp of the oldest record not yet durable, -1 when none is held.
    head_timestamp: AtomicI64,
    /// When (ms since the epoch) the sink write under way started, -1 when none is.
    writing_since: AtomicI64,
}

impl Default for PartitionState {
    fn default() -> Self {
        Self {
            in_flight: InFlight::default(),
            durable: AtomicI64::new(-1),
            head_timestamp: AtomicI64::new(-1),
            writing_since: AtomicI64::new(-1),
        }
    }
}

impl PartitionState {
    pub fn durable(&self) -> Option<i64> {
        Some(self.durable.load(Ordering::Acquire)).filter(|o| *o >= 0)
    }

    /// Only moves forward.
    pub fn advance_durable(&self, next: i64) {
        self.durable.fetch_max(next, Ordering::AcqRel);
    }

    /// Sets the starting point once, when it is not known yet.
    pub fn init_durable(&self, next: i64) {
        let _ = self
            .durable
            .compare_exchange(-1, next, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn head_timestamp(&self) -> Option<i64> {
        Some(self.head_timestamp.load(Ordering::Relaxed)).filter(|t| *t >= 0)
    }

    pub fn set_head_timestamp(&self, ts: Option<i64>) {
        self.head_timestamp
            .store(ts.unwrap_or(-1), Ordering::Relaxed);
    }

    pub fn writing_since(&self) -> Option<i64> {
        Some(self.writing_since.load(Ordering::Relaxed)).filter(|t| *t >= 0)
    }

    pub fn set_writing_since(&self, since: Option<i64>) {
        self.writing_since
            .store(since.unwrap_or(-1), Ordering::Relaxed);
    }
}

/// Whether a partition should be paused: its write has been under way for `pause_after_ms`.
/// It is resumed as soon as the write returns.
pub fn should_pause(writing_since: Option<i64>, now: i64, pause_after_ms: u64) -> bool {
    writing_since.is_some_and(|since| now - since >= pause_after_ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_only_a_write_that_has_taken_long_enough() {
        assert!(!should_pause(None, 10_000, 1_000));
        assert!(!should_pause(Some(9_500), 10_000, 1_000));
        assert!(should_pause(Some(9_000), 10_000, 1_000));
    }

    #[tokio::test]
    async fn the_gate_opens_when_records_are_released() {
        let gate = std::sync::Arc::new(Gate::new(FlowConfig {
            max_records: 10,
            max_bytes: 1_000,
            pause_after_ms: 1_000,
        }));
        gate.in_flight.add(10, 100);
        assert!(!gate.has_room());
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        gate.release(1, 10);
        waiter.await.expect("waiter");
        assert!(gate.has_room());
        gate.in_flight.add(0, 910);
        assert!(!gate.has_room(), "the byte bound counts too");
    }

    #[test]
    fn durable_offset_never_moves_back_and_initialises_once() {
        let s = PartitionState::default();
        assert_eq!(s.durable(), None);
        s.init_durable(10);
        s.init_durable(5);
        assert_eq!(s.durable(), Some(10));
        s.advance_durable(20);
        s.advance_durable(15);
        assert_eq!(s.durable(), Some(20));
    }

    #[test]
    fn in_flight_adds_and_releases() {
        let f = InFlight::default();
        f.add(3, 300);
        f.add(2, 200);
        f.release(4, 400);
        assert_eq!(f.get(), (1, 100));
    }
}
