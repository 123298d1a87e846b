//! Oracle tests of the window operator: random inputs on 1, 2, 3 and 4
//! workers against a sequential model, and restores across worker counts.

use super::*;
use crate::checkpoint::CommitGroups;
use crate::checkpoint::state::add_live;
use crate::operators::window::bars::Ohlcv;
use crate::record::Symbol;
use crate::time::{STOPPED, event_frontier};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use timely::dataflow::ProbeHandle;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::{Inspect, Probe};

/// A test record: an id, a key, an event time (µs), and the source's flag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct Rec {
    id: u64,
    key: u8,
    event: u64,
    late: bool,
}

impl EventTime for Rec {
    fn event_us(&self) -> u64 {
        self.event
    }
    fn is_late(&self) -> bool {
        self.late
    }
}

/// The ids of a window's records: exact content, whatever the order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Ids(Vec<u64>);

impl Aggregate<Rec> for Ids {
    type Output = Vec<u64>;
    fn add(&mut self, r: &Rec) {
        self.0.push(r.id);
    }
    fn finish(mut self) -> Vec<u64> {
        self.0.sort_unstable();
        self.0
    }
}

/// Epochs of 100 ms; test event times run along with them, as live ones do.
const EPOCH_MS: u64 = 100;
const EPOCH_US: u64 = EPOCH_MS * 1_000;

/// A random input: partitions, each with a watermark and records per epoch.
#[derive(Clone, Debug)]
struct Case {
    params: WindowParams,
    /// `parts[p][e]`: partition `p`'s watermark during epoch `e`, and the
    /// records it sends then, in order.
    parts: Vec<Vec<(u64, Vec<Rec>)>>,
    /// The watermark every source ends at (at epoch `epochs()`).
    end_watermark: u64,
}

impl Case {
    fn epochs(&self) -> u64 {
        self.parts[0].len() as u64
    }
}

/// Records roughly in step with the epochs, out of order by up to `ooo`;
/// some below their partition's watermark (flagged late, as a source
/// flags them), and some below every partition's watermark without a flag
/// (late by their timestamp: the operator must catch those too).
fn case(seed: u64) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed);
    let partitions = rng.random_range(1..=5);
    let epochs = rng.random_range(8..30);
    let keys = rng.random_range(1..=4u8);
    let ooo = rng.random_range(0..3 * EPOCH_US);
    let size = rng.random_range(EPOCH_US / 2..6 * EPOCH_US);
    let windows = if rng.random_bool(0.4) {
        Windows::tumbling(size).unwrap()
    } else {
        let slide = match rng.random_range(0..3) {
            0 => size / rng.random_range(2..=4),
            1 => rng.random_range(1..=size),
            _ => size / 2 + 1,
        };
        Windows::hopping(size, slide.max(1)).unwrap()
    };
    let mut params = WindowParams::new(windows);
    if rng.random_bool(0.6) {
        params = params.with_clock(EpochClock {
            epoch_ms: EPOCH_MS,
            close_delay_us: rng.random_range(0..=ooo + 1),
        });
    }
    let mut id = 0;
    let mut parts: Vec<Vec<(u64, Vec<Rec>)>> = Vec::new();
    for _ in 0..partitions {
        let rate = rng.random_range(0..6);
        let (mut max_seen, mut watermark) = (0u64, 0u64);
        let mut part = Vec::new();
        for e in 0..epochs {
            watermark = watermark.max(max_seen.saturating_sub(ooo));
            let mut records = Vec::new();
            for _ in 0..rng.random_range(0..=rate) {
                let event = (e * EPOCH_US + rng.random_range(0..EPOCH_US)).saturating_sub(rng.random_range(0..=ooo));
                let late = event < watermark;
                if !late {
                    max_seen = max_seen.max(event);
                }
                id += 1;
                records.push(Rec {
                    id,
                    key: rng.random_range(0..keys),
                    event,
                    late,
                });
            }
            part.push((watermark, records));
        }
        parts.push(part);
    }
    // Unflagged records below every partition's watermark.
    for e in 0..epochs as usize {
        let floor = parts.iter().map(|p| p[e].0).min().unwrap_or(0);
        if floor == 0 {
            continue;
        }
        for part in &mut parts {
            if rng.random_range(0..10) == 0 {
                id += 1;
                let rec = Rec {
                    id,
                    key: rng.random_range(0..keys),
                    event: floor - 1 - rng.random_range(0..floor.min(EPOCH_US)),
                    late: false,
                };
                let records = &mut part[e].1;
                let at = rng.random_range(0..=records.len());
                records.insert(at, rec);
            }
        }
    }
    let last = parts.iter().map(|p| p[epochs as usize - 1].0).max().unwrap_or(0);
    let end_watermark = last + rng.random_range(0..=2 * size);
    Case {
        params,
        parts,
        end_watermark,
    }
}

