//! One reading of everything the job counts: the counters the operators
//! already keep ([`SourceStats`], [`DedupStats`], ...), the source's
//! positions and watermarks, the committer's statistics, and the process.
//!
//! Taking a snapshot only loads atomics and takes a few uncontended locks,
//! once per telemetry tick; the record path never sees it.

use crate::checkpoint::{CommitStats, Manifest};
use crate::operators::JoinStats;
use crate::operators::dedup::DedupStats;
use crate::sink::kafka::KafkaSinkStats;
use crate::source::kafka::SourceStats;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The operator name of the Kafka source in metrics.
pub const SOURCE: &str = "source";
/// The operator name of the interval join in metrics.
pub const INTERVAL_JOIN: &str = "interval_join";
/// The operator name of the immediate Kafka sink in metrics.
pub const KAFKA_SINK: &str = "kafka_sink";

/// The counters of one process's job, shared with the operators.
#[derive(Clone)]
pub struct Sources {
    /// The Kafka source's counters, positions and watermarks.
    pub source: Arc<SourceStats>,
    /// Every dedup operator's counters, by operator name.
    pub dedup: Arc<Mutex<BTreeMap<String, Arc<DedupStats>>>>,
    /// Every window operator's counters, by operator name.
    pub windows: Arc<Mutex<BTreeMap<String, Arc<crate::operators::WindowStats>>>>,
    /// The interval join's counters.
    pub join: Arc<JoinStats>,
    /// The immediate Kafka sink's counters.
    pub kafka_sink: Arc<KafkaSinkStats>,
    /// The committer's statistics: only in the process that commits.
    pub commits: Option<Arc<Mutex<CommitStats>>>,
}

/// The newest committed cut, as far as metrics care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Its epoch.
    pub epoch: u64,
    /// When its manifest was written, ms since the Unix epoch.
    pub created_ms: i64,
    /// Bytes of operator state it references.
    pub state_bytes: u64,
}

impl CheckpointInfo {
    /// What metrics show of `manifest`.
    pub fn of(manifest: &Manifest) -> Self {
        CheckpointInfo {
            epoch: manifest.epoch,
            created_ms: manifest.created_ms,
            state_bytes: manifest.state_bytes(),
        }
    }
}

/// Record counts of one operator; `None` for what it does not count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperatorCounts {
    /// The operator's name (`source`, a dedup's name, `interval_join`, ...).
    pub operator: String,
    /// Records in.
    pub records_in: Option<u64>,
    /// Records out.
    pub records_out: Option<u64>,
    /// Records found late.
    pub late: Option<u64>,
    /// Records dropped as duplicates.
    pub duplicate: Option<u64>,
    /// Records sent to the dead letters.
    pub dead_lettered: Option<u64>,
}

/// One partition's lag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// The next offset the job reads.
    pub position: i64,
    /// The partition's end (high watermark), when known.
    pub end: Option<i64>,
    /// Messages the job has still to read, when known: `end - position`,
    /// and 0 once the partition reported its end.
    pub lag: Option<i64>,
}

/// The commit counters of the committing process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// Cuts committed (one manifest each).
    pub cuts: u64,
    /// Iceberg snapshots and Kafka transactions committed.
    pub snapshots: u64,
    /// Rows made visible, per table or topic.
    pub rows: BTreeMap<String, u64>,
}

/// One reading; see the module docs.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Instant,
    /// Wall clock when it was taken, ms since the Unix epoch.
    pub now_ms: i64,
    /// Per-operator record counts.
    pub operators: Vec<OperatorCounts>,
    /// Kafka messages read (the source's records in).
    pub messages: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// Transient consumer errors.
    pub source_errors: u64,
    /// Control messages by kind.
    pub control: BTreeMap<&'static str, u64>,
    /// Every partition this process reads.
    pub partitions: Vec<PartitionLag>,
    /// The process's event-time watermark, µs: the least of its source
    /// workers'. `None` before any event time is known.
    pub watermark_us: Option<u64>,
    /// The committer's counters (the committing process only).
    pub commits: Option<CommitCounts>,
    /// The newest committed cut (the committing process only).
    pub checkpoint: Option<CheckpointInfo>,
    /// Resident memory of the process, bytes.
    pub rss_bytes: Option<u64>,
}

impl Snapshot {
    /// The sum of the known partition lags.
    pub fn total_lag(&self) -> Option<i64> {
        let lags: Vec<i64> = self.partitions.iter().filter_map(|p| p.lag).collect();
        (!lags.is_empty()).then(|| lags.iter().sum())
    }

    /// How far the watermark trails the wall clock, seconds.
    pub fn watermark_lag_s(&self) -> Option<f64> {
        self.watermark_us
            .map(|us| (self.now_ms as f64 / 1000.0 - us as f64 / 1e6).max(0.0))
    }

    /// Seconds since the newest committed cut's manifest was written.
    pub fn checkpoint_age_s(&self) -> Option<f64> {
        self.checkpoint
            .map(|c| (self.now_ms.saturating_sub(c.created_ms)).max(0) as f64 / 1000.0)
    }
}

