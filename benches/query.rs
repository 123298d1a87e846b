//! Latency of `k2::query` with the bronze job running at 10k msg/s.
//!
//! ```sh
//! cargo bench --bench query                                  # 36M preloaded trades (about 10 min)
//! K2_QUERY_BENCH_PRELOAD=3600000 cargo bench --bench query   # fewer, faster
//! ```
//!
//! 1. Preloads "an hour" of Binance trades (`K2_QUERY_BENCH_PRELOAD`, default
//!    36,000,000 = one hour at 10k msg/s, fewer if half the free disk cannot
//!    hold them, which it says) at full speed into fresh topics, and
//!    ingests them with a bounded bronze run: the history. Their event times
//!    are the wall clock of the preload, so all lie within the last hour.
//! 2. Starts a feed at 10k msg/s (Binance, 2 % duplicates) and the
//!    continuous bronze job (1 worker, commits every second): the tail.
//! 3. Measures, through one long-lived [`k2::query::Query`] as a service would
//!    embed it:
//!    * tail-only "last price per symbol";
//!    * hybrid "trades of the last hour": count and VWAP per symbol;
//!    * the same over the history alone (what the tail adds);
//! 4. and the same hour query in DuckDB over the snapshot's Parquet files
//!    (history only: DuckDB has no Kafka tail), if the project venv has it
//!    (`benches/requirements.txt`).
//!
//! Prints a table and appends the figures to `target/bench/query.jsonl`.
//! Nothing asserts a target. The topics are deleted at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use common::job::*;
use common::*;
use futures::StreamExt;
use k2::query::{Mode, Query, QueryOptions};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SYMBOLS: &str = "BTC,ETH,SOL,DOGE,PEPE,XRP,ADA,AVAX,DOT,LINK,LTC,BCH,TRX,ATOM,UNI,NEAR,APT,ARB,OP,FIL";

const LAST_PRICE: &str = "SELECT symbol, last_value(price ORDER BY event_time, trade_id) AS price, \
     max(event_time) AS at FROM bronze_binance_trades GROUP BY symbol";

const LAST_HOUR: &str = "SELECT symbol, count(*) AS trades, \
     sum(CAST(price AS DOUBLE) * CAST(quantity AS DOUBLE)) / sum(CAST(quantity AS DOUBLE)) AS vwap \
     FROM bronze_binance_trades WHERE event_time >= now() - INTERVAL '1 hour' GROUP BY symbol";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// p-th percentile (nearest rank) of `v`, ms.
fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[i.clamp(1, v.len()) - 1]
}

