//! A deterministic, two-exchange market-data feed generator.
//!
//! `k2 produce`, the integration tests and the benchmarks all need a stream of
//! exchange-native messages that looks like the real thing, including the
//! things that go wrong in production: re-delivered messages, corrupted
//! messages and trades arriving out of order. They must also be able to check
//! the pipeline's output against what was sent. Hence this module:
//!
//! * **Real formats.** A [`Feed`] emits Binance spot `trade` events or Kraken
//!   WebSocket v2 `trade` messages, byte-compatible with what the decoder in
//!   [`k2::source::kafka::decode`] expects from the exchanges, with the
//!   native symbol as the Kafka key.
//! * **Known ground truth.** Every message says what it is
//!   ([`MessageKind`]): the message ids of the trades it carries, or that it
//!   is an exact duplicate of an earlier message, or why it is malformed.
//!   Every malformed kind is guaranteed to fail decoding.
//! * **Deterministic.** Output depends only on the [`FeedConfig`] (seed
//!   included) and the clock values passed to [`Feed::next_message`]. The
//!   generator uses its own SplitMix64 PRNG rather than `rand`'s `SmallRng`,
//!   whose output is explicitly not stable across platforms and versions, so
//!   recorded expectations stay valid.
//! * **Cross-exchange coherence.** Prices follow a smooth multi-scale random
//!   walk that is a pure function of (seed, base asset, time), so a Binance
//!   and a Kraken feed built from the same config quote the same asset within
//!   a few basis points at the same time, except during occasional
//!   divergence episodes of 10-50 bps, which cross-exchange analytics (e.g.
//!   arbitrage detection) can find.
//! * **Fast.** Messages are written directly into byte buffers with
//!   hand-rolled number formatting, so generation is not the bottleneck of a
//!   producer benchmark.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use k2::record::Exchange;

/// How many recent valid messages a duplicate may be drawn from.
const DUPLICATE_WINDOW: usize = 100;

/// Configuration shared by the feeds of all exchanges.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeedConfig {
    /// Seed of every random choice. Feeds of different exchanges built from
    /// the same seed share their price paths.
    pub seed: u64,
    /// Base assets to trade, e.g. `["BTC", "ETH", "SOL", "PEPE"]`: upper-case
    /// ASCII letters and digits. Known assets (BTC, ETH, SOL, PEPE, DOGE, XRP)
    /// get realistic price levels and precisions; others trade around 100.
    pub symbols: Vec<String>,
    /// The quote asset of every symbol, e.g. `"USDT"`. It must be one of
    /// [`BINANCE_QUOTE_ASSETS`](k2::source::kafka::decode::BINANCE_QUOTE_ASSETS)
    /// so that Binance symbols can be split.
    pub quote: String,
    /// Fraction of messages, in `[0, 1]`, that are byte-exact re-sends of a
    /// recent valid message.
    pub duplicate_fraction: f64,
    /// Fraction of messages, in `[0, 1]`, that are malformed.
    pub malformed_fraction: f64,
    /// Maximum lag, in ms, of a trade's event time behind the clock passed to
    /// [`Feed::next_message`] (bounded out-of-orderness). Must be `>= 0`.
    pub max_out_of_order_ms: i64,
    /// Maximum number of trades in one Kraken message (at least 1). Binance
    /// messages always carry one trade.
    pub max_trades_per_message: usize,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            seed: 42,
            symbols: ["BTC", "ETH", "SOL", "PEPE"].map(String::from).to_vec(),
            quote: "USDT".to_owned(),
            duplicate_fraction: 0.01,
            malformed_fraction: 0.001,
            max_out_of_order_ms: 500,
            max_trades_per_message: 3,
        }
    }
}

