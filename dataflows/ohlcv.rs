//! `ohlcv`: silver 1-minute bars beside bronze, in one job.
//!
//! Deduplicated on-time trades → a tumbling event-time window per exchange
//! and symbol (`[ohlcv] window_ms`, one minute by default) → one row per bar
//! in `ohlcv_1m` ([`BarRow`]): open, high, low and close by event time (ties
//! by trade id), volume, the exact VWAP and the trade count. Each bar is
//! written once, when the watermark passes its window's end; the window
//! operator checkpoints the open bars, not the trades. Late trades are in
//! bronze, flagged, and counted; they are in no bar.

use crate::bronze;
use k2::Records;
use k2::error::Result;
use k2::launch::{Dataflow, Job};
use k2::operators::{Bar, BarRow, Ohlcv, WindowCheckpointed, Windows, by_exchange_symbol};
use k2::record::{Exchange, Symbol, Trade};
use k2::sink::iceberg::{TableDecl, WriteIceberg};
use timely::dataflow::operators::vec::Map;

/// Bronze, and its trades' bars.
pub const OHLCV: Dataflow = Dataflow {
    name: "ohlcv",
    about: "bronze + 1-minute OHLCV/VWAP bars per exchange and symbol, committed together",
    tables: &[
        bronze::TABLES[0],
        bronze::TABLES[1],
        bronze::TABLES[2],
        TableDecl::of::<BarRow>("ohlcv_1m"),
    ],
    build,
    prepare: None,
};

/// `[ohlcv]`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OhlcvConfig {
    /// The bar length, ms.
    pub window_ms: u64,
}

impl Default for OhlcvConfig {
    fn default() -> Self {
        OhlcvConfig { window_ms: 60_000 }
    }
}

fn build(job: &Job<'_>) -> Result<()> {
    let trades = bronze::part(job, &job.kafka_source()?)?;
    part(job, trades).map(drop)
}

/// The bars of `trades`, into `ohlcv_1m`; returned for gold to roll up.
pub fn part<'s>(job: &Job<'s>, trades: Records<'s, Trade>) -> Result<Records<'s, Bar<(Exchange, Symbol)>>> {
    let cfg: OhlcvConfig = job.section("ohlcv")?;
    let windows = job.window_params(Windows::tumbling(cfg.window_ms * 1000)?);
    let (stats, state) = (job.window_stats("ohlcv"), job.state("ohlcv"));
    let (bars, _late) = trades.window_checkpointed(windows, by_exchange_symbol, Ohlcv::default(), stats, state)?;
    bars.clone()
        .flat_map(BarRow::per_exchange)
        .write_iceberg(job.table("ohlcv_1m")?);
    Ok(bars)
}
