//! Interval join: pairs of records with equal keys whose event times lie
//! within ±Δ of each other, e.g. a Binance and a Kraken trade of one symbol.
//!
//! Three decisions shape the operator; each is needed by the invariants of
//! `DESIGN.md` (determinism on any number of workers, exactly once).
//!
//! * **Event at a time.** A pair is emitted as soon as its second half
//!   arrives: each arriving record probes the other side's state, then joins
//!   its own side's state. Every pair is therefore produced exactly once, by
//!   whichever half is processed second, whatever the interleaving (within an
//!   activation the left input is processed before the right one, so the same
//!   argument holds there). Latency is one hop, not a watermark delay:
//!   frontiers only decide when state may go.
//! * **Stamped at the join of times.** A pair carries the lattice join
//!   (component-wise max) of its halves' timestamps, not the time of the half
//!   that happened to arrive second. So the pair's epoch, which decides the
//!   checkpoint that holds it, does not depend on scheduling. The join is
//!   `>=` the arriving record's own time, so its input capability may legally
//!   be `delayed` to it.
//! * **Eviction by the other side's frontier.** A stored left record with
//!   event time `t` only ever meets *future right* records. An on-time right
//!   record has an event time `>=` its timestamp's event part, which is `>=`
//!   the event part `F` of every element of the right input's frontier (see
//!   [`event_frontier`]). It matches iff its event time is `<= t + Δ`, so once
//!   `F > t + Δ` no future on-time record can match, and the left record is
//!   dropped; symmetrically for right records. The inequality is strict: at
//!   `F == t + Δ` a record at exactly `t + Δ` may still come, and matches.
//!   Using each side's own partner frontier (rather than the minimum over
//!   both inputs) is just as safe and frees state sooner when one input lags
//!   or has ended (then the other side's state is dropped at once).
//!
//! **Late records** (an event time below the event part of the record's own
//! timestamp) break the eviction argument: their partners may be gone. The
//! source routes them away before event-time operators (see [`crate::time`]),
//! so here they are a safety net only: they are counted in
//! [`JoinStats::late`] and joined against whatever state is still present.
//!
//! **Stamps.** A timely message carries a *stamp*, a set of incomparable
//! times. K2 messages carry one; in general the operator stores a record at
//! the least element of its stamp by `(epoch, event)` (which its capability
//! can be delayed from), and measures lateness against the least event part
//! over all elements. Messages with an empty stamp make no progress claims, so
//! no capability can stamp their pairs: they are dropped and counted in
//! [`JoinStats::unstamped`]. K2 operators never send them.
//!
//! **Routing and restore.** Both inputs are exchanged by [`key_hash`] of the
//! key, so equal keys meet on one worker. State lives in one serializable
//! [`JoinState`] per worker. On restore, every worker is handed the states of
//! *all* old workers and keeps the keys that hash to it, which also rescales.
//! Restored records are only re-inserted: their pairs among themselves were
//! emitted before the checkpoint.

use crate::time::{Time, event_frontier};
use differential_dataflow::lattice::Lattice;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use timely::ExchangeData;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::InputCapability;
use timely::dataflow::operators::generic::{Operator, OutputBuilderSession};
use timely::progress::frontier::MutableAntichain;

/// What the interval join needs to know about a record of either side.
pub trait JoinSide {
    /// The join key. Both sides of one join use the same key type.
    type Key: Hash + Eq + Clone + 'static;
    /// The record's join key: records meet only with equal keys.
    fn join_key(&self) -> &Self::Key;
    /// The record's own event time, µs since the Unix epoch.
    fn event_us(&self) -> u64;
}

/// Trades join by normalized symbol (`BTC/USDT`) at their exchange event time.
impl JoinSide for crate::record::Trade {
    type Key = crate::record::Symbol;
    fn join_key(&self) -> &crate::record::Symbol {
        &self.symbol
    }
    fn event_us(&self) -> u64 {
        self.event_time()
    }
}

/// Counts kept by an interval join, shared by all its workers in a process.
#[derive(Debug, Default)]
pub struct JoinStats {
    /// Pairs emitted.
    pub pairs: AtomicU64,
    /// Records read from the left input.
    pub left: AtomicU64,
    /// Records read from the right input.
    pub right: AtomicU64,
    /// Records re-inserted from a restored [`JoinState`].
    pub restored: AtomicU64,
    /// Input records whose event time is below their timestamp's event part.
    pub late: AtomicU64,
    /// Input records dropped because their message had an empty stamp.
    pub unstamped: AtomicU64,
    /// Stored records dropped because no future on-time record can match them.
    pub evicted: AtomicU64,
    /// Gauge: records currently stored, over both sides and all workers.
    pub live: AtomicU64,
    /// Gauge: keys with stored records, counted once per side.
    pub live_keys: AtomicU64,
}

pub use crate::hash::{key_hash, key_worker};

