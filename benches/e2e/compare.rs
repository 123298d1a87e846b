//! K2 side by side with the COST baseline, Apache Flink and Apache Spark, on
//! the same broker and the same data, in one run (issue #6).
//!
//! * `throughput`: one preloaded topic of Binance trades, read to its end into
//!   Iceberg with exactly-once commits by K2 (1 and 2 workers), the COST
//!   baseline (1 thread), Flink bronze and Spark bronze, one engine at a time.
//!   Per run: messages/s, CPU-seconds per million messages summed over the
//!   engine's process tree, peak RSS, and the broker's CPU over the run. A
//!   second, smaller topic gives the marginal cost (start-up excluded).
//! * `latency`: an open-loop `k2 produce` at fixed offered rates. K2
//!   arbitrage and Flink arbitrage with identical join parameters:
//!   event-to-alert p50/p99/p99.9 read back from their alert topics. K2 bronze
//!   and Spark bronze: event-to-visible-in-Iceberg from their own reports.
//! * `profile`: `perf record` of K2 bronze on 1 worker over the throughput
//!   topic; the flat profile lands in `target/bench/perf-bronze.txt`.
//!
//! Results go to `target/bench/results.json` (each scenario replaces its own
//! section); `benches/report.py` turns them into `report.md` and PNG plots.

use crate::common::{bronze_config_timed, k2, k2_path, ok, produce_cmd, root, temp_dir, topics};
use crate::measure::{Tracker, Usage, broker_pid, terminate};
use crate::{median, now_ms, record};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Sizes and rates of one invocation.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `quick` or `full`.
    pub mode: &'static str,
    /// Binance messages in the throughput topic.
    pub messages: u64,
    /// Also measure on a topic a quarter that size (marginal cost).
    pub marginal: bool,
    /// Repetitions of K2 and the baseline on the big topic.
    pub reps: usize,
    /// Repetitions of Flink and Spark on the big topic.
    pub peer_reps: usize,
    /// Offered rates of the latency runs, messages/s over both exchanges.
    pub rates: Vec<u64>,
    /// Seconds of feed per latency run.
    pub feed_s: u64,
    /// Leading seconds of feed left out of the "steady" percentiles.
    pub warmup_s: u64,
    /// Base assets of the latency feed (each against USDT).
    pub symbols: usize,
    /// Interval-join bound Δ, ms, for both engines.
    pub delta_ms: u64,
    /// Net spread threshold, bps, for both engines.
    pub threshold_bps: f64,
    /// Spark bronze processing-time trigger, ms.
    pub spark_trigger_ms: u64,
}

/// Whether `engine` is selected by `$K2_BENCH_ENGINES` (comma list; all if unset).
fn selected(engine: &str) -> bool {
    std::env::var("K2_BENCH_ENGINES").map_or(true, |v| v.split(',').any(|e| e.trim() == engine))
}

/// A `K2_BENCH_*` knob from the environment, if set and a number.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

impl Plan {
    /// The plan for `--quick` (a smoke test of a few minutes) or the full run
    /// (under about 30 minutes); `K2_BENCH_*` variables override single knobs.
    pub fn new(quick: bool) -> Plan {
        let mut p = if quick {
            Plan {
                mode: "quick",
                messages: 300_000,
                marginal: false,
                reps: 1,
                peer_reps: 1,
                rates: vec![10_000, 50_000],
                feed_s: 12,
                warmup_s: 3,
                symbols: 500,
                delta_ms: 5,
                threshold_bps: 10.0,
                spark_trigger_ms: 1000,
            }
        } else {
            Plan {
                mode: "full",
                messages: 2_000_000,
                marginal: true,
                reps: 3,
                peer_reps: 2,
                rates: vec![10_000, 50_000, 100_000],
                feed_s: 30,
                warmup_s: 5,
                symbols: 500,
                delta_ms: 5,
                threshold_bps: 10.0,
                spark_trigger_ms: 1000,
            }
        };
        if let Some(v) = env_u64("K2_BENCH_MESSAGES") {
            p.messages = v;
        }
        if let Some(v) = env_u64("K2_BENCH_REPS") {
            p.reps = v as usize;
        }
        if let Some(v) = env_u64("K2_BENCH_PEER_REPS") {
            p.peer_reps = v as usize;
        }
        if let Some(v) = env_u64("K2_BENCH_FEED_S") {
            p.feed_s = v;
        }
        if let Some(v) = env_u64("K2_BENCH_SYMBOLS") {
            p.symbols = v as usize;
        }
        if let Some(v) = env_u64("K2_BENCH_DELTA_MS") {
            p.delta_ms = v;
        }
        if let Some(v) = std::env::var("K2_BENCH_THRESHOLD_BPS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            p.threshold_bps = v;
        }
        if let Ok(v) = std::env::var("K2_BENCH_RATES") {
            p.rates = v.split(',').filter_map(|r| r.trim().parse().ok()).collect();
        }
        p
    }

