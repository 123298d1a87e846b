//! The records that flow through every K2 dataflow.
//!
//! All exchanges are normalized into one [`Trade`] shape, so that operators and
//! sinks never care where a trade came from. Two choices here are deliberate:
//!
//! * **Symbols** use one convention, `BASE/QUOTE` in upper case (`BTC/USDT`,
//!   `BTC/USD`), which is what Kraken v2 already sends. Binance's `BTCUSDT` is
//!   split on a known list of quote assets. The exchange's own spelling is kept
//!   in [`Trade::native_symbol`].
//! * **Prices and quantities are exact decimals** ([`Decimal`], Iceberg
//!   `decimal(38, 18)`; see [`crate::decimal`] for why and for the range).

use k2_derive::{Columns, TableRow};
use serde::{Deserialize, Serialize};
use std::fmt;

pub use crate::decimal::{DECIMAL_SCALE, Decimal};

/// The exchanges K2 decodes natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Exchange {
    /// Binance spot, `trade` stream events.
    Binance,
    /// Kraken WebSocket v2, `trade` channel messages.
    Kraken,
}

impl Exchange {
    /// Lower-case name, used in message ids and table names.
    pub fn name(self) -> &'static str {
        match self {
            Exchange::Binance => "binance",
            Exchange::Kraken => "kraken",
        }
    }

    /// All exchanges, in a fixed order.
    pub const ALL: [Exchange; 2] = [Exchange::Binance, Exchange::Kraken];
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Exchange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "binance" => Ok(Exchange::Binance),
            "kraken" => Ok(Exchange::Kraken),
            other => Err(format!("unknown exchange `{other}` (expected binance or kraken)")),
        }
    }
}

/// The taker's side of a trade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Side {
    /// The taker bought (lifted the ask).
    Buy,
    /// The taker sold (hit the bid).
    Sell,
}

