//! Sources: where records enter a dataflow.

pub mod kafka;
