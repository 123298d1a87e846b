//! The bronze dataflow end to end, against the real broker, read back by
//! pyiceberg as an outside client.

mod common;

use common::*;

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
        check_exactly_once(&dir, &topics, &exp, "bronze-e2e");
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
    check_exactly_once(&dir, &topics, &exp, "bronze-e2e");
}

#[test]
fn every_snapshot_is_a_consistent_cut() {
    // Several commits, each snapshot's k2.offsets must match exactly the rows
    // the table holds at that snapshot. The feed arrives in three parts, each
    // followed by a bounded run, so every table gets several snapshots
    // whatever the speed of the machine.
    let brokers = broker();
    let topics = topics("cut");
    let dir = temp_dir("cut");
    let config = bronze_config(&dir, "bronze-e2e", &brokers, &topics, "poll_batch = 64");
    let mut truth = Vec::new();
    for (part, seed) in [11u64, 12, 13].into_iter().enumerate() {
        let part_dir = dir.join(format!("part{part}"));
        std::fs::create_dir_all(&part_dir).unwrap();
        truth.extend(read_truth(&produce(&part_dir, &brokers, &topics, 1500, seed)));
        ok(k2()
            .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
            .arg(&config));
    }
    let exp = expected(&truth);
    check_cuts(&dir, &topics, &exp);
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

/// A job that runs for long keeps its tables' metadata bounded: it expires
/// snapshots older than `max_snapshot_age_ms` while running, keeping at
/// least `min_snapshots_to_keep`, and every row stays.
#[test]
fn a_running_job_expires_old_snapshots() {
    use common::job::{spawn_job, stop_job};
    let brokers = broker();
    let topics = topics("expiry");
    let dir = temp_dir("expiry");
    common::job::create_feed_topics(&brokers, &topics);
    let config = bronze_config(&dir, "expiry", &brokers, &topics, "");
    // [iceberg] is the config's last section.
    common::job::append_config(
        &config,
        "max_snapshot_age_ms = 1500\nmin_snapshots_to_keep = 2\nexpire_every_ms = 1000\n",
    );
    let job = spawn_job(&config, "bronze", 1, &dir.join("job.log"));
    // A feed of 8 s at 500 msg/s: about 25 commits of 300 ms per table.
    let feed = common::job::start_producer(&brokers, &topics, &dir, 500, 8, 8).wait();
    assert!(
        feed.is_ok_and(|s| s.success()),
        "the producer failed: see {}",
        dir.join("producer.log").display()
    );
    let exp = expected(&read_truth(&dir.join("truth.jsonl")));
    common::job::wait_for_offsets(&dir, "expiry", &exp.ends, 60);
    stop_job(job, &dir.join("job.log"));
    check_exactly_once(&dir, &topics, &exp, "expiry");
    for t in read_tables(&dir, &TABLES[..2], "message_id", false) {
        let snapshots = t["snapshots"].as_array().unwrap();
        let commits = snapshots.last().unwrap()["sequence_number"].as_u64().unwrap();
        assert!(
            commits >= 10 && snapshots.len() >= 2 && (snapshots.len() as u64) * 2 < commits,
            "{}: {} snapshots kept of {commits} commits",
            t["table"],
            snapshots.len()
        );
    }
}
