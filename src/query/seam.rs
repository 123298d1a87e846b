//! Deduplicating the tail against the snapshot: nothing missed, nothing
//! counted twice.
//!
//! A tail trade is dropped when the job would drop it: when its identity
//! (`{exchange}:{native symbol}` and trade number, see
//! [`crate::operators::dedup`]) is already in the table, or when an earlier
//! message of the tail (in `(partition, offset)` order) carried it. The
//! second needs only the tail. The first asks "which of these few ids does
//! the large history hold?", answered in one of two ways ([`DedupSource`]):
//!
//! * **From the job's checkpoint** (preferred). The manifest of the
//!   snapshot's epoch lists the dedup operator's state as of exactly that
//!   cut: per stream, the numbers seen, as ranges. That is the state the job
//!   itself resumes from, so the tail is deduplicated exactly as the job's
//!   next commits will be, at a cost in the number of symbols, not of rows.
//! * **By an anti-join** against the snapshot, restricted to the tail's ids:
//!   one scan of the `message_id` column, probing a hash set of the tail's
//!   ids. It needs nothing but the table, so it is the fallback when the
//!   checkpoint cannot be read (another host, or the manifest of that epoch
//!   pruned since: `checkpoint.keep`).
//!
//! The two agree except in one corner the job itself treats specially: a
//! stream with more than `dedup.max_gaps` gaps in its numbers has its oldest
//! gaps closed, and a trade that later fills such a gap is dropped by the job
//! (and by the checkpoint path) though the table lacks it.

use super::error::QueryResult;
use super::snapshot::Cut;
use crate::checkpoint::ManifestStore;
use crate::checkpoint::state::{StateCheckpoint, StateKind, StateStore, restore_snapshots};
use crate::config::Config;
use crate::operators::dedup::{DedupId, DedupKey, hash_key};
use crate::record::Trade;
use crate::sink::iceberg::CommitGroups;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// The dedup operator of the bronze dataflow, whose state the bronze tables
/// were deduplicated by.
pub const BRONZE_DEDUP_OPERATOR: &str = "dedup";

/// Where the ids of the history came from, for one table's seam.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DedupSource {
    /// No history: the table had no snapshot.
    NoHistory,
    /// The dedup state the job checkpointed with the snapshot's epoch.
    Checkpoint {
        /// The manifest's epoch (the snapshot's `k2.epoch`).
        epoch: u64,
    },
    /// An anti-join of the tail's ids against the snapshot.
    AntiJoin {
        /// Why the checkpoint was not used.
        reason: String,
    },
}

/// Per stream, the numbers the job had seen at a cut: sorted, disjoint
/// `[start, end)` ranges.
#[derive(Clone, Debug, Default)]
pub struct SeenNumbers {
    streams: HashMap<String, Vec<(u64, u64)>>,
}

impl SeenNumbers {
    /// Whether number `seq` of `stream` was seen.
    pub fn contains(&self, stream: &str, seq: u64) -> bool {
        let Some(ranges) = self.streams.get(stream) else {
            return false;
        };
        let i = ranges.partition_point(|&(start, _)| start <= seq);
        i > 0 && seq < ranges[i - 1].1
    }

    /// Streams held.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    fn from_entries(entries: Vec<(String, Vec<(u64, u64)>)>) -> SeenNumbers {
        let mut streams: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
        for (stream, ranges) in entries {
            streams.entry(stream).or_default().extend(ranges);
        }
        for ranges in streams.values_mut() {
            ranges.sort_unstable();
            // Merge overlapping or touching ranges (several runs' files may
            // hold one stream).
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
            for &(s, e) in ranges.iter() {
                match merged.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            *ranges = merged;
        }
        SeenNumbers { streams }
    }
}

