//! Keyed event-time windows: tumbling and hopping, one result per key and
//! window, exactly once.
//!
//! `window` groups records by a key and by the event-time windows their
//! event time falls in, folds each group with an [`Aggregate`], and emits
//! each (key, window) result **once**, as soon as the input's event-time
//! frontier has passed the window's end: then no on-time record of it can
//! still come (see [`crate::time`]). The decisions below are what exactly
//! once, determinism on any number of workers, and restores need.
//!
//! * **Late records go to their own output, decided without the clock.** A
//!   record is late when its source flagged it ([`EventTime::is_late`]) or
//!   when its event time is below the event part of its own timestamp. Such
//!   a record may belong to a window already emitted; it is passed, untouched
//!   and at its own time, to the late output, for the caller to route by the
//!   job's late policy. Any record whose window has closed is caught: the
//!   frontier never passes a message in flight, so the frontier's event part
//!   is at most the record's timestamp's. Deciding "late" from the frontier
//!   *at arrival* instead would depend on how fast progress travelled, and
//!   so on scheduling; the timestamp rule gives the same answer on 1 worker
//!   and on 4, before and after a restart.
//! * **Results are stamped from their records, not from the moment they close.**
//!   The result of a window ending at `E` is stamped at the lattice join of
//!   its records' times and of `(floor(E), E - 1)`:
//!   - the join makes its epoch at least every record's epoch, so a cut never
//!     holds a result without all of its records (this is why the interval
//!     join stamps a pair at the join of its halves), and the stamp is a
//!     function of the input's timestamps only, never of scheduling;
//!   - the event part `E - 1` is the result's own event time for a
//!     downstream window (see [`Windowed`]), so 1-minute results are on time
//!     for a 1-hour roll-up;
//!   - `floor(E)` is the epoch in which the wall clock reaches `E` plus the
//!     expected close delay, by the job's epoch rule ([`EpochClock`]), or 0.
//!     The operator holds a capability at its results' stamps until the
//!     windows close, and a held epoch holds the job's cut. Without the
//!     floor, a key with one trade early in an hour would hold every cut of
//!     the job for that hour; with it, live windows hold only the epochs
//!     from their expected close on, and a backfill (event time far behind
//!     the clock) only until the watermark passes them, which is quick.
//! * **The end of a run closes only what the sources' watermarks close.** A
//!   run never ends the input (see [`crate::stop`]): once every source's run
//!   is over, the frontier is at [`crate::time::STOPPED`], holding their last
//!   watermarks, and the operator closes the windows below those one last
//!   time; the rest stay in the last snapshot, and the next run emits them
//!   exactly once ([`crate::time::event_progress`]). Nothing closes on a
//!   frontier seen after that, nor on an input that ends without `STOPPED`.
//!
//! **Checkpoints** ([`WindowCheckpointed::window_checkpointed`]). The state
//! is the live aggregates per (key, window), never the records: one
//! [`StateKind::Snapshot`] per worker and commit group in which it changed
//! (and at the first group of a run), restored onto any number of workers by
//! [`restore_snapshots`]. A snapshot holds the state *exactly as of the end
//! of its group*: the aggregates of the records of groups up to it, without
//! those of later groups already processed, and every window whose result is
//! stamped after the group, even if it was already emitted (a restore from
//! that cut re-reads the later records and re-emits those windows). To know
//! that, a group is written only once its input epochs are complete *and*
//! no open window could still be stamped in it. Restored windows are
//! stamped no earlier than the run's first epoch.
//!
//! **Aggregates** must not depend on the order records are added in (and
//! merges on the order states are merged in): records reach a worker in an
//! order that depends on scheduling.

use crate::checkpoint::Checkpointed;
use crate::checkpoint::state::{BackgroundWrite, StateCheckpoint, StateFile, StateKind, StateStore, restore_snapshots};
use crate::operators::interval_join::key_hash;
use crate::time::{EventProgress, Time, epoch_complete, event_progress, stamp_time};
use differential_dataflow::lattice::Lattice;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::{Capability, CapabilitySet, InputCapability};

