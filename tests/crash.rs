//! Exactly once, proven by crashing: SIGKILL at random moments and at every
//! gap of the commit protocol, fencing, clean stops, and a broker restart.

mod common;

use common::job::{create_feed_topics, start_producer};
use common::store::*;
use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `k2 run bronze` (continuous) with its stderr in `log`.
fn start_job(config: &Path, workers: usize, log: &Path, fault: Option<&str>) -> Child {
    let mut cmd = k2();
    cmd.args(["run", "bronze", "-w", &workers.to_string(), "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(f) = fault {
        cmd.env("K2_FAULT", f);
    }
    cmd.spawn().expect("spawn k2 run")
}

fn kill9(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

/// Runs the job bounded until it has caught up with everything produced.
fn catch_up(config: &Path) {
    ok(k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(config));
}

/// The number of kill rounds: `K2_CRASH_ROUNDS` (`scripts/soak.sh` raises
/// it), else `default`.
fn rounds(default: usize) -> usize {
    std::env::var("K2_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sigkill_at_random_moments_and_protocol_gaps_loses_and_duplicates_nothing() {
    let brokers = broker();
    let topics = topics("crash");
    let dir = temp_dir("crash");
    create_feed_topics(&brokers, &topics);
    let config = bronze_config(&dir, "crash", &brokers, &topics, "");
    kill_rounds(&config, &dir, &brokers, &topics, rounds(24), 5, Duration::ZERO);

    catch_up(&config);
    let exp = expected(&read_truth(&dir.join("truth.jsonl")));
    check_exactly_once(&dir, &topics, &exp, "crash");
    check_cuts(&dir, &topics, &exp);

    // Every manifest the job kept is listed by `k2 checkpoints`.
    let out = ok(k2().args(["checkpoints", "crash", "--config"]).arg(&config));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("epoch"), "{listing}");
}

/// The production path: checkpoints (manifests, state, the lease and the
/// generations) in the S3 store, the tables in S3 through the REST catalog.
/// The same kills as on local disk, fewer rounds.
#[test]
fn on_s3_checkpoints_and_the_rest_catalog_sigkill_loses_and_duplicates_nothing() {
    let brokers = broker();
    let topics = topics("crashs3");
    let dir = temp_dir("crashs3");
    create_feed_topics(&brokers, &topics);
    let catalog = Catalog::rest("crashs3");
    let config = job_config(&dir, "crashs3", &brokers, &topics, &catalog);
    // The killed holder's lease is taken over at once (its process is
    // gone); reaching S3 makes a start slower than on disk.
    let checkpoints = checkpoints_in_s3(&config, "crashs3", 1000);
    kill_rounds(
        &config,
        &dir,
        &brokers,
        &topics,
        rounds(12),
        6,
        Duration::from_millis(500),
    );

    catch_up(&config);
    let exp = expected(&read_truth(&dir.join("truth.jsonl")));
    check_exactly_once_in(&catalog, &dir, &topics, &exp, "crashs3");
    check_cuts_in(&catalog, &topics, &exp);
    // Nothing of the job was kept on local disk.
    assert!(!dir.join("checkpoints").exists(), "checkpoints were written locally");
    assert!(
        s3_list(&format!("{checkpoints}/crashs3/manifests")).len() >= 2,
        "the manifests are in S3"
    );
    catalog.drop();
    s3_delete_prefix(&checkpoints);
}

/// Kills `k2 run bronze` (continuous, 1 or 2 workers) `rounds` times while
/// a producer runs: at random moments, and every fourth round at a gap of
/// the commit protocol (`K2_FAULT`). Each gap must be hit at least once.
/// A random moment is counted from `settle` after the start.
fn kill_rounds(
    config: &Path,
    dir: &Path,
    brokers: &str,
    topics: &(String, String),
    rounds: usize,
    seed: u64,
    settle: Duration,
) {
    let mut producer = start_producer(brokers, topics, dir, 2500, (rounds as u64 * 5 / 4).max(10), seed);

    // At least 20 kills: random moments, plus each protocol gap twice.
    let faults = ["before-manifest:2", "after-manifest:2", "between-tables:1"];
    let mut rng = SmallRng::seed_from_u64(0x6b32);
    let mut injected = [0; 3];
    for round in 0..rounds {
        let fault = (round % 4 == 3).then(|| faults[(round / 4) % 3]);
        let log = dir.join(format!("run-{round}.log"));
        let workers = 1 + round % 2;
        let mut child = start_job(config, workers, &log, fault);
        let deadline = Instant::now() + settle + Duration::from_millis(rng.random_range(300..1800));
        if fault.is_some() {
            // Let the fault fire (the process aborts itself), or time out.
            let limit = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() && Instant::now() < limit {
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(&log).unwrap();
            match fault {
                Some(f) if text.contains("K2_FAULT: aborting") => {
                    injected[faults.iter().position(|x| *x == f).unwrap()] += 1
                }
                _ => panic!("run {round} exited by itself ({status}):\n{text}"),
            }
        }
        kill9(&mut child);
    }
    assert!(
        producer.wait().unwrap().success(),
        "producer failed: {}",
        std::fs::read_to_string(dir.join("producer.log")).unwrap()
    );
    assert!(
        injected.iter().all(|n| *n >= 1),
        "every protocol gap was hit at least once: {injected:?}"
    );
}

#[test]
fn a_second_instance_refuses_and_a_newer_generation_fences_the_old_one() {
    let brokers = broker();
    let topics = topics("fence");
    let dir = temp_dir("fence");
    create_feed_topics(&brokers, &topics);
    let config = bronze_config(&dir, "fence", &brokers, &topics, "");
    let mut first = start_job(&config, 1, &dir.join("first.log"), None);
    std::thread::sleep(Duration::from_millis(1500));

    // A second instance of the same job refuses at once, with a clear error.
    let out = k2().args(["run", "bronze", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already running"), "{err}");

    // An instance elsewhere (same checkpoint folder, another host) takes a
    // newer generation: the old one must stop at its next commit, not commit.
    let generations = dir.join("checkpoints/fence/generations");
    let newest: u64 = std::fs::read_dir(&generations)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .max()
        .unwrap();
    std::fs::write(generations.join(format!("{:010}", newest + 1)), b"").unwrap();
    let mut producer = start_producer(&brokers, &topics, &dir, 1000, 3, 9);
    let limit = Instant::now() + Duration::from_secs(30);
    while first.try_wait().unwrap().is_none() && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = first.try_wait().unwrap();
    kill9(&mut first);
    let _ = producer.wait();
    let log = std::fs::read_to_string(dir.join("first.log")).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the fenced instance stopped with an error:\n{log}"
    );
    assert!(log.contains("fenced"), "{log}");
    // Nothing was committed by the fenced generation.
    for t in read_tables(&dir, &TABLES[..2], "message_id", false) {
        for s in t["snapshots"].as_array().into_iter().flatten() {
            assert_ne!(
                s["summary"]["k2.generation"],
                serde_json::json!((newest).to_string()),
                "a fenced commit landed"
            );
        }
    }
}

#[test]
fn sigterm_ends_with_a_clean_final_commit() {
    let brokers = broker();
    let topics = topics("term");
    let dir = temp_dir("term");
    let truth = produce(&dir, &brokers, &topics, 2000, 3);
    let exp = expected(&read_truth(&truth));
    let config = bronze_config(&dir, "term", &brokers, &topics, "");
    let mut job = start_job(&config, 2, &dir.join("job.log"), None);
    // Wait until it has committed everything, then ask it to stop.
    let limit = Instant::now() + Duration::from_secs(60);
    loop {
        let tables = read_tables(&dir, &["dead_letters"], "source_offset", false);
        let done = tables[0]["snapshots"]
            .as_array()
            .and_then(|s| s.last())
            .is_some_and(|s| {
                let offsets = summary_offsets(s);
                offsets.iter().all(|(k, v)| *v == exp.ends.get(k).copied().unwrap_or(0))
            });
        if done || Instant::now() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let pid = job.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = job.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("job.log")).unwrap();
    assert!(status.success(), "SIGTERM exits cleanly:\n{log}");
    check_exactly_once(&dir, &topics, &exp, "term");
}

#[test]
fn a_broker_restart_mid_run_loses_nothing() {
    // A broker of its own, so that restarting it disturbs no other test.
    let kafka_dir = root().join("target/k2-tests/kafka-restart");
    let env = [
        ("K2_KAFKA_PORT", "19192"),
        ("K2_KAFKA_DIR", kafka_dir.to_str().unwrap()),
    ];
    let script = root().join("scripts/kafka.sh");
    let run = |arg: &str| {
        let out = Command::new(&script).arg(arg).envs(env).output().unwrap();
        assert!(
            out.status.success(),
            "kafka.sh {arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("start");
    let brokers = "127.0.0.1:19192".to_string();
    let topics = topics("restart");
    let dir = temp_dir("restart");
    create_feed_topics(&brokers, &topics);
    let config = bronze_config(&dir, "restart", &brokers, &topics, "");
    let mut producer = start_producer(&brokers, &topics, &dir, 1500, 12, 21);
    let mut job = start_job(&config, 2, &dir.join("job.log"), None);
    std::thread::sleep(Duration::from_secs(4));
    run("restart");
    assert!(
        producer.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(dir.join("producer.log")).unwrap()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(job.try_wait().unwrap().is_none(), "the job survived the broker restart");
    let pid = job.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = job.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("job.log")).unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("waiting for Kafka"),
        "the job said what it waited for:\n{log}"
    );
    catch_up(&config);
    run("stop");
    let exp = expected(&read_truth(&dir.join("truth.jsonl")));
    check_exactly_once(&dir, &topics, &exp, "restart");
}
