//! `k2 demo`: the README's first command.
//!
//! It needs nothing done by hand: it starts the project's local Kafka broker
//! if none answers, runs the bronze dataflow on 2 workers in a fresh local
//! warehouse, produces a few seconds of two-exchange market data (with
//! duplicates and malformed messages) while the job runs, drains the job to
//! the produced offsets, and prints what a user wants to see.

use crate::produce::{ProduceArgs, ensure_topic, produce};
use anyhow::{Context, Result, bail};
use k2::config::{Config, RunMode, StartPosition};
use k2::launch::{RunOptions, RunReport, TimelyArgs};
use k2::source::kafka::StopSignal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Flags of `k2 demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Seconds of market data to produce.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Messages per second, both exchanges together.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Worker threads.
    #[arg(short = 'w', long, default_value_t = 2)]
    pub workers: usize,
    /// Kafka bootstrap servers; a local broker is started if none answers.
    #[arg(long, default_value = "127.0.0.1:9092", env = "K2_BROKERS")]
    pub brokers: String,
    /// Where the demo's warehouse goes (a fresh folder per run inside).
    #[arg(long, default_value = ".k2/demo")]
    pub dir: PathBuf,
}

/// The report of a run as JSON, for scripts.
pub fn report_json(r: &RunReport) -> serde_json::Value {
    serde_json::json!({
        "elapsed_s": r.elapsed.as_secs_f64(),
        "messages": r.messages,
        "trades": r.trades,
        "dead_letters": r.dead_letters,
        "duplicates_removed": r.duplicates,
        "late": r.late,
        "pairs": r.pairs,
        "kafka_sent": r.kafka_sent,
        "snapshots": r.snapshots,
        "rows": r.rows,
        "latency_ms": r.latency_ms.map(|(p50, p99, max)| serde_json::json!({"p50": p50, "p99": p99, "max": max})),
        "last_epoch": r.last_epoch,
        "cpu_s": r.cpu_s,
        "peak_rss_mib": r.peak_rss_mib,
    })
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn broker_up(brokers: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: Result<BaseConsumer, _> = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create();
    consumer.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
}

/// Starts the project's broker unless one answers at `brokers`.
pub fn ensure_broker(brokers: &str) -> Result<()> {
    if broker_up(brokers) {
        return Ok(());
    }
    eprintln!("no Kafka broker at {brokers}; starting the local one (scripts/kafka.sh start)…");
    let status = std::process::Command::new(repo_root().join("scripts/kafka.sh"))
        .arg("start")
        .status()
        .context("run scripts/kafka.sh")?;
    if !status.success() || !broker_up(brokers) {
        bail!("could not start a Kafka broker at {brokers}; see `scripts/kafka.sh logs`");
    }
    Ok(())
}

/// Runs the demo.
pub fn demo(args: &DemoArgs) -> Result<()> {
    ensure_broker(&args.brokers)?;
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let dir = std::path::absolute(args.dir.join(&stamp))?;
    let mut config = Config::default();
    config.job.name = "demo".into();
    config.job.mode = RunMode::Continuous;
    config.kafka.brokers = args.brokers.clone();
    config.source.start = StartPosition::Latest;
    config.iceberg.warehouse = dir.join("warehouse");
    config.checkpoint.dir = dir.join("checkpoints");
    let topics = config.kafka.topics.clone();
    ensure_topic(&args.brokers, &topics.binance, 4)?;
    ensure_topic(&args.brokers, &topics.kraken, 4)?;

    let stop = StopSignal::default();
    let ready = Arc::new(AtomicBool::new(false));
    let options = RunOptions {
        stop: stop.clone(),
        ready: Some(ready.clone()),
        reset: None,
    };
    let timely = TimelyArgs {
        workers: args.workers,
        ..TimelyArgs::default()
    };
    eprintln!(
        "running bronze on {} workers; warehouse {}",
        args.workers,
        config.iceberg.warehouse.display()
    );
    let job = std::thread::spawn(move || k2::launch::run(&crate::bronze::BRONZE, config, &timely, options));
    while !ready.load(Ordering::SeqCst) {
        if job.is_finished() {
            return Err(job
                .join()
                .expect("job thread")
                .err()
                .map(anyhow::Error::from)
                .unwrap_or_else(|| anyhow::anyhow!("job ended early")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut produce_args = ProduceArgs::defaults();
    produce_args.brokers = args.brokers.clone();
    produce_args.rate = args.rate;
    produce_args.duration = Some(Duration::from_secs(args.seconds));
    produce_args.duplicates = 0.02;
    produce_args.malformed = 0.002;
    produce_args.quiet = true;
    // A fresh seed per run: the same seed gives the same trade ids, which a
    // second demo on the same topics would (rightly) treat as duplicates.
    produce_args.seed = chrono::Utc::now().timestamp_millis() as u64;
    eprintln!(
        "producing {} s of Binance + Kraken trades at {} msg/s…",
        args.seconds, args.rate
    );
    let produced = produce(&produce_args)?;

    let names = [topics.binance.clone(), topics.kraken.clone()];
    let ends: BTreeMap<(u16, i32), i64> = produced
        .end_offsets
        .iter()
        .filter_map(|((t, p), o)| names.iter().position(|n| n == t).map(|i| ((i as u16, *p), *o)))
        .collect();
    stop.drain_to(ends);
    let report = job.join().expect("job thread")?;

    let rows = |t: &str| report.rows.get(t).copied().unwrap_or(0);
    println!();
    println!("K2 Stream demo: bronze on {} workers", args.workers);
    println!(
        "  produced           {:>9} messages ({} duplicates, {} malformed) at {:.0} msg/s",
        produced.delivered,
        produced.duplicates,
        produced.malformed,
        produced.delivered as f64 / produced.elapsed.as_secs_f64()
    );
    println!(
        "  read               {:>9} messages, {} trades",
        report.messages, report.trades
    );
    println!("  bronze_binance     {:>9} rows", rows("bronze_binance_trades"));
    println!("  bronze_kraken      {:>9} rows", rows("bronze_kraken_trades"));
    println!("  duplicates removed {:>9}", report.duplicates);
    println!(
        "  dead letters       {:>9} rows (reasons in market_data.dead_letters)",
        rows("dead_letters")
    );
    println!(
        "  snapshots          {:>9} committed, last epoch {}",
        report.snapshots,
        report.last_epoch.map(|e| e.to_string()).unwrap_or("-".into())
    );
    println!(
        "  throughput         {:>9.0} msg/s over the run ({:.1} s)",
        report.messages as f64 / report.elapsed.as_secs_f64(),
        report.elapsed.as_secs_f64()
    );
    if let Some((p50, p99, max)) = report.latency_ms {
        println!("  produce→visible    p50 {p50} ms, p99 {p99} ms, max {max} ms (Kafka timestamp to Iceberg commit)");
    }
    println!("  warehouse          {}", dir.join("warehouse").display());
    println!(
        "  catalog            sqlite:{}  (catalog name `k2`)",
        dir.join("warehouse/catalog.db").display()
    );
    Ok(())
}