impl FeedConfig {
    /// Checks the configuration, returning a human-readable reason if a
    /// [`Feed`] cannot be built from it.
    pub fn validate(&self) -> Result<(), String> {
        if self.symbols.is_empty() {
            return Err("feed: `symbols` is empty".to_owned());
        }
        for base in &self.symbols {
            let native = native_symbol(Exchange::Binance, base, &self.quote);
            let expected = format!("{base}/{}", self.quote);
            if k2::source::kafka::decode::normalize_binance_symbol(&native).as_deref() != Some(expected.as_str()) {
                return Err(format!(
                    "feed: symbol `{base}` with quote `{}` is not a valid pair (assets must be \
                     upper-case letters and digits, and the quote a known Binance quote asset)",
                    self.quote
                ));
            }
        }
        for (name, f) in [
            ("duplicate_fraction", self.duplicate_fraction),
            ("malformed_fraction", self.malformed_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("feed: `{name}` must be in [0, 1], got {f}"));
            }
        }
        if self.duplicate_fraction + self.malformed_fraction > 1.0 {
            return Err("feed: `duplicate_fraction + malformed_fraction` exceeds 1".to_owned());
        }
        if !(0..=86_400_000).contains(&self.max_out_of_order_ms) {
            return Err(format!(
                "feed: `max_out_of_order_ms` must be in [0, 86400000], got {}",
                self.max_out_of_order_ms
            ));
        }
        if self.max_trades_per_message == 0 {
            return Err("feed: `max_trades_per_message` must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// The exchange's own spelling of a symbol: `BTCUSDT` on Binance, `BTC/USDT`
/// on Kraken. This is also the Kafka key of the feed's messages.
pub fn native_symbol(exchange: Exchange, base: &str, quote: &str) -> String {
    match exchange {
        Exchange::Binance => format!("{base}{quote}"),
        Exchange::Kraken => format!("{base}/{quote}"),
    }
}

/// What a generated message is, so tests can check the pipeline's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// A new, well-formed message carrying these trades, in order.
    Valid {
        /// The `message_id` of each trade in the message.
        message_ids: Vec<String>,
    },
    /// A byte-exact re-send, with the same key, of one of the last ~100 valid
    /// messages, as a redundant collector or a producer retry would produce.
    Duplicate {
        /// The `message_id` of each trade in the message (already sent).
        message_ids: Vec<String>,
    },
    /// A message that the decoder must reject. Its trades' ids are consumed
    /// (as if the message had been corrupted in transit), so per-symbol trade
    /// ids of valid messages can have gaps.
    Malformed {
        /// The kind of damage, e.g. `"truncated JSON"`.
        why: &'static str,
    },
}

/// One generated Kafka message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedMessage {
    /// The Kafka key: the native symbol (see [`native_symbol`]).
    pub key: Vec<u8>,
    /// The Kafka payload: exchange-native JSON (or damaged bytes).
    pub payload: Vec<u8>,
    /// What the message is.
    pub kind: MessageKind,
}

/// The generator of one exchange's messages. See the module docs.
#[derive(Clone, Debug)]
pub struct Feed {
    exchange: Exchange,
    rng: SplitMix64,
    symbols: Vec<SymbolState>,
    duplicate_fraction: f64,
    malformed_fraction: f64,
    max_out_of_order_us: i64,
    max_trades: usize,
    recent: VecDeque<Recent>,
}

#[derive(Clone, Debug)]
struct SymbolState {
    native: String,
    /// Key of the shared price path: depends on the seed and base asset only.
    walk_key: u64,
    level: f64,
    price_dp: u32,
    qty_dp: u32,
    next_trade_id: u64,
}

#[derive(Clone, Debug)]
struct Recent {
    symbol: usize,
    payload: Vec<u8>,
    message_ids: Vec<String>,
}

/// One generated trade, with price and quantity as integers of `10^-dp`.
#[derive(Clone, Copy, Debug)]
struct GenTrade {
    trade_id: u64,
    price_units: u64,
    qty_units: u64,
    taker_buys: bool,
    event_us: i64,
}

/// How to damage a message while writing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    None,
    /// Write a field with the wrong JSON type (variant number).
    WrongType(u64),
    /// Leave a required field out (variant number).
    Missing(u64),
    /// Write an invalid decimal (variant number).
    BadDecimal(u64),
    /// Write an invalid timestamp (variant number, Kraken only).
    BadTimestamp(u64),
}

const WHY_TRUNCATED: &str = "truncated JSON";
const WHY_NON_UTF8: &str = "non-UTF-8 bytes";
const WHY_WRONG_TYPE: &str = "wrong field type";
const WHY_MISSING: &str = "missing field";
const WHY_GARBAGE: &str = "garbage text";
const WHY_DECIMAL: &str = "invalid decimal";
const WHY_TIMESTAMP: &str = "invalid timestamp";

/// Decimal strings that [`parse_decimal`](k2::source::kafka::decode::parse_decimal) rejects.
const BAD_DECIMAL_STRINGS: &[&str] = &[
    "1.2.3",
    "abc",
    "",
    "1,5",
    "0x1A",
    ".5",
    "1.",
    "+1",
    "1e",
    "NaN",
    "--1",
    "12 34",
    "0.0000000000000000001",
];

/// Well-formed JSON numbers that are not valid decimals at scale 18.
const BAD_DECIMAL_NUMBERS: &[&str] = &["0.0000000000000000000001", "123456789012345678901234", "1e-19", "2e21"];

/// Timestamps that are not valid RFC 3339.
const BAD_TIMESTAMPS: &[&str] = &[
    "2023-13-01T00:00:00Z",
    "2023-02-29T12:00:00Z",
    "2023-09-25T24:00:00Z",
    "2023-09-25 07:49:37.708706Z",
    "2023-09-25T07:49:37.708706",
    "2023-09-25T07:49:37.Z",
    "yesterday",
    "",
];

const GARBAGE: &[&str] = &[
    "<html><body><h1>502 Bad Gateway</h1></body></html>",
    "trade BTCUSDT 60000 0.1",
    "#!",
    "{{{{",
    "}",
    "\u{0}\u{1}\u{2}",
];

impl Feed {
    /// Creates the feed of `exchange`.
    ///
    /// # Panics
    ///
    /// If `cfg` is invalid (see [`FeedConfig::validate`]).
    pub fn new(exchange: Exchange, cfg: &FeedConfig) -> Feed {
        if let Err(e) = cfg.validate() {
            panic!("invalid feed configuration: {e}");
        }
        let exchange_salt = match exchange {
            Exchange::Binance => 0xb1_7a_ce,
            Exchange::Kraken => 0x4b_4e_4e,
        };
        let symbols = cfg
            .symbols
            .iter()
            .map(|base| {
                let walk_key = mix64(cfg.seed ^ mix64(fnv1a(base.as_bytes())));
                let p = profile(base);
                let price_dp = match exchange {
                    Exchange::Binance => p.price_dp.min(8),
                    Exchange::Kraken => p.price_dp,
                };
                let id_key = mix64(walk_key ^ mix64(exchange_salt));
                SymbolState {
                    native: native_symbol(exchange, base, &cfg.quote),
                    walk_key,
                    level: p.level,
                    price_dp,
                    qty_dp: p.qty_dp,
                    next_trade_id: 100_000_000 + id_key % 900_000_000,
                }
            })
            .collect();
        Feed {
            exchange,
            rng: SplitMix64(mix64(cfg.seed ^ mix64(exchange_salt))),
            symbols,
            duplicate_fraction: cfg.duplicate_fraction,
            malformed_fraction: cfg.malformed_fraction,
            max_out_of_order_us: cfg.max_out_of_order_ms * 1000,
            max_trades: match exchange {
                Exchange::Binance => 1,
                Exchange::Kraken => cfg.max_trades_per_message,
            },
            recent: VecDeque::with_capacity(DUPLICATE_WINDOW),
        }
    }

