//! The Kafka sink, for alerts: immediate or transactional.
//!
//! * **Immediate** ([`PublishKafka::publish_kafka`]): every worker sends its
//!   records as they arrive, keyed by a deterministic id, with an idempotent
//!   producer. Lowest latency; at least once across crashes (records after
//!   the last checkpoint are sent again), so consumers deduplicate by key.
//! * **Transactional** ([`PublishKafka::stage_kafka`]): records are grouped
//!   per commit group and staged for the [`KafkaParticipant`] of the cut,
//!   which writes them into the cut's manifest and then publishes them in one
//!   Kafka transaction ([`TxnPublisher`]). The transaction also commits a marker offset (the
//!   cut's epoch) for a consumer group of the job, atomically: recovery reads
//!   it to tell whether the manifest's records are already published, and
//!   publishes them if not. Exactly once for `read_committed` consumers, and
//!   visible per commit. The fixed `transactional.id` lets Kafka itself fence
//!   a zombie producer of an older instance.

use crate::checkpoint::{CommitItem, Committed, Cut, Fence, GroupBuffer, Manifest, Participant, Prepared, Staged};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka::{Quiet, client_config};
use crate::time::{Time, stamp_time};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A record for Kafka: key and JSON value.
pub type KafkaRecord = (String, String);

/// Records of one commit group for one topic, on their way to the committer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KafkaBatch {
    /// Target topic.
    pub topic: String,
    /// Commit group label.
    pub group: u64,
    /// The records.
    pub records: Vec<KafkaRecord>,
}

/// The participant name of transactional Kafka topics in cuts and manifests.
pub const PARTICIPANT: &str = "kafka";

/// A transactional Kafka topic of the job, for one worker's dataflow: its
/// name, the group rule, and the cut its records join.
pub struct KafkaTopic<'scope> {
    /// The topic.
    pub topic: String,
    /// The job's commit groups.
    pub groups: crate::checkpoint::CommitGroups,
    /// The worker's cut.
    pub cut: Cut<'scope>,
}

/// Something that can be published to Kafka.
pub trait ToKafka {
    /// Key and value.
    fn to_kafka(&self) -> KafkaRecord;
}

impl ToKafka for crate::record::Alert {
    fn to_kafka(&self) -> KafkaRecord {
        (self.alert_id.clone(), self.to_json())
    }
}

/// Counters of a Kafka sink.
#[derive(Debug, Default)]
pub struct KafkaSinkStats {
    /// Records handed to the producer.
    pub sent: AtomicU64,
}

/// Creates `topic` unless it exists. Alert topics use `LogAppendTime`, so a
/// record's timestamp is its arrival time, which latency is measured to.
/// Its replication factor is `kafka.replication_factor`, as for every topic
/// K2 creates. Waits for the brokers first (see
/// [`crate::kafka::wait_for_brokers`]).
pub fn ensure_topic(kafka: &KafkaConfig, topic: &str, partitions: i32, configs: &[(&str, &str)]) -> Result<()> {
    crate::kafka::wait_for_brokers(kafka, topic)?;
    let admin: AdminClient<Quiet> = client_config(kafka)
        .create_with_context(Quiet)
        .map_err(|e| Error::kafka("create admin client", e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("runtime: {e}")))?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(kafka.replication_factor));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let results = rt
        .block_on(admin.create_topics(
            &[new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(15))),
        ))
        .map_err(|e| Error::kafka(format!("create topic `{topic}`"), e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(Error::Other(format!(
                    "create topic `{t}` ({partitions} partitions, kafka.replication_factor = {}): {code}",
                    kafka.replication_factor
                )));
            }
        }
    }
    Ok(())
}

/// Sending records to Kafka from a dataflow.
pub trait PublishKafka<'scope, D> {
    /// Immediate mode: sends every record at once from its worker.
    fn publish_kafka(self, kafka: &KafkaConfig, topic: &str, stats: Arc<KafkaSinkStats>) -> Result<()>;
    /// Transactional mode: groups records per commit group for the cut's
    /// [`KafkaParticipant`].
    fn stage_kafka(self, topic: KafkaTopic<'scope>);
}

