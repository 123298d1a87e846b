//! `gold`: bronze, silver and gold in one job, committed together.
//!
//! Trades → bronze tables; → 1-minute bars per exchange and symbol
//! (`ohlcv_1m`, see [`crate::ohlcv`]); and those bars rolled up, never
//! recomputed from trades:
//! * `ohlcv_1h`: 1-hour bars per exchange and symbol (the minute bars of the
//!   hour, merged);
//! * `vwap_1m`: 1-minute bars per symbol across exchanges (the exchanges'
//!   minute bars of the symbol, merged), whose `vwap` is the cross-exchange
//!   VWAP; `exchange` is null.
//!
//! A minute bar's event time is its window's last µs, so it is on time for
//! the coarser window that holds it; the roll-ups close when the watermark
//! passes their end, and checkpoint their open bars like the minute bars.

use crate::bronze;
use crate::ohlcv;
use k2::error::Result;
use k2::launch::{Dataflow, Job};
use k2::operators::{Bar, BarRow, Ohlcv, WindowCheckpointed, Windows, bar_symbol};
use k2::record::{Exchange, Symbol};
use k2::sink::iceberg::{TableDecl, WriteIceberg};
use timely::dataflow::operators::vec::Map;

/// One hour, µs.
const HOUR_US: u64 = 3_600_000_000;

/// The dataflow.
pub const GOLD: Dataflow = Dataflow {
    name: "gold",
    about: "bronze + 1-minute bars + 1-hour bars and cross-exchange VWAP rolled up from them, committed together",
    tables: &[
        bronze::TABLES[0],
        bronze::TABLES[1],
        bronze::TABLES[2],
        TableDecl::of::<BarRow>("ohlcv_1m"),
        TableDecl::of::<BarRow>("ohlcv_1h"),
        TableDecl::of::<BarRow>("vwap_1m"),
    ],
    build,
    prepare: None,
};

fn build(job: &Job<'_>) -> Result<()> {
    let trades = bronze::part(job, &job.kafka_source()?)?;
    let minutes = ohlcv::part(job, trades)?;
    let minute_us = minutes_us(job)?;

    let hourly = job.window_params(Windows::tumbling(HOUR_US)?);
    let by_key = |b: &Bar<(Exchange, Symbol)>| b.key;
    let stats = job.window_stats("gold-1h");
    let (hours, _) =
        minutes
            .clone()
            .window_checkpointed(hourly, by_key, Ohlcv::default(), stats, job.state("gold-1h"))?;
    hours
        .flat_map(BarRow::per_exchange)
        .write_iceberg(job.table("ohlcv_1h")?);

    let across = job.window_params(Windows::tumbling(minute_us)?);
    let stats = job.window_stats("gold-vwap");
    let (symbols, _) =
        minutes.window_checkpointed(across, bar_symbol, Ohlcv::default(), stats, job.state("gold-vwap"))?;
    symbols
        .flat_map(BarRow::per_symbol)
        .write_iceberg(job.table("vwap_1m")?);
    Ok(())
}

/// The minute bars' length, µs, from `[ohlcv]`.
fn minutes_us(job: &Job<'_>) -> Result<u64> {
    Ok(job.section::<ohlcv::OhlcvConfig>("ohlcv")?.window_ms * 1000)
}
