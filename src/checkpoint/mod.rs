//! Checkpoints: the commit point of every cut, and what recovery reads.
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
pub mod fault;
pub mod fence;
pub mod manifest;
pub mod state;

pub use backpressure::Backpressure;
pub use fence::{Fence, JobLock};
pub use manifest::{Manifest, ManifestStore, TableCommit};
pub use state::StateFile;