pub mod bars;
#[cfg(test)]
mod tests;

/// The shape of the windows: `size_us` long, one starting every `slide_us`,
/// aligned to the Unix epoch (a window starts at every multiple of the
/// slide). Tumbling windows are those with `slide_us == size_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Windows {
    size_us: u64,
    slide_us: u64,
}

impl Windows {
    /// Back-to-back windows of `size_us` µs (> 0).
    pub fn tumbling(size_us: u64) -> crate::error::Result<Windows> {
        Windows::hopping(size_us, size_us)
    }

    /// Windows of `size_us` µs starting every `slide_us` µs, with
    /// `0 < slide_us <= size_us`: each record is in `size / slide` of them
    /// (rounded up or down).
    pub fn hopping(size_us: u64, slide_us: u64) -> crate::error::Result<Windows> {
        if size_us == 0 || slide_us == 0 || slide_us > size_us {
            return Err(crate::error::Error::Other(format!(
                "windows of {size_us} µs sliding by {slide_us} µs: the size and the slide must be positive, \
                 and the slide at most the size (or some records would be in no window)"
            )));
        }
        Ok(Windows { size_us, slide_us })
    }

    /// The window length, µs.
    pub fn size_us(&self) -> u64 {
        self.size_us
    }

    /// The distance between window starts, µs.
    pub fn slide_us(&self) -> u64 {
        self.slide_us
    }

    /// The starts of the windows that hold event time `event_us`, ascending.
    pub fn starts(&self, event_us: u64) -> impl Iterator<Item = u64> + use<> {
        let last = event_us - event_us % self.slide_us;
        let first = match (event_us + 1).checked_sub(self.size_us) {
            Some(lo) if lo > 0 => lo.div_ceil(self.slide_us) * self.slide_us,
            _ => 0,
        };
        (first..=last).step_by(self.slide_us as usize)
    }

    /// The end (exclusive) of the window starting at `start_us`; `u64::MAX`
    /// if it would be beyond (such a window never closes).
    pub fn end(&self, start_us: u64) -> u64 {
        start_us.saturating_add(self.size_us)
    }
}

/// The job's epoch rule, `epoch = wall-clock ms / epoch_ms` (see
/// [`crate::source::kafka::reader`]), and how long after its end a window
/// is expected to close: together they give the earliest epoch a result is
/// stamped at (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochClock {
    /// The job's epoch length, ms (`job.epoch_ms`).
    pub epoch_ms: u64,
    /// How long after a window's end the watermark usually passes it, µs:
    /// the source's allowed out-of-orderness, plus transport.
    pub close_delay_us: u64,
}

impl EpochClock {
    /// The epoch in which the wall clock reads `end_us + close_delay_us`.
    pub fn close_epoch(&self, end_us: u64) -> u64 {
        end_us.saturating_add(self.close_delay_us) / 1_000 / self.epoch_ms.max(1)
    }
}

/// What a window operator computes.
#[derive(Clone, Debug)]
pub struct WindowParams {
    /// The windows.
    pub windows: Windows,
    /// The stamp floor of results (module docs); `None` stamps results at
    /// the join of their records' times alone.
    pub clock: Option<EpochClock>,
}

impl WindowParams {
    /// `windows`, without a stamp floor.
    pub fn new(windows: Windows) -> Self {
        WindowParams { windows, clock: None }
    }

    /// With the stamp floor of `clock`.
    pub fn with_clock(self, clock: EpochClock) -> Self {
        WindowParams {
            clock: Some(clock),
            ..self
        }
    }

    /// The least time a result of the window ending at `end` is stamped at.
    fn floor(&self, end: u64) -> Time {
        Time::new(self.clock.map_or(0, |c| c.close_epoch(end)), end - 1)
    }
}

/// What a window operator needs to know about a record besides its key.
pub trait EventTime {
    /// The record's own event time, µs since the Unix epoch.
    fn event_us(&self) -> u64;
    /// Whether the source flagged the record late.
    fn is_late(&self) -> bool {
        false
    }
}