/// One stored record with the time it arrived at. Its event time is the
/// record's own ([`JoinSide::event_us`]), not stored twice.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored<D> {
    time: Time,
    record: D,
}

impl<D: JoinSide> Stored<D> {
    #[inline]
    fn event(&self) -> u64 {
        self.record.event_us()
    }
}

/// A key's records on one side, sorted by event time (stable for ties).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyRecords<K, D> {
    key: K,
    records: VecDeque<Stored<D>>,
}

/// One side's state. Keys are interned into slots so that the eviction index
/// holds `(least event time, slot)` pairs and never clones a key. A key whose
/// records are all evicted keeps its slot (and buffer) until empty slots
/// outnumber live ones, so sparse keys do not allocate on every record.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, D: Serialize",
    deserialize = "K: Deserialize<'de> + Hash + Eq, D: Deserialize<'de>"
))]
struct SideState<K, D> {
    slots: HashMap<K, usize, foldhash::fast::RandomState>,
    keys: Vec<Option<KeyRecords<K, D>>>,
    free: Vec<usize>,
    /// `(front event time, slot)` for every slot with records.
    index: BTreeSet<(u64, usize)>,
    /// Records stored.
    len: usize,
    /// Slots in `slots` without records.
    empty: usize,
}

impl<K, D> Default for SideState<K, D> {
    fn default() -> Self {
        SideState {
            slots: HashMap::default(),
            keys: Vec::new(),
            free: Vec::new(),
            index: BTreeSet::new(),
            len: 0,
            empty: 0,
        }
    }
}

/// The index of the first record with an event time of at least `lo`.
/// Probes look just behind the newest records (event times are nearly in
/// order and Δ is short), so walk back a few steps before searching.
fn first_at_or_after<D: JoinSide>(records: &VecDeque<Stored<D>>, lo: u64) -> usize {
    let mut i = records.len();
    for _ in 0..8 {
        match i.checked_sub(1).map(|j| records[j].event() >= lo) {
            Some(true) => i -= 1,
            _ => return i,
        }
    }
    records.partition_point(|s| s.event() < lo)
}

impl<K: Hash + Eq + Clone, D: JoinSide> SideState<K, D> {
    /// The slot of `key`, opened if need be.
    fn slot(&mut self, key: &K) -> usize {
        match self.slots.get(key) {
            Some(&slot) => slot,
            None => self.open(key),
        }
    }

    /// Stores `record` at `time`, under the key of `slot`.
    fn insert(&mut self, slot: usize, time: Time, record: D) {
        let event = record.event_us();
        let records = &mut self.keys[slot].as_mut().expect("mapped slot is open").records;
        if records.is_empty() {
            self.empty -= 1;
        }
        // Usually the back: event times are nearly in order.
        let pos = match records.back() {
            Some(last) if last.event() > event => records.partition_point(|s| s.event() <= event),
            _ => records.len(),
        };
        if pos == 0 {
            if let Some(front) = records.front() {
                self.index.remove(&(front.event(), slot));
            }
            self.index.insert((event, slot));
        }
        records.insert(pos, Stored { time, record });
        self.len += 1;
    }

    /// Opens an empty slot for `key`.
    fn open(&mut self, key: &K) -> usize {
        let entry = Some(KeyRecords {
            key: key.clone(),
            records: VecDeque::with_capacity(1),
        });
        let slot = match self.free.pop() {
            Some(slot) => {
                self.keys[slot] = entry;
                slot
            }
            None => {
                self.keys.push(entry);
                self.keys.len() - 1
            }
        };
        self.slots.insert(key.clone(), slot);
        self.empty += 1;
        slot
    }

    /// The records of `key` with event times in `[event - delta, event + delta]`.
    fn probe(&self, key: &K, event: u64, delta: u64) -> impl Iterator<Item = &Stored<D>> {
        let (lo, hi) = (event.saturating_sub(delta), event.saturating_add(delta));
        let records = self
            .slots
            .get(key)
            .map(|&slot| &self.keys[slot].as_ref().expect("open").records);
        records.into_iter().flat_map(move |records| {
            let start = first_at_or_after(records, lo);
            records.range(start..).take_while(move |s| s.event() <= hi)
        })
    }

    /// Drops the records whose event time is `expired` (a predicate that
    /// holds for all event times below some bound); returns how many.
    fn evict(&mut self, expired: impl Fn(u64) -> bool) -> usize {
        let before = self.len;
        while let Some(&(event, slot)) = self.index.first() {
            if !expired(event) {
                break;
            }
            self.index.pop_first();
            let records = &mut self.keys[slot].as_mut().expect("indexed slot is open").records;
            while records.front().is_some_and(|s| expired(s.event())) {
                records.pop_front();
                self.len -= 1;
            }
            match records.front() {
                Some(front) => {
                    self.index.insert((front.event(), slot));
                }
                None => self.empty += 1,
            }
        }
        if self.empty > 64 && self.empty * 2 > self.slots.len() {
            self.release_empty();
        }
        before - self.len
    }

