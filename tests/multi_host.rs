//! Many hosts that share nothing but Kafka, the S3 store and the REST
//! catalog: two `k2 run -n 2 -p i -h hosts` processes, each in its own
//! empty working directory, one killed with SIGKILL and restarted, and the
//! bronze tables, the alerts table and the alerts topic exactly what the
//! sequential oracle computes from the topics; and `k2 cluster` on the same
//! production config.

mod common;

use common::arb::*;
use common::job::{create_feed_topics, loopback_hosts, wait_for};
use common::store::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_MS: i64 = 1767225600000;

/// Feed part `i`: 1500 messages per exchange, overlapping the previous part
/// a little in event time so that pairs span the restart.
fn part(brokers: &str, topics: &(String, String), i: u64) {
    produce_part(brokers, topics, 301 + i, 1500, START_MS + i as i64 * 2800);
}

/// One host: an empty working directory holding only the job's config and
/// the hosts file, as a deployment tool would copy them.
struct Host {
    index: usize,
    cwd: PathBuf,
    log: PathBuf,
}

impl Host {
    fn new(base: &Path, index: usize, config: &str, hosts: &str) -> Host {
        let cwd = base.join(format!("host{index}"));
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::write(cwd.join("job.toml"), config).unwrap();
        std::fs::write(cwd.join("hosts"), hosts).unwrap();
        Host {
            index,
            cwd,
            log: base.join(format!("host{index}.log")),
        }
    }

    /// Starts process `index` of the 2-process job (continuous), appending
    /// its stderr to the host's log.
    fn start(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        k2().current_dir(&self.cwd)
            .args(["run", "market", "-w", "1", "-n", "2", "-p", &self.index.to_string()])
            .args(["-h", "hosts", "--config", "job.toml"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The files in the working directory: still only what was copied in.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.cwd)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// Sum of the next offsets of the job's newest manifest in S3 (0 before the
/// first).
fn committed_offsets(checkpoints: &str, job: &str) -> i64 {
    let Some(newest) = s3_list(&format!("{checkpoints}/{job}/manifests"))
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .max()
    else {
        return 0;
    };
    let m: serde_json::Value = serde_json::from_slice(&s3_read(&newest)).unwrap();
    offsets_sum(&m)
}

fn signal(child: &Child, sig: &str) {
    ok(Command::new("kill").args([sig, &child.id().to_string()]));
}

/// A `market` config that names no local path: checkpoints in S3, tables
/// through the REST catalog into S3, alerts in a transactional topic.
/// Returns the catalog, the checkpoints' S3 prefix and the config's text.
fn production_config(base: &Path, job: &str, brokers: &str, topics: &(String, String)) -> (Catalog, String, String) {
    let catalog = Catalog::rest(job);
    let config = job_config(base, job, brokers, topics, &catalog);
    let checkpoints = checkpoints_in_s3(&config, job, 1000);
    common::job::append_config(&config, &arbitrage_sections(topics, "kafka_sink = \"transactional\""));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains(base.to_str().unwrap()), "no local path in:\n{text}");
    (catalog, checkpoints, text)
}

/// Asserts bronze, the alerts table and the alerts topic hold exactly what
/// the oracle computes from the topics.
fn assert_exact_in(what: &str, brokers: &str, topics: &(String, String), catalog: &Catalog) {
    let want = oracle(brokers, topics);
    assert!(want.alerts.len() > 50, "the feed yields alerts: {}", want.alerts.len());
    assert_bronze_in(what, catalog, &want);
    let (alerts, late) = engine_output_in(catalog);
    assert_matches(what, &alerts, &want);
    assert_same_late(&late, &want.late, what);
    assert_alerts_topic(brokers, &format!("{}.alerts", topics.0), &want);
}

/// `k2 cluster` on the same production config: two supervised processes,
/// run in an empty folder, exact.
#[test]
fn k2_cluster_runs_the_production_path_exactly_once() {
    let brokers = broker();
    let topics = topics("hostscl");
    let base = temp_dir("hostscl");
    create_feed_topics(&brokers, &topics);
    part(&brokers, &topics, 0);
    part(&brokers, &topics, 1);
    let (catalog, checkpoints, text) = production_config(&base, "hostscl", &brokers, &topics);
    let cwd = base.join("host");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(cwd.join("job.toml"), &text).unwrap();
    ok(k2().current_dir(&cwd).args([
        "cluster",
        "market",
        "--bounded",
        "-n",
        "2",
        "-w",
        "1",
        "--config",
        "job.toml",
    ]));
    assert_exact_in("k2 cluster on S3 + REST", &brokers, &topics, &catalog);
    let files: Vec<_> = std::fs::read_dir(&cwd)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(files, ["job.toml"], "the cluster wrote nothing locally");
    catalog.drop();
    s3_delete_prefix(&checkpoints);
}

#[test]
fn two_hosts_sharing_only_kafka_s3_and_the_catalog_recover_from_sigkill_exactly_once() {
    let brokers = broker();
    let topics = topics("hosts");
    let base = temp_dir("hosts");
    create_feed_topics(&brokers, &topics);
    part(&brokers, &topics, 0);
    let (catalog, checkpoints, text) = production_config(&base, "hosts", &brokers, &topics);
    let hosts_file = loopback_hosts(2);
    let hosts: Vec<Host> = (0..2).map(|i| Host::new(&base, i, &text, &hosts_file)).collect();

    let mut procs: Vec<Child> = hosts.iter().map(Host::start).collect();
    wait_for("the first checkpoint", Duration::from_secs(120), || {
        committed_offsets(&checkpoints, "hosts") > 0
    });

    // Host 1 dies; host 0 must notice and stop with an error (its
    // orchestrator restarts it), not hang or commit alone.
    procs[1].kill().unwrap();
    procs[1].wait().unwrap();
    let limit = Instant::now() + Duration::from_secs(60);
    while procs[0].try_wait().unwrap().is_none() && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(100));
    }
    let survivor = procs[0].try_wait().unwrap();
    if survivor.is_none() {
        procs[0].kill().unwrap();
    }
    assert!(
        survivor.is_some_and(|s| !s.success()),
        "the surviving process stops with an error when its peer dies:\n{}",
        hosts[0].log()
    );

    // Both restart, in the same directories; more data arrives meanwhile.
    part(&brokers, &topics, 1);
    let mut procs: Vec<Child> = hosts.iter().map(Host::start).collect();
    part(&brokers, &topics, 2);
    let ends = topic_ends(&brokers, &topics);
    wait_for("everything to be committed", Duration::from_secs(180), || {
        committed_offsets(&checkpoints, "hosts") == ends
    });
    for p in &procs {
        signal(p, "-TERM");
    }
    for (p, h) in procs.iter_mut().zip(&hosts) {
        let status = p.wait().unwrap();
        assert!(
            status.success(),
            "host {} stops cleanly on SIGTERM:\n{}",
            h.index,
            h.log()
        );
    }

    assert_exact_in("two hosts after a SIGKILL", &brokers, &topics, &catalog);
    for h in &hosts {
        assert_eq!(
            h.files(),
            ["hosts", "job.toml"],
            "host {} wrote nothing locally",
            h.index
        );
        assert!(!h.log().contains("panicked at"), "host {}: {}", h.index, h.log());
    }
    catalog.drop();
    s3_delete_prefix(&checkpoints);
}