impl Sources {
    /// Reads everything; `ends` holds the partitions' last known ends.
    pub fn snapshot(&self, ends: &HashMap<(String, i32), i64>, checkpoint: Option<CheckpointInfo>) -> Snapshot {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.source;
        let messages = load(&s.messages);
        let trades = load(&s.trades);
        let mut operators = vec![OperatorCounts {
            operator: SOURCE.to_string(),
            records_in: Some(messages),
            records_out: Some(trades),
            late: Some(load(&s.late)),
            duplicate: None,
            dead_lettered: Some(load(&s.dead_letters)),
        }];
        for (name, d) in self.dedup.lock().expect("dedup counters").iter() {
            let (passed, dropped) = (load(&d.passed), load(&d.dropped));
            operators.push(OperatorCounts {
                operator: name.clone(),
                records_in: Some(passed + dropped),
                records_out: Some(passed),
                duplicate: Some(dropped),
                ..OperatorCounts::default()
            });
        }
        for (name, w) in self.windows.lock().expect("window counters").iter() {
            operators.push(OperatorCounts {
                operator: name.clone(),
                records_in: Some(load(&w.records) + load(&w.late)),
                records_out: Some(load(&w.results)),
                late: Some(load(&w.late)),
                ..OperatorCounts::default()
            });
        }
        // The join and the Kafka sink exist in every job's context but work
        // only in the dataflows that use them: shown once they counted.
        let j = &self.join;
        let (joined_in, pairs) = (load(&j.left) + load(&j.right), load(&j.pairs));
        if joined_in + pairs > 0 {
            operators.push(OperatorCounts {
                operator: INTERVAL_JOIN.to_string(),
                records_in: Some(joined_in),
                records_out: Some(pairs),
                late: Some(load(&j.late)),
                ..OperatorCounts::default()
            });
        }
        let sent = load(&self.kafka_sink.sent);
        if sent > 0 {
            operators.push(OperatorCounts {
                operator: KAFKA_SINK.to_string(),
                records_out: Some(sent),
                ..OperatorCounts::default()
            });
        }
        let partitions = s
            .partitions
            .lock()
            .expect("source partitions")
            .iter()
            .map(|p| {
                let position = p.next.load(Ordering::Relaxed);
                let end = ends.get(&(p.topic.clone(), p.partition)).copied();
                PartitionLag {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    position,
                    end,
                    lag: lag(position, end, p.caught_up.load(Ordering::Relaxed)),
                }
            })
            .collect();
        let watermark_us = s
            .watermarks
            .lock()
            .expect("source watermarks")
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .filter(|w| *w != u64::MAX)
            .min()
            .filter(|w| *w > 0);
        let commits = self.commits.as_ref().map(|c| {
            let c = c.lock().expect("commit stats");
            CommitCounts {
                cuts: c.cuts,
                snapshots: c.snapshots,
                rows: c.rows.clone(),
            }
        });
        Snapshot {
            at: Instant::now(),
            now_ms: chrono::Utc::now().timestamp_millis(),
            operators,
            messages,
            bytes: load(&s.bytes),
            source_errors: load(&s.errors),
            control: s.control_counts(),
            partitions,
            watermark_us,
            commits,
            checkpoint: if self.commits.is_some() { checkpoint } else { None },
            rss_bytes: super::process::resident_bytes(),
        }
    }
}

/// A partition's lag: 0 once it reported its end (on a transactional topic
/// the commit markers take offsets no message has, so `end - position`
/// would stay above 0 when all is read), else `end - position`.
pub fn lag(position: i64, end: Option<i64>, caught_up: bool) -> Option<i64> {
    if caught_up {
        return Some(0);
    }
    end.map(|end| (end - position).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_zero_at_the_end_and_never_negative() {
        assert_eq!(lag(10, Some(15), false), Some(5));
        assert_eq!(lag(10, Some(11), true), Some(0), "a commit marker is no lag");
        assert_eq!(lag(12, Some(11), false), Some(0), "an end fetched before the read");
        assert_eq!(lag(10, None, false), None);
    }

    #[test]
    fn a_snapshot_reads_the_operators_counters() {
        let sources = Sources {
            source: Arc::default(),
            dedup: Arc::default(),
            windows: Arc::default(),
            join: Arc::default(),
            kafka_sink: Arc::default(),
            commits: None,
        };
        sources.source.messages.store(7, Ordering::Relaxed);
        sources.source.trades.store(9, Ordering::Relaxed);
        let d = Arc::new(DedupStats::default());
        d.passed.store(8, Ordering::Relaxed);
        d.dropped.store(1, Ordering::Relaxed);
        sources.dedup.lock().unwrap().insert("dedup".into(), d);
        let s = sources.snapshot(&HashMap::new(), None);
        let names: Vec<&str> = s.operators.iter().map(|o| o.operator.as_str()).collect();
        assert_eq!(names, ["source", "dedup"], "no join or sink before they count");
        assert_eq!(s.operators[0].records_in, Some(7));
        assert_eq!(s.operators[1].records_in, Some(9));
        assert_eq!(s.operators[1].duplicate, Some(1));
        assert_eq!(s.watermark_us, None);
        assert!(s.rss_bytes.is_some_and(|b| b > 0));
    }
}
