//! Which partitions exist, where each worker starts, where a bounded run ends.
//!
//! The plan is made once per process, before the dataflow starts, and every
//! worker takes its share of it by a fixed rule, [`owner`]: partition `p` of
//! topic `t` goes to worker `(p + t) % workers`. The rule does not depend on
//! how many partitions there are, so a partition added while the job runs
//! (see [`super::watch`]) never moves another one. Assignment is static:
//! there is no consumer group and no rebalance, because a partition handed
//! over mid-run would break per-partition watermarks, and the checkpoint, not
//! Kafka, owns the offsets.
//!
//! ## Where a partition starts
//! * In the checkpoint: at its recorded offset, after checking that the
//!   broker still has it and that it is the same message stream (below).
//! * Not in the checkpoint of a job that has one: it was added since, so at
//!   its first offset; nothing written to it may be skipped.
//! * A job without a checkpoint: at `source.start` (`earliest` or `latest`).
//!
//! ## Checking the recorded position
//! A recorded offset beyond the partition's end, or below its first retained
//! offset, means the topic was deleted and re-created, or truncated: the job
//! refuses to start, naming the topic, the offsets and the choices. A topic
//! re-created and refilled past the recorded offset is caught by the Kafka
//! timestamp of the last message read, which the checkpoint also records:
//! the message at that offset must still have it.

use crate::checkpoint::Resume;
use crate::config::StartPosition;
use crate::error::{Error, Result};
use crate::kafka::Quiet;
use crate::record::Exchange;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::metadata::Metadata;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// The worker that reads partition `partition` of topic index `topic`, out
/// of `workers`: independent of the number of partitions (see the module docs).
pub fn owner(topic: u16, partition: i32, workers: usize) -> usize {
    (partition.unsigned_abs() as usize + topic as usize) % workers.max(1)
}

/// One partition of one topic, with its range for this run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPlan {
    /// Topic index in the job's topic list.
    pub topic: u16,
    /// Topic name.
    pub topic_name: String,
    /// Which decoder the topic needs.
    pub exchange: Exchange,
    /// Partition number.
    pub partition: i32,
    /// First offset to read.
    pub start: i64,
    /// In a bounded run, the offset to stop before (the high watermark at start).
    pub end: Option<i64>,
    /// The largest event time (µs) read before `start`, from the checkpoint.
    pub max_event_us: Option<u64>,
}

/// All partitions of the job's topics, sorted by `(topic, partition)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePlan {
    /// The partitions.
    pub partitions: Vec<PartitionPlan>,
}

impl SourcePlan {
    /// Asks the brokers for the topics' partitions and offsets, and where each
    /// partition starts (see the module docs). Waits for unreachable brokers
    /// up to `connect_timeout`, saying what it waits for.
    pub fn discover(
        client: &ClientConfig,
        topics: &[(Exchange, String)],
        start: StartPosition,
        resume: &Resume,
        bounded: bool,
        connect_timeout: Duration,
    ) -> Result<SourcePlan> {
        let consumer: BaseConsumer<Quiet> = client
            .create_with_context(Quiet)
            .map_err(|e| Error::kafka("create consumer", e))?;
        let mut partitions = Vec::new();
        for (index, (exchange, topic)) in topics.iter().enumerate() {
            let metadata = crate::kafka::wait_for_metadata(&consumer, client, topic, connect_timeout)?;
            let ids = topic_partitions(&metadata, topic)?;
            for partition in ids {
                let key = (index as u16, partition);
                let (low, high) = consumer
                    .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                    .map_err(|e| Error::kafka(format!("fetch watermarks of {topic}/{partition}"), e))?;
                let start = match resume.offsets.get(&key) {
                    Some(&next) => {
                        check_resume(topic, partition, next, low, high)?;
                        next
                    }
                    // Added since the last checkpoint: read all of it.
                    None if resume.checkpointed => low,
                    None => match start {
                        StartPosition::Earliest => low,
                        StartPosition::Latest => high,
                    },
                };
                partitions.push(PartitionPlan {
                    topic: index as u16,
                    topic_name: topic.clone(),
                    exchange: *exchange,
                    partition,
                    start,
                    end: bounded.then_some(high.max(start)),
                    max_event_us: resume.watermarks.get(&key).copied(),
                });
            }
        }
        let plan = SourcePlan { partitions };
        plan.verify_last_messages(client, &resume.last_ts_ms)?;
        Ok(plan)
    }

