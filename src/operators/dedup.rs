//! Dedup by message identity, exact whatever the timestamps.
//!
//! Exchanges and collectors re-send messages: redundant collectors, producer
//! retries, a Kraken resubscribe snapshot, a feed handler re-sending its
//! buffer after a reconnect. `dedup` passes the first occurrence of each
//! record at once and drops every later one, and **no single record can
//! shorten what it remembers**: a trade dated in the year 3000, or a partition
//! that went idle while the wall clock moved on, never makes it forget.
//!
//! Two kinds of identity ([`DedupId`]):
//!
//! * **Sequenced**: the record is number `seq` of a stream, as both exchanges
//!   number trades per symbol. Per stream, dedup keeps the set of numbers seen
//!   as disjoint ranges `[start, end)`: one range when the feed is complete,
//!   one more per gap. That is exact at any age, in memory proportional to
//!   the streams (symbols) and gaps, not to the messages. A stream with more
//!   than `max_gaps` gaps has its oldest gap closed (its numbers then count
//!   as seen); that is counted in [`DedupStats::gaps_closed`] and logged.
//! * **Id**: an opaque id, for sources without sequences. Dedup remembers a
//!   128-bit fingerprint (xxh3) of each id for `retention` of event time
//!   *as shown by the on-time records it has processed*: late records (which
//!   include trades dated too far into the future) and the wall clock never
//!   move that horizon, so a replay after a quiet spell is still caught.
//!
//! **Which copy is kept.** Records are routed by their stream (or id), and
//! all copies of a record reach their worker in the order they were read.
//! Keyed producers put every copy of a trade in one partition, so the copy
//! kept is the first in Kafka order, the least `(topic, partition, offset)`,
//! on any number of workers and processes, and across restarts.
//!
//! **State in checkpoints** ([`DedupCheckpointed::dedup_checkpointed`]): the
//! sequence ranges as a snapshot per worker (written when they changed in a
//! commit group), the ids as deltas of the ids added per group (live until
//! their retention passes). See [`crate::checkpoint::state`].

use crate::checkpoint::state::{
    StateCheckpoint, StateFile, StateKind, StateStore, StateWrites, restore_snapshots, route,
};
use crate::checkpoint::{Checkpointed, GroupBuffer};
use crate::time::{Time, stamp_time};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

/// The identity a record is deduplicated by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedupId<'a> {
    /// Number `seq` of the stream `stream` (e.g. `binance:BTCUSDT`).
    Sequenced {
        /// The stream: numbers are unique within it.
        stream: &'a str,
        /// The record's number in the stream.
        seq: u64,
    },
    /// An opaque id, remembered for the retention.
    Id(&'a str),
}

impl DedupId<'_> {
    /// What records are routed by: the stream, or the id.
    fn route_key(&self) -> &str {
        match self {
            DedupId::Sequenced { stream, .. } => stream,
            DedupId::Id(id) => id,
        }
    }
}

/// What dedup needs to know about a record.
pub trait DedupKey {
    /// The identity of the record: equal identities are duplicates.
    fn dedup_id(&self) -> DedupId<'_>;
    /// The record's own event time, µs since the Unix epoch.
    fn event_us(&self) -> u64;
    /// Whether the record is late (then its event time moves no retention).
    fn is_late(&self) -> bool {
        false
    }
}

/// Trades are number `trade_id` of the stream `{exchange}:{native symbol}`,
/// the message id without its last part.
impl DedupKey for crate::record::Trade {
    fn dedup_id(&self) -> DedupId<'_> {
        DedupId::Sequenced {
            stream: self.message_id.stream.as_str(),
            seq: self.message_id.trade_id,
        }
    }
    fn event_us(&self) -> u64 {
        self.event_time()
    }
    fn is_late(&self) -> bool {
        self.late
    }
}

