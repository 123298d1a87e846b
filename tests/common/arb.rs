//! The arbitrage query's ground truth for the integration tests: a
//! brute-force sequential oracle over what the topics hold, the job config
//! it assumes, and readers of what the engine committed.

use super::*;
use k2::record::{Exchange, SourcePosition, Trade};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DELTA_MS: i64 = 100;
pub const ALLOWANCE_MS: i64 = 150;
pub const FEES: (f64, f64) = (2.0, 5.0);
pub const THRESHOLD: f64 = -4.5;

pub fn arbitrage_config(dir: &Path, job: &str, brokers: &str, topics: &(String, String), extra: &str) -> PathBuf {
    let path = bronze_config(dir, job, brokers, topics, "poll_batch = 256");
    super::job::append_config(&path, &arbitrage_sections(topics, extra));
    path
}

/// The `[source]` and `[arbitrage]` sections the oracle assumes; `extra`
/// lines go into `[arbitrage]`.
pub fn arbitrage_sections(topics: &(String, String), extra: &str) -> String {
    format!(
        r#"
[source]
max_out_of_orderness_ms = {ALLOWANCE_MS}
idle_timeout_ms = 60000

[arbitrage]
delta_ms = {DELTA_MS}
threshold_bps = {THRESHOLD}
fees_bps = {{ binance = {}, kraken = {} }}
alerts_topic = "{}.alerts"
{extra}
"#,
        FEES.0, FEES.1, topics.0
    )
}

/// Every message of `topic`, per partition in offset order: (offset, Kafka
/// timestamp, payload).
pub fn read_topic(brokers: &str, topic: &str) -> BTreeMap<i32, Vec<(i64, i64, Vec<u8>)>> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "k2-test-oracle")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut out = BTreeMap::new();
    let metadata = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    for p in partitions {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
        let mut msgs = Vec::new();
        if high > 0 {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
            c.assign(&tpl).unwrap();
            let limit = std::time::Instant::now() + Duration::from_secs(60);
            while msgs.len() < high as usize {
                assert!(std::time::Instant::now() < limit, "reading {topic}/{p}");
                if let Some(Ok(m)) = c.poll(Duration::from_secs(1)) {
                    let ts = m.timestamp().to_millis().unwrap_or(0);
                    msgs.push((m.offset(), ts, m.payload().unwrap_or_default().to_vec()));
                }
            }
        }
        out.insert(p, msgs);
    }
    out
}

/// What the whole query must produce, computed sequentially from the topics.
pub struct Oracle {
    /// alert id -> net spread in millibps.
    pub alerts: BTreeMap<String, i64>,
    /// Message ids of late trades (each once: the first copy decides), sorted.
    pub late: Vec<String>,
    /// Trade copies read late (what the source counts), repeats included.
    pub late_copies: usize,
    /// Every distinct valid trade's message id, late or not: the bronze tables.
    pub trades: BTreeSet<String>,
}

/// The topics' trades as dedup and the late-data policy sort them: the first
/// copy of each trade in Kafka order decides, and it is late when more than
/// [`ALLOWANCE_MS`] below the largest event time its own partition has shown
/// (compared in µs, as exchanges send them).
pub struct Classified {
    /// On-time first copies per side (Binance, Kraken).
    pub on_time: [Vec<Trade>; 2],
    /// Message ids of late first copies, sorted.
    pub late: Vec<String>,
    /// Every trade copy read, repeats included.
    pub copies: usize,
    /// Trade copies read late, repeats included.
    pub late_copies: usize,
    /// Messages that do not decode.
    pub malformed: u64,
    /// Where event time is when a run has read everything (µs): the least
    /// over partitions with trades of their largest event time minus
    /// [`ALLOWANCE_MS`]. A run acts on event time below it only: the next
    /// run acts on the rest (see `k2::stop`).
    pub final_watermark_us: i64,
}

