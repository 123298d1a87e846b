//! # K2 Stream
//!
//! Exactly-once streaming from Kafka into Apache Iceberg, on timely dataflow.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The derive macros name this crate `::k2`, also from inside it.
extern crate self as k2;

pub use k2_derive::{Columns, TableRow};

/// A stream of records `D` in a K2 dataflow: what operators take and give.
pub type Records<'scope, D> = timely::dataflow::Stream<'scope, time::Time, Vec<D>>;

pub mod checkpoint;
pub mod config;
pub mod decimal;
pub mod error;

pub mod hash;
pub mod kafka;
pub mod launch;
pub mod metrics;
pub mod operators;
pub mod query;
pub mod record;
pub mod retry;
pub mod secret;
pub mod sink;
pub mod source;
pub mod stop;
pub mod telemetry;
pub mod time;
