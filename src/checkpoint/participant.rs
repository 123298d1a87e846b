//! What flows to the committer, and the participants of a cut.
//!
//! A cut has three kinds of contributions, all [`CommitItem`]s on the way to
//! the committer:
//!
//! * [`OffsetReport`]s: how far each source partition had read when an epoch
//!   closed;
//! * [`StateFile`]s: operator state, durable before it is reported;
//! * [`Staged`] output of a [`Participant`] (an Iceberg table's data files, a
//!   transactional Kafka sink's records), opaque to the checkpoint.
//!
//! A participant is an external system that a cut commits to. The checkpoint
//! knows it by this trait only: it asks it to *prepare* its part of the
//! manifest from the staged pieces, writes the manifest (the commit point),
//! then asks it to *commit* that part, idempotently, which recovery repeats to
//! roll a cut forward. Before resuming, recovery asks each participant to
//! *check* that it is not ahead of the newest checkpoint, and afterwards to
//! *clean* what crashed runs left behind.

use super::fence::Fence;
use super::manifest::Manifest;
use super::state::StateFile;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Source progress: the next offset of a partition when an epoch closed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OffsetReport {
    /// The epoch that closed.
    pub epoch: u64,
    /// Topic index in the job's topic list.
    pub topic: u16,
    /// Partition.
    pub partition: i32,
    /// The next offset to read: everything before it is in epochs `<= epoch`.
    pub next_offset: i64,
    /// The largest event time read so far from the partition, µs.
    pub max_event_us: Option<u64>,
    /// The Kafka timestamp of the last message read (at `next_offset - 1`),
    /// ms: recovery checks that the broker still has that message there.
    pub last_ts_ms: Option<i64>,
}

/// What one worker staged for one participant and commit group; the payload
/// is the participant's own (data file descriptions, records, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    /// The participant's name.
    pub participant: String,
    /// The commit group (its last epoch).
    pub group: u64,
    /// The worker that staged it.
    pub worker: usize,
    /// The participant's description of what it staged, as JSON text (bytes,
    /// so that it crosses processes in timely's binary format).
    pub payload: Vec<u8>,
}

/// Everything the committer consumes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommitItem {
    /// Output staged for a participant.
    Staged(Staged),
    /// Source offsets at an epoch's close.
    Offsets(OffsetReport),
    /// An operator-state file.
    State(StateFile),
}

impl From<Staged> for CommitItem {
    fn from(s: Staged) -> Self {
        CommitItem::Staged(s)
    }
}

impl From<OffsetReport> for CommitItem {
    fn from(r: OffsetReport) -> Self {
        CommitItem::Offsets(r)
    }
}

impl From<StateFile> for CommitItem {
    fn from(s: StateFile) -> Self {
        CommitItem::State(s)
    }
}

/// A participant's part of one cut, ready for the manifest.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    /// What the manifest records for the participant: enough to commit the
    /// cut again after a crash. `None`: nothing to commit in this cut.
    pub part: Option<serde_json::Value>,
    /// Kafka produce times of the cut's records, ms, run-length encoded
    /// `(ms, count)`: the committer turns them into produce-to-visible latency.
    pub produce_ms: Vec<(i64, u32)>,
}

/// What committing one part did.
#[derive(Clone, Debug, Default)]
pub struct Committed {
    /// Visible units created now (Iceberg snapshots, Kafka transactions);
    /// zero when the part was already committed.
    pub commits: u64,
    /// Rows made visible now, per destination (table or topic).
    pub rows: BTreeMap<String, u64>,
    /// When the part became visible, ms since the Unix epoch.
    pub visible_ms: Option<i64>,
    /// How long each commit took.
    pub took: Vec<Duration>,
}

/// An external system that cuts commit to; see the module docs. Every
/// method may be called again after a crash, so each must be idempotent.
pub trait Participant: Send + Sync {
    /// A name unique in the job: the key of its part in manifests and of its
    /// [`Staged`] items.
    fn name(&self) -> &str;

    /// Builds the participant's part of the cut `epoch` of `job` from every
    /// worker's staged payloads of the cut's commit groups.
    fn prepare(&self, job: &str, epoch: u64, staged: Vec<Vec<u8>>) -> Result<Prepared>;

    /// Makes `part` (of `manifest`, already durable) visible, skipping what is
    /// already there. `fence` is checked before each visible change.
    fn commit(&self, manifest: &Manifest, part: &serde_json::Value, fence: Option<&Fence>) -> Result<Committed>;

    /// Recovery, before rolling forward: fails when the participant holds
    /// cuts of `job` newer than `newest` (checkpoints were lost), or data of
    /// the job while there is no checkpoint, or when the part of `newest` it
    /// must still commit is damaged.
    fn check(&self, job: &str, newest: Option<&Manifest>) -> Result<()>;

    /// Recovery, after rolling forward: removes what crashed runs left that
    /// none of `kept` references.
    fn clean(&self, _job: &str, _kept: &[Manifest]) -> Result<()> {
        Ok(())
    }

    /// Upkeep while the job runs, between two commits, on the committer's
    /// thread: nothing a later cut needs may go. Failures are the
    /// participant's to log; the job goes on.
    fn maintain(&self) {}

    /// What the participant holds of `job`, for humans (e.g. "`t` (30 rows,
    /// up to epoch 12)"), or nothing.
    fn holdings(&self, _job: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}
