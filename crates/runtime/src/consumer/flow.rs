//! In-flight accounting shared by the poll thread (which adds what it hands out) and the
//! partition workers (which release what is durable), and the pure pause/resume rule.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

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

/// What the runtime knows about one assigned partition, shared between threads.
#[derive(Debug)]
pub struct PartitionState {
    pub in_flight: InFlight,
    /// The next offset to commit: every record below it is written or dead-lettered. -1 until
    /// known (first record handed out, or the consumer's position when nothing has been).
    durable: AtomicI64,
    /// Kafka timestamp of the oldest record not yet durable, -1 when none is held.
    head_timestamp: AtomicI64,
}

impl Default for PartitionState {
    fn default() -> Self {
        Self {
            in_flight: InFlight::default(),
            durable: AtomicI64::new(-1),
            head_timestamp: AtomicI64::new(-1),
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
}

/// A partition is paused when it, or the whole consumer, holds as much as it may.
pub fn over_limit(partition: (usize, usize), total: (usize, usize), limits: &FlowConfig) -> bool {
    partition.0 >= limits.partition_max_records
        || partition.1 >= limits.partition_max_bytes
        || total.0 >= limits.max_records
        || total.1 >= limits.max_bytes
}

/// …and resumed once both have drained to half, so it does not flap at the boundary.
pub fn may_resume(partition: (usize, usize), total: (usize, usize), limits: &FlowConfig) -> bool {
    partition.0 <= limits.partition_max_records / 2
        && partition.1 <= limits.partition_max_bytes / 2
        && total.0 <= limits.max_records / 2
        && total.1 <= limits.max_bytes / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FlowConfig {
        FlowConfig {
            partition_max_records: 100,
            partition_max_bytes: 1000,
            max_records: 300,
            max_bytes: 3000,
        }
    }

    #[test]
    fn pauses_at_either_bound_of_partition_or_total() {
        let l = limits();
        assert!(!over_limit((99, 999), (299, 2999), &l));
        assert!(over_limit((100, 0), (100, 0), &l));
        assert!(over_limit((1, 1000), (1, 1000), &l));
        assert!(over_limit((1, 1), (300, 1), &l));
        assert!(over_limit((1, 1), (1, 3000), &l));
    }

    #[test]
    fn resumes_only_below_half_of_every_bound() {
        let l = limits();
        assert!(may_resume((50, 500), (150, 1500), &l));
        assert!(!may_resume((51, 0), (51, 0), &l));
        assert!(!may_resume((0, 501), (0, 501), &l));
        assert!(!may_resume((0, 0), (151, 0), &l));
        assert!(!may_resume((0, 0), (0, 1501), &l));
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
