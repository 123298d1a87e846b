//! The Kafka source operator.
//!
//! Each worker reads its share of the partitions (see [`super::plan`])
//! through the process's consumer ([`SharedConsumer`]), each partition from a
//! queue of its own, so that end-of-partition events and errors are never
//! ambiguous and no worker sees another's messages. It decodes every
//! message at once and emits three streams:
//!
//! * trades, normalized, in Kafka order per partition, each flagged
//!   [`Trade::late`] when it is late (below; bronze tables take late trades,
//!   event-time operators route them away);
//! * dead letters: every message that could not be decoded, whole, with the
//!   reason (nothing is dropped silently, and no input can panic a worker);
//! * offset reports: at the close of each epoch, the next offset of every
//!   partition the worker owns. The committer pairs them with the data files
//!   of the same epochs, which makes each commit a consistent cut.
//!
//! ## Time
//! The operator holds one capability per output at `(epoch, watermark)` and
//! stamps every polled batch with it; records carry their exact event time
//! (µs). Epochs follow the wall clock, `now / epoch_ms`, on every worker
//! alike, so no worker holds another's commits back.
//!
//! The event-time watermark of a partition is the largest event time it has
//! shown minus the allowed out-of-orderness. A worker's watermark is the
//! minimum over its *active* partitions, never going back. The idleness
//! policy: a partition is idle when it is caught up (it reported end of
//! partition) and has shown nothing for `idle_timeout_ms`; idle partitions do
//! not hold the watermark. When all of a worker's partitions are idle, its
//! watermark follows the wall clock, `now - out_of_orderness - idle_timeout`,
//! so that quiet markets do not stall event-time progress forever. A record
//! that later arrives on such a partition may be below the watermark: it is
//! flagged late. A worker without partitions holds `(epoch, MAX)` in a
//! bounded run, and the idle watermark in a continuous one (a partition added
//! to the topic may be handed to it later, see [`super::watch`]).
//!
//! ## The end of a run
//! Stopped, or at the end of a bounded input, the source reports where it
//! got and holds `(STOPPED, watermark)` until `release` (the frontier of
//! what the committer receives) is all at `STOPPED`; see [`crate::stop`].
//! A partition read to the end of a bounded input still holds the
//! watermark (it has more to come, for the next run); one without any
//! message does not.
//!
//! ## Lateness and the future
//! A trade is late when its event time is below its own partition's
//! watermark at the moment it is read. Never the cross-partition watermark:
//! that depends on how fast other partitions were read, so results would
//! depend on scheduling. Each partition's largest event time is checkpointed
//! with its offset, so the decision is also the same after a restart. An
//! on-time trade is never below the operator's capability (the minimum over
//! partitions), which is what lets event-time operators evict state safely.
//!
//! A trade dated more than `source.max_future_ms` after its Kafka timestamp
//! (or after now, if that is earlier) never moves a watermark: one trade of
//! the year 3000 would otherwise close every window and empty every state.
//! It is flagged late (bronze keeps it) or dead-lettered with the reason, as
//! `source.future` says; never lost silently.
//!
//! ## Control messages
//! Heartbeats, status and subscription responses carry no trade. They are
//! counted per kind ([`SourceStats::control`]) and skipped, or dead-lettered
//! when `source.control = "dead_letter"`.
//!
//! ## Backpressure
//! While a sink cannot write (a full disk), it stalls the job's
//! [`Backpressure`] and the source reads nothing, so memory stays bounded.
//!
//! ## Never blocking
//! Polls use a zero timeout. The operator is re-activated by librdkafka when a
//! queue becomes non-empty, after a full batch, and at the next epoch boundary.
//!
//! ## Observability
//! Counters ([`SourceStats`]) are added once per activation, and each
//! partition's read position and each worker's watermark are published
//! once per activation too ([`SourceStats::partitions`],
//! [`SourceStats::watermarks`]): the telemetry thread reads them for
//! consumer lag and event-time lag, so nothing is added per record.
//!
//! ## Stopping on a lost position
//! If the broker no longer has the offset a partition reads from (the topic
//! was deleted and re-created, or retention overtook the reader), librdkafka
//! reports it (`auto.offset.reset = error`) and the job stops with an error
//! naming the topic, the partition and the offset, after committing what it
//! had read: it never jumps silently.