/// A result as emitted: the time, key, window, and ids.
type Result = (Time, u8, u64, u64, Vec<u64>);

/// The sequential model: every window of on-time records that the final
/// watermark closes, stamped at `(max(epoch of its records, floor), end - 1)`;
/// and the ids of the late records.
fn oracle(case: &Case) -> (Vec<Result>, Vec<u64>) {
    let mut windows: BTreeMap<(u8, u64), (u64, Vec<u64>)> = BTreeMap::new();
    let mut late = Vec::new();
    for part in &case.parts {
        for (e, (watermark, records)) in part.iter().enumerate() {
            for r in records {
                if r.late || r.event < *watermark {
                    late.push(r.id);
                    continue;
                }
                for start in case.params.windows.starts(r.event) {
                    let w = windows.entry((r.key, start)).or_default();
                    w.0 = w.0.max(e as u64);
                    w.1.push(r.id);
                }
            }
        }
    }
    let mut results: Vec<Result> = windows
        .into_iter()
        .filter_map(|((key, start), (epoch, mut ids))| {
            let end = case.params.windows.end(start);
            if end > case.end_watermark {
                return None;
            }
            ids.sort_unstable();
            let floor = case.params.floor(end);
            Some((Time::new(epoch.max(floor.epoch), end - 1), key, start, end, ids))
        })
        .collect();
    results.sort();
    late.sort_unstable();
    (results, late)
}

/// One step of a test source: hold the capability at the time, then send
/// the record (if any).
type Step<D = Rec> = (Time, Option<D>);

/// Worker `index`'s steps for epochs `from..to`: it owns the partitions
/// `p % peers == index`, holds `(epoch, least watermark of its
/// partitions)`, and sends their records of each epoch interleaved. A
/// worker without partitions has none (its source ends at once, as a
/// bounded Kafka source does).
fn steps(case: &Case, index: usize, peers: usize, from: u64, to: u64) -> Vec<Step> {
    let mine: Vec<&Vec<(u64, Vec<Rec>)>> = case.parts.iter().skip(index).step_by(peers).collect();
    let mut out = Vec::new();
    for e in (from..to).filter(|_| !mine.is_empty()) {
        let watermark = mine.iter().map(|p| p[e as usize].0).min().unwrap_or(u64::MAX);
        let time = Time::new(e, watermark);
        out.push((time, None));
        let most = mine.iter().map(|p| p[e as usize].1.len()).max().unwrap_or(0);
        for i in 0..most {
            for p in &mine {
                if let Some(r) = p[e as usize].1.get(i) {
                    out.push((time, Some(r.clone())));
                }
            }
        }
    }
    out
}

/// How a test source ends once it has played its steps.
#[derive(Clone)]
enum End {
    /// It drops its capability (the end of its input).
    Drop,
    /// It holds the time until the probed results' event frontier reaches
    /// the watermark (every window the final watermark closes is out), so
    /// that which windows close does not depend on how fast progress
    /// travels; then it drops.
    Hold(Time, u64, ProbeHandle<Time>),
    /// The end of a run, as the engine's (see `crate::stop`): each source
    /// holds `(STOPPED, its watermark)` until `release` (the frontier of
    /// everything downstream) is all at `STOPPED`, then drops `linger`
    /// activations later: as they drop out one by one, the frontier rises to
    /// the watermark of those still holding, which must close nothing.
    Stop { release: ProbeHandle<Time>, linger: usize },
}

/// A source playing `steps`, up to `per_activation` records per
/// activation, then ending as `end` says.
fn feed<'s, D: Clone + 'static>(
    scope: Scope<'s, Time>,
    steps: Vec<Step<D>>,
    per_activation: usize,
    end: End,
) -> Stream<'s, Time, Vec<D>> {
    source(scope, "Feed", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let (mut pos, mut lingered) = (0, 0);
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            let mut sent = 0;
            while pos < steps.len() && sent < per_activation {
                let (time, record) = &steps[pos];
                c.downgrade(time);
                pos += 1;
                if let Some(record) = record {
                    output.session(&*c).give(record.clone());
                    sent += 1;
                }
            }
            if pos < steps.len() {
                activator.activate();
                return;
            }
            let done = match &end {
                End::Drop => true,
                End::Hold(time, watermark, probe) => {
                    c.downgrade(time);
                    probe.with_frontier(|f| event_frontier(f.iter())) >= *watermark
                }
                End::Stop { release, linger } => {
                    if c.time().epoch < STOPPED {
                        // Without steps, a source holds no watermark (as a
                        // worker without partitions).
                        let event = if steps.is_empty() { u64::MAX } else { c.time().event };
                        c.downgrade(&Time::new(STOPPED, event));
                    }
                    if release.with_frontier(|f| f.iter().all(|t| t.epoch >= STOPPED)) {
                        lingered += 1;
                    }
                    lingered > *linger
                }
            };
            if done {
                cap = None;
            } else {
                activator.activate();
            }
        }
    })
}