    /// Checks that the message before each resume offset is the one the
    /// checkpoint read there (by its Kafka timestamp): a topic re-created and
    /// refilled past the recorded offset would otherwise be read from the
    /// middle, silently.
    fn verify_last_messages(&self, client: &ClientConfig, last_ts_ms: &BTreeMap<(u16, i32), i64>) -> Result<()> {
        let mut want = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            if let Some(&ts) = last_ts_ms.get(&(p.topic, p.partition))
                && p.start > 0
            {
                want.insert((p.topic_name.clone(), p.partition), (p.start - 1, ts));
                tpl.add_partition_offset(&p.topic_name, p.partition, Offset::Offset(p.start - 1))
                    .map_err(|e| Error::kafka("build assignment", e))?;
            }
        }
        if want.is_empty() {
            return Ok(());
        }
        let consumer: BaseConsumer<Quiet> = client
            .create_with_context(Quiet)
            .map_err(|e| Error::kafka("create consumer", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka("assign partitions to check the checkpoint", e))?;
        let deadline = Instant::now() + METADATA_TIMEOUT;
        while !want.is_empty() && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let key = (m.topic().to_string(), m.partition());
            let Some(&(offset, ts)) = want.get(&key) else { continue };
            if m.offset() != offset {
                // Compacted away or retention: nothing to compare with.
                want.remove(&key);
                continue;
            }
            let found = m.timestamp().to_millis().unwrap_or(0);
            if found != ts {
                return Err(Error::Checkpoint(format!(
                    "{}/{}: the message at offset {offset} has Kafka timestamp {found} ms, but the one this job \
                     read there had {ts} ms: the topic was deleted and re-created since the last checkpoint. \
                     Resuming would skip the new topic's first {} messages. Either restore the topic, or start \
                     afresh with `k2 run ... --reset earliest` (re-reads the new topic from its start) or \
                     `--reset latest`",
                    key.0,
                    key.1,
                    offset + 1
                )));
            }
            want.remove(&key);
        }
        Ok(())
    }

    /// The share of `worker` out of `workers` (see [`owner`]).
    pub fn for_worker(&self, worker: usize, workers: usize) -> Vec<PartitionPlan> {
        self.partitions
            .iter()
            .filter(|p| owner(p.topic, p.partition, workers) == worker)
            .cloned()
            .collect()
    }

    /// End offsets of a bounded run, `(topic index, partition) -> end`.
    pub fn end_offsets(&self) -> BTreeMap<(u16, i32), i64> {
        self.partitions
            .iter()
            .filter_map(|p| p.end.map(|e| ((p.topic, p.partition), e)))
            .collect()
    }
}

/// A recorded resume offset that the partition cannot have: refuse.
fn check_resume(topic: &str, partition: i32, next: i64, low: i64, high: i64) -> Result<()> {
    if next > high {
        return Err(Error::Checkpoint(format!(
            "{topic}/{partition}: the checkpoint resumes at offset {next}, but the partition ends at offset {high}: \
             the topic was deleted and re-created (or truncated) since the last checkpoint. Resuming would skip \
             its first {next} messages. Either restore the topic, or start afresh with `k2 run ... --reset \
             earliest` (re-reads the topic from its start) or `--reset latest`"
        )));
    }
    if next < low {
        return Err(Error::Checkpoint(format!(
            "{topic}/{partition}: the checkpoint resumes at offset {next}, but the broker only retains offsets \
             from {low}: messages {next}..{low} were deleted (retention, or the topic was re-created) before \
             this job read them. Start afresh with `k2 run ... --reset earliest` to accept the loss"
        )));
    }
    Ok(())
}

/// The sorted partition ids of `topic` in `metadata`, or why there are none.
pub(super) fn topic_partitions(metadata: &Metadata, topic: &str) -> Result<Vec<i32>> {
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(Error::Other(format!("topic `{topic}` not found")));
    };
    if let Some(err) = t.error() {
        return Err(Error::Other(format!(
            "topic `{topic}`: {err:?} (create it first, e.g. with `k2 produce`)"
        )));
    }
    if t.partitions().is_empty() {
        return Err(Error::Other(format!("topic `{topic}` has no partitions")));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_worker() {
        let plan = SourcePlan {
            partitions: (0..8)
                .map(|i| PartitionPlan {
                    topic: (i / 4) as u16,
                    topic_name: format!("t{}", i / 4),
                    exchange: Exchange::Binance,
                    partition: i % 4,
                    start: 0,
                    end: None,
                    max_event_us: None,
                })
                .collect(),
        };
        for workers in 1..=5 {
            let mut all: Vec<_> = (0..workers).flat_map(|w| plan.for_worker(w, workers)).collect();
            all.sort_by_key(|p| (p.topic, p.partition));
            assert_eq!(all, plan.partitions, "{workers} workers");
        }
    }

    #[test]
    fn adding_partitions_moves_no_other_partition_and_spreads_the_load() {
        for workers in 1..=5 {
            for (t, p) in (0..3u16).flat_map(|t| (0..40).map(move |p| (t, p))) {
                // A function of the partition alone, whatever else exists.
                assert_eq!(owner(t, p, workers), owner(t, p, workers));
                assert!(owner(t, p, workers) < workers);
            }
        }
        // 2 topics x 4 partitions over 4 workers: two each.
        let mut load = [0; 4];
        for (t, p) in (0..2u16).flat_map(|t| (0..4).map(move |p| (t, p))) {
            load[owner(t, p, 4)] += 1;
        }
        assert_eq!(load, [2, 2, 2, 2]);
    }

    #[test]
    fn impossible_resume_offsets_are_refused_with_the_choices() {
        let e = check_resume("t", 3, 5_000, 0, 100).unwrap_err().to_string();
        assert!(e.contains("t/3") && e.contains("5000") && e.contains("100"), "{e}");
        assert!(e.contains("re-created") && e.contains("--reset earliest"), "{e}");
        let e = check_resume("t", 0, 10, 50, 100).unwrap_err().to_string();
        assert!(e.contains("only retains offsets from 50"), "{e}");
        check_resume("t", 0, 100, 0, 100).unwrap();
        check_resume("t", 0, 50, 50, 100).unwrap();
    }
}