/// Sorts every trade of `topics` into on time and late (see [`Classified`]).
pub fn classify(brokers: &str, topics: &(String, String)) -> Classified {
    let mut c = Classified {
        on_time: [vec![], vec![]],
        late: Vec::new(),
        copies: 0,
        late_copies: 0,
        malformed: 0,
        final_watermark_us: i64::MAX,
    };
    let mut seen = BTreeSet::new();
    for (side, (exchange, topic)) in [(Exchange::Binance, &topics.0), (Exchange::Kraken, &topics.1)]
        .into_iter()
        .enumerate()
    {
        for (partition, msgs) in read_topic(brokers, topic) {
            let mut max_us: Option<i64> = None;
            for (offset, ts, payload) in msgs {
                let pos = SourcePosition {
                    topic: side as u16,
                    partition,
                    offset,
                    kafka_ts_ms: ts,
                    ingest_us: 0,
                };
                let mut trades = Vec::new();
                if k2::source::kafka::decode::decode(exchange, &payload, &pos, &mut trades).is_err() {
                    c.malformed += 1;
                    continue;
                }
                for t in trades {
                    let us = t.event_us;
                    let is_late = max_us.is_some_and(|m| us + ALLOWANCE_MS * 1000 < m);
                    max_us = Some(max_us.map_or(us, |m| m.max(us)));
                    c.copies += 1;
                    c.late_copies += usize::from(is_late);
                    if !seen.insert(t.message_id) {
                        continue; // a repeat: the first copy decided
                    }
                    if is_late {
                        c.late.push(t.message_id.to_string());
                    } else {
                        c.on_time[side].push(t);
                    }
                }
            }
            if let Some(m) = max_us {
                c.final_watermark_us = c.final_watermark_us.min(m - ALLOWANCE_MS * 1000);
            }
        }
    }
    c.late.sort();
    c
}

/// The whole query's result, brute force over [`classify`].
pub fn oracle(brokers: &str, topics: &(String, String)) -> Oracle {
    let Classified {
        on_time,
        late,
        late_copies,
        ..
    } = classify(brokers, topics);
    let mut all: BTreeSet<String> = late.iter().cloned().collect();
    for side in &on_time {
        all.extend(side.iter().map(|t| t.message_id.to_string()));
    }
    // Every pair, brute force, at most Δ apart in µs.
    let mut alerts = BTreeMap::new();
    for b in &on_time[0] {
        for k in on_time[1].iter().filter(|k| k.symbol == b.symbol) {
            if (b.event_us - k.event_us).abs() > DELTA_MS * 1000 {
                continue;
            }
            let (pb, pk) = (b.price.to_f64(), k.price.to_f64());
            let spread = if pb <= pk {
                (pk * (1.0 - FEES.1 / 1e4) - pb * (1.0 + FEES.0 / 1e4)) / pb * 1e4
            } else {
                (pb * (1.0 - FEES.0 / 1e4) - pk * (1.0 + FEES.1 / 1e4)) / pk * 1e4
            };
            if spread > THRESHOLD {
                alerts.insert(
                    k2::record::Alert::id_of(b.message_id, k.message_id),
                    (spread * 1000.0).round() as i64,
                );
            }
        }
    }
    Oracle {
        alerts,
        late,
        late_copies,
        trades: all,
    }
}

pub fn produce_feed(brokers: &str, topics: &(String, String), seed: u64) {
    produce_part(brokers, topics, seed, 2500, 1767225600000);
}

/// `count` messages per exchange, event times from `event_start_ms` on.
pub fn produce_part(brokers: &str, topics: &(String, String), seed: u64, count: u64, event_start_ms: i64) {
    produce_part_with(produce_cmd(brokers, topics), seed, count, event_start_ms);
}

/// [`produce_part`] through `produce`, a `k2 produce` command with its Kafka
/// settings and topics (e.g. [`super::sasl::produce_cmd_with_config`]).
pub fn produce_part_with(mut produce: Command, seed: u64, count: u64, event_start_ms: i64) {
    ok(produce
        .args(["--count", &count.to_string(), "--rate", "0"])
        .args(["--duplicates", "0.05", "--malformed", "0.01"])
        .args(["--out-of-order-ms", "400", "--seed", &seed.to_string()])
        .args(["--event-start-ms", &event_start_ms.to_string()])
        .args(["--symbols", "BTC,ETH,SOL,DOGE,XRP,ADA", "--quiet"]));
}

/// Alert ids in `topic` as a `read_committed` consumer sees them, with
/// repeats: every partition is read to its end (the last stable offset).
pub fn committed_alert_ids(brokers: &str, topic: &str) -> Vec<String> {
    committed_alert_ids_in(&k2::config::KafkaConfig::plaintext(brokers), topic)
}

/// [`committed_alert_ids`] read with the client settings of `kafka` (e.g.
/// over SASL_SSL).
pub fn committed_alert_ids_in(kafka: &k2::config::KafkaConfig, topic: &str) -> Vec<String> {
    let mut ids = Vec::new();
    k2::metrics::read_topic_to_end(kafka, topic, true, Duration::from_secs(60), |payload, _| {
        let v: Value = serde_json::from_slice(payload).unwrap();
        ids.push(v["alert_id"].as_str().unwrap().to_string());
    })
    .unwrap_or_else(|e| panic!("reading {topic}: {e}"));
    ids
}

/// The engine's alerts (id -> millibps) and late trade ids, read with pyiceberg.
pub fn engine_output(dir: &Path) -> (BTreeMap<String, i64>, Vec<String>) {
    engine_output_in(&store::Catalog::local(dir))
}