/// Trades by their exchange event time; late as the source decided.
impl EventTime for crate::record::Trade {
    fn event_us(&self) -> u64 {
        self.event_time()
    }
    fn is_late(&self) -> bool {
        self.late
    }
}

/// A window's result: the key, the window, and the aggregate's output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Windowed<K, O> {
    /// The key.
    pub key: K,
    /// The window's start, µs (inclusive).
    pub start_us: u64,
    /// The window's end, µs (exclusive).
    pub end_us: u64,
    /// The aggregate's output.
    pub value: O,
}

/// A result's event time is the last µs of its window, which is what it is
/// stamped at: it falls in the coarser window that holds the whole window,
/// and it is on time there (a roll-up, e.g. 1-minute bars into 1-hour ones).
impl<K, O> EventTime for Windowed<K, O> {
    fn event_us(&self) -> u64 {
        self.end_us - 1
    }
}

/// What is folded per key and window. The value is the state: each window
/// starts from a clone of the operator's `init`, and snapshots hold it.
///
/// `add` must not depend on the order of records (module docs).
pub trait Aggregate<D>: Clone + Serialize + DeserializeOwned + 'static {
    /// What a closed window emits.
    type Output: 'static;
    /// Adds a record.
    fn add(&mut self, record: &D);
    /// The result of a closed window.
    fn finish(self) -> Self::Output;
}

/// Aggregates whose states combine, the optional part of an aggregate (a
/// trait of its own, so that a roll-up of an aggregate without `merge` does
/// not compile, rather than fail at run time).
///
/// `merge` must be associative and commutative, and merging the states of
/// two sets of records must equal adding both sets to one state.
pub trait Merge {
    /// Adds everything `other` has seen.
    fn merge(&mut self, other: &Self);
}

/// A mergeable aggregate rolls its own results up into coarser windows:
/// 1-minute bars into 1-hour ones, or per-exchange bars into cross-exchange
/// ones (keyed by symbol alone).
impl<K: 'static, A> Aggregate<Windowed<K, A>> for A
where
    A: Merge + Clone + Serialize + DeserializeOwned + 'static,
{
    type Output = A;
    fn add(&mut self, window: &Windowed<K, A>) {
        self.merge(&window.value);
    }
    fn finish(self) -> A {
        self
    }
}

/// What a window key must be: hashed to route (by [`key_hash`], fixed across
/// builds), compared, and kept in snapshots.
pub trait WindowKey: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static {}
impl<K: Hash + Eq + Clone + Serialize + DeserializeOwned + 'static> WindowKey for K {}

/// Counts kept by a window operator, shared by all its workers in a process.
#[derive(Debug, Default)]
pub struct WindowStats {
    /// On-time records added (once each, whatever the number of windows).
    pub records: AtomicU64,
    /// Records passed to the late output.
    pub late: AtomicU64,
    /// Results emitted.
    pub results: AtomicU64,
    /// Windows restored from a checkpoint.
    pub restored: AtomicU64,
    /// Gauge: open windows, over all keys and workers.
    pub open: AtomicU64,
}

/// Streams of a window's results and of its late records.
pub type WindowStreams<'scope, K, O, D> = (Stream<'scope, Time, Vec<Windowed<K, O>>>, Stream<'scope, Time, Vec<D>>);

/// Streams of a window's results and late records, and of its state files.
type AllStreams<'scope, K, O, D> = (
    Stream<'scope, Time, Vec<Windowed<K, O>>>,
    Stream<'scope, Time, Vec<D>>,
    Stream<'scope, Time, Vec<StateFile>>,
);

