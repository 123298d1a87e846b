//! Reading the Kafka tail: the messages beyond a snapshot's cut, up to the
//! high watermarks read at query start, decoded as the job decodes them.
//!
//! A message becomes what the job's source makes of it, through the
//! source's own decoder and rules ([`crate::source::kafka::decode`],
//! [`crate::source::kafka::reader::future_reason`] and
//! [`crate::source::kafka::reader::control_reason`]): trades, a dead letter
//! with the same reason, or nothing (a control message under
//! `source.control = "skip"`). Lateness is not decided here: bronze tables
//! keep late trades, and no column records it.

use super::error::{QueryError, QueryResult};
use crate::config::{Config, ControlPolicy, FuturePolicy};
use crate::error::Error;
use crate::kafka::Quiet;
use crate::record::{DeadLetter, Exchange, SourcePosition, Trade};
use crate::source::kafka::decode::{Decoded, decode};
use crate::source::kafka::reader::{control_reason, future_horizon_us, future_reason};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One of the job's topics: its index in the topic list (as in
/// [`SourcePosition::topic`]), name and exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// Index in `kafka.topics.list()`.
    pub index: u16,
    /// Topic name.
    pub name: String,
    /// Whose messages it carries.
    pub exchange: Exchange,
}

/// Low and high watermark per partition of one topic.
pub type Watermarks = BTreeMap<i32, (i64, i64)>;

/// What the tail of one topic decoded to, in `(partition, offset)` order.
#[derive(Debug, Default)]
pub struct TopicTail {
    /// Messages read.
    pub messages: u64,
    /// Trades, in Kafka order per partition, partitions in order.
    pub trades: Vec<Trade>,
    /// Dead letters, in the same order.
    pub dead_letters: Vec<DeadLetter>,
}

/// How the job's source treats what is not a plain trade.
#[derive(Clone, Copy, Debug)]
struct Policy {
    future: FuturePolicy,
    max_future_ms: u64,
    control: ControlPolicy,
}

/// The tail reader: one consumer, reused by every query of a
/// [`super::Query`] (creating a consumer and connecting costs more than
/// reading a small tail). Queries of one [`super::Query`] read the tail one
/// at a time.
pub struct TailReader {
    consumer: Mutex<BaseConsumer<Quiet>>,
    policy: Policy,
    brokers: String,
}

impl std::fmt::Debug for TailReader {
    // The client settings may hold credentials: show the brokers only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TailReader({})", self.brokers)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl TailReader {
    /// A reader with the job's Kafka settings (`kafka.client` and
    /// `kafka.consumer` included, so security settings apply) under a group
    /// id of its own; it never commits offsets.
    pub fn new(config: &Config) -> QueryResult<TailReader> {
        let mut client = crate::launch::consumer_config(config);
        // Never joined or committed; a name of its own keeps it apart from
        // the job's group in monitoring tools.
        client.set("group.id", format!("k2-query-{}", config.job.name));
        let consumer = client
            .create_with_context(Quiet)
            .map_err(|e| Error::kafka("create the query's consumer", e))?;
        Ok(TailReader {
            consumer: Mutex::new(consumer),
            policy: Policy {
                future: config.source.future,
                max_future_ms: config.source.max_future_ms,
                control: config.source.control,
            },
            brokers: config.kafka.brokers.clone(),
        })
    }