/// What one run produced.
#[derive(Default)]
struct Run {
    results: Vec<Result>,
    late: Vec<(Time, u64)>,
    files: Vec<StateFile>,
    stats: Arc<WindowStats>,
}

/// How a run is fed and checkpointed.
#[derive(Clone)]
struct RunSpec {
    workers: usize,
    per_activation: usize,
    /// Epochs fed: `from..to`.
    from: u64,
    to: u64,
    /// Hold the end watermark until the closed windows are out (else stop).
    finish: bool,
    /// Stops: how many activations each worker's source goes on after it.
    linger: Vec<usize>,
    ckpt: Option<StateCheckpoint>,
}

fn run(case: &Case, spec: RunSpec) -> Run {
    let out: Arc<Mutex<Run>> = Arc::default();
    let stats = Arc::new(WindowStats::default());
    let (case2, out2, stats2) = (Arc::new(case.clone()), out.clone(), stats.clone());
    timely::execute(timely::Config::process(spec.workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let (case, out, spec) = (case2.clone(), out2.clone(), spec.clone());
        let steps = steps(&case, index, peers, spec.from, spec.to);
        let probe = ProbeHandle::new();
        let release = ProbeHandle::new();
        let end = match spec.finish {
            true if steps.is_empty() => End::Drop,
            true => End::Hold(
                Time::new(spec.to, case.end_watermark),
                case.end_watermark,
                probe.clone(),
            ),
            false => End::Stop {
                release: release.clone(),
                linger: spec.linger[index % spec.linger.len()],
            },
        };
        let params = case.params.clone();
        worker.dataflow::<Time, _, _>(|scope| {
            let input = feed(scope, steps, spec.per_activation, end);
            let key = |r: &Rec| r.key;
            let (results, late, state) = match spec.ckpt.clone() {
                Some(ckpt) => window_with_state(input, params, key, Ids::default(), stats2.clone(), ckpt, spec.from)
                    .expect("restore"),
                None => {
                    let (results, late) = input.window(params, key, Ids::default(), stats2.clone());
                    (results, late, no_state(scope))
                }
            };
            let o = out.clone();
            results
                .inspect_core(move |event| {
                    if let Ok((stamp, results)) = event {
                        let time = *stamp.expect_singleton();
                        let mut o = o.lock().unwrap();
                        o.results.extend(
                            results
                                .iter()
                                .map(|w| (time, w.key, w.start_us, w.end_us, w.value.clone())),
                        );
                    }
                })
                .probe_with(&probe)
                .probe_with(&release);
            let o = out.clone();
            late.inspect_core(move |event| {
                if let Ok((stamp, records)) = event {
                    let time = *stamp.expect_singleton();
                    o.lock().unwrap().late.extend(records.iter().map(|r| (time, r.id)));
                }
            })
            .probe_with(&release);
            let o = out.clone();
            state
                .inspect(move |f: &StateFile| o.lock().unwrap().files.push(f.clone()))
                .probe_with(&release);
        });
    })
    .unwrap();
    let mut run = std::mem::take(&mut *out.lock().unwrap());
    run.results.sort();
    run.late.sort();
    run.stats = stats;
    run
}

