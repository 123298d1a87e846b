//! `k2 produce`: a deterministic two-exchange trade feed into Kafka.
//!
//! Messages come from [`crate::feed`], the generator shared with the tests and
//! the benchmarks. The producer is idempotent (`enable.idempotence`), so the
//! only duplicates in the topics are the ones the feed sends on purpose. With
//! `--truth`, every delivered message is written as a JSON line (topic,
//! partition, offset, kind, message ids): the ground truth the tests check
//! the tables against.

use crate::feed::{Feed, FeedConfig, MessageKind};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use k2::config::KafkaConfig;
use k2::kafka::{Quiet, client_config};
use k2::record::Exchange;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where `k2 produce` and `k2 demo` find Kafka, and how they log in.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers [default: the config's `kafka.brokers`, else 127.0.0.1:9092].
    #[arg(long, env = "K2_BROKERS")]
    pub brokers: Option<String>,
    /// A job config (TOML) whose `[kafka]` table says how to reach the
    /// brokers: `[kafka.security]` (TLS, SASL; secrets from the environment
    /// or a file), the `kafka.client` passthrough, `replication_factor` of
    /// the topics created, `connect_timeout_ms`.
    #[arg(long = "config", short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl KafkaArgs {
    /// The Kafka settings: the config's `[kafka]` table (or the defaults),
    /// with `--brokers` over its brokers.
    pub fn resolve(&self) -> Result<KafkaConfig> {
        let mut kafka = match &self.config {
            Some(path) => k2::config::Config::load(path)?.kafka,
            None => KafkaConfig::default(),
        };
        if let Some(brokers) = &self.brokers {
            kafka.brokers = brokers.clone();
        }
        kafka.validate()?;
        Ok(kafka)
    }
}

/// Flags of `k2 produce`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic for Binance trade events.
    #[arg(long, default_value = "market.crypto.trades.binance")]
    pub binance_topic: String,
    /// Topic for Kraken trade messages.
    #[arg(long, default_value = "market.crypto.trades.kraken")]
    pub kraken_topic: String,
    /// Which exchanges to produce, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "binance,kraken")]
    pub exchanges: Vec<Exchange>,
    /// Partitions of topics that do not exist yet.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Messages per second over all exchanges; 0 is as fast as possible.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Messages per exchange (ignored with --duration).
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Produce for this long instead, e.g. `10s`, `2m`.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Base assets; each trades against `--quote`.
    #[arg(long, value_delimiter = ',', default_value = "BTC,ETH,SOL,DOGE,PEPE")]
    pub symbols: Vec<String>,
    /// Quote asset.
    #[arg(long, default_value = "USDT")]
    pub quote: String,
    /// Fraction of deliberate duplicates (re-sent messages).
    #[arg(long, default_value_t = 0.02)]
    pub duplicates: f64,
    /// Fraction of malformed messages.
    #[arg(long, default_value_t = 0.005)]
    pub malformed: f64,
    /// Bound on out-of-order event times, ms.
    #[arg(long, default_value_t = 500)]
    pub out_of_order_ms: i64,
    /// Seed: the same seed gives the same messages.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Event times from a synthetic clock starting here (ms since the Unix
    /// epoch) and advancing 1 ms per message, instead of the wall clock: the
    /// output is then identical run after run.
    #[arg(long)]
    pub event_start_ms: Option<i64>,
    /// Write the ground truth, one JSON line per delivered message.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Replay raw messages from a file, one per line, into `--topic`.
    #[arg(long, requires = "topic")]
    pub from_file: Option<PathBuf>,
    /// Target topic of `--from-file`.
    #[arg(long)]
    pub topic: Option<String>,
    /// Do not print the summary.
    #[arg(long)]
    pub quiet: bool,
}

impl ProduceArgs {
    /// Defaults, as the command line would give them.
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ProduceArgs,
        }
        Wrapper::parse_from(["produce"]).args
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 10s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// What was produced.
#[derive(Debug, Default)]
pub struct ProduceSummary {
    /// Messages delivered.
    pub delivered: u64,
    /// Messages that failed for good.
    pub failed: u64,
    /// Of which deliberate duplicates / malformed.
    pub duplicates: u64,
    /// Malformed messages.
    pub malformed: u64,
    /// Next offset per `(topic, partition)` after the run.
    pub end_offsets: BTreeMap<(String, i32), i64>,
    /// Wall time.
    pub elapsed: Duration,
}