    /// The exchange whose messages this feed generates.
    pub fn exchange(&self) -> Exchange {
        self.exchange
    }

    /// Generates the next message.
    ///
    /// `now_us` is the current event time in µs since the Unix epoch: the
    /// producer passes the wall clock, tests a synthetic clock. Each trade's
    /// event time is `now_us` minus a random lag of at most
    /// `max_out_of_order_ms` (clamped at 0); Binance carries milliseconds, so
    /// its decoded event times are additionally floored to the millisecond.
    /// `now_us` should lie before the year 10000.
    pub fn next_message(&mut self, now_us: i64) -> FeedMessage {
        let r = self.rng.unit();
        if r < self.malformed_fraction {
            return self.malformed(now_us);
        }
        if r < self.malformed_fraction + self.duplicate_fraction && !self.recent.is_empty() {
            let i = self.rng.below(self.recent.len() as u64) as usize;
            let old = &self.recent[i];
            return FeedMessage {
                key: self.symbols[old.symbol].native.as_bytes().to_vec(),
                payload: old.payload.clone(),
                kind: MessageKind::Duplicate {
                    message_ids: old.message_ids.clone(),
                },
            };
        }
        let (symbol, payload, message_ids) = self.build(now_us, Damage::None);
        // Without duplicates, skip copying into the history.
        if self.duplicate_fraction > 0.0 {
            if self.recent.len() == DUPLICATE_WINDOW {
                self.recent.pop_front();
            }
            self.recent.push_back(Recent {
                symbol,
                payload: payload.clone(),
                message_ids: message_ids.clone(),
            });
        }
        FeedMessage {
            key: self.symbols[symbol].native.as_bytes().to_vec(),
            payload,
            kind: MessageKind::Valid { message_ids },
        }
    }

    /// A damaged message. Its trades' ids are consumed, as if the message
    /// had been corrupted on the way.
    fn malformed(&mut self, now_us: i64) -> FeedMessage {
        let kinds: &[&'static str] = match self.exchange {
            Exchange::Binance => &[
                WHY_TRUNCATED,
                WHY_NON_UTF8,
                WHY_WRONG_TYPE,
                WHY_MISSING,
                WHY_GARBAGE,
                WHY_DECIMAL,
            ],
            Exchange::Kraken => &[
                WHY_TRUNCATED,
                WHY_NON_UTF8,
                WHY_WRONG_TYPE,
                WHY_MISSING,
                WHY_GARBAGE,
                WHY_DECIMAL,
                WHY_TIMESTAMP,
            ],
        };
        let why = kinds[self.rng.below(kinds.len() as u64) as usize];
        let variant = self.rng.next_u64();
        let damage = match why {
            WHY_WRONG_TYPE => Damage::WrongType(variant),
            WHY_MISSING => Damage::Missing(variant),
            WHY_DECIMAL => Damage::BadDecimal(variant),
            WHY_TIMESTAMP => Damage::BadTimestamp(variant),
            _ => Damage::None,
        };
        let (symbol, mut payload, _) = self.build(now_us, damage);
        match why {
            WHY_TRUNCATED => {
                // Any strict prefix of a JSON object is incomplete.
                let len = 1 + self.rng.below(payload.len() as u64 - 1) as usize;
                payload.truncate(len);
            }
            WHY_NON_UTF8 => {
                // 0xFF never occurs in UTF-8; 0xE9 (Latin-1 'é') and 0xC3 are
                // lead bytes that the following ASCII byte cannot continue.
                let at = self.rng.below(payload.len() as u64 - 1) as usize;
                payload[at] = [0xff, 0xe9, 0xc3][(variant % 3) as usize];
            }
            WHY_GARBAGE => {
                payload.clear();
                payload.extend_from_slice(GARBAGE[(variant % GARBAGE.len() as u64) as usize].as_bytes());
                let extra = self.rng.below(24);
                for _ in 0..extra {
                    payload.push(b' ' + self.rng.below(95) as u8);
                }
            }
            _ => {}
        }
        FeedMessage {
            key: self.symbols[symbol].native.as_bytes().to_vec(),
            payload,
            kind: MessageKind::Malformed { why },
        }
    }

    /// Generates the trades of one message and writes it, applying `damage`.
    fn build(&mut self, now_us: i64, damage: Damage) -> (usize, Vec<u8>, Vec<String>) {
        let symbol = self.rng.below(self.symbols.len() as u64) as usize;
        let count = 1 + self.rng.below(self.max_trades as u64) as usize;

        let mut lags: Vec<i64> = (0..count)
            .map(|_| self.rng.below(self.max_out_of_order_us as u64 + 1) as i64)
            .collect();
        // Trades in one message are in time order, like their ids.
        lags.sort_unstable_by(|a, b| b.cmp(a));

        let mut trades = Vec::with_capacity(count);
        let mut message_ids = Vec::with_capacity(count);
        for lag in lags {
            let event_us = now_us.saturating_sub(lag).max(0);
            let trade = self.trade(symbol, event_us);
            let s = &self.symbols[symbol];
            message_ids.push(message_id(self.exchange, &s.native, trade.trade_id));
            trades.push(trade);
        }

        let mut payload = Vec::with_capacity(96 + 200 * count);
        match self.exchange {
            Exchange::Binance => self.write_binance(&mut payload, symbol, &trades[0], damage),
            Exchange::Kraken => self.write_kraken(&mut payload, symbol, &trades, damage),
        }
        (symbol, payload, message_ids)
    }

