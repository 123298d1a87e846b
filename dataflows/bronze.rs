//! `bronze`: every exchange's trades, deduplicated, into Iceberg, exactly once.
//!
//! Kafka (Binance and Kraken topics) → decode → dedup by message id →
//! `bronze_binance_trades` / `bronze_kraken_trades`; undecodable messages →
//! `dead_letters`. All three tables are committed together, one cut per commit
//! group, with the source offsets and the dedup state of the cut.

use k2::error::Result;
use k2::launch::{Dataflow, Job};
use k2::operators::DedupCheckpointed;
use k2::record::{DeadLetter, Exchange, Trade};
use k2::sink::iceberg::{TableDecl, WriteIceberg};
use k2::source::kafka::SourceStreams;
use k2::time::Time;
use timely::dataflow::Stream;
use timely::dataflow::operators::vec::Partition;

/// The bronze dataflow.
pub const BRONZE: Dataflow = Dataflow {
    name: "bronze",
    about: "raw trades of every exchange, deduplicated, into Iceberg bronze tables",
    tables: TABLES,
    build,
    prepare: None,
};

/// The bronze tables.
pub const TABLES: &[TableDecl] = &[
    TableDecl::of::<Trade>("bronze_binance_trades"),
    TableDecl::of::<Trade>("bronze_kraken_trades"),
    TableDecl::of::<DeadLetter>("dead_letters"),
];

fn build(job: &Job<'_>) -> Result<()> {
    let source = job.kafka_source()?;
    part(job, &source)?;
    Ok(())
}

/// The bronze part of a job reading `source`; returns the deduplicated
/// trades, late ones included (flagged), for other parts to build on.
pub fn part<'scope>(job: &Job<'scope>, source: &SourceStreams<'scope>) -> Result<Stream<'scope, Time, Vec<Trade>>> {
    // Bronze takes every valid trade, late or not.
    let trades = source.trades.clone().dedup_checkpointed(
        job.config().dedup.params(),
        job.dedup_stats("dedup"),
        job.state("dedup"),
    );
    let mut by_exchange = trades
        .clone()
        .partition(2, |t: Trade| (if t.exchange == Exchange::Binance { 0 } else { 1 }, t));
    let kraken = by_exchange.pop().expect("two outputs");
    let binance = by_exchange.pop().expect("two outputs");
    binance.write_iceberg(job.table("bronze_binance_trades")?);
    kraken.write_iceberg(job.table("bronze_kraken_trades")?);
    source.dead_letters.clone().write_iceberg(job.table("dead_letters")?);
    Ok(trades)
}