impl Side {
    /// `"buy"` or `"sell"`.
    pub fn name(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// Where a record was read from: enough to find it again in Kafka. As
/// columns: `ingest_time`, `kafka_timestamp`, `source_topic`,
/// `source_partition`, `source_offset`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Columns)]
pub struct SourcePosition {
    /// When K2 read the message, µs since the Unix epoch.
    #[row(timestamp, rename = "ingest_time")]
    pub ingest_us: i64,
    /// The Kafka message timestamp (producer create time), ms since the Unix epoch.
    #[row(timestamp_ms, rename = "kafka_timestamp")]
    pub kafka_ts_ms: i64,
    /// Index of the topic in the job's topic list (see the source config).
    #[row(topic_name, rename = "source_topic")]
    pub topic: u16,
    /// Kafka partition.
    #[row(rename = "source_partition")]
    pub partition: i32,
    /// Kafka offset.
    #[row(rename = "source_offset")]
    pub offset: i64,
}

/// One normalized trade: a row of the bronze tables, partitioned by
/// `day(event_time)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, TableRow)]
#[row(partition = "day(event_time)", produce_ms = "source.kafka_ts_ms")]
pub struct Trade {
    /// Deterministic id: `{exchange}:{native_symbol}:{trade_id}`. Exchanges
    /// number trades per instrument, so this is unique and stable across
    /// re-deliveries, which is what dedup keys on.
    pub message_id: String,
    /// The exchange the trade happened on.
    pub exchange: Exchange,
    /// Normalized symbol, `BASE/QUOTE`.
    pub symbol: String,
    /// The exchange's own spelling of the symbol.
    pub native_symbol: String,
    /// The exchange's trade id.
    pub trade_id: u64,
    /// Price, exact.
    pub price: Decimal,
    /// Quantity in base units, exact.
    pub quantity: Decimal,
    /// Taker side.
    pub side: Side,
    /// Trade time at the exchange, µs since the Unix epoch.
    #[row(timestamp, rename = "event_time")]
    pub event_us: i64,
    /// Where the trade was read from.
    #[row(flatten)]
    pub source: SourcePosition,
    /// Late: below its partition's watermark when read, or dated too far
    /// into the future (see [`crate::source::kafka::reader`]). Bronze tables
    /// keep late trades; event-time operators route them away.
    #[row(skip)]
    pub late: bool,
}

impl Trade {
    /// The event time in µs since the Unix epoch, as event-time operators
    /// compare it (times before 1970 count as 1970).
    #[inline]
    pub fn event_time(&self) -> u64 {
        self.event_us.max(0) as u64
    }
}

/// A message that could not be decoded: kept whole, with the reason. A row
/// of `dead_letters`, partitioned by `day(kafka_timestamp)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, TableRow)]
#[row(partition = "day(kafka_timestamp)", produce_ms = "kafka_ts_ms")]
pub struct DeadLetter {
    /// Index of the topic in the job's topic list.
    #[row(topic_name, rename = "source_topic")]
    pub topic: u16,
    /// Kafka partition.
    #[row(rename = "source_partition")]
    pub partition: i32,
    /// Kafka offset.
    #[row(rename = "source_offset")]
    pub offset: i64,
    /// Why it was rejected, for a human.
    pub reason: String,
    /// The message key, as received.
    #[row(rename = "raw_key")]
    pub key: Option<Vec<u8>>,
    /// The message payload, as received.
    #[row(rename = "raw_payload")]
    pub payload: Vec<u8>,
    /// The Kafka message timestamp, ms since the Unix epoch.
    #[row(timestamp_ms, rename = "kafka_timestamp")]
    pub kafka_ts_ms: i64,
    /// When K2 read the message, µs since the Unix epoch.
    #[row(timestamp, rename = "ingest_time")]
    pub ingest_us: i64,
}

impl DeadLetter {
    /// The dead letter of the message read at `source`.
    pub fn new(source: &SourcePosition, reason: String, key: Option<Vec<u8>>, payload: Vec<u8>) -> DeadLetter {
        DeadLetter {
            topic: source.topic,
            partition: source.partition,
            offset: source.offset,
            reason,
            key,
            payload,
            kafka_ts_ms: source.kafka_ts_ms,
            ingest_us: source.ingest_us,
        }
    }
}

/// A cross-exchange arbitrage opportunity: one Binance trade and one Kraken
/// trade of the same symbol, close in event time, whose prices differ by more
/// than both taker fees and a threshold. A row of the alert tables,
/// partitioned by `day(binance_event_time)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, TableRow)]
#[row(partition = "day(binance_event_time)", produce_ms = "produce_ms")]
pub struct Alert {
    /// Deterministic: FNV-1a 64 of `"<binance message id>|<kraken message id>"`.
    pub alert_id: String,
    /// Normalized symbol.
    pub symbol: String,
    /// Where to buy (the cheaper side).
    pub buy_exchange: Exchange,
    /// Where to sell.
    pub sell_exchange: Exchange,
    /// Price on the buy side.
    pub buy_price: Decimal,
    /// Price on the sell side.
    pub sell_price: Decimal,
    /// Spread net of both taker fees, in 1/1000 basis points (integral, so
    /// alerts compare exactly; see [`Alert::spread_bps`]).
    #[row(thousandths, rename = "spread_bps")]
    pub spread_millibps: i64,
    /// The Binance trade's message id.
    pub binance_message_id: String,
    /// The Kraken trade's message id.
    pub kraken_message_id: String,
    /// Binance trade time, µs.
    #[row(timestamp, rename = "binance_event_time")]
    pub binance_event_us: i64,
    /// Kraken trade time, µs.
    #[row(timestamp, rename = "kraken_event_time")]
    pub kraken_event_us: i64,
    /// Kafka produce time of the later of the two trades, ms: where the
    /// event-to-alert latency starts.
    #[row(timestamp_ms, rename = "produce_time")]
    pub produce_ms: i64,
    /// When K2 detected it, µs (wall clock; not part of the result's identity
    /// across runs).
    #[row(timestamp, rename = "detected_time")]
    pub detected_us: i64,
}

impl Alert {
    /// The net spread in basis points.
    pub fn spread_bps(&self) -> f64 {
        self.spread_millibps as f64 / 1000.0
    }

    /// The alert id of a pair: FNV-1a 64 of `"<binance id>|<kraken id>"`, hex.
    pub fn id_of(binance_message_id: &str, kraken_message_id: &str) -> String {
        let pair = format!("{binance_message_id}|{kraken_message_id}");
        format!("{:016x}", crate::hash::fnv1a(pair.as_bytes()))
    }

    /// The JSON published to the alerts topic; the same fields as the peers'
    /// benchmark jobs publish.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "alert_id": self.alert_id,
            "symbol": self.symbol,
            "buy_exchange": self.buy_exchange.name(),
            "sell_exchange": self.sell_exchange.name(),
            "buy_price": self.buy_price.to_f64(),
            "sell_price": self.sell_price.to_f64(),
            "spread_bps": self.spread_bps(),
            "binance_message_id": self.binance_message_id,
            "kraken_message_id": self.kraken_message_id,
            "binance_event_ms": self.binance_event_us.div_euclid(1000),
            "kraken_event_ms": self.kraken_event_us.div_euclid(1000),
            "binance_event_us": self.binance_event_us,
            "kraken_event_us": self.kraken_event_us,
            "produce_ms": self.produce_ms,
            "detected_ms": self.detected_us / 1000,
        })
        .to_string()
    }
}

/// A BTC/USDT trade for unit tests: id, price as decimal text, event time (µs).
#[cfg(test)]
pub(crate) fn test_trade(exchange: Exchange, id: u64, price: &str, event_us: i64) -> Trade {
    Trade {
        message_id: format!("{exchange}:BTCUSDT:{id}"),
        exchange,
        symbol: "BTC/USDT".into(),
        native_symbol: "BTCUSDT".into(),
        trade_id: id,
        price: crate::source::kafka::decode::parse_decimal(price).expect("a decimal"),
        quantity: Decimal(Decimal::ONE),
        side: Side::Buy,
        event_us,
        source: SourcePosition {
            topic: 0,
            partition: 0,
            offset: id as i64,
            kafka_ts_ms: event_us / 1000 + 5,
            ingest_us: 0,
        },
        late: false,
    }
}
