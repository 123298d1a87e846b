//! The Prometheus endpoint: a [`PrometheusRecorder`] of this run (not the
//! process-global recorder, so that several runs in one process each have
//! their own) and its HTTP listener on the job's async runtime.
//!
//! [`METRICS`] is the list of every metric K2 exports, with its type,
//! labels and meaning: the exporter describes them from it (the `# HELP`
//! lines), and a test checks the README documents each of them.

use super::snapshot::Snapshot;
use crate::error::{Error, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use std::net::SocketAddr;
use std::time::Duration;

/// A metric's Prometheus type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (a restart starts it at 0 again).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// One exported metric.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its labels besides `k2_job` and `process`, comma-separated.
    pub labels: &'static str,
    /// What it means.
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: Kind, labels: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
    }
}

/// `k2_build_info`.
pub const BUILD_INFO: Metric = metric(
    "k2_build_info",
    Kind::Gauge,
    "version,dataflow",
    "Always 1: the K2 version and the dataflow this process runs.",
);
/// `k2_records_in_total`.
pub const RECORDS_IN: Metric = metric(
    "k2_records_in_total",
    Kind::Counter,
    "operator",
    "Records an operator received (the source: Kafka messages read).",
);
/// `k2_records_out_total`.
pub const RECORDS_OUT: Metric = metric(
    "k2_records_out_total",
    Kind::Counter,
    "operator",
    "Records an operator emitted (the source: trades decoded; a dedup: first occurrences; a window: results; the join: pairs; the Kafka sink: records sent).",
);
/// `k2_records_late_total`.
pub const RECORDS_LATE: Metric = metric(
    "k2_records_late_total",
    Kind::Counter,
    "operator",
    "Records found late: below their partition's watermark or dated too far ahead (source), or below the event time of the timestamp they came with (join).",
);
/// `k2_records_duplicate_total`.
pub const RECORDS_DUPLICATE: Metric = metric(
    "k2_records_duplicate_total",
    Kind::Counter,
    "operator",
    "Records a dedup operator dropped as duplicates.",
);
/// `k2_records_dead_lettered_total`.
pub const RECORDS_DEAD_LETTERED: Metric = metric(
    "k2_records_dead_lettered_total",
    Kind::Counter,
    "operator",
    "Messages sent to the dead letters (undecodable, or by policy), with the reason.",
);
/// `k2_source_bytes_total`.
pub const SOURCE_BYTES: Metric = metric("k2_source_bytes_total", Kind::Counter, "", "Kafka payload bytes read.");
/// `k2_source_control_messages_total`.
pub const SOURCE_CONTROL: Metric = metric(
    "k2_source_control_messages_total",
    Kind::Counter,
    "kind",
    "Control messages read (heartbeats, status, responses, ...), by kind.",
);
/// `k2_source_errors_total`.
pub const SOURCE_ERRORS: Metric = metric(
    "k2_source_errors_total",
    Kind::Counter,
    "",
    "Transient consumer errors (librdkafka reconnects and retries).",
);
/// `k2_consumer_lag_messages`.
pub const CONSUMER_LAG: Metric = metric(
    "k2_consumer_lag_messages",
    Kind::Gauge,
    "topic,partition",
    "Messages not read yet: the partition's end (high watermark) minus the job's position; 0 once the partition reported its end.",
);
/// `k2_consumer_position`.
pub const CONSUMER_POSITION: Metric = metric(
    "k2_consumer_position",
    Kind::Gauge,
    "topic,partition",
    "The next offset the job reads in the partition.",
);
/// `k2_consumer_end_offset`.
pub const CONSUMER_END: Metric = metric(
    "k2_consumer_end_offset",
    Kind::Gauge,
    "topic,partition",
    "The partition's end offset (high watermark; the last stable offset for read_committed), fetched every tick.",
);
/// `k2_event_time_watermark_seconds`.
pub const WATERMARK: Metric = metric(
    "k2_event_time_watermark_seconds",
    Kind::Gauge,
    "",
    "The event-time watermark, Unix seconds: the least of this process's source workers' (absent until known).",
);
/// `k2_event_time_lag_seconds`.
pub const WATERMARK_LAG: Metric = metric(
    "k2_event_time_lag_seconds",
    Kind::Gauge,
    "",
    "How far the event-time watermark trails the wall clock, seconds (includes source.max_out_of_orderness_ms).",
);
/// `k2_commit_duration_seconds`.
pub const COMMIT_DURATION: Metric = metric(
    "k2_commit_duration_seconds",
    Kind::Histogram,
    "",
    "Time to commit one cut: prepare, write the manifest, commit every table and transaction.",
);
/// `k2_cuts_committed_total`.
pub const CUTS: Metric = metric(
    "k2_cuts_committed_total",
    Kind::Counter,
    "",
    "Cuts committed by this run (one manifest each).",
);
/// `k2_snapshots_committed_total`.
pub const SNAPSHOTS: Metric = metric(
    "k2_snapshots_committed_total",
    Kind::Counter,
    "",
    "Iceberg snapshots and Kafka transactions committed by this run.",
);
/// `k2_rows_committed_total`.
pub const ROWS: Metric = metric(
    "k2_rows_committed_total",
    Kind::Counter,
    "destination",
    "Rows made visible by this run, per table or transactional topic.",
);
/// `k2_checkpoint_age_seconds`.
pub const CHECKPOINT_AGE: Metric = metric(
    "k2_checkpoint_age_seconds",
    Kind::Gauge,
    "",
    "Seconds since the newest checkpoint (manifest) was written; after a restart, counts from the restored one.",
);
/// `k2_checkpoint_epoch`.
pub const CHECKPOINT_EPOCH: Metric = metric(
    "k2_checkpoint_epoch",
    Kind::Gauge,
    "",
    "The epoch of the newest checkpoint.",
);
/// `k2_checkpoint_state_bytes`.
pub const STATE_BYTES: Metric = metric(
    "k2_checkpoint_state_bytes",
    Kind::Gauge,
    "",
    "Bytes of operator state the newest checkpoint references.",
);
/// `k2_group_offset_commits_total`.
pub const GROUP_COMMITS: Metric = metric(
    "k2_group_offset_commits_total",
    Kind::Counter,
    "result",
    "Commits of the checkpointed offsets to the consumer group (informational), by result: ok or error.",
);
/// `k2_process_resident_memory_bytes`.
pub const RSS: Metric = metric(
    "k2_process_resident_memory_bytes",
    Kind::Gauge,
    "",
    "Resident memory of the process (VmRSS), bytes.",
);
/// Every metric K2 exports.
pub const METRICS: &[Metric] = &[
    BUILD_INFO,
    RECORDS_IN,
    RECORDS_OUT,
    RECORDS_LATE,
    RECORDS_DUPLICATE,
    RECORDS_DEAD_LETTERED,
    SOURCE_BYTES,
    SOURCE_CONTROL,
    SOURCE_ERRORS,
    CONSUMER_LAG,
    CONSUMER_POSITION,
    CONSUMER_END,
    WATERMARK,
    WATERMARK_LAG,
    COMMIT_DURATION,
    CUTS,
    SNAPSHOTS,
    ROWS,
    CHECKPOINT_AGE,
    CHECKPOINT_EPOCH,
    STATE_BYTES,
    GROUP_COMMITS,
    RSS,
];

