//! Checkpoints: the cut. This module owns the commit protocol: the commit
//! groups every participant buffers by ([`groups`]), what flows to the
//! committer ([`participant`]: offsets, state, staged output), the committer
//! ([`committer`]), the manifests that are its commit points, operator
//! state ([`state`]), fencing ([`fence`]) and recovery ([`recovery`]).
//! Sinks (Iceberg tables, transactional Kafka topics) take part through the
//! [`Participant`] trait only, and operators and sinks register what they
//! contribute with the worker's [`Cut`].
//!
//! A job's checkpoint folder (`<checkpoint.dir>/<job>/`) holds:
//!
//! * `manifests/m-<epoch>.json`: one [`Manifest`] per committed cut, written
//!   atomically (temporary file, fsync, rename, fsync of the folder). Writing
//!   it is **the commit point**: once it exists, the cut is durable, and
//!   recovery finishes any Iceberg commit of it that did not happen.
//! * `state/`: operator-state snapshot files ([`state`]), written by the
//!   workers before the manifest that references them.
//! * `LOCK` and `generations/`: fencing ([`fence`]), so that two instances
//!   of one job never both commit.
//!
//! The folder must be reachable by every process of the job; it is plain
//! files written with rename-for-atomicity, so an object store with
//! conditional puts can replace it.

pub mod backpressure;
pub mod committer;
pub mod cut;
pub mod fault;
pub mod fence;
pub mod groups;
pub mod manifest;
pub mod participant;
pub mod recovery;
pub mod state;
pub mod store;

pub use backpressure::Backpressure;
pub use committer::{CommitHook, CommitSpec, CommitStats, commit};
pub use cut::{Checkpointed, Cut};
pub use fence::Fence;
pub use groups::{CommitGroups, GroupBuffer};
pub use manifest::{Manifest, ManifestStore};
pub use participant::{CommitItem, Committed, OffsetReport, Participant, Prepared, Staged};
pub use recovery::{Recovered, Reset, Resume, recover};
pub use state::StateFile;
pub use store::{JobLock, Store};
