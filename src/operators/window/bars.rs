//! Market bars: open, high, low, close, volume, an exact VWAP and the trade
//! count, as a window [`Aggregate`] that merges.
//!
//! * **Open and close are decided by event time, not by arrival**: the open
//!   is the trade with the least `(event time, trade id)`, the close the one
//!   with the greatest. Ties of both (possible only across exchanges) fall to
//!   the price, so the order is total and a bar never depends on the order
//!   trades reach a worker.
//! * **Exact sums.** The volume is a sum of [`Decimal`]s, and the notional
//!   Σ price·quantity a sum of exact products ([`Wide`]); the VWAP divides
//!   them once, with a stated [`Rounding`]. Nothing is rounded before that,
//!   so bars merged in any grouping equal the bar of all their trades.
//! * **[`Merge`]** makes bars roll up: 1-minute bars into 1-hour ones (a
//!   window over the 1-minute results, see the blanket
//!   [`Aggregate`]`<`[`Windowed`]`>`), and per-exchange bars into a
//!   cross-exchange bar per symbol, whose VWAP is the cross-exchange VWAP.
//!
//! A volume beyond what a [`Decimal`] holds (10^20) is not an error of the
//! job: the bar is flagged ([`Ohlcv::overflowed`]), its volume, notional and
//! VWAP read `None`, and the other fields stay exact. Quantities are never
//! negative, so every grouping of the same trades overflows alike.

use super::{Aggregate, Merge, Windowed};
use crate::decimal::{Decimal, Rounding, Wide};
use crate::record::{Exchange, Symbol, Trade};
use serde::{Deserialize, Serialize};

/// Where a trade sits in a bar's order: by event time, then by trade id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TradeAt {
    /// The trade's event time, µs since the Unix epoch.
    pub event_us: u64,
    /// The exchange's trade id.
    pub trade_id: u64,
}

/// An OHLCV bar of the trades added or merged into it (module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ohlcv {
    trades: u64,
    open: Decimal,
    open_at: TradeAt,
    high: Decimal,
    low: Decimal,
    close: Decimal,
    close_at: TradeAt,
    /// Σ quantity; zero once overflowed.
    volume: Decimal,
    /// Σ price·quantity, exact; zero once overflowed.
    notional: Wide,
    overflowed: bool,
}

impl Ohlcv {
    /// The bar of one trade.
    pub fn of_trade(at: TradeAt, price: Decimal, quantity: Decimal) -> Ohlcv {
        Ohlcv {
            trades: 1,
            open: price,
            open_at: at,
            high: price,
            low: price,
            close: price,
            close_at: at,
            volume: quantity,
            notional: price.mul_exact(quantity),
            overflowed: false,
        }
    }

    /// Adds a trade.
    pub fn add_trade(&mut self, at: TradeAt, price: Decimal, quantity: Decimal) {
        self.merge(&Ohlcv::of_trade(at, price, quantity));
    }

    /// The number of trades.
    pub fn trades(&self) -> u64 {
        self.trades
    }

    /// True when no trade was added.
    pub fn is_empty(&self) -> bool {
        self.trades == 0
    }

    /// The price of the first trade by `(event time, trade id)`.
    pub fn open(&self) -> Option<Decimal> {
        (!self.is_empty()).then_some(self.open)
    }

    /// The highest price.
    pub fn high(&self) -> Option<Decimal> {
        (!self.is_empty()).then_some(self.high)
    }

    /// The lowest price.
    pub fn low(&self) -> Option<Decimal> {
        (!self.is_empty()).then_some(self.low)
    }

    /// The price of the last trade by `(event time, trade id)`.
    pub fn close(&self) -> Option<Decimal> {
        (!self.is_empty()).then_some(self.close)
    }

    /// When the opening trade happened.
    pub fn open_at(&self) -> Option<TradeAt> {
        (!self.is_empty()).then_some(self.open_at)
    }

    /// When the closing trade happened.
    pub fn close_at(&self) -> Option<TradeAt> {
        (!self.is_empty()).then_some(self.close_at)
    }

    /// Σ quantity, exact; `None` if it overflowed.
    pub fn volume(&self) -> Option<Decimal> {
        (!self.overflowed).then_some(self.volume)
    }

    /// Σ price·quantity, exact; `None` if the volume overflowed.
    pub fn notional(&self) -> Option<Wide> {
        (!self.overflowed).then_some(self.notional)
    }

    /// The volume-weighted average price, Σ price·quantity ÷ Σ quantity,
    /// rounded once to 18 digits; `None` without volume or on overflow.
    pub fn vwap(&self, rounding: Rounding) -> Option<Decimal> {
        self.notional()?.checked_div(self.volume()?, rounding)
    }