    fn trade(&mut self, symbol: usize, event_us: i64) -> GenTrade {
        let s = &mut self.symbols[symbol];
        let trade_id = s.next_trade_id;
        s.next_trade_id += 1;
        let reference = exchange_price(s.walk_key, s.level, self.exchange, event_us);
        // Each trade lands within ±1.5 bps of the exchange's reference price.
        let price = reference * (1.0 + (self.rng.unit() - 0.5) * 3e-4);
        let price_units = ((price * 10f64.powi(s.price_dp as i32)).round() as u64).max(1);
        // Trade notional in quote units is log-normal: median 300, long tail.
        let notional = (300f64.ln() + 1.3 * self.rng.normal()).exp().clamp(1.0, 5e6);
        let qty_units = ((notional / price * 10f64.powi(s.qty_dp as i32)).round() as u64).max(1);
        GenTrade {
            trade_id,
            price_units,
            qty_units,
            taker_buys: self.rng.below(2) == 0,
            event_us,
        }
    }

    fn write_binance(&mut self, buf: &mut Vec<u8>, symbol: usize, t: &GenTrade, damage: Damage) {
        let s = &self.symbols[symbol];
        let trade_ms = t.event_us.div_euclid(1000);
        let event_ms = trade_ms + self.rng.below(4) as i64;
        // Which field to damage: 0 e, 1 s, 2 t, 3 p, 4 q, 5 T, 6 m.
        let (wrong, missing, bad_dec) = match damage {
            Damage::WrongType(v) => (Some(v % 7), None, None),
            Damage::Missing(v) => (None, Some(v % 7), None),
            Damage::BadDecimal(v) => (None, None, Some(v)),
            Damage::None | Damage::BadTimestamp(_) => (None, None, None),
        };
        let mut w = ObjectWriter::new(buf);
        if missing != Some(0) {
            w.key(b"e");
            w.raw(if wrong == Some(0) { b"null" } else { b"\"trade\"" });
        }
        w.key(b"E");
        w.int(event_ms);
        if missing != Some(1) {
            w.key(b"s");
            if wrong == Some(1) {
                w.raw(b"42");
            } else {
                w.string(s.native.as_bytes());
            }
        }
        if missing != Some(2) {
            w.key(b"t");
            if wrong == Some(2) {
                w.buf.push(b'"');
                push_u64(w.buf, t.trade_id);
                w.buf.push(b'"');
            } else {
                push_u64(w.buf, t.trade_id);
            }
        }
        for (index, name, units, dp) in [
            (3u64, b"p", t.price_units, s.price_dp),
            (4, b"q", t.qty_units, s.qty_dp),
        ] {
            if missing == Some(index) {
                continue;
            }
            w.key(name);
            match (wrong, bad_dec) {
                (Some(i), _) if i == index => {
                    // p as a bool, q as a JSON number instead of a string.
                    if index == 3 {
                        w.raw(b"true");
                    } else {
                        push_plain(w.buf, units, dp);
                    }
                }
                (_, Some(v)) if (v >> 32) % 2 == index - 3 => {
                    let bad = BAD_DECIMAL_STRINGS[(v % BAD_DECIMAL_STRINGS.len() as u64) as usize];
                    w.string(bad.as_bytes());
                }
                _ => {
                    w.buf.push(b'"');
                    push_fixed(w.buf, units, dp, 8);
                    w.buf.push(b'"');
                }
            }
        }
        if missing != Some(5) {
            w.key(b"T");
            if wrong == Some(5) {
                w.buf.push(b'"');
                push_i64(w.buf, trade_ms);
                w.buf.push(b'"');
            } else {
                w.int(trade_ms);
            }
        }
        if missing != Some(6) {
            w.key(b"m");
            if wrong == Some(6) {
                w.raw(b"\"yes\"");
            } else {
                // m = buyer is maker: true when the taker sold.
                w.raw(if t.taker_buys { b"false" } else { b"true" });
            }
        }
        w.key(b"M");
        w.raw(b"true");
        w.end();
    }

