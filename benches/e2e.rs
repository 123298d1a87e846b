//! End-to-end benchmarks against the real broker, on the release `k2` binary.
//!
//! ```sh
//! cargo bench --bench e2e -- checkpoint-cost recovery     # or: all
//! cargo bench --bench e2e -- compare [--quick]            # K2 vs baseline, Flink, Spark
//! cargo bench --bench e2e -- throughput | latency | profile [--quick]
//! cargo bench --bench e2e -- scaling [--quick]            # 1 vs 2 workers, 1x2 vs 2x1 processes
//! cargo bench --bench e2e -- storage [--quick]            # local disk + SQLite vs S3 + REST catalog
//! ```
//!
//! `benches/run.sh [--quick]` builds what the comparison needs, runs
//! `compare` and writes the report (see `BENCHMARKS.md`). The comparison's
//! scenarios live in `e2e/compare.rs`; `--quick` (or `K2_BENCH_QUICK=1`) is a
//! smoke test of a few minutes, and `K2_BENCH_*` variables set single knobs
//! (see [`compare::Plan::new`]).
//!
//! Each scenario prints a table and appends its figures to
//! `target/bench/e2e.jsonl`. Figures are medians of repeated runs within one
//! invocation, and ratios between runs of the same invocation: absolute
//! numbers on shared machines drift, ratios much less. Nothing here asserts a
//! target; the report says where K2 stands.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "e2e/compare.rs"]
mod compare;
#[path = "e2e/measure.rs"]
mod measure;
#[path = "e2e/scaling.rs"]
mod scaling;
#[path = "e2e/storage.rs"]
mod storage;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The median; the mean of the middle two for an even count.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// Writes `count` messages per exchange, no duplicates or malformed ones.
fn preload(brokers: &str, topics: &(String, String), count: u64, seed: u64) {
    ok(produce_cmd(brokers, topics)
        .args(["--rate", "0", "--count", &count.to_string(), "--duplicates", "0"])
        .args(["--malformed", "0", "--seed", &seed.to_string(), "--quiet"]));
}

