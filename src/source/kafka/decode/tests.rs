//! Decoder tests: valid messages, every error, prefixes and mutations.

use super::*;
use crate::record::{Decimal, Side};

const BINANCE: &str = r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#;
const KRAKEN: &str = r#"{"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"buy","price":0.5147,"qty":6423.46326,"ord_type":"limit","trade_id":4665846,"timestamp":"2023-09-25T07:49:37.708706Z"}]}"#;
const KRAKEN_MULTI: &str = r#"{"channel":"trade","type":"snapshot","data":[{"symbol":"XBT/USD","side":"sell","price":26000.1,"qty":0.5,"ord_type":"market","trade_id":1,"timestamp":"2023-09-25T07:49:37.708706Z"},{"symbol":"XBT/USD","side":"buy","price":26000.2,"qty":1e-8,"ord_type":"limit","trade_id":2,"timestamp":"2023-09-25T07:49:38Z"},{"symbol":"XBT/USD","side":"buy","price":26000.3,"qty":2,"ord_type":"limit","trade_id":3,"timestamp":"2023-09-25T09:49:39.123456789+02:00"}]}"#;

fn pos() -> SourcePosition {
    SourcePosition {
        topic: 1,
        partition: 2,
        offset: 3,
        kafka_ts_ms: 4,
        ingest_us: 5,
    }
}

fn dec(s: &str) -> Decimal {
    parse_decimal(s).unwrap_or_else(|| panic!("bad test decimal {s}"))
}

fn ok(exchange: Exchange, payload: &str) -> Vec<Trade> {
    let mut out = Vec::new();
    decode(exchange, payload.as_bytes(), &pos(), &mut out).unwrap_or_else(|e| panic!("{payload} failed: {e}"));
    out
}

fn err(exchange: Exchange, payload: &[u8]) -> String {
    let mut out = vec![];
    let e = decode(exchange, payload, &pos(), &mut out).expect_err("decode unexpectedly succeeded");
    assert!(out.is_empty(), "appended trades on error");
    e.to_string()
}

fn berr(payload: &str) -> String {
    err(Exchange::Binance, payload.as_bytes())
}

fn kerr(payload: &str) -> String {
    err(Exchange::Kraken, payload.as_bytes())
}

// -- symbols -----------------------------------------------------------

#[test]
fn binance_symbols() {
    let cases = [
        ("BTCUSDT", Some("BTC/USDT")),
        ("BNBBTC", Some("BNB/BTC")),
        ("BTCFDUSD", Some("BTC/FDUSD")),
        ("BTCTUSD", Some("BTC/TUSD")),
        ("USDCUSDT", Some("USDC/USDT")),
        ("PEPEUSDT", Some("PEPE/USDT")),
        ("ETHEUR", Some("ETH/EUR")),
        ("1000SATSUSDT", Some("1000SATS/USDT")),
        ("BUSDT", Some("B/USDT")),
        ("USDT", None),
        ("BTC", None),
        ("FOOBAR", None),
        ("btcusdt", None),
        ("BTC/USDT", None),
        ("", None),
    ];
    for (native, want) in cases {
        assert_eq!(normalize_binance_symbol(native).as_deref(), want, "{native}");
    }
    // Longest first, so no entry is a suffix of a later one.
    for (i, a) in BINANCE_QUOTE_ASSETS.iter().enumerate() {
        for b in &BINANCE_QUOTE_ASSETS[i + 1..] {
            assert!(!b.ends_with(a) || b == a, "{a} shadows {b}");
        }
    }
}

#[test]
fn kraken_symbols() {
    let cases = [
        ("BTC/USD", Some("BTC/USD")),
        ("XBT/USD", Some("BTC/USD")),
        ("xbt/usd", Some("BTC/USD")),
        ("ETH/XBT", Some("ETH/BTC")),
        ("XDG/EUR", Some("DOGE/EUR")),
        ("MATIC/USD", Some("MATIC/USD")),
        ("ETH2.S/ETH", Some("ETH2.S/ETH")),
        ("XBTC/USD", Some("XBTC/USD")),
        ("BTCUSD", None),
        ("/USD", None),
        ("BTC/", None),
        ("BTC/USD/EUR", None),
        ("BTC /USD", None),
    ];
    for (native, want) in cases {
        assert_eq!(normalize_kraken_symbol(native).as_deref(), want, "{native}");
    }
}