    fn write_kraken(&mut self, buf: &mut Vec<u8>, symbol: usize, trades: &[GenTrade], damage: Damage) {
        let s = &self.symbols[symbol];
        let kind: &[u8] = if self.rng.below(20) == 0 {
            b"snapshot"
        } else {
            b"update"
        };
        // Damage one trade of the message; variants 6-8 of `Missing` drop an
        // envelope field instead.
        let target = self.rng.below(trades.len() as u64) as usize;
        let missing_envelope = match damage {
            Damage::Missing(v) if v % 9 >= 6 => Some(v % 9 - 6),
            _ => None,
        };
        let mut w = ObjectWriter::new(buf);
        if missing_envelope != Some(0) {
            w.key(b"channel");
            w.string(b"trade");
        }
        if missing_envelope != Some(1) {
            w.key(b"type");
            w.string(kind);
        }
        if missing_envelope == Some(2) {
            w.end();
            return;
        }
        w.key(b"data");
        w.buf.push(b'[');
        for (i, t) in trades.iter().enumerate() {
            if i > 0 {
                w.buf.push(b',');
            }
            let damage = if i == target { damage } else { Damage::None };
            // Field indices: 0 symbol, 1 side, 2 price, 3 qty, 4 trade_id, 5 timestamp.
            let (wrong, missing) = match damage {
                Damage::WrongType(v) => (Some(v % 7), None),
                Damage::Missing(v) if v % 9 < 6 => (None, Some(v % 9)),
                _ => (None, None),
            };
            let use_exponent = self.rng.below(2) == 0;
            let mut tw = ObjectWriter::new(w.buf);
            if missing != Some(0) {
                tw.key(b"symbol");
                if wrong == Some(0) {
                    tw.raw(b"null");
                } else {
                    tw.string(s.native.as_bytes());
                }
            }
            if missing != Some(1) {
                tw.key(b"side");
                if wrong == Some(1) {
                    tw.raw(b"1");
                } else {
                    tw.string(if t.taker_buys { b"buy" } else { b"sell" });
                }
            }
            for (index, name, units, dp) in [
                (2u64, &b"price"[..], t.price_units, s.price_dp),
                (3, &b"qty"[..], t.qty_units, s.qty_dp),
            ] {
                if missing == Some(index) {
                    continue;
                }
                tw.key(name);
                match damage {
                    // price as a bool, qty as a string.
                    Damage::WrongType(v) if v % 7 == index => {
                        if index == 2 {
                            tw.raw(b"true");
                        } else {
                            tw.buf.push(b'"');
                            push_plain(tw.buf, units, dp);
                            tw.buf.push(b'"');
                        }
                    }
                    Damage::BadDecimal(v) if (v >> 32) % 2 == index - 2 => {
                        let bad = BAD_DECIMAL_NUMBERS[(v % BAD_DECIMAL_NUMBERS.len() as u64) as usize];
                        tw.raw(bad.as_bytes());
                    }
                    // Tiny values sometimes in exponent notation, as JSON
                    // encoders may write them.
                    _ if use_exponent && units < 10u64.pow(dp.saturating_sub(4)) => {
                        push_exponent(tw.buf, units, dp);
                    }
                    _ => push_plain(tw.buf, units, dp),
                }
            }
            tw.key(b"ord_type");
            tw.string(if t.taker_buys == (t.trade_id % 3 == 0) {
                b"market"
            } else {
                b"limit"
            });
            if missing != Some(4) {
                tw.key(b"trade_id");
                match wrong {
                    Some(4) => {
                        tw.buf.push(b'"');
                        push_u64(tw.buf, t.trade_id);
                        tw.buf.push(b'"');
                    }
                    Some(6) => {
                        push_u64(tw.buf, t.trade_id);
                        tw.raw(b".5");
                    }
                    _ => push_u64(tw.buf, t.trade_id),
                }
            }
            if missing != Some(5) {
                tw.key(b"timestamp");
                match damage {
                    Damage::WrongType(v) if v % 7 == 5 => tw.int(t.event_us / 1_000_000),
                    Damage::BadTimestamp(v) => {
                        let bad = BAD_TIMESTAMPS[(v % BAD_TIMESTAMPS.len() as u64) as usize];
                        tw.string(bad.as_bytes());
                    }
                    _ => {
                        tw.buf.push(b'"');
                        push_rfc3339(tw.buf, t.event_us);
                        tw.buf.push(b'"');
                    }
                }
            }
            tw.end();
        }
        w.buf.push(b']');
        w.end();
    }
}

// ---------------------------------------------------------------------------
// Prices
// ---------------------------------------------------------------------------

/// Price level and precisions of a base asset.
struct Profile {
    level: f64,
    /// Price decimals on Kraken; Binance uses at most 8.
    price_dp: u32,
    qty_dp: u32,
}

fn profile(base: &str) -> Profile {
    let (level, price_dp, qty_dp) = match base {
        "BTC" | "XBT" => (60_000.0, 2, 5),
        "ETH" => (3_000.0, 2, 4),
        "SOL" => (150.0, 2, 3),
        "PEPE" => (0.000_012_34, 10, 0),
        "DOGE" | "XDG" => (0.15, 6, 0),
        "XRP" => (0.6, 5, 1),
        _ => (100.0, 3, 3),
    };
    Profile {
        level,
        price_dp,
        qty_dp,
    }
}

/// Octaves of the shared price path: (period in µs, amplitude of log-price).
const OCTAVES: [(i64, f64); 6] = [
    (1_000_000, 0.000_2),
    (10_000_000, 0.000_6),
    (60_000_000, 0.001_5),
    (600_000_000, 0.004),
    (3_600_000_000, 0.01),
    (86_400_000_000, 0.03),
];

/// Length of a divergence window, and the chance that a window diverges.
const DIVERGENCE_WINDOW_US: i64 = 10_000_000;
const DIVERGENCE_PER_MILLE: u64 = 50;