    /// Whether the volume exceeded what a [`Decimal`] holds (module docs).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

impl Merge for Ohlcv {
    fn merge(&mut self, other: &Ohlcv) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = other.clone();
            return;
        }
        if (other.open_at, other.open) < (self.open_at, self.open) {
            (self.open_at, self.open) = (other.open_at, other.open);
        }
        if (other.close_at, other.close) > (self.close_at, self.close) {
            (self.close_at, self.close) = (other.close_at, other.close);
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
        self.trades = self.trades.saturating_add(other.trades);
        let sums = match (self.overflowed, other.overflowed) {
            (false, false) => self
                .volume
                .checked_add(other.volume)
                .zip(self.notional.checked_add(other.notional)),
            _ => None,
        };
        match sums {
            Some((volume, notional)) => (self.volume, self.notional) = (volume, notional),
            None => (self.volume, self.notional, self.overflowed) = (Decimal::ZERO, Wide::ZERO, true),
        }
    }
}

/// Trades make bars: by their event time and trade id.
impl Aggregate<Trade> for Ohlcv {
    type Output = Ohlcv;
    fn add(&mut self, t: &Trade) {
        let at = TradeAt {
            event_us: t.event_time(),
            trade_id: t.trade_id,
        };
        self.add_trade(at, t.price, t.quantity);
    }
    fn finish(self) -> Ohlcv {
        self
    }
}

/// A bar as a window operator emits it.
pub type Bar<K> = Windowed<K, Ohlcv>;

/// The key of per-exchange bars: exchange and symbol.
pub fn by_exchange_symbol(t: &Trade) -> (Exchange, Symbol) {
    (t.exchange, t.symbol)
}

/// The key of cross-exchange bars of trades: the symbol.
pub fn by_symbol(t: &Trade) -> Symbol {
    t.symbol
}

/// The key of cross-exchange bars rolled up from per-exchange bars: the symbol.
pub fn bar_symbol(bar: &Bar<(Exchange, Symbol)>) -> Symbol {
    bar.key.1
}