#[derive(Serialize)]
struct Truth<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    kind: &'static str,
    message_ids: &'a [String],
}

struct Pending {
    topic: usize,
    kind: &'static str,
    ids: Vec<String>,
}

struct Ctx {
    topics: Vec<String>,
    pending: Mutex<BTreeMap<usize, Pending>>,
    truth: Option<Mutex<BufWriter<std::fs::File>>>,
    ends: Mutex<BTreeMap<(String, i32), i64>>,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// Logs and errors as every K2 client reports them (rate-limited; a failed
/// login remembered, see `k2::kafka`).
impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        Quiet.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        Quiet.error(error, reason);
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, id: usize) {
        let pending = self.pending.lock().expect("pending").remove(&id);
        match result {
            Ok(m) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                let topic = m.topic().to_string();
                let mut ends = self.ends.lock().expect("ends");
                let e = ends.entry((topic.clone(), m.partition())).or_insert(0);
                *e = (*e).max(m.offset() + 1);
                if let (Some(truth), Some(p)) = (&self.truth, pending) {
                    let line = Truth {
                        topic: &self.topics[p.topic],
                        partition: m.partition(),
                        offset: m.offset(),
                        kind: p.kind,
                        message_ids: &p.ids,
                    };
                    let mut w = truth.lock().expect("truth");
                    let _ = serde_json::to_writer(&mut *w, &line);
                    let _ = w.write_all(b"\n");
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .expect("err")
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Creates `topic` with `partitions` partitions unless it exists, with the
/// replication factor `kafka.replication_factor`, as every topic K2 creates.
pub fn ensure_topic(kafka: &KafkaConfig, topic: &str, partitions: i32) -> Result<()> {
    Ok(k2::sink::kafka::ensure_topic(kafka, topic, partitions, &[])?)
}

/// Produces according to `args` into the cluster of `kafka`.
pub fn produce(args: &ProduceArgs, kafka: &KafkaConfig) -> Result<ProduceSummary> {
    let mut topics = vec![args.binance_topic.clone(), args.kraken_topic.clone()];
    if let Some(t) = &args.topic {
        topics.push(t.clone());
    }
    let truth = match &args.truth {
        Some(p) => Some(Mutex::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        ))),
        None => None,
    };
    let ctx = Ctx {
        topics: topics.clone(),
        pending: Mutex::new(BTreeMap::new()),
        truth,
        ends: Mutex::new(BTreeMap::new()),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
    };
    let producer: BaseProducer<Ctx> = client_config(kafka)
        // Retries must not add duplicates of their own: the feed's deliberate
        // duplicates are the only ones the tests expect.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Small batches keep produce-to-visible latency honest at low rates.
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .create_with_context(ctx)
        .map_err(|e| k2::error::Error::kafka("create Kafka producer", e))?;

    let mut started = Instant::now();
    let mut summary = ProduceSummary::default();
    let mut next_id = 0usize;
    let mut send =
        |topic: usize, key: Option<&[u8]>, payload: &[u8], kind: &'static str, ids: Vec<String>| -> Result<()> {
            let id = next_id;
            next_id += 1;
            if producer.context().truth.is_some() {
                producer
                    .context()
                    .pending
                    .lock()
                    .expect("pending")
                    .insert(id, Pending { topic, kind, ids });
            }
            let mut record = BaseRecord::with_opaque_to(&topics[topic], id).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) => bail!("produce to `{}`: {e}", topics[topic]),
                }
            }
            producer.poll(Duration::ZERO);
            Ok(())
        };

    if let Some(path) = &args.from_file {
        let topic = args.topic.as_deref().expect("clap requires --topic");
        ensure_topic(kafka, topic, args.partitions)?;
        let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        for line in std::io::BufReader::new(file).split(b'\n') {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            send(2, None, &line, "raw", Vec::new())?;
        }
    } else {
        if args.exchanges.is_empty() {
            bail!("--exchanges is empty");
        }
        let cfg = FeedConfig {
            seed: args.seed,
            symbols: args.symbols.clone(),
            quote: args.quote.clone(),
            duplicate_fraction: args.duplicates,
            malformed_fraction: args.malformed,
            max_out_of_order_ms: args.out_of_order_ms,
            ..FeedConfig::default()
        };
        cfg.validate().map_err(anyhow::Error::msg)?;
        for ex in &args.exchanges {
            ensure_topic(kafka, &topics[topic_index(*ex)], args.partitions)?;
        }
        // Connect, learn the topics' leaders and get the idempotent
        // producer's id before the first paced message: otherwise the first
        // messages wait for all that after their timestamps were taken, and a
        // latency run counts the feed's own start-up against the engine.
        for ex in &args.exchanges {
            producer
                .client()
                .fetch_metadata(Some(&topics[topic_index(*ex)]), Duration::from_secs(10))
                .map_err(|e| k2::error::Error::kafka("fetch the feed topics' metadata", e))?;
        }
        let warm = Instant::now() + Duration::from_millis(200);
        while Instant::now() < warm {
            producer.poll(Duration::from_millis(20));
        }
        started = Instant::now();
        let mut feeds: Vec<Feed> = args.exchanges.iter().map(|ex| Feed::new(*ex, &cfg)).collect();
        let total = args.count * feeds.len() as u64;
        let deadline = args.duration.map(|d| started + d);
        let bar = match deadline {
            Some(_) => ProgressBar::new(args.duration.map(|d| d.as_secs()).unwrap_or(0)),
            None => ProgressBar::new(total),
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}").expect("template"),
        );
        let mut sent: u64 = 0;
        'outer: loop {
            for feed in feeds.iter_mut() {
                if deadline.is_none() && sent >= total {
                    break 'outer;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break 'outer;
                }
                if args.rate > 0 {
                    let due = started + Duration::from_secs_f64(sent as f64 / args.rate as f64);
                    let now = Instant::now();
                    if due > now + Duration::from_millis(1) {
                        producer.poll(due - now);
                    }
                }
                let now_us = match args.event_start_ms {
                    Some(start) => start * 1000 + sent as i64 * 1000,
                    None => SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_micros() as i64,
                };
                let msg = feed.next_message(now_us);
                let (kind, ids) = match &msg.kind {
                    MessageKind::Valid { message_ids } => ("valid", message_ids.clone()),
                    MessageKind::Duplicate { message_ids } => {
                        summary.duplicates += 1;
                        ("duplicate", message_ids.clone())
                    }
                    MessageKind::Malformed { .. } => {
                        summary.malformed += 1;
                        ("malformed", Vec::new())
                    }
                };
                send(topic_index(feed.exchange()), Some(&msg.key), &msg.payload, kind, ids)?;
                sent += 1;
                if sent.is_multiple_of(4096) {
                    match deadline {
                        Some(_) => bar.set_position(started.elapsed().as_secs()),
                        None => bar.set_position(sent),
                    }
                }
            }
        }
        bar.finish_and_clear();
    }
    producer.flush(Duration::from_secs(60)).context("flush producer")?;
    let ctx = producer.context();
    if let Some(t) = &ctx.truth {
        t.lock().expect("truth").flush()?;
    }
    summary.delivered = ctx.delivered.load(Ordering::Relaxed);
    summary.failed = ctx.failed.load(Ordering::Relaxed);
    summary.end_offsets = ctx.ends.lock().expect("ends").clone();
    summary.elapsed = started.elapsed();
    if summary.failed > 0 {
        bail!(
            "{} messages were not delivered (first error: {})",
            summary.failed,
            ctx.first_error.lock().expect("err").clone().unwrap_or_default()
        );
    }
    if !args.quiet {
        eprintln!(
            "produced {} messages ({} duplicates, {} malformed) in {:.1}s, {:.0} msg/s",
            summary.delivered,
            summary.duplicates,
            summary.malformed,
            summary.elapsed.as_secs_f64(),
            summary.delivered as f64 / summary.elapsed.as_secs_f64().max(1e-9)
        );
    }
    Ok(summary)
}

fn topic_index(ex: Exchange) -> usize {
    match ex {
        Exchange::Binance => 0,
        Exchange::Kraken => 1,
    }
}
