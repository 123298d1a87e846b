//! Kraken WebSocket v2 messages: the `trade` channel, and control messages.
//!
//! Formats, from Kraken's WebSocket v2 documentation
//! (<https://docs.kraken.com/api/docs/websocket-v2/trade>,
//! <https://docs.kraken.com/api/docs/websocket-v2/heartbeat>,
//! <https://docs.kraken.com/api/docs/websocket-v2/status>): a trade message is
//! `{"channel":"trade","type":"snapshot"|"update","data":[{"symbol":"MATIC/USD",
//! "side":"buy","price":0.5147,"qty":6423.46326,"ord_type":"limit",
//! "trade_id":4665846,"timestamp":"2023-09-25T07:49:37.708706Z"}]}`, with
//! prices and quantities as JSON numbers.

use super::fields::*;
use super::rfc3339::parse_rfc3339_micros;
use super::{ControlKind, DecodeError, Decoded};
use crate::record::{Exchange, MessageId, Side, SourcePosition, Trade};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

/// Normalizes a Kraken v2 symbol such as `xbt/usd` to `BTC/USD`.
///
/// The symbol must be `BASE/QUOTE` with both parts non-empty and made of ASCII
/// letters, digits and `.`; both are upper-cased and Kraken's legacy asset
/// codes are mapped (`XBT` to `BTC`, `XDG` to `DOGE`). Returns `None`
/// otherwise.
pub fn normalize_kraken_symbol(s: &str) -> Option<String> {
    let (base, quote) = s.split_once('/')?;
    let valid = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    if !valid(base) || !valid(quote) {
        return None;
    }
    let mut out = String::with_capacity(s.len() + 2);
    push_kraken_asset(&mut out, base);
    out.push('/');
    push_kraken_asset(&mut out, quote);
    Some(out)
}

fn push_kraken_asset(out: &mut String, asset: &str) {
    if asset.eq_ignore_ascii_case("XBT") {
        out.push_str("BTC");
    } else if asset.eq_ignore_ascii_case("XDG") {
        out.push_str("DOGE");
    } else {
        out.extend(asset.chars().map(|c| c.to_ascii_uppercase()));
    }
}

/// A Kraken v2 message envelope, every field as raw JSON.
#[derive(Deserialize)]
#[serde(expecting = "a Kraken message object")]
struct KrakenMessage<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present_data")]
    data: Option<KrakenData<'a>>,
}

fn present_data<'de, D>(deserializer: D) -> Result<Option<KrakenData<'de>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    KrakenData::deserialize(deserializer).map(Some)
}

/// Kraken's `data`, parsed in the same pass as the envelope: the trade
/// objects, or a description of what was found instead of an array.
enum KrakenData<'a> {
    Array(Vec<KrakenElement<'a>>),
    NotArray(String),
}

/// One element of Kraken's `data`: a trade object's raw fields, or a
/// description of what was found instead of an object.
enum KrakenElement<'a> {
    Trade(KrakenTrade<'a>),
    NotObject(String),
}

