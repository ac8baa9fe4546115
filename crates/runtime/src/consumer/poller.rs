//! The poll thread: the only place that drives the group member. It polls the consumer's main
//! queue without pause (so `max.poll.interval.ms` never expires, however slow the sink),
//! pauses partitions whose write is taking long and resumes them when it returns, commits
//! durable offsets, and runs the rebalance callbacks: on assign it splits each partition's
//! queue off and starts its worker; on revoke it waits for the revoked partitions' workers and
//! commits synchronously before the partitions are given up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::flow::{self, PartitionState};
use super::partition::{raw_record, Shared, Worker};
use crate::config::FlowConfig;
use crate::dlq::RawRecord;
use crate::metrics as m;
use crate::sink::Sink;

/// The poll thread's handle on one partition's worker.
struct Partition {
    topic: Arc<str>,
    /// Hands the worker records that reached the main queue (fetched before the split).
    early: tokio::sync::mpsc::UnboundedSender<RawRecord>,
    state: Arc<PartitionState>,
    revoked: CancellationToken,
    done: std::sync::mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
    paused: bool,
    /// The last offset sent in a commit (which may still fail; then it is reset).
    committed: i64,
}

impl Partition {
    fn is_done(&self) -> bool {
        matches!(
            self.done.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        )
    }
}

type Partitions = HashMap<String, HashMap<i32, Partition>>;

/// What lag measurement needs to see of the assignment.
pub(crate) type Assigned = Vec<(Arc<str>, i32, Arc<PartitionState>)>;

/// librdkafka's callbacks (rebalance, commit, errors) land here, on the poll thread.
pub(crate) struct PipelineContext<S: Sink> {
    pub shared: Arc<Shared<S>>,
    pub flow: FlowConfig,
    pub runtime: tokio::runtime::Handle,
    pub revoke_timeout: Duration,
    partitions: Mutex<Partitions>,
    /// Set once the first assignment arrived: the member has joined its group.
    pub joined: AtomicBool,
    /// The consumer itself, to split partition queues off it on assignment (weak: the
    /// consumer owns this context).
    pub consumer: OnceLock<Weak<BaseConsumer<PipelineContext<S>>>>,
}

impl<S: Sink> PipelineContext<S> {
    pub fn new(
        shared: Arc<Shared<S>>,
        flow: FlowConfig,
        runtime: tokio::runtime::Handle,
        revoke_timeout: Duration,
    ) -> Self {
        Self {
            shared,
            flow,
            runtime,
            revoke_timeout,
            partitions: Mutex::new(HashMap::new()),
            joined: AtomicBool::new(false),
            consumer: OnceLock::new(),
        }
    }

    fn partitions(&self) -> MutexGuard<'_, Partitions> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn assigned(&self) -> Assigned {
        self.partitions()
            .values()
            .flat_map(|ps| {
                ps.iter()
                    .map(|(p, h)| (h.topic.clone(), *p, h.state.clone()))
            })
            .collect()
    }
}

impl<S: Sink> ClientContext for PipelineContext<S> {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        counter!(m::KAFKA_ERRORS, "code" => format!("{:?}", code.unwrap_or(RDKafkaErrorCode::Unknown)))
            .increment(1);
        if code.is_some_and(is_fatal) {
            self.shared
                .fatal
                .raise(format!("Kafka client error: {error}: {reason}"));
        } else {
            tracing::warn!(%error, reason, "Kafka client error (librdkafka retries on its own)");
        }
    }
}

/// Errors that retrying will not cure: credentials and permissions, librdkafka's own fatal.
fn is_fatal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::Fatal
    )
}

impl<S: Sink> ConsumerContext for PipelineContext<S> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                counter!(m::REBALANCES, "kind" => "revoke").increment(1);
                let lost = consumer.assignment_lost();
                self.revoke(consumer, tpl, lost);
            }
            // Before librdkafka starts fetching, so every record lands in the split queue.
            Rebalance::Assign(tpl) => {
                counter!(m::REBALANCES, "kind" => "assign").increment(1);
                self.assign(tpl);
                self.joined.store(true, Ordering::Relaxed);
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        // The request can succeed while single partitions fail (an old generation after a
        // rebalance or a broker restart): those are sent again on the next tick too.
        let failed: Vec<_> = offsets
            .elements()
            .into_iter()
            .filter(|e| result.is_err() || e.error().is_err())
            .collect();
        if failed.is_empty() {
            counter!(m::COMMITS, "mode" => "async", "result" => "ok").increment(1);
            return;
        }
        counter!(m::COMMITS, "mode" => "async", "result" => "error").increment(1);
        let error = match (&result, failed.first().map(|e| e.error())) {
            (Err(e), _) => e.to_string(),
            (_, Some(Err(e))) => e.to_string(),
            _ => String::new(),
        };
        tracing::warn!(
            %error,
            partitions = failed.len(),
            "offset commit failed; it is retried on the next tick"
        );
        let mut partitions = self.partitions();
        for e in failed {
            if let Some(p) = partitions
                .get_mut(e.topic())
                .and_then(|ps| ps.get_mut(&e.partition()))
            {
                p.committed = -1;
            }
        }
    }
}

