//! Event-to-alert latency, measured from the outside: by reading the alerts
//! topic back.
//!
//! An alert's latency starts at the Kafka produce time of the later of its two
//! trades (the alert JSON's `produce_ms`, see [`crate::record::Alert`]) and
//! ends at the alert's arrival in its Kafka topic: the record's timestamp,
//! which is the broker's `LogAppendTime` on the topic the arbitrage dataflow
//! creates. Both ends are Kafka timestamps, so the figure covers everything in
//! between: the trade's wait in Kafka, reading, decoding, dedup, the join, and
//! the alert's produce. Latencies go into an HDR histogram, in ms.

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use hdrhistogram::Histogram;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

/// What [`read_alert_latency`] found in an alerts topic.
#[derive(Debug, Clone)]
pub struct AlertLatency {
    /// Distinct alerts (by `alert_id`).
    pub alerts: u64,
    /// Records whose `alert_id` was already seen (an immediate sink may
    /// re-send alerts after a restart; consumers deduplicate by id).
    pub duplicates: u64,
    /// Event-to-alert latency of each distinct alert's first arrival, ms.
    pub histogram: Histogram<u64>,
}

impl AlertLatency {
    /// An empty measurement.
    pub fn new() -> Self {
        AlertLatency {
            alerts: 0,
            duplicates: 0,
            // Up to a day, 3 significant figures. (An auto-resizing histogram
            // would cap `saturating_record` at its current maximum, 2047.)
            histogram: Histogram::new_with_bounds(1, 86_400_000, 3).expect("valid bounds"),
        }
    }

    /// Counts one alert record: its payload (the alert JSON) and its Kafka
    /// timestamp. `seen` holds the alert ids counted so far: pass the same
    /// set for every record of one read. A payload without `alert_id` and
    /// `produce_ms` is not an alert: it is ignored, and `false` returned.
    pub fn record(&mut self, seen: &mut HashSet<String>, payload: &[u8], timestamp_ms: i64) -> bool {
        let Some((id, latency)) = alert_latency_ms(payload, timestamp_ms) else {
            return false;
        };
        if seen.insert(id) {
            self.alerts += 1;
            self.histogram.saturating_record(latency);
        } else {
            self.duplicates += 1;
        }
        true
    }

    /// `p50 … ms, p99 … ms, p99.9 … ms, max … ms`, or `no alerts`.
    pub fn summary(&self) -> String {
        format_percentiles(&self.histogram)
    }
}

impl Default for AlertLatency {
    fn default() -> Self {
        Self::new()
    }
}

/// The alert id and event-to-alert latency (ms) of one alert record: its
/// `timestamp_ms` minus the payload's `produce_ms`, 0 if negative (clock
/// skew). `None` if the payload is not an alert's JSON.
pub fn alert_latency_ms(payload: &[u8], timestamp_ms: i64) -> Option<(String, u64)> {
    #[derive(serde::Deserialize)]
    struct AlertFields {
        alert_id: String,
        produce_ms: i64,
    }
    let fields: AlertFields = serde_json::from_slice(payload).ok()?;
    let latency = timestamp_ms.saturating_sub(fields.produce_ms).max(0) as u64;
    Some((fields.alert_id, latency))
}

/// `p50 12 ms, p99 40 ms, p99.9 55 ms, max 61 ms` of a histogram in ms, or
/// `no alerts` if it is empty.
pub fn format_percentiles(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "no alerts".to_string();
    }
    format!(
        "p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    )
}

/// Reads the alerts `topic` from the beginning to its current end, all
/// partitions, and measures each distinct alert's event-to-alert latency.
///
/// With `read_committed`, only alerts of committed transactions count (what a
/// consumer of a transactional alert sink sees). Records that are not alert
/// JSON are skipped. See [`read_topic_to_end`] for where reading stops and
/// when it fails.
pub fn read_alert_latency(
    kafka: &KafkaConfig,
    topic: &str,
    read_committed: bool,
    timeout: Duration,
) -> Result<AlertLatency> {
    let mut latency = AlertLatency::new();
    let mut seen = HashSet::new();
    read_topic_to_end(kafka, topic, read_committed, timeout, |payload, ts| {
        latency.record(&mut seen, payload, ts);
    })?;
    Ok(latency)
}