use super::decode::{ControlKind, Decoded, decode};
use super::plan::{PartitionPlan, owner};
use super::watch::PartitionWatch;
use crate::checkpoint::Backpressure;
use crate::checkpoint::OffsetReport;
use crate::config::{ControlPolicy, FuturePolicy};
use crate::kafka::Quiet;
use crate::record::{DeadLetter, SourcePosition, Trade};
use crate::stop::StopSignal;
use crate::time::{STOPPED, Time};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{Scope, Stream};

/// Counters of all source workers of a process.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Kafka messages read.
    pub messages: AtomicU64,
    /// Payload bytes read.
    pub bytes: AtomicU64,
    /// Trades decoded.
    pub trades: AtomicU64,
    /// Messages sent to the dead-letter output.
    pub dead_letters: AtomicU64,
    /// Consumer errors (transient; librdkafka retries).
    pub errors: AtomicU64,
    /// Trades flagged late: below their partition's watermark, or dated too
    /// far into the future (those are also counted in `future`).
    pub late: AtomicU64,
    /// Trades dated more than `source.max_future_ms` after their Kafka
    /// timestamp, whatever the policy did with them.
    pub future: AtomicU64,
    /// Control messages by kind, in the order of [`ControlKind::ALL`].
    pub control: [AtomicU64; ControlKind::ALL.len()],
    /// Partitions added to the topics while the job ran, now read.
    pub partitions_added: AtomicU64,
    /// Every partition this process reads, with its position.
    pub partitions: Mutex<Vec<Arc<PartitionProgress>>>,
    /// Each source worker's event-time watermark, µs (`u64::MAX`: a worker
    /// with nothing to read in a bounded run).
    pub watermarks: Mutex<Vec<Arc<AtomicU64>>>,
}

/// Where a source worker is in one partition, published once per
/// activation (two relaxed stores), for consumer lag.
#[derive(Debug)]
pub struct PartitionProgress {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// The next offset to read.
    pub next: AtomicI64,
    /// The partition reported its end and nothing was read since.
    pub caught_up: AtomicBool,
}

