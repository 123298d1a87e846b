//! `arbitrage`: cross-exchange arbitrage alerts, event at a time, exactly once.
//!
//! Trades → dedup (in Kafka order) → late ones to `late_trades` (or counted
//! and dropped) → Binance × Kraken interval join by symbol within Δ → net
//! spread above the threshold → alerts, to Kafka (immediate or
//! transactional) and to `arbitrage_signals`. The join's state (the trades of
//! the last Δ) and the dedup state are in the job's checkpoints, so a restart
//! neither repeats nor misses an alert in the tables or in a transactional
//! alert topic. Its settings are the config's `[arbitrage]` section.

use k2::config::{Config, KafkaSinkMode, LatePolicy};
use k2::error::Result;
use k2::launch::{Dataflow, Job};
use k2::operators::arbitrage::Leg;
use k2::operators::interval_join::JoinState;
use k2::operators::{Arbitrage, ArbitrageParams, DedupCheckpointed, LogState, read_logged};
use k2::record::{Alert, Exchange, Trade};
use k2::sink::iceberg::{TableDecl, WriteIceberg};
use k2::sink::kafka::PublishKafka;
use k2::time::Time;
use timely::dataflow::Stream;
use timely::dataflow::operators::vec::Partition;

/// Creates the alerts topic unless it exists: `LogAppendTime`, so that a
/// record's timestamp is its arrival, where event-to-alert latency ends.
pub fn prepare(config: &Config) -> Result<()> {
    let cfg = ArbitrageConfig::of(config)?;
    k2::sink::kafka::ensure_topic(
        &config.kafka,
        &cfg.alerts_topic,
        4,
        &[("message.timestamp.type", "LogAppendTime")],
    )
}

/// The arbitrage dataflow.
pub const ARBITRAGE: Dataflow = Dataflow {
    name: "arbitrage",
    about: "cross-exchange arbitrage alerts (Binance x Kraken interval join) to Kafka and Iceberg",
    tables: TABLES,
    build,
    prepare: Some(prepare),
};

/// The tables of the arbitrage part.
pub const TABLES: &[TableDecl] = &[
    TableDecl::of::<Alert>("arbitrage_signals"),
    TableDecl::of::<Trade>("late_trades"),
];

fn build(job: &Job<'_>) -> Result<()> {
    let source = job.kafka_source()?;
    // Dedup first, in Kafka order: the first copy of a trade decides.
    let trades = source.trades.dedup_checkpointed(
        job.config().dedup.params(),
        job.dedup_stats("arbitrage-dedup"),
        job.state("arbitrage-dedup"),
    );
    part(job, trades)
}

/// The arbitrage part of a job, from deduplicated trades (late ones flagged).
pub fn part<'scope>(job: &Job<'scope>, trades: Stream<'scope, Time, Vec<Trade>>) -> Result<()> {
    let cfg: ArbitrageConfig = ArbitrageConfig::of_job(job)?;
    let params = ArbitrageParams {
        delta_us: cfg.delta_ms * 1000,
        binance_fee_bps: cfg.fees_bps.binance,
        kraken_fee_bps: cfg.fees_bps.kraken,
        threshold_bps: cfg.threshold_bps,
    };
    let mut sides = trades.partition(3, |t: Trade| {
        let side = match (t.late, t.exchange) {
            (true, _) => 2,
            (false, Exchange::Binance) => 0,
            (false, Exchange::Kraken) => 1,
        };
        (side, t)
    });
    let late = sides.pop().expect("three outputs");
    let kraken = sides.pop().expect("three outputs");
    let binance = sides.pop().expect("three outputs");

    // Late trades never enter the event-time operators.
    match cfg.late {
        LatePolicy::Table => late.write_iceberg(job.table("late_trades")?),
        LatePolicy::Drop => {} // counted by the source (`late` in the run report)
    }

    // The join's state is the trades of the last Δ: log them per cut, and
    // start from the logged trades of the restored checkpoint.
    let expiry = move |t: &Trade| t.event_time().saturating_add(params.delta_us + 1);
    let (left, right) = (job.state("join-binance"), job.state("join-kraken"));
    let mut restored = JoinState::new();
    for (time, t) in read_logged::<Trade>(&left.state)? {
        restored.insert_left(time, Leg::from(&t));
    }
    for (time, t) in read_logged::<Trade>(&right.state)? {
        restored.insert_right(time, Leg::from(&t));
    }
    binance.clone().log_state(left, expiry);
    kraken.clone().log_state(right, expiry);

    let stats = job.context().join_stats.clone();
    let alerts = binance.arbitrage(kraken, params, &[restored], stats);
    alerts.clone().write_iceberg(job.table("arbitrage_signals")?);
    match cfg.kafka_sink {
        KafkaSinkMode::Immediate => {
            alerts.publish_kafka(
                &job.config().kafka,
                &cfg.alerts_topic,
                job.context().kafka_stats.clone(),
            )?;
        }
        KafkaSinkMode::Transactional => alerts.stage_kafka(job.kafka_topic(&cfg.alerts_topic)),
    }
    Ok(())
}