/// A bar as a table row: the columns of `ohlcv_1m` and its roll-ups,
/// partitioned by `day(window_start)`. `exchange` is null for bars across
/// exchanges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, crate::sink::iceberg::TableRow)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::parse_decimal;
    use rand::rngs::SmallRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn d(text: &str) -> Decimal {
        parse_decimal(text).expect("a decimal")
    }

    fn at(event_us: u64, trade_id: u64) -> TradeAt {
        TradeAt { event_us, trade_id }
    }

    /// Random trades: few distinct event times (ties), prices with up to 10
    /// decimals, quantities with up to 8.
    fn trades(rng: &mut SmallRng, n: usize) -> Vec<(TradeAt, Decimal, Decimal)> {
        (0..n)
            .map(|i| {
                let price = Decimal(rng.random_range(1..1_000_000_000_000i128) * 100_000_000);
                let quantity = Decimal(rng.random_range(1..10_000_000_000i128) * 10_000_000_000);
                (at(rng.random_range(0..20) * 1_000, i as u64 % 7), price, quantity)
            })
            .collect()
    }

    fn bar(trades: &[(TradeAt, Decimal, Decimal)]) -> Ohlcv {
        let mut bar = Ohlcv::default();
        for (at, price, quantity) in trades {
            bar.add_trade(*at, *price, *quantity);
        }
        bar
    }

    #[test]
    fn a_bar_by_hand() {
        let mut b = Ohlcv::default();
        assert!(b.is_empty() && b.open().is_none() && b.vwap(Rounding::HalfEven).is_none());
        // Added out of order; ids 7 and 3 tie at 2_000 µs.
        b.add_trade(at(2_000, 7), d("101"), d("2"));
        b.add_trade(at(1_000, 9), d("100"), d("1"));
        b.add_trade(at(2_000, 3), d("99.5"), d("0.5"));
        b.add_trade(at(1_500, 1), d("102"), d("0"));
        assert_eq!(b.open(), Some(d("100")));
        assert_eq!(b.close(), Some(d("101")), "the later id closes");
        assert_eq!((b.high(), b.low()), (Some(d("102")), Some(d("99.5"))));
        assert_eq!(b.close_at(), Some(at(2_000, 7)));
        assert_eq!(b.volume(), Some(d("3.5")));
        assert_eq!(b.trades(), 4);
        // (100 + 202 + 49.75) / 3.5 = 100.5 exactly.
        assert_eq!(b.vwap(Rounding::HalfEven), Some(d("100.5")));
        // 5 / 3: rounded once, as stated.
        let mut c = Ohlcv::default();
        c.add_trade(at(0, 1), d("1"), d("1"));
        c.add_trade(at(0, 2), d("2"), d("2"));
        assert_eq!(c.vwap(Rounding::HalfEven), Some(d("1.666666666666666667")));
        assert_eq!(c.vwap(Rounding::Down), Some(d("1.666666666666666666")));
    }

    /// Merging the bars of any split of the trades, in any grouping and
    /// order, equals adding all the trades to one bar.
    #[test]
    fn merge_is_associative_and_commutative() {
        for seed in 0..200 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let n = rng.random_range(1..60);
            let all = trades(&mut rng, n);
            let whole = bar(&all);
            let mut shuffled = all.clone();
            shuffled.shuffle(&mut rng);
            assert_eq!(bar(&shuffled), whole, "seed {seed}: order");
            // Random chunks, merged as a random tree.
            let mut parts: Vec<Ohlcv> = Vec::new();
            let mut rest = &shuffled[..];
            while !rest.is_empty() {
                let n = rng.random_range(0..=rest.len());
                parts.push(bar(&rest[..n]));
                rest = &rest[n..];
            }
            while parts.len() > 1 {
                let i = rng.random_range(0..parts.len() - 1);
                let right = parts.remove(i + 1);
                if rng.random_bool(0.5) {
                    parts[i].merge(&right);
                } else {
                    let mut left = right;
                    left.merge(&parts[i]);
                    parts[i] = left;
                }
            }
            assert_eq!(parts.pop().unwrap_or_default(), whole, "seed {seed}: grouping");
        }
    }

    #[test]
    fn empty_bars_are_the_identity() {
        let mut rng = SmallRng::seed_from_u64(1);
        let b = bar(&trades(&mut rng, 5));
        let mut x = b.clone();
        x.merge(&Ohlcv::default());
        assert_eq!(x, b);
        let mut e = Ohlcv::default();
        e.merge(&b);
        assert_eq!(e, b);
    }

    /// 1-minute bars rolled up (through the window aggregate of results)
    /// equal the 1-hour bar of the same trades; per-exchange bars merged per
    /// symbol give the cross-exchange bar and VWAP.
    #[test]
    fn minute_bars_roll_up_into_hours_and_across_exchanges() {
        const MINUTE: u64 = 60_000_000;
        let mut rng = SmallRng::seed_from_u64(7);
        let mut hour = Ohlcv::default();
        let mut across = Ohlcv::default();
        let mut by_exchange = [Ohlcv::default(), Ohlcv::default()];
        for minute in 0..60 {
            let mut one = [Ohlcv::default(), Ohlcv::default()];
            let n = rng.random_range(0..5);
            for (t_at, price, quantity) in trades(&mut rng, n) {
                let exchange = rng.random_range(0..2);
                let t_at = at(minute * MINUTE + t_at.event_us, t_at.trade_id);
                one[exchange].add_trade(t_at, price, quantity);
                hour.add_trade(t_at, price, quantity);
            }
            for (exchange, b) in one.into_iter().enumerate() {
                let result = Windowed {
                    key: exchange,
                    start_us: minute * MINUTE,
                    end_us: (minute + 1) * MINUTE,
                    value: b,
                };
                Aggregate::add(&mut by_exchange[exchange], &result);
                Aggregate::add(&mut across, &result);
            }
        }
        assert_eq!(across, hour);
        let mut merged = by_exchange[0].clone();
        merged.merge(&by_exchange[1]);
        assert_eq!(merged, hour);
        assert_eq!(
            across.vwap(Rounding::HalfEven),
            hour.notional()
                .unwrap()
                .checked_div(hour.volume().unwrap(), Rounding::HalfEven)
        );
    }

    #[test]
    fn trades_make_bars_by_event_time_and_trade_id() {
        let t = |id, us, price: &str| Trade {
            quantity: d("0.25"),
            ..crate::record::test_trade(Exchange::Kraken, id, price, us)
        };
        let mut b = Ohlcv::default();
        for trade in [t(5, 10, "3"), t(4, 10, "2"), t(6, 9, "1"), t(1, 11, "4")] {
            Aggregate::add(&mut b, &trade);
        }
        assert_eq!((b.open(), b.close()), (Some(d("1")), Some(d("4"))));
        assert_eq!(b.volume(), Some(d("1")));
        assert_eq!(b.vwap(Rounding::HalfEven), Some(d("2.5")));
        assert_eq!(
            by_exchange_symbol(&t(1, 1, "1")),
            (Exchange::Kraken, Symbol::from("BTC/USDT"))
        );
    }

    #[test]
    fn overflow_is_flagged_in_every_grouping() {
        // 6·10^19: two of them are beyond what a Decimal holds.
        let big = Decimal(6 * 10i128.pow(37));
        let a = Ohlcv::of_trade(at(1, 1), d("2"), big);
        let mut ab = a.clone();
        ab.add_trade(at(2, 2), d("3"), big);
        assert!(ab.overflowed());
        assert_eq!((ab.volume(), ab.vwap(Rounding::HalfEven)), (None, None));
        assert_eq!((ab.open(), ab.close(), ab.trades()), (Some(d("2")), Some(d("3")), 2));
        let mut ba = Ohlcv::of_trade(at(2, 2), d("3"), big);
        ba.merge(&a);
        assert_eq!(ab, ba);
        let mut more = ab.clone();
        more.add_trade(at(3, 3), d("1"), d("1"));
        assert!(more.overflowed());
    }
}
