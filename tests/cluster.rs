//! Multi-process jobs against the real broker: a cluster computes what one
//! worker computes, the supervisor restarts a cluster that lost a process
//! without losing or repeating anything, and a job rescales across restarts.

mod common;

use common::arb::*;
use common::job::wait_for;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

const START_MS: i64 = 1767225600000;

/// `count` messages per exchange of feed part `i`; parts overlap a little in
/// event time, so pairs and lateness span restarts.
fn part(brokers: &str, topics: &(String, String), i: u64) {
    produce_part(brokers, topics, 101 + i, 1500, START_MS + i as i64 * 2800);
}

/// Runs `market` bounded with `k2 run` or `k2 cluster`; returns the JSON
/// run report of each process.
fn market_bounded(config: &Path, layout: &[&str]) -> Vec<serde_json::Value> {
    let mut cmd = k2();
    if layout[0] == "cluster" {
        cmd.args(["cluster", "market", "--bounded"]);
    } else {
        cmd.args(["run", "market", "--bounded"]);
    }
    let out = ok(cmd.args(&layout[1..]).arg("--config").arg(config));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    match report["processes"].as_array() {
        Some(processes) => processes.clone(),
        None => vec![report],
    }
}

/// Asserts the warehouse in `dir` holds exactly what the oracle says.
fn assert_exact(what: &str, dir: &Path, want: &Oracle) {
    assert_bronze(what, dir, want);
    let (alerts, late) = engine_output(dir);
    assert_matches(what, &alerts, want);
    assert_same_late(&late, &want.late, what);
}

/// The tables of `market` in `dir`: every row of every table, every column
/// but the wall-clock ones (`ingest_time`, and `detected_time` of alerts),
/// as sorted JSON lines.
fn table_rows(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let tables = [
        "bronze_binance_trades",
        "bronze_kraken_trades",
        "dead_letters",
        "arbitrage_signals",
        "late_trades",
    ];
    read_tables(dir, &tables, "", false)
        .into_iter()
        .map(|t| {
            let mut rows: Vec<String> = t["rows"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut r| {
                    let o = r.as_object_mut().unwrap();
                    o.remove("ingest_time");
                    o.remove("detected_time");
                    serde_json::to_string(o).unwrap()
                })
                .collect();
            rows.sort();
            (t["table"].as_str().unwrap().to_string(), rows)
        })
        .collect()
}

fn assert_same_tables(what: &str, got: &BTreeMap<String, Vec<String>>, want: &BTreeMap<String, Vec<String>>) {
    for (table, rows) in want {
        let have = &got[table];
        if have != rows {
            let extra: Vec<_> = have.iter().filter(|r| !rows.contains(r)).take(2).collect();
            let missing: Vec<_> = rows.iter().filter(|r| !have.contains(r)).take(2).collect();
            panic!(
                "{what}: {table} differs ({} rows vs {}); extra {extra:?}, missing {missing:?}",
                have.len(),
                rows.len()
            );
        }
    }
}

/// Determinism: every table, with every column but the wall-clock ones, is
/// identical on 1 worker, 4 workers, 2 processes x 2 workers, and after kill
/// -9 restarts; and the 1-worker run equals the sequential oracle.
#[test]
fn every_table_is_identical_on_1_and_4_workers_2x2_processes_and_after_kill9() {
    let brokers = broker();
    let topics = topics("cl2x2");
    for i in 0..2 {
        part(&brokers, &topics, i);
    }
    let want = oracle(&brokers, &topics);
    assert!(want.alerts.len() > 50, "the feed yields alerts: {}", want.alerts.len());

    let one = temp_dir("cl2x2-one");
    market_bounded(
        &arbitrage_config(&one, "cl", &brokers, &topics, ""),
        &["run", "-w", "1"],
    );
    assert_exact("1 worker", &one, &want);
    let reference = table_rows(&one);
    assert!(reference.values().all(|rows| !rows.is_empty()), "every table has rows");

    let four = temp_dir("cl2x2-four");
    market_bounded(
        &arbitrage_config(&four, "cl", &brokers, &topics, ""),
        &["run", "-w", "4"],
    );
    assert_same_tables("4 workers", &table_rows(&four), &reference);

    let cluster = temp_dir("cl2x2-cluster");
    let reports = market_bounded(
        &arbitrage_config(&cluster, "cl", &brokers, &topics, ""),
        &["cluster", "-n", "2", "-w", "2"],
    );
    // The partitions were spread over both processes.
    assert_eq!(reports.len(), 2);
    for (i, r) in reports.iter().enumerate() {
        assert!(r["messages"].as_u64().unwrap() > 0, "process {i} read messages: {r}");
    }
    assert_same_tables("2 processes x 2 workers", &table_rows(&cluster), &reference);

    // Killed (as by kill -9) at two points of the commit protocol, then finished.
    let crashed = temp_dir("cl2x2-kill9");
    let config = arbitrage_config(&crashed, "cl", &brokers, &topics, "");
    for fault in ["after-manifest:1", "between-tables:1"] {
        let out = k2()
            .args(["run", "market", "--bounded", "-w", "2", "--config"])
            .arg(&config)
            .env("K2_FAULT", fault)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{fault}: the run was killed");
    }
    market_bounded(&config, &["run", "-w", "3"]);
    assert_same_tables("after kill -9 restarts", &table_rows(&crashed), &reference);
}

