//! The Kafka source: partition planning, the reader operator, and decoding.
//!
//! * [`plan`]: which partitions exist and which worker reads each;
//! * [`reader`]: the timely operator, its progress and idleness policy;
//! * [`decode`]: exchange-native JSON into normalized trades;
//! * [`watch`]: partitions added while the job runs.

pub mod decode;
pub mod plan;
pub mod reader;
pub mod watch;

pub use plan::{PartitionPlan, SourcePlan};
pub use reader::{SharedConsumer, SourceSpec, SourceStats, SourceStreams, kafka_source};
pub use watch::PartitionWatch;