/// Visitor methods that describe a scalar instead of failing, so that a wrong
/// type can be reported with the field's name.
macro_rules! describe_scalars {
    ($wrap:expr) => {
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok($wrap(format!("boolean {v}")))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok($wrap(format!("number {v}")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok($wrap(format!("number {v}")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok($wrap(format!("number {v}")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok($wrap(format!("string {:?}", snippet(v))))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok($wrap("null".to_owned()))
        }
    };
}

impl<'de: 'a, 'a> Deserialize<'de> for KrakenData<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for DataVisitor<'a> {
            type Value = KrakenData<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut elements = Vec::new();
                while let Some(element) = seq.next_element()? {
                    elements.push(element);
                }
                Ok(KrakenData::Array(elements))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(KrakenData::NotArray("an object".to_owned()))
            }
            describe_scalars!(KrakenData::NotArray);
        }
        deserializer.deserialize_any(DataVisitor(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for KrakenElement<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ElementVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for ElementVisitor<'a> {
            type Value = KrakenElement<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(KrakenElement::NotObject("an array".to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                KrakenTrade::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(KrakenElement::Trade)
            }
            describe_scalars!(KrakenElement::NotObject);
        }
        deserializer.deserialize_any(ElementVisitor(std::marker::PhantomData))
    }
}

/// One element of a Kraken `trade` message's `data`, every field as raw JSON.
#[derive(Deserialize)]
#[serde(expecting = "a Kraken trade object")]
struct KrakenTrade<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    symbol: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    side: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    price: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    qty: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    trade_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    timestamp: Option<&'a RawValue>,
}

/// Decodes a Kraken v2 message: a `trade` message, or a control message.
/// May append some trades before failing: the caller truncates.
pub(super) fn decode(text: &str, source: &SourcePosition, out: &mut Vec<Trade>) -> Result<Decoded, DecodeError> {
    reject_array(text)?;
    let msg: KrakenMessage<'_> = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    if msg.channel.is_none() && msg.method.is_some() {
        // `{"method":"subscribe","result":{…},"success":true,…}`, `pong`, errors.
        let f = Field::top("method");
        string_field(f, required(f, msg.method)?, "a string")?;
        return Ok(Decoded::Control(ControlKind::Response));
    }

    let f = Field::top("channel");
    let channel = string_field(f, required(f, msg.channel)?, "a string")?;
    match &*channel {
        "trade" => {}
        "heartbeat" => return Ok(Decoded::Control(ControlKind::Heartbeat)),
        "status" => return Ok(Decoded::Control(ControlKind::Status)),
        _ => return Ok(Decoded::Control(ControlKind::OtherStream)),
    }

    let f = Field::top("type");
    let kind = string_field(f, required(f, msg.kind)?, "a string")?;
    if kind != "snapshot" && kind != "update" {
        return Err(invalid(
            f,
            format!("expected \"snapshot\" or \"update\", found {:?}", snippet(&kind)),
        ));
    }

    let f = Field::top("data");
    let elements = match msg.data {
        None => return Err(DecodeError::MissingField(f.to_string())),
        Some(KrakenData::NotArray(found)) => return Err(invalid(f, format!("expected an array, found {found}"))),
        Some(KrakenData::Array(elements)) => elements,
    };
    if elements.is_empty() {
        return Ok(Decoded::Control(ControlKind::Empty));
    }
    out.reserve(elements.len());
    for (index, element) in elements.into_iter().enumerate() {
        match element {
            KrakenElement::Trade(t) => out.push(kraken_trade(index, t, source)?),
            KrakenElement::NotObject(found) => {
                return Err(invalid(
                    Field::data(index, ""),
                    format!("expected an object, found {found}"),
                ));
            }
        }
    }
    Ok(Decoded::Trades)
}

fn kraken_trade(index: usize, t: KrakenTrade<'_>, source: &SourcePosition) -> Result<Trade, DecodeError> {
    let f = Field::data(index, "symbol");
    let native = string_field(f, required(f, t.symbol)?, "a string")?;
    let names = super::names(Exchange::Kraken, &native, |native| {
        normalize_kraken_symbol(native)
            .ok_or_else(|| invalid(f, format!("expected BASE/QUOTE, found {:?}", snippet(native))))
    })?;

    let f = Field::data(index, "side");
    let side = match &*string_field(f, required(f, t.side)?, "a string")? {
        "buy" => Side::Buy,
        "sell" => Side::Sell,
        other => {
            return Err(invalid(
                f,
                format!("expected \"buy\" or \"sell\", found {:?}", snippet(other)),
            ));
        }
    };

    let f = Field::data(index, "price");
    let price = number_field(f, required(f, t.price)?)?;

    let f = Field::data(index, "qty");
    let quantity = number_field(f, required(f, t.qty)?)?;

    let f = Field::data(index, "trade_id");
    let trade_id = trade_id_field(f, required(f, t.trade_id)?)?;

    let f = Field::data(index, "timestamp");
    let ts = string_field(f, required(f, t.timestamp)?, "an RFC 3339 timestamp string")?;
    let event_us = parse_rfc3339_micros(&ts)
        .ok_or_else(|| invalid(f, format!("invalid RFC 3339 timestamp {:?}", snippet(&ts))))?;

    Ok(Trade {
        message_id: MessageId {
            stream: names.stream,
            trade_id,
        },
        exchange: Exchange::Kraken,
        symbol: names.symbol,
        native_symbol: names.native,
        trade_id,
        price,
        quantity,
        side,
        event_us,
        source: source.clone(),
        late: false,
    })
}