/// Sum of the next offsets of the newest manifest of `job`.
fn committed_offsets(dir: &Path, job: &str) -> i64 {
    let manifests = dir.join("checkpoints").join(job).join("manifests");
    let Some(newest) = std::fs::read_dir(&manifests).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .max()
    }) else {
        return 0;
    };
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap();
    offsets_sum(&m)
}

/// The pid the supervisor logged for process `index`.
fn pid_of(log: &Path, index: usize, after: usize) -> Option<u32> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter(|l| l.contains("cluster: process started") && l.contains(&format!("process={index} ")))
        .nth(after)?
        .split("pid=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_supervisor_restarts_a_cluster_that_lost_a_process_exactly_once() {
    let brokers = broker();
    let topics = topics("clkill");
    let dir = temp_dir("clkill");
    let config = arbitrage_config(&dir, "clkill", &brokers, &topics, "");
    part(&brokers, &topics, 0);
    let log = dir.join("cluster.log");
    let mut cluster: Child = k2()
        .args([
            "cluster",
            "market",
            "-n",
            "2",
            "-w",
            "1",
            "--status-every",
            "1",
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the first checkpoint", Duration::from_secs(90), || {
        committed_offsets(&dir, "clkill") > 0
    });
    let victim = pid_of(&log, 1, 0).expect("the supervisor logs each process's pid");
    ok(std::process::Command::new("kill").args(["-9", &victim.to_string()]));
    part(&brokers, &topics, 1);
    wait_for("a restart of the cluster", Duration::from_secs(60), || {
        pid_of(&log, 1, 1).is_some()
    });
    part(&brokers, &topics, 2);
    let ends = topic_ends(&brokers, &topics);
    wait_for("everything to be committed", Duration::from_secs(120), || {
        committed_offsets(&dir, "clkill") == ends
    });
    ok(std::process::Command::new("kill").args(["-TERM", &cluster.id().to_string()]));
    let status = cluster.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "the cluster stops cleanly on SIGTERM:\n{text}");
    assert!(
        text.contains("a process died") && text.contains("signal 9 (SIGKILL)"),
        "the supervisor says why it restarted:\n{text}"
    );
    assert!(text.contains("cluster: p0 running"), "status lines show each process");
    assert!(
        !text.contains("panicked at") && !text.contains("RUST_BACKTRACE"),
        "a peer's death is one line, not a panic:\n{text}"
    );

    let want = oracle(&brokers, &topics);
    assert_exact("after losing a process", &dir, &want);
}

#[test]
fn a_job_rescales_from_2_to_3_workers_and_back() {
    let brokers = broker();
    let topics = topics("clscale");
    let dir = temp_dir("clscale");
    let config = arbitrage_config(&dir, "clscale", &brokers, &topics, "");
    // 2 processes x 1 worker, then 1 process x 3 workers, then 1 x 2.
    part(&brokers, &topics, 0);
    market_bounded(&config, &["cluster", "-n", "2", "-w", "1"]);
    part(&brokers, &topics, 1);
    market_bounded(&config, &["run", "-w", "3"]);
    part(&brokers, &topics, 2);
    market_bounded(&config, &["run", "-w", "2"]);
    let want = oracle(&brokers, &topics);
    assert_exact("after 2 -> 3 -> 2 workers", &dir, &want);
    // Pairs across the restarts came from restored, re-partitioned state.
    assert!(want.alerts.len() > 50, "the feed yields alerts: {}", want.alerts.len());
}

#[test]
fn a_process_with_another_config_refuses_to_join() {
    let brokers = broker();
    let topics = topics("clrefuse");
    let dir = temp_dir("clrefuse");
    let config = arbitrage_config(&dir, "clrefuse", &brokers, &topics, "");
    let other = dir.join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("delta_ms = 100", "delta_ms = 250"),
    )
    .unwrap();
    part(&brokers, &topics, 0);
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, common::job::loopback_hosts(2)).unwrap();
    let start = |index: usize, config: &Path| {
        k2().args(["run", "market", "--bounded", "-n", "2", "-p", &index.to_string(), "-h"])
            .arg(&hosts)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let leader = start(0, &config);
    let follower = start(1, &other);
    let (leader, follower) = (leader.wait_with_output().unwrap(), follower.wait_with_output().unwrap());
    assert!(!leader.status.success() && !follower.status.success(), "both refuse");
    for out in [&leader, &follower] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("process 1 differs from process 0") && err.contains("`arbitrage.delta_ms`"),
            "the error names the process and the key:\n{err}"
        );
    }
    // Nothing was committed.
    assert_eq!(committed_offsets(&dir, "clrefuse"), 0);
}
