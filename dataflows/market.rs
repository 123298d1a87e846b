//! `market`: bronze and arbitrage in one job, from one read of the feeds.
//!
//! Both parts share the source and the commit protocol, so the bronze tables,
//! the alerts and `late_trades` are all cut at the same epochs.

use k2::error::Result;
use k2::launch::{Dataflow, JobContext, TableKind};
use k2::sink::iceberg::CommitItem;
use k2::time::Time;
use timely::dataflow::Scope;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::vec::Map;

const PREPARE: Option<fn(&k2::config::Config) -> Result<()>> = Some(crate::arbitrage::prepare);

/// The combined dataflow.
pub const MARKET: Dataflow = Dataflow {
    name: "market",
    about: "bronze + arbitrage from one read of the feeds, committed together",
    tables: &[
        ("bronze_binance_trades", TableKind::Trades),
        ("bronze_kraken_trades", TableKind::Trades),
        ("dead_letters", TableKind::DeadLetters),
        ("arbitrage_signals", TableKind::Alerts),
        ("late_trades", TableKind::Trades),
    ],
    build,
    prepare: PREPARE,
};

fn build<'scope>(ctx: &JobContext, scope: Scope<'scope, Time>) -> Result<()> {
    let source = ctx.kafka_source(scope)?;
    let bronze = crate::bronze::part(ctx, &source);
    let arbitrage = crate::arbitrage::part(ctx, &source)?;
    ctx.commit(bronze.concat(arbitrage).concat(source.progress.map(CommitItem::from)));
    Ok(())
}