/// Keyed event-time windows; see the module docs.
pub trait Window<'scope, D> {
    /// Folds the on-time records of each key (`key(record)`) and window into
    /// a clone of `init`, and emits each (key, window) result once, when the
    /// frontier passes the window's end; the second stream has the late
    /// records. Open windows are dropped at the end of the input.
    ///
    /// # Examples
    /// ```
    /// use k2::operators::{Aggregate, EventTime, Window, WindowParams, Windowed, Windows};
    /// use k2::time::Time;
    /// use std::{cell::RefCell, rc::Rc};
    /// use timely::dataflow::operators::{Inspect, Probe, vec::UnorderedInput};
    ///
    /// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    /// struct Tick { symbol: String, us: u64 }
    /// impl EventTime for Tick {
    ///     fn event_us(&self) -> u64 { self.us }
    /// }
    /// /// Counts ticks.
    /// #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
    /// struct Count(u64);
    /// impl Aggregate<Tick> for Count {
    ///     type Output = u64;
    ///     fn add(&mut self, _: &Tick) { self.0 += 1 }
    ///     fn finish(self) -> u64 { self.0 }
    /// }
    /// let tick = |symbol: &str, us| Tick { symbol: symbol.into(), us };
    /// const MINUTE: u64 = 60_000_000;
    ///
    /// let results = timely::execute_directly(move |worker| {
    ///     let out = Rc::new(RefCell::new(Vec::new()));
    ///     let sink = out.clone();
    ///     let (mut input, mut cap, probe) = worker.dataflow::<Time, _, _>(|scope| {
    ///         let ((input, cap), ticks) = scope.new_unordered_input::<Tick>();
    ///         let windows = WindowParams::new(Windows::tumbling(MINUTE).unwrap());
    ///         let (counts, _late) = ticks.window(windows, |t: &Tick| t.symbol.clone(), Count(0), Default::default());
    ///         let (probe, _) = counts.inspect(move |c| sink.borrow_mut().push(c.clone())).probe();
    ///         (input, cap, probe)
    ///     });
    ///     // Epoch 0, watermark 0: three ticks in the first minute, one in the second.
    ///     input.activate().session(&cap).give_iterator(
    ///         [tick("BTC", 5), tick("BTC", 59_999_999), tick("ETH", 7), tick("BTC", MINUTE + 1)].into_iter(),
    ///     );
    ///     // Epoch 1, watermark at the end of the first minute: its windows close.
    ///     cap.downgrade(&Time::new(1, MINUTE));
    ///     worker.step_while(|| probe.less_than(cap.time()));
    ///     // The input ends: the second minute stays open, and is not emitted.
    ///     drop((input, cap));
    ///     while worker.step() {}
    ///     let mut out = out.borrow().clone();
    ///     out.sort();
    ///     out
    /// });
    /// let window = |key: &str, value| Windowed { key: key.to_string(), start_us: 0, end_us: MINUTE, value };
    /// assert_eq!(results, vec![window("BTC", 2), window("ETH", 1)]);
    /// ```
    fn window<K, A, F>(
        self,
        params: WindowParams,
        key: F,
        init: A,
        stats: Arc<WindowStats>,
    ) -> WindowStreams<'scope, K, A::Output, D>
    where
        K: WindowKey,
        A: Aggregate<D>,
        F: Fn(&D) -> K + Clone + 'static;
}

/// Windows with their state in the job's checkpoints.
pub trait WindowCheckpointed<'scope, D> {
    /// Like [`Window::window`], and also writes the open windows per commit
    /// group into the job's cuts (module docs). The windows of the restored
    /// checkpoint that route to this worker are loaded first, and stamped no
    /// earlier than the run's first epoch. Open windows are kept at the end
    /// of a run (the last snapshot holds them), and emitted by the next run.
    ///
    /// Fails if the restored state cannot be read.
    fn window_checkpointed<K, A, F>(
        self,
        params: WindowParams,
        key: F,
        init: A,
        stats: Arc<WindowStats>,
        ckpt: Checkpointed<'scope>,
    ) -> crate::error::Result<WindowStreams<'scope, K, A::Output, D>>
    where
        K: WindowKey,
        A: Aggregate<D>,
        F: Fn(&D) -> K + Clone + 'static;
}

