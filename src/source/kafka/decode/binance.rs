//! Binance spot `trade` events, plain or in a combined-stream envelope.
//!
//! Formats, from Binance's WebSocket Streams documentation
//! (<https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams>):
//! a trade event is `{"e":"trade","E":…,"s":"BNBBTC","t":12345,"p":"0.001",
//! "q":"100","T":…,"m":true,"M":true}`; a combined stream
//! (`/stream?streams=a@trade/b@trade`) wraps each as
//! `{"stream":"bnbbtc@trade","data":{…}}`; requests are answered with
//! `{"result":null,"id":1}`.

use super::fields::*;
use super::{ControlKind, DecodeError, Decoded};
use crate::record::{Exchange, MessageId, Side, SourcePosition, Trade};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Quote assets recognized at the end of Binance symbols, longest first so
/// that `BTCFDUSD` splits as `BTC/FDUSD` rather than `BTCFD/USD`. The list is
/// fixed on purpose: splitting must not depend on exchange metadata fetched at
/// run time, or the same message could normalize differently on replay.
pub const BINANCE_QUOTE_ASSETS: &[&str] = &[
    "FDUSD", "USDT", "USDC", "TUSD", "BUSD", "USDP", "AEUR", "EURI", "BIDR", "IDRT", "DOGE", "USD", "EUR", "GBP",
    "TRY", "BRL", "JPY", "AUD", "RUB", "UAH", "ZAR", "NGN", "PLN", "RON", "ARS", "MXN", "COP", "CZK", "DAI", "BTC",
    "ETH", "BNB", "XRP", "TRX", "SOL",
];

/// Normalizes a Binance symbol such as `BTCUSDT` to `BTC/USDT`.
///
/// The symbol must be non-empty upper-case ASCII letters and digits (as
/// Binance sends it) and end with one of [`BINANCE_QUOTE_ASSETS`] (longest
/// match first) after a non-empty base. Returns `None` otherwise.
pub fn normalize_binance_symbol(s: &str) -> Option<String> {
    if !is_binance_symbol(s) {
        return None;
    }
    let last = s.as_bytes().last();
    BINANCE_QUOTE_ASSETS.iter().find_map(|quote| {
        // Comparing the last byte first skips most candidates cheaply.
        if quote.as_bytes().last() != last {
            return None;
        }
        let base = s.strip_suffix(quote)?;
        if base.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(s.len() + 1);
        out.push_str(base);
        out.push('/');
        out.push_str(quote);
        Some(out)
    })
}

fn is_binance_symbol(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A Binance message, every field as raw JSON: a trade event, or the fields
/// of an envelope or a response.
#[derive(Deserialize)]
#[serde(expecting = "a Binance trade event object")]
struct BinanceEvent<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    code: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(rename = "e", borrow, default, deserialize_with = "present")]
    event_type: Option<&'a RawValue>,
    #[serde(rename = "s", borrow, default, deserialize_with = "present")]
    symbol: Option<&'a RawValue>,
    #[serde(rename = "t", borrow, default, deserialize_with = "present")]
    trade_id: Option<&'a RawValue>,
    #[serde(rename = "p", borrow, default, deserialize_with = "present")]
    price: Option<&'a RawValue>,
    #[serde(rename = "q", borrow, default, deserialize_with = "present")]
    quantity: Option<&'a RawValue>,
    #[serde(rename = "T", borrow, default, deserialize_with = "present")]
    trade_time: Option<&'a RawValue>,
    #[serde(rename = "m", borrow, default, deserialize_with = "present")]
    buyer_is_maker: Option<&'a RawValue>,
}

/// Decodes a Binance message: a trade event, a combined-stream envelope of
/// one, or a control message.
pub(super) fn decode(text: &str, source: &SourcePosition, out: &mut Vec<Trade>) -> Result<Decoded, DecodeError> {
    reject_array(text)?;
    let ev: BinanceEvent<'_> = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    if ev.event_type.is_none() {
        // The combined-stream envelope: `{"stream":"bnbbtc@trade","data":{…}}`.
        if let (Some(stream), Some(data)) = (ev.stream, ev.data) {
            let f = Field::top("stream");
            string_field(f, stream.get(), "a string")?;
            let data = data.get();
            if !data.starts_with('{') {
                return Err(wrong_type(Field::top("data"), "an object", data));
            }
            let inner: BinanceEvent<'_> = serde_json::from_str(data).map_err(|e| json_error(&e))?;
            if inner.stream.is_some() {
                return Err(DecodeError::Shape(
                    "a combined-stream envelope inside another".to_owned(),
                ));
            }
            return event(inner, source, out);
        }
        // A response to a request: `{"result":null,"id":1}`, or an error
        // `{"code":2,"msg":"…","id":1}`.
        if ev.id.is_some() && (ev.result.is_some() || ev.code.is_some() || ev.error.is_some()) {
            return Ok(Decoded::Control(ControlKind::Response));
        }
    }
    event(ev, source, out)
}

/// A Binance event object: a trade, or another event type (control).
fn event(ev: BinanceEvent<'_>, source: &SourcePosition, out: &mut Vec<Trade>) -> Result<Decoded, DecodeError> {
    let f = Field::top("e");
    let event_type = string_field(f, required(f, ev.event_type)?, "a string")?;
    if event_type != "trade" {
        return Ok(Decoded::Control(ControlKind::OtherStream));
    }
    out.push(trade(ev, source)?);
    Ok(Decoded::Trades)
}

fn trade(ev: BinanceEvent<'_>, source: &SourcePosition) -> Result<Trade, DecodeError> {
    let f = Field::top("s");
    let native = string_field(f, required(f, ev.symbol)?, "a string")?;
    let names = super::names(Exchange::Binance, &native, |native| {
        match normalize_binance_symbol(native) {
            Some(s) => Ok(s),
            None if is_binance_symbol(native) => Err(DecodeError::UnknownQuoteAsset(native.to_owned())),
            None => Err(invalid(
                f,
                format!(
                    "invalid symbol {:?} (expected upper-case letters and digits)",
                    snippet(native)
                ),
            )),
        }
    })?;

    let f = Field::top("t");
    let trade_id = trade_id_field(f, required(f, ev.trade_id)?)?;

    let f = Field::top("p");
    let price = positive_decimal(f, &string_field(f, required(f, ev.price)?, "a decimal string")?)?;

    let f = Field::top("q");
    let quantity = positive_decimal(f, &string_field(f, required(f, ev.quantity)?, "a decimal string")?)?;

    let f = Field::top("T");
    let trade_ms = u64_field(f, required(f, ev.trade_time)?)?;
    let event_us = i64::try_from(trade_ms)
        .ok()
        .and_then(|ms| ms.checked_mul(1000))
        .ok_or_else(|| invalid(f, format!("timestamp out of range: {trade_ms}")))?;

    let f = Field::top("m");
    let side = if bool_field(f, required(f, ev.buyer_is_maker)?)? {
        Side::Sell
    } else {
        Side::Buy
    };

    Ok(Trade {
        message_id: MessageId {
            stream: names.stream,
            trade_id,
        },
        exchange: Exchange::Binance,
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
