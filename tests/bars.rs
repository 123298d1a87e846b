//! Silver and gold bars (`ohlcv`, `gold`) against a sequential oracle: on 1,
//! 2 and 4 workers, and across SIGKILL and SIGTERM restarts, every bar of
//! `ohlcv_1m`, `ohlcv_1h` and `vwap_1m` is the oracle's, to the last digit,
//! and written once.
//!
//! The oracle computes each bar from the trades themselves (on-time first
//! copies, as dedup and the lateness rule sort them), with its own 256-bit
//! sums and rounding: the hour and cross-exchange bars are not rolled up in
//! the oracle, so a roll-up that lost or doubled a minute shows.

mod common;

use arrow_buffer::i256;
use common::arb::*;
use common::job::*;
use common::*;
use k2::record::Trade;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const MINUTE_US: i64 = 60_000_000;
const HOUR_US: i64 = 3_600_000_000;
/// 2026-01-01 00:00 UTC, ms.
const T0_MS: i64 = 1_767_225_600_000;

/// A bar's identity: (exchange or "" across exchanges, symbol, window start µs).
type Key = (String, String, i64);

/// A bar's values, as the tables hold them: decimals as fixed-point text.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Values {
    open: String,
    high: String,
    low: String,
    close: String,
    volume: String,
    vwap: String,
    trades: u64,
}

/// `raw` (a decimal(38, 18)'s unscaled value) as fixed-point text.
fn text(raw: i128) -> String {
    let sign = if raw < 0 { "-" } else { "" };
    let abs = raw.unsigned_abs();
    let scale = 10u128.pow(18);
    format!("{sign}{}.{:018}", abs / scale, abs % scale)
}

/// `n / d` rounded to the nearest, ties to even (n, d > 0).
fn div_half_even(n: i256, d: i256) -> i128 {
    let (q, r) = (n / d, n % d);
    let twice = r * i256::from_i128(2);
    let up = twice > d || (twice == d && q % i256::from_i128(2) != i256::ZERO);
    let q = if up { q + i256::ONE } else { q };
    q.as_i128()
}

/// The bar of `trades` (non-empty): open and close by (event time, trade id,
/// price), exact sums, one rounding.
fn bar(trades: &[&Trade]) -> Values {
    let order = |t: &&&Trade| (t.event_us, t.trade_id, t.price);
    let open = trades.iter().min_by_key(order).unwrap();
    let close = trades.iter().max_by_key(order).unwrap();
    let volume: i128 = trades.iter().map(|t| t.quantity.0).sum();
    let notional = trades.iter().fold(i256::ZERO, |s, t| {
        s + i256::from_i128(t.price.0) * i256::from_i128(t.quantity.0)
    });
    Values {
        open: text(open.price.0),
        high: text(trades.iter().map(|t| t.price.0).max().unwrap()),
        low: text(trades.iter().map(|t| t.price.0).min().unwrap()),
        close: text(close.price.0),
        volume: text(volume),
        vwap: text(div_half_even(notional, i256::from_i128(volume))),
        trades: trades.len() as u64,
    }
}

/// Each table's bars by the oracle: the windows that end at or before the
/// final watermark (a run closes those; the next run the others).
fn oracle(brokers: &str, topics: &(String, String)) -> BTreeMap<&'static str, BTreeMap<Key, Values>> {
    let classified = classify(brokers, topics);
    let horizon = classified.final_watermark_us;
    let trades: Vec<&Trade> = classified.on_time.iter().flatten().collect();
    let mut out = BTreeMap::new();
    for (table, size, per_exchange) in [
        ("ohlcv_1m", MINUTE_US, true),
        ("ohlcv_1h", HOUR_US, true),
        ("vwap_1m", MINUTE_US, false),
    ] {
        let mut groups: BTreeMap<Key, Vec<&Trade>> = BTreeMap::new();
        for t in &trades {
            let start = t.event_us - t.event_us.rem_euclid(size);
            if start + size > horizon {
                continue;
            }
            let exchange = if per_exchange {
                t.exchange.name().to_string()
            } else {
                String::new()
            };
            groups
                .entry((exchange, t.symbol.to_string(), start))
                .or_default()
                .push(t);
        }
        out.insert(table, groups.iter().map(|(k, ts)| (k.clone(), bar(ts))).collect());
    }
    out
}

/// The engine's bars of `table`; fails on a bar written twice.
fn engine(dir: &Path, table: &str) -> BTreeMap<Key, Values> {
    let columns = "exchange,symbol,window_start,window_end,open,high,low,close,volume,vwap,trades,overflowed";
    let t = read_tables(dir, &[table], columns, false);
    let rows = t[0]["rows"].as_array().cloned().unwrap_or_default();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let bars: BTreeMap<Key, Values> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["overflowed"], false, "{r}");
            let start = r["window_start"].as_i64().unwrap();
            let size = r["window_end"].as_i64().unwrap() - start;
            assert_eq!(size, if table == "ohlcv_1h" { HOUR_US } else { MINUTE_US }, "{r}");
            let key = (s(&r["exchange"]), s(&r["symbol"]), start);
            let values = Values {
                open: s(&r["open"]),
                high: s(&r["high"]),
                low: s(&r["low"]),
                close: s(&r["close"]),
                volume: s(&r["volume"]),
                vwap: s(&r["vwap"]),
                trades: r["trades"].as_u64().unwrap(),
            };
            (key, values)
        })
        .collect();
    assert_eq!(bars.len(), rows.len(), "{table}: a bar was written twice");
    bars
}