impl SourceStats {
    /// Control messages by kind name, for reports.
    pub fn control_counts(&self) -> BTreeMap<&'static str, u64> {
        ControlKind::ALL
            .iter()
            .zip(&self.control)
            .map(|(k, n)| (k.name(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The consumer that one source's workers in a process share, created by
/// the first of them with something to read. Each worker reads its own
/// partitions through queues of their own, so sharing changes nothing for
/// it; one consumer per process instead of one per worker halves, on two
/// workers, the fetch requests the broker serves and librdkafka's threads.
#[derive(Clone, Default)]
pub struct SharedConsumer(Arc<std::sync::Mutex<Option<Arc<BaseConsumer<Quiet>>>>>);

impl SharedConsumer {
    /// The consumer, created from `client` by the first caller.
    fn get(&self, client: &ClientConfig) -> crate::error::Result<Arc<BaseConsumer<Quiet>>> {
        let mut shared = self.0.lock().expect("shared consumer");
        if let Some(c) = shared.as_ref() {
            return Ok(c.clone());
        }
        let c: Arc<BaseConsumer<Quiet>> = client
            .create_with_context(Quiet)
            .map(Arc::new)
            .map_err(|e| crate::error::Error::kafka("create consumer", e))?;
        *shared = Some(c.clone());
        Ok(c)
    }
}

/// What one source needs; cloned into every worker.
#[derive(Clone)]
pub struct SourceSpec {
    /// librdkafka settings of the consumer (brokers, security, group id, ...).
    pub client: ClientConfig,
    /// The consumer this source's workers in this process share.
    pub consumer: SharedConsumer,
    /// This worker's partitions at start.
    pub partitions: Vec<PartitionPlan>,
    /// Partitions added while the job runs (continuous runs only).
    pub watch: Option<PartitionWatch>,
    /// This worker's index and the number of workers, for new partitions.
    pub worker: (usize, usize),
    /// Epoch length, ms.
    pub epoch_ms: u64,
    /// The first epoch: after the last checkpointed one.
    pub first_epoch: u64,
    /// Allowed out-of-orderness, ms.
    pub max_out_of_orderness_ms: u64,
    /// See the idleness policy in the module docs.
    pub idle_timeout_ms: u64,
    /// How far an event time may lie after its Kafka timestamp, ms.
    pub max_future_ms: u64,
    /// What happens to a trade beyond that.
    pub future: FuturePolicy,
    /// What happens to control messages.
    pub control: ControlPolicy,
    /// Stop at the end offsets of the plan.
    pub bounded: bool,
    /// Most messages polled per activation.
    pub poll_batch: usize,
    /// Stop requests.
    pub stop: StopSignal,
    /// While a sink cannot write, the source does not read.
    pub backpressure: Backpressure,
    /// Shared counters.
    pub stats: Arc<SourceStats>,
}

/// The source's output streams.
pub struct SourceStreams<'scope> {
    /// Decoded trades, late ones flagged ([`Trade::late`]).
    pub trades: Stream<'scope, Time, Vec<Trade>>,
    /// Messages that failed to decode.
    pub dead_letters: Stream<'scope, Time, Vec<DeadLetter>>,
    /// Offsets at each epoch's close.
    pub progress: Stream<'scope, Time, Vec<OffsetReport>>,
}

/// One partition this worker reads: its queue, and what it has read.
struct Part {
    queue: PartitionQueue<Quiet>,
    s: PartState,
    progress: Arc<PartitionProgress>,
}

/// What has been read from one partition.
struct PartState {
    plan: PartitionPlan,
    next: i64,
    max_event_us: Option<u64>,
    last_ts_ms: Option<i64>,
    last_message: Instant,
    caught_up: bool,
    done: bool,
}

/// The capabilities of the three outputs, always at the same time.
struct Caps {
    trades: Capability<Time>,
    dead: Capability<Time>,
    progress: Capability<Time>,
}

impl Caps {
    fn time(&self) -> Time {
        *self.trades.time()
    }
    fn downgrade(&mut self, to: &Time) {
        self.trades.downgrade(to);
        self.dead.downgrade(to);
        self.progress.downgrade(to);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything one activation's polling needs besides the partitions.
struct Polling<'a> {
    spec: &'a SourceSpec,
    now_ms: u64,
    now: Instant,
    ingest_us: i64,
    cap_event: u64,
    trades: Vec<Trade>,
    dead: Vec<DeadLetter>,
    decoded: Vec<Trade>,
    read: u64,
    read_bytes: u64,
    late: u64,
    future: u64,
}

impl Polling<'_> {
    /// Decodes one message of partition `p` into the activation's buffers.
    fn message(&mut self, p: &mut PartState, m: &BorrowedMessage<'_>) {
        let spec = self.spec;
        if p.done || p.plan.end.is_some_and(|end| m.offset() >= end) {
            // Past the end of a bounded run: not ours to read.
            p.done = true;
            return;
        }
        p.next = m.offset() + 1;
        p.caught_up = false;
        p.last_message = self.now;
        let kafka_ts_ms = m.timestamp().to_millis().unwrap_or(0);
        p.last_ts_ms = Some(kafka_ts_ms);
        let pos = SourcePosition {
            topic: p.plan.topic,
            partition: p.plan.partition,
            offset: m.offset(),
            kafka_ts_ms,
            ingest_us: self.ingest_us,
        };
        let payload = m.payload();
        self.read += 1;
        self.read_bytes += payload.map_or(0, <[u8]>::len) as u64;
        let outcome = match payload {
            None => Err("empty payload (tombstone)".to_string()),
            Some(payload) => decode(p.plan.exchange, payload, &pos, &mut self.decoded).map_err(|e| e.to_string()),
        };
        let reason = match outcome {
            Ok(Decoded::Trades) => self.trades_of(p, kafka_ts_ms),
            Ok(Decoded::Control(kind)) => {
                spec.stats.control[kind as usize].fetch_add(1, Ordering::Relaxed);
                control_reason(spec.control, kind)
            }
            Err(reason) => Some(reason),
        };
        if let Some(reason) = reason {
            self.dead.push(DeadLetter::new(
                &pos,
                reason,
                m.key().map(<[u8]>::to_vec),
                payload.unwrap_or_default().to_vec(),
            ));
        }
        if p.plan.end.is_some_and(|end| p.next >= end) {
            p.done = true;
        }
    }

    /// Moves the decoded trades of one message to the output, deciding
    /// lateness; returns a dead-letter reason if the message must go there
    /// instead (a future-dated trade under `source.future = "dead_letter"`).
    fn trades_of(&mut self, p: &mut PartState, kafka_ts_ms: i64) -> Option<String> {
        let spec = self.spec;
        let horizon_us = future_horizon_us(kafka_ts_ms, self.now_ms, spec.max_future_ms);
        if spec.future == FuturePolicy::DeadLetter
            && let Some(reason) = future_reason(&self.decoded, horizon_us, spec.max_future_ms, kafka_ts_ms)
        {
            self.future += self.decoded.iter().filter(|t| t.event_time() > horizon_us).count() as u64;
            self.decoded.clear();
            return Some(reason);
        }
        let ooo_us = spec.max_out_of_orderness_ms.saturating_mul(1000);
        // In message order: a Kraken message carries several.
        for mut t in self.decoded.drain(..) {
            let us = t.event_time();
            if us > horizon_us {
                // Never moves the watermark; bronze keeps it as a late trade.
                self.future += 1;
                t.late = true;
            } else {
                // Lateness is decided per partition, against the partition's
                // own watermark at the moment of reading: Kafka fixes that
                // order, so the decision is the same on any number of workers
                // and across restarts. Also late: below the capability, which
                // only an idle partition's new record can be.
                t.late = p.max_event_us.is_some_and(|m| us.saturating_add(ooo_us) < m) || us < self.cap_event;
                p.max_event_us = Some(p.max_event_us.map_or(us, |m| m.max(us)));
            }
            self.late += u64::from(t.late);
            self.trades.push(t);
        }
        None
    }
}

/// The latest believable event time (µs) of a trade whose message has Kafka
/// timestamp `kafka_ts_ms`, read at `now_ms`: the timestamp (or now, if the
/// producer's clock is ahead) plus `source.max_future_ms`.
pub fn future_horizon_us(kafka_ts_ms: i64, now_ms: u64, max_future_ms: u64) -> u64 {
    let reference_ms = if kafka_ts_ms > 0 {
        (kafka_ts_ms as u64).min(now_ms)
    } else {
        now_ms
    };
    reference_ms.saturating_add(max_future_ms).saturating_mul(1000)
}

/// The dead-letter reason of a message whose `trades` include one dated
/// after `horizon_us` (see [`future_horizon_us`]), under `source.future =
/// "dead_letter"`; `None` if none is.
pub fn future_reason(trades: &[Trade], horizon_us: u64, max_future_ms: u64, kafka_ts_ms: i64) -> Option<String> {
    let (i, t) = trades.iter().enumerate().find(|(_, t)| t.event_time() > horizon_us)?;
    Some(format!(
        "trade {i} ({}): event time {} µs is more than source.max_future_ms = {max_future_ms} ms after its Kafka \
         timestamp {kafka_ts_ms} ms",
        t.message_id, t.event_us
    ))
}

/// The dead-letter reason of a control message of `kind` under `policy`;
/// `None` when it is skipped.
pub fn control_reason(policy: ControlPolicy, kind: ControlKind) -> Option<String> {
    match policy {
        ControlPolicy::Skip => None,
        ControlPolicy::DeadLetter => Some(format!("control message ({})", kind.name())),
    }
}

/// Gives each of `plans` a queue of its own, then assigns them (in that
/// order, so that no message reaches the consumer's main queue).
fn add_partitions(
    consumer: &Arc<BaseConsumer<Quiet>>,
    plans: Vec<PartitionPlan>,
    wake: &dyn Fn() -> Box<dyn Fn() + Send + Sync>,
    stats: &SourceStats,
) -> crate::error::Result<Vec<Part>> {
    let mut tpl = TopicPartitionList::new();
    let mut parts = Vec::with_capacity(plans.len());
    let now = Instant::now();
    for plan in plans {
        let Some(mut queue) = consumer.split_partition_queue(&plan.topic_name, plan.partition) else {
            return Err(crate::error::Error::Other(format!(
                "cannot read {}/{}: invalid topic name or partition",
                plan.topic_name, plan.partition
            )));
        };
        let wake = wake();
        queue.set_nonempty_callback(wake);
        tpl.add_partition_offset(&plan.topic_name, plan.partition, Offset::Offset(plan.start))
            .map_err(|e| crate::error::Error::kafka("build assignment", e))?;
        let progress = Arc::new(PartitionProgress {
            topic: plan.topic_name.clone(),
            partition: plan.partition,
            next: AtomicI64::new(plan.start),
            caught_up: AtomicBool::new(false),
        });
        parts.push(Part {
            queue,
            progress,
            s: PartState {
                next: plan.start,
                max_event_us: plan.max_event_us,
                last_ts_ms: None,
                last_message: now,
                caught_up: false,
                done: plan.end.is_some_and(|end| plan.start >= end),
                plan,
            },
        });
    }
    if tpl.count() > 0 {
        consumer
            .incremental_assign(&tpl)
            .map_err(|e| crate::error::Error::kafka("assign partitions", e))?;
    }
    stats
        .partitions
        .lock()
        .expect("source partitions")
        .extend(parts.iter().map(|p| p.progress.clone()));
    Ok(parts)
}

/// Builds the source for this worker; see the module docs.
/// `release`: the frontier of everything the committer receives, to let go
/// of the capabilities at the end of the run (module docs).
pub fn kafka_source<'scope>(
    scope: Scope<'scope, Time>,
    spec: SourceSpec,
    release: ProbeHandle<Time>,
) -> crate::error::Result<SourceStreams<'scope>> {
    let mut builder = OperatorBuilder::new(format!("KafkaSource(w{})", scope.index()), scope);
    let info = builder.operator_info();
    let (trades_out, trades) = builder.new_output::<Vec<Trade>>();
    let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let (progress_out, progress) = builder.new_output::<Vec<OffsetReport>>();
    let mut trades_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Trade>>> = OutputBuilder::from(trades_out);
    let mut dead_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<DeadLetter>>> = OutputBuilder::from(dead_out);
    let mut progress_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<OffsetReport>>> =
        OutputBuilder::from(progress_out);

    let activator = scope.activator_for(Rc::clone(&info.address));
    let sync = scope.worker().sync_activator_for(info.address.to_vec());
    let wake = move || -> Box<dyn Fn() + Send + Sync> {
        let sync = sync.clone();
        Box::new(move || {
            let _ = sync.activate();
        })
    };
    // The consumer is created only once there is something to read.
    let mut client = None;
    let mut parts = Vec::new();
    if !spec.partitions.is_empty() {
        let c = spec.consumer.get(&spec.client)?;
        parts = add_partitions(&c, spec.partitions.clone(), &wake, &spec.stats)?;
        client = Some(c);
    }
    let mut watch_version = spec.watch.as_ref().map_or(0, PartitionWatch::version);
    let published_watermark = Arc::new(AtomicU64::new(0));
    spec.stats
        .watermarks
        .lock()
        .expect("source watermarks")
        .push(published_watermark.clone());

    builder.build(move |caps| {
        let mut caps = caps.into_iter();
        let mut caps = Some(Caps {
            trades: caps.next().expect("trades capability"),
            dead: caps.next().expect("dead-letter capability"),
            progress: caps.next().expect("progress capability"),
        });
        let start_event = if parts.is_empty() && spec.watch.is_none() {
            u64::MAX
        } else {
            0
        };
        let first = Time::new(spec.first_epoch.max(now_ms() / spec.epoch_ms), start_event);
        if let Some(c) = caps.as_mut() {
            c.downgrade(&first);
        }
        published_watermark.store(first.event, Ordering::Relaxed);
        let mut drain_applied = false;
        let mut last_error_log: Option<Instant> = None;
        let mut trade_buf = Vec::new();
        let mut dead_buf = Vec::new();
        let mut decoded = Vec::new();
        move |_frontiers| {
            let Some(c) = caps.as_mut() else { return };
            if c.time().epoch == STOPPED {
                // The run is over: hold event time where it is until the
                // final cut is taken (see "The end of a run" above).
                if release.with_frontier(|f| f.iter().all(|t| t.epoch >= STOPPED)) {
                    caps = None;
                } else {
                    activator.activate_after(Duration::from_millis(5));
                }
                return;
            }
            let now = now_ms();
            let now_instant = Instant::now();
            if !drain_applied && let Some(targets) = spec.stop.drain_targets() {
                for p in parts.iter_mut().map(|p| &mut p.s) {
                    let end = targets
                        .get(&(p.plan.topic, p.plan.partition))
                        .copied()
                        .unwrap_or(p.next);
                    p.plan.end = Some(p.plan.end.map_or(end, |e| e.min(end)));
                    p.done = p.next >= p.plan.end.unwrap_or(i64::MAX);
                }
                drain_applied = true;
            }
            // 0. Partitions added to the topics since the last look.
            if let Some(watch) = &spec.watch
                && watch.version() != watch_version
                && !drain_applied
            {
                watch_version = watch.version();
                let (worker, workers) = spec.worker;
                let new: Vec<PartitionPlan> = watch
                    .partitions()
                    .into_iter()
                    .filter(|n| owner(n.topic, n.partition, workers) == worker)
                    .filter(|n| !parts.iter().any(|p| (p.s.plan.topic, p.s.plan.partition) == (n.topic, n.partition)))
                    .collect();
                if !new.is_empty() {
                    let added = match &client {
                        Some(c) => add_partitions(c, new.clone(), &wake, &spec.stats),
                        None => spec.consumer.get(&spec.client).and_then(|c| {
                            let added = add_partitions(&c, new.clone(), &wake, &spec.stats);
                            client = Some(c);
                            added
                        }),
                    };
                    match added {
                        Ok(added) => {
                            for p in added.iter().map(|p| &p.s) {
                                tracing::info!(
                                    topic = p.plan.topic_name,
                                    partition = p.plan.partition,
                                    from = p.plan.start,
                                    "reading a partition added to the topic"
                                );
                            }
                            spec.stats
                                .partitions_added
                                .fetch_add(added.len() as u64, Ordering::Relaxed);
                            parts.extend(added);
                        }
                        Err(e) => spec.stop.fail(format!("cannot read the partitions added to the topics: {e}")),
                    }
                }
            }

            // 1. Poll without blocking, decode, emit at the current time.
            let mut poll = Polling {
                spec: &spec,
                now_ms: now,
                now: now_instant,
                ingest_us: (now * 1000) as i64,
                cap_event: c.time().event,
                trades: std::mem::take(&mut trade_buf),
                dead: std::mem::take(&mut dead_buf),
                decoded: std::mem::take(&mut decoded),
                read: 0,
                read_bytes: 0,
                late: 0,
                future: 0,
            };
            // The main queue serves callbacks and carries client-wide errors.
            if let Some(c) = &client {
                while let Some(event) = c.poll(Duration::ZERO) {
                    match event {
                        Ok(m) => {
                            // Fetched before its queue was split: route it.
                            // Queues are split before partitions are assigned,
                            // so this is a safety net; a message of another
                            // worker's partition (the consumer is shared)
                            // cannot be passed on, so the run stops and
                            // restarts from its checkpoint rather than lose it.
                            match parts
                                .iter_mut()
                                .find(|p| p.s.plan.partition == m.partition() && p.s.plan.topic_name == m.topic())
                            {
                                Some(p) => poll.message(&mut p.s, &m),
                                None => spec.stop.fail(format!(
                                    "the consumer's main queue returned offset {} of {}/{}, a partition \
                                     another worker reads",
                                    m.offset(),
                                    m.topic(),
                                    m.partition()
                                )),
                            }
                        }
                        Err(e) => {
                            spec.stats.errors.fetch_add(1, Ordering::Relaxed);
                            if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                                tracing::warn!(error = %e, "waiting for Kafka: consumer error; librdkafka reconnects and retries");
                                last_error_log = Some(now_instant);
                            }
                        }
                    }
                }
            }
            let per_partition = (spec.poll_batch / parts.len().max(1)).max(16);
            // Any partition that filled its share may have more: run again at once.
            let mut polled_full = false;
            // A stalled sink: read nothing (librdkafka's queues fill, then it
            // stops fetching), but keep closing epochs.
            let stalled = spec.backpressure.is_stalled();
            for p in parts.iter_mut().filter(|_| !stalled) {
                let mut polled = 0;
                while polled < per_partition {
                    let Some(event) = p.queue.poll(Duration::ZERO) else { break };
                    match event {
                        Ok(m) => {
                            polled += 1;
                            poll.message(&mut p.s, &m);
                        }
                        Err(KafkaError::PartitionEOF(_)) => p.s.caught_up = true,
                        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                            spec.stop.fail(lost_position(&p.s.plan, p.s.next));
                            break;
                        }
                        Err(e) => {
                            spec.stats.errors.fetch_add(1, Ordering::Relaxed);
                            if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                                tracing::warn!(
                                    error = %e,
                                    topic = p.s.plan.topic_name,
                                    partition = p.s.plan.partition,
                                    "waiting for Kafka: consumer error; librdkafka reconnects and retries"
                                );
                                last_error_log = Some(now_instant);
                            }
                            break;
                        }
                    }
                }
                polled_full |= polled >= per_partition;
            }
            for p in &parts {
                p.progress.next.store(p.s.next, Ordering::Relaxed);
                p.progress.caught_up.store(p.s.caught_up, Ordering::Relaxed);
            }
            let stats = &spec.stats;
            if poll.read > 0 {
                stats.messages.fetch_add(poll.read, Ordering::Relaxed);
                stats.bytes.fetch_add(poll.read_bytes, Ordering::Relaxed);
            }
            stats.late.fetch_add(poll.late, Ordering::Relaxed);
            stats.future.fetch_add(poll.future, Ordering::Relaxed);
            if !poll.trades.is_empty() {
                stats.trades.fetch_add(poll.trades.len() as u64, Ordering::Relaxed);
                trades_out
                    .activate()
                    .session(&c.trades)
                    .give_iterator(poll.trades.drain(..));
            }
            if !poll.dead.is_empty() {
                stats.dead_letters.fetch_add(poll.dead.len() as u64, Ordering::Relaxed);
                dead_out.activate().session(&c.dead).give_iterator(poll.dead.drain(..));
            }
            (trade_buf, dead_buf, decoded) = (poll.trades, poll.dead, poll.decoded);

            // 2. Progress: close epochs, advance the watermark, or finish.
            let current = c.time();
            let epoch = current.epoch.max(now / spec.epoch_ms);
            let all_done = parts.iter().all(|p| p.s.done);
            let finishing = spec.stop.is_stopped() || ((spec.bounded || drain_applied) && all_done);
            if epoch > current.epoch || finishing {
                let reports = parts.iter().map(|p| &p.s).map(|p| OffsetReport {
                    epoch: current.epoch,
                    topic: p.plan.topic,
                    partition: p.plan.partition,
                    next_offset: p.next,
                    max_event_us: p.max_event_us,
                    last_ts_ms: p.last_ts_ms,
                });
                progress_out.activate().session(&c.progress).give_iterator(reports);
            }
            if finishing {
                let watermark = watermark(&parts, now, now_instant, &spec).max(current.event);
                c.downgrade(&Time::new(STOPPED, watermark));
                activator.activate();
                return;
            }
            let watermark = watermark(&parts, now, now_instant, &spec).max(current.event);
            let next = Time::new(epoch, watermark);
            if next != current {
                c.downgrade(&next);
                published_watermark.store(watermark, Ordering::Relaxed);
            }
            if polled_full {
                activator.activate();
            } else {
                let to_next_epoch = (epoch + 1) * spec.epoch_ms - now;
                activator.activate_after(Duration::from_millis(to_next_epoch.clamp(1, 50)));
            }
        }
    });
    Ok(SourceStreams {
        trades,
        dead_letters,
        progress,
    })
}

