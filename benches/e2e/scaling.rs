//! Scaling of bronze ingest over workers and processes (issue: multi-process
//! clusters): 1 worker, 1 process × 2 workers, 2 processes × 1 worker, each
//! reading the same preloaded topic to its end with exactly-once commits, one
//! layout at a time, round-robin over repetitions. Reports messages per
//! second (over the process tree's wall time), CPU-seconds per million
//! messages summed over every process of the engine, and the broker's CPU
//! over the same span in cores.
//!
//! ```sh
//! cargo bench --bench e2e -- scaling      # K2_BENCH_MESSAGES, K2_BENCH_REPS
//! ```

use crate::common::*;
use crate::compare::env_u64;
use crate::measure::{Tracker, broker_pid};
use crate::median;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The layouts compared: name and the `k2` arguments that give it.
const LAYOUTS: [(&str, &[&str]); 3] = [
    ("1 process x 1 worker", &["run", "bronze", "-w", "1"]),
    ("1 process x 2 workers", &["run", "bronze", "-w", "2"]),
    ("2 processes x 1 worker", &["cluster", "bronze", "-n", "2", "-w", "1"]),
];

/// Messages the run read: one report, or the sum over a cluster's processes.
fn messages_of(report: &Value) -> u64 {
    match report["processes"].as_array() {
        Some(ps) => ps.iter().filter_map(|p| p["messages"].as_u64()).sum(),
        None => report["messages"].as_u64().unwrap_or(0),
    }
}

/// One bounded run of `layout`; its figures.
fn run(name: &str, args: &[&str], brokers: &str, topics: &(String, String), expected: u64) -> Value {
    let dir = temp_dir("bench-scaling");
    // The shipped defaults: 200 ms epochs, a commit every second.
    let config = bronze_config_timed(&dir, "scaling", brokers, topics, 200, 1000);
    let mut cmd = Command::new(k2_path());
    cmd.args(args)
        .arg("--bounded")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("k2.log")).unwrap());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn k2");
    let tracker = Tracker::start(&child, started, broker_pid(&root()));
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let (usage, status) = tracker.finish(child);
    let report: Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    let messages = messages_of(&report);
    let complete = status.success() && messages == expected;
    let m = messages.max(1) as f64;
    eprintln!(
        "  {name:24} {messages} msgs, {:.1} s, {:.0} msg/s, {:.2} CPU-s/M, broker {:.2} cores{}",
        usage.wall_s,
        m / usage.wall_s,
        usage.cpu_s / m * 1e6,
        usage.broker_cpu_s / usage.wall_s,
        if complete { "" } else { "  (INCOMPLETE)" }
    );
    if complete {
        let _ = std::fs::remove_dir_all(&dir);
    }
    json!({
        "layout": name, "complete": complete, "messages": messages,
        "wall_s": usage.wall_s, "msgs_per_s": m / usage.wall_s,
        "cpu_s": usage.cpu_s, "cpu_s_per_million": usage.cpu_s / m * 1e6,
        "peak_rss_mib": usage.peak_rss_mib,
        "broker_cpu_s": usage.broker_cpu_s, "broker_cores": usage.broker_cpu_s / usage.wall_s,
    })
}

/// The scaling scenario; returns its section of the results.
pub fn scaling(brokers: &str, quick: bool) -> Value {
    let messages = env_u64("K2_BENCH_MESSAGES").unwrap_or(if quick { 200_000 } else { 1_000_000 });
    let reps = env_u64("K2_BENCH_REPS").unwrap_or(3);
    let topics = topics("bench-scaling");
    ok(produce_cmd(brokers, &topics).args(["--count", "0", "--quiet"]));
    ok(produce_cmd(brokers, &topics)
        .args([
            "--exchanges",
            "binance",
            "--rate",
            "0",
            "--count",
            &messages.to_string(),
        ])
        .args(["--duplicates", "0", "--malformed", "0", "--seed", "13", "--quiet"]));
    eprintln!(
        "scaling: {messages} Binance messages, {reps} rounds over {} layouts",
        LAYOUTS.len()
    );
    let mut runs = Vec::new();
    for _ in 0..reps {
        for (name, args) in LAYOUTS {
            runs.push(run(name, args, brokers, &topics, messages));
        }
    }
    let mut summary = serde_json::Map::new();
    for (name, _) in LAYOUTS {
        let done: Vec<&Value> = runs
            .iter()
            .filter(|r| r["layout"] == name && r["complete"] == true)
            .collect();
        if done.is_empty() {
            continue;
        }
        let med = |key: &str| median(done.iter().filter_map(|r| r[key].as_f64()).collect());
        summary.insert(
            name.into(),
            json!({
                "runs": done.len(), "msgs_per_s": med("msgs_per_s").round(),
                "cpu_s_per_million": (med("cpu_s_per_million") * 100.0).round() / 100.0,
                "peak_rss_mib": med("peak_rss_mib").round(),
                "broker_cores": (med("broker_cores") * 1000.0).round() / 1000.0,
            }),
        );
    }
    let rate = |n: &str| summary.get(n).and_then(|s| s["msgs_per_s"].as_f64());
    let ratios = json!({
        "2 workers / 1 worker": rate(LAYOUTS[1].0).zip(rate(LAYOUTS[0].0)).map(|(a, b)| a / b),
        "2 processes x 1 / 1 process x 2": rate(LAYOUTS[2].0).zip(rate(LAYOUTS[1].0)).map(|(a, b)| a / b),
    });
    eprintln!(
        "scaling: {}",
        serde_json::to_string_pretty(&json!({"summary": summary, "ratios": ratios})).unwrap()
    );
    json!({"messages": messages, "runs": runs, "summary": summary, "ratios": ratios})
}
