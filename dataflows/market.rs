//! `market`: bronze and arbitrage in one job, from one read of the feeds and
//! one dedup.
//!
//! Both parts share the source, the deduplicated trades and the commit
//! protocol, so the bronze tables, the alerts and `late_trades` are all cut
//! at the same epochs.

use k2::error::Result;
use k2::launch::{Dataflow, Job};

/// The combined dataflow.
pub const MARKET: Dataflow = Dataflow {
    name: "market",
    about: "bronze + arbitrage from one read of the feeds, committed together",
    tables: &[
        crate::bronze::TABLES[0],
        crate::bronze::TABLES[1],
        crate::bronze::TABLES[2],
        crate::arbitrage::TABLES[0],
        crate::arbitrage::TABLES[1],
    ],
    build,
    prepare: Some(crate::arbitrage::prepare),
};

fn build(job: &Job<'_>) -> Result<()> {
    let source = job.kafka_source()?;
    let trades = crate::bronze::part(job, &source)?;
    crate::arbitrage::part(job, trades)
}
