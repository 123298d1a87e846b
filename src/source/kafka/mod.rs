//! The Kafka source: partition planning, the reader operator, and decoding.
//!
//! * [`plan`]: which partitions exist and which worker reads each;
//! * [`reader`]: the timely operator, its progress and idleness policy;
//! * [`decode`]: exchange-native JSON into normalized trades.

pub mod decode;
pub mod plan;
pub mod reader;

pub use plan::{PartitionPlan, SourcePlan};
pub use reader::{SourceSpec, SourceStats, SourceStreams, StopSignal, kafka_source};
