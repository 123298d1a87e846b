//! The operator vocabulary of K2 dataflows.
//!
//! Each operator is an extension trait on timely streams, one per file, named
//! after its verb (`Dedup::dedup`). They are re-exported here, so this file is
//! the whole vocabulary. Operators emit results as soon as their inputs allow
//! (event at a time); frontiers only decide when state may be forgotten.

pub mod arbitrage;
pub mod dedup;
pub mod interval_join;
pub mod log_state;
pub mod window;

pub use arbitrage::{Arbitrage, ArbitrageParams};
pub use dedup::{Dedup, DedupCheckpointed, DedupId, DedupKey, DedupParams};
pub use interval_join::{IntervalJoin, JoinSide, JoinState, JoinStats, key_hash, key_worker};
pub use log_state::{LogState, read_logged};
pub use window::bars::{Bar, BarRow, Ohlcv, TradeAt, bar_symbol, by_exchange_symbol, by_symbol};
pub use window::{
    Aggregate, EpochClock, EventTime, Merge, Window, WindowCheckpointed, WindowKey, WindowParams, WindowStats,
    WindowStreams, Windowed, Windows,
};