impl<S: Sink> PipelineContext<S> {
    fn assign(&self, tpl: &TopicPartitionList) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            tracing::error!("assignment while the consumer is going away; ignored");
            return;
        };
        let mut partitions = self.partitions();
        let mut fresh = TopicPartitionList::new();
        for e in tpl.elements() {
            let slot = partitions.entry(e.topic().to_owned()).or_default();
            if slot.contains_key(&e.partition()) {
                continue;
            }
            fresh.add_partition(e.topic(), e.partition());
            let Some(mut queue) = consumer.split_partition_queue(e.topic(), e.partition()) else {
                self.shared.fatal.raise(format!(
                    "cannot split the queue of {}/{} off the consumer",
                    e.topic(),
                    e.partition()
                ));
                continue;
            };
            let arrived = Arc::new(tokio::sync::Notify::new());
            queue.set_nonempty_callback({
                let arrived = arrived.clone();
                move || arrived.notify_one()
            });
            let topic: Arc<str> = e.topic().into();
            let state = Arc::new(PartitionState::default());
            let (early, early_rx) = tokio::sync::mpsc::unbounded_channel();
            let (done_tx, done) = std::sync::mpsc::channel();
            let revoked = CancellationToken::new();
            let worker = Worker {
                topic: topic.clone(),
                partition: e.partition(),
                queue,
                arrived,
                early: early_rx,
                state: state.clone(),
                revoked: revoked.clone(),
                shared: self.shared.clone(),
                pushed_back: None,
                _done: done_tx,
            };
            let task = self.runtime.spawn(worker.run());
            tracing::info!(
                topic = e.topic(),
                partition = e.partition(),
                "partition assigned"
            );
            slot.insert(
                e.partition(),
                Partition {
                    topic,
                    early,
                    state,
                    revoked,
                    done,
                    task,
                    paused: false,
                    committed: -1,
                },
            );
        }
        // In librdkafka a pause belongs to the application and outlives the assignment: a
        // partition this member paused (a slow write) before it was revoked or lost would come
        // back paused and never be fetched again. A new worker starts unpaused.
        if fresh.count() > 0 {
            if let Err(e) = consumer.resume(&fresh) {
                tracing::warn!(error = %e, "cannot resume newly assigned partitions");
            }
        }
        gauge!(m::ASSIGNED_PARTITIONS).set(count(&partitions) as f64);
    }

    /// Stops the revoked partitions' workers (the batch being written may finish, within the
    /// revoke timeout) and commits their durable offsets before librdkafka gives them up.
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, lost: bool) {
        let mut revoked = Vec::new();
        {
            let mut partitions = self.partitions();
            for e in tpl.elements() {
                if let Some(p) = partitions
                    .get_mut(e.topic())
                    .and_then(|ps| ps.remove(&e.partition()))
                {
                    p.revoked.cancel();
                    revoked.push((e.partition(), p));
                }
            }
            partitions.retain(|_, ps| !ps.is_empty());
            gauge!(m::ASSIGNED_PARTITIONS).set(count(&partitions) as f64);
        }
        let deadline = Instant::now() + self.revoke_timeout;
        for (partition, p) in &revoked {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = p.done.recv_timeout(left) {
                tracing::warn!(topic = %p.topic, partition, "revoked partition's batch did not finish in time; abandoning it");
                p.task.abort();
            }
            gauge!(m::LAG_RECORDS, "topic" => p.topic.to_string(), "partition" => partition.to_string()).set(0.0);
            gauge!(m::LAG_SECONDS, "topic" => p.topic.to_string(), "partition" => partition.to_string()).set(0.0);
        }
        if lost {
            tracing::warn!("assignment lost (session timed out); nothing can be committed for it");
            return;
        }
        let offsets = offsets_to_commit(revoked.iter().map(|(n, p)| (*n, p)), true);
        if let Some(tpl) = offsets {
            commit_sync(consumer, &tpl, "revoke");
        }
        for (partition, p) in &revoked {
            tracing::info!(topic = %p.topic, partition, durable = ?p.state.durable(), "partition revoked");
        }
    }
}

