//! Dedup by key, with a time-to-live in event time.
//!
//! Exchanges and collectors re-send messages (redundant collectors, producer
//! retries). `dedup` passes the first occurrence of each key through at once
//! and drops a repeat whose event time is within the TTL of the first one's.
//! The decision depends on the records only, so every run and every number of
//! workers decides alike. A key is forgotten once the input frontier's event
//! time passes the first occurrence's event time plus the TTL: an on-time
//! record from then on is no repeat within the TTL (see [`crate::time`]).
//!
//! Records are routed to workers by a hash of the key, so all occurrences of a
//! key meet at one worker whatever the number of workers.
//!
//! With [`DedupCheckpointed::dedup_checkpointed`] the state is part of the
//! job's checkpoints as deltas (see [`crate::checkpoint::state`]): the keys
//! first seen in a commit group are written when the frontier passes the
//! group, and the cut cannot commit before they are.

use crate::checkpoint::state::{BackgroundWrite, StateCheckpoint, StateFile, StateStore, route};
use crate::time::{Time, epoch_complete, event_frontier, stamp_time};
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::CapabilitySet;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

/// What dedup needs to know about a record.
pub trait DedupKey {
    /// The identity of the record: equal keys are duplicates.
    fn dedup_key(&self) -> &str;
    /// The record's own event time, ms since the Unix epoch.
    fn event_ms(&self) -> u64;
}

impl DedupKey for crate::record::Trade {
    fn dedup_key(&self) -> &str {
        &self.message_id
    }
    fn event_ms(&self) -> u64 {
        (self.event_us.max(0) / 1000) as u64
    }
}

/// Counts kept by a dedup operator, shared by all its workers in a process.
#[derive(Debug, Default)]
pub struct DedupStats {
    /// Records passed through (first occurrences).
    pub passed: AtomicU64,
    /// Records dropped as duplicates.
    pub dropped: AtomicU64,
    /// Keys forgotten because their TTL passed.
    pub evicted: AtomicU64,
}

/// Drops repeated records, remembering keys for `ttl_ms` of event time.
pub trait Dedup<'scope, D> {
    /// Passes the first record of each key, drops the rest. `stats` counts both.
    ///
    /// # Examples
    /// ```
    /// use k2::operators::{Dedup, DedupKey};
    /// use k2::time::Time;
    /// use timely::dataflow::operators::{Inspect, vec::ToStream};
    ///
    /// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    /// struct Msg(String, u64);
    /// impl DedupKey for Msg {
    ///     fn dedup_key(&self) -> &str { &self.0 }
    ///     fn event_ms(&self) -> u64 { self.1 }
    /// }
    ///
    /// timely::execute_directly(|worker| {
    ///     worker.dataflow::<Time, _, _>(|scope| {
    ///         vec![Msg("a".into(), 1), Msg("b".into(), 2), Msg("a".into(), 3)]
    ///             .to_stream(scope)
    ///             .dedup(60_000, Default::default())
    ///             .inspect(|m| assert_ne!((m.0.as_str(), m.1), ("a", 3)));
    ///     });
    /// });
    /// ```
    fn dedup(self, ttl_ms: u64, stats: Arc<DedupStats>) -> Stream<'scope, Time, Vec<D>>;
}

/// The stable hash that routes a key to its worker: the same in every
/// process of a cluster (a fixed seed), and fast (foldhash).
pub fn hash_key(key: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0x6b32_5f64_6564_7570).hash_one(key)
}

/// Dedup with its state in the job's checkpoints.
pub trait DedupCheckpointed<'scope, D> {
    /// Like [`Dedup::dedup`], and also writes, at the end of each commit group,
    /// the keys added in it as a state delta; the second stream reports the
    /// deltas to the committer. Keys of `ckpt.restore` whose hash routes to
    /// this worker are loaded first.
    fn dedup_checkpointed(
        self,
        ttl_ms: u64,
        stats: Arc<DedupStats>,
        ckpt: StateCheckpoint,
    ) -> (Stream<'scope, Time, Vec<D>>, Stream<'scope, Time, Vec<StateFile>>);
}