/// An empty stream of state files, for runs without checkpoints.
fn no_state(scope: Scope<'_, Time>) -> Stream<'_, Time, Vec<StateFile>> {
    source::<_, CapacityContainerBuilder<Vec<StateFile>>, _, _>(scope, "NoState", |_cap, _info| |_output| {})
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[test]
fn window_starts_match_a_brute_force() {
    let mut rng = SmallRng::seed_from_u64(3);
    for _ in 0..2_000 {
        let size = rng.random_range(1..50);
        let w = Windows::hopping(size, rng.random_range(1..=size)).unwrap();
        let event = rng.random_range(0..200);
        let brute: Vec<u64> = (0..=event)
            .filter(|s| s % w.slide_us() == 0 && event < w.end(*s))
            .collect();
        assert_eq!(w.starts(event).collect::<Vec<_>>(), brute, "{w:?} at {event}");
    }
    assert_eq!(
        Windows::tumbling(60).unwrap().starts(125).collect::<Vec<_>>(),
        vec![120]
    );
    assert!(Windows::hopping(10, 11).is_err() && Windows::tumbling(0).is_err());
    let near_max = Windows::tumbling(10).unwrap();
    assert_eq!(near_max.end(u64::MAX - 5), u64::MAX);
}

/// Results and late records equal the sequential model's, with the same
/// stamps, on any number of workers and whatever the interleaving.
#[test]
fn matches_the_sequential_oracle_on_1_2_4_workers() {
    let (mut hopping, mut clocked, mut late_by_stamp, mut open_at_end) = (0, 0, 0, 0);
    for seed in 0..40 {
        let case = case(seed);
        let (expected, late) = oracle(&case);
        hopping += usize::from(case.params.windows.slide_us() < case.params.windows.size_us());
        clocked += usize::from(case.params.clock.is_some());
        let all: Vec<&Rec> = case.parts.iter().flatten().flat_map(|(_, r)| r).collect();
        late_by_stamp += all.iter().filter(|r| !r.late && late.contains(&r.id)).count();
        for workers in [1, 2, 4] {
            let spec = RunSpec {
                workers,
                per_activation: [1, 3, 64][(seed as usize + workers) % 3],
                from: 0,
                to: case.epochs(),
                finish: true,
                linger: vec![0],
                ckpt: None,
            };
            let out = run(&case, spec);
            let what = format!("seed {seed}, {workers} workers, {:?}", case.params);
            assert_eq!(out.results, expected, "{what}");
            let mut late_ids: Vec<u64> = out.late.iter().map(|(_, id)| *id).collect();
            late_ids.sort_unstable();
            assert_eq!(late_ids, late, "{what}");
            let s = &out.stats;
            assert_eq!(get(&s.records) + get(&s.late), all.len() as u64, "{what}");
            assert_eq!(get(&s.results), expected.len() as u64, "{what}");
            if workers == 1 {
                open_at_end += get(&s.open);
            }
        }
    }
    assert!(hopping >= 10 && clocked >= 10, "{hopping} hopping, {clocked} clocked");
    assert!(late_by_stamp >= 20, "{late_by_stamp}");
    assert!(open_at_end >= 20, "windows left open at the end: {open_at_end}");
}

/// A window is stamped at the join of its records' times, not at the time
/// it closes: a record of a later epoch moves its stamp, the clock's floor
/// holds it, and late records never reach it.
#[test]
fn stamps_follow_the_records_and_the_floor() {
    let rec = |id, event, late| Rec {
        id,
        key: 1,
        event,
        late,
    };
    let steps = vec![
        (Time::new(0, 0), Some(rec(1, 100, false))),
        (Time::new(3, 0), Some(rec(2, 900, false))),
        // Below its stamp's event part: late, though not flagged.
        (Time::new(5, 500), Some(rec(3, 400, false))),
        // Flagged by its source.
        (Time::new(6, 600), Some(rec(4, 1_500, true))),
    ];
    // The window [0, 1 ms) closes at 1 ms; with 9 ms of expected delay and
    // epochs of 1 ms, the clock's floor is epoch 10.
    let clock = EpochClock {
        epoch_ms: 1,
        close_delay_us: 9_000,
    };
    for (clock, epoch) in [(None, 3), (Some(clock), 10)] {
        let mut params = WindowParams::new(Windows::tumbling(1_000).unwrap());
        params.clock = clock;
        let (steps, out) = (steps.clone(), Arc::new(Mutex::new(Vec::new())));
        let out2 = out.clone();
        timely::execute_directly(move |worker| {
            let probe = ProbeHandle::new();
            let finish = End::Hold(Time::new(7, 2_000), 2_000, probe.clone());
            worker.dataflow::<Time, _, _>(|scope| {
                let (results, late) = feed(scope, steps, 1, finish).window(
                    params.clone(),
                    |r: &Rec| r.key,
                    Ids::default(),
                    Default::default(),
                );
                let o = out2.clone();
                results
                    .inspect_core(move |event| {
                        if let Ok((stamp, results)) = event {
                            for w in results {
                                o.lock().unwrap().push((*stamp.expect_singleton(), w.value.clone()));
                            }
                        }
                    })
                    .probe_with(&probe);
                late.inspect(|r| assert!(r.id == 3 || r.id == 4, "{r:?}"));
            });
        });
        let out = out.lock().unwrap().clone();
        assert_eq!(out, vec![(Time::new(epoch, 999), vec![1, 2])], "clock {clock:?}");
    }
}

/// Runs `case` as a chain of runs on the given worker counts, each
/// "crashing" after a cut: run `i` reads from the previous cut on, goes on
/// past its own cut (its later output and files are lost, as in a crash),
/// and the next run restores the cut's state onto its own worker count. The
/// last run reads to the end. Returns the committed results (each run's up
/// to its cut) and late records, and how many windows some run emitted
/// after its cut with records of epochs up to it: their cut's snapshot had
/// to hold them, as of the cut, though they were emitted already.
fn chain(case: &Case, seed: u64, workers: &[usize]) -> (Vec<Result>, Vec<u64>, usize) {
    // The epoch of each record.
    let epoch_of: HashMap<u64, u64> = case
        .parts
        .iter()
        .flat_map(|p| p.iter().enumerate())
        .flat_map(|(e, (_, records))| records.iter().map(move |r| (r.id, e as u64)))
        .collect();
    let dir = std::env::temp_dir().join(format!("k2-window-{}", uuid::Uuid::new_v4().simple()));
    let groups = CommitGroups {
        epoch_ms: EPOCH_MS,
        commit_interval_ms: 2 * EPOCH_MS,
    };
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let epochs = case.epochs();
    // The live state files of the last cut, as its manifest would list
    // them, and the cut's last epoch.
    let (mut live, mut cut): (Vec<StateFile>, Option<u64>) = (Vec::new(), None);
    let (mut results, mut late, mut emitted_after_cut) = (Vec::new(), Vec::new(), 0);
    for (i, &n) in workers.iter().enumerate() {
        let from = cut.map_or(0, |c| c + 1);
        let last = i + 1 == workers.len();
        // Cuts are group labels (odd epochs here); the run reads past its cut.
        let (to, cut_epoch) = if last {
            (epochs, u64::MAX)
        } else {
            let room = (epochs - from) / (workers.len() - i) as u64;
            let label = groups.group_of(from + rng.random_range(0..room.max(1)));
            assert!(label + 1 < epochs, "the next run has epochs to read");
            let to = (label + 1 + rng.random_range(0..12)).min(epochs);
            (to, label)
        };
        let ckpt = StateCheckpoint {
            operator: "window".into(),
            store: StateStore::local(&dir),
            groups,
            run_id: format!("r{i}"),
            generation: i as u64 + 1,
            restore: live.clone(),
        };
        let spec = RunSpec {
            workers: n,
            per_activation: rng.random_range(1..8),
            from,
            to,
            finish: last,
            linger: (0..n).map(|_| rng.random_range(0..30)).collect(),
            ckpt: Some(ckpt),
        };
        let out = run(case, spec);
        assert!(
            out.results.iter().all(|r| r.0.epoch >= from),
            "a result before the run's first epoch"
        );
        let committed = |t: &Time| t.epoch <= cut_epoch;
        emitted_after_cut += out
            .results
            .iter()
            .filter(|r| !committed(&r.0) && r.4.iter().any(|id| epoch_of[id] <= cut_epoch))
            .count();
        results.extend(out.results.into_iter().filter(|r| committed(&r.0)));
        late.extend(out.late.into_iter().filter(|(t, _)| committed(t)).map(|(_, id)| id));
        if !last {
            let mut files: Vec<StateFile> = out.files.into_iter().filter(|f| f.group <= cut_epoch).collect();
            files.sort_by_key(|f| f.group);
            for f in files {
                add_live(&mut live, f);
            }
            cut = Some(cut_epoch);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    results.sort();
    late.sort_unstable();
    (results, late, emitted_after_cut)
}

/// Exactly once across restores onto other worker counts: the committed
/// results of a chain of runs are the oracle's, no window twice; and so
/// are the late records.
#[test]
fn restores_onto_any_worker_count_emit_each_window_once() {
    let mut emitted_after_cut = 0;
    let chains: [&[usize]; 5] = [&[1, 2], &[2, 4], &[4, 1], &[3, 2, 4], &[2, 1, 3]];
    for seed in 0..30 {
        let case = case(seed);
        let (expected, late) = oracle(&case);
        let mut expected: Vec<_> = expected.into_iter().map(|(_, k, s, e, ids)| (k, s, e, ids)).collect();
        expected.sort();
        let workers = chains[seed as usize % chains.len()];
        let (results, got_late, after) = chain(&case, seed, workers);
        emitted_after_cut += after;
        let windows: HashSet<(u8, u64)> = results.iter().map(|r| (r.1, r.2)).collect();
        assert_eq!(windows.len(), results.len(), "seed {seed}: a window emitted twice");
        let results: Vec<_> = results.into_iter().map(|(_, k, s, e, ids)| (k, s, e, ids)).collect();
        let mut sorted = results.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "seed {seed}, workers {workers:?}, {:?}", case.params);
        assert_eq!(got_late, late, "seed {seed}");
    }
    assert!(
        emitted_after_cut >= 10,
        "windows emitted after a cut with records before it: {emitted_after_cut}"
    );
}

/// A snapshot holds the state exactly as of its group's end: records of
/// later groups that were already added are not in it.
#[test]
fn snapshots_hold_the_state_as_of_their_group() {
    let dir = std::env::temp_dir().join(format!("k2-window-asof-{}", uuid::Uuid::new_v4().simple()));
    let rec = |id, event| Rec {
        id,
        key: 7,
        event,
        late: false,
    };
    // Groups of one epoch. Worker 0 sends epoch 2 while worker 1 holds
    // epoch 1 open, so the record of epoch 2 is added before group 1 ends.
    let groups = CommitGroups {
        epoch_ms: EPOCH_MS,
        commit_interval_ms: EPOCH_MS,
    };
    let ckpt = StateCheckpoint {
        operator: "window".into(),
        store: StateStore::local(&dir),
        groups,
        run_id: "r".into(),
        generation: 1,
        restore: vec![],
    };
    let out: Arc<Mutex<Vec<StateFile>>> = Arc::default();
    let out2 = out.clone();
    timely::execute(timely::Config::process(2), move |worker| {
        let index = worker.index();
        let steps = if index == 0 {
            vec![(Time::new(1, 0), Some(rec(1, 10))), (Time::new(2, 0), Some(rec(2, 20)))]
        } else {
            let mut hold: Vec<Step> = (0..50).map(|_| (Time::new(1, 0), None)).collect();
            hold.push((Time::new(3, 0), None));
            hold
        };
        let (ckpt, out) = (ckpt.clone(), out2.clone());
        worker.dataflow::<Time, _, _>(|scope| {
            let params = WindowParams::new(Windows::tumbling(1_000).unwrap());
            let input = feed(scope, steps, 1, End::Drop);
            let (_, _, files) = window_with_state(
                input,
                params,
                |r: &Rec| r.key,
                Ids::default(),
                Default::default(),
                ckpt,
                0,
            )
            .unwrap();
            files.inspect(move |f| out.lock().unwrap().push(f.clone()));
        });
    })
    .unwrap();
    let files = out.lock().unwrap().clone();
    let store = StateStore::local(&dir);
    let by_group: BTreeMap<u64, Vec<u64>> = files
        .iter()
        .map(|f| {
            let entries: Vec<((u8, u64), Ids)> = store.read(f).unwrap();
            let mut ids: Vec<u64> = entries.into_iter().flat_map(|(_, ids)| ids.0).collect();
            ids.sort_unstable();
            (f.group, ids)
        })
        .collect();
    assert_eq!(by_group.get(&1), Some(&vec![1]), "{files:?}");
    assert_eq!(by_group.get(&2), Some(&vec![1, 2]), "{files:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The end of a run closes nothing: here one worker's source ends at a low
/// watermark and the other's at a higher one, and the low one lets go first.
/// The frontier then passes the window, but the first worker's partition may
/// still hold records of it (the next run reads them), so it must stay open,
/// in the snapshot.
#[test]
fn a_stop_closes_no_window() {
    let dir = std::env::temp_dir().join(format!("k2-window-stop-{}", uuid::Uuid::new_v4().simple()));
    let ckpt = StateCheckpoint {
        operator: "window".into(),
        store: StateStore::local(&dir),
        groups: CommitGroups {
            epoch_ms: EPOCH_MS,
            commit_interval_ms: EPOCH_MS,
        },
        run_id: "r".into(),
        generation: 1,
        restore: vec![],
    };
    let out: Arc<Mutex<Run>> = Arc::default();
    let out2 = out.clone();
    timely::execute(timely::Config::process(2), move |worker| {
        let index = worker.index();
        let rec = Rec {
            id: 1,
            key: 3,
            event: 10,
            late: false,
        };
        // Worker 0's partition lags at 100; worker 1's reaches 5 000.
        let (steps, linger) = if index == 0 {
            (vec![(Time::new(1, 100), None), (Time::new(2, 100), None)], 0)
        } else {
            (vec![(Time::new(1, 0), Some(rec)), (Time::new(2, 5_000), None)], 200)
        };
        let release = ProbeHandle::new();
        let end = End::Stop {
            release: release.clone(),
            linger,
        };
        let params = WindowParams::new(Windows::tumbling(1_000).unwrap());
        let (ckpt, out) = (ckpt.clone(), out2.clone());
        worker.dataflow::<Time, _, _>(|scope| {
            let input = feed(scope, steps, 1, end);
            let (results, _, files) = window_with_state(
                input,
                params,
                |r: &Rec| r.key,
                Ids::default(),
                Default::default(),
                ckpt,
                0,
            )
            .unwrap();
            let o = out.clone();
            results
                .inspect(move |w| {
                    o.lock()
                        .unwrap()
                        .results
                        .push((Time::default(), w.key, 0, 0, w.value.clone()))
                })
                .probe_with(&release);
            files
                .inspect(move |f| out.lock().unwrap().files.push(f.clone()))
                .probe_with(&release);
        });
    })
    .unwrap();
    let out = out.lock().unwrap();
    assert_eq!(out.results, vec![], "a window closed by a stop");
    let store = StateStore::local(&dir);
    let last = out.files.iter().max_by_key(|f| f.group).expect("a snapshot");
    let entries: Vec<((u8, u64), Ids)> = store.read(last).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].0, &entries[0].1.0), ((3, 0), &vec![1]));
    std::fs::remove_dir_all(&dir).ok();
}

/// Silver and gold through the operator: trades make 1-minute bars per
/// exchange and symbol; those roll up into 1-hour bars, and, keyed by symbol
/// alone, into cross-exchange 1-minute bars. Each equals the bar of its
/// trades, on 1, 2 and 4 workers, and no bar is late for the next window:
/// results are stamped at their window's last µs, which is their own event
/// time (stamped any later, they would be late there).
#[test]
fn minute_bars_roll_up_through_the_operator() {
    use super::bars::{Bar, by_exchange_symbol};
    use crate::record::{Exchange, Trade};
    const MINUTE: u64 = 60_000; // µs: a scaled-down minute (1 hour = 36 epochs).
    let mut rng = SmallRng::seed_from_u64(11);
    // Streams (partitions): exchange × symbol, each read in order with disorder.
    let streams: Vec<(Exchange, &str)> = vec![
        (Exchange::Binance, "BTC/USDT"),
        (Exchange::Kraken, "BTC/USDT"),
        (Exchange::Binance, "ETH/USDT"),
        (Exchange::Kraken, "ETH/USDT"),
    ];
    let (epochs, ooo) = (140u64, 30_000u64);
    let mut id = 0;
    // Per stream: per epoch, the watermark and trades.
    let parts: Vec<Vec<(u64, Vec<Trade>)>> = streams
        .iter()
        .map(|(exchange, symbol)| {
            let (mut max_seen, mut watermark) = (0u64, 0u64);
            (0..epochs)
                .map(|e| {
                    watermark = watermark.max(max_seen.saturating_sub(ooo));
                    let trades = (0..rng.random_range(0..4))
                        .map(|_| {
                            let event = (e * EPOCH_US + rng.random_range(0..EPOCH_US))
                                .saturating_sub(rng.random_range(0..ooo))
                                .max(watermark);
                            max_seen = max_seen.max(event);
                            id += 1;
                            Trade {
                                symbol: Symbol::from(*symbol),
                                price: crate::decimal::Decimal(rng.random_range(1..1_000_000i128) * 10i128.pow(14)),
                                quantity: crate::decimal::Decimal(rng.random_range(1..1_000i128) * 10i128.pow(15)),
                                ..crate::record::test_trade(*exchange, id, "1", event as i64)
                            }
                        })
                        .collect();
                    (watermark, trades)
                })
                .collect()
        })
        .collect();
    // Past every watermark (events end at 14 s), and closing 4 hours.
    let end_watermark = 4 * 60 * MINUTE;
    let all: Vec<&Trade> = parts.iter().flatten().flat_map(|(_, t)| t).collect();
    // The model: the bar of the trades of each window that the end closes.
    let model = |key: &dyn Fn(&Trade) -> String, size: u64| {
        let mut bars: BTreeMap<(String, u64), Ohlcv> = BTreeMap::new();
        for t in &all {
            let start = t.event_time() - t.event_time() % size;
            if start + size <= end_watermark {
                Aggregate::add(bars.entry((key(t), start)).or_default(), *t);
            }
        }
        bars
    };
    let by_stream = |t: &Trade| format!("{:?}", by_exchange_symbol(t));
    let (minutes, hours, across) = (
        model(&by_stream, MINUTE),
        model(&by_stream, 60 * MINUTE),
        model(&|t: &Trade| t.symbol.to_string(), MINUTE),
    );
    assert!(
        hours.len() >= 8 && minutes.len() > 400,
        "{} hours, {} minutes",
        hours.len(),
        minutes.len()
    );
    type Got = Arc<Mutex<Vec<(String, u64, u64, Ohlcv, Time)>>>;
    /// Keeps the bars of `stream` with their times in `out`.
    fn collect<'s>(stream: Stream<'s, Time, Vec<Bar<String>>>, out: Got) -> Stream<'s, Time, Vec<Bar<String>>> {
        stream.inspect_core(move |event| {
            if let Ok((stamp, bars)) = event {
                let time = *stamp.expect_singleton();
                let mut out = out.lock().unwrap();
                out.extend(
                    bars.iter()
                        .map(|b| (b.key.clone(), b.start_us, b.end_us, b.value.clone(), time)),
                );
            }
        })
    }
    for workers in [1, 2, 4] {
        let (got_min, got_hour, got_across, late): (Got, Got, Got, Arc<AtomicUsize>) = Default::default();
        let parts = Arc::new(parts.clone());
        let (m2, h2, a2, l2) = (got_min.clone(), got_hour.clone(), got_across.clone(), late.clone());
        timely::execute(timely::Config::process(workers), move |worker| {
            let (index, peers) = (worker.index(), worker.peers());
            let mine: Vec<&Vec<(u64, Vec<Trade>)>> = parts.iter().skip(index).step_by(peers).collect();
            let mut steps: Vec<Step<Trade>> = Vec::new();
            for e in (0..epochs).filter(|_| !mine.is_empty()) {
                let time = Time::new(e, mine.iter().map(|p| p[e as usize].0).min().unwrap_or(0));
                steps.push((time, None));
                for p in &mine {
                    steps.extend(p[e as usize].1.iter().map(|t| (time, Some(t.clone()))));
                }
            }
            let probe = ProbeHandle::new();
            let end = match steps.is_empty() {
                true => End::Drop,
                false => End::Hold(Time::new(epochs, end_watermark), end_watermark, probe.clone()),
            };
            let clock = EpochClock {
                epoch_ms: EPOCH_MS,
                close_delay_us: ooo,
            };
            let minute = WindowParams::new(Windows::tumbling(MINUTE).unwrap()).with_clock(clock);
            let hour = WindowParams::new(Windows::tumbling(60 * MINUTE).unwrap()).with_clock(clock);
            let (m2, h2, a2, l2) = (m2.clone(), h2.clone(), a2.clone(), l2.clone());
            worker.dataflow::<Time, _, _>(|scope| {
                let trades = feed(scope, steps, 5, end);
                let (bars, _) = trades.window(minute.clone(), by_exchange_symbol, Ohlcv::default(), Default::default());
                let (hourly, late_hour) =
                    bars.clone()
                        .window(hour, |b: &Bar<_>| b.key, Ohlcv::default(), Default::default());
                let (symbol, late_symbol) =
                    bars.clone()
                        .window(minute, super::bars::bar_symbol, Ohlcv::default(), Default::default());
                let named = |b: Bar<(Exchange, Symbol)>| Windowed {
                    key: format!("{:?}", b.key),
                    start_us: b.start_us,
                    end_us: b.end_us,
                    value: b.value,
                };
                use timely::dataflow::operators::vec::Map;
                collect(bars.map(named), m2);
                collect(hourly.map(named), h2).probe_with(&probe);
                let named_symbol = |b: Bar<Symbol>| Windowed {
                    key: b.key.to_string(),
                    start_us: b.start_us,
                    end_us: b.end_us,
                    value: b.value,
                };
                collect(symbol.map(named_symbol), a2).probe_with(&probe);
                for late in [late_hour.map(|_| ()), late_symbol.map(|_| ())] {
                    let l = l2.clone();
                    late.inspect(move |_| {
                        l.fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
        })
        .unwrap();
        let check = |got: &Got, want: &BTreeMap<(String, u64), Ohlcv>, size: u64, what: &str| {
            let got = got.lock().unwrap();
            let map: BTreeMap<(String, u64), Ohlcv> = got
                .iter()
                .map(|(k, s, _, bar, _)| ((k.clone(), *s), bar.clone()))
                .collect();
            assert_eq!(map.len(), got.len(), "{workers} workers, {what}: a bar emitted twice");
            assert_eq!(&map, want, "{workers} workers, {what}");
            for (_, start, end, _, time) in got.iter() {
                assert_eq!(
                    (*end, time.event),
                    (start + size, end - 1),
                    "{what}: stamped at the window's last µs"
                );
            }
        };
        check(&got_min, &minutes, MINUTE, "1-minute bars");
        check(&got_hour, &hours, 60 * MINUTE, "1-hour bars");
        check(&got_across, &across, MINUTE, "cross-exchange bars");
        assert_eq!(
            late.load(Ordering::Relaxed),
            0,
            "{workers} workers: a bar was late for its roll-up"
        );
    }
}
