//! The named dataflows. Adding a dataflow is adding a file in this folder and
//! a line to [`DATAFLOWS`].

use k2::launch::Dataflow;

/// Every dataflow `k2 run` knows, by name.
pub const DATAFLOWS: &[&Dataflow] = &[
    &crate::bronze::BRONZE,
    &crate::arbitrage::ARBITRAGE,
    &crate::market::MARKET,
    &crate::divergence::DIVERGENCE,
    &crate::ohlcv::OHLCV,
    &crate::gold::GOLD,
];

/// The dataflow called `name`.
pub fn lookup(name: &str) -> Option<&'static Dataflow> {
    DATAFLOWS.iter().copied().find(|d| d.name == name)
}

/// `name  about` lines, for help and errors.
pub fn listing() -> String {
    DATAFLOWS
        .iter()
        .map(|d| format!("  {:<12} {}", d.name, d.about))
        .collect::<Vec<_>>()
        .join("\n")
}
