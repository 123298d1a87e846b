//! Which snapshot of a table a query reads, and where in Kafka it stops.
//!
//! Every snapshot K2 commits records its cut in the summary: `k2.job`,
//! `k2.epoch` and `k2.offsets` (the next offset per topic and partition).
//! Snapshots written by others (a compaction's `replace`) carry no cut; they
//! hold the same rows as the K2 snapshot before them, so that one's cut
//! still applies to them.

use super::error::{QueryError, QueryResult};
use iceberg::spec::{Operation, SnapshotRef};
use iceberg::table::Table;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Next offset per topic and partition, as in `k2.offsets`.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// The cut K2 recorded in a snapshot's summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// `k2.job`: the job that committed it (its checkpoints are in
    /// `<checkpoint.dir>/<job>`).
    pub job: String,
    /// `k2.epoch`.
    pub epoch: u64,
    /// `k2.offsets`.
    pub offsets: Offsets,
}

/// The cut in `snapshot`'s summary, if K2 wrote it.
pub fn cut_of(snapshot: &SnapshotRef) -> Option<Cut> {
    let props = &snapshot.summary().additional_properties;
    Some(Cut {
        job: props.get("k2.job")?.clone(),
        epoch: props.get("k2.epoch")?.parse().ok()?,
        offsets: serde_json::from_str(props.get("k2.offsets")?).ok()?,
    })
}

/// A table as a query reads it: the snapshot of its rows and the cut they
/// end at (both `None` for a table without rows).
#[derive(Clone, Debug)]
pub struct Pinned {
    /// The snapshot whose rows are read.
    pub snapshot: Option<SnapshotRef>,
    /// The cut those rows end at.
    pub cut: Option<Cut>,
}

/// The table's current snapshot and its cut. A current snapshot without a
/// cut (a compaction) takes the cut of the K2 snapshot it rewrote, through
/// any number of `replace` snapshots; any other foreign snapshot in between
/// means rows K2 did not write, and the seam is refused.
pub fn newest(name: &str, table: &Table) -> QueryResult<Pinned> {
    let meta = table.metadata();
    let Some(current) = meta.current_snapshot() else {
        return Ok(Pinned {
            snapshot: None,
            cut: None,
        });
    };
    let mut at = current.clone();
    loop {
        if let Some(cut) = cut_of(&at) {
            return Ok(Pinned {
                snapshot: Some(current.clone()),
                cut: Some(cut),
            });
        }
        if at.summary().operation != Operation::Replace {
            return Err(QueryError::seam(
                name,
                format!(
                    "snapshot {} ({}) was not written by K2 and is not a compaction: the table holds rows that no \
                     Kafka offsets account for; query it with --mode history",
                    at.snapshot_id(),
                    at.summary().operation.as_str()
                ),
            ));
        }
        match at.parent_snapshot_id().and_then(|id| meta.snapshot_by_id(id)) {
            Some(parent) => at = parent.clone(),
            None => {
                return Err(QueryError::seam(
                    name,
                    format!(
                        "no retained snapshot before {} carries K2's cut (k2.offsets); query it with --mode history",
                        current.snapshot_id()
                    ),
                ));
            }
        }
    }
}

/// The newest K2 snapshot with `k2.epoch <= epoch`: the table as of that
/// cut (README, "Reading the tables"). A table whose first snapshot is
/// retained and newer than the cut was empty then; one whose older
/// snapshots were expired cannot be read as of it.
pub fn as_of(name: &str, table: &Table, epoch: u64) -> QueryResult<Pinned> {
    let meta = table.metadata();
    let best = meta
        .snapshots()
        .filter_map(|s| cut_of(s).map(|c| (c, s)))
        .filter(|(c, _)| c.epoch <= epoch)
        .max_by_key(|(c, s)| (c.epoch, s.sequence_number()));
    if let Some((cut, snapshot)) = best {
        return Ok(Pinned {
            snapshot: Some(snapshot.clone()),
            cut: Some(cut),
        });
    }
    let first_retained = meta.snapshots().any(|s| s.parent_snapshot_id().is_none());
    if meta.snapshots().len() == 0 || first_retained {
        return Ok(Pinned {
            snapshot: None,
            cut: None,
        });
    }
    let oldest = meta.snapshots().filter_map(cut_of).map(|c| c.epoch).min();
    Err(QueryError::Mode(format!(
        "table `{name}` has no retained snapshot as of epoch {epoch} (the oldest retained is epoch {}): \
         older snapshots were expired (iceberg.max_snapshot_age_ms)",
        oldest.map_or("?".to_string(), |e| e.to_string())
    )))
}

/// The newest `k2.epoch` of the table's retained snapshots.
pub fn newest_epoch(table: &Table) -> Option<u64> {
    table.metadata().snapshots().filter_map(cut_of).map(|c| c.epoch).max()
}