    /// Closes the slots of keys without records.
    fn release_empty(&mut self) {
        for (slot, entry) in self.keys.iter_mut().enumerate() {
            if entry.as_ref().is_some_and(|e| e.records.is_empty()) {
                let entry = entry.take().expect("checked");
                self.slots.remove(&entry.key);
                self.free.push(slot);
            }
        }
        self.empty = 0;
    }

    /// Keys with records.
    fn live_keys(&self) -> usize {
        self.slots.len() - self.empty
    }

    fn iter(&self) -> impl Iterator<Item = &Stored<D>> {
        self.keys.iter().flatten().flat_map(|e| e.records.iter())
    }

    /// Re-inserts the records of `other` whose key passes `keep`; returns how many.
    fn restore_from(&mut self, other: &Self, keep: impl Fn(&K) -> bool) -> usize
    where
        D: Clone,
    {
        let mut restored = 0;
        for entry in other.keys.iter().flatten().filter(|e| keep(&e.key)) {
            let slot = self.slot(&entry.key);
            for s in &entry.records {
                self.insert(slot, s.time, s.record.clone());
                restored += 1;
            }
        }
        restored
    }
}

/// The state of one worker's interval join: the stored records of both
/// sides, each with its event time and the timestamp it arrived at.
///
/// It is what a checkpoint stores and what [`IntervalJoin::interval_join_with`]
/// restores from, hence `Serialize + Deserialize`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, L: Serialize, R: Serialize",
    deserialize = "K: Deserialize<'de> + Hash + Eq, L: Deserialize<'de>, R: Deserialize<'de>"
))]
pub struct JoinState<K, L, R> {
    left: SideState<K, L>,
    right: SideState<K, R>,
}

impl<K, L, R> Default for JoinState<K, L, R> {
    fn default() -> Self {
        JoinState {
            left: SideState::default(),
            right: SideState::default(),
        }
    }
}

impl<K, L, R> JoinState<K, L, R>
where
    K: Hash + Eq + Clone,
    L: JoinSide<Key = K>,
    R: JoinSide<Key = K>,
{
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a left record that arrived at `time`, without joining it.
    pub fn insert_left(&mut self, time: Time, record: L) {
        let slot = self.left.slot(record.join_key());
        self.left.insert(slot, time, record);
    }

    /// Stores a right record that arrived at `time`, without joining it.
    pub fn insert_right(&mut self, time: Time, record: R) {
        let slot = self.right.slot(record.join_key());
        self.right.insert(slot, time, record);
    }

    /// Records stored, over both sides: the measure of state size.
    pub fn live_records(&self) -> usize {
        self.left.len + self.right.len
    }

    /// Keys with stored records, counted once per side.
    pub fn live_keys(&self) -> usize {
        self.left.live_keys() + self.right.live_keys()
    }

    /// The stored left records with their arrival times.
    pub fn left_records(&self) -> impl Iterator<Item = (Time, &L)> {
        self.left.iter().map(|s| (s.time, &s.record))
    }

    /// The stored right records with their arrival times.
    pub fn right_records(&self) -> impl Iterator<Item = (Time, &R)> {
        self.right.iter().map(|s| (s.time, &s.record))
    }

    /// Re-inserts the records of `other` whose key passes `keep`, without
    /// joining them; returns how many.
    fn restore_from(&mut self, other: &Self, keep: impl Fn(&K) -> bool) -> usize
    where
        L: Clone,
        R: Clone,
    {
        self.left.restore_from(&other.left, &keep) + self.right.restore_from(&other.right, &keep)
    }
}