/// Counts kept by a dedup operator, shared by all its workers in a process.
#[derive(Debug, Default)]
pub struct DedupStats {
    /// Records passed through (first occurrences).
    pub passed: AtomicU64,
    /// Records dropped as duplicates.
    pub dropped: AtomicU64,
    /// Ids forgotten because their retention passed.
    pub evicted: AtomicU64,
    /// Gaps closed because a stream had more than `max_gaps`.
    pub gaps_closed: AtomicU64,
    /// Gauge: sequenced streams held, over all workers.
    pub streams: AtomicU64,
    /// Gauge: ranges held, over all streams and workers.
    pub ranges: AtomicU64,
    /// Gauge: ids held, over all workers.
    pub ids: AtomicU64,
}

/// How long and how much dedup remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupParams {
    /// Retention of [`DedupId::Id`] ids, µs of event time.
    pub retention_us: u64,
    /// Most gaps kept per sequenced stream.
    pub max_gaps: usize,
}

impl Default for DedupParams {
    fn default() -> Self {
        DedupParams {
            retention_us: 600_000_000,
            max_gaps: 100_000,
        }
    }
}

/// Drops repeated records; see the module docs.
pub trait Dedup<'scope, D> {
    /// Passes the first record of each identity, drops the rest. `stats`
    /// counts both.
    ///
    /// # Examples
    /// ```
    /// use k2::operators::{Dedup, DedupId, DedupKey};
    /// use k2::time::Time;
    /// use timely::dataflow::operators::{Inspect, vec::ToStream};
    ///
    /// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    /// struct Msg(String, u64);
    /// impl DedupKey for Msg {
    ///     fn dedup_id(&self) -> DedupId<'_> { DedupId::Sequenced { stream: &self.0, seq: self.1 } }
    ///     fn event_us(&self) -> u64 { self.1 }
    /// }
    ///
    /// timely::execute_directly(|worker| {
    ///     worker.dataflow::<Time, _, _>(|scope| {
    ///         vec![Msg("a".into(), 1), Msg("b".into(), 1), Msg("a".into(), 1), Msg("a".into(), 2)]
    ///             .to_stream(scope)
    ///             .dedup(Default::default(), Default::default())
    ///             .inspect(|m| assert!(m.0 == "b" || m.1 == 2 || m.1 == 1));
    ///     });
    /// });
    /// ```
    fn dedup(self, params: DedupParams, stats: Arc<DedupStats>) -> Stream<'scope, Time, Vec<D>>;
}

/// Dedup with its state in the job's checkpoints.
pub trait DedupCheckpointed<'scope, D> {
    /// Like [`Dedup::dedup`], and also writes its state per commit group (see
    /// the module docs), registered with the cut of `ckpt`. The state of
    /// `ckpt`'s restore that routes to this worker is loaded first.
    fn dedup_checkpointed(
        self,
        params: DedupParams,
        stats: Arc<DedupStats>,
        ckpt: Checkpointed<'scope>,
    ) -> Stream<'scope, Time, Vec<D>>;
}

impl<'scope, D> Dedup<'scope, D> for Stream<'scope, Time, Vec<D>>
where
    D: DedupKey + timely::ExchangeData,
{
    fn dedup(self, params: DedupParams, stats: Arc<DedupStats>) -> Stream<'scope, Time, Vec<D>> {
        build(self, params, stats, None).0
    }
}

impl<'scope, D> DedupCheckpointed<'scope, D> for Stream<'scope, Time, Vec<D>>
where
    D: DedupKey + timely::ExchangeData,
{
    fn dedup_checkpointed(
        self,
        params: DedupParams,
        stats: Arc<DedupStats>,
        ckpt: Checkpointed<'scope>,
    ) -> Stream<'scope, Time, Vec<D>> {
        let (data, state) = build(self, params, stats, Some(ckpt.state));
        ckpt.cut.register_state(state);
        data
    }
}

/// The hash that routes a stream or id to its worker (see [`crate::hash`]).
pub fn hash_key(key: &str) -> u64 {
    crate::hash::key_hash(key)
}