/// The reference price of an asset on an exchange at `t_us`.
///
/// The shared part is value noise over several time scales (a smooth,
/// bounded, random-walk-like path), a pure function of `walk_key` and time,
/// so every exchange's feed computes the same path. In a few 10 s windows the
/// exchanges diverge by 10-50 bps (half of it each way).
fn exchange_price(walk_key: u64, level: f64, exchange: Exchange, t_us: i64) -> f64 {
    let mut x = 0.0;
    for (octave, &(period, amplitude)) in OCTAVES.iter().enumerate() {
        let cell = t_us.div_euclid(period);
        let frac = t_us.rem_euclid(period) as f64 / period as f64;
        let key = mix64(walk_key ^ (octave as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let a = noise(key, cell);
        let b = noise(key, cell + 1);
        let smooth = frac * frac * (3.0 - 2.0 * frac);
        x += amplitude * (a + (b - a) * smooth);
    }
    let h = mix64(walk_key ^ 0xd1ce ^ mix64(t_us.div_euclid(DIVERGENCE_WINDOW_US) as u64));
    let divergence = if h % 1000 < DIVERGENCE_PER_MILLE {
        let bps = 10 + (h >> 16) % 41;
        let sign = if (h >> 32) & 1 == 0 { 1.0 } else { -1.0 };
        sign * bps as f64 * 1e-4
    } else {
        0.0
    };
    let half = match exchange {
        Exchange::Binance => divergence / 2.0,
        Exchange::Kraken => -divergence / 2.0,
    };
    level * x.exp() * (1.0 + half)
}

/// A uniform value in `[-1, 1)` for a lattice point.
fn noise(key: u64, cell: i64) -> f64 {
    (mix64(key ^ mix64(cell as u64)) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

// ---------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------

/// SplitMix64's finalizer: a good 64-bit mixing function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64: tiny, fast, and stable forever (unlike `rand`'s `SmallRng`).
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)` (Lemire's multiply-shift; `n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Writes a JSON object's members, handling commas.
struct ObjectWriter<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    fn new(buf: &'a mut Vec<u8>) -> Self {
        buf.push(b'{');
        ObjectWriter { buf, first: true }
    }

    fn key(&mut self, name: &[u8]) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.string(name);
        self.buf.push(b':');
    }

    /// A JSON string; the generator only writes text that needs no escapes.
    fn string(&mut self, s: &[u8]) {
        self.buf.push(b'"');
        self.buf.extend_from_slice(s);
        self.buf.push(b'"');
    }

    fn raw(&mut self, s: &[u8]) {
        self.buf.extend_from_slice(s);
    }

    fn int(&mut self, v: i64) {
        push_i64(self.buf, v);
    }

    fn end(self) {
        self.buf.push(b'}');
    }
}

fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn push_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    push_u64(buf, v.unsigned_abs());
}