// -- valid messages ----------------------------------------------------

#[test]
fn binance_valid() {
    let trades = ok(Exchange::Binance, BINANCE);
    assert_eq!(
        trades,
        vec![Trade {
            message_id: "binance:BNBBTC:12345".into(),
            exchange: Exchange::Binance,
            symbol: "BNB/BTC".into(),
            native_symbol: "BNBBTC".into(),
            trade_id: 12345,
            price: dec("0.001"),
            quantity: dec("100"),
            side: Side::Sell,
            event_us: 1_672_515_782_136_000,
            source: pos(),
            late: false,
        }]
    );
}

#[test]
fn binance_side_mapping() {
    // m = buyer is maker: true means the taker sold.
    assert_eq!(ok(Exchange::Binance, BINANCE)[0].side, Side::Sell);
    let buy = BINANCE.replace(r#""m":true"#, r#""m":false"#);
    assert_eq!(ok(Exchange::Binance, &buy)[0].side, Side::Buy);
}

#[test]
fn binance_variants() {
    // Whitespace, field order, unknown fields, escapes and exchange-style
    // zero padding are all fine.
    let msg = r#" { "M" : true , "m":false, "T":1, "q":"0.00100000", "p":"60123.45000000", "t":0, "s":"BTC\u0055SDT", "x":{"nested":[1,2]}, "e":"trade", "E":2 } "#;
    let t = &ok(Exchange::Binance, msg)[0];
    assert_eq!(t.message_id, "binance:BTCUSDT:0");
    assert_eq!(t.symbol, "BTC/USDT");
    assert_eq!(t.native_symbol, "BTCUSDT");
    assert_eq!(t.price, dec("60123.45"));
    assert_eq!(t.quantity, Decimal(Decimal::ONE / 1000));
    assert_eq!(t.event_us, 1000);
    assert_eq!(t.side, Side::Buy);
    let max = BINANCE.replace("12345", &i64::MAX.to_string());
    assert_eq!(ok(Exchange::Binance, &max)[0].trade_id, i64::MAX as u64);
}

#[test]
fn kraken_valid() {
    let trades = ok(Exchange::Kraken, KRAKEN);
    assert_eq!(
        trades,
        vec![Trade {
            message_id: "kraken:MATIC/USD:4665846".into(),
            exchange: Exchange::Kraken,
            symbol: "MATIC/USD".into(),
            native_symbol: "MATIC/USD".into(),
            trade_id: 4665846,
            price: dec("0.5147"),
            quantity: dec("6423.46326"),
            side: Side::Buy,
            event_us: 1_695_628_177_708_706,
            source: pos(),
            late: false,
        }]
    );
}

#[test]
fn kraken_multi_snapshot() {
    let trades = ok(Exchange::Kraken, KRAKEN_MULTI);
    let ids: Vec<_> = trades.iter().map(|t| t.message_id.to_string()).collect();
    assert_eq!(ids, ["kraken:XBT/USD:1", "kraken:XBT/USD:2", "kraken:XBT/USD:3"]);
    assert!(trades.iter().all(|t| t.symbol == "BTC/USD"));
    assert_eq!(trades[0].side, Side::Sell);
    assert_eq!(trades[1].side, Side::Buy);
    assert_eq!(trades[1].quantity, Decimal(10_000_000_000));
    assert_eq!(trades[2].quantity, Decimal(2 * Decimal::ONE));
    assert_eq!(trades[1].event_us, 1_695_628_178_000_000);
    assert_eq!(trades[2].event_us, 1_695_628_179_123_456);
    // Appends after existing content.
    let mut out = ok(Exchange::Binance, BINANCE);
    decode(Exchange::Kraken, KRAKEN_MULTI.as_bytes(), &pos(), &mut out).unwrap();
    assert_eq!(out.len(), 4);
}

#[test]
fn kraken_prices_are_exact() {
    for (text, want) in [
        ("0.000012345678", 12_345_678_000_000i128),
        ("1e-8", 10_000_000_000),
        ("1.2345678E-5", 12_345_678_000_000),
        ("0.1", Decimal::ONE / 10),
        ("0.3", 3 * Decimal::ONE / 10),
        ("123456789.123456789123456789", 123_456_789_123_456_789_123_456_789),
    ] {
        let msg = KRAKEN.replace("0.5147", text);
        assert_eq!(ok(Exchange::Kraken, &msg)[0].price, Decimal(want), "{text}");
    }
    let escaped = KRAKEN.replace("MATIC/USD", r"MATIC\/USD");
    assert_eq!(ok(Exchange::Kraken, &escaped)[0].message_id, "kraken:MATIC/USD:4665846");
}

// -- errors ------------------------------------------------------------

#[test]
fn error_messages() {
    assert_eq!(
        berr(&BINANCE.replace(r#""0.001""#, r#""1.2.3""#)),
        r#"field `p`: invalid decimal "1.2.3""#
    );
    assert_eq!(
        berr(&BINANCE.replace("12345", r#""12345""#)),
        r#"field `t`: expected an unsigned integer, found string "12345""#
    );
    assert_eq!(berr(&BINANCE.replace(r#""q":"100","#, "")), "missing field `q`");
    assert_eq!(
        berr(&BINANCE.replace("BNBBTC", "FOOBAR")),
        "unknown quote asset in symbol `FOOBAR`"
    );
    let mut bad = BINANCE.as_bytes().to_vec();
    bad[17] = 0xff;
    assert_eq!(err(Exchange::Binance, &bad), "not valid UTF-8 at byte 17");
    assert_eq!(
        berr(&BINANCE[..17]),
        "invalid JSON at line 1 column 17: EOF while parsing a value"
    );
}

#[test]
fn binance_wrong_types() {
    let cases = [
        (
            r#""e":"trade""#,
            r#""e":1"#,
            "field `e`: expected a string, found number 1",
        ),
        (
            r#""s":"BNBBTC""#,
            r#""s":null"#,
            "field `s`: expected a string, found null",
        ),
        (
            r#""s":"BNBBTC""#,
            r#""s":"BNB-BTC""#,
            "field `s`: invalid symbol \"BNB-BTC\" (expected upper-case letters and digits)",
        ),
        (
            r#""t":12345"#,
            r#""t":12.5"#,
            "field `t`: expected an unsigned integer, found number 12.5",
        ),
        (
            r#""t":12345"#,
            r#""t":1e3"#,
            "field `t`: expected an unsigned integer, found number 1e3",
        ),
        (
            r#""t":12345"#,
            r#""t":-1"#,
            "field `t`: expected an unsigned integer, found number -1",
        ),
        (
            r#""t":12345"#,
            r#""t":[1]"#,
            "field `t`: expected an unsigned integer, found an array",
        ),
        (
            r#""t":12345"#,
            r#""t":18446744073709551616"#,
            "field `t`: unsigned integer out of range: 18446744073709551616",
        ),
        (
            r#""p":"0.001""#,
            r#""p":0.001"#,
            "field `p`: expected a decimal string, found number 0.001",
        ),
        (
            r#""p":"0.001""#,
            r#""p":true"#,
            "field `p`: expected a decimal string, found boolean true",
        ),
        (
            r#""p":"0.001""#,
            r#""p":"-0.001""#,
            "field `p`: must be positive, found \"-0.001\"",
        ),
        (
            r#""p":"0.001""#,
            r#""p":"0""#,
            "field `p`: must be positive, found \"0\"",
        ),
        (r#""p":"0.001""#, r#""p":"""#, "field `p`: invalid decimal \"\""),
        (
            r#""q":"100""#,
            r#""q":{}"#,
            "field `q`: expected a decimal string, found an object",
        ),
        (
            r#""q":"100""#,
            r#""q":"1e21""#,
            "field `q`: invalid decimal \"1e21\" (more than 38 digits: out of the decimal(38, 18) column's range)",
        ),
        (
            r#""q":"100""#,
            r#""q":"1e-19""#,
            "field `q`: invalid decimal \"1e-19\" (more than 18 fractional digits)",
        ),
        (
            r#""T":1672515782136"#,
            r#""T":"1672515782136""#,
            "field `T`: expected an unsigned integer, found string \"1672515782136\"",
        ),
        (
            r#""T":1672515782136"#,
            r#""T":-1"#,
            "field `T`: expected an unsigned integer, found number -1",
        ),
        (
            r#""T":1672515782136"#,
            r#""T":18446744073709551615"#,
            "field `T`: timestamp out of range: 18446744073709551615",
        ),
        (
            r#""m":true"#,
            r#""m":"true""#,
            "field `m`: expected a boolean, found string \"true\"",
        ),
        (
            r#""m":true"#,
            r#""m":1"#,
            "field `m`: expected a boolean, found number 1",
        ),
    ];
    for (from, to, want) in cases {
        let msg = BINANCE.replace(from, to);
        assert_ne!(msg, BINANCE, "{from}");
        assert_eq!(berr(&msg), want, "{msg}");
    }
}

#[test]
fn binance_missing_fields() {
    for field in ["e", "s", "t", "p", "q", "T", "m"] {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(BINANCE).unwrap();
        v.remove(field);
        let msg = serde_json::to_string(&v).unwrap();
        assert_eq!(berr(&msg), format!("missing field `{field}`"));
    }
    // E and M are not needed.
    ok(
        Exchange::Binance,
        &BINANCE.replace(r#","M":true"#, "").replace(r#""E":1672515782136,"#, ""),
    );
}

#[test]
fn kraken_wrong_types() {
    let cases = [
        (
            r#""channel":"trade""#,
            r#""channel":7"#,
            "field `channel`: expected a string, found number 7",
        ),
        (
            r#""type":"update""#,
            r#""type":"delta""#,
            "field `type`: expected \"snapshot\" or \"update\", found \"delta\"",
        ),
        (
            r#""symbol":"MATIC/USD""#,
            r#""symbol":"MATICUSD""#,
            "field `data[0].symbol`: expected BASE/QUOTE, found \"MATICUSD\"",
        ),
        (
            r#""side":"buy""#,
            r#""side":"long""#,
            "field `data[0].side`: expected \"buy\" or \"sell\", found \"long\"",
        ),
        (
            r#""side":"buy""#,
            r#""side":true"#,
            "field `data[0].side`: expected a string, found boolean true",
        ),
        (
            r#""price":0.5147"#,
            r#""price":"0.5147""#,
            "field `data[0].price`: expected a number, found string \"0.5147\"",
        ),
        (
            r#""price":0.5147"#,
            r#""price":false"#,
            "field `data[0].price`: expected a number, found boolean false",
        ),
        (
            r#""price":0.5147"#,
            r#""price":-0.5147"#,
            "field `data[0].price`: must be positive, found \"-0.5147\"",
        ),
        (
            r#""price":0.5147"#,
            r#""price":1e400"#,
            "field `data[0].price`: invalid decimal \"1e400\" (more than 38 digits: out of the decimal(38, 18) column's range)",
        ),
        (
            r#""qty":6423.46326"#,
            r#""qty":null"#,
            "field `data[0].qty`: expected a number, found null",
        ),
        (
            r#""qty":6423.46326"#,
            r#""qty":0.0000000000000000001"#,
            "field `data[0].qty`: invalid decimal \"0.0000000000000000001\" (more than 18 fractional digits)",
        ),
        (
            r#""trade_id":4665846"#,
            r#""trade_id":"4665846""#,
            "field `data[0].trade_id`: expected an unsigned integer, found string \"4665846\"",
        ),
        (
            r#""timestamp":"2023-09-25T07:49:37.708706Z""#,
            r#""timestamp":1695628177"#,
            "field `data[0].timestamp`: expected an RFC 3339 timestamp string, found number 1695628177",
        ),
        (
            r#""timestamp":"2023-09-25T07:49:37.708706Z""#,
            r#""timestamp":"2023-02-30T07:49:37Z""#,
            "field `data[0].timestamp`: invalid RFC 3339 timestamp \"2023-02-30T07:49:37Z\"",
        ),
        (
            r#""data":[{"#,
            r#""data":[5,{"#,
            "field `data[0]`: expected an object, found number 5",
        ),
        (r#""price":0.5147"#, r#""price":1,"price":2"#, "duplicate field `price`"),
    ];
    for (from, to, want) in cases {
        let msg = KRAKEN.replace(from, to);
        assert_ne!(msg, KRAKEN, "{from}");
        assert_eq!(kerr(&msg), want, "{msg}");
    }
    assert_eq!(
        kerr(&KRAKEN.replace(r#""channel":"trade""#, r#""channel":"trade","channel":"trade""#)),
        "duplicate field `channel`"
    );
    assert_eq!(
        kerr(r#"{"channel":"trade","type":"update","data":{"a":1}}"#),
        "field `data`: expected an array, found an object"
    );
    assert_eq!(kerr("[1,2]"), "expected a JSON object, found an array");
    assert_eq!(
        kerr("42"),
        "invalid type: integer `42`, expected a Kraken message object"
    );
}

#[test]
fn kraken_missing_fields() {
    for field in ["symbol", "side", "price", "qty", "trade_id", "timestamp"] {
        let mut v: serde_json::Value = serde_json::from_str(KRAKEN_MULTI).unwrap();
        v["data"][1].as_object_mut().unwrap().remove(field);
        let msg = serde_json::to_string(&v).unwrap();
        assert_eq!(kerr(&msg), format!("missing field `data[1].{field}`"));
    }
    for field in ["channel", "type", "data"] {
        let mut v: serde_json::Value = serde_json::from_str(KRAKEN).unwrap();
        v.as_object_mut().unwrap().remove(field);
        let msg = serde_json::to_string(&v).unwrap();
        assert_eq!(kerr(&msg), format!("missing field `{field}`"));
    }
}

#[test]
fn kraken_all_or_nothing() {
    // The third trade is bad: nothing from the message may be appended.
    let bad = KRAKEN_MULTI.replace(r#""trade_id":3"#, r#""trade_id":-3"#);
    let mut out = ok(Exchange::Binance, BINANCE);
    let e = decode(Exchange::Kraken, bad.as_bytes(), &pos(), &mut out).unwrap_err();
    assert_eq!(out.len(), 1);
    assert_eq!(
        e.to_string(),
        "field `data[2].trade_id`: expected an unsigned integer, found number -3"
    );
}

#[test]
fn malformed_json() {
    for (payload, exchange) in [
        ("", Exchange::Binance),
        ("   ", Exchange::Kraken),
        ("garbage", Exchange::Binance),
        ("{\"e\":\"trade\",}", Exchange::Binance),
        ("{\"e\":\"trade\"} {}", Exchange::Binance),
        ("{'e':'trade'}", Exchange::Binance),
        ("null", Exchange::Kraken),
        ("\"trade\"", Exchange::Binance),
        ("[\"trade\",\"BNBBTC\",1,\"1\",\"1\",1,true]", Exchange::Binance),
    ] {
        let e = err(exchange, payload.as_bytes());
        assert!(!e.is_empty());
    }
    assert_eq!(
        berr("{\"e\":\"trade\",}"),
        "invalid JSON at line 1 column 14: trailing comma"
    );
    let deep = "[".repeat(200) + &"]".repeat(200);
    err(Exchange::Kraken, KRAKEN.replace("0.5147", &deep).as_bytes());
}

#[test]
fn every_prefix_fails() {
    for (exchange, msg) in [
        (Exchange::Binance, BINANCE),
        (Exchange::Kraken, KRAKEN),
        (Exchange::Kraken, KRAKEN_MULTI),
    ] {
        for end in 0..msg.len() {
            err(exchange, &msg.as_bytes()[..end]);
        }
    }
}

#[test]
fn non_utf8() {
    for (i, exchange, msg) in [
        (0, Exchange::Binance, BINANCE),
        (30, Exchange::Kraken, KRAKEN),
        (KRAKEN.len() - 1, Exchange::Kraken, KRAKEN),
    ] {
        let mut bytes = msg.as_bytes().to_vec();
        bytes[i] = 0xc3; // lead byte followed by ASCII
        assert_eq!(err(exchange, &bytes), format!("not valid UTF-8 at byte {i}"));
    }
}

#[test]
fn random_mutations_never_panic() {
    let mut rng = TestRng(0x5eed);
    let mut out = Vec::new();
    let (mut oks, mut errs) = (0, 0);
    for case in 0..6000 {
        let (exchange, base) = match case % 3 {
            0 => (Exchange::Binance, BINANCE),
            1 => (Exchange::Kraken, KRAKEN),
            _ => (Exchange::Kraken, KRAKEN_MULTI),
        };
        let mut bytes = base.as_bytes().to_vec();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() as usize) % (bytes.len() + 1);
            let byte = match rng.next() % 4 {
                0 => (rng.next() % 256) as u8,
                1 => b"{}[]\",:-.eE0123456789\\ntfu"[(rng.next() % 26) as usize],
                2 => b'0' + (rng.next() % 10) as u8,
                _ => b' ',
            };
            match rng.next() % 3 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        let before = out.len();
        match decode(exchange, &bytes, &pos(), &mut out) {
            Ok(Decoded::Trades) => {
                oks += 1;
                assert!(out.len() > before);
            }
            Ok(Decoded::Control(_)) => assert_eq!(out.len(), before),
            Err(e) => {
                errs += 1;
                assert_eq!(out.len(), before);
                assert!(!e.to_string().is_empty());
                assert!(!e.to_string().contains('\n'));
            }
        }
    }
    assert!(oks > 100 && errs > 1000, "oks {oks} errs {errs}");
}

/// SplitMix64, for deterministic test inputs.
struct TestRng(u64);

impl TestRng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

// -- real message variants, from the exchanges' documentation -------------

/// What `decode` made of a message: its trades, or the control kind.
fn outcome(exchange: Exchange, payload: &str) -> Result<(Decoded, Vec<Trade>), String> {
    let mut out = Vec::new();
    decode(exchange, payload.as_bytes(), &pos(), &mut out)
        .map(|d| (d, out))
        .map_err(|e| e.to_string())
}

#[test]
fn binance_combined_streams_are_unwrapped() {
    // https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
    // "Combined stream events are wrapped as follows: {"stream":"<streamName>","data":<rawPayload>}"
    // and the Trade Streams payload example.
    let combined = r#"{"stream":"bnbbtc@trade","data":{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}}"#;
    let (decoded, trades) = outcome(Exchange::Binance, combined).unwrap();
    assert_eq!(decoded, Decoded::Trades);
    assert_eq!(trades, ok(Exchange::Binance, BINANCE), "the same trade as unwrapped");
    // The envelope may come first or last, and a bad payload names its field.
    let reordered = r#"{"data":{"e":"trade","E":1,"s":"BNBBTC","t":7,"p":"0.001","q":"1","T":1,"m":false,"M":true},"stream":"bnbbtc@trade"}"#;
    assert_eq!(outcome(Exchange::Binance, reordered).unwrap().1[0].trade_id, 7);
    let bad = combined.replace(r#""p":"0.001""#, r#""p":"x""#);
    assert_eq!(
        outcome(Exchange::Binance, &bad).unwrap_err(),
        r#"field `p`: invalid decimal "x""#
    );
    let not_object = r#"{"stream":"bnbbtc@trade","data":[1]}"#;
    assert!(
        outcome(Exchange::Binance, not_object)
            .unwrap_err()
            .contains("expected an object")
    );
    // A combined aggTrade stream is a control message, not a dead letter.
    let agg = r#"{"stream":"bnbbtc@aggTrade","data":{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}}"#;
    assert_eq!(
        outcome(Exchange::Binance, agg).unwrap().0,
        Decoded::Control(ControlKind::OtherStream)
    );
}

#[test]
fn control_messages_are_counted_not_errors() {
    use ControlKind::*;
    let cases: &[(Exchange, &str, ControlKind)] = &[
        // https://docs.kraken.com/api/docs/websocket-v2/heartbeat
        (Exchange::Kraken, r#"{"channel":"heartbeat"}"#, Heartbeat),
        // https://docs.kraken.com/api/docs/websocket-v2/status
        (
            Exchange::Kraken,
            r#"{"channel":"status","data":[{"api_version":"v2","connection_id":12393906104898154338,"system":"online","version":"2.0.4"}],"type":"update"}"#,
            Status,
        ),
        // https://docs.kraken.com/api/docs/websocket-v2/trade (subscribe acknowledgement)
        (
            Exchange::Kraken,
            r#"{"method":"subscribe","result":{"channel":"trade","snapshot":true,"symbol":"MATIC/USD"},"success":true,"time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#,
            Response,
        ),
        (
            Exchange::Kraken,
            r#"{"error":"Currency pair not supported","method":"subscribe","success":false,"symbol":"XYZ/USD","time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#,
            Response,
        ),
        (Exchange::Kraken, r#"{"method":"pong","req_id":101}"#, Response),
        // https://docs.kraken.com/api/docs/websocket-v2/book
        (
            Exchange::Kraken,
            r#"{"channel":"book","type":"update","data":[{"symbol":"MATIC/USD","bids":[{"price":0.5657,"qty":1098.3947558}],"asks":[],"checksum":2114181697,"timestamp":"2023-10-06T17:35:55.440295Z"}]}"#,
            OtherStream,
        ),
        (
            Exchange::Kraken,
            r#"{"channel":"trade","type":"snapshot","data":[]}"#,
            Empty,
        ),
        // https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams (responses)
        (Exchange::Binance, r#"{"result":null,"id":1}"#, Response),
        (Exchange::Binance, r#"{"result":["btcusdt@trade"],"id":3}"#, Response),
        (
            Exchange::Binance,
            r#"{"code":2,"msg":"Invalid request: unknown variant","id":1}"#,
            Response,
        ),
        (
            Exchange::Binance,
            r#"{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}"#,
            OtherStream,
        ),
    ];
    for (exchange, msg, kind) in cases {
        let (decoded, trades) = outcome(*exchange, msg).unwrap_or_else(|e| panic!("{msg}: {e}"));
        assert_eq!(decoded, Decoded::Control(*kind), "{msg}");
        assert!(trades.is_empty());
    }
    // Not control messages: malformed ones still are errors.
    assert!(outcome(Exchange::Kraken, r#"{"channel":42}"#).is_err());
    assert!(outcome(Exchange::Kraken, r#"{"method":7}"#).is_err());
    assert!(
        outcome(Exchange::Binance, r#"{"id":1}"#).is_err(),
        "neither a trade nor a response"
    );
}

#[test]
fn values_a_column_cannot_hold_are_refused_with_the_reason() {
    // Trade ids: Iceberg's long is signed.
    let e = berr(&BINANCE.replace("12345", "18446744073709551615"));
    assert!(
        e.contains("field `t`") && e.contains("18446744073709551615") && e.contains("range"),
        "{e}"
    );
    let e = berr(&BINANCE.replace("12345", "9223372036854775808"));
    assert!(e.contains("beyond the table's range"), "{e}");
    assert_eq!(
        ok(Exchange::Binance, &BINANCE.replace("12345", "9223372036854775807"))[0].trade_id,
        i64::MAX as u64
    );
    let k = KRAKEN.replace("4665846", "18446744073709551615");
    assert!(kerr(&k).contains("data[0].trade_id"), "{}", kerr(&k));
    // A 39-digit quantity: an i128 holds it, decimal(38, 18) does not.
    let e = berr(&BINANCE.replace(r#""100""#, r#""170141183460469231731.687303715884105727""#));
    assert!(e.contains("field `q`") && e.contains("38 digits"), "{e}");
    let e = kerr(&KRAKEN.replace("6423.46326", "170141183460469231731.687303715884105727"));
    assert!(e.contains("data[0].qty") && e.contains("38 digits"), "{e}");
    // 38 digits is fine.
    let t = ok(
        Exchange::Binance,
        &BINANCE.replace(r#""100""#, r#""99999999999999999999.999999999999999999""#),
    );
    assert_eq!(
        t[0].quantity,
        Decimal(99_999_999_999_999_999_999_999_999_999_999_999_999)
    );
}

/// Numbers at the edges, against a model: exact when the column holds the
/// value, a dead letter with a reason otherwise; never a wrong value.
#[test]
fn decoder_edges_against_a_model() {
    let ints = [
        "0",
        "1",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "170141183460469231731687303715884105727",
        "-1",
        "01",
        "1e3",
        "1.0",
    ];
    for text in ints {
        let model: Option<u64> =
            if text.bytes().all(|b| b.is_ascii_digit()) && !(text.len() > 1 && text.starts_with('0')) {
                text.parse::<u64>().ok().filter(|v| *v <= i64::MAX as u64)
            } else {
                None
            };
        let got = outcome(Exchange::Binance, &BINANCE.replace("12345", text));
        match model {
            Some(v) => assert_eq!(got.unwrap().1[0].trade_id, v, "t = {text}"),
            None => assert!(got.is_err(), "t = {text} was accepted"),
        }
    }
    let decimals = [
        "0.000000000000000001",
        "0.0000000000000000001",
        "0.1234567890123456789",
        "0.123456789012345678",
        "1.0000000000000000000",
        "99999999999999999999.999999999999999999",
        "100000000000000000000",
        "99999999999999999999.9999999999999999999",
        "1e19",
        "1e20",
        "1E-18",
        "1e-19",
        "12.5e-2",
        "-1",
        "+1",
        "00.5",
        "0.5",
        "9223372036854775807.5",
        "18446744073709551615.25",
        "170141183460469231731",
    ];
    for text in decimals {
        let got = outcome(Exchange::Binance, &BINANCE.replace(r#""100""#, &format!("{text:?}")));
        // The model: exact rational arithmetic on the text, in i256.
        let model = model_decimal(text).filter(|v| *v > 0 && *v < 100_000_000_000_000_000_000_000_000_000_000_000_000);
        match (model, got) {
            (Some(v), Ok((_, t))) => assert_eq!(t[0].quantity, Decimal(v), "q = {text}"),
            (None, Err(reason)) => assert!(reason.contains("field `q`"), "q = {text}: {reason}"),
            (m, g) => panic!("q = {text}: model {m:?}, decoder {g:?}"),
        }
    }
}

/// `text` × 10^18 if it is the JSON number grammar and exact at scale 18.
fn model_decimal(text: &str) -> Option<i128> {
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.strip_prefix('+').unwrap_or(e).parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (neg, m) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int, frac) = m.split_once('.').unwrap_or((m, ""));
    if int.is_empty() || (int.len() > 1 && int.starts_with('0')) || (m.contains('.') && frac.is_empty()) {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let scale = 18 + exp - frac.len() as i32;
    let mut v = arrow_buffer::i256::from_i128(0);
    for d in digits.bytes() {
        v = v.checked_mul(arrow_buffer::i256::from_i128(10))? + arrow_buffer::i256::from_i128((d - b'0') as i128);
    }
    let ten = arrow_buffer::i256::from_i128(10);
    if scale >= 0 {
        for _ in 0..scale {
            v = v.checked_mul(ten)?;
        }
    } else {
        for _ in 0..-scale {
            if v.checked_rem(ten)? != arrow_buffer::i256::from_i128(0) {
                return None;
            }
            v = v.checked_div(ten)?;
        }
    }
    let v = v.to_i128()?;
    Some(if neg { -v } else { v })
}