/// Joins two streams by key within ±Δ of event time.
pub trait IntervalJoin<'scope, L: JoinSide>: Sized {
    /// Emits `emit(l, r)` once for every pair of a record `l` of `self` and `r`
    /// of `other` with equal keys and event times at most `delta_us` apart, as
    /// soon as the second of the two arrives, at the join of their times.
    ///
    /// Shorthand for [`interval_join_with`](Self::interval_join_with) with no
    /// state to restore and statistics nobody reads.
    ///
    /// # Examples
    /// ```
    /// use k2::operators::{IntervalJoin, JoinSide};
    /// use k2::time::Time;
    /// use std::sync::{Arc, Mutex};
    /// use timely::dataflow::operators::{Inspect, vec::ToStream};
    ///
    /// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    /// struct Tick { symbol: String, us: u64 }
    /// impl JoinSide for Tick {
    ///     type Key = String;
    ///     fn join_key(&self) -> &String { &self.symbol }
    ///     fn event_us(&self) -> u64 { self.us }
    /// }
    /// let tick = |symbol: &str, us| Tick { symbol: symbol.into(), us };
    ///
    /// let pairs = Arc::new(Mutex::new(Vec::new()));
    /// let sink = pairs.clone();
    /// timely::execute_directly(move |worker| {
    ///     worker.dataflow::<Time, _, _>(|scope| {
    ///         let binance = vec![tick("BTC/USDT", 1_000), tick("ETH/USDT", 1_000)].to_stream(scope);
    ///         let kraken = vec![tick("BTC/USDT", 1_040), tick("BTC/USDT", 2_000)].to_stream(scope);
    ///         binance
    ///             .interval_join(kraken, 50, |b: &Tick, k: &Tick| (b.us, k.us))
    ///             .inspect(move |pair| sink.lock().unwrap().push(*pair));
    ///     });
    /// });
    /// assert_eq!(*pairs.lock().unwrap(), vec![(1_000, 1_040)]);
    /// ```
    fn interval_join<R, O, F>(
        self,
        other: Stream<'scope, Time, Vec<R>>,
        delta_us: u64,
        emit: F,
    ) -> Stream<'scope, Time, Vec<O>>
    where
        R: JoinSide<Key = L::Key> + ExchangeData + Clone,
        O: 'static,
        F: FnMut(&L, &R) -> O + 'static,
    {
        self.interval_join_with(other, delta_us, &[], Default::default(), emit)
    }

    /// [`interval_join`](Self::interval_join), starting from `restore`, with
    /// counts in `stats`.
    ///
    /// `restore` holds the states of *all* workers of an earlier run (empty
    /// for a fresh start); each worker re-inserts the records whose key it
    /// owns ([`key_worker`]), without emitting pairs among them.
    fn interval_join_with<R, O, F>(
        self,
        other: Stream<'scope, Time, Vec<R>>,
        delta_us: u64,
        restore: &[JoinState<L::Key, L, R>],
        stats: Arc<JoinStats>,
        emit: F,
    ) -> Stream<'scope, Time, Vec<O>>
    where
        R: JoinSide<Key = L::Key> + ExchangeData + Clone,
        O: 'static,
        F: FnMut(&L, &R) -> O + 'static;
}

impl<'scope, L> IntervalJoin<'scope, L> for Stream<'scope, Time, Vec<L>>
where
    L: JoinSide + ExchangeData + Clone,
{
    fn interval_join_with<R, O, F>(
        self,
        other: Stream<'scope, Time, Vec<R>>,
        delta: u64,
        restore: &[JoinState<L::Key, L, R>],
        stats: Arc<JoinStats>,
        mut emit: F,
    ) -> Stream<'scope, Time, Vec<O>>
    where
        R: JoinSide<Key = L::Key> + ExchangeData + Clone,
        O: 'static,
        F: FnMut(&L, &R) -> O + 'static,
    {
        let scope = self.scope();
        let (index, peers) = (scope.index(), scope.peers());
        let mut state = JoinState::new();
        let mut restored = 0;
        for old in restore {
            restored += state.restore_from(old, |key| key_worker(key, peers) == index);
        }
        stats.restored.fetch_add(restored as u64, Ordering::Relaxed);
        stats.live.fetch_add(state.live_records() as u64, Ordering::Relaxed);
        stats.live_keys.fetch_add(state.live_keys() as u64, Ordering::Relaxed);

        let left_pact = Exchange::new(|l: &L| key_hash(l.join_key()));
        let right_pact = Exchange::new(|r: &R| key_hash(r.join_key()));
        self.binary_frontier(other, left_pact, right_pact, "IntervalJoin", move |_cap, _info| {
            // Pairs of the current stamp, with their times; reused.
            let mut pending: Vec<(Time, O)> = Vec::new();
            move |(left, left_frontier), (right, right_frontier), output| {
                let (live, keys) = (state.live_records(), state.live_keys());
                let mut n = Counts::default();
                left.for_each_stamp(|cap, data| {
                    let Some((time, least_event)) = stamp_time(&cap) else {
                        n.unstamped += data.map(|batch| batch.drain(..).count()).sum::<usize>();
                        return;
                    };
                    for batch in data {
                        n.left += batch.len();
                        for l in batch.drain(..) {
                            let event = l.event_us();
                            n.late += usize::from(event < least_event);
                            for r in state.right.probe(l.join_key(), event, delta) {
                                pending.push((time.join(&r.time), emit(&l, &r.record)));
                            }
                            let slot = state.left.slot(l.join_key());
                            state.left.insert(slot, time, l);
                        }
                    }
                    n.pairs += pending.len();
                    give_pending(&cap, &mut pending, output);
                });
                right.for_each_stamp(|cap, data| {
                    let Some((time, least_event)) = stamp_time(&cap) else {
                        n.unstamped += data.map(|batch| batch.drain(..).count()).sum::<usize>();
                        return;
                    };
                    for batch in data {
                        n.right += batch.len();
                        for r in batch.drain(..) {
                            let event = r.event_us();
                            n.late += usize::from(event < least_event);
                            for l in state.left.probe(r.join_key(), event, delta) {
                                pending.push((time.join(&l.time), emit(&l.record, &r)));
                            }
                            let slot = state.right.slot(r.join_key());
                            state.right.insert(slot, time, r);
                        }
                    }
                    n.pairs += pending.len();
                    give_pending(&cap, &mut pending, output);
                });

                // Left records only meet future right records, and vice versa.
                n.evicted += state.left.evict(expired(right_frontier, delta));
                n.evicted += state.right.evict(expired(left_frontier, delta));

                n.publish(&stats);
                update_gauge(&stats.live, live, state.live_records());
                update_gauge(&stats.live_keys, keys, state.live_keys());
            }
        })
    }
}