/// `[arbitrage]`: the cross-exchange join and its alerts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArbitrageConfig {
    /// Trades of the two exchanges pair up when their event times differ by at
    /// most this many ms.
    pub delta_ms: u64,
    /// Taker fee per exchange, basis points.
    pub fees_bps: FeesConfig,
    /// Alert when the spread net of both fees exceeds this, basis points.
    pub threshold_bps: f64,
    /// Kafka topic of the alerts (JSON, key = alert id).
    pub alerts_topic: String,
    /// `immediate` (each alert at once, at least once, idempotent by alert
    /// id) or `transactional` (exactly once, visible per commit).
    pub kafka_sink: KafkaSinkMode,
    /// Late trades: `table` (kept in `late_trades`) or `drop` (counted only).
    pub late: LatePolicy,
}

impl Default for ArbitrageConfig {
    fn default() -> Self {
        ArbitrageConfig {
            delta_ms: 500,
            fees_bps: FeesConfig::default(),
            threshold_bps: 1.0,
            alerts_topic: "market.crypto.arbitrage.alerts".into(),
            kafka_sink: KafkaSinkMode::Immediate,
            late: LatePolicy::Table,
        }
    }
}

/// `[arbitrage.fees_bps]`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeesConfig {
    /// Binance taker fee, bps.
    pub binance: f64,
    /// Kraken taker fee, bps.
    pub kraken: f64,
}

impl Default for FeesConfig {
    fn default() -> Self {
        FeesConfig {
            binance: 2.0,
            kraken: 5.0,
        }
    }
}

impl ArbitrageConfig {
    /// The `[arbitrage]` section of `config`, checked.
    pub fn of(config: &Config) -> Result<ArbitrageConfig> {
        let cfg: ArbitrageConfig = config.section("arbitrage")?;
        cfg.check(config)?;
        Ok(cfg)
    }

    /// The `[arbitrage]` section of the job's config, checked (and marked read).
    pub fn of_job(job: &Job<'_>) -> Result<ArbitrageConfig> {
        let cfg: ArbitrageConfig = job.section("arbitrage")?;
        cfg.check(job.config())?;
        Ok(cfg)
    }

    fn check(&self, config: &Config) -> Result<()> {
        if self.delta_ms == 0 {
            return Err(config.section_error("arbitrage.delta_ms", "must be > 0"));
        }
        if !(self.threshold_bps.is_finite() && self.fees_bps.binance.is_finite() && self.fees_bps.kraken.is_finite()) {
            return Err(config.section_error("arbitrage.threshold_bps", "fees and threshold must be finite numbers"));
        }
        if self.fees_bps.binance < 0.0 || self.fees_bps.kraken < 0.0 {
            return Err(config.section_error("arbitrage.fees_bps", "fees cannot be negative"));
        }
        Ok(())
    }
}
