//! Cross-exchange arbitrage detection, built on the interval join.
//!
//! A Binance trade and a Kraken trade of the same symbol whose event times
//! are at most Δ apart form a pair. Buying at the cheaper venue and selling at
//! the dearer one earns
//!
//! ```text
//! spread_bps = (sell_price × (1 − sell_fee) − buy_price × (1 + buy_fee)) / buy_price × 10⁴
//! ```
//!
//! net of both taker fees; a pair above the threshold is an [`Alert`]. Each
//! alert is emitted once, when the second trade of the pair arrives, and its
//! id is a hash of the two trade ids, so every run and every worker count
//! produces the same alerts.

use crate::decimal::Decimal;
use crate::operators::interval_join::{IntervalJoin, JoinSide, JoinState, JoinStats};
use crate::record::{Alert, Exchange, MessageId, Symbol, Trade};
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use timely::dataflow::Stream;
use timely::dataflow::operators::vec::Map;

/// What makes a pair an opportunity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArbitrageParams {
    /// Largest event-time distance of a pair, µs.
    pub delta_us: u64,
    /// Binance taker fee, bps.
    pub binance_fee_bps: f64,
    /// Kraken taker fee, bps.
    pub kraken_fee_bps: f64,
    /// Smallest net spread that alerts, bps (exclusive).
    pub threshold_bps: f64,
}

/// One side of a pair: what an alert needs of a trade, and all the join
/// stores of it (80 bytes, against a [`Trade`]'s 144: the join holds every
/// trade of the last Δ plus the sources' out-of-orderness).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leg {
    /// The trade's price, exact.
    pub price: Decimal,
    /// The trade's message id.
    pub message_id: MessageId,
    /// The normalized symbol: the join key.
    pub symbol: Symbol,
    /// Trade time at the exchange, µs since the Unix epoch.
    pub event_us: i64,
    /// The Kafka timestamp of the trade's message, ms since the Unix epoch.
    pub kafka_ts_ms: i64,
}

impl From<&Trade> for Leg {
    fn from(t: &Trade) -> Self {
        Leg {
            price: t.price,
            message_id: t.message_id,
            symbol: t.symbol,
            event_us: t.event_us,
            kafka_ts_ms: t.source.kafka_ts_ms,
        }
    }
}

/// Legs join by normalized symbol at their exchange event time, as trades do.
impl JoinSide for Leg {
    type Key = Symbol;
    fn join_key(&self) -> &Symbol {
        &self.symbol
    }
    #[inline]
    fn event_us(&self) -> u64 {
        self.event_us.max(0) as u64
    }
}

/// The alert for a Binance/Kraken pair, if its net spread clears the threshold.
/// The pair is assumed to be within Δ. `detected_us` is left 0: the caller
/// stamps it, so the clock is read per alert, not per pair.
pub fn detect(binance: &Leg, kraken: &Leg, p: &ArbitrageParams) -> Option<Alert> {
    let (pb, pk) = (binance.price.to_f64(), kraken.price.to_f64());
    if pb <= 0.0 || pk <= 0.0 {
        return None;
    }
    let (buy, sell) = if pb <= pk {
        (
            (Exchange::Binance, binance, p.binance_fee_bps),
            (Exchange::Kraken, kraken, p.kraken_fee_bps),
        )
    } else {
        (
            (Exchange::Kraken, kraken, p.kraken_fee_bps),
            (Exchange::Binance, binance, p.binance_fee_bps),
        )
    };
    let (buy_p, sell_p) = (buy.1.price.to_f64(), sell.1.price.to_f64());
    let spread_bps = (sell_p * (1.0 - sell.2 / 1e4) - buy_p * (1.0 + buy.2 / 1e4)) / buy_p * 1e4;
    if spread_bps.is_nan() || spread_bps <= p.threshold_bps {
        return None;
    }
    Some(Alert {
        alert_id: Alert::id_of(binance.message_id, kraken.message_id),
        symbol: binance.symbol,
        buy_exchange: buy.0,
        sell_exchange: sell.0,
        buy_price: buy.1.price,
        sell_price: sell.1.price,
        spread_millibps: (spread_bps * 1000.0).round() as i64,
        binance_message_id: binance.message_id,
        kraken_message_id: kraken.message_id,
        binance_event_us: binance.event_us,
        kraken_event_us: kraken.event_us,
        produce_ms: binance.kafka_ts_ms.max(kraken.kafka_ts_ms),
        detected_us: 0,
    })
}

