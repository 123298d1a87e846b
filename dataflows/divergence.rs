//! `divergence`: Binance vs Kraken price divergence per symbol, exactly once;
//! the worked example of "Writing a dataflow" in the README.
//!
//! On-time trades → dedup → [`divergence`], keyed by symbol: each trade meets
//! the other exchange's last trade of the symbol *before it in event time*, at
//! most `arbitrage.delta_ms` older, and a divergence `(p_this − p_other) /
//! p_other × 10⁴` beyond ±`arbitrage.threshold_bps` becomes an [`Alert`] in
//! `divergence_alerts` (buy = the cheaper exchange, `spread_millibps` =
//! |divergence|, no fees).
//!
//! A trade is compared once the event-time frontier has passed it, so every
//! earlier trade is in: the rows do not depend on arrival order or on the
//! number of workers (but for `produce_time`, the Kafka timestamp of the copy
//! of a re-sent trade that dedup kept), at the price of up to
//! `source.max_out_of_orderness_ms` of latency (the trade's capability holds
//! its cut back until then). The operator's state is logged per cut, like the
//! arbitrage join's: the trades it was given and the keys of those it
//! compared. So resuming after a crash or the end of a run (a stop, or a
//! bounded input read: either leaves the trades still waiting to the next
//! run, see `k2::stop`), on any number of workers, writes exactly the rows
//! of an uninterrupted run.

use crate::arbitrage::ArbitrageConfig;
use k2::error::Result;
use k2::launch::{Dataflow, Job};
use k2::operators::{DedupCheckpointed, LogState, key_hash, key_worker, read_logged};
use k2::record::{Alert, Exchange, MessageId, Symbol, Trade};
use k2::sink::iceberg::{TableDecl, WriteIceberg};
use k2::time::{EventProgress, Time, event_progress};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Filter;
use timely::dataflow::operators::{CapabilitySet, OkErr};

/// The divergence dataflow.
pub const DIVERGENCE: Dataflow = Dataflow {
    name: "divergence",
    about: "Binance vs Kraken price divergence per symbol above a threshold, into Iceberg",
    tables: &[TableDecl::of::<Alert>("divergence_alerts")],
    build,
    prepare: None,
};

fn build(job: &Job<'_>) -> Result<()> {
    let cfg = ArbitrageConfig::of_job(job)?;
    let source = job.kafka_source()?;
    let trades = source.trades.dedup_checkpointed(
        job.config().dedup.params(),
        job.dedup_stats("divergence-dedup"),
        job.state("divergence-dedup"),
    );
    // Late trades are left out: event-time operators must not see them.
    let trades = trades.filter(|t: &Trade| !t.late);
    // The operator's state: the trades of the last Δ, and which of them it
    // compared. Log both per cut, and start from those of the restored cut.
    let max_age_us = cfg.delta_ms * 1000;
    let expiry = move |event_us: i64| event_us.max(0) as u64 + max_age_us + 1;
    let (given, done) = (job.state("divergence-trades"), job.state("divergence-compared"));
    let restored = (read_logged(&given.state)?, read_logged(&done.state)?);
    trades.clone().log_state(given, move |t: &Trade| expiry(t.event_us));
    let params = (max_age_us, cfg.threshold_bps);
    let (alerts, compared) = divergence(job, params, trades, restored).ok_err(|out| match out {
        Out::Alert(alert) => Ok(alert),
        Out::Compared(key) => Err(key),
    });
    compared.log_state(done, move |key: &Key| expiry(key.0));
    alerts.write_iceberg(job.table("divergence_alerts")?);
    Ok(())
}

/// What [`divergence`] emits.
#[derive(Clone)]
enum Out {
    /// A divergence beyond the threshold.
    Alert(Alert),
    /// The key of a trade it compared, for the state log.
    Compared(Key),
}

/// Per trade, by `(event µs, message id)`: the order of "before" and "last".
type Key = (i64, MessageId);

/// Per symbol, each exchange's trades of the last Δ (indexed by `Exchange as usize`).
type History = HashMap<Symbol, [BTreeMap<Key, Trade>; 2]>;

/// The state logs of the restored cut: the trades given, the keys compared.
type Restored = (Vec<(Time, Trade)>, Vec<(Time, Key)>);

