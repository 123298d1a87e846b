//! Partitions added while a job runs.
//!
//! A thread per process asks the brokers for the job's topics every
//! `kafka.metadata_refresh_ms`. A partition it has not seen is added to the
//! shared list with its first retained offset as the start, and the version
//! goes up; every source worker compares the version once per activation (one
//! atomic load) and starts reading the new partitions that [`super::plan::owner`]
//! gives it. So a new partition is read within about one refresh interval,
//! from its first message, and its offsets are in the next checkpoint; every
//! process of a cluster finds it alike, and exactly one worker reads it.
//!
//! Continuous runs only: a bounded run reads the partitions it planned.

use super::plan::{PartitionPlan, SourcePlan, topic_partitions};
use crate::kafka::Quiet;
use crate::record::Exchange;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The job's partitions, kept current by a background thread.
#[derive(Clone, Debug)]
pub struct PartitionWatch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    version: AtomicU64,
    partitions: Mutex<Vec<PartitionPlan>>,
    stopped: AtomicBool,
}

impl PartitionWatch {
    /// Starts watching `topics`, knowing the partitions of `plan`.
    pub fn start(client: ClientConfig, topics: Vec<(Exchange, String)>, plan: &SourcePlan, every: Duration) -> Self {
        let inner = Arc::new(Inner {
            version: AtomicU64::new(0),
            partitions: Mutex::new(plan.partitions.clone()),
            stopped: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new()
            .name("k2-partition-watch".into())
            .spawn(move || {
                let consumer: BaseConsumer<Quiet> = match client.create_with_context(Quiet) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot watch for new partitions");
                        return;
                    }
                };
                loop {
                    std::thread::sleep(every);
                    // The watch is gone once every worker has dropped it.
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    refresh(&consumer, &topics, &inner);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the partition watch thread");
        }
        PartitionWatch { inner }
    }

    /// Changes whenever partitions were added.
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// Every partition known now.
    pub fn partitions(&self) -> Vec<PartitionPlan> {
        self.inner.partitions.lock().expect("partition list").clone()
    }

    /// Stops the background thread at its next look.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
    }
}

fn refresh(consumer: &BaseConsumer<Quiet>, topics: &[(Exchange, String)], inner: &Inner) {
    let known: BTreeSet<(u16, i32)> = inner
        .partitions
        .lock()
        .expect("partition list")
        .iter()
        .map(|p| (p.topic, p.partition))
        .collect();
    let mut added = Vec::new();
    for (index, (exchange, topic)) in topics.iter().enumerate() {
        let ids = match consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| e.to_string())
            .and_then(|m| topic_partitions(&m, topic).map_err(|e| e.to_string()))
        {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(topic, error = %e, "partition watch: no metadata this time");
                continue;
            }
        };
        for partition in ids {
            if known.contains(&(index as u16, partition)) {
                continue;
            }
            match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                Ok((low, _)) => added.push(PartitionPlan {
                    topic: index as u16,
                    topic_name: topic.clone(),
                    exchange: *exchange,
                    partition,
                    start: low,
                    end: None,
                    max_event_us: None,
                }),
                Err(e) => tracing::debug!(topic, partition, error = %e, "partition watch: no offsets yet"),
            }
        }
    }
    if !added.is_empty() {
        for p in &added {
            tracing::info!(
                topic = p.topic_name,
                partition = p.partition,
                "partition added to the topic"
            );
        }
        inner.partitions.lock().expect("partition list").extend(added);
        inner.version.fetch_add(1, Ordering::Release);
    }
}