/// `units / 10^dp` with exactly `out_dp >= dp` decimals, e.g. `60123.45000000`.
fn push_fixed(buf: &mut Vec<u8>, units: u64, dp: u32, out_dp: u32) {
    let scale = 10u64.pow(dp);
    push_u64(buf, units / scale);
    if out_dp == 0 {
        return;
    }
    buf.push(b'.');
    // The fraction's dp digits, most significant first, then zero padding.
    let mut frac = units % scale;
    let start = buf.len();
    buf.resize(start + dp as usize, b'0');
    for digit in buf[start..].iter_mut().rev() {
        *digit = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    buf.resize(buf.len() + (out_dp - dp) as usize, b'0');
}

/// `{exchange}:{native}:{trade_id}`, as the decoder builds it.
fn message_id(exchange: Exchange, native: &str, trade_id: u64) -> String {
    let mut id = Vec::with_capacity(exchange.name().len() + native.len() + 22);
    id.extend_from_slice(exchange.name().as_bytes());
    id.push(b':');
    id.extend_from_slice(native.as_bytes());
    id.push(b':');
    push_u64(&mut id, trade_id);
    String::from_utf8(id).unwrap_or_default()
}

/// `units / 10^dp` as the shortest plain JSON number, e.g. `0.5147` or `6423`.
fn push_plain(buf: &mut Vec<u8>, units: u64, dp: u32) {
    push_fixed(buf, units, dp, dp);
    if dp > 0 {
        while buf.last() == Some(&b'0') {
            buf.pop();
        }
        if buf.last() == Some(&b'.') {
            buf.pop();
        }
    }
}

/// `units / 10^dp` in exponent notation, e.g. `1.234e-5`.
fn push_exponent(buf: &mut Vec<u8>, units: u64, dp: u32) {
    let start = buf.len();
    push_u64(buf, units);
    let digits = (buf.len() - start) as i64;
    while buf.len() > start + 1 && buf.last() == Some(&b'0') {
        buf.pop();
    }
    if buf.len() > start + 1 {
        buf.insert(start + 1, b'.');
    }
    buf.push(b'e');
    push_i64(buf, digits - 1 - i64::from(dp));
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as Kraken writes timestamps.
fn push_rfc3339(buf: &mut Vec<u8>, us: i64) {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let two = |buf: &mut Vec<u8>, v: i64| {
        buf.push(b'0' + (v / 10) as u8);
        buf.push(b'0' + (v % 10) as u8);
    };
    two(buf, y / 100);
    two(buf, y % 100);
    buf.push(b'-');
    two(buf, m);
    buf.push(b'-');
    two(buf, d);
    buf.push(b'T');
    two(buf, sod / 3600);
    buf.push(b':');
    two(buf, sod / 60 % 60);
    buf.push(b':');
    two(buf, sod % 60);
    buf.push(b'.');
    let mut div = 100_000;
    while div > 0 {
        buf.push(b'0' + (micros / div % 10) as u8);
        div /= 10;
    }
    buf.push(b'Z');
}

/// Proleptic Gregorian date of a day number since 1970-01-01 (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k2::record::{Decimal, SourcePosition, Trade};
    use k2::source::kafka::decode::{decode, parse_rfc3339_micros};
    use std::collections::{HashMap, HashSet};

    const T0: i64 = 1_700_000_000_000_000;

    fn pos() -> SourcePosition {
        SourcePosition {
            topic: 0,
            partition: 0,
            offset: 0,
            kafka_ts_ms: 0,
            ingest_us: 0,
        }
    }

    fn decode_all(exchange: Exchange, payload: &[u8]) -> Result<Vec<Trade>, String> {
        let mut out = Vec::new();
        decode(exchange, payload, &pos(), &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn cfg(seed: u64) -> FeedConfig {
        FeedConfig {
            seed,
            symbols: ["BTC", "ETH", "SOL", "PEPE", "DOGE", "ABC"].map(String::from).to_vec(),
            duplicate_fraction: 0.1,
            malformed_fraction: 0.1,
            max_out_of_order_ms: 2_000,
            max_trades_per_message: 4,
            ..FeedConfig::default()
        }
    }

    #[test]
    fn formatting_helpers() {
        let s = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Vec::new();
            f(&mut b);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(s(&|b| push_fixed(b, 6_012_345, 2, 8)), "60123.45000000");
        assert_eq!(s(&|b| push_fixed(b, 1234, 10, 10)), "0.0000001234");
        assert_eq!(s(&|b| push_fixed(b, 7, 0, 8)), "7.00000000");
        assert_eq!(s(&|b| push_fixed(b, 7, 0, 0)), "7");
        assert_eq!(s(&|b| push_plain(b, 6_012_340, 2)), "60123.4");
        assert_eq!(s(&|b| push_plain(b, 6_012_300, 2)), "60123");
        assert_eq!(s(&|b| push_plain(b, 123_400, 10)), "0.00001234");
        assert_eq!(s(&|b| push_exponent(b, 123_400, 10)), "1.234e-5");
        assert_eq!(s(&|b| push_exponent(b, 5, 8)), "5e-8");
        assert_eq!(s(&|b| push_exponent(b, 50, 8)), "5e-7");
        assert_eq!(s(&|b| push_i64(b, -42)), "-42");
        for us in [
            0,
            1,
            T0,
            1_695_628_177_708_706,
            951_782_400_000_000,
            253_402_300_799_999_999,
        ] {
            let text = s(&|b| push_rfc3339(b, us));
            assert_eq!(parse_rfc3339_micros(&text), Some(us), "{text}");
        }
        assert_eq!(
            s(&|b| push_rfc3339(b, 1_695_628_177_708_706)),
            "2023-09-25T07:49:37.708706Z"
        );
    }

    #[test]
    fn config_validation() {
        assert_eq!(FeedConfig::default().validate(), Ok(()));
        let bad = [
            FeedConfig {
                symbols: vec![],
                ..FeedConfig::default()
            },
            FeedConfig {
                quote: "FOO".into(),
                ..FeedConfig::default()
            },
            FeedConfig {
                symbols: vec!["btc".into()],
                ..FeedConfig::default()
            },
            FeedConfig {
                symbols: vec!["B/C".into()],
                ..FeedConfig::default()
            },
            FeedConfig {
                duplicate_fraction: -0.1,
                ..FeedConfig::default()
            },
            FeedConfig {
                malformed_fraction: 1.5,
                ..FeedConfig::default()
            },
            FeedConfig {
                duplicate_fraction: 0.6,
                malformed_fraction: 0.6,
                ..FeedConfig::default()
            },
            FeedConfig {
                max_out_of_order_ms: -1,
                ..FeedConfig::default()
            },
            FeedConfig {
                max_trades_per_message: 0,
                ..FeedConfig::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn deterministic() {
        for exchange in Exchange::ALL {
            let run = |seed| {
                let mut feed = Feed::new(exchange, &cfg(seed));
                (0..2_000)
                    .map(|i| feed.next_message(T0 + i * 1_000))
                    .collect::<Vec<_>>()
            };
            assert_eq!(run(1), run(1));
            assert_ne!(run(1), run(2));
        }
    }

    #[test]
    fn messages_decode_as_labelled() {
        let mut seen_whys = HashSet::new();
        let mut snapshot = false;
        let mut exponent = false;
        for seed in 0..40 {
            for exchange in Exchange::ALL {
                let mut feed = Feed::new(exchange, &cfg(seed));
                let mut history: VecDeque<Vec<u8>> = VecDeque::new();
                for i in 0..500 {
                    let now = T0 + i * 10_000;
                    let msg = feed.next_message(now);
                    let decoded = decode_all(exchange, &msg.payload);
                    match &msg.kind {
                        MessageKind::Valid { message_ids } | MessageKind::Duplicate { message_ids } => {
                            let trades =
                                decoded.unwrap_or_else(|e| panic!("{} {e}", String::from_utf8_lossy(&msg.payload)));
                            let ids: Vec<_> = trades.iter().map(|t| t.message_id.to_string()).collect();
                            assert_eq!(&ids, message_ids);
                            for t in &trades {
                                assert_eq!(t.native_symbol.as_bytes(), &msg.key[..]);
                                assert!(t.price > Decimal(0) && t.quantity > Decimal(0));
                            }
                            if let MessageKind::Duplicate { .. } = msg.kind {
                                assert!(history.contains(&msg.payload), "not a recent message");
                            } else {
                                history.push_back(msg.payload.clone());
                                if history.len() > DUPLICATE_WINDOW {
                                    history.pop_front();
                                }
                            }
                            let text = String::from_utf8(msg.payload.clone()).unwrap();
                            snapshot |= text.contains("\"snapshot\"");
                            exponent |= text.contains("e-");
                        }
                        MessageKind::Malformed { why } => {
                            seen_whys.insert((exchange, *why));
                            assert!(
                                decoded.is_err(),
                                "{why}: {} decoded",
                                String::from_utf8_lossy(&msg.payload)
                            );
                            assert!(!msg.key.is_empty());
                        }
                    }
                }
            }
        }
        assert_eq!(seen_whys.len(), 6 + 7, "{seen_whys:?}");
        assert!(snapshot && exponent);
    }

    #[test]
    fn fractions_and_ids() {
        for exchange in Exchange::ALL {
            let mut feed = Feed::new(exchange, &cfg(7));
            let mut counts = HashMap::new();
            let mut ids = HashSet::new();
            let mut per_message = 0usize;
            let mut last_id: HashMap<String, u64> = HashMap::new();
            for i in 0..10_000 {
                let msg = feed.next_message(T0 + i * 1000);
                let kind = match &msg.kind {
                    MessageKind::Valid { message_ids } => {
                        per_message = per_message.max(message_ids.len());
                        for id in message_ids {
                            assert!(ids.insert(id.clone()), "id {id} reused");
                            let (sym, n) = id.rsplit_once(':').unwrap();
                            let n: u64 = n.parse().unwrap();
                            if let Some(prev) = last_id.insert(sym.to_owned(), n) {
                                assert!(n > prev, "ids must increase per symbol");
                            }
                        }
                        "valid"
                    }
                    MessageKind::Duplicate { message_ids } => {
                        assert!(message_ids.iter().all(|id| ids.contains(id)));
                        "duplicate"
                    }
                    MessageKind::Malformed { .. } => "malformed",
                };
                *counts.entry(kind).or_insert(0) += 1;
            }
            for kind in ["duplicate", "malformed"] {
                let n = counts[kind];
                assert!((800..1200).contains(&n), "{exchange} {kind}: {n}");
            }
            let expected_max = if exchange == Exchange::Binance { 1 } else { 4 };
            assert_eq!(per_message, expected_max);
        }
    }

    #[test]
    fn out_of_order_is_bounded() {
        let mut c = cfg(3);
        c.max_out_of_order_ms = 250;
        for exchange in Exchange::ALL {
            let mut feed = Feed::new(exchange, &c);
            let mut min_lag = i64::MAX;
            let mut max_lag = i64::MIN;
            for i in 0..5_000 {
                let now = T0 + i * 777;
                let msg = feed.next_message(now);
                let Ok(trades) = decode_all(exchange, &msg.payload) else {
                    continue;
                };
                if matches!(msg.kind, MessageKind::Duplicate { .. }) {
                    continue;
                }
                for t in trades {
                    let lag = now - t.event_us;
                    min_lag = min_lag.min(lag);
                    max_lag = max_lag.max(lag);
                }
            }
            let slack = if exchange == Exchange::Binance { 999 } else { 0 };
            assert!(min_lag >= 0, "{exchange} {min_lag}");
            assert!(max_lag <= 250_000 + slack, "{exchange} {max_lag}");
            assert!(max_lag > 200_000, "{exchange} jitter too small: {max_lag}");
        }
    }

    #[test]
    fn prices_are_realistic_and_exchanges_track_each_other() {
        let c = cfg(5);
        for (base, lo, hi) in [
            ("BTC", 50_000.0, 70_000.0),
            ("ETH", 2_500.0, 3_500.0),
            ("PEPE", 0.00001, 0.000015),
            ("ABC", 80.0, 120.0),
        ] {
            let key = mix64(c.seed ^ mix64(fnv1a(base.as_bytes())));
            let level = profile(base).level;
            let mut diverged = 0;
            let mut close = 0;
            let n = 20_000;
            for i in 0..n {
                let t = T0 + i * 1_000_000;
                let b = exchange_price(key, level, Exchange::Binance, t);
                let k = exchange_price(key, level, Exchange::Kraken, t);
                assert!((lo..hi).contains(&b) && (lo..hi).contains(&k), "{base} {b} {k}");
                let bps = ((b - k) / k).abs() * 1e4;
                assert!(bps < 51.0);
                if bps < 1e-6 {
                    close += 1;
                } else {
                    assert!(bps > 9.9, "{bps}");
                    diverged += 1;
                }
            }
            // About 5% of the time in a divergence window.
            assert!((n / 40..n / 10).contains(&diverged), "{base}: {diverged}");
            assert!(close > n * 8 / 10);
        }
        // The path moves.
        let key = mix64(c.seed ^ mix64(fnv1a(b"BTC")));
        let a = exchange_price(key, 60_000.0, Exchange::Binance, T0);
        let b = exchange_price(key, 60_000.0, Exchange::Binance, T0 + 3_600_000_000);
        assert!((a - b).abs() > 1.0);
    }

    #[test]
    fn decoded_prices_match_across_exchanges() {
        let mut c = cfg(9);
        c.symbols = vec!["BTC".into(), "PEPE".into()];
        c.malformed_fraction = 0.0;
        c.duplicate_fraction = 0.0;
        c.max_out_of_order_ms = 100;
        let mut binance = Feed::new(Exchange::Binance, &c);
        let mut kraken = Feed::new(Exchange::Kraken, &c);
        let mut spreads = Vec::new();
        let mut last: HashMap<(Exchange, String), f64> = HashMap::new();
        let mut pepe_decimals = 0;
        for i in 0..20_000 {
            let now = T0 + i * 100_000;
            for (exchange, feed) in [(Exchange::Binance, &mut binance), (Exchange::Kraken, &mut kraken)] {
                let msg = feed.next_message(now);
                for t in decode_all(exchange, &msg.payload).unwrap() {
                    if t.symbol == "PEPE/USDT" && exchange == Exchange::Kraken {
                        let frac = t.price.to_string();
                        pepe_decimals = pepe_decimals.max(frac.len() - 2);
                    }
                    last.insert((exchange, t.symbol.to_string()), t.price.to_f64());
                }
            }
            if let (Some(b), Some(k)) = (
                last.get(&(Exchange::Binance, "BTC/USDT".to_owned())),
                last.get(&(Exchange::Kraken, "BTC/USDT".to_owned())),
            ) {
                spreads.push(((b - k) / k).abs() * 1e4);
            }
        }
        spreads.sort_by(f64::total_cmp);
        let median = spreads[spreads.len() / 2];
        assert!(median < 5.0, "median spread {median} bps");
        assert!(spreads[spreads.len() - 1] > 10.0, "no divergence");
        assert!(pepe_decimals > 8, "{pepe_decimals}");
    }
}
