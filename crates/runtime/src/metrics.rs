//! Names of the runtime's metrics, described once so `/metrics` carries their help text.
//! Labels stay low-cardinality: topic, partition, reason, outcome.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const RECORDS_CONSUMED: &str = "eventpipe_records_consumed_total";
pub const RECORDS_WRITTEN: &str = "eventpipe_records_written_total";
pub const RECORDS_SKIPPED: &str = "eventpipe_records_skipped_total";
pub const RECORDS_DEAD_LETTERED: &str = "eventpipe_records_dead_lettered_total";
pub const RECORDS_LATE: &str = "eventpipe_records_late_total";
pub const RETRIES: &str = "eventpipe_retries_total";
pub const BATCH_RECORDS: &str = "eventpipe_batch_records";
pub const SINK_WRITE_SECONDS: &str = "eventpipe_sink_write_seconds";
pub const REBALANCES: &str = "eventpipe_rebalances_total";
pub const ASSIGNED_PARTITIONS: &str = "eventpipe_assigned_partitions";
pub const PAUSED_PARTITIONS: &str = "eventpipe_paused_partitions";
pub const IN_FLIGHT_RECORDS: &str = "eventpipe_in_flight_records";
pub const IN_FLIGHT_BYTES: &str = "eventpipe_in_flight_bytes";
pub const COMMITS: &str = "eventpipe_commits_total";
pub const LAG_RECORDS: &str = "eventpipe_consumer_lag_records";
pub const LAG_SECONDS: &str = "eventpipe_consumer_lag_seconds";
pub const KAFKA_ERRORS: &str = "eventpipe_kafka_errors_total";

/// Bucket bounds of the histograms, set on the Prometheus recorder.
pub const BATCH_RECORDS_BUCKETS: &[f64] =
    &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub fn describe() {
    describe_counter!(
        RECORDS_CONSUMED,
        "Records fetched from Kafka and handed to a partition worker."
    );
    describe_counter!(
        RECORDS_WRITTEN,
        "Records the sink wrote (or found already written)."
    );
    describe_counter!(
        RECORDS_SKIPPED,
        "Records the sink does not handle, by reason."
    );
    describe_counter!(
        RECORDS_DEAD_LETTERED,
        "Records sent to the dead-letter topic and acknowledged, by reason."
    );
    describe_counter!(
        RECORDS_LATE,
        "Records the sink found outside its time window, sent to the late topic and acknowledged, by reason."
    );
    describe_counter!(
        RETRIES,
        "Retries after a transient error, by stage (decode, sink, dlq) and reason."
    );
    describe_histogram!(
        BATCH_RECORDS,
        Unit::Count,
        "Records per batch handed to the sink."
    );
    describe_histogram!(
        SINK_WRITE_SECONDS,
        Unit::Seconds,
        "Duration of one successful sink write."
    );
    describe_counter!(
        REBALANCES,
        "Partition assignments and revocations, by kind."
    );
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        "Partitions currently assigned to this member."
    );
    describe_gauge!(
        PAUSED_PARTITIONS,
        "Assigned partitions paused by backpressure or shutdown."
    );
    describe_gauge!(IN_FLIGHT_RECORDS, "Records fetched but not yet durable.");
    describe_gauge!(
        IN_FLIGHT_BYTES,
        Unit::Bytes,
        "Bytes of records fetched but not yet durable."
    );
    describe_counter!(COMMITS, "Offset commits, by mode and result.");
    describe_gauge!(
        LAG_RECORDS,
        "High watermark minus the next offset to commit, per partition."
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest record not yet durable, per partition."
    );
    describe_counter!(
        KAFKA_ERRORS,
        "Errors reported by the Kafka client, by code."
    );
}
