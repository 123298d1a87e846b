//! `k2 query` and `k2::query`: the seam between a table and the Kafka tail
//! is exact while the job commits, while it is dead after a kill -9, and
//! after it recovers; the three modes, the formats and the errors of the CLI.

mod common;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use common::job::*;
use common::*;
use k2::query::{DedupSource, Mode, Query, QueryOptions, SeamDedup};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A background `k2 produce` at `rate` msg/s for `secs` s, with duplicates,
/// malformed messages and a truth file.
fn start_producer(brokers: &str, topics: &(String, String), dir: &Path, rate: u64, secs: u64) -> Child {
    produce_cmd(brokers, topics)
        .args(["--rate", &rate.to_string(), "--duration", &format!("{secs}s")])
        .args(["--duplicates", "0.05", "--malformed", "0.02", "--seed", "11", "--quiet"])
        .arg("--truth")
        .arg(dir.join("truth.jsonl"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("producer.log")).unwrap())
        .spawn()
        .expect("spawn producer")
}

/// The first `n` payloads of `topic`/`partition`.
fn first_payloads(brokers: &str, topic: &str, partition: i32, n: usize) -> Vec<String> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "k2-test-query")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let limit = Instant::now() + Duration::from_secs(20);
    while out.len() < n && Instant::now() < limit {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    out
}

/// Per table: rows, distinct message ids, sum of trade ids.
type Counts = BTreeMap<String, (i64, i64, i64)>;

const SEAM_SQL: &str = "SELECT 'bronze_binance_trades' AS t, count(*) AS n, count(DISTINCT message_id) AS d, \
     coalesce(sum(trade_id), 0) AS s FROM bronze_binance_trades \
     UNION ALL SELECT 'bronze_kraken_trades', count(*), count(DISTINCT message_id), coalesce(sum(trade_id), 0) \
     FROM bronze_kraken_trades";

fn counts(answer: &k2::query::Answer) -> Counts {
    let mut out = Counts::new();
    for b in &answer.batches {
        let t = b.column(0).as_string::<i32>();
        let n = b.column(1).as_primitive::<Int64Type>();
        let d = b.column(2).as_primitive::<Int64Type>();
        let s = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.insert(t.value(i).to_string(), (n.value(i), d.value(i), s.value(i)));
        }
    }
    out
}

/// The truth: per topic, the distinct valid trades below the high
/// watermarks `hw`, as (count, sum of trade ids).
fn truth_below(truth: &[Truth], hw: &k2::query::Offsets) -> BTreeMap<String, (i64, i64)> {
    let mut ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for t in truth {
        let below = hw
            .get(&t.topic)
            .and_then(|ps| ps.get(&t.partition))
            .is_some_and(|h| t.offset < *h);
        if below && t.kind != "malformed" {
            ids.entry(&t.topic)
                .or_default()
                .extend(t.message_ids.iter().map(String::as_str));
        }
    }
    ids.into_iter()
        .map(|(topic, ids)| {
            let sum = ids
                .iter()
                .map(|id| id.rsplit(':').next().unwrap().parse::<i64>().unwrap())
                .sum();
            (topic.to_string(), (ids.len() as i64, sum))
        })
        .collect()
}

/// One hybrid answer, with what the test checks about it afterwards.
struct Observed {
    phase: &'static str,
    counts: Counts,
    seam: k2::query::Seam,
}