/// Detects arbitrage between a stream of Binance trades and one of Kraken trades.
pub trait Arbitrage<'scope> {
    /// Interval-joins `self` (Binance) with `kraken` by symbol within Δ and
    /// keeps the pairs whose net spread clears the threshold. `restore` holds
    /// the join states to start from (see [`IntervalJoin::interval_join_with`]).
    fn arbitrage(
        self,
        kraken: Stream<'scope, Time, Vec<Trade>>,
        params: ArbitrageParams,
        restore: &[JoinState<Symbol, Leg, Leg>],
        stats: Arc<JoinStats>,
    ) -> Stream<'scope, Time, Vec<Alert>>;
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl<'scope> Arbitrage<'scope> for Stream<'scope, Time, Vec<Trade>> {
    fn arbitrage(
        self,
        kraken: Stream<'scope, Time, Vec<Trade>>,
        params: ArbitrageParams,
        restore: &[JoinState<Symbol, Leg, Leg>],
        stats: Arc<JoinStats>,
    ) -> Stream<'scope, Time, Vec<Alert>> {
        let (binance, kraken) = (self.map(|t| Leg::from(&t)), kraken.map(|t| Leg::from(&t)));
        binance
            .interval_join_with(kraken, params.delta_us, restore, stats, move |b: &Leg, k: &Leg| {
                detect(b, k, &params)
            })
            .flat_map(|alert| alert)
            .map(|mut alert| {
                alert.detected_us = now_us();
                alert
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::record::test_trade;

    fn trade(exchange: Exchange, id: u64, price: &str, event_us: i64) -> Leg {
        Leg::from(&test_trade(exchange, id, price, event_us))
    }

    const P: ArbitrageParams = ArbitrageParams {
        delta_us: 500_000,
        binance_fee_bps: 2.0,
        kraken_fee_bps: 5.0,
        threshold_bps: 1.0,
    };

    #[test]
    fn spread_is_net_of_both_fees_and_picks_the_cheap_side() {
        // Buy Binance at 100.00, sell Kraken at 100.20: 20 bps gross, 7 bps of fees.
        let a = detect(
            &trade(Exchange::Binance, 1, "100.00", 0),
            &trade(Exchange::Kraken, 2, "100.20", 10_000),
            &P,
        )
        .unwrap();
        assert_eq!((a.buy_exchange, a.sell_exchange), (Exchange::Binance, Exchange::Kraken));
        let expected = (100.20 * (1.0 - 5e-4) - 100.0 * (1.0 + 2e-4)) / 100.0 * 1e4;
        assert!(
            (a.spread_bps() - expected).abs() < 1e-3,
            "{} vs {expected}",
            a.spread_bps()
        );
        assert_eq!(a.produce_ms, 15);
        // The other way round: buy Kraken.
        let b = detect(
            &trade(Exchange::Binance, 1, "100.20", 0),
            &trade(Exchange::Kraken, 2, "100.00", 10_000),
            &P,
        )
        .unwrap();
        assert_eq!((b.buy_exchange, b.sell_exchange), (Exchange::Kraken, Exchange::Binance));
        // Within fees: nothing.
        assert!(
            detect(
                &trade(Exchange::Binance, 1, "100.00", 0),
                &trade(Exchange::Kraken, 2, "100.07", 0),
                &P
            )
            .is_none()
        );
        // The id depends only on the two trades.
        assert_eq!(a.alert_id, Alert::id_of("binance:BTCUSDT:1", "kraken:BTCUSDT:2"));
        assert_eq!(Alert::id_of("a", "b").len(), 16);
    }
}