impl<'scope, D> Window<'scope, D> for Stream<'scope, Time, Vec<D>>
where
    D: EventTime + timely::ExchangeData,
{
    fn window<K, A, F>(
        self,
        params: WindowParams,
        key: F,
        init: A,
        stats: Arc<WindowStats>,
    ) -> WindowStreams<'scope, K, A::Output, D>
    where
        K: WindowKey,
        A: Aggregate<D>,
        F: Fn(&D) -> K + Clone + 'static,
    {
        let (results, late, _) = build(self, params, key, init, stats, None, Vec::new());
        (results, late)
    }
}

impl<'scope, D> WindowCheckpointed<'scope, D> for Stream<'scope, Time, Vec<D>>
where
    D: EventTime + timely::ExchangeData,
{
    fn window_checkpointed<K, A, F>(
        self,
        params: WindowParams,
        key: F,
        init: A,
        stats: Arc<WindowStats>,
        ckpt: Checkpointed<'scope>,
    ) -> crate::error::Result<WindowStreams<'scope, K, A::Output, D>>
    where
        K: WindowKey,
        A: Aggregate<D>,
        F: Fn(&D) -> K + Clone + 'static,
    {
        let (results, late, state) = window_with_state(self, params, key, init, stats, ckpt.state, ckpt.first_epoch)?;
        ckpt.cut.register_state(state);
        Ok((results, late))
    }
}

/// [`WindowCheckpointed::window_checkpointed`], returning the state files'
/// stream rather than registering it (for tests of the operator alone).
fn window_with_state<'scope, D, K, A, F>(
    stream: Stream<'scope, Time, Vec<D>>,
    params: WindowParams,
    key: F,
    init: A,
    stats: Arc<WindowStats>,
    ckpt: StateCheckpoint,
    first_epoch: u64,
) -> crate::error::Result<AllStreams<'scope, K, A::Output, D>>
where
    D: EventTime + timely::ExchangeData,
    K: WindowKey,
    A: Aggregate<D>,
    F: Fn(&D) -> K + Clone + 'static,
{
    {
        let scope = stream.scope();
        let restored: Vec<((K, u64), A)> =
            restore_snapshots(&ckpt, scope.index(), scope.peers(), |(k, _): &(K, u64)| key_hash(k))?;
        let restored = restored
            .into_iter()
            .map(|((key, start), state)| {
                let end = params.windows.end(start);
                let time = params.floor(end).join(&Time::new(first_epoch, 0));
                (key, start, time, state)
            })
            .collect();
        Ok(build(stream, params, key, init, stats, Some(ckpt), restored))
    }
}

/// Output ports: results, and state files. (Output 1 has the late records,
/// each sent at its own message's time.)
const DATA: usize = 0;
const STATE: usize = 2;

/// One (key, window)'s state.
struct Open<A> {
    /// What its result will be stamped at (module docs): the join of the
    /// window's floor and its records' times. A capability for it is held.
    time: Time,
    /// Checkpointed: the aggregate as of the last group written (`None`:
    /// no records then).
    base: Option<A>,
    /// The aggregates as of the end of each commit group not yet written
    /// that has records of this window, by group, ascending: each holds the
    /// records of its group *and of all earlier ones* (so no `merge` is
    /// needed). The last is the live aggregate. Without checkpoints every
    /// record is of "group" 0, and this is just the live aggregate.
    cuts: Vec<(u64, A)>,
}

impl<A> Open<A> {
    /// Adds `record`, of commit group `group`.
    fn add<D>(&mut self, group: u64, init: &A, record: &D)
    where
        A: Aggregate<D>,
    {
        let pos = self.cuts.partition_point(|(g, _)| *g < group);
        if self.cuts.get(pos).is_none_or(|(g, _)| *g != group) {
            let before = match pos {
                0 => self.base.clone().unwrap_or_else(|| init.clone()),
                _ => self.cuts[pos - 1].1.clone(),
            };
            self.cuts.insert(pos, (group, before));
        }
        for (_, state) in &mut self.cuts[pos..] {
            state.add(record);
        }
    }

    /// The aggregate as of the end of group `group`.
    fn as_of(&self, group: u64) -> Option<&A> {
        match self.cuts.iter().rev().find(|(g, _)| *g <= group) {
            Some((_, state)) => Some(state),
            None => self.base.as_ref(),
        }
    }

