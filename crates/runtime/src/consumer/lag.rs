//! Lag per assigned partition, in records and in seconds, measured on its own thread with its
//! own client so that neither a slow broker answer nor a paused partition (whose cached
//! watermarks stop moving) distorts it.
//!
//! Records: high watermark minus the next offset to commit. Seconds: the age of the oldest
//! record fetched but not yet durable; when none is held (the partition is paused or the fetch
//! has not caught up), the time since lag was first seen non-zero.

use std::collections::HashMap;
use std::time::Duration;

use metrics::gauge;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::poller::Assigned;
use crate::metrics as m;

pub(crate) fn run(
    client: BaseConsumer,
    assigned: impl Fn() -> Assigned,
    interval: Duration,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let mut behind_since: HashMap<(String, i32), i64> = HashMap::new();
    // Returns on an explicit stop or when the sender is dropped.
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        for (topic, partition, state) in assigned() {
            let Some(durable) = state.durable() else {
                continue;
            };
            let high = match client.fetch_watermarks(&topic, partition, Duration::from_secs(5)) {
                Ok((_, high)) => high,
                Err(e) => {
                    tracing::debug!(%topic, partition, error = %e, "cannot fetch watermarks");
                    continue;
                }
            };
            let records = (high - durable).max(0);
            let now = super::now_ms();
            let key = (topic.to_string(), partition);
            let since = if records > 0 {
                Some(*behind_since.entry(key).or_insert(now))
            } else {
                behind_since.remove(&key);
                None
            };
            let seconds = lag_seconds(records, state.head_timestamp(), since, now);
            let labels = [
                ("topic", topic.to_string()),
                ("partition", partition.to_string()),
            ];
            gauge!(m::LAG_RECORDS, &labels).set(records as f64);
            gauge!(m::LAG_SECONDS, &labels).set(seconds);
        }
    }
}

fn lag_seconds(
    records: i64,
    head_timestamp: Option<i64>,
    behind_since: Option<i64>,
    now: i64,
) -> f64 {
    if records == 0 {
        return 0.0;
    }
    let since = head_timestamp.or(behind_since).unwrap_or(now);
    (now - since).max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::lag_seconds;

    #[test]
    fn no_lag_is_zero_seconds_whatever_the_timestamps() {
        assert_eq!(lag_seconds(0, Some(1_000), Some(1_000), 60_000), 0.0);
    }

    #[test]
    fn the_oldest_held_record_dates_the_lag() {
        assert_eq!(lag_seconds(5, Some(10_000), Some(50_000), 70_000), 60.0);
    }

    #[test]
    fn without_a_held_record_lag_dates_from_when_it_was_first_seen() {
        assert_eq!(lag_seconds(5, None, Some(40_000), 70_000), 30.0);
    }

    #[test]
    fn a_timestamp_from_the_future_is_not_negative_lag() {
        assert_eq!(lag_seconds(1, Some(80_000), None, 70_000), 0.0);
    }
}