/// Calls `visit(payload, timestamp_ms)` for every record of `topic` on the
/// cluster of `kafka` (its security settings included), all partitions,
/// from the beginning to the current end (records without a payload or
/// timestamp are skipped).
///
/// A partition's end is where the consumer reports end of partition. With
/// `read_committed` that is the end of the last committed transaction, and the
/// high watermark also counts commit markers, which are never delivered, so
/// "offset of the last message + 1 = high watermark" would never hold. Fails
/// if the topic does not exist or some partition's end is not reached within
/// `timeout`.
pub fn read_topic_to_end(
    kafka: &KafkaConfig,
    topic: &str,
    read_committed: bool,
    timeout: Duration,
    mut visit: impl FnMut(&[u8], i64),
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer<QuietEof> = crate::kafka::client_config(kafka)
        .set("group.id", "k2-alert-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create_with_context(QuietEof)
        .map_err(|e| Error::kafka("create topic reader", e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| Error::kafka(format!("metadata of `{topic}`"), e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::Other(format!("topic `{topic}` does not exist")));
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| Error::kafka("build assignment", e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka(format!("assign `{topic}`"), e))?;

    let mut pending: BTreeSet<i32> = partitions.into_iter().collect();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Other(format!(
                "reading topic `{topic}`: partitions {pending:?} did not reach their end within {timeout:?}"
            )));
        }
        match consumer.poll(left.min(Duration::from_millis(200))) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => tracing::debug!(error = %e, "topic reader: transient consumer error"),
            Some(Ok(m)) => {
                if let (Some(payload), Some(ts)) = (m.payload(), m.timestamp().to_millis()) {
                    visit(payload, ts);
                }
            }
        }
    }
    Ok(())
}

/// Client callbacks of the topic reader: end of partition is how it knows
/// it is done, not an error worth a log line.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(%error, reason, "topic reader: client error; librdkafka retries");
        }
    }
}

impl ConsumerContext for QuietEof {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Alert, Decimal, Exchange};

    fn alert(id: &str, produce_ms: i64) -> Alert {
        Alert {
            alert_id: id.into(),
            symbol: "BTC/USDT".into(),
            buy_exchange: Exchange::Binance,
            sell_exchange: Exchange::Kraken,
            buy_price: Decimal(60_000 * Decimal::ONE),
            sell_price: Decimal(60_010 * Decimal::ONE),
            spread_millibps: 667,
            binance_message_id: "binance:BTCUSDT:1".into(),
            kraken_message_id: "kraken:BTC/USDT:2".into(),
            binance_event_us: (produce_ms - 3) * 1000,
            kraken_event_us: (produce_ms - 1) * 1000,
            produce_ms,
            detected_us: (produce_ms + 4) * 1000,
        }
    }

    #[test]
    fn latency_is_the_record_timestamp_minus_produce_time() {
        let json = alert("a1", 1_767_225_600_000).to_json();
        assert_eq!(
            alert_latency_ms(json.as_bytes(), 1_767_225_600_017),
            Some(("a1".to_string(), 17))
        );
        // Clock skew never gives a negative latency.
        assert_eq!(
            alert_latency_ms(json.as_bytes(), 1_767_225_599_990),
            Some(("a1".to_string(), 0))
        );
    }

    #[test]
    fn non_alert_payloads_are_skipped() {
        assert_eq!(alert_latency_ms(b"not json", 5), None);
        assert_eq!(alert_latency_ms(br#"{"alert_id":"x"}"#, 5), None);
        assert_eq!(alert_latency_ms(br#"{"alert_id":7,"produce_ms":1}"#, 5), None);
        let mut l = AlertLatency::new();
        assert!(!l.record(&mut HashSet::new(), b"{}", 5));
        assert_eq!((l.alerts, l.duplicates, l.histogram.len()), (0, 0, 0));
    }

    #[test]
    fn duplicates_count_once_at_their_first_arrival() {
        let mut l = AlertLatency::new();
        let mut seen = HashSet::new();
        for (id, ts) in [("a", 1_010), ("b", 1_020), ("a", 1_900), ("c", 1_005)] {
            assert!(l.record(&mut seen, alert(id, 1_000).to_json().as_bytes(), ts));
        }
        assert_eq!((l.alerts, l.duplicates), (3, 1));
        assert_eq!(l.histogram.len(), 3);
        assert_eq!(l.histogram.max(), 20);
        assert_eq!(l.histogram.min(), 5);
        // Seconds late is recorded as such, not capped.
        assert!(l.record(&mut seen, alert("d", 1_000).to_json().as_bytes(), 61_000));
        assert!(
            l.histogram.equivalent(l.histogram.max(), 60_000),
            "{}",
            l.histogram.max()
        );
    }

    #[test]
    fn percentiles_format() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        assert_eq!(format_percentiles(&h), "no alerts");
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        assert_eq!(
            format_percentiles(&h),
            "p50 500 ms, p99 990 ms, p99.9 999 ms, max 1000 ms"
        );
    }
}
