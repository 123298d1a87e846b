//! # K2 Stream
//!
//! Exactly-once streaming from Kafka into Apache Iceberg, on timely dataflow.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod decimal;
pub mod error;
pub mod feed;
pub mod kafka;
pub mod launch;
pub mod metrics;
pub mod operators;
pub mod query;
pub mod record;
pub mod retry;
pub mod sink;
pub mod source;
pub mod time;