impl<'scope, D: ToKafka + timely::ExchangeData> PublishKafka<'scope, D> for Stream<'scope, Time, Vec<D>> {
    fn publish_kafka(self, kafka: &KafkaConfig, topic: &str, stats: Arc<KafkaSinkStats>) -> Result<()> {
        let producer: BaseProducer<Quiet> = client_config(kafka)
            // Retries never duplicate a record on their own.
            .set("enable.idempotence", "true")
            // Alerts are latency-sensitive: send without waiting for a batch.
            .set("linger.ms", "0")
            .create_with_context(Quiet)
            .map_err(|e| Error::kafka("create alert producer", e))?;
        let topic = topic.to_string();
        self.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            "KafkaSink",
            move |_cap, _info| {
                let mut flushed = false;
                move |(input, frontier), _output| {
                    input.for_each_stamp(|_cap, data| {
                        for batch in data {
                            for d in batch.drain(..) {
                                let (key, value) = d.to_kafka();
                                let mut record = BaseRecord::to(&topic).key(&key).payload(&value);
                                loop {
                                    match producer.send(record) {
                                        Ok(()) => break,
                                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                                            record = r;
                                            producer.poll(Duration::from_millis(1));
                                        }
                                        Err((e, _)) => {
                                            tracing::error!(error = %e, "alert not sent");
                                            break;
                                        }
                                    }
                                }
                                stats.sent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                    producer.poll(Duration::ZERO);
                    if frontier.frontier().is_empty() && !flushed {
                        flushed = true;
                        if let Err(e) = producer.flush(TIMEOUT) {
                            tracing::error!(error = %e, "flushing alerts failed");
                        }
                    }
                }
            },
        );
        Ok(())
    }

    fn stage_kafka(self, topic: KafkaTopic<'scope>) {
        let KafkaTopic { topic, groups, cut } = topic;
        let worker = self.scope().index();
        // All records go to one worker, so one batch per group reaches the committer.
        let staged = self.unary_frontier(Exchange::new(|_: &D| 0), "KafkaStage", move |_cap, _info| {
            let mut pending: GroupBuffer<Vec<KafkaRecord>> = GroupBuffer::new(groups);
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(time) = stamp_time(cap.stamp().iter()) else {
                        return;
                    };
                    pending.at(&cap, time, 0).extend(data.drain(..).map(|d| d.to_kafka()));
                });
                for (group, caps, mut records) in pending.complete(frontier.frontier().iter()) {
                    records.sort();
                    let batch = KafkaBatch {
                        topic: topic.clone(),
                        group,
                        records,
                    };
                    output.session(&caps).give(CommitItem::Staged(Staged {
                        participant: PARTICIPANT.to_string(),
                        group,
                        worker,
                        payload: serde_json::to_vec(&batch).expect("a Kafka batch serializes"),
                    }));
                }
            }
        });
        cut.register(staged);
    }
}

/// The transactional Kafka topics of a job, as one participant of its cuts:
/// the manifest records a cut's records, and they are published in one
/// transaction after it (again by recovery if that did not happen).
pub struct KafkaParticipant {
    kafka: KafkaConfig,
    job: String,
    publisher: std::sync::Mutex<Option<TxnPublisher>>,
}

impl KafkaParticipant {
    /// The participant of `job`'s transactional topics.
    pub fn new(kafka: KafkaConfig, job: &str) -> Self {
        KafkaParticipant {
            kafka,
            job: job.to_string(),
            publisher: std::sync::Mutex::new(None),
        }
    }
}

impl Participant for KafkaParticipant {
    fn name(&self) -> &str {
        PARTICIPANT
    }

    fn prepare(&self, _job: &str, _epoch: u64, staged: Vec<Vec<u8>>) -> Result<Prepared> {
        let mut batches = Vec::new();
        for v in staged {
            let b: KafkaBatch = serde_json::from_slice(&v)
                .map_err(|e| Error::Checkpoint(format!("staged Kafka records do not parse: {e}")))?;
            if !b.records.is_empty() {
                batches.push(b);
            }
        }
        batches.sort();
        Ok(Prepared {
            part: (!batches.is_empty()).then(|| serde_json::to_value(batches).expect("batches serialize")),
            produce_ms: Vec::new(),
        })
    }

