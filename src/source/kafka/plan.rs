//! Which partitions exist, where each worker starts, where a bounded run ends.
//!
//! The plan is made once per process, before the dataflow starts, and every
//! worker takes its share of it by a fixed rule (partition `i` of the sorted
//! list goes to worker `i % workers`). Assignment is static: there is no
//! consumer group and no rebalance, because a partition handed over mid-run
//! would break per-partition watermarks, and the checkpoint, not Kafka, owns
//! the offsets.

use crate::config::StartPosition;
use crate::error::{Error, Result};
use crate::record::Exchange;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// The largest event time (ms) read before `start`, from the checkpoint.
    pub max_event_ms: Option<u64>,
}

/// All partitions of the job's topics, sorted by `(topic, partition)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePlan {
    /// The partitions.
    pub partitions: Vec<PartitionPlan>,
}

impl SourcePlan {
    /// Asks the brokers for the topics' partitions and offsets. `resume` holds
    /// the next offset per `(topic index, partition)` from a checkpoint; other
    /// partitions start at `start`.
    pub fn discover(
        client: &ClientConfig,
        topics: &[(Exchange, String)],
        start: StartPosition,
        resume: &BTreeMap<(u16, i32), i64>,
        watermarks: &BTreeMap<(u16, i32), u64>,
        bounded: bool,
    ) -> Result<SourcePlan> {
        let consumer: BaseConsumer = client.create().map_err(|e| Error::kafka("create consumer", e))?;
        let mut partitions = Vec::new();
        for (index, (exchange, topic)) in topics.iter().enumerate() {
            let metadata = consumer
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .map_err(|e| Error::kafka(format!("fetch metadata of topic `{topic}`"), e))?;
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
            for partition in ids {
                let (low, high) = consumer
                    .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                    .map_err(|e| Error::kafka(format!("fetch watermarks of {topic}/{partition}"), e))?;
                let start = match resume.get(&(index as u16, partition)) {
                    Some(&next) => {
                        if next < low {
                            return Err(Error::Checkpoint(format!(
                                "{topic}/{partition}: the checkpoint resumes at offset {next}, but the broker only retains offsets from {low}; messages were lost to retention"
                            )));
                        }
                        next
                    }
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
                    max_event_ms: watermarks.get(&(index as u16, partition)).copied(),
                });
            }
        }
        Ok(SourcePlan { partitions })
    }

    /// The share of `worker` out of `workers`.
    pub fn for_worker(&self, worker: usize, workers: usize) -> Vec<PartitionPlan> {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(i, _)| i % workers == worker)
            .map(|(_, p)| p.clone())
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
                    max_event_ms: None,
                })
                .collect(),
        };
        for workers in 1..=5 {
            let mut all: Vec<_> = (0..workers).flat_map(|w| plan.for_worker(w, workers)).collect();
            all.sort_by_key(|p| (p.topic, p.partition));
            assert_eq!(all, plan.partitions, "{workers} workers");
        }
    }
}