/// Every assigned partition with its number.
fn each(partitions: &Partitions) -> impl Iterator<Item = (i32, &Partition)> {
    partitions
        .values()
        .flat_map(|ps| ps.iter().map(|(n, p)| (*n, p)))
}

fn count(partitions: &Partitions) -> usize {
    partitions.values().map(HashMap::len).sum()
}

/// The durable offsets not yet committed (or all durable ones when `all`).
fn offsets_to_commit<'a>(
    partitions: impl Iterator<Item = (i32, &'a Partition)>,
    all: bool,
) -> Option<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (partition, p) in partitions {
        if let Some(durable) = p.state.durable() {
            if all || durable != p.committed {
                // Errors only on an invalid offset value, which a durable offset never is.
                let _ = tpl.add_partition_offset(&p.topic, partition, Offset::Offset(durable));
            }
        }
    }
    (tpl.count() > 0).then_some(tpl)
}

fn commit_sync<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
    why: &str,
) {
    match consumer.commit(tpl, CommitMode::Sync) {
        Ok(()) => {
            counter!(m::COMMITS, "mode" => "sync", "result" => "ok").increment(1);
            tracing::debug!(why, offsets = ?tpl, "offsets committed");
        }
        Err(e) => {
            counter!(m::COMMITS, "mode" => "sync", "result" => "error").increment(1);
            tracing::warn!(why, error = %e, "offset commit failed; those records will be redelivered");
        }
    }
}

/// Runs the poll loop until `shutdown`, then drains: stops fetching, lets every worker write
/// what it holds, commits, and leaves the group (by dropping the consumer) — all within
/// `deadline` of the shutdown request.
pub(crate) fn run<S: Sink>(
    consumer: Arc<BaseConsumer<PipelineContext<S>>>,
    shutdown: CancellationToken,
    commit_interval: Duration,
    deadline: Duration,
) {
    let ctx = consumer.context().clone();
    let mut next_commit = Instant::now() + commit_interval;
    let mut ticks: u64 = 0;
    while !shutdown.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => hand_over_early(&ctx, &message),
            Some(Err(e)) => {
                counter!(m::KAFKA_ERRORS, "code" => format!("{:?}", e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown))).increment(1);
                tracing::warn!(error = %e, "consumer error");
            }
            None => {}
        }
        pause_slow_writers(&ctx, &consumer);
        if Instant::now() >= next_commit {
            next_commit = Instant::now() + commit_interval;
            learn_start_positions(&ctx, &consumer);
            ticks += 1;
            commit_async(&ctx, &consumer, ticks.is_multiple_of(FULL_COMMIT_EVERY));
            report_in_flight(&ctx);
        }
    }
    drain(&ctx, &consumer, deadline);
    tracing::info!("leaving the consumer group");
    drop(consumer);
}

/// A record on the main queue was fetched before its partition's queue was split off; it
/// goes to the worker ahead of everything in the split queue. Dropping it would lose it: the
/// consumer's position has already moved past it.
fn hand_over_early<S: Sink>(ctx: &PipelineContext<S>, message: &BorrowedMessage<'_>) {
    let partitions = ctx.partitions();
    match partitions
        .get(message.topic())
        .and_then(|ps| ps.get(&message.partition()))
    {
        Some(p) => {
            if p.early.send(raw_record(message, &p.topic)).is_err() {
                tracing::debug!(
                    topic = message.topic(),
                    partition = message.partition(),
                    "worker gone; record left uncommitted"
                );
            }
        }
        None => tracing::debug!(
            topic = message.topic(),
            partition = message.partition(),
            "record for a partition no longer assigned; left for its owner"
        ),
    }
}

/// Pauses the partitions whose write has taken longer than `flow.pause_after_ms` (librdkafka
/// stops fetching them) and resumes those whose write has returned.
fn pause_slow_writers<S: Sink>(
    ctx: &PipelineContext<S>,
    consumer: &BaseConsumer<PipelineContext<S>>,
) {
    let now = super::now_ms();
    let mut partitions = ctx.partitions();
    let mut pause = TopicPartitionList::new();
    let mut resume = TopicPartitionList::new();
    let mut paused = 0;
    for (topic, ps) in partitions.iter_mut() {
        for (partition, p) in ps.iter_mut() {
            let slow = flow::should_pause(p.state.writing_since(), now, ctx.flow.pause_after_ms);
            if slow && !p.paused {
                pause.add_partition(topic, *partition);
                p.paused = true;
            } else if !slow && p.paused {
                resume.add_partition(topic, *partition);
                p.paused = false;
            }
            paused += usize::from(p.paused);
        }
    }
    if pause.count() > 0 {
        tracing::debug!(partitions = ?pause, "pausing: sink write under way for too long");
        if let Err(e) = consumer.pause(&pause) {
            tracing::warn!(error = %e, "cannot pause partitions");
        }
    }
    if resume.count() > 0 {
        if let Err(e) = consumer.resume(&resume) {
            tracing::warn!(error = %e, "cannot resume partitions");
        }
    }
    gauge!(m::PAUSED_PARTITIONS).set(paused as f64);
}