/// The 128-bit fingerprint an id is remembered by.
fn fingerprint(id: &str) -> u128 {
    crate::hash::fingerprint(id.as_bytes())
}

/// The numbers seen of one sequenced stream, as disjoint `[start, end)` ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqSet {
    ranges: BTreeMap<u64, u64>,
}

impl SeqSet {
    /// Adds `seq`; false if it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        let next = seq.saturating_add(1);
        let mut start = seq;
        if let Some((&s, e)) = self.ranges.range_mut(..=seq).next_back() {
            if seq < *e {
                return false;
            }
            if seq == *e {
                // The common case: the stream goes on where it was.
                start = s;
            }
        }
        // Join the range that starts right after, if any.
        let end = self.ranges.remove(&next).unwrap_or(next);
        self.ranges.insert(start, end);
        true
    }

    /// Whether `seq` was seen.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges.range(..=seq).next_back().is_some_and(|(_, &e)| seq < e)
    }

    /// Closes the oldest gaps until at most `max_gaps` remain; returns how
    /// many were closed.
    pub fn limit_gaps(&mut self, max_gaps: usize) -> usize {
        let mut closed = 0;
        while self.ranges.len() > max_gaps + 1 {
            let (s1, _) = self.ranges.pop_first().expect("ranges");
            let (_, e2) = self.ranges.pop_first().expect("ranges");
            self.ranges.insert(s1, e2);
            closed += 1;
        }
        closed
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when nothing was seen.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds every number of `ranges` (`[start, end)` each): a restore, in
    /// time proportional to the ranges, not to the numbers they hold.
    fn union(&mut self, ranges: &[(u64, u64)]) {
        for &(s, e) in ranges {
            if s >= e {
                continue;
            }
            let (mut start, mut end) = (s, e);
            // A range reaching `s` (or touching it) absorbs it.
            if let Some((&ps, &pe)) = self.ranges.range(..=s).next_back()
                && pe >= s
            {
                start = ps;
                end = end.max(pe);
            }
            // So does every range starting inside or right after it.
            let within: Vec<u64> = self.ranges.range(start..=end).map(|(&k, _)| k).collect();
            for k in within {
                if let Some(ke) = self.ranges.remove(&k) {
                    end = end.max(ke);
                }
            }
            self.ranges.insert(start, end);
        }
    }
}

/// Ids remembered for a retention, by fingerprint.
#[derive(Debug, Default)]
struct IdSet {
    expiry: HashMap<u128, u64, foldhash::fast::RandomState>,
    /// Earliest expiry first.
    order: BinaryHeap<Reverse<(u64, u128)>>,
}

impl IdSet {
    /// Adds `id` to expire at `expiry`; false if it is there already.
    fn insert(&mut self, id: u128, expiry: u64) -> bool {
        match self.expiry.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(expiry);
                self.order.push(Reverse((expiry, id)));
                true
            }
        }
    }

    /// Forgets ids whose expiry is below `horizon`; returns how many.
    fn evict(&mut self, horizon: u64) -> usize {
        let mut n = 0;
        while let Some(&Reverse((expiry, id))) = self.order.peek() {
            if expiry >= horizon {
                break;
            }
            self.order.pop();
            if self.expiry.get(&id) == Some(&expiry) {
                self.expiry.remove(&id);
                n += 1;
            }
        }
        n
    }
}

/// One stream's numbers seen, and its name (shared with the group logs).
#[derive(Default)]
struct StreamSeen {
    name: Rc<str>,
    seen: SeqSet,
}

/// What one worker of a dedup remembers (public for the memory benchmark).
#[derive(Default)]
pub struct DedupState {
    /// What the records processed so far have shown.
    streams: HashMap<Rc<str>, StreamSeen, foldhash::fast::RandomState>,
    /// The streams as of the last commit group written: a snapshot must hold
    /// exactly the numbers of the groups its cut covers, not those of later
    /// groups already processed (a restore from the cut re-reads them).
    committed: HashMap<Rc<str>, SeqSet, foldhash::fast::RandomState>,
    ids: IdSet,
    /// The largest event time of an on-time record seen: the id horizon.
    max_event_us: u64,
}

