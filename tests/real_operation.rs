//! What real operation brings, against the real broker: timestamps from the
//! future, replays after a quiet spell, partitions added while the job runs,
//! topics deleted and re-created, lost checkpoints, tables compacted by
//! another writer, a full disk, and errors a person must be able to act on.
//! Each is handled with nothing lost or duplicated, or stopped with an error
//! that says what happened.

mod common;

use common::job::*;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A bronze config for `topics` in `dir`, with `extra` appended.
fn config(
    dir: &Path,
    job: &str,
    brokers: &str,
    topics: &(String, String),
    kafka: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = bronze_config(dir, job, brokers, topics, kafka);
    append_config(&path, extra);
    path
}

/// The message ids in `table`, with multiplicity, sorted.
fn rows_of(dir: &Path, table: &str) -> Vec<String> {
    table_ids(dir, table)
}

fn ends(topic: &str, parts: &[(i32, i64)]) -> BTreeMap<(String, i32), i64> {
    parts.iter().map(|(p, o)| ((topic.to_string(), *p), *o)).collect()
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A trade dated in the year 3000 and a replay of everything after the
/// partitions went idle: dedup forgets nothing, the future trade moves no
/// watermark and is still in bronze (flagged late), and each trade is in the
/// table once.
#[test]
fn no_timestamp_makes_dedup_forget() {
    let brokers = broker();
    let topics = topics("future");
    create_topic(&brokers, &topics.0, 1);
    create_topic(&brokers, &topics.1, 1);
    let dir = temp_dir("future");
    let cfg = config(
        &dir,
        "future",
        &brokers,
        &topics,
        "",
        "\n[source]\nidle_timeout_ms = 300\nmax_out_of_orderness_ms = 100\n\n[dedup]\nid_retention_ms = 1000\n",
    );
    let base = now_ms() - 60_000;
    let mut feed: Vec<String> = (1..=20)
        .map(|i| binance_trade("BTCUSDT", i, "100.5", "1", base + i as i64))
        .collect();
    // 3000-01-01T00:00:00Z.
    feed.push(binance_trade("BTCUSDT", 21, "100.5", "1", 32_503_680_000_000));
    send(&brokers, &topics.0, 0, "BTCUSDT", &feed);

    let log = dir.join("job.log");
    let job = spawn_job(&cfg, "bronze", 2, &log);
    wait_for_offsets(&dir, "future", &ends(&topics.0, &[(0, 21)]), 60);
    // A quiet spell: the idle watermark follows the wall clock meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    send(&brokers, &topics.0, 0, "BTCUSDT", &feed);
    wait_for_offsets(&dir, "future", &ends(&topics.0, &[(0, 42)]), 60);
    let report = stop_job(job, &log);

    let rows = rows_of(&dir, "bronze_binance_trades");
    let want: Vec<String> = {
        let mut v: Vec<String> = (1..=21).map(|i| format!("binance:BTCUSDT:{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(rows, want, "each trade once, the future one included");
    assert_eq!(report["duplicates_removed"], 21, "{report}");
    assert_eq!(report["future"], 2, "the future trade and its re-send: {report}");
    // The future trade moved no watermark: the checkpointed partition
    // watermark is that of the ordinary trades.
    let m = latest_manifest(&dir, "future").unwrap();
    let max_us = m.max_event_us[&topics.0][&0];
    assert_eq!(max_us, (base + 20) * 1000, "watermark of {}/0", topics.0);
}

/// Partitions added while the job runs are read from their first offset
/// within about `kafka.metadata_refresh_ms`, and recorded in the next
/// checkpoint. With `source.start = "latest"`, partitions the job has never
/// seen but that were added after its first checkpoint are still read from
/// their start on a restart.
#[test]
fn partitions_added_while_running_are_read_from_their_start() {
    let brokers = broker();
    let topics = topics("addpart");
    create_topic(&brokers, &topics.0, 2);
    create_topic(&brokers, &topics.1, 1);
    let dir = temp_dir("addpart");
    let cfg = config(
        &dir,
        "addpart",
        &brokers,
        &topics,
        "metadata_refresh_ms = 300",
        "\n[source]\nstart = \"latest\"\n",
    );
    let t = now_ms() - 10_000;
    let trade = |i: u64| binance_trade("BTCUSDT", i, "1", "1", t + i as i64);
    let log = dir.join("job.log");
    let job = spawn_job(&cfg, "bronze", 2, &log);
    wait_for("the job to plan its partitions", Duration::from_secs(60), || {
        log_of(&log).contains("source planned")
    });
    send(&brokers, &topics.0, 0, "a", &(1..=5).map(trade).collect::<Vec<_>>());
    send(&brokers, &topics.0, 1, "b", &(6..=10).map(trade).collect::<Vec<_>>());
    add_partitions(&brokers, &topics.0, 4);
    send(&brokers, &topics.0, 2, "c", &(11..=15).map(trade).collect::<Vec<_>>());
    send(&brokers, &topics.0, 3, "d", &(16..=20).map(trade).collect::<Vec<_>>());
    let started = Instant::now();
    wait_for_offsets(&dir, "addpart", &ends(&topics.0, &[(0, 5), (1, 5), (2, 5), (3, 5)]), 60);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "found within a bounded time"
    );
    let report = stop_job(job, &log);
    assert_eq!(report["partitions_added"], 2, "{report}");
    let want: BTreeSet<String> = (1..=20).map(|i| format!("binance:BTCUSDT:{i}")).collect();
    let rows = rows_of(&dir, "bronze_binance_trades");
    assert_eq!(rows.len(), 20);
    assert_eq!(rows.into_iter().collect::<BTreeSet<_>>(), want);

    // While the job is down: more on a known partition, and a fifth
    // partition with data. `start = "latest"` must not skip either.
    send(&brokers, &topics.0, 3, "d", &(21..=25).map(trade).collect::<Vec<_>>());
    add_partitions(&brokers, &topics.0, 5);
    send(&brokers, &topics.0, 4, "e", &(26..=30).map(trade).collect::<Vec<_>>());
    ok(k2().args(["run", "bronze", "--bounded", "--config"]).arg(&cfg));
    let rows = rows_of(&dir, "bronze_binance_trades");
    let want: BTreeSet<String> = (1..=30).map(|i| format!("binance:BTCUSDT:{i}")).collect();
    assert_eq!(rows.len(), 30, "nothing lost or repeated: {rows:?}");
    assert_eq!(rows.into_iter().collect::<BTreeSet<_>>(), want);
    let m = latest_manifest(&dir, "addpart").unwrap();
    assert_eq!(
        m.offsets[&topics.0].len(),
        5,
        "all five partitions recorded: {:?}",
        m.offsets
    );
}

/// A topic deleted and re-created: with fewer messages than the checkpoint
/// read, or refilled past it, the job refuses with an error naming the topic,
/// the offsets and the choices; it never reads on silently.
#[test]
fn a_recreated_topic_stops_the_job_with_the_choices() {
    let brokers = broker();
    let topics = topics("recreate");
    create_topic(&brokers, &topics.0, 1);
    create_topic(&brokers, &topics.1, 1);
    let dir = temp_dir("recreate");
    let cfg = config(&dir, "recreate", &brokers, &topics, "", "");
    let t = now_ms() - 10_000;
    let first: Vec<String> = (1..=30)
        .map(|i| binance_trade("ETHUSDT", i, "2", "1", t + i as i64))
        .collect();
    send(&brokers, &topics.0, 0, "ETHUSDT", &first);
    ok(k2().args(["run", "bronze", "--bounded", "--config"]).arg(&cfg));
    assert_eq!(rows_of(&dir, "bronze_binance_trades").len(), 30);

    delete_topic(&brokers, &topics.0);
    create_topic(&brokers, &topics.0, 1);
    std::thread::sleep(Duration::from_millis(50));
    let second: Vec<String> = (100..110)
        .map(|i| binance_trade("ETHUSDT", i, "2", "1", t + i as i64))
        .collect();
    send(&brokers, &topics.0, 0, "ETHUSDT", &second);
    let out = k2()
        .args(["run", "bronze", "--bounded", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a re-created topic with fewer messages is refused"
    );
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    for want in [topics.0.as_str(), "30", "10", "re-created", "--reset earliest"] {
        assert!(line.contains(want), "`{want}` missing from: {line}");
    }

    // Refilled past the recorded offset: caught by the last message's timestamp.
    let third: Vec<String> = (200..240)
        .map(|i| binance_trade("ETHUSDT", i, "2", "1", t + i as i64))
        .collect();
    send(&brokers, &topics.0, 0, "ETHUSDT", &third);
    let out = k2()
        .args(["run", "bronze", "--bounded", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a re-created, refilled topic is refused");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    for want in [topics.0.as_str(), "offset 29", "re-created", "--reset"] {
        assert!(line.contains(want), "`{want}` missing from: {line}");
    }
    assert_eq!(
        rows_of(&dir, "bronze_binance_trades").len(),
        30,
        "nothing read from the new topic"
    );

    // The explicit way on: --reset, which must be confirmed since the tables hold rows.
    let out = k2()
        .args(["run", "bronze", "--bounded", "--reset", "earliest", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("30 rows") && err.contains("--yes") && err.contains("twice"),
        "{err}"
    );
    ok(k2()
        .args(["run", "bronze", "--bounded", "--reset", "earliest", "--yes", "--config"])
        .arg(&cfg));
    assert_eq!(
        rows_of(&dir, "bronze_binance_trades").len(),
        80,
        "30 old rows + the new topic's 50"
    );
}

/// Deleting the newest manifests (or restoring an old backup of them) leaves
/// the tables ahead of the checkpoints: the job refuses, and never resumes
/// from the older cut (which would write the later data twice).
#[test]
fn tables_ahead_of_the_checkpoints_are_refused() {
    let brokers = broker();
    let topics = topics("lostmf");
    let dir = temp_dir("lostmf");
    let cfg = bronze_config(&dir, "lostmf", &brokers, &topics, "");
    for part in 0..3 {
        produce(&dir, &brokers, &topics, 300, 50 + part);
        ok(k2().args(["run", "bronze", "--bounded", "--config"]).arg(&cfg));
    }
    let before = rows_of(&dir, "bronze_binance_trades");
    let manifests = dir.join("checkpoints/lostmf/manifests");
    let mut files: Vec<_> = std::fs::read_dir(&manifests)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files[files.len() - 2..] {
        std::fs::remove_file(f).unwrap();
    }
    let out = k2()
        .args(["run", "bronze", "--bounded", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tables ahead of the checkpoints are refused");
    assert!(
        err.contains("checkpoints were lost") && err.contains("--reset"),
        "{err}"
    );
    assert_eq!(rows_of(&dir, "bronze_binance_trades"), before, "nothing written twice");
}

/// Another writer rewrites a table (a compaction, as pyiceberg's overwrite):
/// a K2 restart removes orphans, but keeps every file a retained snapshot
/// references, so time travel to every snapshot still reads.
#[test]
fn orphan_removal_keeps_what_retained_snapshots_reference() {
    let brokers = broker();
    let topics = topics("compact");
    let dir = temp_dir("compact");
    let cfg = bronze_config(&dir, "compact", &brokers, &topics, "");
    produce(&dir, &brokers, &topics, 400, 7);
    ok(k2().args(["run", "bronze", "--bounded", "--config"]).arg(&cfg));
    let warehouse = dir.join("warehouse");
    ok(Command::new(python())
        .arg(root().join("tests/py/compact.py"))
        .arg("--catalog-uri")
        .arg(format!("sqlite:///{}", warehouse.join("catalog.db").display()))
        .arg("--warehouse")
        .arg(&warehouse)
        .arg("--table")
        .arg("market_data.bronze_binance_trades"));
    produce(&dir, &brokers, &topics, 200, 8);
    ok(k2().args(["run", "bronze", "--bounded", "--config"]).arg(&cfg));
    // Every retained snapshot reads (the reader fails on a missing file):
    // K2's first ones still have their rows, and the newest has them all.
    let t = read_tables(&dir, &["bronze_binance_trades"], "message_id", true);
    let snapshots = t[0]["snapshots"].as_array().unwrap();
    assert!(snapshots.len() >= 3, "K2's, the compaction's, K2's again");
    let rows = |s: &Value| s["rows"].as_array().unwrap().len();
    assert!(rows(&snapshots[0]) > 0, "the first snapshot reads its rows");
    let newest = rows(snapshots.last().unwrap());
    assert_eq!(newest, rows_of(&dir, "bronze_binance_trades").len());
    assert!(snapshots.iter().all(|s| rows(s) <= newest));
}

/// Broker unreachable: the job names the address, waits with backoff saying
/// what it waits for, and gives up after `kafka.connect_timeout_ms`.
#[test]
fn an_unreachable_broker_is_named_and_waited_for() {
    let dir = temp_dir("nobroker");
    let topics = topics("nobroker");
    let cfg = bronze_config(&dir, "nobroker", "127.0.0.1:1", &topics, "connect_timeout_ms = 3000");
    let started = Instant::now();
    let out = k2()
        .args(["run", "bronze", "--bounded", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() >= Duration::from_secs(3), "waited");
    assert!(started.elapsed() < Duration::from_secs(60), "gave up");
    assert!(err.contains("waiting for Kafka at 127.0.0.1:1"), "{err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(
        line.contains("127.0.0.1:1") && line.contains("kafka.connect_timeout_ms"),
        "{line}"
    );
}

/// A catalog that is locked at start (another process holds SQLite's write
/// lock) is waited for with backoff, as commits wait for it mid-run.
#[test]
fn a_locked_catalog_at_start_is_waited_for() {
    let brokers = broker();
    let topics = topics("locked");
    let dir = temp_dir("locked");
    let cfg = bronze_config(&dir, "locked", &brokers, &topics, "");
    produce(&dir, &brokers, &topics, 100, 3);
    ok(k2().args(["run", "bronze", "--bounded", "--config"]).arg(&cfg));
    produce(&dir, &brokers, &topics, 100, 4);
    let db = dir.join("warehouse/catalog.db");
    let mut locker = Command::new(python())
        .arg("-c")
        .arg(format!(
            "import sqlite3,time,sys\nc=sqlite3.connect({:?},isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked',flush=True)\ntime.sleep(8)\nc.execute('COMMIT')",
            db.display().to_string()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(locker.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let out = ok(k2()
        .args(["run", "bronze", "--bounded", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info"));
    locker.wait().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed; retrying in"), "the wait is logged: {err}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
}

/// Config errors name the key and the line, or the environment variable;
/// `k2 checkpoints --config F` takes the job name from F.
#[test]
fn config_errors_say_where_and_checkpoints_reads_the_job_from_the_config() {
    let brokers = broker();
    let topics = topics("cfgerr");
    let dir = temp_dir("cfgerr");
    let cfg = bronze_config(&dir, "cfgerr", &brokers, &topics, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let line = text.lines().position(|l| l.starts_with("epoch_ms")).unwrap() + 1;
    std::fs::write(&cfg, text.replace("epoch_ms = 100", "epoch_ms = \"fast\"")).unwrap();
    let out = k2().args(["run", "bronze", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`job.epoch_ms`") && err.contains(&format!("line {line}")),
        "{err}"
    );
    assert_eq!(err.matches("expected u64").count(), 1, "the cause once: {err}");
    std::fs::write(&cfg, &text).unwrap();
    let out = k2()
        .args(["run", "bronze", "--config"])
        .arg(&cfg)
        .env("K2__JOB__COMMIT_INTERVAL_MS", "soon")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("K2__JOB__COMMIT_INTERVAL_MS"), "{err}");
    assert!(!err.contains(".toml"), "not blamed on the file: {err}");

    produce(&dir, &brokers, &topics, 50, 1);
    ok(k2().args(["run", "bronze", "--bounded", "--config"]).arg(&cfg));
    let out = ok(k2().args(["checkpoints", "--config"]).arg(&cfg));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("job `cfgerr`"), "{listing}");
    let out = ok(k2().args(["checkpoints", "--verify", "--config"]).arg(&cfg));
    let verified = String::from_utf8_lossy(&out.stdout);
    assert!(verified.contains("0 problems"), "{verified}");
}

/// A full disk: the writer backs off exponentially (the log says the real
/// wait), leaves no file behind per try, and the sources stop reading; once
/// there is room again, everything is committed exactly once.
#[test]
fn a_full_disk_backs_off_pauses_reading_and_recovers() {
    let mnt = temp_dir("fulldisk").join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // Mounting needs root; CI runs as root, so this is only a local skip.
        assert_ne!(unsafe_uid(), 0, "root but tmpfs could not be mounted");
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let brokers = broker();
    let topics = topics("fulldisk");
    let dir = mnt.parent().unwrap().to_path_buf();
    let cfg = bronze_config(&dir, "fulldisk", &brokers, &topics, "");
    // The warehouse on the tmpfs; checkpoints beside it on the real disk.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&dir.join("warehouse").display().to_string(), &mnt.display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let truth = produce(&dir, &brokers, &topics, 500, 11);
    let log = dir.join("job.log");
    let job = spawn_job(&cfg, "bronze", 1, &log);
    let exp = expected(&read_truth(&truth));
    wait_for_offsets(&dir, "fulldisk", &exp.ends, 60);
    // Fill the disk: only a little room left.
    let used = fs_used(&mnt);
    remount(&mnt, used + 48 * 1024);
    std::fs::rename(&truth, dir.join("truth-1.jsonl")).unwrap();
    let truth2 = produce(&dir, &brokers, &topics, 20_000, 12);
    std::thread::sleep(Duration::from_secs(12));
    let during = log_of(&log);
    let failures = during.matches("writing data files failed").count();
    assert!(failures >= 2, "the disk filled up: {during}");
    assert!(failures < 30, "backoff, not a tight loop: {failures} failures in 12 s");
    assert!(during.contains("retrying in"), "the log says the wait");
    let empty = count_files(&mnt, |len| len == 0);
    assert!(empty <= 2, "{empty} zero-byte files left behind");
    // The sources paused: the job has not read far ahead of what it could write.
    let rss_kib = rss_kib(job.pid());
    assert!(rss_kib < 1024 * 1024, "RSS bounded: {rss_kib} KiB");
    // Room again: the job goes on by itself.
    remount(&mnt, 256 * 1024 * 1024);
    let mut all = read_truth(&dir.join("truth-1.jsonl"));
    all.extend(read_truth(&truth2));
    let exp = expected(&all);
    wait_for_offsets(&dir, "fulldisk", &exp.ends, 120);
    let _ = stop_job(job, &log);
    // `check_exactly_once` reads the tables from `dir/warehouse`.
    std::os::unix::fs::symlink(&mnt, dir.join("warehouse")).unwrap();
    check_exactly_once(&dir, &topics, &exp, "fulldisk");
}

fn unsafe_uid() -> u32 {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn fs_used(mnt: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=used"])
        .arg(mnt)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn remount(mnt: &Path, bytes: u64) {
    let status = Command::new("mount")
        .args(["-o", &format!("remount,size={bytes}")])
        .arg(mnt)
        .status()
        .unwrap();
    assert!(status.success());
}

fn count_files(dir: &Path, pred: impl Fn(u64) -> bool + Copy) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += count_files(&p, pred);
        } else if p.extension().is_some_and(|x| x == "parquet") && pred(e.metadata().map(|m| m.len()).unwrap_or(0)) {
            n += 1;
        }
    }
    n
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
