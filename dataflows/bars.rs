//! The row of a bar in a table: `ohlcv_1m` of [`crate::ohlcv`] and the
//! roll-ups of [`crate::gold`]. A dataflow's row type lives with the
//! dataflows: the window operator knows bars, not tables.

use k2::decimal::{Decimal, Rounding};
use k2::operators::Bar;
use k2::record::{Exchange, Symbol};
use k2::sink::iceberg::TableRow;
use serde::{Deserialize, Serialize};

/// A bar as a table row: the columns of `ohlcv_1m` and its roll-ups,
/// partitioned by `day(window_start)`. `exchange` is null for bars across
/// exchanges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TableRow)]
#[row(partition = "day(window_start)")]
pub struct BarRow {
    /// The exchange; null across exchanges.
    pub exchange: Option<Exchange>,
    /// Normalized symbol, `BASE/QUOTE`.
    pub symbol: String,
    /// The window's start (inclusive), µs.
    #[row(timestamp)]
    pub window_start: i64,
    /// The window's end (exclusive), µs.
    #[row(timestamp)]
    pub window_end: i64,
    /// First price by event time, ties by trade id.
    pub open: Decimal,
    /// Highest price.
    pub high: Decimal,
    /// Lowest price.
    pub low: Decimal,
    /// Last price by event time, ties by trade id.
    pub close: Decimal,
    /// Base quantity traded; null if it overflowed `decimal(38, 18)`.
    pub volume: Option<Decimal>,
    /// Σ price × quantity / volume, exact, rounded half-even to 18 places;
    /// null if the sums overflowed.
    pub vwap: Option<Decimal>,
    /// Trades in the bar.
    pub trades: u64,
    /// The volume or notional overflowed (see [`Ohlcv::overflowed`]).
    pub overflowed: bool,
}

impl BarRow {
    /// The row of `bar` of `exchange` (`None`: across exchanges) and
    /// `symbol`; `None` for a bar without trades, which windows never emit.
    pub fn of<K>(bar: &Bar<K>, exchange: Option<Exchange>, symbol: &str) -> Option<BarRow> {
        let v = &bar.value;
        Some(BarRow {
            exchange,
            symbol: symbol.to_string(),
            window_start: bar.start_us as i64,
            window_end: bar.end_us as i64,
            open: v.open()?,
            high: v.high()?,
            low: v.low()?,
            close: v.close()?,
            volume: v.volume(),
            vwap: v.vwap(Rounding::HalfEven),
            trades: v.trades(),
            overflowed: v.overflowed(),
        })
    }

    /// The row of a bar per exchange and symbol.
    pub fn per_exchange(bar: Bar<(Exchange, Symbol)>) -> Option<BarRow> {
        BarRow::of(&bar, Some(bar.key.0), &bar.key.1)
    }

    /// The row of a bar per symbol, across exchanges.
    pub fn per_symbol(bar: Bar<Symbol>) -> Option<BarRow> {
        BarRow::of(&bar, None, &bar.key)
    }
}
