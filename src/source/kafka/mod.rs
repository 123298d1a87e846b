//! The Kafka source: partition assignment, polling, progress and decoding.

pub mod decode;
