//! The ends of the partitions a process reads, for consumer lag.
//!
//! One `ListOffsets` request per broker per tick, from a consumer of its
//! own (never one of the source's, whose threads are the workers'): the
//! query asks for the offset at timestamp `-1`, which Kafka answers with the
//! partition's end (the high watermark, or the last stable offset for a
//! `read_committed` consumer such as K2's).

use crate::kafka::Quiet;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long one fetch may take before the tick goes on without it.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Fetches partition ends; see the module docs.
pub struct EndOffsets {
    client: ClientConfig,
    consumer: Option<BaseConsumer<Quiet>>,
    /// The last end seen per partition (kept when a fetch fails).
    pub ends: HashMap<(String, i32), i64>,
    last_error_log: Option<Instant>,
}

impl EndOffsets {
    /// With the source's consumer config (brokers and security alike).
    pub fn new(client: ClientConfig) -> Self {
        EndOffsets {
            client,
            consumer: None,
            ends: HashMap::new(),
            last_error_log: None,
        }
    }

    /// Refreshes [`EndOffsets::ends`] for `partitions`.
    pub fn refresh(&mut self, partitions: &[(String, i32)]) {
        if partitions.is_empty() {
            return;
        }
        if let Err(e) = self.fetch(partitions) {
            // Lag metrics keep their last values meanwhile; the consumer's
            // own errors are logged by the source.
            if self
                .last_error_log
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                tracing::warn!(error = %e, "cannot fetch the partitions' end offsets for lag metrics; retrying");
                self.last_error_log = Some(Instant::now());
            }
        }
    }

    fn fetch(&mut self, partitions: &[(String, i32)]) -> Result<(), String> {
        if self.consumer.is_none() {
            let c: BaseConsumer<Quiet> = self
                .client
                .create_with_context(Quiet)
                .map_err(|e| format!("create a consumer: {e}"))?;
            self.consumer = Some(c);
        }
        let consumer = self.consumer.as_ref().expect("created above");
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition_offset(topic, *partition, Offset::End)
                .map_err(|e| e.to_string())?;
        }
        let result = consumer.offsets_for_times(tpl, TIMEOUT);
        // Serve the client's queue (errors, logs): nothing else polls it.
        while consumer.poll(Duration::ZERO).is_some() {}
        for e in result.map_err(|e| e.to_string())?.elements() {
            if let (Ok(()), Offset::Offset(end)) = (e.error(), e.offset()) {
                self.ends.insert((e.topic().to_string(), e.partition()), end);
            }
        }
        Ok(())
    }
}