/// What [`DedupState::observe`] found, and what a checkpoint must log.
#[derive(Debug, Default)]
pub struct Observed {
    /// True for the first occurrence.
    pub first: bool,
    /// A sequence number first seen, with its stream.
    seq: Option<(Rc<str>, u64)>,
    /// An id first seen.
    id: Option<IdEntry>,
    /// Gaps closed and ids evicted on the way.
    closed: usize,
    evicted: usize,
}

impl DedupState {
    /// The state `ckpt` restores, all workers' as one: what the job knew at
    /// the checkpoint's cut, for a reader that deduplicates as the job will
    /// (`k2 query`'s tail). A stream's numbers live on one worker, so this
    /// decides every record as the job does on any number of workers.
    pub fn restored(ckpt: &StateCheckpoint) -> crate::error::Result<DedupState> {
        let mut st = DedupState::default();
        restore(ckpt, 0, 1, &mut st)?;
        Ok(st)
    }

    /// Decides whether `record` is a first occurrence, and remembers it.
    pub fn observe<D: DedupKey>(&mut self, record: &D, params: &DedupParams) -> Observed {
        let mut out = Observed::default();
        match record.dedup_id() {
            DedupId::Sequenced { stream, seq } => {
                let s = match self.streams.get_mut(stream) {
                    Some(s) => s,
                    None => {
                        let name: Rc<str> = Rc::from(stream);
                        self.streams.entry(name.clone()).or_insert(StreamSeen {
                            name,
                            seen: SeqSet::default(),
                        })
                    }
                };
                out.first = s.seen.insert(seq);
                if out.first {
                    out.closed = s.seen.limit_gaps(params.max_gaps);
                    out.seq = Some((s.name.clone(), seq));
                }
            }
            DedupId::Id(id) => {
                // Forget what the retention has passed first, so that the
                // decision depends on the order of the records alone, not on
                // how they were batched.
                out.evicted = self.ids.evict(self.max_event_us.saturating_sub(params.retention_us));
                let expiry = record.event_us().saturating_add(params.retention_us);
                let fp = fingerprint(id);
                out.first = self.ids.insert(fp, expiry);
                if out.first {
                    out.id = Some((hash_key(id), fp, expiry));
                }
            }
        }
        if !record.is_late() {
            self.max_event_us = self.max_event_us.max(record.event_us());
        }
        out
    }

    /// Streams held.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Ids held (for sources without sequence numbers).
    pub fn ids(&self) -> usize {
        self.ids.expiry.len()
    }

    /// Sequence numbers remembered, over all streams (ranges summed).
    pub fn numbers(&self) -> u64 {
        self.streams
            .values()
            .flat_map(|s| s.seen.ranges())
            .map(|(a, b)| b - a)
            .sum()
    }
}

/// An id in a delta file: its routing hash, fingerprint and expiry.
type IdEntry = (u64, u128, u64);

/// A commit group's pending checkpoint work: the numbers and the ids first
/// seen in it.
#[derive(Default)]
struct Group {
    seqs: Vec<(Rc<str>, u64)>,
    ids: Vec<IdEntry>,
}

/// A snapshot entry: a stream and its ranges.
type StreamEntry = (String, Vec<(u64, u64)>);

