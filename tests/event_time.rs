//! Event time against the real broker: the idle-partition policy and the
//! late-data policy of the Kafka source (`src/source/kafka/reader.rs`), seen
//! through the `market` dataflow (bronze + arbitrage) as a user would: the
//! checkpoints' event-time frontier, the run report, and the Iceberg tables
//! read with pyiceberg.

mod common;

use common::job::*;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A `market` job config: bronze's plus `source` and `arbitrage` keys.
fn market_config(
    dir: &Path,
    job: &str,
    brokers: &str,
    topics: &(String, String),
    source: &str,
    arbitrage: &str,
) -> PathBuf {
    let path = bronze_config(dir, job, brokers, topics, "poll_batch = 256");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        r#"
[source]
{source}

[arbitrage]
delta_ms = 100
threshold_bps = -4.5
alerts_topic = "{}.alerts"
late = "table"
{arbitrage}
"#,
        topics.0
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Asserts two sorted id lists are equal, naming a few differences if not.
fn assert_same_ids(got: &[String], want: &[String], what: &str) {
    if got != want {
        let (g, w): (BTreeSet<&String>, BTreeSet<&String>) = (got.iter().collect(), want.iter().collect());
        let extra: Vec<_> = g.difference(&w).take(5).collect();
        let missing: Vec<_> = w.difference(&g).take(5).collect();
        panic!(
            "{what}: {} ids, want {}; extra {extra:?}, missing {missing:?}",
            got.len(),
            want.len()
        );
    }
}

/// Produces `count` Binance BTC trades (one partition: the key is the
/// symbol) with event times from `event_start_ms`, 1 ms apart, in order;
/// returns the truth.
fn produce_btc(
    dir: &Path,
    brokers: &str,
    topics: &(String, String),
    name: &str,
    count: u64,
    event_start_ms: i64,
    seed: u64,
) -> Vec<Truth> {
    let truth = dir.join(format!("{name}.jsonl"));
    ok(produce_cmd(brokers, topics)
        .args([
            "--exchanges",
            "binance",
            "--symbols",
            "BTC",
            "--count",
            &count.to_string(),
        ])
        .args([
            "--rate",
            "0",
            "--duplicates",
            "0",
            "--malformed",
            "0",
            "--out-of-order-ms",
            "0",
        ])
        .args([
            "--event-start-ms",
            &event_start_ms.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args(["--quiet", "--truth", truth.to_str().unwrap()]));
    read_truth(&truth)
}

fn ids_of(truth: &[Truth]) -> BTreeSet<String> {
    truth.iter().flat_map(|t| t.message_ids.iter().cloned()).collect()
}

fn ends_of(truth: &[Truth]) -> BTreeMap<(String, i32), i64> {
    expected(truth).ends
}

/// The idleness policy: a partition that has reported end of partition and
/// shown nothing for `idle_timeout_ms` stops holding the watermark; a worker
/// whose partitions are all idle follows the wall clock, `now − allowance −
/// idle_timeout`. Here the whole Kraken topic and three of the four Binance
/// partitions never get a message, and the busy Binance partition goes quiet
/// after its data: event time must still advance (without the policy, the
/// empty partitions would hold it at 0 forever) and the job keep committing.
/// A trade that then arrives on the idle partition with an event time below
/// the advanced watermark is routed to `late_trades` (and still to bronze),
/// while a fresh one is on time.
#[test]
fn idle_partitions_do_not_stall_event_time_and_late_arrivals_on_them_are_kept() {
    const ALLOWANCE_MS: i64 = 500;
    const IDLE_MS: i64 = 1500;
    let brokers = broker();
    let topics = topics("idle");
    let dir = temp_dir("idle");
    // The Kraken topic exists but stays empty.
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    ok(produce_cmd(&brokers, &topics)
        .args([
            "--exchanges",
            "binance",
            "--count",
            "0",
            "--topic",
            &topics.1,
            "--from-file",
        ])
        .arg(&empty));
    // Busy partition: 2000 trades from one minute ago.
    let t_a = now_ms() - 60_000;
    let a = produce_btc(&dir, &brokers, &topics, "a", 2000, t_a, 1);
    let busy: BTreeSet<(String, i32)> = a.iter().map(|t| (t.topic.clone(), t.partition)).collect();
    assert_eq!(busy.len(), 1, "one symbol fills one partition");
    let a_max_event = t_a + 1999;

    let config = market_config(
        &dir,
        "idle",
        &brokers,
        &topics,
        &format!("max_out_of_orderness_ms = {ALLOWANCE_MS}\nidle_timeout_ms = {IDLE_MS}"),
        "",
    );
    let log = dir.join("job.log");
    let job = spawn_job(&config, "market", 2, &log);
    wait_for_offsets(&dir, "idle", &ends_of(&a), 60);

    // Silence for longer than the idle timeout: every partition is idle.
    std::thread::sleep(Duration::from_millis(IDLE_MS as u64 + 1500));
    // Then 20 trades on the idle partition, continuing its own event times
    // (on time by the partition's own watermark, max − allowance), but a
    // minute behind the wall-clock watermark of the idle job: late.
    let before_b = now_ms();
    let b = produce_btc(&dir, &brokers, &topics, "b", 20, a_max_event + 1, 2);
    let m = wait_for_offsets(&dir, "idle", &ends_of(&b), 60);
    let frontier = m.event_frontier_us.expect("an event-time frontier in the manifest") as i64 / 1000;
    assert!(
        frontier > a_max_event - ALLOWANCE_MS,
        "event time stalled at {frontier}: the busy partition's data ends at {a_max_event}"
    );
    assert!(
        frontier >= before_b - ALLOWANCE_MS - IDLE_MS - 5000 && frontier <= now_ms() - ALLOWANCE_MS - IDLE_MS,
        "an all-idle job's watermark follows the wall clock minus allowance and idle timeout: \
         {frontier}, produced at {before_b}"
    );
    // And 20 fresh trades on the same partition: on time. (A second ahead of
    // the clock, so that a slow producer start cannot make them late.)
    let c = produce_btc(&dir, &brokers, &topics, "c", 20, now_ms() + 1000, 3);
    wait_for_offsets(&dir, "idle", &ends_of(&c), 60);
    let report = stop_job(job, &log);

    let (a_ids, b_ids, c_ids) = (ids_of(&a), ids_of(&b), ids_of(&c));
    assert_same_ids(
        &table_ids(&dir, "late_trades"),
        &b_ids.iter().cloned().collect::<Vec<_>>(),
        "late_trades holds exactly the trades that arrived behind the idle watermark",
    );
    assert_eq!(
        report["late"].as_u64(),
        Some(b_ids.len() as u64),
        "late trades are counted"
    );
    let bronze: BTreeSet<String> = table_ids(&dir, "bronze_binance_trades").into_iter().collect();
    let all: BTreeSet<String> = a_ids.iter().chain(&b_ids).chain(&c_ids).cloned().collect();
    assert_eq!(bronze, all, "bronze holds every trade, late or not");
    assert_eq!(
        report["trades"].as_u64(),
        Some((a_ids.len() + b_ids.len() + c_ids.len()) as u64)
    );
    // Kraken was silent throughout: no pairs, and an alerts topic that reads
    // as empty (every partition reports its end although it has no record).
    let kafka = k2::config::KafkaConfig::plaintext(&brokers);
    let latency =
        k2::metrics::read_alert_latency(&kafka, &format!("{}.alerts", topics.0), false, Duration::from_secs(30))
            .unwrap();
    assert_eq!((latency.alerts, report["pairs"].as_u64()), (0, Some(0)));
}

/// The late-data policy, `late = "table"`: a trade is late when its event
/// time is more than the allowance below the largest event time its own
/// partition has shown (in Kafka order). Every late trade is in `late_trades`
/// with its message id and counted in the report, it still reaches bronze,
/// and nothing is lost: every produced message is a trade read on time, a
/// late trade, or a dead letter, and the duplicates removed are exactly the
/// repeats among them.
#[test]
fn late_trades_are_kept_in_late_trades_and_every_message_is_accounted_for() {
    use common::arb::ALLOWANCE_MS;
    let brokers = broker();
    let topics = topics("late");
    let dir = temp_dir("late");
    let truth_path = dir.join("truth.jsonl");
    let produced_from = now_ms();
    ok(produce_cmd(&brokers, &topics)
        .args([
            "--count",
            "2500",
            "--rate",
            "0",
            "--duplicates",
            "0.05",
            "--malformed",
            "0.01",
        ])
        .args([
            "--out-of-order-ms",
            "400",
            "--seed",
            "11",
            "--event-start-ms",
            "1767225600000",
        ])
        .args(["--symbols", "BTC,ETH,SOL,DOGE,XRP,ADA", "--quiet", "--truth"])
        .arg(&truth_path));
    let truth = read_truth(&truth_path);

    // What the policy decides, computed sequentially from the topics.
    let classified = common::arb::classify(&brokers, &topics);
    let on_time: Vec<String> = classified
        .on_time
        .iter()
        .flatten()
        .map(|t| t.message_id.to_string())
        .collect();
    let (late, malformed) = (classified.late, classified.malformed);
    assert!(late.len() > 20, "the feed has late trades: {}", late.len());
    let produced_trades: usize = truth.iter().map(|t| t.message_ids.len()).sum();
    assert_eq!(
        classified.copies, produced_trades,
        "the oracle sees every produced trade"
    );
    assert_eq!(
        malformed as usize,
        truth.iter().filter(|t| t.kind == "malformed").count()
    );

    let config = market_config(
        &dir,
        "late",
        &brokers,
        &topics,
        // Idleness out of the way: lateness here is the per-partition rule only.
        &format!("max_out_of_orderness_ms = {ALLOWANCE_MS}\nidle_timeout_ms = 60000"),
        "kafka_sink = \"transactional\"",
    );
    let out = ok(k2()
        .args(["run", "market", "--bounded", "-w", "2", "--config"])
        .arg(&config));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = |key: &str| report[key].as_u64().unwrap_or_else(|| panic!("`{key}` in {report}")) as usize;

    // Every late trade is in late_trades, by message id, and counted.
    assert_same_ids(&table_ids(&dir, "late_trades"), &late, "late_trades vs the policy");
    assert_eq!(
        count("late"),
        classified.late_copies,
        "late trades are counted in the report"
    );
    // Nothing is lost: every message read is trades or a dead letter.
    assert_eq!(count("messages"), truth.len(), "messages read");
    assert_eq!(count("trades"), classified.copies, "trades read");
    assert_eq!(count("dead_letters"), malformed as usize, "dead letters");
    let dead = read_tables(&dir, &["dead_letters"], "source_offset", false);
    assert_eq!(dead[0]["rows"].as_array().map_or(0, Vec::len), malformed as usize);
    // Bronze keeps every distinct valid trade, late ones included.
    let exp = expected(&truth);
    for (table, topic) in [
        ("bronze_binance_trades", &topics.0),
        ("bronze_kraken_trades", &topics.1),
    ] {
        let ids = table_ids(&dir, table);
        let distinct: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(ids.len(), distinct.len(), "{table}: an id twice");
        assert_eq!(&distinct, &exp.ids[topic], "{table} vs the distinct produced trades");
    }
    // Duplicates removed: each repeated copy once (both dedups see every
    // trade; the report counts the larger).
    let distinct = on_time.len() + late.len();
    assert_eq!(
        count("duplicates_removed"),
        classified.copies - distinct,
        "duplicates removed"
    );

    // The alerts' event-to-alert latency, read back from the transactional
    // alerts topic: each committed alert once, with a latency no longer than
    // the time since the trades were produced.
    let alerts = read_tables(&dir, &["arbitrage_signals"], "alert_id", false)[0]["rows"]
        .as_array()
        .map_or(0, Vec::len) as u64;
    assert!(alerts > 10, "the feed yields alerts: {alerts}");
    let kafka = k2::config::KafkaConfig::plaintext(&brokers);
    let latency =
        k2::metrics::read_alert_latency(&kafka, &format!("{}.alerts", topics.0), true, Duration::from_secs(30))
            .unwrap();
    assert_eq!(
        (latency.alerts, latency.duplicates),
        (alerts, 0),
        "alerts in the topic vs the table"
    );
    assert_eq!(latency.histogram.len(), alerts, "one latency per alert");
    assert!(
        latency.histogram.max() as i64 <= now_ms() - produced_from,
        "latency {} ms is longer than the test",
        latency.histogram.max()
    );
}
