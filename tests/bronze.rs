//! The bronze dataflow end to end, against the real broker, read back by
//! pyiceberg as an outside client.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};

const TABLES: [&str; 3] = ["bronze_binance_trades", "bronze_kraken_trades", "dead_letters"];

/// Produces a known feed (2 topics x 4 partitions, duplicates and malformed
/// messages) and returns its truth file.
fn produce(
    dir: &std::path::Path,
    brokers: &str,
    topics: &(String, String),
    count: u64,
    seed: u64,
) -> std::path::PathBuf {
    let truth = dir.join("truth.jsonl");
    ok(k2()
        .args([
            "produce",
            "--brokers",
            brokers,
            "--binance-topic",
            &topics.0,
            "--kraken-topic",
            &topics.1,
        ])
        .args([
            "--partitions",
            "4",
            "--count",
            &count.to_string(),
            "--rate",
            "0",
            "--duplicates",
            "0.05",
            "--malformed",
            "0.02",
            "--seed",
            &seed.to_string(),
            "--event-start-ms",
            "1767225600000",
            "--symbols",
            "BTC,ETH,SOL,DOGE,PEPE,XRP,ADA,AVAX",
            "--quiet",
            "--truth",
            truth.to_str().unwrap(),
        ]));
    truth
}

fn check_tables(dir: &std::path::Path, topics: &(String, String), exp: &Expected) {
    let tables = read_tables(
        dir,
        &TABLES[..2],
        "message_id,source_topic,source_partition,source_offset",
        false,
    );
    let binance = &tables[0];
    let kraken = &tables[1];
    for (table, topic) in [(binance, &topics.0), (kraken, &topics.1)] {
        let got = ids(&table["rows"]);
        let distinct: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(
            got.len(),
            distinct.len(),
            "{}: duplicate message ids in the table",
            table["table"]
        );
        assert_eq!(
            &distinct,
            exp.ids.get(topic).unwrap(),
            "{}: rows differ from the distinct valid messages",
            table["table"]
        );
    }
    // Dead letters: exactly the malformed messages, each with a reason.
    let dead = read_tables(
        dir,
        &["dead_letters"],
        "source_topic,source_partition,source_offset,reason",
        false,
    );
    let rows = dead[0]["rows"].as_array().unwrap();
    let got: BTreeSet<(String, i32, i64)> = rows
        .iter()
        .map(|r| {
            assert!(
                !r["reason"].as_str().unwrap().is_empty(),
                "a dead letter without a reason: {r}"
            );
            (
                r["source_topic"].as_str().unwrap().to_string(),
                r["source_partition"].as_i64().unwrap() as i32,
                r["source_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), got.len(), "a malformed message was written twice");
    assert_eq!(got, exp.malformed, "dead letters differ from the malformed messages");
    // The newest snapshot of every table carries the end offsets.
    for t in tables.iter().chain(&dead) {
        let snapshots = t["snapshots"].as_array().unwrap();
        let newest = snapshots
            .last()
            .unwrap_or_else(|| panic!("{} has no snapshot", t["table"]));
        assert_eq!(newest["summary"]["k2.job"], "bronze-e2e");
        let offsets = summary_offsets(newest);
        for ((topic, p), next) in &offsets {
            let want = exp.ends.get(&(topic.clone(), *p)).copied().unwrap_or(0);
            assert_eq!(*next, want, "{}: k2.offsets of {topic}/{p}", t["table"]);
        }
        assert_eq!(offsets.len(), 8, "offsets of 2 topics x 4 partitions");
    }
}

#[test]
fn bronze_holds_each_valid_message_once_on_1_and_2_workers() {
    let brokers = broker();
    let topics = topics("bronze");
    let base = temp_dir("bronze");
    let truth = produce(&base, &brokers, &topics, 3000, 7);
    let exp = expected(&read_truth(&truth));
    assert!(!exp.malformed.is_empty(), "the feed has malformed messages");
    assert!(
        exp.ids.values().map(|s| s.len()).sum::<usize>() > 5000,
        "the feed has trades"
    );

    let mut reports = Vec::new();
    for workers in [1, 2] {
        let dir = base.join(format!("w{workers}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = bronze_config(&dir, "bronze-e2e", &brokers, &topics, "");
        let out = ok(k2()
            .args(["run", "bronze", "--bounded", "-w", &workers.to_string(), "--config"])
            .arg(&config));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run prints a JSON report");
        check_tables(&dir, &topics, &exp);
        reports.push(report);
    }
    // Both runs report the same work.
    assert_eq!(reports[0]["rows"], reports[1]["rows"]);
    assert_eq!(reports[0]["duplicates_removed"], reports[1]["duplicates_removed"]);
    let dups: u64 = reports[0]["duplicates_removed"].as_u64().unwrap();
    assert!(dups > 0, "the feed's duplicates were removed");

    // Running again finds nothing new: no new snapshot, no duplicate rows.
    let dir = base.join("w1");
    let config = bronze_config(&dir, "bronze-e2e", &brokers, &topics, "");
    let before = read_tables(&dir, &TABLES, "source_offset", false);
    ok(k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(&config));
    let after = read_tables(&dir, &TABLES, "source_offset", false);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            b["snapshots"].as_array().unwrap().len(),
            a["snapshots"].as_array().unwrap().len(),
            "{}",
            a["table"]
        );
    }
    check_tables(&dir, &topics, &exp);
}

#[test]
fn every_snapshot_is_a_consistent_cut() {
    // A continuous-style run in many commits: each snapshot's k2.offsets must
    // match exactly the rows the table holds at that snapshot.
    let brokers = broker();
    let topics = topics("cut");
    let dir = temp_dir("cut");
    let truth = produce(&dir, &brokers, &topics, 4000, 11);
    let exp = expected(&read_truth(&truth));
    // Small polls spread the input over many epochs, hence many snapshots.
    let config = bronze_config(&dir, "bronze-e2e", &brokers, &topics, "poll_batch = 64");
    ok(k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(&config));
    let tables = read_tables(
        &dir,
        &TABLES[..2],
        "message_id,source_topic,source_partition,source_offset",
        true,
    );
    for t in &tables {
        let snapshots = t["snapshots"].as_array().unwrap();
        assert!(
            snapshots.len() >= 2,
            "{}: expected several commits, got {}",
            t["table"],
            snapshots.len()
        );
        for s in snapshots {
            let offsets = summary_offsets(s);
            let rows = s["rows"].as_array().unwrap();
            let mut got: BTreeMap<(String, i32), BTreeSet<String>> = BTreeMap::new();
            for r in rows {
                got.entry((
                    r["source_topic"].as_str().unwrap().into(),
                    r["source_partition"].as_i64().unwrap() as i32,
                ))
                .or_default()
                .insert(r["message_id"].as_str().unwrap().into());
            }
            let topic = if t["table"].as_str().unwrap().contains("binance") {
                &topics.0
            } else {
                &topics.1
            };
            for ((tp, p), next) in offsets.iter().filter(|((tp, _), _)| tp == topic) {
                // The distinct ids first seen below `next` in this partition.
                let mut want = BTreeSet::new();
                let mut seen = BTreeSet::new();
                for (offset, ids) in exp.by_partition.get(&(tp.clone(), *p)).cloned().unwrap_or_default() {
                    if offset < *next {
                        for id in ids {
                            if seen.insert(id.clone()) {
                                want.insert(id);
                            }
                        }
                    }
                }
                let have = got.remove(&(tp.clone(), *p)).unwrap_or_default();
                assert_eq!(
                    have, want,
                    "{} snapshot {}: rows of {tp}/{p} vs k2.offsets {next}",
                    t["table"], s["snapshot_id"]
                );
            }
            assert!(
                got.is_empty(),
                "rows from partitions missing in k2.offsets: {:?}",
                got.keys()
            );
        }
    }
}

#[test]
fn bad_config_and_bad_flags_get_one_clear_line() {
    let dir = temp_dir("badcfg");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[job]\nepoch_ms = \"fast\"\n").unwrap();
    let out = k2().args(["run", "bronze", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config `job.epoch_ms`"), "{err}");

    std::fs::write(&path, "[kafka]\nbrokerz = \"x\"\n").unwrap();
    let out = k2().args(["run", "bronze", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("brokerz"), "{err}");

    let out = k2().args(["run", "bronze", "--bogus"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--bogus"), "{err}");

    let out = k2()
        .args(["run", "nosuchflow", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown dataflow `nosuchflow`"),
        "{err}"
    );
}
