//! `k2 demo`: the README's first command.
//!
//! It needs nothing done by hand: it starts the project's local Kafka broker
//! if none answers, runs the `market` dataflow (bronze + arbitrage) on 2
//! workers in a fresh local warehouse, produces a few seconds of two-exchange
//! market data (with duplicates and malformed messages) while the job runs,
//! drains the job to the produced offsets, reads the alerts back from their
//! Kafka topic, and prints what a user wants to see: the tables' rows, a few
//! alerts, and the event-to-alert latency percentiles.
//!
//! The feed's prices follow the wall clock and the two exchanges quote the
//! same path within a few bps, so the number of joined pairs grows with the
//! rate squared times Δ. The demo's defaults (a modest rate, Δ = 5 ms, low
//! fees and a 0.5 bps threshold) give tens of thousands of pairs and
//! thousands of alerts (more when the feed has a divergence episode), rather
//! than millions.

use crate::produce::{ProduceArgs, ensure_topic, produce};
use anyhow::{Context, Result, bail};
use k2::config::{Config, KafkaConfig, RunMode, StartPosition};
use k2::kafka::{Quiet, client_config};
use k2::launch::{RunOptions, RunReport, TimelyArgs};
use k2::metrics::{AlertLatency, read_topic_to_end};
use k2::stop::StopSignal;
use std::collections::{BTreeMap, HashSet};
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
    #[arg(long, default_value_t = 3_000)]
    pub rate: u64,
    /// Worker threads.
    #[arg(short = 'w', long, default_value_t = 2)]
    pub workers: usize,
    /// Kafka: a local broker is started if none answers at the brokers.
    #[command(flatten)]
    pub kafka: crate::produce::KafkaArgs,
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
        "future": r.future,
        "control": r.control,
        "partitions_added": r.partitions_added,
        "pairs": r.pairs,
        "kafka_sent": r.kafka_sent,
        "snapshots": r.snapshots,
        "rows": r.rows,
        "latency_ms": r.latency_ms.map(|(p50, p99, max)| serde_json::json!({"p50": p50, "p99": p99, "max": max})),
        "cuts_coalesced": r.cuts_coalesced,
        "commit_ms": r.commit_ms.map(|(p50, p99, max)| serde_json::json!({"p50": p50, "p99": p99, "max": max})),
        "last_epoch": r.last_epoch,
        "cpu_s": r.cpu_s,
        "peak_rss_mib": r.peak_rss_mib,
    })
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn broker_up(kafka: &KafkaConfig) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: Result<BaseConsumer<Quiet>, _> = client_config(kafka).create_with_context(Quiet);
    consumer.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
}

/// Starts the project's broker unless one answers at `kafka.brokers`.
pub fn ensure_broker(kafka: &KafkaConfig) -> Result<()> {
    if broker_up(kafka) {
        return Ok(());
    }
    let brokers = k2::secret::redact_uri(&kafka.brokers);
    eprintln!("no Kafka broker at {brokers}; starting the local one (scripts/kafka.sh start)…");
    let status = std::process::Command::new(repo_root().join("scripts/kafka.sh"))
        .arg("start")
        // It prints the bootstrap address on stdout, which is the demo's.
        .stdout(std::process::Stdio::null())
        .status()
        .context("run scripts/kafka.sh")?;
    if !status.success() || !broker_up(kafka) {
        bail!(
            "could not start a Kafka broker at {brokers}; see `scripts/kafka.sh logs` \
             (a store full of old test topics starts slowly: `scripts/kafka.sh wipe` empties it)"
        );
    }
    Ok(())
}