fn build<'scope, D>(
    stream: Stream<'scope, Time, Vec<D>>,
    params: DedupParams,
    stats: Arc<DedupStats>,
    ckpt: Option<StateCheckpoint>,
) -> (Stream<'scope, Time, Vec<D>>, Stream<'scope, Time, Vec<StateFile>>)
where
    D: DedupKey + timely::ExchangeData,
{
    let scope = stream.scope();
    let (index, peers) = (scope.index(), scope.peers());
    let mut builder = OperatorBuilder::new("Dedup".to_string(), scope);
    let mut input = builder.new_input(stream, Exchange::new(|d: &D| hash_key(d.dedup_id().route_key())));
    let (data_out, data) = builder.new_output::<Vec<D>>();
    let (state_out, state) = builder.new_output::<Vec<StateFile>>();
    let mut data_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<D>>> = OutputBuilder::from(data_out);
    let mut state_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<StateFile>>> = OutputBuilder::from(state_out);

    let mut st = DedupState::default();
    if let Some(ckpt) = &ckpt {
        let restored = restore(ckpt, index, peers, &mut st);
        if let Err(e) = restored {
            panic!("cannot restore dedup state: {e}");
        }
    }
    let mut gauges = update_gauges(&stats, &st, (0, 0, 0));
    // The first group of a run writes a snapshot even if nothing changed, so
    // that the run's snapshots soon retire the older runs' (see checkpoint::state).
    let mut snapshot_written = false;
    let mut groups: Option<GroupBuffer<Group>> = ckpt.as_ref().map(|c| GroupBuffer::new(c.groups));
    let mut writing = StateWrites::default();
    let wake = scope
        .worker()
        .sync_activator_for(builder.operator_info().address.to_vec());

    builder.build(move |_caps| {
        move |frontiers| {
            let frontier = frontiers[0].frontier();
            // In arrival order: `for_each_stamp` sorts messages by stamp with
            // an unstable sort, which may swap two messages of one stamp, and
            // with them which copy of a record comes first.
            input.for_each(|cap, data| {
                let time = stamp_time(cap.stamp().iter());
                let mut data_out = data_out.activate();
                let mut session = data_out.session(&cap);
                // This message's group: one lookup per batch, not per record.
                let mut group = match (groups.as_mut(), time) {
                    (Some(groups), Some(time)) => Some(groups.at(&cap, time, 1)),
                    _ => None,
                };
                let (mut passed, mut dropped, mut closed, mut evicted) = (0, 0, 0, 0);
                {
                    for record in data.drain(..) {
                        let o = st.observe(&record, &params);
                        if o.closed > 0 && closed == 0 {
                            tracing::warn!(
                                max_gaps = params.max_gaps,
                                "dedup: a stream has too many gaps in its sequence numbers; closing the oldest (numbers in them now count as seen)"
                            );
                        }
                        closed += o.closed;
                        evicted += o.evicted;
                        if let Some(g) = group.as_mut() {
                            g.seqs.extend(o.seq);
                            g.ids.extend(o.id);
                        }
                        let first = o.first;
                        if first {
                            passed += 1;
                            session.give(record);
                        } else {
                            dropped += 1;
                        }
                    }
                }
                stats.passed.fetch_add(passed, Ordering::Relaxed);
                stats.dropped.fetch_add(dropped, Ordering::Relaxed);
                stats.gaps_closed.fetch_add(closed as u64, Ordering::Relaxed);
                stats.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
            });
            gauges = update_gauges(&stats, &st, gauges);

            // Write the state of groups the frontier has passed, off the
            // worker thread; report each file once it is durable.
            if let (Some(ckpt), Some(groups)) = (&ckpt, groups.as_mut()) {
                for (group, caps, g) in groups.complete(frontier.iter()) {
                    if !g.seqs.is_empty() || !snapshot_written {
                        snapshot_written = true;
                        for (name, seq) in &g.seqs {
                            let set = st.committed.entry(name.clone()).or_default();
                            set.insert(*seq);
                            set.limit_gaps(params.max_gaps);
                        }
                        let mut entries: Vec<(&str, Vec<(u64, u64)>)> = st
                            .committed
                            .iter()
                            .map(|(s, set)| (&**s, set.ranges().collect()))
                            .collect();
                        entries.sort_unstable();
                        let file = ckpt.file(index, peers, group, StateKind::Snapshot, u64::MAX);
                        let bytes = StateStore::encode(&entries);
                        let write = ckpt
                            .store
                            .write_bytes_in_background(file, bytes, entries.len() as u64, wake.clone());
                        writing.push(caps.clone(), write);
                    }
                    if !g.ids.is_empty() {
                        let max_expiry = g.ids.iter().map(|(_, _, x)| *x).max().unwrap_or(0);
                        let file = ckpt.file(index, peers, group, StateKind::Delta, max_expiry);
                        writing.push(caps, ckpt.store.write_in_background(file, g.ids, wake.clone()));
                    }
                }
                writing.report(|caps, file| state_out.activate().session(caps).give(file));
            }
        }
    });
    (data, state)
}

