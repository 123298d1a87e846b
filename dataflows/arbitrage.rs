//! `arbitrage`: cross-exchange arbitrage alerts, event at a time, exactly once.
//!
//! On-time trades → dedup → Binance × Kraken interval join by symbol within Δ
//! → net spread above the threshold → alerts, to Kafka (immediate or
//! transactional) and to `arbitrage_signals`. Late trades go to `late_trades`
//! or are counted and dropped, as configured: never lost without a trace.
//! The join's state (the trades of the last Δ) and the dedup state are in the
//! job's checkpoints, so a restart neither repeats nor misses an alert in the
//! tables or in a transactional alert topic.

use k2::config::{KafkaSinkMode, LatePolicy};
use k2::error::Result;
use k2::launch::{Dataflow, JobContext, TableKind};
use k2::operators::interval_join::JoinState;
use k2::operators::{Arbitrage, ArbitrageParams, DedupCheckpointed, LogState, read_logged};
use k2::record::{Alert, Exchange, Trade};
use k2::sink::iceberg::{CommitItem, WriteIceberg};
use k2::sink::kafka::PublishKafka;
use k2::source::kafka::SourceStreams;
use k2::time::Time;
use timely::dataflow::operators::vec::{Map, Partition};
use timely::dataflow::operators::{Concat, Concatenate};
use timely::dataflow::{Scope, Stream};

const PREPARE: Option<fn(&k2::config::Config) -> Result<()>> = Some(prepare);

/// Creates the alerts topic unless it exists: `LogAppendTime`, so that a
/// record's timestamp is its arrival, where event-to-alert latency ends.
pub fn prepare(config: &k2::config::Config) -> Result<()> {
    k2::sink::kafka::ensure_topic(
        &config.kafka,
        &config.arbitrage.alerts_topic,
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
    prepare: PREPARE,
};

/// The tables of the arbitrage part.
pub const TABLES: &[(&str, TableKind)] = &[
    ("arbitrage_signals", TableKind::Alerts),
    ("late_trades", TableKind::Trades),
];

fn build<'scope>(ctx: &JobContext, scope: Scope<'scope, Time>) -> Result<()> {
    let source = ctx.kafka_source(scope)?;
    let items = part(ctx, &source)?;
    ctx.commit(items.concat(source.progress.map(CommitItem::from)));
    Ok(())
}

/// The arbitrage part of a job reading `source`: what it hands the committer.
pub fn part<'scope>(ctx: &JobContext, source: &SourceStreams<'scope>) -> Result<Stream<'scope, Time, Vec<CommitItem>>> {
    let cfg = &ctx.config.arbitrage;
    let params = ArbitrageParams {
        delta_us: cfg.delta_ms * 1000,
        binance_fee_bps: cfg.fees_bps.binance,
        kraken_fee_bps: cfg.fees_bps.kraken,
        threshold_bps: cfg.threshold_bps,
    };
    let mut items: Vec<Stream<'scope, Time, Vec<CommitItem>>> = Vec::new();

    // Dedup first, in Kafka order, then route late trades away: the first
    // copy of a trade decides, whatever the layout.
    let (trades, dedup_state) = source.trades.clone().dedup_checkpointed(
        ctx.config.dedup.params(),
        ctx.dedup_stats("arbitrage-dedup"),
        ctx.state_checkpoint("arbitrage-dedup"),
    );
    items.push(dedup_state.map(CommitItem::from));
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
        LatePolicy::Table => items.push(
            late.write_iceberg(ctx.table_writer::<Trade>("late_trades"))
                .map(CommitItem::from),
        ),
        LatePolicy::Drop => {} // counted by the source (`late` in the run report)
    }

    // The join's state is the trades of the last Δ: log them per cut, and
    // start from the logged trades of the restored checkpoint.
    let expiry = move |t: &Trade| t.event_time().saturating_add(params.delta_us + 1);
    let (left_ckpt, right_ckpt) = (
        ctx.state_checkpoint("join-binance"),
        ctx.state_checkpoint("join-kraken"),
    );
    let mut restored = JoinState::new();
    for (time, t) in read_logged::<Trade>(&left_ckpt)? {
        restored.insert_left(time, t);
    }
    for (time, t) in read_logged::<Trade>(&right_ckpt)? {
        restored.insert_right(time, t);
    }
    items.push(binance.clone().log_state(left_ckpt, expiry).map(CommitItem::from));
    items.push(kraken.clone().log_state(right_ckpt, expiry).map(CommitItem::from));

    let alerts = binance.arbitrage(kraken, params, &[restored], ctx.join_stats.clone());
    items.push(
        alerts
            .clone()
            .write_iceberg(ctx.table_writer::<Alert>("arbitrage_signals"))
            .map(CommitItem::from),
    );
    match cfg.kafka_sink {
        KafkaSinkMode::Immediate => {
            alerts.publish_kafka(&ctx.config.kafka, &cfg.alerts_topic, ctx.kafka_stats.clone())?;
        }
        KafkaSinkMode::Transactional => {
            items.push(
                alerts
                    .stage_kafka(&cfg.alerts_topic, ctx.groups())
                    .map(CommitItem::from),
            );
        }
    }
    let scope = source.trades.scope();
    Ok(scope.concatenate(items))
}