fn run_bounded(config: &Path, workers: usize) -> Value {
    let out = ok(k2()
        .args(["run", "bronze", "--bounded", "-w", &workers.to_string(), "--config"])
        .arg(config));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The newest manifest of `job` with checkpoints in `dir/checkpoints`, as JSON.
fn newest_manifest_json(dir: &Path, job: &str) -> Option<Value> {
    let manifests = dir.join("checkpoints").join(job).join("manifests");
    let newest = std::fs::read_dir(&manifests)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max()?;
    serde_json::from_slice(&std::fs::read(newest).ok()?).ok()
}

/// Sum of the offsets of the newest manifest, and its generation.
fn newest_manifest(dir: &Path, job: &str) -> Option<(i64, u64, i64)> {
    let m = newest_manifest_json(dir, job)?;
    let sum = m["offsets"]
        .as_object()?
        .values()
        .flat_map(|p| p.as_object().unwrap().values())
        .map(|v| v.as_i64().unwrap())
        .sum();
    Some((sum, m["generation"].as_u64()?, m["created_ms"].as_i64()?))
}

fn high_watermarks(brokers: &str, topics: &(String, String)) -> i64 {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut sum = 0;
    for t in [&topics.0, &topics.1] {
        for p in 0..4 {
            sum += c
                .fetch_watermarks(t, p, Duration::from_secs(5))
                .map(|(_, h)| h)
                .unwrap_or(0);
        }
    }
    sum
}

fn start_job(config: &Path, log: &Path) -> Child {
    k2().args(["run", "bronze", "-w", "2", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn record(name: &str, figures: Value) {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let line = json!({"scenario": name, "at_ms": now_ms(), "figures": figures});
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("e2e.jsonl"))
        .unwrap();
    use std::io::Write;
    writeln!(f, "{line}").unwrap();
    println!("{}", serde_json::to_string_pretty(&line).unwrap());
}

/// Throughput of bronze with exactly-once commits every second, against the
/// same job committing once at the end (a 60 s interval).
fn checkpoint_cost(brokers: &str, per_exchange: u64) {
    let topics = topics("bench-ckpt");
    preload(brokers, &topics, per_exchange, 1);
    let mut rates: [Vec<f64>; 2] = [vec![], vec![]];
    let mut messages = 0;
    for rep in 0..3 {
        for (i, commit_ms) in [1000u64, 60_000].into_iter().enumerate() {
            let dir = temp_dir(&format!("bench-ckpt-{rep}-{i}"));
            let cfg = bronze_config_timed(&dir, "bench", brokers, &topics, 200, commit_ms);
            let r = run_bounded(&cfg, 2);
            messages = r["messages"].as_u64().unwrap();
            rates[i].push(messages as f64 / r["elapsed_s"].as_f64().unwrap());
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let (on, off) = (median(rates[0].clone()), median(rates[1].clone()));
    record(
        "checkpoint-cost",
        json!({
            "messages": messages, "workers": 2, "runs": 3,
            "msg_per_s_commit_1s": on.round(), "msg_per_s_commit_60s": off.round(),
            "cost_pct": ((1.0 - on / off) * 100.0 * 10.0).round() / 10.0,
        }),
    );
}

/// Recovery time (kill -9 to the first commit of the new instance) and the
/// catch-up rate after a 10 s outage, under a steady feed.
fn recovery(brokers: &str, rate: u64) {
    let topics = topics("bench-recovery");
    let dir = temp_dir("bench-recovery");
    ok(produce_cmd(brokers, &topics).args(["--count", "0", "--quiet"]));
    let cfg = bronze_config_timed(&dir, "bench", brokers, &topics, 200, 1000);
    let mut producer = produce_cmd(brokers, &topics)
        .args(["--rate", &rate.to_string(), "--duration", "75s", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut job = start_job(&cfg, &dir.join("job-0.log"));
    let mut recovery_s = Vec::new();
    let mut catch_up = Vec::new();
    std::thread::sleep(Duration::from_secs(8));
    for round in 0..3 {
        // Kill and restart at once: time to the first commit of the new instance.
        let (_, generation, _) = newest_manifest(&dir, "bench").expect("the job commits");
        let killed = now_ms();
        let _ = job.kill();
        let _ = job.wait();
        job = start_job(&cfg, &dir.join(format!("job-{round}-a.log")));
        loop {
            if let Some((_, g, created)) = newest_manifest(&dir, "bench")
                && g > generation
            {
                recovery_s.push((created - killed) as f64 / 1000.0);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_secs(4));
        // A 10 s outage, then the rate at which the backlog is consumed.
        let _ = job.kill();
        let _ = job.wait();
        std::thread::sleep(Duration::from_secs(10));
        let (before, _, _) = newest_manifest(&dir, "bench").unwrap();
        let backlog_end = high_watermarks(brokers, &topics);
        let restarted = Instant::now();
        job = start_job(&cfg, &dir.join(format!("job-{round}-b.log")));
        let mut first: Option<(Instant, i64)> = None;
        loop {
            if let Some((sum, _, _)) = newest_manifest(&dir, "bench")
                && sum > before
            {
                let (t0, s0) = *first.get_or_insert((Instant::now(), sum));
                if sum >= backlog_end {
                    let secs = t0.elapsed().as_secs_f64().max(0.001);
                    catch_up.push(json!({
                        "backlog": backlog_end - before,
                        "caught_up_s": restarted.elapsed().as_secs_f64(),
                        "msg_per_s": ((sum - s0) as f64 / secs).round(),
                    }));
                    break;
                }
            }
            if restarted.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let _ = job.kill();
    let _ = job.wait();
    let _ = producer.kill();
    let _ = producer.wait();
    let rates: Vec<f64> = catch_up.iter().map(|c| c["msg_per_s"].as_f64().unwrap()).collect();
    record(
        "recovery",
        json!({
            "feed_msg_per_s": rate, "workers": 2, "commit_interval_ms": 1000,
            "recovery_s": recovery_s, "recovery_s_median": median(recovery_s.clone()),
            "catch_up": catch_up, "catch_up_msg_per_s_median": if rates.is_empty() { 0.0 } else { median(rates) },
        }),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var("K2_BENCH_QUICK").is_ok_and(|v| v == "1");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let all = args.iter().any(|a| a == "all");
    // Without arguments: the two engine-only scenarios, as before.
    let default = args.is_empty();
    let want = |s: &str| all || args.iter().any(|a| a == s);
    let brokers = broker();
    if want("checkpoint-cost") || default {
        checkpoint_cost(&brokers, 250_000);
    }
    if want("recovery") || default {
        recovery(&brokers, 20_000);
    }
    if want("scaling") {
        let section = scaling::scaling(&brokers, quick);
        std::fs::write(
            root().join("target/bench/scaling.json"),
            serde_json::to_string_pretty(&section).unwrap(),
        )
        .unwrap();
        record(
            "scaling",
            json!({"summary": section["summary"], "ratios": section["ratios"]}),
        );
    }
    if want("storage") {
        let rows = storage::storage(&brokers, quick);
        record("storage", rows);
    }
    let compare = want("compare");
    let plan = compare::Plan::new(quick);
    let mut sections = Vec::new();
    if compare || want("throughput") {
        sections.push(("throughput", compare::throughput(&brokers, &plan)));
    }
    if compare || want("latency") {
        sections.push(("latency", compare::latency(&brokers, &plan)));
    }
    if compare || want("profile") {
        sections.push(("profile", compare::profile(&brokers, &plan)));
    }
    if !sections.is_empty() {
        compare::write_results(&plan, sections);
    }
}