/// Compares each trade with the other exchange's last earlier trade of its
/// symbol, at most `arbitrage.delta_ms` older, and alerts beyond
/// `arbitrage.threshold_bps`. `restored`: the state logs of the last cut.
fn divergence<'scope>(
    job: &Job<'scope>,
    (max_age_us, threshold_bps): (u64, f64),
    trades: Stream<'scope, Time, Vec<Trade>>,
    (given, done): Restored,
) -> Stream<'scope, Time, Vec<Out>> {
    let ctx = job.context();
    let first_epoch = ctx.first_epoch;
    let (index, peers) = (trades.scope().index(), trades.scope().peers());
    let done: HashSet<Key> = done.into_iter().map(|(_, key)| key).collect();
    // Logged entries expire at `event + Δ + 1`; those the restored cut's event
    // frontier had passed are dead, and their `done` keys may be gone already.
    let frontier = ctx.restored.as_ref().and_then(|m| m.event_frontier_us).unwrap_or(0);
    let live = |t: &Trade| t.event_time() + max_age_us + 1 > frontier;
    let mine = given
        .into_iter()
        .filter(|(_, t)| key_worker(&t.symbol, peers) == index && live(t));
    let (mut history, mut waiting) = (History::new(), Vec::new());
    for (_, t) in mine {
        if done.contains(&key(&t)) {
            history.entry(t.symbol).or_default()[t.exchange as usize].insert(key(&t), t);
        } else {
            waiting.push(t); // given, not compared: the end of a run left it
        }
    }
    // Trades waiting for the frontier, each holding its message's capability.
    let mut pending: BTreeMap<Key, (Rc<CapabilitySet<Time>>, Trade)> = BTreeMap::new();
    let by_symbol = pact::Exchange::new(|t: &Trade| key_hash(&t.symbol));
    trades.unary_frontier(by_symbol, "Divergence", move |cap, _info| {
        // Trades the last run left wait again, on a capability of this run's first epoch.
        let held = Rc::new(CapabilitySet::from_elem(cap.delayed(&Time::new(first_epoch, 0))));
        pending.extend(waiting.into_iter().map(|t| (key(&t), (held.clone(), t))));
        drop(held);
        let mut ended = false;
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, data| {
                let caps = Rc::new(cap.retain_stamp(0));
                for t in data.flat_map(|batch| batch.drain(..)) {
                    pending.insert(key(&t), (caps.clone(), t));
                }
            });
            // No on-time trade below `horizon` can still come: compare those,
            // in event-time order. At the end of the run, once; the next run
            // compares what still waits (it is in the state logs).
            let horizon = match event_progress(frontier.frontier().iter()) {
                _ if ended => return,
                EventProgress::Below(horizon) => horizon,
                EventProgress::Ending { below } => {
                    ended = true;
                    below
                }
            };
            while let Some(entry) = pending.first_entry().filter(|e| e.get().1.event_time() < horizon) {
                let (key, (caps, t)) = entry.remove_entry();
                let sides = history.entry(t.symbol).or_default();
                let (own, other) = (t.exchange as usize, 1 - t.exchange as usize);
                let last = sides[other].range(..&key).next_back().map(|(_, o)| o);
                let fresh = last.filter(|o| t.event_us - o.event_us <= max_age_us as i64);
                let mut session = output.session(&*caps);
                if let Some(alert) = fresh.and_then(|o| alert(&t, o, threshold_bps)) {
                    session.give(Out::Alert(alert));
                }
                session.give(Out::Compared(key));
                sides[own].insert(key, t);
            }
            if ended {
                pending.clear();
            }
            // A trade more than Δ before the frontier is nobody's last price any more.
            let expired = |t: &Trade| t.event_time().saturating_add(max_age_us) < horizon;
            for side in history.values_mut().flatten() {
                while side.first_key_value().is_some_and(|(_, t)| expired(t)) {
                    side.pop_first();
                }
            }
        }
    })
}

/// The alert for trade `t` against `other`, if they diverge beyond the threshold.
fn alert(t: &Trade, other: &Trade, threshold_bps: f64) -> Option<Alert> {
    let (p, q) = (t.price.to_f64(), other.price.to_f64());
    let bps = (p - q) / q * 1e4;
    if q <= 0.0 || bps.abs() <= threshold_bps {
        return None;
    }
    let (buy, sell) = if bps > 0.0 { (other, t) } else { (t, other) };
    let t_is_binance = t.exchange == Exchange::Binance;
    let [b, k] = if t_is_binance { [t, other] } else { [other, t] };
    Some(Alert {
        alert_id: Alert::id_of(b.message_id, k.message_id),
        symbol: t.symbol,
        buy_exchange: buy.exchange,
        sell_exchange: sell.exchange,
        buy_price: buy.price,
        sell_price: sell.price,
        spread_millibps: (bps.abs() * 1000.0).round() as i64,
        binance_message_id: b.message_id,
        kraken_message_id: k.message_id,
        binance_event_us: b.event_us,
        kraken_event_us: k.event_us,
        produce_ms: b.source.kafka_ts_ms.max(k.source.kafka_ts_ms),
        detected_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64),
    })
}

fn key(t: &Trade) -> Key {
    (t.event_us, t.message_id)
}
