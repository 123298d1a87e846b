//! The exchanges' real message variants, end to end against the broker:
//! Binance combined streams land in bronze, control messages are counted per
//! kind (and dead-lettered only when asked), values a column cannot hold are
//! dead letters with the reason, and every value is stored as sent.

mod common;

use common::job::*;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// The Binance and Kraken topics' messages: fixtures copied from the
/// exchanges' documentation (see `src/source/kafka/decode/tests.rs` for the
/// pages), with ids and times of this test.
fn feed(t: i64) -> (Vec<String>, Vec<String>) {
    let binance = vec![
        binance_trade("BNBBTC", 1, "0.001", "100", t),
        format!(
            r#"{{"stream":"bnbbtc@trade","data":{{"e":"trade","E":{t},"s":"BNBBTC","t":2,"p":"0.00100001","q":"5","T":{t},"m":true,"M":true}}}}"#
        ),
        format!(
            r#"{{"stream":"btcusdt@trade","data":{{"e":"trade","E":{t},"s":"BTCUSDT","t":3,"p":"60123.45000000","q":"0.00010000","T":{t},"m":false,"M":true}}}}"#
        ),
        r#"{"result":null,"id":1}"#.to_string(),
        format!(
            r#"{{"stream":"bnbbtc@aggTrade","data":{{"e":"aggTrade","E":{t},"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":{t},"m":true,"M":true}}}}"#
        ),
        // Values no column can hold: dead letters with the reason.
        binance_trade("BNBBTC", 18446744073709551615, "0.001", "1", t),
        binance_trade("BNBBTC", 4, "0.001", "170141183460469231731.687303715884105727", t),
        binance_trade("BNBBTC", 5, "0.00100002", "99999999999999999999.999999999999999999", t),
    ];
    let iso = chrono::DateTime::from_timestamp_micros(t * 1000 + 123)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let kraken = vec![
        r#"{"method":"subscribe","result":{"channel":"trade","snapshot":true,"symbol":"MATIC/USD"},"success":true,"time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#.to_string(),
        r#"{"channel":"trade","type":"snapshot","data":[]}"#.to_string(),
        r#"{"channel":"status","data":[{"api_version":"v2","connection_id":12393906104898154338,"system":"online","version":"2.0.4"}],"type":"update"}"#.to_string(),
        format!(
            r#"{{"channel":"trade","type":"update","data":[{{"symbol":"MATIC/USD","side":"buy","price":0.5147,"qty":6423.46326,"ord_type":"limit","trade_id":4665846,"timestamp":"{iso}"}},{{"symbol":"PEPE/USD","side":"sell","price":0.000012345678,"qty":1e-8,"ord_type":"market","trade_id":7,"timestamp":"{iso}"}}]}}"#
        ),
        r#"{"channel":"heartbeat"}"#.to_string(),
        r#"{"channel":"heartbeat"}"#.to_string(),
    ];
    (binance, kraken)
}

#[test]
fn real_message_variants_end_to_end() {
    let brokers = broker();
    let topics = topics("variants");
    create_topic(&brokers, &topics.0, 1);
    create_topic(&brokers, &topics.1, 1);
    let t = now_ms() - 5_000;
    let (binance, kraken) = feed(t);
    send(&brokers, &topics.0, 0, "k", &binance);
    send(&brokers, &topics.1, 0, "k", &kraken);

    // `source.control = "skip"` (the default): counted, not dead letters.
    let skip = temp_dir("variants-skip");
    let cfg = bronze_config(&skip, "variants", &brokers, &topics, "");
    let out = ok(k2().args(["run", "bronze", "--bounded", "--config"]).arg(&cfg));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let control: BTreeMap<String, u64> = serde_json::from_value(report["control"].clone()).unwrap();
    let want: BTreeMap<String, u64> = [
        ("heartbeat", 2),
        ("status", 1),
        ("response", 2),
        ("other_stream", 1),
        ("empty", 1),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    assert_eq!(control, want, "{report}");
    let b = read_tables(
        &skip,
        &["bronze_binance_trades"],
        "message_id,trade_id,price,quantity,symbol",
        false,
    );
    let mut rows: Vec<(String, i64, String, String, String)> = b[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["message_id"].as_str().unwrap().into(),
                r["trade_id"].as_i64().unwrap(),
                r["price"].as_str().unwrap().into(),
                r["quantity"].as_str().unwrap().into(),
                r["symbol"].as_str().unwrap().into(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        [
            "binance:BNBBTC:1",
            "binance:BNBBTC:2",
            "binance:BNBBTC:5",
            "binance:BTCUSDT:3"
        ],
        "plain and combined-stream trades"
    );
    let five = rows.iter().find(|r| r.1 == 5).unwrap();
    assert_eq!(five.3, "99999999999999999999.999999999999999999", "38 digits, exact");
    let three = rows.iter().find(|r| r.1 == 3).unwrap();
    assert_eq!(
        (three.2.as_str(), three.4.as_str()),
        ("60123.450000000000000000", "BTC/USDT")
    );
    let k = read_tables(
        &skip,
        &["bronze_kraken_trades"],
        "message_id,price,quantity,event_time",
        false,
    );
    let mut krows: Vec<(String, String, String, i64)> = k[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["message_id"].as_str().unwrap().into(),
                r["price"].as_str().unwrap().into(),
                r["quantity"].as_str().unwrap().into(),
                r["event_time"].as_i64().unwrap(),
            )
        })
        .collect();
    krows.sort();
    assert_eq!(
        krows,
        vec![
            (
                "kraken:MATIC/USD:4665846".to_string(),
                "0.514700000000000000".to_string(),
                "6423.463260000000000000".to_string(),
                t * 1000 + 123
            ),
            (
                "kraken:PEPE/USD:7".to_string(),
                "0.000012345678000000".to_string(),
                "0.000000010000000000".to_string(),
                t * 1000 + 123
            ),
        ],
        "prices as sent, event times to the µs"
    );
    let dead = read_tables(&skip, &["dead_letters"], "source_offset,reason", false);
    let mut reasons: Vec<(i64, String)> = dead[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["source_offset"].as_i64().unwrap(),
                r["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "only what could not be stored: {reasons:?}");
    assert!(
        reasons[0].1.contains("field `t`") && reasons[0].1.contains("range"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].1.contains("field `q`") && reasons[1].1.contains("38 digits"),
        "{reasons:?}"
    );

    // `source.control = "dead_letter"`: control messages are also dead letters.
    let dl = temp_dir("variants-dl");
    let cfg = bronze_config(&dl, "variants", &brokers, &topics, "");
    append_config(&cfg, "\n[source]\ncontrol = \"dead_letter\"\n");
    ok(k2().args(["run", "bronze", "--bounded", "--config"]).arg(&cfg));
    let dead = read_tables(&dl, &["dead_letters"], "reason", false);
    let reasons: Vec<String> = dead[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().into())
        .collect();
    assert_eq!(reasons.len(), 2 + 7, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| r.starts_with("control message")).count(), 7);
    assert!(
        reasons.iter().any(|r| r == "control message (heartbeat)"),
        "{reasons:?}"
    );
}