    /// Group `group` was written: its aggregate is the new base.
    fn written(&mut self, group: u64) {
        let n = self.cuts.partition_point(|(g, _)| *g <= group);
        if let Some((_, state)) = self.cuts.drain(..n).last() {
            self.base = Some(state);
        }
    }
}

/// A window emitted at an epoch after some group not yet written: that
/// group's snapshot must still hold it, as of its end.
struct Retired<K, A> {
    key: K,
    start: u64,
    /// The epoch its result was stamped at.
    epoch: u64,
    state: Open<A>,
}

/// A capability held for the results of open windows stamped at one time:
/// on the data output and (checkpointed) on the state output, and how many
/// windows hold it.
struct Held {
    data: Capability<Time>,
    state: Option<Capability<Time>>,
    windows: usize,
}

/// Holds a capability at `time` for one more window; `mint` makes it.
fn acquire(held: &mut BTreeMap<Time, Held>, time: Time, mint: impl FnOnce() -> Held) {
    held.entry(time).or_insert_with(mint).windows += 1;
}

/// The capabilities for results stamped at `time`, from a message's.
fn mint(cap: &InputCapability<Time>, time: Time, checkpointed: bool) -> Held {
    Held {
        data: cap.delayed(&time, DATA),
        state: checkpointed.then(|| cap.delayed(&time, STATE)),
        windows: 0,
    }
}

/// One window fewer holds the capability at `time`.
fn release(held: &mut BTreeMap<Time, Held>, time: &Time) {
    if let Some(h) = held.get_mut(time) {
        h.windows -= 1;
        if h.windows == 0 {
            held.remove(time);
        }
    }
}

/// A commit group's pending snapshot: a capability on the state output, and
/// whether the state as of the group's end differs from the previous one's.
struct Group {
    cap: Capability<Time>,
    changed: bool,
}

/// An output of vectors of `T`.
type Out<T> = OutputBuilder<Time, CapacityContainerBuilder<Vec<T>>>;

/// The windows restored on this worker: key, start, stamp floor, state.
type Restored<K, A> = Vec<(K, u64, Time, A)>;