/// [`engine_output`] for the tables of `catalog`.
pub fn engine_output_in(catalog: &store::Catalog) -> (BTreeMap<String, i64>, Vec<String>) {
    let t = read_tables_in(catalog, &["arbitrage_signals"], "alert_id,spread_bps", false);
    let alerts = t[0]["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r["alert_id"].as_str().unwrap().to_string(),
                        (r["spread_bps"].as_f64().unwrap() * 1000.0).round() as i64,
                    )
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let n = alerts.len();
    let alerts: BTreeMap<String, i64> = alerts.into_iter().collect();
    assert_eq!(n, alerts.len(), "an alert was committed twice");
    let late = table_ids_in(catalog, "late_trades");
    (alerts, late)
}

pub fn assert_matches(what: &str, got: &BTreeMap<String, i64>, want: &Oracle) {
    let missing: Vec<_> = want.alerts.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.alerts.contains_key(*k)).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} alerts vs oracle {}; missing {missing:?}, extra {extra:?}",
        got.len(),
        want.alerts.len()
    );
    for (id, ms) in got {
        assert!(
            (ms - want.alerts[id]).abs() <= 1,
            "{what}: spread of {id}: {ms} vs {}",
            want.alerts[id]
        );
    }
}

pub fn assert_same_late(got: &[String], want: &[String], what: &str) {
    if got != want {
        let (g, w): (BTreeSet<_>, BTreeSet<_>) = (got.iter().collect(), want.iter().collect());
        let extra: Vec<_> = g.difference(&w).take(5).collect();
        let missing: Vec<_> = w.difference(&g).take(5).collect();
        panic!(
            "{what}: late trades {} vs oracle {}; extra {extra:?}, missing {missing:?}",
            got.len(),
            want.len()
        );
    }
}

/// The message ids in both bronze tables; fails if one is there twice.
pub fn bronze_ids(dir: &Path) -> BTreeSet<String> {
    bronze_ids_in(&store::Catalog::local(dir))
}

/// [`bronze_ids`] for the tables of `catalog`.
pub fn bronze_ids_in(catalog: &store::Catalog) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for t in read_tables_in(
        catalog,
        &["bronze_binance_trades", "bronze_kraken_trades"],
        "message_id",
        false,
    ) {
        for id in ids(&t["rows"]) {
            assert!(all.insert(id.clone()), "{id} is in the bronze tables twice");
        }
    }
    all
}

/// Asserts the bronze tables hold exactly the oracle's trades.
pub fn assert_bronze(what: &str, dir: &Path, want: &Oracle) {
    assert_bronze_in(what, &store::Catalog::local(dir), want)
}

/// [`assert_bronze`] for the tables of `catalog`.
pub fn assert_bronze_in(what: &str, catalog: &store::Catalog, want: &Oracle) {
    let got = bronze_ids_in(catalog);
    let missing: Vec<_> = want.trades.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&want.trades).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: bronze holds {} trades vs {} distinct in the topics; missing {missing:?}, extra {extra:?}",
        got.len(),
        want.trades.len()
    );
}

/// Asserts the transactional alerts topic holds, as a `read_committed`
/// consumer sees it, exactly the oracle's alerts, each once.
pub fn assert_alerts_topic(brokers: &str, topic: &str, want: &Oracle) {
    assert_alerts_topic_in(&k2::config::KafkaConfig::plaintext(brokers), topic, want)
}

/// [`assert_alerts_topic`], read with the client settings of `kafka`.
pub fn assert_alerts_topic_in(kafka: &k2::config::KafkaConfig, topic: &str, want: &Oracle) {
    let ids = committed_alert_ids_in(kafka, topic);
    let n = ids.len();
    let set: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(n, set.len(), "an alert was published twice to the transactional topic");
    let want_ids: BTreeSet<String> = want.alerts.keys().cloned().collect();
    let missing: Vec<_> = want_ids.difference(&set).take(5).collect();
    let extra: Vec<_> = set.difference(&want_ids).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "alerts topic: {} alerts vs oracle {}; missing {missing:?}, extra {extra:?}",
        set.len(),
        want_ids.len()
    );
}

/// Messages in both topics.
pub fn topic_ends(brokers: &str, topics: &(String, String)) -> i64 {
    [&topics.0, &topics.1]
        .into_iter()
        .map(|t| read_topic(brokers, t).values().map(|m| m.len() as i64).sum::<i64>())
        .sum()
}

/// The sum of a manifest's next offsets (its JSON).
pub fn offsets_sum(manifest: &Value) -> i64 {
    manifest["offsets"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p.as_object().unwrap().values())
        .map(|v| v.as_i64().unwrap())
        .sum()
}