/// Per-activation counts, published to [`JoinStats`] once per activation.
#[derive(Default)]
struct Counts {
    pairs: usize,
    left: usize,
    right: usize,
    late: usize,
    unstamped: usize,
    evicted: usize,
}

impl Counts {
    fn publish(&self, stats: &JoinStats) {
        for (counter, n) in [
            (&stats.pairs, self.pairs),
            (&stats.left, self.left),
            (&stats.right, self.right),
            (&stats.late, self.late),
            (&stats.unstamped, self.unstamped),
            (&stats.evicted, self.evicted),
        ] {
            if n > 0 {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Moves a gauge by this worker's change from `before` to `after`.
fn update_gauge(gauge: &AtomicU64, before: usize, after: usize) {
    if after > before {
        gauge.fetch_add((after - before) as u64, Ordering::Relaxed);
    } else if before > after {
        gauge.fetch_sub((before - after) as u64, Ordering::Relaxed);
    }
}

/// The time at which records of this message are stored and from which their
/// pairs are stamped (the least stamp element by `(epoch, event)`, which the
/// capability can be delayed from), and the least event part over all stamp
/// elements (below it a record is late). `None` for an empty stamp.
fn stamp_time(cap: &InputCapability<Time>) -> Option<(Time, u64)> {
    let stamp = cap.stamp();
    let time = crate::time::stamp_time(stamp.iter())?;
    let least_event = stamp.iter().map(|t| t.event).min()?;
    Some((time, least_event))
}

/// Which stored event times no future on-time record of the input with
/// `frontier` can match: those with `event + delta` below the frontier's
/// event part, or all of them once the input has ended.
fn expired(frontier: &MutableAntichain<Time>, delta: u64) -> impl Fn(u64) -> bool {
    let frontier = frontier.frontier();
    let horizon = (!frontier.is_empty()).then(|| event_frontier(frontier.iter()));
    move |event| horizon.is_none_or(|h| event.saturating_add(delta) < h)
}

/// Sends `pending` pairs, each at its own time, through capabilities delayed
/// from `cap` (every pair time is `>=` the stamp element it was built from).
fn give_pending<O: 'static>(
    cap: &InputCapability<Time>,
    pending: &mut Vec<(Time, O)>,
    output: &mut OutputBuilderSession<'_, Time, CapacityContainerBuilder<Vec<O>>>,
) {
    if pending.is_empty() {
        return;
    }
    pending.sort_unstable_by_key(|(time, _)| *time);
    let port = output.output_index();
    let mut pairs = pending.drain(..).peekable();
    while let Some((time, first)) = pairs.next() {
        let time_cap = cap.delayed(&time, port);
        let mut session = output.session(&time_cap);
        session.give(first);
        while let Some((_, pair)) = pairs.next_if(|(t, _)| *t == time) {
            session.give(pair);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::sync::Mutex;
    use timely::dataflow::Scope;
    use timely::dataflow::operators::Inspect;
    use timely::dataflow::operators::generic::operator::source;

    #[test]
    fn the_probe_start_is_the_first_record_at_or_after_its_bound() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..500 {
            let n = rng.random_range(0..40);
            let mut events: Vec<u64> = (0..n).map(|_| rng.random_range(0..60)).collect();
            events.sort();
            let records: VecDeque<Stored<Rec>> = events
                .iter()
                .map(|&event| Stored {
                    time: Time::default(),
                    record: rec(0, "a", event),
                })
                .collect();
            for lo in 0..65 {
                assert_eq!(
                    first_at_or_after(&records, lo),
                    records.partition_point(|s| s.event() < lo),
                    "{events:?} from {lo}"
                );
            }
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
    struct Rec {
        id: u64,
        key: String,
        event: u64,
        /// The time the test source sent the record at.
        stamp: Time,
    }
    impl JoinSide for Rec {
        type Key = String;
        fn join_key(&self) -> &String {
            &self.key
        }
        fn event_us(&self) -> u64 {
            self.event
        }
    }

    fn rec(id: u64, key: &str, event: u64) -> Rec {
        Rec {
            id,
            key: key.into(),
            event,
            stamp: Time::default(),
        }
    }

    /// A pair as emitted: ids of both halves and the join of their stamps.
    type Pair = (u64, u64, Time);

    /// One step of a test source: send the record at the time, or (`None`)
    /// hold the capability at the time and yield, so progress can propagate.
    type Step = (Time, Option<Rec>);

    /// A source that plays `steps`, up to `per_activation` records per
    /// activation (to interleave with the other workers), downgrading its
    /// capability to each step's time first. Step times must not decrease.
    /// Calls `on_done` as it drops its capability.
    fn feed<'s>(
        scope: Scope<'s, Time>,
        steps: Vec<Step>,
        per_activation: usize,
        on_done: impl Fn() + 'static,
    ) -> Stream<'s, Time, Vec<Rec>> {
        source(scope, "Feed", move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut cap = Some(cap);
            let mut pos = 0;
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                let mut sent = 0;
                while pos < steps.len() && sent < per_activation {
                    let (time, record) = &steps[pos];
                    c.downgrade(time);
                    pos += 1;
                    let Some(record) = record else { break };
                    output.session(&*c).give(Rec {
                        stamp: *time,
                        ..record.clone()
                    });
                    sent += 1;
                }
                if pos == steps.len() {
                    on_done();
                    cap = None;
                } else {
                    activator.activate();
                }
            }
        })
    }

    /// What a run produced: pairs (sorted) with the times they came out at.
    struct Output {
        pairs: Vec<(u64, u64)>,
        /// Pairs whose output time differs from the join of their halves' stamps.
        mistimed: Vec<(Time, Pair)>,
        stats: Arc<JoinStats>,
        /// Evictions done while every input was still open (frontier-driven).
        evicted_while_open: u64,
    }

    /// Runs the join on `workers` threads; `steps(index, peers)` gives each
    /// worker's left and right source steps.
    fn run<S>(workers: usize, delta: u64, restore: Vec<JoinState<String, Rec, Rec>>, steps: S) -> Output
    where
        S: Fn(usize, usize) -> (Vec<Step>, Vec<Step>, usize) + Send + Sync + 'static,
    {
        let out: Arc<Mutex<Vec<(Time, Pair)>>> = Arc::default();
        let stats = Arc::new(JoinStats::default());
        // The eviction count when the first source of any worker finishes.
        let first_done: Arc<Mutex<Option<u64>>> = Arc::default();
        let (out2, stats2, first_done2, restore) = (out.clone(), stats.clone(), first_done.clone(), Arc::new(restore));
        timely::execute(timely::Config::process(workers), move |worker| {
            let (left, right, per_activation) = steps(worker.index(), worker.peers());
            let (out, stats, restore) = (out2.clone(), stats2.clone(), restore.clone());
            let on_done = || {
                let (stats, first_done) = (stats2.clone(), first_done2.clone());
                move || {
                    let evicted = stats.evicted.load(Ordering::Relaxed);
                    first_done.lock().unwrap().get_or_insert(evicted);
                }
            };
            worker.dataflow::<Time, _, _>(|scope| {
                let left = feed(scope, left, per_activation, on_done());
                let right = feed(scope, right, per_activation, on_done());
                left.interval_join_with(right, delta, &restore, stats, |l: &Rec, r: &Rec| {
                    (l.id, r.id, l.stamp.join(&r.stamp))
                })
                .inspect_core(move |event| {
                    if let Ok((stamp, pairs)) = event {
                        let time = *stamp.expect_singleton();
                        out.lock().unwrap().extend(pairs.iter().map(|p| (time, *p)));
                    }
                });
            });
        })
        .unwrap();
        let out = out.lock().unwrap();
        let mut pairs: Vec<(u64, u64)> = out.iter().map(|(_, (l, r, _))| (*l, *r)).collect();
        pairs.sort();
        let mistimed = out.iter().filter(|(time, pair)| *time != pair.2).cloned().collect();
        let evicted_while_open = first_done.lock().unwrap().unwrap_or(0);
        Output {
            pairs,
            mistimed,
            stats,
            evicted_while_open,
        }
    }

    /// Steps for one worker's share of `records` (arrival order), each sent
    /// at `(epoch, watermark)`: the watermark is the least event time of the
    /// records this worker has yet to send, so every record is on time.
    fn legal_steps(records: &[Rec], worker: usize, peers: usize, epoch_every: usize) -> Vec<Step> {
        // Routed by id, not by key, so that the join's exchange has work to do.
        let mine: Vec<&Rec> = records
            .iter()
            .filter(|r| (r.id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % peers == worker)
            .collect();
        let mut suffix_min = vec![u64::MAX; mine.len() + 1];
        for i in (0..mine.len()).rev() {
            suffix_min[i] = suffix_min[i + 1].min(mine[i].event);
        }
        mine.iter()
            .enumerate()
            .map(|(i, r)| (Time::new((i / epoch_every) as u64, suffix_min[i]), Some((*r).clone())))
            .collect()
    }

    /// A random case: several keys, event times with bounded disorder and
    /// many duplicates, and a delta small against the event-time span.
    fn case(seed: u64) -> (Vec<Rec>, Vec<Rec>, u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let keys = rng.random_range(1..=5);
        let disorder = rng.random_range(0..=30);
        let delta = rng.random_range(0..=12);
        let mut side = |first_id: u64| {
            let n = rng.random_range(50..250);
            (0..n)
                .map(|i| {
                    let event = 1_000 + i * 3 / 2 + rng.random_range(0..=disorder);
                    rec(first_id + i, &format!("k{}", rng.random_range(0..keys)), event)
                })
                .collect::<Vec<_>>()
        };
        let left = side(0);
        let right = side(1_000_000);
        (left, right, delta)
    }

    /// The sequential model: every pair with equal keys within delta.
    fn oracle(left: &[Rec], right: &[Rec], delta: u64) -> Vec<(u64, u64)> {
        let mut pairs: Vec<(u64, u64)> = left
            .iter()
            .flat_map(|l| {
                right
                    .iter()
                    .filter(move |r| l.key == r.key && l.event.abs_diff(r.event) <= delta)
                    .map(move |r| (l.id, r.id))
            })
            .collect();
        pairs.sort();
        pairs
    }

    #[test]
    fn matches_sequential_oracle_on_1_2_4_workers() {
        // Seeds whose 1-worker run evicted while both inputs were open.
        let mut seeds_with_evictions_before_the_end = 0;
        for seed in 0..40 {
            let (left, right, delta) = case(seed);
            let expected = oracle(&left, &right, delta);
            let per_activation = 1 + seed as usize % 4;
            let epoch_every = 3 + seed as usize % 7;
            for workers in [1, 2, 4] {
                let (l, r) = (left.clone(), right.clone());
                let out = run(workers, delta, Vec::new(), move |index, peers| {
                    (
                        legal_steps(&l, index, peers, epoch_every),
                        legal_steps(&r, index, peers, epoch_every),
                        per_activation,
                    )
                });
                let what = format!("seed {seed}, {workers} workers, delta {delta}");
                if workers == 1 && out.evicted_while_open > 0 {
                    seeds_with_evictions_before_the_end += 1;
                }
                assert_eq!(out.pairs, expected, "{what}");
                assert_eq!(out.mistimed, vec![], "{what}");
                let s = &out.stats;
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                assert_eq!(get(&s.pairs), expected.len() as u64, "{what}");
                assert_eq!((get(&s.left), get(&s.right)), (left.len() as u64, right.len() as u64));
                assert_eq!((get(&s.late), get(&s.unstamped), get(&s.restored)), (0, 0, 0), "{what}");
                // Once both inputs end, all state goes.
                assert_eq!(get(&s.evicted), (left.len() + right.len()) as u64, "{what}");
                assert_eq!((get(&s.live), get(&s.live_keys)), (0, 0), "{what}");
            }
        }
        // Frontier-driven eviction really ran (on more workers, progress takes
        // longer to travel, and the first source often ends before it does).
        assert!(
            seeds_with_evictions_before_the_end >= 30,
            "{seeds_with_evictions_before_the_end}"
        );
    }

    #[test]
    fn records_exactly_delta_apart_are_kept_and_joined() {
        let delta = 10;
        // The stored side: one record at 100, then its input ends.
        let stored = vec![(Time::new(0, 100), Some(rec(1, "a", 100)))];
        // The probing side: 90 (= 100 - delta); then its frontier held at
        // exactly 110 (= 100 + delta) for a while, which must not evict 1;
        // then 110, which joins, and 111, which does not.
        let mut probing = vec![(Time::new(0, 90), Some(rec(2, "a", 90)))];
        probing.extend((0..8).map(|_| (Time::new(1, 110), None)));
        probing.push((Time::new(1, 110), Some(rec(3, "a", 110))));
        probing.push((Time::new(1, 110), Some(rec(4, "a", 111))));
        for swap in [false, true] {
            for workers in [1, 2] {
                let (stored, probing) = (stored.clone(), probing.clone());
                let out = run(workers, delta, Vec::new(), move |index, _| match (index, swap) {
                    (0, false) => (stored.clone(), probing.clone(), 1),
                    (0, true) => (probing.clone(), stored.clone(), 1),
                    _ => (Vec::new(), Vec::new(), 1),
                });
                let expected = if swap {
                    vec![(2, 1), (3, 1)]
                } else {
                    vec![(1, 2), (1, 3)]
                };
                assert_eq!(out.pairs, expected, "swap {swap}, {workers} workers");
                assert_eq!(out.mistimed, vec![]);
                assert_eq!(out.stats.evicted.load(Ordering::Relaxed), 4);
            }
        }
    }

    /// Event times in µs, as Kraken sends them: with Δ = 20 ms, pairs exactly
    /// Δ apart and Δ − 1 µs apart join, Δ + 1 µs apart do not (a join that
    /// compared milliseconds would also pair up to Δ + 999 µs).
    #[test]
    fn microsecond_event_times_pair_within_exactly_delta() {
        let t = 1_695_628_177_708_706u64;
        let delta = 20_000;
        let left = vec![(Time::new(0, t), Some(rec(1, "BTC/USD", t)))];
        let right: Vec<Step> = [
            (2, t + delta - 1),
            (3, t + delta),
            (4, t + delta + 1),
            (5, t - delta - 1),
            (6, t - delta),
            (7, t - delta + 1),
            (8, t + delta + 999),
        ]
        .into_iter()
        .map(|(id, event)| (Time::new(0, t - delta - 1), Some(rec(id, "BTC/USD", event))))
        .collect();
        for workers in [1, 2, 4] {
            let (l, r) = (left.clone(), right.clone());
            let out = run(workers, delta, Vec::new(), move |index, _| {
                if index == 0 {
                    (l.clone(), r.clone(), 2)
                } else {
                    (Vec::new(), Vec::new(), 1)
                }
            });
            assert_eq!(out.pairs, vec![(1, 2), (1, 3), (1, 6), (1, 7)], "{workers} workers");
        }
    }

    #[test]
    fn restore_reinserts_without_pairs_and_later_records_join_it() {
        let at = |r: Rec, stamp: Time| Rec { stamp, ..r };
        // The states of two workers of an earlier run. Restored records would
        // pair (1 with 2, 3 with 4), but those pairs were emitted back then.
        let mut a = JoinState::new();
        a.insert_left(Time::new(2, 100), at(rec(1, "a", 100), Time::new(2, 100)));
        a.insert_right(Time::new(2, 100), at(rec(2, "a", 105), Time::new(2, 100)));
        let mut b = JoinState::new();
        b.insert_left(Time::new(3, 98), at(rec(3, "b", 100), Time::new(3, 98)));
        b.insert_right(Time::new(1, 99), at(rec(4, "b", 99), Time::new(1, 99)));
        assert_eq!((a.live_records(), a.live_keys()), (2, 2));
        assert_eq!(
            b.left_records().map(|(t, r)| (t, r.id)).collect::<Vec<_>>(),
            vec![(Time::new(3, 98), 3)]
        );
        // Through serde, as a checkpoint would carry them.
        let restore: Vec<JoinState<String, Rec, Rec>> = [a, b]
            .iter()
            .map(|s| serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap())
            .collect();
        for workers in [1, 2, 4] {
            let out = run(workers, 10, restore.clone(), |index, _| {
                if index > 0 {
                    return (Vec::new(), Vec::new(), 1);
                }
                let left = vec![(Time::new(5, 95), Some(rec(11, "b", 95)))];
                let right = vec![(Time::new(5, 103), Some(rec(10, "a", 103)))];
                (left, right, 1)
            });
            assert_eq!(out.pairs, vec![(1, 10), (11, 4)], "{workers} workers");
            assert_eq!(out.mistimed, vec![]);
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            // Each restored record went to exactly one worker.
            assert_eq!(get(&out.stats.restored), 4);
            assert_eq!(get(&out.stats.evicted), 6);
            assert_eq!(get(&out.stats.live), 0);
        }
    }

    #[test]
    fn late_records_are_counted_and_still_joined() {
        let out = run(1, 10, Vec::new(), |_, _| {
            let left = vec![(Time::new(0, 100), Some(rec(1, "a", 100)))];
            // Event 95 under a watermark of 100: late.
            let right = vec![(Time::new(0, 100), Some(rec(2, "a", 95)))];
            (left, right, 1)
        });
        assert_eq!(out.pairs, vec![(1, 2)]);
        assert_eq!(out.stats.late.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn emptied_keys_release_their_slots() {
        let mut side: SideState<String, Rec> = SideState::default();
        for round in 0..3u64 {
            for k in 0..200u64 {
                let key = format!("k{k}");
                let slot = side.slot(&key);
                side.insert(slot, Time::default(), rec(k, &key, round * 1_000 + k));
            }
            assert_eq!((side.len, side.live_keys()), (200, 200));
            let probed: Vec<u64> = side
                .probe(&"k7".to_string(), round * 1_000 + 9, 2)
                .map(|s| s.record.id)
                .collect();
            assert_eq!(probed, vec![7]);
            assert_eq!(side.evict(|event| event < round * 1_000 + 100), 100);
            assert_eq!(side.live_keys(), 100);
            assert_eq!(side.evict(|_| true), 100);
            assert_eq!((side.len, side.live_keys(), side.slots.len()), (0, 0, 0));
        }
        // Slots were reused, not grown.
        assert_eq!(side.keys.len(), 200);
    }
}