/// Runs the demo.
pub fn demo(args: &DemoArgs) -> Result<()> {
    let kafka = args.kafka.resolve()?;
    ensure_broker(&kafka)?;
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let dir = std::path::absolute(args.dir.join(&stamp))?;
    let mut config = Config::default();
    config.job.name = "demo".into();
    config.job.mode = RunMode::Continuous;
    config.kafka = kafka.clone();
    config.source.start = StartPosition::Latest;
    config.iceberg.warehouse = dir.join("warehouse");
    config.checkpoint.dir = dir.join("checkpoints");
    // Pairs grow with rate² × Δ: a short Δ keeps them in the tens of
    // thousands. Low (VIP-tier) fees and a small threshold let the feed's
    // ±1.5 bps trade noise produce some alerts even outside its rare
    // divergence episodes.
    let mut arbitrage = crate::arbitrage::ArbitrageConfig {
        delta_ms: 5,
        threshold_bps: 0.5,
        // A topic per run: the latency read-back covers this run's alerts only.
        alerts_topic: format!("k2.demo.{stamp}.alerts"),
        ..Default::default()
    };
    arbitrage.fees_bps.binance = 1.0;
    arbitrage.fees_bps.kraken = 1.0;
    config.set_section("arbitrage", &arbitrage)?;
    let alerts_topic = arbitrage.alerts_topic.clone();
    let topics = config.kafka.topics.clone();
    ensure_topic(&kafka, &topics.binance, 4)?;
    ensure_topic(&kafka, &topics.kraken, 4)?;

    let stop = StopSignal::default();
    let ready = Arc::new(AtomicBool::new(false));
    let options = RunOptions {
        stop: stop.clone(),
        ready: Some(ready.clone()),
        ..RunOptions::default()
    };
    let timely = TimelyArgs {
        workers: args.workers,
        ..TimelyArgs::default()
    };
    eprintln!(
        "running market (bronze + arbitrage) on {} workers; warehouse {}",
        args.workers,
        config.iceberg.warehouse.display()
    );
    let job = std::thread::spawn(move || k2::launch::run(&crate::market::MARKET, config, &timely, options));
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
    produce_args.binance_topic = topics.binance.clone();
    produce_args.kraken_topic = topics.kraken.clone();
    produce_args.rate = args.rate;
    produce_args.duration = Some(Duration::from_secs(args.seconds));
    produce_args.duplicates = 0.02;
    produce_args.malformed = 0.002;
    produce_args.quiet = true;
    // PEPE is left out: Binance's 8 price decimals are ~8 bps of its price,
    // which would make every PEPE pair look like an opportunity.
    produce_args.symbols = ["BTC", "ETH", "SOL", "XRP", "DOGE"].map(String::from).to_vec();
    // A fresh seed per run: the same seed gives the same trade ids, which a
    // second demo on the same topics would (rightly) treat as duplicates.
    produce_args.seed = chrono::Utc::now().timestamp_millis() as u64;
    eprintln!(
        "producing {} s of Binance + Kraken trades at {} msg/s…",
        args.seconds, args.rate
    );
    let produced = produce(&produce_args, &kafka)?;

    let names = [topics.binance.clone(), topics.kraken.clone()];
    let ends: BTreeMap<(u16, i32), i64> = produced
        .end_offsets
        .iter()
        .filter_map(|((t, p), o)| names.iter().position(|n| n == t).map(|i| ((i as u16, *p), *o)))
        .collect();
    stop.drain_to(ends);
    let report = job.join().expect("job thread")?;
    let alerts = read_alerts(&kafka, &alerts_topic);

    let rows = |t: &str| report.rows.get(t).copied().unwrap_or(0);
    println!();
    println!("K2 Stream demo: bronze + arbitrage on {} workers", args.workers);
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
    println!(
        "  arbitrage alerts   {:>9} rows from {} joined pairs (Δ {} ms, fees {} + {} bps, net spread > {} bps)",
        rows("arbitrage_signals"),
        report.pairs,
        arbitrage.delta_ms,
        arbitrage.fees_bps.binance,
        arbitrage.fees_bps.kraken,
        arbitrage.threshold_bps
    );
    match &alerts {
        Ok((latency, samples)) => {
            println!(
                "  event→alert        {} over {} alerts in `{alerts_topic}`",
                latency.summary(),
                latency.alerts
            );
            println!("                     (the later trade's Kafka produce time to the alert's arrival in Kafka)");
            for (i, a) in samples.iter().enumerate() {
                println!("  {:<18} {a}", if i == 0 { "widest per symbol" } else { "" });
            }
        }
        Err(e) => println!("  event→alert        could not read `{alerts_topic}`: {e}"),
    }
    println!("  warehouse          {}", dir.join("warehouse").display());
    println!(
        "  catalog            sqlite:{}  (catalog name `k2`)",
        dir.join("warehouse/catalog.db").display()
    );
    Ok(())
}

/// The alerts' latency, and the widest alert of each of a few symbols, one
/// line each.
fn read_alerts(kafka: &KafkaConfig, topic: &str) -> k2::error::Result<(AlertLatency, Vec<String>)> {
    const SAMPLES: usize = 5;
    let mut latency = AlertLatency::new();
    let mut seen = HashSet::new();
    // symbol -> (spread, line) of its widest alert.
    let mut widest: BTreeMap<String, (f64, String)> = BTreeMap::new();
    read_topic_to_end(kafka, topic, false, Duration::from_secs(30), |payload, ts| {
        if !latency.record(&mut seen, payload, ts) {
            return;
        }
        let Ok(a) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let symbol = a["symbol"].as_str().unwrap_or("?");
        let spread = a["spread_bps"].as_f64().unwrap_or(0.0);
        if widest.get(symbol).is_some_and(|(s, _)| *s >= spread) {
            return;
        }
        let dt = a["binance_event_ms"].as_i64().unwrap_or(0) - a["kraken_event_ms"].as_i64().unwrap_or(0);
        let line = format!(
            "{symbol:<9} buy {:<7} {:>10}  sell {:<7} {:>10}  {:>6.2} bps  (Binance − Kraken event time {dt:+} ms)",
            a["buy_exchange"].as_str().unwrap_or("?"),
            price(&a["buy_price"]),
            a["sell_exchange"].as_str().unwrap_or("?"),
            price(&a["sell_price"]),
            spread,
        );
        widest.insert(symbol.to_string(), (spread, line));
    })?;
    let mut lines: Vec<(f64, String)> = widest.into_values().collect();
    lines.sort_by(|x, y| y.0.total_cmp(&x.0));
    Ok((latency, lines.into_iter().take(SAMPLES).map(|(_, line)| line).collect()))
}

/// A price from the alert JSON (an f64) to at most 8 significant digits, so
/// that binary noise such as `2924.5899999999997` reads `2924.59`.
fn price(v: &serde_json::Value) -> String {
    let Some(p) = v.as_f64().filter(|p| p.is_finite() && *p > 0.0) else {
        return v.to_string();
    };
    let decimals = (7 - p.log10().floor() as i32).clamp(0, 12) as usize;
    let text = format!("{p:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}