fn summary(mut v: Vec<f64>) -> Value {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    json!({
        "n": v.len(),
        "p50_ms": (pct(&mut v, 50.0) * 10.0).round() / 10.0,
        "p99_ms": (pct(&mut v, 99.0) * 10.0).round() / 10.0,
        "max_ms": (pct(&mut v, 100.0) * 10.0).round() / 10.0,
        "mean_ms": (mean * 10.0).round() / 10.0,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

/// Runs `sql` `n` times with `options`, `pause` apart; latencies in ms, and
/// the answers' mean tail rows and history snapshot ids seen.
fn measure(
    rt: &tokio::runtime::Runtime,
    q: &Query,
    sql: &str,
    options: &QueryOptions,
    n: usize,
    pause: Duration,
) -> (Vec<f64>, Value) {
    let mut lat = Vec::with_capacity(n);
    let (mut tail_rows, mut tail_msgs, mut rows) = (0u64, 0u64, 0usize);
    let mut stages = [0.0f64; 5];
    let mut snapshots = std::collections::BTreeSet::new();
    for _ in 0..n {
        let t = Instant::now();
        let a = rt
            .block_on(q.sql_with(sql, options))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        rows = a.rows();
        let t = &a.seam.timings;
        for (sum, v) in stages
            .iter_mut()
            .zip([t.plan_ms, t.watermarks_ms, t.tail_ms, t.seam_ms, t.execute_ms])
        {
            *sum += v;
        }
        for s in &a.seam.tables {
            snapshots.extend(s.snapshot_id);
            if let Some(tail) = &s.tail {
                tail_rows += tail.rows;
                tail_msgs += tail.messages;
            }
        }
        std::thread::sleep(pause);
    }
    let nf = n as f64;
    (
        lat,
        json!({
            "answer_rows": rows,
            "mean_tail_messages": (tail_msgs as f64 / nf).round(),
            "mean_tail_rows": (tail_rows as f64 / nf).round(),
            "mean_stage_ms": {
                "plan": (stages[0] / nf * 10.0).round() / 10.0,
                "watermarks": (stages[1] / nf * 10.0).round() / 10.0,
                "tail": (stages[2] / nf * 10.0).round() / 10.0,
                "seam": (stages[3] / nf * 10.0).round() / 10.0,
                "execute": (stages[4] / nf * 10.0).round() / 10.0,
            },
            "snapshots_seen": snapshots.len(),
        }),
    )
}

fn start_feed(brokers: &str, topics: &(String, String), rate: u64, secs: u64, log: &Path) -> Child {
    produce_cmd(brokers, topics)
        .args([
            "--exchanges",
            "binance",
            "--rate",
            &rate.to_string(),
            "--duration",
            &format!("{secs}s"),
        ])
        .args([
            "--duplicates",
            "0.02",
            "--malformed",
            "0",
            "--seed",
            "2",
            "--symbols",
            SYMBOLS,
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The Parquet files of the table's current snapshot.
async fn data_files(q_config: &k2::config::Config, table: &str) -> Vec<String> {
    let catalog = k2::sink::iceberg::JobCatalog::open(&q_config.iceberg, &q_config.s3)
        .await
        .unwrap();
    let t = catalog.load(table).await.unwrap();
    let mut tasks = t.scan().select_empty().build().unwrap().plan_files().await.unwrap();
    let mut files = Vec::new();
    while let Some(task) = tasks.next().await {
        let path = task.unwrap().data_file_path;
        files.push(path.strip_prefix("file://").unwrap_or(&path).to_string());
    }
    files
}

fn main() {
    // `cargo bench` passes `--bench`; no other arguments are taken.
    let wanted = env_u64("K2_QUERY_BENCH_PRELOAD", 36_000_000);
    // Kafka keeps ~250 B per message, the warehouse ~30 B per row, and the
    // live feed adds a few minutes at `rate`: take what fits in half of the
    // free disk (the machine is shared), and say so.
    let free = free_bytes(&root());
    let fits = (free / 2 / BYTES_PER_MESSAGE).saturating_sub(1_500_000);
    let preload = wanted.min(fits);
    if preload < wanted {
        eprintln!(
            "only {:.1} GB free: preloading {preload} trades instead of {wanted}",
            free as f64 / 1e9
        );
    }
    let rate = env_u64("K2_QUERY_BENCH_RATE", 10_000);
    let tail_n = env_u64("K2_QUERY_BENCH_TAIL_QUERIES", 300) as usize;
    let hour_n = env_u64("K2_QUERY_BENCH_HOUR_QUERIES", 30) as usize;
    let brokers = broker();
    let topics = topics("query-bench");
    let dir = temp_dir("query-bench");
    let config_path = bronze_config_timed(&dir, "qbench", &brokers, &topics, 200, 1000);
    let config = k2::config::Config::load(&config_path).unwrap();

    // 1. The history.
    eprintln!("preloading {preload} Binance trades ...");
    let t = Instant::now();
    create_feed_topics(&brokers, &topics);
    ok(produce_cmd(&brokers, &topics)
        .args(["--exchanges", "binance", "--rate", "0", "--count", &preload.to_string()])
        .args([
            "--duplicates",
            "0",
            "--malformed",
            "0",
            "--seed",
            "1",
            "--symbols",
            SYMBOLS,
            "--quiet",
        ]));
    let produce_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = ok(k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(&config_path));
    let ingest_s = t.elapsed().as_secs_f64();
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let history_rows = report["rows"]["bronze_binance_trades"].as_u64().unwrap_or(0);
    let warehouse_bytes = du(&dir.join("warehouse"));
    eprintln!(
        "preloaded in {produce_s:.0} s, ingested in {ingest_s:.0} s: {history_rows} rows, {:.2} GB of warehouse",
        warehouse_bytes as f64 / 1e9
    );

    // 2. The live feed and the continuous job.
    // Outlasts the measurements; stopped after them.
    let mut feed = start_feed(&brokers, &topics, rate, 3600, &dir.join("feed.log"));
    let log = dir.join("job.log");
    let job = spawn_job(&config_path, "bronze", 1, &log);
    std::thread::sleep(Duration::from_secs(8));

    // 3. The queries, through one long-lived Query.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let q = rt.block_on(Query::open(&config)).unwrap();
    let tail = QueryOptions {
        mode: Mode::Tail,
        ..QueryOptions::default()
    };
    let hybrid = QueryOptions::default();
    let history = QueryOptions {
        mode: Mode::History,
        ..QueryOptions::default()
    };
    // Warm up: the consumer, the catalog, the page cache.
    for o in [&tail, &hybrid, &history] {
        rt.block_on(q.sql_with(LAST_HOUR, o)).unwrap();
    }
    let load_before = load_average();
    let (tail_lat, tail_info) = measure(&rt, &q, LAST_PRICE, &tail, tail_n, Duration::from_millis(30));
    let (hour_lat, hour_info) = measure(&rt, &q, LAST_HOUR, &hybrid, hour_n, Duration::from_millis(200));
    let (hist_lat, hist_info) = measure(
        &rt,
        &q,
        LAST_HOUR,
        &history,
        hour_n.div_ceil(2),
        Duration::from_millis(200),
    );
    let load_after = load_average();
    let last = rt.block_on(q.sql(LAST_HOUR)).unwrap();
    let hour_trades: i64 = last
        .batches
        .iter()
        .map(|b| {
            use arrow_array::cast::AsArray;
            b.column(1)
                .as_primitive::<arrow_array::types::Int64Type>()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum();
    let stopped = stop_job(job, &log);
    let _ = feed.kill();
    let _ = feed.wait();

    // 4. DuckDB over the same files.
    let files = rt.block_on(data_files(&config, "bronze_binance_trades"));
    let list = dir.join("files.json");
    std::fs::write(&list, serde_json::to_string(&files).unwrap()).unwrap();
    let duck = Command::new(python())
        .arg(root().join("benches/query_duckdb.py"))
        .arg(&list)
        .arg(hour_n.to_string())
        .output()
        .map(|o| {
            serde_json::from_slice::<Value>(&o.stdout).unwrap_or_else(
                |_| json!({"error": String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string()}),
            )
        })
        .unwrap_or_else(|e| json!({"error": e.to_string()}));

    let figures = json!({
        "preloaded_trades": preload,
        "preload_wanted": wanted,
        "free_disk_gb_at_start": (free as f64 / 1e7).round() / 100.0,
        "history_rows": history_rows,
        "hour_trades_counted": hour_trades,
        "warehouse_gb": (warehouse_bytes as f64 / 1e7).round() / 100.0,
        "data_files": files.len(),
        "produce_s": produce_s.round(),
        "ingest_s": ingest_s.round(),
        "live_rate_msg_s": rate,
        "live_job": {"snapshots": stopped["snapshots"], "messages": stopped["messages"]},
        "tail_last_price": {"latency": summary(tail_lat), "info": tail_info},
        "hybrid_last_hour": {"latency": summary(hour_lat), "info": hour_info},
        "history_last_hour": {"latency": summary(hist_lat), "info": hist_info},
        "duckdb_last_hour": duck,
        "load_average": {"before": load_before.trim(), "after": load_after.trim()},
    });
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let line = json!({"scenario": "query", "at_ms": now_ms(), "figures": figures});
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("query.jsonl"))
        .unwrap();
    use std::io::Write;
    writeln!(f, "{line}").unwrap();
    println!("{}", serde_json::to_string_pretty(&figures).unwrap());
    println!(
        "\n| query | mode | p50 ms | p99 ms | max ms | n |\n| --- | --- | --- | --- | --- | --- |\n\
         | last price per symbol | tail | {} | {} | {} | {} |\n\
         | trades of the last hour (count, VWAP) | hybrid | {} | {} | {} | {} |\n\
         | trades of the last hour (count, VWAP) | history | {} | {} | {} | {} |\n\
         | trades of the last hour (count, VWAP) | DuckDB, same files | {} | {} | {} | {} |",
        figures["tail_last_price"]["latency"]["p50_ms"],
        figures["tail_last_price"]["latency"]["p99_ms"],
        figures["tail_last_price"]["latency"]["max_ms"],
        figures["tail_last_price"]["latency"]["n"],
        figures["hybrid_last_hour"]["latency"]["p50_ms"],
        figures["hybrid_last_hour"]["latency"]["p99_ms"],
        figures["hybrid_last_hour"]["latency"]["max_ms"],
        figures["hybrid_last_hour"]["latency"]["n"],
        figures["history_last_hour"]["latency"]["p50_ms"],
        figures["history_last_hour"]["latency"]["p99_ms"],
        figures["history_last_hour"]["latency"]["max_ms"],
        figures["history_last_hour"]["latency"]["n"],
        duck["p50_ms"],
        duck["p99_ms"],
        duck["max_ms"],
        duck["n"],
    );
    for t in [&topics.0, &topics.1] {
        delete_topic(&brokers, t);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Disk per preloaded message, Kafka and warehouse, with a margin.
const BYTES_PER_MESSAGE: u64 = 300;

/// Free bytes on the file system of `path` (`df`).
fn free_bytes(path: &Path) -> u64 {
    Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().nth(1)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes under `path`.
fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += if m.is_dir() { du(&e.path()) } else { m.len() };
        }
    }
    total
}