/// Loads the restored state of this worker (see the module docs).
fn restore(ckpt: &StateCheckpoint, index: usize, peers: usize, st: &mut DedupState) -> crate::error::Result<()> {
    let streams: Vec<StreamEntry> = restore_snapshots(ckpt, index, peers, |s: &String| hash_key(s))?;
    for (stream, ranges) in streams {
        let name: Rc<str> = Rc::from(stream.as_str());
        st.committed.entry(name.clone()).or_default().union(&ranges);
        st.streams
            .entry(name.clone())
            .or_insert(StreamSeen {
                name,
                seen: SeqSet::default(),
            })
            .seen
            .union(&ranges);
    }
    for file in ckpt.restored().filter(|f| f.kind == StateKind::Delta) {
        for (hash, fp, expiry) in ckpt.store.read::<IdEntry>(file)? {
            if route(hash, peers) == index {
                st.ids.insert(fp, expiry);
            }
        }
    }
    Ok(())
}

/// Moves the shared gauges by this worker's change since `before`.
fn update_gauges(stats: &DedupStats, st: &DedupState, before: (usize, usize, usize)) -> (usize, usize, usize) {
    let now = (
        st.streams.len(),
        st.streams.values().map(|s| s.seen.len()).sum::<usize>(),
        st.ids.expiry.len(),
    );
    let mv = |gauge: &AtomicU64, b: usize, a: usize| {
        if a > b {
            gauge.fetch_add((a - b) as u64, Ordering::Relaxed);
        } else if b > a {
            gauge.fetch_sub((b - a) as u64, Ordering::Relaxed);
        }
    };
    mv(&stats.streams, before.0, now.0);
    mv(&stats.ranges, before.1, now.1);
    mv(&stats.ids, before.2, now.2);
    now
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeSet, HashSet};
    use std::sync::Mutex;
    use timely::dataflow::operators::Inspect;
    use timely::dataflow::operators::generic::operator::source;

    /// A test record: a stream and number (or an id), an event time, its
    /// position in the input (the "Kafka order"), and whether it is late.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
    struct Rec {
        stream: String,
        seq: u64,
        /// Sequenced or by id.
        by_id: bool,
        event: u64,
        pos: u64,
        late: bool,
    }
    impl DedupKey for Rec {
        fn dedup_id(&self) -> DedupId<'_> {
            if self.by_id {
                DedupId::Id(&self.stream)
            } else {
                DedupId::Sequenced {
                    stream: &self.stream,
                    seq: self.seq,
                }
            }
        }
        fn event_us(&self) -> u64 {
            self.event
        }
        fn is_late(&self) -> bool {
            self.late
        }
    }

    /// A random input of a few "partitions", each a stream set of its own
    /// (as keyed Kafka partitions are): sequences mostly in order with
    /// re-sends, gaps, very old replays and trades dated far in the future.
    fn input(seed: u64, n: usize) -> Vec<Rec> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let streams = rng.random_range(1..6);
        let mut next = vec![1_000u64; streams];
        let mut out: Vec<Rec> = Vec::new();
        for pos in 0..n as u64 {
            let s = rng.random_range(0..streams);
            let event = 1_000_000 + pos * 1_000;
            let roll = rng.random_range(0..100);
            let seq = if roll < 10 && next[s] > 1_000 {
                // A re-send of a recent one.
                rng.random_range(next[s].saturating_sub(20).max(1_000)..next[s])
            } else if roll < 13 && next[s] > 1_000 {
                // A replay from long ago.
                rng.random_range(1_000..next[s])
            } else if roll < 16 {
                // A gap: some numbers skipped (maybe filled in later).
                next[s] += rng.random_range(2..50);
                next[s] - 1
            } else {
                next[s] += 1;
                next[s] - 1
            };
            let future = rng.random_range(0..100) == 0;
            out.push(Rec {
                stream: format!("s{s}"),
                seq,
                by_id: false,
                event: if future { u64::MAX / 4 } else { event },
                pos,
                late: future,
            });
        }
        out
    }

    /// The sequential model: the first record of each identity, in input order.
    fn oracle(input: &[Rec]) -> Vec<Rec> {
        let mut seen = HashSet::new();
        let mut out: Vec<Rec> = input
            .iter()
            .filter(|r| seen.insert((r.stream.clone(), r.seq, r.by_id)))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// Runs dedup on `workers` threads. Each worker feeds the records of the
    /// streams it "reads" (a partition), in input order, a few per activation.
    fn run(workers: usize, data: Vec<Rec>, params: DedupParams) -> Vec<Rec> {
        run_with(workers, data, params, 3)
    }

    /// [`run`] with `per_activation` records per source activation: with one,
    /// many messages of one stamp queue up at dedup, as they do in a job.
    fn run_with(workers: usize, data: Vec<Rec>, params: DedupParams, per_activation: usize) -> Vec<Rec> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let out2 = out.clone();
        let data = Arc::new(data);
        timely::execute(timely::Config::process(workers), move |worker| {
            let (index, peers) = (worker.index(), worker.peers());
            let mine: Vec<Rec> = data
                .iter()
                .filter(|r| (hash_key(&r.stream) as usize / 7) % peers == index)
                .cloned()
                .collect();
            let out = out2.clone();
            worker.dataflow::<Time, _, _>(|scope| {
                let activator_scope = scope;
                source(scope, "Input", move |cap, info| {
                    let activator = activator_scope.activator_for(info.address);
                    let mut cap = Some(cap);
                    let mut pos = 0;
                    move |output| {
                        if let Some(c) = cap.as_mut() {
                            for _ in 0..per_activation {
                                if pos == mine.len() {
                                    break;
                                }
                                let r = mine[pos].clone();
                                // Workers' stamps differ (as their watermarks
                                // do), so dedup's queue mixes stamps.
                                c.downgrade(&Time::new(r.pos / 200, index as u64));
                                pos += 1;
                                // One message per record: many messages of
                                // one stamp queue up at dedup, as in a job.
                                output.session(&*c).give_container(&mut vec![r]);
                            }
                            if pos == mine.len() {
                                cap = None;
                            } else {
                                activator.activate();
                            }
                        }
                    }
                })
                .dedup(params, Default::default())
                .inspect(move |r: &Rec| out.lock().unwrap().push(r.clone()));
            });
        })
        .unwrap();
        let mut v = out.lock().unwrap().clone();
        v.sort();
        v
    }

    #[test]
    fn matches_the_sequential_oracle_on_1_2_4_workers() {
        for seed in 0..24 {
            let data = input(seed, 400);
            let expected = oracle(&data);
            for workers in [1, 2, 4] {
                let per_activation = [1, 3, 64][seed as usize % 3];
                assert_eq!(
                    run_with(workers, data.clone(), DedupParams::default(), per_activation),
                    expected,
                    "seed {seed}, {workers} workers"
                );
            }
        }
    }

    #[test]
    fn no_timestamp_makes_it_forget() {
        // A trade of the year 3000 (flagged late by the source), then a quiet
        // spell, then a replay of everything: every replayed copy is dropped.
        let mut data: Vec<Rec> = (0..50)
            .map(|i| Rec {
                stream: "binance:BTCUSDT".into(),
                seq: 100 + i,
                by_id: false,
                event: 1_000_000 + i,
                pos: i,
                late: false,
            })
            .collect();
        data.push(Rec {
            stream: "binance:BTCUSDT".into(),
            seq: 150,
            by_id: false,
            event: 32_503_680_000_000_000,
            pos: 50,
            late: true,
        });
        let replay: Vec<Rec> = data
            .iter()
            .map(|r| Rec {
                pos: r.pos + 1_000,
                ..r.clone()
            })
            .collect();
        data.extend(replay);
        let got = run(
            1,
            data.clone(),
            DedupParams {
                retention_us: 1,
                max_gaps: 10,
            },
        );
        assert_eq!(got.len(), 51);
        assert!(got.iter().all(|r| r.pos < 1_000), "a replayed copy passed");
    }

    #[test]
    fn ids_are_kept_for_the_retention_of_on_time_event_time() {
        let rec = |id: &str, event: u64, pos: u64, late: bool| Rec {
            stream: id.into(),
            seq: 0,
            by_id: true,
            event,
            pos,
            late,
        };
        let data = vec![
            rec("a", 0, 0, false),
            // Far in the future but late: it moves no horizon.
            rec("z", 1_000_000, 1, true),
            rec("a", 5, 2, false),
            rec("b", 50, 3, false),
            // The on-time horizon is now 50 - 10 = 40 > a's expiry 10.
            rec("a", 60, 4, false),
        ];
        let got: Vec<(String, u64)> = run(
            1,
            data,
            DedupParams {
                retention_us: 10,
                max_gaps: 10,
            },
        )
        .into_iter()
        .map(|r| (r.stream, r.pos))
        .collect();
        let got: BTreeSet<(String, u64)> = got.into_iter().collect();
        let want: BTreeSet<(String, u64)> = [("a", 0), ("z", 1), ("b", 3), ("a", 4)]
            .iter()
            .map(|(s, p)| (s.to_string(), *p))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn sequence_sets_are_exact_and_bounded() {
        let mut s = SeqSet::default();
        let mut model = BTreeSet::new();
        let mut rng = SmallRng::seed_from_u64(5);
        for _ in 0..20_000 {
            let x = rng.random_range(0..3_000u64);
            assert_eq!(s.insert(x), model.insert(x), "{x}");
        }
        for x in 0..3_100 {
            assert_eq!(s.contains(x), model.contains(&x), "{x}");
        }
        // Gaps: 0, 2, 4, ... 18 are 10 ranges; keep at most 3 gaps.
        let mut g = SeqSet::default();
        for x in (0..20).step_by(2) {
            g.insert(x);
        }
        assert_eq!(g.len(), 10);
        assert_eq!(g.limit_gaps(3), 6);
        assert_eq!(
            g.ranges().collect::<Vec<_>>(),
            vec![(0, 13), (14, 15), (16, 17), (18, 19)]
        );
        assert!(g.contains(5), "a closed gap counts as seen");
        let mut u = SeqSet::default();
        u.union(&[(5, 9), (20, 22)]);
        u.union(&[(8, 12)]);
        assert_eq!(u.ranges().collect::<Vec<_>>(), vec![(5, 12), (20, 22)]);
    }

    /// A union of ranges holds what inserting their numbers one by one does.
    #[test]
    fn seq_set_union_equals_inserting_every_number() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..500 {
            let (mut by_range, mut by_number) = (SeqSet::default(), SeqSet::default());
            for _ in 0..rng.random_range(1..6) {
                let ranges: Vec<(u64, u64)> = (0..rng.random_range(0..6))
                    .map(|_| {
                        let s = rng.random_range(0..60);
                        (s, s + rng.random_range(0..12))
                    })
                    .collect();
                by_range.union(&ranges);
                for &(s, e) in &ranges {
                    (s..e).for_each(|x| {
                        by_number.insert(x);
                    });
                }
                assert_eq!(by_range, by_number, "after {ranges:?}");
            }
        }
    }
}