    fn consumer(&self) -> std::sync::MutexGuard<'_, BaseConsumer<Quiet>> {
        // A panic while holding it cannot leave the consumer half-changed in
        // a way the next query's `assign` does not reset.
        self.consumer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The low and high watermarks of every partition of `topics`, read now.
    pub fn watermarks(&self, topics: &[&str], timeout: Duration) -> QueryResult<BTreeMap<String, Watermarks>> {
        let consumer = self.consumer();
        let mut out = BTreeMap::new();
        for &topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| Error::kafka(format!("fetch metadata of `{topic}` from {}", self.brokers), e))?;
            let t = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .ok_or_else(|| Error::Other(format!("topic `{topic}` not found")))?;
            if let Some(err) = t.error() {
                return Err(Error::Other(format!("topic `{topic}`: {err:?}")).into());
            }
            let partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            out.insert(
                topic.to_string(),
                watermarks_of(&consumer, topic, &partitions, timeout)?,
            );
        }
        Ok(out)
    }

    /// Reads `[from, to)` of each `(topic, partition)` in `ranges` and
    /// decodes it; one [`TopicTail`] per topic of `topics`.
    pub fn read(
        &self,
        topics: &[TopicSpec],
        ranges: &BTreeMap<(String, i32), (i64, i64)>,
        timeout: Duration,
    ) -> QueryResult<BTreeMap<String, TopicTail>> {
        let consumer = self.consumer();
        let ingest_us = (now_ms() * 1000) as i64;
        let mut tpl = TopicPartitionList::new();
        // Per topic and partition: (next offset expected, end, what was read).
        let mut pending: HashMap<String, HashMap<i32, Range>> = HashMap::new();
        for ((topic, p), &(from, to)) in ranges {
            if from >= to {
                continue;
            }
            tpl.add_partition_offset(topic, *p, Offset::Offset(from))
                .map_err(|e| Error::kafka("build the tail's assignment", e))?;
            pending
                .entry(topic.clone())
                .or_default()
                .insert(*p, (from, to, Vec::new()));
        }
        let mut done: BTreeMap<(String, i32), Vec<Item>> = BTreeMap::new();
        let specs: HashMap<&str, &TopicSpec> = topics.iter().map(|t| (t.name.as_str(), t)).collect();
        if tpl.count() > 0 {
            consumer
                .assign(&tpl)
                .map_err(|e| Error::kafka("assign the tail's partitions", e))?;
            let deadline = Instant::now() + timeout;
            let mut open = pending.values().map(HashMap::len).sum::<usize>();
            let result = (|| -> QueryResult<()> {
                while open > 0 {
                    if Instant::now() > deadline {
                        let left: Vec<String> = pending
                            .iter()
                            .flat_map(|(t, ps)| {
                                ps.iter()
                                    .map(move |(p, (next, to, _))| format!("{t}/{p} at {next} of {to}"))
                            })
                            .collect();
                        return Err(QueryError::Engine(Error::Other(format!(
                            "reading the Kafka tail took more than {timeout:?}; still reading {}",
                            left.join(", ")
                        ))));
                    }
                    match consumer.poll(Duration::from_millis(50)) {
                        None => {}
                        Some(Err(KafkaError::PartitionEOF(_))) => {
                            // The range may end in offsets that hold no
                            // message (transaction markers): the position
                            // then passes its end without a message there.
                            let positions = consumer
                                .position()
                                .map_err(|e| Error::kafka("read the tail's positions", e))?;
                            for elem in positions.elements() {
                                let Offset::Offset(pos) = elem.offset() else { continue };
                                let closed = pending
                                    .get(elem.topic())
                                    .and_then(|ps| ps.get(&elem.partition()))
                                    .is_some_and(|(_, to, _)| pos >= *to);
                                if closed
                                    && let Some((_, _, items)) = pending
                                        .get_mut(elem.topic())
                                        .and_then(|ps| ps.remove(&elem.partition()))
                                {
                                    done.insert((elem.topic().to_string(), elem.partition()), items);
                                    open -= 1;
                                }
                            }
                        }
                        Some(Err(e)) => return Err(Error::kafka("read the Kafka tail", e).into()),
                        Some(Ok(m)) => {
                            let Some(ps) = pending.get_mut(m.topic()) else { continue };
                            let Some((next, to, items)) = ps.get_mut(&m.partition()) else {
                                continue;
                            };
                            // Anything outside the range (a fetch of an
                            // earlier assignment) is not ours.
                            if m.offset() < *next {
                                continue;
                            }
                            if m.offset() < *to {
                                let spec = specs.get(m.topic()).copied();
                                if let Some(spec) = spec {
                                    items.push(self.decode(spec, &m, ingest_us));
                                }
                                *next = m.offset() + 1;
                            }
                            if m.offset() + 1 >= *to {
                                let p = m.partition();
                                let topic = m.topic().to_string();
                                if let Some((_, _, items)) = ps.remove(&p) {
                                    done.insert((topic, p), items);
                                    open -= 1;
                                }
                            }
                        }
                    }
                }
                Ok(())
            })();
            // Stop fetching: the next query assigns its own ranges.
            let _ = consumer.unassign();
            result?;
        }
        let mut out: BTreeMap<String, TopicTail> =
            topics.iter().map(|t| (t.name.clone(), TopicTail::default())).collect();
        for ((topic, _), items) in done {
            let tail = out.entry(topic).or_default();
            for item in items {
                tail.messages += 1;
                match item {
                    Item::Trades(t) => tail.trades.extend(t),
                    Item::Dead(d) => tail.dead_letters.push(*d),
                    Item::Skip => {}
                }
            }
        }
        Ok(out)
    }

    /// What the job's source makes of message `m` (module docs).
    fn decode(&self, spec: &TopicSpec, m: &BorrowedMessage<'_>, ingest_us: i64) -> Item {
        let kafka_ts_ms = m.timestamp().to_millis().unwrap_or(0);
        let pos = SourcePosition {
            topic: spec.index,
            partition: m.partition(),
            offset: m.offset(),
            kafka_ts_ms,
            ingest_us,
        };
        let payload = m.payload();
        let mut trades = Vec::new();
        let outcome = match payload {
            None => Err("empty payload (tombstone)".to_string()),
            Some(bytes) => decode(spec.exchange, bytes, &pos, &mut trades).map_err(|e| e.to_string()),
        };
        let reason = match outcome {
            Ok(Decoded::Trades) => {
                let horizon_us = future_horizon_us(kafka_ts_ms, now_ms(), self.policy.max_future_ms);
                let dead = self.policy.future == FuturePolicy::DeadLetter;
                match dead
                    .then(|| future_reason(&trades, horizon_us, self.policy.max_future_ms, kafka_ts_ms))
                    .flatten()
                {
                    None => return Item::Trades(trades),
                    Some(reason) => reason,
                }
            }
            Ok(Decoded::Control(kind)) => match control_reason(self.policy.control, kind) {
                None => return Item::Skip,
                Some(reason) => reason,
            },
            Err(reason) => reason,
        };
        Item::Dead(Box::new(DeadLetter::new(
            &pos,
            reason,
            m.key().map(<[u8]>::to_vec),
            payload.unwrap_or_default().to_vec(),
        )))
    }
}