/// The error of a partition whose read position the broker no longer has.
fn lost_position(plan: &PartitionPlan, next: i64) -> String {
    format!(
        "{}/{}: the broker no longer has offset {next}, where this job reads next: the topic was deleted and \
         re-created, or retention deleted messages the job had not read. Nothing after offset {next} was read, \
         and the tables hold everything before it. To go on, either restore the topic, or start the job afresh \
         with `k2 run ... --reset earliest` (re-reads the new topic from its start) or `--reset latest`",
        plan.topic_name, plan.partition
    )
}

/// The worker watermark (µs) under the idleness policy of the module docs.
fn watermark(parts: &[Part], now_ms: u64, now: Instant, spec: &SourceSpec) -> u64 {
    let ooo_us = spec.max_out_of_orderness_ms.saturating_mul(1000);
    let idle_watermark = now_ms
        .saturating_sub(spec.max_out_of_orderness_ms + spec.idle_timeout_ms)
        .saturating_mul(1000);
    if parts.is_empty() {
        return if spec.watch.is_none() { u64::MAX } else { idle_watermark };
    }
    let idle = Duration::from_millis(spec.idle_timeout_ms);
    let active = parts
        .iter()
        .map(|p| &p.s)
        .filter(|p| {
            // Read to the end of a bounded input, a partition still holds
            // the watermark: its next messages come in the next run.
            let idle = p.caught_up && now.duration_since(p.last_message) >= idle;
            if p.done { p.max_event_us.is_some() } else { !idle }
        })
        .map(|p| p.max_event_us.unwrap_or(0).saturating_sub(ooo_us))
        .min();
    active.unwrap_or(idle_watermark)
}
