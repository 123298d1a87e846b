//! The Kafka source operator.
//!
//! Each worker reads its share of the [`SourcePlan`] with its own consumers
//! (one per topic, so end-of-partition events are unambiguous), decodes each
//! message at once, and emits three streams:
//!
//! * trades, normalized;
//! * dead letters: every message that could not be decoded, whole, with the
//!   reason (nothing is dropped silently, and no input can panic a worker);
//! * late trades: below their own partition's watermark when read (see below);
//! * offset reports: at the close of each epoch, the next offset of every
//!   partition the worker owns. The committer pairs them with the data files
//!   of the same epochs, which makes each commit a consistent cut.
//!
//! ## Time
//! The operator holds one capability per output at `(epoch, watermark)` and
//! stamps every polled batch with it; records carry their exact event time.
//! Epochs follow the wall clock, `now / epoch_ms`, on every worker alike, so no
//! worker holds another's commits back.
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
//! still emitted (bronze tables take it), and event-time operators see it as
//! late. A worker without partitions holds `(epoch, MAX)`.
//!
//! ## Lateness
//! A trade is late when its event time is below its own partition's
//! watermark at the moment it is read. Never the cross-partition watermark:
//! that depends on how fast other partitions were read, so results would
//! depend on scheduling. Each partition's largest event time is checkpointed
//! with its offset, so the decision is also the same after a restart. An
//! on-time trade is never below the operator's capability (the minimum over
//! partitions), which is what lets event-time operators evict state safely.
//!
//! ## Never blocking
//! Polls use a zero timeout. The operator is re-activated by librdkafka when a
//! queue becomes non-empty, after a full batch, and at the next epoch boundary.

use super::decode::decode;
use super::plan::PartitionPlan;
use crate::record::{DeadLetter, SourcePosition, Trade};
use crate::sink::iceberg::OffsetReport;
use crate::time::Time;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};

/// Asks running sources to stop: now, or once they reach given offsets.
#[derive(Clone, Debug, Default)]
pub struct StopSignal(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    now: AtomicBool,
    drain: Mutex<Option<BTreeMap<(u16, i32), i64>>>,
    drain_set: AtomicBool,
}

impl StopSignal {
    /// Stop at the current position, closing the current epoch.
    pub fn stop_now(&self) {
        self.0.now.store(true, Ordering::SeqCst);
    }
    /// Stop each partition once it reaches the given next offset.
    pub fn drain_to(&self, ends: BTreeMap<(u16, i32), i64>) {
        *self.0.drain.lock().expect("drain lock") = Some(ends);
        self.0.drain_set.store(true, Ordering::SeqCst);
    }
    /// Whether [`StopSignal::stop_now`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.now.load(Ordering::SeqCst)
    }
    fn drain_targets(&self) -> Option<BTreeMap<(u16, i32), i64>> {
        if self.0.drain_set.load(Ordering::Relaxed) {
            self.0.drain.lock().expect("drain lock").clone()
        } else {
            None
        }
    }
}

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
    /// Trades that arrived below their partition's watermark.
    pub late: AtomicU64,
}

/// What one source needs; cloned into every worker.
#[derive(Clone)]
pub struct SourceSpec {
    /// librdkafka settings shared by all consumers (brokers, group id, ...).
    pub client: ClientConfig,
    /// This worker's partitions.
    pub partitions: Vec<PartitionPlan>,
    /// Epoch length, ms.
    pub epoch_ms: u64,
    /// The first epoch: after the last checkpointed one.
    pub first_epoch: u64,
    /// Allowed out-of-orderness, ms.
    pub max_out_of_orderness_ms: u64,
    /// See the idleness policy in the module docs.
    pub idle_timeout_ms: u64,
    /// Stop at the end offsets of the plan.
    pub bounded: bool,
    /// Most messages polled per activation.
    pub poll_batch: usize,
    /// Stop requests.
    pub stop: StopSignal,
    /// Shared counters.
    pub stats: Arc<SourceStats>,
}

/// The source's output streams.
pub struct SourceStreams<'scope> {
    /// Decoded trades.
    pub trades: Stream<'scope, Time, Vec<Trade>>,
    /// Messages that failed to decode.
    pub dead_letters: Stream<'scope, Time, Vec<DeadLetter>>,
    /// Offsets at each epoch's close.
    pub progress: Stream<'scope, Time, Vec<OffsetReport>>,
    /// Trades that arrived late: below their partition's watermark. Bronze
    /// tables take them; event-time operators must not.
    pub late: Stream<'scope, Time, Vec<Trade>>,
}

/// Client callbacks of the source's consumers.
struct SourceContext;

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // End of partition is normal progress (the idleness policy uses it),
        // not an error; librdkafka also reports it here.
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(%error, reason, "waiting for Kafka: client error; librdkafka reconnects and retries");
        }
    }
}

impl ConsumerContext for SourceContext {}

