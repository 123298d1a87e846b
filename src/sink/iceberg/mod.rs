//! The Iceberg sink: Parquet data files per worker, and the tables as one
//! participant of the job's cuts.
//!
//! The protocol is described in `DESIGN.md` next to this file. In short:
//! every worker stages data files when its input frontier passes the end of a
//! commit group ([`writer`]); the checkpoint's committer writes the cut's
//! manifest and then has the [`participant`] append every table of the job
//! for that group, with the source offsets of the cut in each snapshot
//! summary. Table maintenance (orphans, expiry, verification) is in
//! [`maintenance`].

pub mod catalog;
pub mod maintenance;
pub mod participant;
pub mod rows;
pub mod schema;
pub mod writer;

pub use catalog::JobCatalog;
/// `#[derive(TableRow)]` and `#[derive(Columns)]`, beside their traits.
pub use k2_derive::{Columns, TableRow};
pub use participant::{IcebergPart, IcebergParticipant, TableCommit};
pub use rows::{Column, Columns, RowContext, TableDecl, TableRow};
pub use writer::{StagedFiles, Table, TableWriter, WriteIceberg, rows_batch};