/// The low and high watermarks of `partitions`: two batched list-offsets
/// requests (earliest, latest) rather than two per partition, and the
/// per-partition query for any the batch did not answer.
fn watermarks_of(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> QueryResult<Watermarks> {
    let batch = |at: Offset| -> BTreeMap<i32, i64> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            if tpl.add_partition_offset(topic, p, at).is_err() {
                return BTreeMap::new();
            }
        }
        match consumer.offsets_for_times(tpl, timeout) {
            Ok(found) => found
                .elements()
                .iter()
                .filter(|e| e.error().is_ok())
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect(),
            Err(_) => BTreeMap::new(),
        }
    };
    let (lows, highs) = (batch(Offset::Beginning), batch(Offset::End));
    let mut marks = Watermarks::new();
    for &p in partitions {
        let pair = match (lows.get(&p), highs.get(&p)) {
            (Some(&low), Some(&high)) => (low, high),
            _ => consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| Error::kafka(format!("fetch watermarks of {topic}/{p}"), e))?,
        };
        marks.insert(p, pair);
    }
    Ok(marks)
}

/// A partition's range being read: the next offset expected, the end, and
/// what was read so far.
type Range = (i64, i64, Vec<Item>);

/// One message, decoded.
#[derive(Debug)]
enum Item {
    Trades(Vec<Trade>),
    Dead(Box<DeadLetter>),
    Skip,
}
