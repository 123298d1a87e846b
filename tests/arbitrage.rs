//! The arbitrage query against a brute-force sequential oracle, on 1, 2 and
//! 4 workers, across crashes, with late data and idle partitions, against the
//! real broker.

mod common;

use common::arb::*;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// When `crashed_run` feeds more input.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    /// After the run's first new manifest: the input so far is cut first.
    AfterFirstCut,
    /// As soon as the run has recovered and planned its sources.
    WhenReady,
}

/// Runs `k2 run arbitrage` (continuous) with a fault plan, and `during` once
/// as `when` says. The run must end by the fault, or is SIGKILLed after 30 s.
fn crashed_run(config: &Path, dir: &Path, i: usize, fault: &str, when: Feed, during: impl FnOnce()) {
    let manifests = dir.join("checkpoints/arbkill/manifests");
    let count = || std::fs::read_dir(&manifests).map_or(0, |d| d.count());
    let before = count();
    let log = dir.join(format!("run{i}.log"));
    let mut child = k2()
        .args(["run", "arbitrage", "-w", "2", "--config"])
        .arg(config)
        .env("K2_FAULT", fault)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let limit = std::time::Instant::now() + Duration::from_secs(30);
    let mut during = Some(during);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < limit {
        let due = match when {
            Feed::AfterFirstCut => count() > before,
            Feed::WhenReady => std::fs::read_to_string(&log).is_ok_and(|l| l.contains("source planned")),
        };
        if due && let Some(f) = during.take() {
            f();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(!status.success(), "run {i} was crashed");
}

#[test]
fn arbitrage_equals_the_sequential_oracle_on_1_2_and_4_workers() {
    let brokers = broker();
    for seed in [3u64, 17] {
        let topics = topics(&format!("arb{seed}"));
        produce_feed(&brokers, &topics, seed);
        let want = oracle(&brokers, &topics);
        assert!(want.alerts.len() > 50, "the feed yields alerts: {}", want.alerts.len());
        assert!(!want.late.is_empty(), "the feed has late trades");
        for workers in [1, 2, 4] {
            let dir = temp_dir(&format!("arb{seed}-w{workers}"));
            let config = arbitrage_config(&dir, "arb", &brokers, &topics, "");
            let out = ok(k2()
                .args(["run", "arbitrage", "--bounded", "-w", &workers.to_string(), "--config"])
                .arg(&config));
            let report: Value = serde_json::from_slice(&out.stdout).unwrap();
            let (alerts, late) = engine_output(&dir);
            assert_same_late(&late, &want.late, &format!("seed {seed}, {workers} workers"));
            assert_matches(&format!("seed {seed}, {workers} workers"), &alerts, &want);
            assert_eq!(report["late"].as_u64().unwrap() as usize, want.late_copies);
        }
    }
}

#[test]
fn the_same_alerts_after_sigkill_and_restart_with_transactional_alerts() {
    let brokers = broker();
    let topics = topics("arbkill");
    let dir = temp_dir("arbkill");
    let config = arbitrage_config(&dir, "arbkill", &brokers, &topics, "kafka_sink = \"transactional\"");
    let start = 1767225600000;
    let part = |i: u64| produce_part(&brokers, &topics, 29 + i, 1500, start + i as i64 * 4000);
    // The feed arrives in three parts while the job runs, so that crashes
    // fall in the middle of the run: inside the Kafka transaction of the
    // second cut with alerts, then between the manifest and the commits.
    part(0);
    crashed_run(&config, &dir, 0, "in-kafka-transaction:2", Feed::AfterFirstCut, || {
        part(1)
    });
    crashed_run(&config, &dir, 1, "after-manifest:1", Feed::WhenReady, || part(2));
    ok(k2()
        .args(["run", "arbitrage", "--bounded", "-w", "3", "--config"])
        .arg(&config));
    let want = oracle(&brokers, &topics);
    assert!(want.alerts.len() > 50, "the feed yields alerts: {}", want.alerts.len());
    let (alerts, late) = engine_output(&dir);
    assert_matches("after two crashes", &alerts, &want);
    assert_same_late(&late, &want.late, "after two crashes");

    // The transactional topic holds exactly the committed alerts, each once.
    assert_alerts_topic(&brokers, &format!("{}.alerts", topics.0), &want);
    // Both crashes happened where planned, not by the time limit.
    for i in 0..2 {
        let log = std::fs::read_to_string(dir.join(format!("run{i}.log"))).unwrap();
        assert!(
            log.contains("K2_FAULT: aborting"),
            "run {i} crashed at its fault point:\n{log}"
        );
    }
}

#[test]
fn late_trades_can_be_dropped_with_a_count() {
    let brokers = broker();
    let topics = topics("arbdrop");
    produce_feed(&brokers, &topics, 5);
    let want = oracle(&brokers, &topics);
    let dir = temp_dir("arbdrop");
    let config = arbitrage_config(&dir, "arbdrop", &brokers, &topics, "late = \"drop\"");
    let out = ok(k2()
        .args(["run", "arbitrage", "--bounded", "-w", "2", "--config"])
        .arg(&config));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["late"].as_u64().unwrap() as usize,
        want.late_copies,
        "dropped late trades are counted"
    );
    let (alerts, late) = engine_output(&dir);
    assert!(late.is_empty(), "no late_trades rows when dropping");
    assert_matches("late dropped", &alerts, &want);
}

/// A graceful stop (SIGTERM) and restart, twice, while the feed arrives: the
/// last cut of each stop records how far event time had got, so the restart
/// neither repeats nor misses an alert, a late trade or a bronze row.
#[test]
fn the_same_tables_after_sigterm_and_restart() {
    use common::job::*;
    let brokers = broker();
    let topics = topics("arbterm");
    let dir = temp_dir("arbterm");
    let config = arbitrage_config(&dir, "arbterm", &brokers, &topics, "");
    let start = 1767225600000;
    let part = |i: u64| produce_part(&brokers, &topics, 71 + i, 1500, start + i as i64 * 4000);
    let manifests = || std::fs::read_dir(dir.join("checkpoints/arbterm/manifests")).map_or(0, |d| d.count());
    create_feed_topics(&brokers, &topics);
    for i in 0..2 {
        let n = manifests();
        let log = dir.join(format!("run{i}.log"));
        let job = spawn_job(&config, "market", 2, &log);
        wait_for("the job to plan", Duration::from_secs(60), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("source planned"))
        });
        part(i);
        wait_for("a new checkpoint", Duration::from_secs(60), || manifests() > n);
        stop_job(job, &log);
    }
    part(2);
    ok(k2()
        .args(["run", "market", "--bounded", "-w", "3", "--config"])
        .arg(&config));
    let want = oracle(&brokers, &topics);
    assert!(want.alerts.len() > 50, "the feed yields alerts: {}", want.alerts.len());
    let (alerts, late) = engine_output(&dir);
    assert_matches("after two SIGTERM restarts", &alerts, &want);
    assert_same_late(&late, &want.late, "after two SIGTERM restarts");
    assert_bronze("after two SIGTERM restarts", &dir, &want);
}
