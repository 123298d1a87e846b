//! The Iceberg sink: Parquet data files per worker, one committer per job.
//!
//! The protocol is described in `DESIGN.md` next to this file. In short:
//! every worker stages data files when its input frontier passes the end of a
//! *commit group* of epochs ([`writer`]); one committer, on worker 0, commits
//! every table of the job for the same group, with the source offsets of that
//! cut in each snapshot summary ([`committer`]).

pub mod catalog;
pub mod committer;
pub mod maintenance;
pub mod schema;
pub mod writer;

pub use catalog::JobCatalog;
pub use committer::{CommitItem, CommitStats, commit};
pub use schema::{RowContext, TableRow};
pub use writer::{CommitGroups, StagedFiles, WriteIceberg};