struct PartState {
    plan: PartitionPlan,
    consumer: usize,
    next: i64,
    max_event_ms: Option<u64>,
    last_message: Instant,
    caught_up: bool,
    done: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Builds the source for this worker; see the module docs.
pub fn kafka_source<'scope>(
    scope: Scope<'scope, Time>,
    spec: SourceSpec,
) -> crate::error::Result<SourceStreams<'scope>> {
    // One consumer per topic this worker reads.
    let mut topics: Vec<String> = spec.partitions.iter().map(|p| p.topic_name.clone()).collect();
    topics.dedup();
    let mut consumers: Vec<BaseConsumer<SourceContext>> = Vec::new();
    for topic in &topics {
        let consumer: BaseConsumer<SourceContext> = spec
            .client
            .create_with_context(SourceContext)
            .map_err(|e| crate::error::Error::kafka("create consumer", e))?;
        let mut tpl = TopicPartitionList::new();
        for p in spec.partitions.iter().filter(|p| &p.topic_name == topic) {
            tpl.add_partition_offset(topic, p.partition, Offset::Offset(p.start))
                .map_err(|e| crate::error::Error::kafka("build assignment", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| crate::error::Error::kafka(format!("assign partitions of `{topic}`"), e))?;
        consumers.push(consumer);
    }
    let started = Instant::now();
    let mut parts: Vec<PartState> = spec
        .partitions
        .iter()
        .map(|p| PartState {
            plan: p.clone(),
            consumer: topics.iter().position(|t| t == &p.topic_name).expect("topic listed"),
            next: p.start,
            max_event_ms: p.max_event_ms,
            last_message: started,
            caught_up: false,
            done: p.end.is_some_and(|end| p.start >= end),
        })
        .collect();

    let mut builder = OperatorBuilder::new(format!("KafkaSource(w{})", scope.index()), scope);
    let info = builder.operator_info();
    let (trades_out, trades) = builder.new_output::<Vec<Trade>>();
    let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let (progress_out, progress) = builder.new_output::<Vec<OffsetReport>>();
    let (late_out, late) = builder.new_output::<Vec<Trade>>();
    let mut trades_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Trade>>> = OutputBuilder::from(trades_out);
    let mut dead_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<DeadLetter>>> = OutputBuilder::from(dead_out);
    let mut late_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<Trade>>> = OutputBuilder::from(late_out);
    let mut progress_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<OffsetReport>>> =
        OutputBuilder::from(progress_out);

    let activator = scope.activator_for(Rc::clone(&info.address));
    for consumer in consumers.iter_mut() {
        let sync = scope.worker().sync_activator_for(info.address.to_vec());
        consumer.set_nonempty_callback(move || {
            let _ = sync.activate();
        });
    }

    builder.build(move |caps| {
        let mut caps: Vec<Capability<Time>> = caps;
        let start_event = if parts.is_empty() { u64::MAX } else { 0 };
        let first = Time::new(spec.first_epoch.max(now_ms() / spec.epoch_ms), start_event);
        for c in caps.iter_mut() {
            c.downgrade(&first);
        }
        let mut trade_buf: Vec<Trade> = Vec::new();
        let mut dead_buf: Vec<DeadLetter> = Vec::new();
        let mut late_buf: Vec<Trade> = Vec::new();
        // Decoded trades of one message, reused: no allocation per message.
        let mut decoded: Vec<Trade> = Vec::new();
        let mut drain_applied = false;
        let mut last_error_log: Option<Instant> = None;
        move |_frontiers| {
            if caps.is_empty() {
                return;
            }
            let now = now_ms();
            let now_instant = Instant::now();
            let ingest_us = (now * 1000) as i64;
            if !drain_applied && let Some(targets) = spec.stop.drain_targets() {
                for p in parts.iter_mut() {
                    let end = targets
                        .get(&(p.plan.topic, p.plan.partition))
                        .copied()
                        .unwrap_or(p.next);
                    p.plan.end = Some(p.plan.end.map_or(end, |e| e.min(end)));
                    p.done = p.next >= p.plan.end.unwrap_or(i64::MAX);
                }
                drain_applied = true;
            }

            // 1. Poll without blocking, decode, emit at the current time.
            let cap_event = caps[0].time().event;
            let mut polled = 0;
            // Counted once per activation: the counters are shared by all workers.
            let (mut read, mut read_bytes) = (0u64, 0u64);
            // Any consumer that filled its share may have more: run again at once.
            let mut polled_full = false;
            let per_consumer = (spec.poll_batch / consumers.len().max(1)).max(1);
            for (ci, consumer) in consumers.iter().enumerate() {
                let before_consumer = polled;
                for _ in 0..per_consumer {
                    match consumer.poll(Duration::ZERO) {
                        None => break,
                        Some(Err(KafkaError::PartitionEOF(partition))) => {
                            if let Some(p) = parts
                                .iter_mut()
                                .find(|p| p.consumer == ci && p.plan.partition == partition)
                            {
                                p.caught_up = true;
                            }
                        }
                        Some(Err(e)) => {
                            spec.stats.errors.fetch_add(1, Ordering::Relaxed);
                            if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                                tracing::warn!(error = %e, "waiting for Kafka: consumer error; librdkafka reconnects and retries");
                                last_error_log = Some(now_instant);
                            }
                            break;
                        }
                        Some(Ok(m)) => {
                            polled += 1;
                            let partition = m.partition();
                            let Some(p) = parts
                                .iter_mut()
                                .find(|p| p.consumer == ci && p.plan.partition == partition)
                            else {
                                continue;
                            };
                            if p.done || p.plan.end.is_some_and(|end| m.offset() >= end) {
                                // Past the end of a bounded run: not ours to read.
                                p.done = true;
                                continue;
                            }
                            p.next = m.offset() + 1;
                            p.caught_up = false;
                            p.last_message = now_instant;
                            let pos = SourcePosition {
                                topic: p.plan.topic,
                                partition,
                                offset: m.offset(),
                                kafka_ts_ms: m.timestamp().to_millis().unwrap_or(0),
                                ingest_us,
                            };
                            let payload = m.payload().unwrap_or_default();
                            read += 1;
                            read_bytes += payload.len() as u64;
                            let outcome = if m.payload().is_none() {
                                Err("empty payload (tombstone)".to_string())
                            } else {
                                decode(p.plan.exchange, payload, &pos, &mut decoded).map_err(|e| e.to_string())
                            };
                            match outcome {
                                Ok(()) => {
                                    // Lateness is decided per partition, against the
                                    // partition's own watermark at the moment of reading:
                                    // Kafka fixes that order, so the decision is the same
                                    // on any number of workers and across restarts.
                                    // In message order: a Kraken message carries several.
                                    for t in decoded.drain(..) {
                                        let ms = (t.event_us.max(0) / 1000) as u64;
                                        // Also late: below the capability, which only an
                                        // idle partition's new record can be (see above).
                                        let late = p
                                            .max_event_ms
                                            .is_some_and(|m| ms.saturating_add(spec.max_out_of_orderness_ms) < m)
                                            || ms < cap_event;
                                        p.max_event_ms = Some(p.max_event_ms.map_or(ms, |m| m.max(ms)));
                                        if late {
                                            late_buf.push(t);
                                        } else {
                                            trade_buf.push(t);
                                        }
                                    }
                                }
                                Err(reason) => dead_buf.push(DeadLetter {
                                    source: pos,
                                    reason,
                                    key: m.key().map(<[u8]>::to_vec),
                                    payload: payload.to_vec(),
                                }),
                            }
                            if p.plan.end.is_some_and(|end| p.next >= end) {
                                p.done = true;
                            }
                        }
                    }
                }
                if polled - before_consumer >= per_consumer {
                    polled_full = true;
                }
            }
            if read > 0 {
                spec.stats.messages.fetch_add(read, Ordering::Relaxed);
                spec.stats.bytes.fetch_add(read_bytes, Ordering::Relaxed);
            }
            if !trade_buf.is_empty() {
                spec.stats.trades.fetch_add(trade_buf.len() as u64, Ordering::Relaxed);
                trades_out
                    .activate()
                    .session(&caps[0])
                    .give_iterator(trade_buf.drain(..));
            }
            if !late_buf.is_empty() {
                spec.stats.late.fetch_add(late_buf.len() as u64, Ordering::Relaxed);
                late_out.activate().session(&caps[3]).give_iterator(late_buf.drain(..));
            }
            if !dead_buf.is_empty() {
                spec.stats
                    .dead_letters
                    .fetch_add(dead_buf.len() as u64, Ordering::Relaxed);
                dead_out.activate().session(&caps[1]).give_iterator(dead_buf.drain(..));
            }

            // 2. Progress: close epochs, advance the watermark, or finish.
            let current = *caps[0].time();
            let epoch = current.epoch.max(now / spec.epoch_ms);
            let all_done = parts.iter().all(|p| p.done);
            let finishing = spec.stop.is_stopped() || ((spec.bounded || drain_applied) && all_done);
            if epoch > current.epoch || finishing {
                let reports = parts.iter().map(|p| OffsetReport {
                    epoch: current.epoch,
                    topic: p.plan.topic,
                    partition: p.plan.partition,
                    next_offset: p.next,
                    max_event_ms: p.max_event_ms,
                });
                progress_out.activate().session(&caps[2]).give_iterator(reports);
            }
            if finishing {
                caps.clear();
                return;
            }
            let watermark = watermark(&parts, now, now_instant, &spec).max(current.event);
            let next = Time::new(epoch, watermark);
            if next != current {
                for c in caps.iter_mut() {
                    c.downgrade(&next);
                }
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
        late,
    })
}

/// The worker watermark under the idleness policy of the module docs.
fn watermark(parts: &[PartState], now: u64, now_instant: Instant, spec: &SourceSpec) -> u64 {
    if parts.is_empty() {
        return u64::MAX;
    }
    let idle = Duration::from_millis(spec.idle_timeout_ms);
    let active = parts
        .iter()
        .filter(|p| {
            let idle = p.caught_up && now_instant.duration_since(p.last_message) >= idle;
            !p.done && !idle
        })
        .map(|p| p.max_event_ms.unwrap_or(0).saturating_sub(spec.max_out_of_orderness_ms))
        .min();
    match active {
        Some(w) => w,
        None => now.saturating_sub(spec.max_out_of_orderness_ms + spec.idle_timeout_ms),
    }
}
