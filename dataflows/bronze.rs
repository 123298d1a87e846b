//! `bronze`: every exchange's trades, deduplicated, into Iceberg, exactly once.
//!
//! Kafka (Binance and Kraken topics) → decode → dedup by message id →
//! `bronze_binance_trades` / `bronze_kraken_trades`; undecodable messages →
//! `dead_letters`. All three tables are committed together, one cut per commit
//! group, with the source offsets and the dedup state of the cut.

use k2::error::Result;
use k2::launch::{Dataflow, JobContext, TableKind};
use k2::operators::DedupCheckpointed;
use k2::record::{DeadLetter, Exchange, Trade};
use k2::sink::iceberg::{CommitItem, WriteIceberg};
use k2::source::kafka::SourceStreams;
use k2::time::Time;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::vec::{Map, Partition};
use timely::dataflow::{Scope, Stream};

const PREPARE: Option<fn(&k2::config::Config) -> Result<()>> = None;

/// The bronze dataflow.
pub const BRONZE: Dataflow = Dataflow {
    name: "bronze",
    about: "raw trades of every exchange, deduplicated, into Iceberg bronze tables",
    tables: &[
        ("bronze_binance_trades", TableKind::Trades),
        ("bronze_kraken_trades", TableKind::Trades),
        ("dead_letters", TableKind::DeadLetters),
    ],
    build,
    prepare: PREPARE,
};

fn build<'scope>(ctx: &JobContext, scope: Scope<'scope, Time>) -> Result<()> {
    let source = ctx.kafka_source(scope)?;
    let items = part(ctx, &source);
    ctx.commit(items.concat(source.progress.map(CommitItem::from)));
    Ok(())
}

/// The bronze part of a job reading `source`: what it hands the committer.
pub fn part<'scope>(ctx: &JobContext, source: &SourceStreams<'scope>) -> Stream<'scope, Time, Vec<CommitItem>> {
    // Bronze takes every valid trade, late or not.
    let (trades, dedup_state) = source.trades.clone().dedup_checkpointed(
        ctx.config.dedup.params(),
        ctx.dedup_stats("dedup"),
        ctx.state_checkpoint("dedup"),
    );
    let mut by_exchange = trades.partition(2, |t: Trade| (if t.exchange == Exchange::Binance { 0 } else { 1 }, t));
    let kraken = by_exchange.pop().expect("two outputs");
    let binance = by_exchange.pop().expect("two outputs");
    binance
        .write_iceberg(ctx.table_writer::<Trade>("bronze_binance_trades"))
        .concat(kraken.write_iceberg(ctx.table_writer::<Trade>("bronze_kraken_trades")))
        .concat(
            source
                .dead_letters
                .clone()
                .write_iceberg(ctx.table_writer::<DeadLetter>("dead_letters")),
        )
        .map(CommitItem::from)
        .concat(dedup_state.map(CommitItem::from))
}