impl<'scope, D> Dedup<'scope, D> for Stream<'scope, Time, Vec<D>>
where
    D: DedupKey + timely::ExchangeData,
{
    fn dedup(self, ttl_ms: u64, stats: Arc<DedupStats>) -> Stream<'scope, Time, Vec<D>> {
        build(self, ttl_ms, stats, None).0
    }
}

impl<'scope, D> DedupCheckpointed<'scope, D> for Stream<'scope, Time, Vec<D>>
where
    D: DedupKey + timely::ExchangeData,
{
    fn dedup_checkpointed(
        self,
        ttl_ms: u64,
        stats: Arc<DedupStats>,
        ckpt: StateCheckpoint,
    ) -> (Stream<'scope, Time, Vec<D>>, Stream<'scope, Time, Vec<StateFile>>) {
        build(self, ttl_ms, stats, Some(ckpt))
    }
}

/// One checkpointed entry: a key and the event time at which it expires.
type Entry = (String, u64);

/// A key held once and shared by the map, the expiry index and the delta.
type Key = Rc<str>;

/// Keys added in one commit group, with the capability to report them.
type Delta = (CapabilitySet<Time>, Vec<(Key, u64)>);

fn build<'scope, D>(
    stream: Stream<'scope, Time, Vec<D>>,
    ttl_ms: u64,
    stats: Arc<DedupStats>,
    ckpt: Option<StateCheckpoint>,
) -> (Stream<'scope, Time, Vec<D>>, Stream<'scope, Time, Vec<StateFile>>)
where
    D: DedupKey + timely::ExchangeData,
{
    let scope = stream.scope();
    let (index, peers) = (scope.index(), scope.peers());
    let mut builder = OperatorBuilder::new("Dedup".to_string(), scope);
    let mut input = builder.new_input(stream, Exchange::new(|d: &D| hash_key(d.dedup_key())));
    let (data_out, data) = builder.new_output::<Vec<D>>();
    let (state_out, state) = builder.new_output::<Vec<StateFile>>();
    let mut data_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<D>>> = OutputBuilder::from(data_out);
    let mut state_out: OutputBuilder<Time, CapacityContainerBuilder<Vec<StateFile>>> = OutputBuilder::from(state_out);

    // key -> expiry (event ms); expiry -> keys, for eviction in order.
    let mut seen: HashMap<Key, u64, foldhash::fast::RandomState> = HashMap::default();
    let mut expiries: BTreeMap<u64, Vec<Key>> = BTreeMap::new();
    if let Some(ckpt) = &ckpt {
        for file in ckpt.restore.iter().filter(|f| f.operator == ckpt.operator) {
            let entries: Vec<Entry> = match ckpt.store.read(file) {
                Ok(e) => e,
                Err(e) => panic!("cannot restore dedup state: {e}"),
            };
            for (key, expiry) in entries {
                if route(hash_key(&key), peers) == index && !seen.contains_key(key.as_str()) {
                    let key: Key = key.into();
                    expiries.entry(expiry).or_default().push(key.clone());
                    seen.insert(key, expiry);
                }
            }
        }
    }
    // Keys added per commit group, with capabilities to report their delta.
    let mut deltas: BTreeMap<u64, Delta> = BTreeMap::new();

    // Deltas being written, with the capabilities to report them.
    let mut writing: Vec<(CapabilitySet<Time>, BackgroundWrite)> = Vec::new();
    let wake = scope
        .worker()
        .sync_activator_for(builder.operator_info().address.to_vec());

    builder.build(move |_caps| {
        move |frontiers| {
            let frontier = frontiers[0].frontier();
            input.for_each_stamp(|cap, data| {
                let time = stamp_time(cap.stamp().iter());
                let mut data_out = data_out.activate();
                let mut session = data_out.session(&cap);
                // This stamp's delta: one lookup per batch, not per record.
                let mut delta = match (&ckpt, time) {
                    (Some(ckpt), Some(time)) => {
                        let delta = deltas
                            .entry(ckpt.groups.group_of(time.epoch))
                            .or_insert_with(|| (CapabilitySet::new(), Vec::new()));
                        if delta.1.is_empty() {
                            delta.0.insert(cap.delayed(&time, 1));
                        }
                        Some(&mut delta.1)
                    }
                    _ => None,
                };
                let (mut passed, mut dropped) = (0, 0);
                for batch in data {
                    for record in batch.drain(..) {
                        let event = record.event_ms();
                        let expiry = event.saturating_add(ttl_ms);
                        // A repeat within the TTL of the first occurrence, in
                        // event time: decided by the records alone, never by
                        // how far the frontier happens to have moved.
                        let key = match seen.entry(record.dedup_key().into()) {
                            MapEntry::Occupied(e) if event <= *e.get() => {
                                dropped += 1;
                                continue;
                            }
                            MapEntry::Occupied(mut e) => {
                                e.insert(expiry);
                                e.key().clone()
                            }
                            MapEntry::Vacant(v) => {
                                let key = v.key().clone();
                                v.insert(expiry);
                                key
                            }
                        };
                        if let Some(delta) = delta.as_mut() {
                            delta.push((key.clone(), expiry));
                        }
                        expiries.entry(expiry).or_default().push(key);
                        passed += 1;
                        session.give(record);
                    }
                }
                stats.passed.fetch_add(passed, Ordering::Relaxed);
                stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            });
            // Write the deltas of groups the frontier has passed, off the
            // worker thread; report each once it is durable.
            if let Some(ckpt) = &ckpt {
                while let Some(entry) = deltas.first_entry() {
                    if !epoch_complete(frontier.iter(), *entry.key()) {
                        break;
                    }
                    let (group, (caps, entries)) = entry.remove_entry();
                    if entries.is_empty() {
                        continue; // Only repeats in this group: nothing to keep.
                    }
                    let max_expiry = entries.iter().map(|(_, x)| *x).max().unwrap_or(0);
                    // Encoded here, from the shared keys (no copy of each); the
                    // file write and fsync go to a thread of their own.
                    let rows: Vec<(&str, u64)> = entries.iter().map(|(k, x)| (&**k, *x)).collect();
                    let write = ckpt.store.write_encoded_in_background(
                        &ckpt.operator,
                        index,
                        group,
                        &ckpt.run_id,
                        StateStore::encode(&rows),
                        rows.len() as u64,
                        max_expiry,
                        wake.clone(),
                    );
                    writing.push((caps, write));
                }
                writing.retain(|(caps, write)| match write.done() {
                    Some(file) => {
                        state_out.activate().session(caps).give(file);
                        false
                    }
                    None => true,
                });
            }
            // Forget keys whose expiry the event-time frontier has passed: an
            // on-time record from now on has a later event time, so it would
            // not be a repeat within the TTL anyway.
            let horizon = event_frontier(frontier.iter());
            while let Some(entry) = expiries.first_entry() {
                if *entry.key() >= horizon {
                    break;
                }
                let (expiry, keys) = entry.remove_entry();
                for k in keys {
                    // The key may have been seen again since, with a later expiry.
                    if seen.get(&k) == Some(&expiry) {
                        seen.remove(&k);
                        stats.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    (data, state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;
    use std::sync::Mutex;
    use timely::dataflow::operators::Inspect;
    use timely::dataflow::operators::generic::operator::source;

    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
    struct Rec {
        key: String,
        event: u64,
        seq: u64,
    }
    impl DedupKey for Rec {
        fn dedup_key(&self) -> &str {
            &self.key
        }
        fn event_ms(&self) -> u64 {
            self.event
        }
    }

    /// A random input: keys from a small space (so duplicates are common),
    /// split into per-worker batches at increasing times.
    fn input(seed: u64, n: usize) -> Vec<(Time, Rec)> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let keys = rng.random_range(1..n as u64 / 2 + 2);
        (0..n as u64)
            .map(|seq| {
                let t = Time::new(seq / 7, seq);
                (
                    t,
                    Rec {
                        key: format!("k{}", rng.random_range(0..keys)),
                        event: seq,
                        seq,
                    },
                )
            })
            .collect()
    }

    /// The sequential model: the first record of each key, in input order.
    fn oracle(input: &[(Time, Rec)]) -> Vec<Rec> {
        let mut seen = HashSet::new();
        let mut out: Vec<Rec> = input
            .iter()
            .filter(|(_, r)| seen.insert(r.key.clone()))
            .map(|(_, r)| r.clone())
            .collect();
        out.sort();
        out
    }

    /// Runs dedup on `workers` threads. Each worker feeds the records whose
    /// key hashes to it, in input order, so "first" is well defined whatever
    /// the routing: this mirrors Kafka, where one key stays in one partition.
    fn run(workers: usize, data: Vec<(Time, Rec)>, ttl: u64) -> Vec<Rec> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let out2 = out.clone();
        let data = Arc::new(data);
        timely::execute(timely::Config::process(workers), move |worker| {
            let (index, peers) = (worker.index(), worker.peers());
            let mine: Vec<(Time, Rec)> = data
                .iter()
                .filter(|(_, r)| (hash_key(&r.key) as usize / 3) % peers == index)
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
                            // A few records per activation, to interleave with other workers.
                            for _ in 0..3 {
                                if pos == mine.len() {
                                    break;
                                }
                                let (t, r) = mine[pos].clone();
                                c.downgrade(&t);
                                pos += 1;
                                if r.key.is_empty() {
                                    // A pause: let progress reach dedup before going on.
                                    break;
                                }
                                output.session(&*c).give(r);
                            }
                            if pos == mine.len() {
                                cap = None;
                            } else {
                                activator.activate();
                            }
                        }
                    }
                })
                .dedup(ttl, Default::default())
                .inspect(move |r: &Rec| out.lock().unwrap().push(r.clone()));
            });
        })
        .unwrap();
        let mut v = out.lock().unwrap().clone();
        v.sort();
        v
    }

    #[test]
    fn matches_sequential_oracle_on_1_2_4_workers() {
        for seed in 0..24 {
            let data = input(seed, 300);
            let expected = oracle(&data);
            for workers in [1, 2, 4] {
                assert_eq!(
                    run(workers, data.clone(), u64::MAX / 2),
                    expected,
                    "seed {seed}, {workers} workers"
                );
            }
        }
    }

    #[test]
    fn keys_are_forgotten_after_the_ttl() {
        // Empty keys are pauses in the input (see `run`).
        // "a" at event 0 with a TTL of 10 is forgotten once the frontier's
        // event time reaches 10, so "a" at event 50 passes again; "b" repeats
        // within its TTL and is dropped.
        let rec = |key: &str, event| Rec {
            key: key.into(),
            event,
            seq: event,
        };
        let data = vec![
            (Time::new(0, 0), rec("a", 0)),
            (Time::new(0, 0), rec("b", 0)),
            (Time::new(1, 5), rec("b", 5)),
        ];
        let mut data = data;
        data.extend((0..5).map(|_| (Time::new(2, 50), rec("", 50))));
        data.push((Time::new(2, 50), rec("a", 50)));
        let got: Vec<(String, u64)> = run(1, data, 10).into_iter().map(|r| (r.key, r.event)).collect();
        assert_eq!(got, vec![("a".into(), 0), ("a".into(), 50), ("b".into(), 0)]);
    }
}
