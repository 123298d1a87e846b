//! Sinks: where records leave a dataflow.

pub mod iceberg;
pub mod kafka;