/// The bronze dedup state the job checkpointed at `cut`, for the rows of
/// `topic`; `Err(reason)` when it cannot be used (then the caller falls
/// back to the anti-join).
pub fn checkpointed(config: &Config, cut: &Cut, topic: &str) -> Result<SeenNumbers, String> {
    let job_dir = config.checkpoint.job_dir(&cut.job);
    if !job_dir.join("manifests").is_dir() {
        return Err(format!("no checkpoints of job `{}` at {}", cut.job, job_dir.display()));
    }
    let store = ManifestStore::open(&job_dir).map_err(|e| e.to_string())?;
    let manifest = store
        .read(cut.epoch)
        .map_err(|e| format!("the manifest of epoch {} is gone ({e})", cut.epoch))?;
    if manifest.job != cut.job || manifest.offsets.get(topic) != cut.offsets.get(topic) {
        return Err(format!(
            "the manifest of epoch {} does not match the snapshot's cut",
            cut.epoch
        ));
    }
    let restore: Vec<_> = manifest
        .state
        .into_iter()
        .filter(|f| f.operator == BRONZE_DEDUP_OPERATOR && f.kind == StateKind::Snapshot)
        .collect();
    if restore.is_empty() {
        return Err(format!(
            "the manifest of epoch {} holds no state of operator `{BRONZE_DEDUP_OPERATOR}`",
            cut.epoch
        ));
    }
    let ckpt = StateCheckpoint {
        operator: BRONZE_DEDUP_OPERATOR.to_string(),
        store: StateStore::new(&job_dir),
        groups: CommitGroups {
            epoch_ms: config.job.epoch_ms,
            commit_interval_ms: config.job.commit_interval_ms,
        },
        run_id: String::new(),
        generation: 0,
        restore,
    };
    // As one worker of one: every stream, each from the run that owns it.
    let entries: Vec<(String, Vec<(u64, u64)>)> =
        restore_snapshots(&ckpt, 0, 1, |s: &String| hash_key(s)).map_err(|e| e.to_string())?;
    Ok(SeenNumbers::from_entries(entries))
}

/// What deduplicating one table's tail did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupCounts {
    /// Tail trades kept: the rows the tail adds.
    pub kept: u64,
    /// Dropped: an earlier tail message carried them.
    pub duplicates_in_tail: u64,
    /// Dropped: the snapshot holds them (the seam).
    pub duplicates_of_history: u64,
}

/// The tail's trades the job would keep, in order: the first copy of each
/// identity in the tail, unless `in_history` says the snapshot holds it.
pub fn dedup_tail(
    trades: Vec<Trade>,
    mut in_history: impl FnMut(&str, u64, &str) -> bool,
) -> (Vec<Trade>, DedupCounts) {
    let mut counts = DedupCounts::default();
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut kept = Vec::with_capacity(trades.len());
    for t in trades {
        let (stream, seq) = match t.dedup_id() {
            DedupId::Sequenced { stream, seq } => (stream, seq),
            DedupId::Id(id) => (id, 0),
        };
        if in_history(stream, seq, &t.message_id) {
            counts.duplicates_of_history += 1;
        } else if seen.insert((stream.to_string(), seq)) {
            counts.kept += 1;
            kept.push(t);
        } else {
            counts.duplicates_in_tail += 1;
        }
    }
    (kept, counts)
}

/// Tail ids to look up in the history: the distinct message ids.
pub fn tail_ids(trades: &[Trade]) -> HashSet<String> {
    trades.iter().map(|t| t.message_id.clone()).collect()
}

/// Result of the anti-join's scan: the tail ids the history holds.
pub type FoundIds = HashSet<String>;

/// Checks a scan batch's `message_id` column against `wanted`.
pub fn probe(column: &arrow_array::ArrayRef, wanted: &HashSet<String>, found: &mut FoundIds) -> QueryResult<()> {
    use arrow_array::cast::AsArray;
    let mut check = |s: &str| {
        if wanted.contains(s) && !found.contains(s) {
            found.insert(s.to_string());
        }
    };
    match column.data_type() {
        arrow_schema::DataType::Utf8 => column.as_string::<i32>().iter().flatten().for_each(&mut check),
        arrow_schema::DataType::LargeUtf8 => column.as_string::<i64>().iter().flatten().for_each(&mut check),
        arrow_schema::DataType::Utf8View => column.as_string_view().iter().flatten().for_each(&mut check),
        other => {
            return Err(super::error::QueryError::Execution(format!(
                "message_id has type {other}, expected a string"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_numbers_merge_and_look_up() {
        let seen = SeenNumbers::from_entries(vec![
            ("binance:BTCUSDT".into(), vec![(10, 20), (30, 31)]),
            ("binance:BTCUSDT".into(), vec![(15, 25)]),
            ("kraken:BTC/USD".into(), vec![(0, 5)]),
        ]);
        let b = "binance:BTCUSDT";
        assert!(!seen.contains(b, 9));
        assert!(seen.contains(b, 10) && seen.contains(b, 24) && seen.contains(b, 30));
        assert!(!seen.contains(b, 25) && !seen.contains(b, 29) && !seen.contains(b, 31));
        assert!(seen.contains("kraken:BTC/USD", 0) && !seen.contains("kraken:BTC/USD", 5));
        assert!(!seen.contains("kraken:ETH/USD", 1));
        assert_eq!(seen.streams(), 2);
    }
}