fn assert_bars(what: &str, dir: &Path, want: &BTreeMap<&'static str, BTreeMap<Key, Values>>) {
    for (table, want) in want {
        let got = engine(dir, table);
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).take(3).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).take(3).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}, {table}: {} bars vs oracle {}; missing {missing:?}, extra {extra:?}",
            got.len(),
            want.len()
        );
        for (key, values) in want {
            assert_eq!(&got[key], values, "{what}, {table}, {key:?}");
        }
    }
}

/// The feed in `parts` bursts of 300 ms of trades each, 10 minutes apart,
/// each starting 100 ms before a minute boundary: bars with trades on both
/// sides of it, and more than an hour of event time in all.
fn produce_bursts(brokers: &str, topics: &(String, String), seed: u64, parts: std::ops::Range<i64>) {
    for i in parts {
        produce_part(brokers, topics, seed + i as u64, 300, T0_MS + i * 600_000 + 59_900);
    }
}

fn config(dir: &Path, job: &str, brokers: &str, topics: &(String, String)) -> std::path::PathBuf {
    let path = bronze_config(dir, job, brokers, topics, "poll_batch = 256");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[source]\nmax_out_of_orderness_ms = {ALLOWANCE_MS}\nidle_timeout_ms = 60000\n\n[ohlcv]\nwindow_ms = 60000\n"
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn enough(want: &BTreeMap<&'static str, BTreeMap<Key, Values>>) {
    let n = |t: &str| want[t].len();
    assert!(
        n("ohlcv_1m") > 50 && n("ohlcv_1h") >= 12 && n("vwap_1m") > 25,
        "the feed makes bars of every kind: {:?}",
        want.iter().map(|(t, b)| (*t, b.len())).collect::<Vec<_>>()
    );
}

#[test]
fn bars_equal_their_oracle_on_1_2_and_4_workers() {
    let brokers = broker();
    let topics = topics("bars");
    create_topic(&brokers, &topics.0, 3);
    create_topic(&brokers, &topics.1, 3);
    produce_bursts(&brokers, &topics, 70, 0..8);
    let want = oracle(&brokers, &topics);
    enough(&want);
    for workers in [1, 2, 4] {
        let dir = temp_dir(&format!("bars-w{workers}"));
        let config = config(&dir, "bars", &brokers, &topics);
        ok(k2()
            .args(["run", "gold", "--bounded", "-w", &workers.to_string(), "--config"])
            .arg(&config));
        assert_bars(&format!("gold on {workers} workers"), &dir, &want);
    }
    // `ohlcv` alone writes the same minute bars.
    let dir = temp_dir("bars-ohlcv");
    let config = config(&dir, "ohlcv", &brokers, &topics);
    ok(k2()
        .args(["run", "ohlcv", "--bounded", "-w", "2", "--config"])
        .arg(&config));
    let minutes = BTreeMap::from([("ohlcv_1m", want["ohlcv_1m"].clone())]);
    assert_bars("ohlcv on 2 workers", &dir, &minutes);
    delete_topic(&brokers, &topics.0);
    delete_topic(&brokers, &topics.1);
}

/// The feed arrives in three parts while `gold` runs: the first run is
/// killed with SIGKILL, the second stopped with SIGTERM (both leave open
/// bars in the checkpoint for the next run to finish), and a bounded third
/// run reads the rest, on another number of workers each time.
#[test]
fn bars_are_exact_across_sigkill_and_sigterm_restarts() {
    let brokers = broker();
    let topics = topics("barscrash");
    create_topic(&brokers, &topics.0, 2);
    create_topic(&brokers, &topics.1, 2);
    let dir = temp_dir("barscrash");
    let config = config(&dir, "barscrash", &brokers, &topics);
    let manifests = || std::fs::read_dir(dir.join("checkpoints/barscrash/manifests")).map_or(0, |d| d.count());
    let planned = |log: &Path| {
        wait_for("the job to plan", Duration::from_secs(60), || {
            std::fs::read_to_string(log).is_ok_and(|l| l.contains("source planned"))
        })
    };

    let log = dir.join("run0.log");
    let mut job = spawn_job(&config, "gold", 2, &log);
    planned(&log);
    produce_bursts(&brokers, &topics, 90, 0..3);
    wait_for("a first checkpoint", Duration::from_secs(60), || manifests() > 0);
    let mut child = job.0.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let log = dir.join("run1.log");
    let job = spawn_job(&config, "gold", 3, &log);
    planned(&log);
    let n = manifests();
    produce_bursts(&brokers, &topics, 90, 3..6);
    wait_for("a new checkpoint", Duration::from_secs(60), || manifests() > n);
    let report = stop_job(job, &log); // SIGTERM
    assert!(report["messages"].as_u64().unwrap() > 0, "{report}");

    produce_bursts(&brokers, &topics, 90, 6..9);
    ok(k2()
        .args(["run", "gold", "--bounded", "-w", "1", "--config"])
        .arg(&config));
    let want = oracle(&brokers, &topics);
    enough(&want);
    assert_bars("after SIGKILL and SIGTERM restarts", &dir, &want);
    delete_topic(&brokers, &topics.0);
    delete_topic(&brokers, &topics.1);
}