/// Buckets of [`COMMIT_DURATION`], seconds: a local commit takes
/// milliseconds, one to an object store and a REST catalog up to seconds,
/// and the committer backs off for up to 30 s when a catalog is down.
const COMMIT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The run's recorder, served over HTTP.
pub struct Exporter {
    recorder: PrometheusRecorder,
}

impl Exporter {
    /// Listens on `addr` (on `runtime`), labelling every metric with `labels`.
    pub fn start(addr: SocketAddr, labels: &[(&str, String)], runtime: &tokio::runtime::Handle) -> Result<Exporter> {
        let mut builder = PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets_for_metric(Matcher::Full(COMMIT_DURATION.name.to_string()), &COMMIT_BUCKETS)
            .map_err(|e| Error::Other(format!("metrics: {e}")))?;
        for (k, v) in labels {
            builder = builder.add_global_label(*k, v.clone());
        }
        // `build` binds the listener now (so a taken port is an error at
        // start) and spawns its upkeep task: it needs the runtime entered.
        let (recorder, serve) = {
            let _entered = runtime.enter();
            builder
                .build()
                .map_err(|e| Error::Other(format!("--metrics-addr {addr}: {e}")))?
        };
        runtime.spawn(async move {
            if let Err(e) = serve.await {
                tracing::warn!(error = ?e, "the metrics endpoint stopped");
            }
        });
        let exporter = Exporter { recorder };
        exporter.with(|| {
            for m in METRICS {
                let help = m.help;
                match m.kind {
                    Kind::Counter => ::metrics::describe_counter!(m.name, help),
                    Kind::Gauge => ::metrics::describe_gauge!(m.name, help),
                    Kind::Histogram => ::metrics::describe_histogram!(m.name, ::metrics::Unit::Seconds, help),
                }
            }
        });
        tracing::info!(%addr, "serving Prometheus metrics");
        Ok(exporter)
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        ::metrics::with_local_recorder(&self.recorder, f)
    }