fn build<'scope, D, K, A, F>(
    stream: Stream<'scope, Time, Vec<D>>,
    params: WindowParams,
    key: F,
    init: A,
    stats: Arc<WindowStats>,
    ckpt: Option<StateCheckpoint>,
    restored: Restored<K, A>,
) -> AllStreams<'scope, K, A::Output, D>
where
    D: EventTime + timely::ExchangeData,
    K: WindowKey,
    A: Aggregate<D>,
    F: Fn(&D) -> K + Clone + 'static,
{
    let scope = stream.scope();
    let (index, peers) = (scope.index(), scope.peers());
    let name = match &ckpt {
        Some(c) => format!("Window({})", c.operator),
        None => "Window".to_string(),
    };
    let mut builder = OperatorBuilder::new(name, scope);
    let route = key.clone();
    let mut input = builder.new_input(stream, Exchange::new(move |d: &D| key_hash(&route(d))));
    let (data_out, data) = builder.new_output::<Vec<Windowed<K, A::Output>>>();
    let (late_out, late) = builder.new_output::<Vec<D>>();
    let (state_out, state) = builder.new_output::<Vec<StateFile>>();
    let mut data_out: Out<Windowed<K, A::Output>> = OutputBuilder::from(data_out);
    let mut late_out: Out<D> = OutputBuilder::from(late_out);
    let mut state_out: Out<StateFile> = OutputBuilder::from(state_out);
    let wake = scope
        .worker()
        .sync_activator_for(builder.operator_info().address.to_vec());

    let windows = params.windows;
    // Checkpointed: commit group of an epoch. Without: one group, never written.
    let groups_rule = ckpt.as_ref().map(|c| c.groups);
    let group_of = move |epoch: u64| groups_rule.as_ref().map_or(0, |g| g.group_of(epoch));

    builder.build(move |caps| {
        // Open windows by start, then key.
        let mut open: BTreeMap<u64, HashMap<K, Open<A>>> = BTreeMap::new();
        let mut held: BTreeMap<Time, Held> = BTreeMap::new();
        let mut retired: Vec<Retired<K, A>> = Vec::new();
        let mut groups: BTreeMap<u64, Group> = BTreeMap::new();
        let mut writing: Vec<(CapabilitySet<Time>, BackgroundWrite)> = Vec::new();
        // The first group of a run writes a snapshot even if nothing changed,
        // so that the run's snapshots soon retire the older runs' (see
        // checkpoint::state).
        let mut snapshot_written = false;
        let checkpointed = ckpt.is_some();

        stats.restored.fetch_add(restored.len() as u64, Ordering::Relaxed);
        for (key, start, time, state) in restored {
            acquire(&mut held, time, || Held {
                data: caps[DATA].delayed(&time),
                state: Some(caps[STATE].delayed(&time)),
                windows: 0,
            });
            let window = Open {
                time,
                base: Some(state),
                cuts: Vec::new(),
            };
            open.entry(start).or_default().insert(key, window);
        }
        drop(caps);
        let mut gauge = 0;
        // The run is over (module docs): nothing more closes.
        let mut ended = false;

        move |frontiers| {
            let frontier = frontiers[0].frontier();
            let (mut added, mut late_count) = (0, 0);
            input.for_each(|cap, data| {
                let stamp = cap.stamp();
                let (Some(time), Some(least_event)) = (stamp_time(stamp.iter()), stamp.iter().map(|t| t.event).min())
                else {
                    // No time to stamp results at (K2 never sends these).
                    late_count += data.len();
                    late_out.activate().session(&cap).give_container(data);
                    return;
                };
                let group = group_of(time.epoch);
                let mut late = Vec::new();
                let mut on_time = 0;
                for record in data.drain(..) {
                    let event = record.event_us();
                    if record.is_late() || event < least_event {
                        late.push(record);
                        continue;
                    }
                    on_time += 1;
                    let k = key(&record);
                    for start in windows.starts(event) {
                        let by_key = open.entry(start).or_default();
                        if let Some(window) = by_key.get_mut(&k) {
                            let joined = window.time.join(&time);
                            if joined != window.time {
                                release(&mut held, &window.time);
                                acquire(&mut held, joined, || mint(&cap, joined, checkpointed));
                                window.time = joined;
                            }
                            window.add(group, &init, &record);
                        } else {
                            let stamp = params.floor(windows.end(start)).join(&time);
                            acquire(&mut held, stamp, || mint(&cap, stamp, checkpointed));
                            let mut window = Open {
                                time: stamp,
                                base: None,
                                cuts: Vec::new(),
                            };
                            window.add(group, &init, &record);
                            by_key.insert(k.clone(), window);
                        }
                    }
                }
                if on_time > 0 && checkpointed {
                    groups
                        .entry(group)
                        .or_insert_with(|| Group {
                            cap: cap.delayed(&time, STATE),
                            changed: false,
                        })
                        .changed = true;
                }
                added += on_time;
                late_count += late.len();
                if !late.is_empty() {
                    late_out.activate().session(&cap).give_container(&mut late);
                }
            });

            // Emit the windows the frontier has passed. At the end of the
            // run, once, those below the sources' last watermarks; the rest
            // stay open for the snapshot, and their capabilities go.
            let mut results = 0;
            let horizon = match event_progress(frontier.iter()) {
                _ if ended => None,
                EventProgress::Below(horizon) => Some(horizon),
                EventProgress::Ending { below } => {
                    ended = true;
                    Some(below)
                }
            };
            if let Some(horizon) = horizon {
                let mut closed: Vec<(Time, Windowed<K, A::Output>)> = Vec::new();
                while let Some(entry) = open.first_entry() {
                    let start = *entry.key();
                    let end = windows.end(start);
                    if end > horizon {
                        break;
                    }
                    for (key, mut window) in entry.remove() {
                        let time = window.time;
                        // The snapshots of groups before the stamp's still hold it.
                        let stamped_group = group_of(time.epoch);
                        let value = match window.cuts.last() {
                            Some((g, _)) if *g >= stamped_group => window.cuts.pop().map(|(_, s)| s),
                            Some((_, s)) => Some(s.clone()),
                            None => window.base.clone(),
                        };
                        window.cuts.retain(|(g, _)| *g < stamped_group);
                        if checkpointed && (window.base.is_some() || !window.cuts.is_empty()) {
                            retired.push(Retired {
                                key: key.clone(),
                                start,
                                epoch: time.epoch,
                                state: window,
                            });
                        }
                        let Some(value) = value else { continue };
                        closed.push((
                            time,
                            Windowed {
                                key,
                                start_us: start,
                                end_us: end,
                                value: value.finish(),
                            },
                        ));
                    }
                }
                results = closed.len();
                closed.sort_by_key(|(time, _)| *time);
                let mut closed = closed.into_iter().peekable();
                let mut data_out = data_out.activate();
                while let Some((time, first)) = closed.next() {
                    let mut n = 1;
                    {
                        let h = held.get(&time).expect("an open window holds its time");
                        let mut session = data_out.session(&h.data);
                        session.give(first);
                        while let Some((_, result)) = closed.next_if(|(t, _)| *t == time) {
                            session.give(result);
                            n += 1;
                        }
                        if let Some(state) = &h.state {
                            // The group the results are stamped in has changed.
                            groups
                                .entry(group_of(time.epoch))
                                .or_insert_with(|| Group {
                                    cap: state.clone(),
                                    changed: false,
                                })
                                .changed = true;
                        }
                    }
                    for _ in 0..n {
                        release(&mut held, &time);
                    }
                }
            }
            if ended {
                held.clear();
            }

            // Write the snapshots of the groups that are settled: their input
            // is complete, and no open window may still be stamped in them.
            if let Some(ckpt) = &ckpt {
                while let Some(entry) = groups.first_entry() {
                    let group = *entry.key();
                    let pending = held.first_key_value().is_some_and(|(t, _)| t.epoch <= group);
                    if !epoch_complete(frontier.iter(), group) || pending {
                        break;
                    }
                    let g = entry.remove();
                    if g.changed || !snapshot_written {
                        snapshot_written = true;
                        let mut entries: Vec<((&K, u64), &A)> = Vec::new();
                        for (start, by_key) in &open {
                            for (key, window) in by_key {
                                entries.extend(window.as_of(group).map(|s| ((key, *start), s)));
                            }
                        }
                        for r in retired.iter().filter(|r| r.epoch > group) {
                            entries.extend(r.state.as_of(group).map(|s| ((&r.key, r.start), s)));
                        }
                        let file = ckpt.file(index, peers, group, StateKind::Snapshot, u64::MAX);
                        let bytes = StateStore::encode(&entries);
                        let n = entries.len() as u64;
                        let write = ckpt.store.write_bytes_in_background(file, bytes, n, wake.clone());
                        writing.push((CapabilitySet::from_elem(g.cap), write));
                    }
                    for window in open.values_mut().flat_map(|by_key| by_key.values_mut()) {
                        window.written(group);
                    }
                    retired.retain(|r| r.epoch > group);
                    for r in &mut retired {
                        r.state.written(group);
                    }
                }
                writing.retain(|(caps, write)| match write.done() {
                    Some(file) => {
                        state_out.activate().session(caps).give(file);
                        false
                    }
                    None => true,
                });
            }

            let now: usize = open.values().map(HashMap::len).sum();
            stats.records.fetch_add(added as u64, Ordering::Relaxed);
            stats.late.fetch_add(late_count as u64, Ordering::Relaxed);
            stats.results.fetch_add(results as u64, Ordering::Relaxed);
            if now > gauge {
                stats.open.fetch_add((now - gauge) as u64, Ordering::Relaxed);
            } else {
                stats.open.fetch_sub((gauge - now) as u64, Ordering::Relaxed);
            }
            gauge = now;
        }
    });
    (data, late, state)
}
