//! The embedded default (local checkpoints, SQLite catalog, local warehouse)
//! against the production path (checkpoints in S3, tables in S3 through the
//! Iceberg REST catalog; `scripts/s3.sh` and `scripts/iceberg-rest.sh`), in
//! one run on the same broker:
//!
//! - commit latency: the time to commit one cut (prepare, manifest, every
//!   table), p50 and p99 from the job's run report;
//! - event-to-visible latency at a steady feed (produce time to the commit
//!   that made a row visible), p50 and p99;
//! - recovery: kill -9, restart at once, time until the new instance's
//!   first manifest (3 rounds, median).
//!
//! Both run `bronze` on 1 worker with the default 1 s commit interval
//! (`K2_BENCH_COMMIT_MS` sets another).

use super::common::store::{self, Catalog};
use super::common::*;
use super::{median, newest_manifest_json, now_ms};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The commit interval: `K2_BENCH_COMMIT_MS`, else the default 1000 ms.
fn commit_ms() -> u64 {
    std::env::var("K2_BENCH_COMMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Where one backend keeps the job's checkpoints and tables.
struct Backend {
    name: &'static str,
    dir: PathBuf,
    config: PathBuf,
    catalog: Option<Catalog>,
    /// The S3 prefix of the checkpoints, for the S3 backend.
    checkpoints: Option<String>,
}

impl Backend {
    fn new(name: &'static str, brokers: &str, topics: &(String, String)) -> Backend {
        let dir = temp_dir(&format!("bench-storage-{name}"));
        let (config, catalog, checkpoints) = if name == "local" {
            (bronze_config(&dir, "bench", brokers, topics, ""), None, None)
        } else {
            let catalog = Catalog::rest("bench_storage");
            let config = store::job_config(&dir, "bench", brokers, topics, &catalog);
            let checkpoints = store::checkpoints_in_s3(&config, "bench-storage", 10_000);
            (config, Some(catalog), Some(checkpoints))
        };
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "commit_interval_ms = 300",
            &format!("commit_interval_ms = {}", commit_ms()),
        );
        std::fs::write(&config, text).unwrap();
        Backend {
            name,
            dir,
            config,
            catalog,
            checkpoints,
        }
    }

    fn start(&self, log: &str) -> Child {
        k2().args(["run", "bronze", "-w", "1", "--config"])
            .arg(&self.config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.join(log)).unwrap())
            .spawn()
            .unwrap()
    }

    /// The newest manifest's generation and creation time.
    fn newest(&self) -> Option<(u64, i64)> {
        let m: Value = match &self.checkpoints {
            None => newest_manifest_json(&self.dir, "bench")?,
            Some(prefix) => {
                let newest = store::s3_list(&format!("{prefix}/bench/manifests"))
                    .into_iter()
                    .filter(|k| k.ends_with(".json"))
                    .max()?;
                serde_json::from_slice(&store::s3_read(&newest)).ok()?
            }
        };
        Some((m["generation"].as_u64()?, m["created_ms"].as_i64()?))
    }

    fn clean(&self) {
        if let Some(c) = &self.catalog {
            c.drop();
        }
        if let Some(p) = &self.checkpoints {
            store::s3_delete_prefix(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn producer(brokers: &str, topics: &(String, String), rate: u64, secs: u64, dir: &Path) -> Child {
    produce_cmd(brokers, topics)
        .args(["--rate", &rate.to_string(), "--duration", &format!("{secs}s")])
        .args(["--duplicates", "0", "--malformed", "0", "--quiet"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("producer.log")).unwrap())
        .spawn()
        .unwrap()
}

/// SIGTERM, then the run report.
fn stop(child: Child, backend: &Backend, log: &str) -> Value {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(backend.dir.join(log)).unwrap_or_default();
        panic!("{}: run report: {e}\n{log}", backend.name)
    })
}

fn wait_first_manifest(backend: &Backend, after_generation: Option<u64>, limit: Duration) -> Option<i64> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some((g, created)) = backend.newest()
            && after_generation.is_none_or(|a| g > a)
        {
            return Some(created);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn one(name: &'static str, brokers: &str, rate: u64, feed_s: u64) -> Value {
    let topics = topics(&format!("bench-storage-{name}"));
    ok(produce_cmd(brokers, &topics).args(["--count", "0", "--quiet"]));
    let backend = Backend::new(name, brokers, &topics);

    // Steady feed: commit and event-to-visible latency from the run report.
    let job = backend.start("steady.log");
    wait_first_manifest(&backend, None, Duration::from_secs(60)).expect("the job commits");
    let mut feed = producer(brokers, &topics, rate, feed_s, &backend.dir);
    feed.wait().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let report = stop(job, &backend, "steady.log");

    // Recovery: kill -9 under the feed, restart at once, time to the new
    // instance's first manifest.
    let mut feed = producer(brokers, &topics, rate, 45, &backend.dir);
    let mut job = backend.start("recovery-0.log");
    std::thread::sleep(Duration::from_secs(6));
    let mut recovery_s = Vec::new();
    for round in 0..3 {
        let (generation, _) = backend.newest().expect("the job commits");
        let killed = now_ms();
        let _ = job.kill();
        let _ = job.wait();
        job = backend.start(&format!("recovery-{}.log", round + 1));
        if let Some(created) = wait_first_manifest(&backend, Some(generation), Duration::from_secs(60)) {
            recovery_s.push((created - killed) as f64 / 1000.0);
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let _ = job.kill();
    let _ = job.wait();
    let _ = feed.kill();
    let _ = feed.wait();
    backend.clean();
    let pick = |v: &Value, q: &str| v.get(q).cloned().unwrap_or(Value::Null);
    let row = json!({
        "backend": name, "feed_msg_per_s": rate, "feed_s": feed_s, "commit_interval_ms": commit_ms(),
        "commit_ms_p50": pick(&report["commit_ms"], "p50"), "commit_ms_p99": pick(&report["commit_ms"], "p99"),
        "visible_ms_p50": pick(&report["latency_ms"], "p50"), "visible_ms_p99": pick(&report["latency_ms"], "p99"),
        "snapshots": report["snapshots"], "cuts_coalesced": report["cuts_coalesced"],
        "recovery_s": recovery_s, "recovery_s_median": if recovery_s.is_empty() { Value::Null } else { json!(median(recovery_s.clone())) },
    });
    eprintln!("  storage {name:8}: {row}");
    row
}

/// The scenario: both backends, one after the other; returns the figures.
pub fn storage(brokers: &str, quick: bool) -> Value {
    store::require_rest();
    let (rate, feed_s) = (10_000, if quick { 20 } else { 60 });
    let rows: Vec<Value> = ["local", "s3-rest"]
        .into_iter()
        .map(|b| one(b, brokers, rate, feed_s))
        .collect();
    println!(
        "| backend | commit p50 / p99 ms | event→visible p50 / p99 ms at {rate} msg/s | recovery s (median of 3) |"
    );
    println!("| --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {} / {} | {} / {} | {} |",
            r["backend"],
            r["commit_ms_p50"],
            r["commit_ms_p99"],
            r["visible_ms_p50"],
            r["visible_ms_p99"],
            r["recovery_s_median"]
        );
    }
    json!(rows)
}