    /// The constant `k2_build_info` series.
    pub fn build_info(&self, dataflow: &str) {
        let (version, dataflow) = (env!("CARGO_PKG_VERSION"), dataflow.to_string());
        self.with(|| ::metrics::gauge!(BUILD_INFO.name, "version" => version, "dataflow" => dataflow).set(1.0));
    }

    /// Records one cut's commit time.
    pub fn commit_took(&self, took: Duration) {
        self.with(|| ::metrics::histogram!(COMMIT_DURATION.name).record(took.as_secs_f64()));
    }

    /// Counts one commit of offsets to the consumer group.
    pub fn group_commit(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.with(|| ::metrics::counter!(GROUP_COMMITS.name, "result" => result).increment(1));
    }

    /// Sets every series from `s`.
    pub fn export(&self, s: &Snapshot) {
        use ::metrics::{counter, gauge};
        self.with(|| {
            for o in &s.operators {
                let kinds = [
                    (RECORDS_IN.name, o.records_in),
                    (RECORDS_OUT.name, o.records_out),
                    (RECORDS_LATE.name, o.late),
                    (RECORDS_DUPLICATE.name, o.duplicate),
                    (RECORDS_DEAD_LETTERED.name, o.dead_lettered),
                ];
                for (name, value) in kinds {
                    if let Some(v) = value {
                        counter!(name, "operator" => o.operator.clone()).absolute(v);
                    }
                }
            }
            counter!(SOURCE_BYTES.name).absolute(s.bytes);
            counter!(SOURCE_ERRORS.name).absolute(s.source_errors);
            for (kind, n) in &s.control {
                counter!(SOURCE_CONTROL.name, "kind" => *kind).absolute(*n);
            }
            for p in &s.partitions {
                let labels = [("topic", p.topic.clone()), ("partition", p.partition.to_string())];
                gauge!(CONSUMER_POSITION.name, &labels).set(p.position as f64);
                if let Some(end) = p.end {
                    gauge!(CONSUMER_END.name, &labels).set(end as f64);
                }
                if let Some(lag) = p.lag {
                    gauge!(CONSUMER_LAG.name, &labels).set(lag as f64);
                }
            }
            if let (Some(us), Some(lag)) = (s.watermark_us, s.watermark_lag_s()) {
                gauge!(WATERMARK.name).set(us as f64 / 1e6);
                gauge!(WATERMARK_LAG.name).set(lag);
            }
            if let Some(c) = &s.commits {
                counter!(CUTS.name).absolute(c.cuts);
                counter!(SNAPSHOTS.name).absolute(c.snapshots);
                for (destination, rows) in &c.rows {
                    counter!(ROWS.name, "destination" => destination.clone()).absolute(*rows);
                }
            }
            if let (Some(c), Some(age)) = (s.checkpoint, s.checkpoint_age_s()) {
                gauge!(CHECKPOINT_AGE.name).set(age);
                gauge!(CHECKPOINT_EPOCH.name).set(c.epoch as f64);
                gauge!(STATE_BYTES.name).set(c.state_bytes as f64);
            }
            if let Some(rss) = s.rss_bytes {
                gauge!(RSS.name).set(rss as f64);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_documents_every_metric() {
        let readme = include_str!("../../README.md");
        for m in METRICS {
            assert!(
                readme.contains(&format!("`{}`", m.name)),
                "README.md does not document `{}`",
                m.name
            );
        }
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for m in METRICS {
            assert!(m.name.starts_with("k2_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                m.name
            );
            assert!(!m.labels.contains("job"), "{}: `job` is Prometheus's own label", m.name);
        }
    }
}
