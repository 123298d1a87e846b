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

/// An interned string: symbols and message-id streams, of which a feed has a
/// few hundred, carried by every trade. Copying one copies a pointer; no
/// trade allocates for its symbols. Equal, ordered and hashed by its text,
/// so it routes and sorts the same in every process; serialized as its
/// text, and interned again when read.
///
/// Interned strings live as long as the process: a feed of ever new symbols
/// would grow it, so [`Symbol::intern`] refuses more than [`Symbol::LIMIT`].
#[derive(Clone, Copy, Default)]
pub struct Symbol(&'static str);

/// The process's interned strings.
static SYMBOLS: std::sync::Mutex<Option<std::collections::HashSet<&'static str>>> = std::sync::Mutex::new(None);

thread_local! {
    /// This thread's view of [`SYMBOLS`]: a hit takes no lock.
    static SEEN: std::cell::RefCell<std::collections::HashSet<&'static str>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

impl Symbol {
    /// The most distinct strings a process interns.
    pub const LIMIT: usize = 1_000_000;

    /// The symbol of `text`; `None` once [`Symbol::LIMIT`] strings are interned.
    pub fn intern(text: &str) -> Option<Symbol> {
        if let Some(hit) = SEEN.with(|seen| seen.borrow().get(text).copied()) {
            return Some(Symbol(hit));
        }
        let mut all = SYMBOLS.lock().unwrap_or_else(|e| e.into_inner());
        let all = all.get_or_insert_with(Default::default);
        let interned = match all.get(text) {
            Some(s) => *s,
            None if all.len() >= Self::LIMIT => return None,
            None => {
                let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
                all.insert(leaked);
                leaked
            }
        };
        SEEN.with(|seen| seen.borrow_mut().insert(interned));
        Some(Symbol(interned))
    }

    /// The text.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl std::ops::Deref for Symbol {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl PartialEq for Symbol {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0) || self.0 == other.0
    }
}
impl Eq for Symbol {}
impl PartialOrd for Symbol {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Symbol {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(other.0)
    }
}
impl std::hash::Hash for Symbol {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}
impl fmt::Debug for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}
impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
impl Serialize for Symbol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}
impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Symbol::intern(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("more than {} distinct symbols", Symbol::LIMIT)))
    }
}
/// For literals and tests: panics past [`Symbol::LIMIT`] (input goes
/// through [`Symbol::intern`], which says so instead).
impl From<&str> for Symbol {
    fn from(text: &str) -> Symbol {
        Symbol::intern(text).expect("fewer than Symbol::LIMIT distinct symbols")
    }
}

impl PartialEq<str> for Symbol {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}
impl PartialEq<&str> for Symbol {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A trade's message id, `{exchange}:{native symbol}:{trade id}`, kept as
/// its stream (`{exchange}:{native symbol}`, interned) and the number:
/// written to tables as the text, ordered as (stream, number).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId {
    /// `{exchange}:{native symbol}`: trade numbers are unique within it.
    pub stream: Symbol,
    /// The exchange's trade id.
    pub trade_id: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.stream, self.trade_id)
    }
}
impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}
impl std::str::FromStr for MessageId {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (stream, id) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}` is no message id (exchange:symbol:number)"))?;
        let trade_id = id
            .parse()
            .map_err(|_| format!("`{text}` is no message id: `{id}` is no number"))?;
        let stream = Symbol::intern(stream).ok_or_else(|| format!("more than {} distinct symbols", Symbol::LIMIT))?;
        Ok(MessageId { stream, trade_id })
    }
}
/// For literals and tests: panics on text that is no message id (input goes
/// through [`str::parse`], which says why instead).
impl From<&str> for MessageId {
    fn from(text: &str) -> MessageId {
        text.parse().expect("a message id: exchange:symbol:number")
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
impl PartialEq<str> for MessageId {
    fn eq(&self, other: &str) -> bool {
        other
            .rsplit_once(':')
            .is_some_and(|(stream, id)| self.stream == stream && id.parse() == Ok(self.trade_id))
    }
}
impl PartialEq<&str> for MessageId {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
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
    pub message_id: MessageId,
    /// The exchange the trade happened on.
    pub exchange: Exchange,
    /// Normalized symbol, `BASE/QUOTE`.
    pub symbol: Symbol,
    /// The exchange's own spelling of the symbol.
    pub native_symbol: Symbol,
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
    pub symbol: Symbol,
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
    pub binance_message_id: MessageId,
    /// The Kraken trade's message id.
    pub kraken_message_id: MessageId,
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
    pub fn id_of(binance_message_id: impl fmt::Display, kraken_message_id: impl fmt::Display) -> String {
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
        message_id: MessageId::from(format!("{exchange}:BTCUSDT:{id}").as_str()),
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