#[test]
fn hybrid_answers_equal_the_truth_at_their_high_watermarks_while_committing_and_across_kill9() {
    let brokers = broker();
    let topics = topics("query-seam");
    let dir = temp_dir("query-seam");
    create_feed_topics(&brokers, &topics);
    let config_path = bronze_config(&dir, "qseam", &brokers, &topics, "");
    let log = dir.join("job.log");
    let mut producer = start_producer(&brokers, &topics, &dir, 2000, 22);
    let mut job = spawn_job(&config_path, "bronze", 1, &log);
    let config = k2::config::Config::load(&config_path).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    wait_for("the job's catalog", Duration::from_secs(20), || {
        dir.join("warehouse/catalog.db").exists()
    });
    let query = rt.block_on(Query::open(&config)).unwrap();
    wait_for("the bronze tables", Duration::from_secs(20), || {
        rt.block_on(query.tables()).is_ok_and(|t| t.len() == 3)
    });

    let mut observed: Vec<Observed> = Vec::new();
    let run_phase = |phase: &'static str, secs: u64, observed: &mut Vec<Observed>| {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            // Alternate the two ways of deduplicating the seam.
            let options = QueryOptions {
                seam_dedup: if observed.len() % 2 == 0 {
                    SeamDedup::Auto
                } else {
                    SeamDedup::AntiJoin
                },
                ..QueryOptions::default()
            };
            let answer = rt
                .block_on(query.sql_with(SEAM_SQL, &options))
                .unwrap_or_else(|e| panic!("hybrid query in phase {phase}: {e}"));
            observed.push(Observed {
                phase,
                counts: counts(&answer),
                seam: answer.seam,
            });
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    run_phase("live", 7, &mut observed);
    // kill -9 mid-stream: no clean final commit.
    let mut child = job.0.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Replays of trades the table already holds, as a reconnecting feed
    // handler sends them: the seam must drop them.
    for topic in [&topics.0, &topics.1] {
        let old = first_payloads(&brokers, topic, 0, 40);
        send(&brokers, topic, 0, "replay", &old);
    }
    run_phase("dead", 3, &mut observed);
    job = spawn_job(&config_path, "bronze", 1, &log);
    run_phase("recovered", 5, &mut observed);
    assert!(producer.wait().unwrap().success(), "the producer failed");
    let truth = read_truth(&dir.join("truth.jsonl"));
    let exp = expected(&truth);
    wait_for_offsets(&dir, "qseam", &exp.ends, 30);
    run_phase("caught up", 1, &mut observed);
    stop_job(job, &log);
    // History alone now holds everything: equal to the last hybrid answers.
    let history = rt
        .block_on(query.sql_with(
            SEAM_SQL,
            &QueryOptions {
                mode: Mode::History,
                ..QueryOptions::default()
            },
        ))
        .unwrap();

    // Every answer equals the truth below the high watermarks it read.
    let table_topic = BTreeMap::from([
        ("bronze_binance_trades".to_string(), topics.0.clone()),
        ("bronze_kraken_trades".to_string(), topics.1.clone()),
    ]);
    let mut epochs = BTreeSet::new();
    let (mut with_tail, mut seam_dups, mut by_checkpoint, mut by_antijoin) = (0, 0, 0, 0);
    for (i, o) in observed.iter().enumerate() {
        let want = truth_below(&truth, &o.seam.high_watermarks);
        for (table, topic) in &table_topic {
            let (n, d, s) = o.counts[table];
            let (want_n, want_s) = want.get(topic).copied().unwrap_or((0, 0));
            assert_eq!(
                (n, d, s),
                (want_n, want_n, want_s),
                "answer {i} ({}) of {table}: (rows, distinct ids, sum of trade ids) vs the truth below {:?}\nseam: {}",
                o.phase,
                o.seam.high_watermarks.get(topic),
                serde_json::to_string(&o.seam).unwrap()
            );
        }
        for t in &o.seam.tables {
            assert_eq!(t.mode, Mode::Hybrid);
            epochs.extend(t.cut.as_ref().map(|c| c.epoch));
            let tail = t.tail.as_ref().expect("a tail");
            with_tail += usize::from(tail.rows > 0);
            seam_dups += tail.dedup.as_ref().map_or(0, |d| d.duplicates_of_history);
            match &tail.dedup_source {
                Some(DedupSource::Checkpoint { .. }) => by_checkpoint += 1,
                Some(DedupSource::AntiJoin { .. }) => by_antijoin += 1,
                _ => {}
            }
        }
    }
    let last = observed.last().unwrap();
    assert_eq!(
        counts(&history),
        last.counts,
        "history after catching up = the last hybrid answer"
    );
    // The run exercised what it claims to.
    let phases: BTreeSet<&str> = observed.iter().map(|o| o.phase).collect();
    assert_eq!(phases.len(), 4, "answers in every phase");
    assert!(epochs.len() >= 5, "commits between answers: {} cuts seen", epochs.len());
    assert!(with_tail >= 10, "answers with a non-empty tail: {with_tail}");
    assert!(seam_dups > 0, "duplicates of the history dropped at the seam");
    assert!(
        by_checkpoint > 0 && by_antijoin > 0,
        "both dedup sources: checkpoint {by_checkpoint}, anti-join {by_antijoin}"
    );
    let mean = |f: fn(&k2::query::Timings) -> f64| {
        observed.iter().map(|o| f(&o.seam.timings)).sum::<f64>() / observed.len() as f64
    };
    eprintln!(
        "{} answers, {} cuts, {with_tail} with tail rows, {seam_dups} seam duplicates dropped; mean ms: plan {:.0}, \
         kafka {:.0}, seam {:.0}, execute {:.0}",
        observed.len(),
        epochs.len(),
        mean(|t| t.plan_ms),
        mean(|t| t.kafka_ms),
        mean(|t| t.seam_ms),
        mean(|t| t.execute_ms),
    );
}
