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
//!   itself resumes from, restored here as one [`DedupState`] and run over
//!   the tail by the operator's own rules, so the tail is deduplicated
//!   exactly as the job's next commits will be, at a cost in the number of
//!   symbols, not of rows. The checkpoint store is the job's: a folder or
//!   an `s3://` prefix (`[checkpoint] dir`, `[s3]`).
//! * **By an anti-join** against the snapshot, restricted to the tail's ids:
//!   one scan of the `message_id` column, probing a hash set of the tail's
//!   ids. It needs nothing but the table, so it is the fallback when the
//!   checkpoint cannot be read (another host, or the manifest of that epoch
//!   pruned since: `checkpoint.keep`). The tail's own repeats are then
//!   dropped by a fresh [`DedupState`].
//!
//! The two agree except in one corner the job itself treats specially: a
//! stream with more than `dedup.max_gaps` gaps in its numbers has its oldest
//! gaps closed, and a trade that later fills such a gap is dropped by the job
//! (and by the checkpoint path) though the table lacks it.

use super::error::QueryResult;
use super::snapshot::Cut;
use crate::checkpoint::state::{StateCheckpoint, StateKind, StateStore};
use crate::checkpoint::{CommitGroups, ManifestStore};
use crate::config::Config;
use crate::operators::DedupParams;
use crate::operators::dedup::DedupState;
use crate::record::{MessageId, Trade};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

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

/// The bronze dedup state the job checkpointed at `cut`, for the rows of
/// `topic`; `Err(reason)` when it cannot be used (then the caller falls
/// back to the anti-join). Blocking: the checkpoint store may be S3.
pub fn checkpointed(config: &Config, cut: &Cut, topic: &str) -> Result<DedupState, String> {
    let location = config.checkpoint.job_location(&cut.job);
    let store = crate::checkpoint::store::open(&location, &config.s3).map_err(|e| e.to_string())?;
    let manifest = ManifestStore::open(store.clone())
        .read(cut.epoch)
        .map_err(|e| format!("the manifest of epoch {} cannot be read ({e})", cut.epoch))?;
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
        store: StateStore::new(store),
        groups: CommitGroups {
            epoch_ms: config.job.epoch_ms,
            commit_interval_ms: config.job.commit_interval_ms,
        },
        run_id: String::new(),
        generation: 0,
        restore,
    };
    DedupState::restored(&ckpt).map_err(|e| e.to_string())
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

/// The tail's trades the job would keep, in order: each goes through the
/// dedup operator's rules on `state` (the history's, restored from the
/// checkpoint, or a fresh one), unless `in_history` says the snapshot
/// holds it.
pub fn dedup_tail(
    trades: Vec<Trade>,
    state: &mut DedupState,
    params: &DedupParams,
    mut in_history: impl FnMut(&Trade) -> bool,
) -> (Vec<Trade>, DedupCounts) {
    let mut counts = DedupCounts::default();
    let mut kept_ids: HashSet<MessageId> = HashSet::new();
    let mut kept = Vec::with_capacity(trades.len());
    for t in trades {
        if in_history(&t) {
            counts.duplicates_of_history += 1;
        } else if state.observe(&t, params).first {
            counts.kept += 1;
            kept_ids.insert(t.message_id);
            kept.push(t);
        } else if kept_ids.contains(&t.message_id) {
            counts.duplicates_in_tail += 1;
        } else {
            // Known to the restored state: the history holds it.
            counts.duplicates_of_history += 1;
        }
    }
    (kept, counts)
}

/// Tail ids to look up in the history: the distinct message ids, as the
/// table's `message_id` column writes them.
pub fn tail_ids(trades: &[Trade]) -> HashSet<String> {
    trades.iter().map(|t| t.message_id.to_string()).collect()
}

/// Result of the anti-join's scan: the tail ids the history holds.
pub type FoundIds = HashSet<MessageId>;

/// Checks a scan batch's `message_id` column against `wanted`.
pub fn probe(column: &arrow_array::ArrayRef, wanted: &HashSet<String>, found: &mut FoundIds) -> QueryResult<()> {
    use arrow_array::cast::AsArray;
    let mut check = |s: &str| {
        if wanted.contains(s)
            && let Ok(id) = s.parse::<MessageId>()
        {
            found.insert(id);
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
    use crate::record::Exchange;

    fn trade(id: &str) -> Trade {
        let message_id: MessageId = id.into();
        Trade {
            message_id,
            ..crate::record::test_trade(Exchange::Binance, message_id.trade_id, "1", 0)
        }
    }

    #[test]
    fn the_tail_keeps_first_copies_the_history_lacks() {
        let tail = [
            "binance:BTCUSDT:7",
            "binance:BTCUSDT:8",
            "binance:BTCUSDT:7",
            "binance:ETHUSDT:1",
        ]
        .map(trade)
        .to_vec();
        let params = DedupParams::default();
        // Anti-join: the history holds ETHUSDT:1.
        let held: MessageId = "binance:ETHUSDT:1".into();
        let (kept, counts) = dedup_tail(tail.clone(), &mut DedupState::default(), &params, |t| {
            t.message_id == held
        });
        let ids: Vec<String> = kept.iter().map(|t| t.message_id.to_string()).collect();
        assert_eq!(ids, ["binance:BTCUSDT:7", "binance:BTCUSDT:8"]);
        assert_eq!(
            counts,
            DedupCounts {
                kept: 2,
                duplicates_in_tail: 1,
                duplicates_of_history: 1
            }
        );
        // A state that has seen BTCUSDT:8 (as a restored checkpoint has).
        let mut state = DedupState::default();
        state.observe(&trade("binance:BTCUSDT:8"), &params);
        let (kept, counts) = dedup_tail(tail, &mut state, &params, |_| false);
        assert_eq!(kept.len(), 2);
        assert_eq!((counts.duplicates_in_tail, counts.duplicates_of_history), (1, 1));
    }
}