    fn json(&self) -> Value {
        json!({
            "mode": self.mode, "messages": self.messages, "marginal": self.marginal, "reps": self.reps,
            "peer_reps": self.peer_reps, "rates": self.rates, "feed_s": self.feed_s, "warmup_s": self.warmup_s,
            "symbols": self.symbols, "delta_ms": self.delta_ms, "threshold_bps": self.threshold_bps,
            "fees_bps": {"binance": 2.0, "kraken": 5.0}, "out_of_orderness_ms": 2000,
            "spark_trigger_ms": self.spark_trigger_ms,
        })
    }

    fn symbol_list(&self) -> String {
        (0..self.symbols)
            .map(|i| format!("S{i:03}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

// ---------------------------------------------------------------------------
// Running engines
// ---------------------------------------------------------------------------

fn bench_dir() -> PathBuf {
    let d = root().join("target/bench");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn flink() -> Command {
    Command::new(root().join("benches/peers/flink/run.sh"))
}

fn spark() -> Command {
    Command::new(root().join("benches/peers/spark/run.sh"))
}

/// The COST baseline binary: `$K2_COST_BASELINE`, else the newest
/// `target/release/deps/cost_baseline-*` (built by `cargo bench --no-run`).
fn baseline() -> Option<Command> {
    if let Some(p) = std::env::var_os("K2_COST_BASELINE") {
        return Some(Command::new(p));
    }
    let deps = root().join("target/release/deps");
    let newest = std::fs::read_dir(deps)
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with("cost_baseline-") && !n.contains('.')
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())?;
    Some(Command::new(newest.path()))
}

/// A spawned engine, followed from its spawn.
struct Running {
    child: Child,
    tracker: Tracker,
    out: PathBuf,
    log: PathBuf,
}

fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Running {
    let out = dir.join(format!("{name}.out"));
    let log = dir.join(format!("{name}.log"));
    cmd.stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .stdin(Stdio::null());
    let started = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let tracker = Tracker::start(&child, started, broker_pid(&root()));
    Running {
        child,
        tracker,
        out,
        log,
    }
}

impl Running {
    /// Waits until `needle` shows in the log (or stdout), up to `limit`.
    fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            for f in [&self.log, &self.out] {
                if std::fs::read_to_string(f).is_ok_and(|s| s.contains(needle)) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Waits for the exit; the last JSON object line of stdout, and the usage.
    fn finish(self) -> (Value, Usage) {
        let (usage, status) = self.tracker.finish(self.child);
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let report = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok().filter(Value::is_object))
            .unwrap_or(Value::Null);
        if !status.success() && report.is_null() {
            eprintln!(
                "engine failed ({status}); log {}:\n{}",
                self.log.display(),
                tail_of(&self.log, 30)
            );
        }
        (report, usage)
    }
}

fn tail_of(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn round(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// (busy, total) jiffies of all CPUs, from `/proc/stat`.
fn cpu_jiffies() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// Cores busy over the next second (the whole machine: others' builds and
/// tests, the broker).
fn busy_cores() -> f64 {
    let (b0, t0) = cpu_jiffies();
    std::thread::sleep(Duration::from_secs(1));
    let (b1, t1) = cpu_jiffies();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    if t1 > t0 { (b1 - b0) / (t1 - t0) * cores } else { 0.0 }
}

/// Waits (up to 30 s) until the machine is quiet (under 0.4 busy cores over a
/// second), so that runs do not start on top of someone's build; returns the
/// busy cores seen last. The 1-minute load is recorded too, but it still
/// carries the previous run's work, so it does not decide.
fn settle() -> f64 {
    let t = Instant::now();
    let mut busy = busy_cores();
    while busy > 0.4 && t.elapsed() < Duration::from_secs(30) {
        busy = busy_cores();
    }
    round(busy, 2)
}

// ---------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------

/// One bounded run of `engine` over `topics.0` (Binance; `topics.1` is empty).
fn throughput_run(engine: &str, brokers: &str, topics: &(String, String), expected: u64, tag: &str) -> Value {
    let dir = temp_dir(&format!("bench-tp-{engine}-{tag}"));
    let wh = dir.join("warehouse");
    let busy_before = settle();
    let load_before = load1();
    let running = match engine {
        "k2-w1" | "k2-w2" => {
            // The shipped defaults: 200 ms epochs, a commit every second.
            let cfg = bronze_config_timed(&dir, "bench", brokers, topics, 200, 1000);
            let mut c = k2();
            c.args([
                "run",
                "bronze",
                "--bounded",
                "-w",
                if engine == "k2-w1" { "1" } else { "2" },
            ])
            .arg("--config")
            .arg(cfg);
            spawn(c, &dir, engine)
        }
        "baseline" => {
            let mut c = baseline().expect("the COST baseline binary (cargo bench --bench cost_baseline --no-run)");
            c.args(["--brokers", brokers, "--topic", &topics.0, "--warehouse"])
                .arg(&wh);
            spawn(c, &dir, engine)
        }
        "flink" => {
            let mut c = flink();
            c.args([
                "bronze",
                "--brokers",
                brokers,
                "--binance-topic",
                &topics.0,
                "--warehouse",
            ])
            .arg(&wh)
            .args(["--fresh", "--parallelism", "2", "--checkpoint-ms", "1000"])
            .arg("--log-file")
            .arg(dir.join("flink-job.log"));
            spawn(c, &dir, engine)
        }
        "spark" => {
            let mut c = spark();
            c.args([
                "bronze",
                "--brokers",
                brokers,
                "--topic",
                &topics.0,
                "--trigger",
                "available-now",
            ])
            .arg("--warehouse")
            .arg(&wh)
            .arg("--checkpoint-dir")
            .arg(dir.join("spark-checkpoint"))
            .arg("--log")
            .arg(dir.join("spark-job.log"))
            .arg("--clean");
            spawn(c, &dir, engine)
        }
        other => panic!("unknown engine {other}"),
    };
    let (report, usage) = running.finish();
    let (messages, rows, engine_wall) = match engine {
        "k2-w1" | "k2-w2" => (
            report["messages"].as_u64(),
            report["rows"]["bronze_binance_trades"].as_u64(),
            report["elapsed_s"].as_f64(),
        ),
        "baseline" => (
            report["messages"].as_u64(),
            report["rows"].as_u64(),
            report["wall_s"].as_f64(),
        ),
        _ => (
            report["messages"].as_u64(),
            report["committed_rows"].as_u64(),
            report["wall_s"].as_f64(),
        ),
    };
    let messages = messages.unwrap_or(0);
    let ok = messages == expected && rows == Some(expected);
    let m = messages.max(1) as f64;
    let out = json!({
        "engine": engine, "tag": tag, "messages": messages, "rows": rows, "complete": ok,
        "wall_s": round(usage.wall_s, 3),
        "msgs_per_s": (m / usage.wall_s).round(),
        "engine_wall_s": engine_wall.map(|w| round(w, 3)),
        "engine_msgs_per_s": engine_wall.map(|w| (m / w).round()),
        "cpu_s": round(usage.cpu_s, 2),
        "cpu_s_per_million": round(usage.cpu_s / m * 1e6, 2),
        "msgs_per_cpu_s": (m / usage.cpu_s.max(1e-3)).round(),
        "peak_rss_mib": round(usage.peak_rss_mib, 1),
        "broker_cpu_s": round(usage.broker_cpu_s, 2),
        "broker_cores": round(usage.broker_cpu_s / usage.wall_s, 3),
        "busy_cores_before": busy_before, "load1_before": load_before, "load1_after": load1(),
        "report": report,
    });
    eprintln!(
        "  {engine:9} {tag:5} {messages} msgs, {:.1} s, {:.0} msg/s, {:.2} CPU-s/M, {:.0} MiB, broker {:.1} CPU-s{}",
        usage.wall_s,
        m / usage.wall_s,
        usage.cpu_s / m * 1e6,
        usage.peak_rss_mib,
        usage.broker_cpu_s,
        if ok { "" } else { "  (INCOMPLETE)" }
    );
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    }
    out
}

fn preload_binance(brokers: &str, name: &str, count: u64) -> (String, String) {
    let topics = topics(name);
    // Both topics exist (K2 reads both); only Binance gets data.
    ok(produce_cmd(brokers, &topics).args(["--count", "0", "--quiet"]));
    let t = Instant::now();
    ok(produce_cmd(brokers, &topics)
        .args(["--exchanges", "binance", "--rate", "0", "--count", &count.to_string()])
        .args(["--duplicates", "0", "--malformed", "0", "--seed", "11", "--quiet"]));
    eprintln!(
        "  preloaded {count} Binance messages into {} in {:.1} s",
        topics.0,
        t.elapsed().as_secs_f64()
    );
    topics
}

const ENGINES: [&str; 5] = ["k2-w1", "k2-w2", "baseline", "flink", "spark"];

fn stat_of(runs: &[Value], key: &str) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
    (!v.is_empty()).then(|| median(v))
}

/// The throughput scenario; returns its section of the results.
pub fn throughput(brokers: &str, plan: &Plan) -> Value {
    eprintln!("throughput: {} Binance messages, engines one at a time", plan.messages);
    let _ = Command::new(root().join("benches/peers/flink/run.sh"))
        .arg("build")
        .status();
    let _ = Command::new(root().join("benches/peers/spark/run.sh"))
        .arg("build")
        .status();
    let big = preload_binance(brokers, "bench-tp", plan.messages);
    let small_n = plan.messages / 4;
    let small = plan
        .marginal
        .then(|| preload_binance(brokers, "bench-tp-small", small_n));
    let mut runs = Vec::new();
    // Round-robin over engines, so that drift of the machine spreads evenly.
    let max_reps = plan.reps.max(plan.peer_reps);
    for rep in 0..max_reps {
        for engine in ENGINES {
            let reps = if engine == "flink" || engine == "spark" {
                plan.peer_reps
            } else {
                plan.reps
            };
            if rep < reps && selected(engine) {
                runs.push(throughput_run(engine, brokers, &big, plan.messages, "big"));
            }
        }
    }
    if let Some(small) = &small {
        for engine in ENGINES.into_iter().filter(|e| selected(e)) {
            runs.push(throughput_run(engine, brokers, small, small_n, "small"));
        }
    }
    let mut summary = serde_json::Map::new();
    for engine in ENGINES {
        let big_runs: Vec<Value> = runs
            .iter()
            .filter(|r| r["engine"] == engine && r["tag"] == "big" && r["complete"] == true)
            .cloned()
            .collect();
        if big_runs.is_empty() {
            summary.insert(engine.into(), json!({"runs": 0}));
            continue;
        }
        let mut s = json!({
            "runs": big_runs.len(),
            "msgs_per_s": stat_of(&big_runs, "msgs_per_s"),
            "engine_msgs_per_s": stat_of(&big_runs, "engine_msgs_per_s"),
            "cpu_s": stat_of(&big_runs, "cpu_s"),
            "cpu_s_per_million": stat_of(&big_runs, "cpu_s_per_million"),
            "msgs_per_cpu_s": stat_of(&big_runs, "msgs_per_cpu_s"),
            "peak_rss_mib": stat_of(&big_runs, "peak_rss_mib"),
            "broker_cpu_s": stat_of(&big_runs, "broker_cpu_s"),
            "broker_cores": stat_of(&big_runs, "broker_cores"),
            "wall_s": stat_of(&big_runs, "wall_s"),
        });
        // Marginal cost between the small and the big topic: start-up excluded.
        if let Some(sr) = runs
            .iter()
            .find(|r| r["engine"] == engine && r["tag"] == "small" && r["complete"] == true)
        {
            let dn = (plan.messages - small_n) as f64;
            let dcpu = s["cpu_s"].as_f64().unwrap() - sr["cpu_s"].as_f64().unwrap();
            let dwall = s["wall_s"].as_f64().unwrap() - sr["wall_s"].as_f64().unwrap();
            s["marginal_cpu_s_per_million"] = json!(round(dcpu / dn * 1e6, 2));
            s["marginal_msgs_per_cpu_s"] = json!((dn / dcpu.max(1e-3)).round());
            s["marginal_msgs_per_s"] = json!((dn / dwall.max(1e-3)).round());
            s["small_cpu_s"] = sr["cpu_s"].clone();
            s["small_wall_s"] = sr["wall_s"].clone();
        }
        summary.insert(engine.into(), s);
    }
    let section = json!({
        "messages": plan.messages, "small_messages": small.as_ref().map(|_| small_n),
        "topic": big.0, "runs": runs, "summary": summary,
    });
    record("throughput", section["summary"].clone());
    section
}

// ---------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------

fn arbitrage_cfg(dir: &Path, brokers: &str, topics: &(String, String), alerts: &str, plan: &Plan) -> PathBuf {
    let path = bronze_config_timed(dir, "bench-arb", brokers, topics, 200, 1000);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[arbitrage]\ndelta_ms = {}\nthreshold_bps = {}\nalerts_topic = \"{alerts}\"\nkafka_sink = \"immediate\"\n",
        plan.delta_ms, plan.threshold_bps
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// An open-loop feed at `rate` for `plan.feed_s`; returns the producer's
/// summary line and the wall-clock ms at which it started.
fn feed(brokers: &str, topics: &(String, String), rate: u64, plan: &Plan, binance_only: bool) -> (String, i64) {
    let start = now_ms();
    let mut c = produce_cmd(brokers, topics);
    c.args(["--rate", &rate.to_string(), "--duration", &format!("{}s", plan.feed_s)])
        .args(["--duplicates", "0", "--malformed", "0", "--seed", "7"]);
    if binance_only {
        c.args(["--exchanges", "binance"]);
    } else {
        c.args(["--symbols", &plan.symbol_list()]);
    }
    let out = ok(&mut c);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("produced"))
        .unwrap_or("")
        .trim()
        .to_string();
    (line, start)
}

fn achieved_rate(summary: &str) -> Option<f64> {
    // "produced N messages (...) in T s, R msg/s"
    summary.split(", ").last()?.split_whitespace().next()?.parse().ok()
}

fn quantiles(h: &hdrhistogram::Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let mut cdf = Vec::new();
    for i in 0..=200 {
        let q = 1.0 - 0.5f64.powf(i as f64 / 20.0); // dense in the tail: up to 1 - 2^-10
        cdf.push(json!([round(q, 6), h.value_at_quantile(q)]));
    }
    cdf.push(json!([1.0, h.max()]));
    json!({
        "count": h.len(), "p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999), "max": h.max(), "mean": round(h.mean(), 2), "cdf": cdf,
    })
}

/// Every trade of `topic`, decoded by K2's decoder.
fn read_trades(brokers: &str, topic: &str, exchange: k2::record::Exchange) -> Vec<k2::record::Trade> {
    let mut trades = Vec::new();
    let mut scratch = Vec::new();
    let kafka = k2::config::KafkaConfig::plaintext(brokers);
    let read = k2::metrics::read_topic_to_end(&kafka, topic, false, Duration::from_secs(300), |payload, ts| {
        let pos = k2::record::SourcePosition {
            topic: 0,
            partition: 0,
            offset: 0,
            kafka_ts_ms: ts,
            ingest_us: 0,
        };
        scratch.clear();
        if k2::source::kafka::decode::decode(exchange, payload, &pos, &mut scratch).is_ok() {
            trades.append(&mut scratch);
        }
    });
    if let Err(e) = read {
        eprintln!("  oracle: reading {topic}: {e}");
    }
    trades
}

/// The pairs and alerts a join that drops nothing must emit on these topics,
/// by brute force with K2's `detect`. Event times in µs, as K2's join
/// compares them.
fn oracle(brokers: &str, topics: &(String, String), plan: &Plan) -> Value {
    use k2::operators::arbitrage::{Leg, detect};
    use k2::record::{Exchange, Trade};
    use std::collections::HashMap;
    let t = Instant::now();
    let params = k2::operators::ArbitrageParams {
        delta_us: plan.delta_ms * 1000,
        binance_fee_bps: 2.0,
        kraken_fee_bps: 5.0,
        threshold_bps: plan.threshold_bps,
    };
    let mut by_symbol: HashMap<String, (Vec<Trade>, Vec<Trade>)> = HashMap::new();
    for t in read_trades(brokers, &topics.0, Exchange::Binance) {
        by_symbol.entry(t.symbol.to_string()).or_default().0.push(t);
    }
    for t in read_trades(brokers, &topics.1, Exchange::Kraken) {
        by_symbol.entry(t.symbol.to_string()).or_default().1.push(t);
    }
    let delta = plan.delta_ms as i64 * 1000;
    let (mut pairs, mut alerts) = (0u64, 0u64);
    for (_, (mut b, mut k)) in by_symbol {
        b.sort_by_key(|t| t.event_us);
        k.sort_by_key(|t| t.event_us);
        let mut lo = 0;
        for bt in &b {
            let be = bt.event_us;
            while lo < k.len() && k[lo].event_us < be - delta {
                lo += 1;
            }
            for kt in k[lo..].iter().take_while(|kt| kt.event_us <= be + delta) {
                pairs += 1;
                alerts += detect(&Leg::from(bt), &Leg::from(kt), &params).is_some() as u64;
            }
        }
    }
    json!({"pairs": pairs, "alerts": alerts, "took_s": round(t.elapsed().as_secs_f64(), 1)})
}

/// Records in `topic` (sum of the partitions' high watermarks), or `None`
/// if some partition did not answer.
fn topic_size(consumer: &rdkafka::consumer::BaseConsumer, topic: &str) -> Option<i64> {
    use rdkafka::consumer::Consumer;
    let mut sum = 0;
    for p in 0..4 {
        sum += consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).ok()?.1;
    }
    Some(sum)
}

/// After the feed: waits until the alerts topic stops growing for 3 s (the
/// engine has worked off its backlog), at most `cap`; returns the seconds waited.
fn drain(brokers: &str, alerts: &str, cap: Duration) -> f64 {
    let t = Instant::now();
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    std::thread::sleep(Duration::from_secs(2));
    let (mut last, mut still) = (topic_size(&consumer, alerts), 0);
    while t.elapsed() < cap && still < 3 {
        std::thread::sleep(Duration::from_secs(1));
        let now = topic_size(&consumer, alerts);
        if now.is_none() {
            continue;
        }
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    round(t.elapsed().as_secs_f64(), 1)
}

/// Event-to-alert latency of an alerts topic: every distinct alert, and those
/// whose later trade was produced after the warm-up.
fn alert_latency(brokers: &str, topic: &str, steady_from_ms: i64) -> Value {
    #[derive(serde::Deserialize)]
    struct Times {
        produce_ms: i64,
        detected_ms: i64,
    }
    // Bounded histograms: `saturating_record` on an auto-resizing
    // `Histogram::new(3)` clamps at its initial 2047 instead of growing.
    let hist = || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 24 * 3_600_000, 3).unwrap();
    let (mut all, mut steady, mut detect) = (hist(), hist(), hist());
    let mut duplicates = 0u64;
    let mut seen = std::collections::HashSet::new();
    let kafka = k2::config::KafkaConfig::plaintext(brokers);
    let read = k2::metrics::read_topic_to_end(&kafka, topic, true, Duration::from_secs(120), |payload, ts| {
        let Some((id, lat)) = k2::metrics::alert_latency_ms(payload, ts) else {
            return;
        };
        if !seen.insert(id) {
            duplicates += 1;
            return;
        }
        all.saturating_record(lat);
        if ts - lat as i64 >= steady_from_ms {
            steady.saturating_record(lat);
        }
        // Where the time went: produce → detection (source, decode, join)
        // vs detection → arrival (the alert's produce).
        if let Ok(t) = serde_json::from_slice::<Times>(payload) {
            detect.saturating_record((t.detected_ms - t.produce_ms).max(0) as u64);
        }
    });
    if let Err(e) = read {
        return json!({"error": e.to_string()});
    }
    json!({
        "alerts": all.len(), "duplicates": duplicates,
        "all": quantiles(&all), "steady": quantiles(&steady),
        "produce_to_detect": quantiles(&detect).as_object().map(|o| {
            o.iter().filter(|(k, _)| *k != "cdf").map(|(k, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>()
        }),
    })
}

fn latency_run(engine: &str, brokers: &str, rate: u64, plan: &Plan) -> Value {
    let name = format!("bench-lat-{engine}-{rate}");
    let dir = temp_dir(&name);
    let topics = topics(&name);
    let binance_only = engine.ends_with("bronze");
    ok(produce_cmd(brokers, &topics).args(["--count", "0", "--quiet"]));
    let alerts = format!("{}.alerts", topics.0.trim_end_matches(".binance"));
    let busy_before = settle();
    let load_before = load1();
    let running = match engine {
        "k2-arbitrage" => {
            let cfg = arbitrage_cfg(&dir, brokers, &topics, &alerts, plan);
            let mut c = k2();
            let workers = std::env::var("K2_BENCH_ARB_WORKERS").unwrap_or_else(|_| "2".into());
            c.args(["run", "arbitrage", "-w", &workers, "--config"]).arg(cfg);
            spawn(c, &dir, engine)
        }
        "k2-bronze" => {
            let cfg = bronze_config_timed(&dir, "bench-lat", brokers, &topics, 200, 1000);
            let mut c = k2();
            c.args(["run", "bronze", "-w", "2", "--config"]).arg(cfg);
            spawn(c, &dir, engine)
        }
        "flink-arbitrage" => {
            let mut c = flink();
            c.args(["arbitrage", "--brokers", brokers, "--binance-topic", &topics.0])
                .args([
                    "--kraken-topic",
                    &topics.1,
                    "--alerts-topic",
                    &alerts,
                    "--alerts-partitions",
                    "4",
                ])
                .args(["--start", "earliest", "--parallelism", "2", "--checkpoint-ms", "1000"])
                .args(["--delta-ms", &plan.delta_ms.to_string()])
                .args(["--threshold-bps", &plan.threshold_bps.to_string()])
                .args([
                    "--out-of-orderness-ms",
                    "2000",
                    "--buffer-timeout-ms",
                    "1",
                    "--linger-ms",
                    "0",
                ])
                .arg("--log-file")
                .arg(dir.join("flink-job.log"));
            spawn(c, &dir, engine)
        }
        "spark-bronze" => {
            let secs = plan.feed_s + 25;
            let mut c = spark();
            c.args(["bronze", "--brokers", brokers, "--topic", &topics.0])
                .args([
                    "--trigger",
                    &plan.spark_trigger_ms.to_string(),
                    "--seconds",
                    &secs.to_string(),
                ])
                .args(["--latency-skip-s", &plan.warmup_s.to_string()])
                .arg("--warehouse")
                .arg(dir.join("warehouse"))
                .arg("--checkpoint-dir")
                .arg(dir.join("spark-checkpoint"))
                .arg("--log")
                .arg(dir.join("spark-job.log"))
                .arg("--clean");
            spawn(c, &dir, engine)
        }
        other => panic!("unknown engine {other}"),
    };
    let ready = match engine {
        "flink-arbitrage" => running.wait_for("job RUNNING", Duration::from_secs(120)),
        "spark-bronze" => {
            let spark_log = dir.join("spark-job.log");
            let t = Instant::now();
            let mut seen = false;
            while t.elapsed() < Duration::from_secs(120) && !seen {
                seen = std::fs::read_to_string(&spark_log).is_ok_and(|s| s.contains("Stream started"));
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        }
        _ => running.wait_for("source planned", Duration::from_secs(60)),
    };
    std::thread::sleep(Duration::from_secs(if engine.starts_with("spark") { 3 } else { 2 }));
    let (summary, feed_start) = feed(brokers, &topics, rate, plan, binance_only);
    let feed_end = now_ms();
    let pid = running.child.id();
    let mut drained_s = None;
    if engine == "spark-bronze" {
        // Spark stops by itself after --seconds.
    } else if engine.ends_with("arbitrage") {
        // Let a backlog drain (its alerts then count, with their real latency), then stop cleanly.
        drained_s = Some(drain(brokers, &alerts, Duration::from_secs(60)));
        terminate(pid);
    } else {
        // The last commit (a commit interval) before the stop.
        std::thread::sleep(Duration::from_secs(3));
        terminate(pid);
    }
    let (report, usage) = running.finish();
    let switches_per_s = (usage.voluntary_switches + usage.involuntary_switches) as f64 / usage.wall_s.max(1e-3);
    let feed_messages = summary.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok());
    let mut out = json!({
        "engine": engine, "offered_rate": rate, "ready": ready, "producer": summary,
        "achieved_rate": achieved_rate(&summary), "feed_messages": feed_messages,
        "feed_s": round((feed_end - feed_start) as f64 / 1000.0, 2),
        "cpu_s": round(usage.cpu_s, 2), "wall_s": round(usage.wall_s, 2),
        "peak_rss_mib": round(usage.peak_rss_mib, 1), "broker_cpu_s": round(usage.broker_cpu_s, 2),
        "voluntary_switches": usage.voluntary_switches, "involuntary_switches": usage.involuntary_switches,
        "switches_per_s": round(switches_per_s, 0),
        "peak_threads": usage.peak_threads,
        "busy_cores_before": busy_before, "load1_before": load_before, "load1_after": load1(),
        "drained_s": drained_s, "report": report,
    });
    if engine.ends_with("arbitrage") {
        out["alert_latency"] = alert_latency(brokers, &alerts, feed_start + plan.warmup_s as i64 * 1000);
        out["oracle"] = oracle(brokers, &topics, plan);
        let expected = out["oracle"]["alerts"].as_u64();
        let got = out["alert_latency"]["alerts"].as_u64().unwrap_or(0);
        out["expected_alerts"] = json!(expected);
        out["complete_pct"] = json!(expected.map(|e| round(got as f64 * 100.0 / e.max(1) as f64, 2)));
        let a = &out["alert_latency"];
        eprintln!(
            "  {engine:16} {rate:>6}/s: {got} of {} alerts, p50 {} p99 {} p99.9 {} max {} ms (steady p99 {}, \
             produce-to-detect p50 {} p99 {}), drained {:?} s; {} threads, {:.0} context switches/s \
             ({} voluntary, {} involuntary)",
            expected.unwrap_or(0),
            a["all"]["p50"],
            a["all"]["p99"],
            a["all"]["p999"],
            a["all"]["max"],
            a["steady"]["p99"],
            a["produce_to_detect"]["p50"],
            a["produce_to_detect"]["p99"],
            drained_s,
            usage.peak_threads,
            switches_per_s,
            usage.voluntary_switches,
            usage.involuntary_switches,
        );
    } else {
        let l = &out["report"]["latency_ms"];
        eprintln!(
            "  {engine:16} {rate:>6}/s: visible p50 {} p99 {} max {} ms (steady {})",
            l["p50"], l["p99"], l["max"], l["steady"]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The latency scenario; returns its section of the results.
pub fn latency(brokers: &str, plan: &Plan) -> Value {
    eprintln!(
        "latency: rates {:?}, {} s each, {} symbols, delta {} ms, threshold {} bps",
        plan.rates, plan.feed_s, plan.symbols, plan.delta_ms, plan.threshold_bps
    );
    let _ = Command::new(root().join("benches/peers/flink/run.sh"))
        .arg("build")
        .status();
    let _ = Command::new(root().join("benches/peers/spark/run.sh"))
        .arg("build")
        .status();
    let mut runs = Vec::new();
    for &rate in &plan.rates {
        for engine in ["k2-arbitrage", "flink-arbitrage", "k2-bronze", "spark-bronze"] {
            if !selected(engine) {
                continue;
            }
            runs.push(latency_run(engine, brokers, rate, plan));
        }
    }
    let section = json!({"runs": runs});
    let brief: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({"engine": r["engine"], "rate": r["offered_rate"],
                   "alert_p99": r["alert_latency"]["all"]["p99"], "visible_p99": r["report"]["latency_ms"]["p99"]})
        })
        .collect();
    record("latency", json!(brief));
    section
}

// ---------------------------------------------------------------------------
// Profile
// ---------------------------------------------------------------------------

/// The flat profile of a `perf record` file: by shared object and by symbol.
fn perf_report(data: &Path) -> String {
    let mut text = String::new();
    for (title, sort) in [("by shared object", "dso"), ("by symbol", "dso,sym")] {
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--percent-limit",
                "0.8",
                "-g",
                "none",
            ])
            .args(["--sort", sort, "-i"])
            .arg(data)
            .output()
            .expect("perf report");
        text.push_str(&format!("## {title}\n\n"));
        for l in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
        {
            // Without the empty IPC columns perf appends.
            text.push_str(l.trim_end().trim_end_matches(['-', ' ']));
            text.push('\n');
        }
        text.push('\n');
    }
    text
}

/// The top lines of a flat profile, for the results file.
fn top_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()) && l.contains('%'))
        .take(45)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// `perf record` of K2 bronze on 1 worker over a preloaded topic, and of K2
/// arbitrage on 2 workers under a live feed at the middle offered rate; the
/// flat profiles go to `target/bench/perf-bronze.txt` and `perf-arbitrage.txt`.
pub fn profile(brokers: &str, plan: &Plan) -> Value {
    let n = plan.messages.min(1_000_000);
    let topics = preload_binance(brokers, "bench-prof", n);
    let dir = temp_dir("bench-prof");
    let cfg = bronze_config_timed(&dir, "bench", brokers, &topics, 200, 1000);
    let data = bench_dir().join("perf-bronze.data");
    settle();
    let status = Command::new("perf")
        .args(["record", "-F", "999", "-g", "-o"])
        .arg(&data)
        .arg("--")
        .arg(k2_path())
        .args(["run", "bronze", "--bounded", "-w", "1", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("perf.log")).unwrap())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        return json!({"error": "perf record failed (is perf allowed here?)"});
    }
    let bronze = perf_report(&data);
    std::fs::write(bench_dir().join("perf-bronze.txt"), &bronze).unwrap();

    // Arbitrage under a live feed.
    let rate = plan.rates.get(plan.rates.len() / 2).copied().unwrap_or(50_000);
    let topics = crate::common::topics("bench-prof-arb");
    ok(produce_cmd(brokers, &topics).args(["--count", "0", "--quiet"]));
    let alerts = format!("{}.alerts", topics.0.trim_end_matches(".binance"));
    let cfg = arbitrage_cfg(&dir, brokers, &topics, &alerts, plan);
    let data = bench_dir().join("perf-arbitrage.data");
    settle();
    let mut perf = Command::new("perf");
    perf.args(["record", "-F", "499", "-g", "-o"])
        .arg(&data)
        .arg("--")
        .arg(k2_path())
        .args(["run", "arbitrage", "-w", "2", "--config"])
        .arg(&cfg);
    let running = spawn(perf, &dir, "perf-arbitrage");
    running.wait_for("source planned", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let (summary, _) = feed(brokers, &topics, rate, plan, false);
    std::thread::sleep(Duration::from_secs(3));
    // Stop k2 (perf's child); perf then writes its file and exits.
    let perf_pid = running.child.id();
    for pid in crate::measure::tree(perf_pid).into_iter().filter(|&p| p != perf_pid) {
        terminate(pid);
    }
    let (report, usage) = running.finish();
    let arbitrage = perf_report(&data);
    std::fs::write(bench_dir().join("perf-arbitrage.txt"), &arbitrage).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    json!({
        "bronze": {"messages": n, "workers": 1, "file": "target/bench/perf-bronze.txt", "top": top_lines(&bronze)},
        "arbitrage": {"offered_rate": rate, "producer": summary, "workers": 2, "cpu_s": round(usage.cpu_s, 2),
                      "wall_s": round(usage.wall_s, 2), "report": report,
                      "file": "target/bench/perf-arbitrage.txt", "top": top_lines(&arbitrage)},
    })
}

// ---------------------------------------------------------------------------
// Results file
// ---------------------------------------------------------------------------

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| round(kib / 1024.0 / 1024.0, 1));
    let cmd = |c: &str, a: &[&str]| {
        Command::new(c).args(a).output().ok().map(|o| {
            let s = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&s).lines().next().unwrap_or("").to_string()
        })
    };
    json!({
        "cpu": model, "cores": cores, "mem_gib": mem, "kernel": cmd("uname", &["-r"]),
        "java": cmd("java", &["-version"]), "rustc": cmd("rustc", &["--version"]),
        "commit": cmd("git", &["-C", root().to_str().unwrap(), "rev-parse", "--short", "HEAD"]),
        "kafka": "4.4 (scripts/kafka.sh, single node KRaft, 127.0.0.1:9092)",
    })
}

/// Replaces `sections` in `target/bench/results.json` and stamps the file.
pub fn write_results(plan: &Plan, sections: Vec<(&str, Value)>) {
    let path = bench_dir().join("results.json");
    let mut doc: Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    doc["plan"] = plan.json();
    doc["machine"] = machine();
    doc["written_ms"] = json!(now_ms());
    for (k, v) in sections {
        doc[k] = v;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    eprintln!("results: {}", path.display());
}