/// A partition that has not yielded a record yet starts where the consumer is positioned
/// (the committed offset): that is its durable offset until a batch moves it, and what lag is
/// measured from.
fn learn_start_positions<S: Sink>(
    ctx: &PipelineContext<S>,
    consumer: &BaseConsumer<PipelineContext<S>>,
) {
    let partitions = ctx.partitions();
    let unknown = partitions
        .values()
        .flat_map(HashMap::values)
        .any(|p| p.state.durable().is_none());
    if !unknown {
        return;
    }
    let Ok(positions) = consumer.position() else {
        return;
    };
    for e in positions.elements() {
        if let (Offset::Offset(o), Some(p)) = (
            e.offset(),
            partitions
                .get(e.topic())
                .and_then(|ps| ps.get(&e.partition())),
        ) {
            if p.state.in_flight.get().0 == 0 {
                p.state.init_durable(o);
            }
        }
    }
}

/// Every this many commit ticks, every durable offset is committed again, changed or not: a
/// commit that failed without the failure being reported to the commit callback (seen during
/// a rejoin after a broker restart, "generation id is not valid") would otherwise leave an
/// idle partition's lag above zero until its next record.
const FULL_COMMIT_EVERY: u64 = 10;

fn commit_async<S: Sink>(
    ctx: &PipelineContext<S>,
    consumer: &BaseConsumer<PipelineContext<S>>,
    all: bool,
) {
    let mut partitions = ctx.partitions();
    let tpl = offsets_to_commit(each(&partitions), all);
    let Some(tpl) = tpl else { return };
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::warn!(error = %e, "cannot send offset commit");
        return;
    }
    for e in tpl.elements() {
        if let (Offset::Offset(o), Some(p)) = (
            e.offset(),
            partitions
                .get_mut(e.topic())
                .and_then(|ps| ps.get_mut(&e.partition())),
        ) {
            p.committed = o;
        }
    }
}

fn report_in_flight<S: Sink>(ctx: &PipelineContext<S>) {
    let (records, bytes) = ctx.shared.gate.in_flight.get();
    gauge!(m::IN_FLIGHT_RECORDS).set(records as f64);
    gauge!(m::IN_FLIGHT_BYTES).set(bytes as f64);
}

/// Shutdown: pause everything (no more fetching), tell every worker to write what it holds
/// now, wait for them until the deadline, commit what is durable.
fn drain<S: Sink>(
    ctx: &PipelineContext<S>,
    consumer: &BaseConsumer<PipelineContext<S>>,
    deadline: Duration,
) {
    let until = Instant::now() + deadline;
    tracing::info!(
        ?deadline,
        "draining: fetching stopped, writing what is in flight"
    );
    {
        let mut partitions = ctx.partitions();
        let mut tpl = TopicPartitionList::new();
        for (topic, ps) in partitions.iter_mut() {
            for (partition, p) in ps.iter_mut() {
                tpl.add_partition(topic, *partition);
                p.paused = true;
            }
        }
        ctx.shared.drain.cancel();
        if tpl.count() > 0 {
            if let Err(e) = consumer.pause(&tpl) {
                tracing::warn!(error = %e, "cannot pause partitions for shutdown");
            }
        }
    }
    loop {
        let all_done = ctx
            .partitions()
            .values()
            .flat_map(HashMap::values)
            .all(Partition::is_done);
        if all_done {
            break;
        }
        if Instant::now() >= until {
            tracing::warn!("shutdown deadline reached; abandoning unwritten batches (they will be redelivered)");
            break;
        }
        // Keep serving callbacks; records that still arrive are not dispatched, so they stay
        // uncommitted.
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let offsets = {
        let partitions = ctx.partitions();
        offsets_to_commit(each(&partitions), true)
    };
    if let Some(tpl) = offsets {
        commit_sync(consumer, &tpl, "shutdown");
    }
    let left: Vec<Partition> = {
        let mut partitions = ctx.partitions();
        // The final revoke when the consumer closes finds nothing left to wait for.
        partitions
            .drain()
            .flat_map(|(_, ps)| ps.into_values())
            .collect()
    };
    // Workers hold their partition queues, and with them the consumer: wait until they are
    // gone so that the consumer closes here, on this thread.
    for p in &left {
        p.task.abort();
    }
    for p in &left {
        let _ = p.done.recv_timeout(Duration::from_secs(5));
    }
}