    fn commit(&self, manifest: &Manifest, part: &serde_json::Value, _fence: Option<&Fence>) -> Result<Committed> {
        let batches: Vec<KafkaBatch> = serde_json::from_value(part.clone()).map_err(|e| {
            Error::Checkpoint(format!(
                "the Kafka part of epoch {} does not parse: {e}",
                manifest.epoch
            ))
        })?;
        let Some(first) = batches.first() else {
            return Ok(Committed::default());
        };
        let mut publisher = self.publisher.lock().expect("publisher");
        if publisher.is_none() {
            *publisher = Some(TxnPublisher::new(&self.kafka, &self.job, &first.topic)?);
        }
        let started = std::time::Instant::now();
        let published = publisher.as_ref().expect("publisher").publish(manifest.epoch, &batches);
        match published {
            Ok(true) => {
                let mut rows = BTreeMap::new();
                for b in &batches {
                    *rows.entry(b.topic.clone()).or_default() += b.records.len() as u64;
                }
                Ok(Committed {
                    commits: 1,
                    rows,
                    visible_ms: Some(chrono::Utc::now().timestamp_millis()),
                    took: vec![started.elapsed()],
                })
            }
            Ok(false) => Ok(Committed::default()),
            Err(e) => {
                // A failed transaction leaves the producer unusable: start over.
                *publisher = None;
                Err(e)
            }
        }
    }

    fn check(&self, _job: &str, _newest: Option<&Manifest>) -> Result<()> {
        Ok(())
    }
}

/// Publishes a cut's records in one Kafka transaction, with a marker offset
/// that records the cut's epoch atomically (see the module docs).
pub struct TxnPublisher {
    producer: BaseProducer<Quiet>,
    marker: BaseConsumer<Quiet>,
    marker_topic: String,
}

impl TxnPublisher {
    /// A transactional producer for `job` whose marker lives on `marker_topic`.
    pub fn new(kafka: &KafkaConfig, job: &str, marker_topic: &str) -> Result<TxnPublisher> {
        let producer: BaseProducer<Quiet> = client_config(kafka)
            // One id per job: a new instance's init fences an old zombie.
            .set("transactional.id", format!("k2-{job}-kafka-sink"))
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create_with_context(Quiet)
            .map_err(|e| Error::kafka("create transactional producer", e))?;
        producer
            .init_transactions(TIMEOUT)
            .map_err(|e| Error::kafka("init Kafka transactions", e))?;
        let marker: BaseConsumer<Quiet> = client_config(kafka)
            // The group that holds the marker offset; nobody consumes with it.
            .set("group.id", format!("k2-{job}-kafka-sink"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create_with_context(Quiet)
            .map_err(|e| Error::kafka("create marker consumer", e))?;
        Ok(TxnPublisher {
            producer,
            marker,
            marker_topic: marker_topic.to_string(),
        })
    }

    /// The epoch of the last published cut, from the marker offset.
    pub fn published_epoch(&self) -> Result<Option<u64>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.marker_topic, 0);
        let committed = self
            .marker
            .committed_offsets(tpl, TIMEOUT)
            .map_err(|e| Error::kafka("read the transaction marker", e))?;
        Ok(committed.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) if o > 0 => Some(o as u64 - 1),
            _ => None,
        }))
    }

    /// Publishes the records of the cut `epoch` unless already published.
    pub fn publish(&self, epoch: u64, batches: &[KafkaBatch]) -> Result<bool> {
        if self.published_epoch()?.is_some_and(|e| e >= epoch) {
            return Ok(false);
        }
        let k = |context: &str, e| Error::kafka(format!("{context} (cut {epoch})"), e);
        self.producer
            .begin_transaction()
            .map_err(|e| k("begin transaction", e))?;
        for b in batches {
            for (key, value) in &b.records {
                let mut record = BaseRecord::to(&b.topic).key(key).payload(value);
                loop {
                    match self.producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            self.producer.poll(Duration::from_millis(5));
                        }
                        Err((e, _)) => {
                            let _ = self.producer.abort_transaction(TIMEOUT);
                            return Err(k("send", e));
                        }
                    }
                }
            }
        }
        crate::checkpoint::fault::point("in-kafka-transaction");
        let mut marker = TopicPartitionList::new();
        marker
            .add_partition_offset(&self.marker_topic, 0, Offset::Offset(epoch as i64 + 1))
            .map_err(|e| k("marker", e))?;
        let metadata = self
            .marker
            .group_metadata()
            .ok_or_else(|| Error::Other("the marker consumer has no group metadata".into()))?;
        self.producer
            .send_offsets_to_transaction(&marker, &metadata, TIMEOUT)
            .map_err(|e| k("commit the marker", e))?;
        self.producer
            .commit_transaction(TIMEOUT)
            .map_err(|e| k("commit transaction", e))?;
        Ok(true)
    }
}
