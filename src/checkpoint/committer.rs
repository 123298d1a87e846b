//! The committer: the second half of the commit protocol, on worker 0.
//!
//! It collects every source worker's [`OffsetReport`]s, every stateful
//! operator's [`StateFile`]s and every participant's [`Staged`] output. Once
//! its input frontier has passed the end of a commit group, no worker can
//! still send anything for that group, so the cut is complete. A dedicated
//! thread then, in order:
//!
//! 1. checks the fence (a newer instance of the job stops this one);
//! 2. asks each [`Participant`] to prepare its part of the cut;
//! 3. writes the cut's [`Manifest`]: offsets, live state files, and every
//!    participant's part. **This is the commit point**;
//! 4. asks each participant to commit its part (append the tables, publish
//!    the Kafka transaction), which skips what is already there, so a retry,
//!    or recovery rolling the cut forward, never applies it twice;
//! 5. now and then prunes old manifests and dead state files.
//!
//! Commits run off the timely workers, so a slow catalog never blocks one.
//! A cut is taken for a group with staged output or state, or whose offsets
//! moved (a group of only duplicates still records how far it read).

use super::fault;
use super::fence::Fence;
use super::groups::CommitGroups;
use super::manifest::{Manifest, ManifestStore};
use super::participant::{CommitItem, OffsetReport, Participant, Staged};
use super::recovery::Resume;
use super::state::{StateFile, StateStore, add_live};
use crate::time::{STOPPED, Time, event_frontier};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

/// What the committer has done, for the CLI, the demo and the tests.
#[derive(Debug)]
pub struct CommitStats {
    /// Visible commits made (Iceberg snapshots, Kafka transactions).
    pub snapshots: u64,
    /// Cuts committed (one manifest each).
    pub cuts: u64,
    /// Rows committed, per destination.
    pub rows: BTreeMap<String, u64>,
    /// Produce-to-visible latency of committed rows, ms.
    pub latency_ms: Histogram<u64>,
    /// Time taken by each commit to a participant, µs.
    pub commit_us: Histogram<u64>,
    /// Time taken by each cut, µs: prepare, manifest, every participant.
    pub cut_us: Histogram<u64>,
    /// The last committed cut's epoch.
    pub last_epoch: Option<u64>,
    /// Cuts committed together with a later one, because they queued behind
    /// a commit that outlasted the commit interval.
    pub coalesced: u64,
    /// When the first cut of this run was committed.
    pub first_commit_at: Option<std::time::Instant>,
    /// A commit that failed for good; the job stops with it.
    pub error: Option<String>,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            snapshots: 0,
            cuts: 0,
            rows: BTreeMap::new(),
            latency_ms: Histogram::new(3).expect("histogram"),
            commit_us: Histogram::new(3).expect("histogram"),
            cut_us: Histogram::new(3).expect("histogram"),
            last_epoch: None,
            coalesced: 0,
            first_commit_at: None,
            error: None,
        }
    }
}

/// What the committer needs.
#[derive(Clone)]
pub struct CommitSpec {
    /// Job name.
    pub job: String,
    /// Topic names by index.
    pub topics: Arc<Vec<String>>,
    /// The commit-group rule, shared with every participant.
    pub groups: CommitGroups,
    /// The participants, committed in this order.
    pub participants: Vec<Arc<dyn Participant>>,
    /// Shared statistics.
    pub stats: Arc<Mutex<CommitStats>>,
    /// Called when a commit fails for good: stops the job.
    pub on_fatal: Arc<dyn Fn(String) + Send + Sync>,
    /// The commit thread, for the launcher to join after the dataflow ends.
    pub thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The job's manifests.
    pub manifests: ManifestStore,
    /// The job's state files.
    pub state_store: StateStore,
    /// This instance's generation.
    pub fence: Fence,
    /// Manifests to keep.
    pub keep_manifests: usize,
    /// Where the sources resumed (offsets, watermarks, last timestamps).
    pub resume: Resume,
    /// The checkpoint this run resumed from, if any.
    pub restored: Option<Manifest>,
    /// Workers of this instance, recorded in manifests.
    pub workers: usize,
    /// Told of every committed cut, after its participants committed: its
    /// manifest and how long the whole commit took. For observers only
    /// (metrics, informational consumer-group offsets): it must not block.
    pub on_committed: Option<CommitHook>,
}

/// See [`CommitSpec::on_committed`].
pub type CommitHook = Arc<dyn Fn(&Manifest, std::time::Duration) + Send + Sync>;

/// One cut to commit.
struct Cut {
    epoch: u64,
    staged: BTreeMap<String, Vec<Vec<u8>>>,
    offsets: BTreeMap<(u16, i32), i64>,
    watermarks: BTreeMap<(u16, i32), u64>,
    last_ts: BTreeMap<(u16, i32), i64>,
    state: Vec<StateFile>,
    event_frontier_us: Option<u64>,
}

impl Cut {
    /// This cut and the `later` one, as one: everything both staged, and the
    /// later one's offsets, state and frontiers (which include this one's).
    fn then(self, later: Cut) -> Cut {
        let mut staged = self.staged;
        for (participant, mut parts) in later.staged {
            staged.entry(participant).or_default().append(&mut parts);
        }
        Cut { staged, ..later }
    }
}

/// Offsets by topic name, as in manifests and `k2.offsets`.
pub fn named_offsets(topics: &[String], offsets: &BTreeMap<(u16, i32), i64>) -> BTreeMap<String, BTreeMap<i32, i64>> {
    let mut by_topic: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for ((t, p), o) in offsets {
        let name = topics.get(*t as usize).cloned().unwrap_or_else(|| format!("#{t}"));
        by_topic.entry(name).or_default().insert(*p, *o);
    }
    by_topic
}

/// Commits everything of the job together, one cut per commit group: every
/// participant's staged output, source offsets and operator state.
pub fn commit<'scope>(items: Stream<'scope, Time, Vec<CommitItem>>, spec: CommitSpec) {
    let index = items.scope().index();
    let _unused: Stream<'scope, Time, Vec<()>> = items.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &CommitItem| 0),
        "Committer",
        move |_cap, _info| {
            let mut sender = (index == 0).then(|| start_commit_thread(spec.clone()));
            let mut staged: BTreeMap<u64, Vec<Staged>> = BTreeMap::new();
            let mut reports: BTreeMap<u64, Vec<OffsetReport>> = BTreeMap::new();
            let mut states: BTreeMap<u64, Vec<StateFile>> = BTreeMap::new();
            let mut live_state: Vec<StateFile> = spec.restored.as_ref().map(|m| m.state.clone()).unwrap_or_default();
            let mut current = spec.resume.offsets.clone();
            let mut watermarks = spec.resume.watermarks.clone();
            let mut last_ts = spec.resume.last_ts_ms.clone();
            // A cut's event-time frontier is the one *as of the cut*: what
            // every record after it (which a restore replays) is at or past.
            // The frontier seen when a cut is taken is later than that (it
            // has passed the cut's epochs, and event time has moved on with
            // the records read since), so record the event frontier per
            // observed epoch frontier, and give a cut the last one seen while
            // its epochs were still open: frontiers only advance, so that is
            // never beyond the cut's. A final cut (empty frontier) records
            // the last finite one, not "unknown", so that a restore knows
            // which state its pruned logs had already expired.
            let restored_horizon = spec.restored.as_ref().and_then(|m| m.event_frontier_us);
            let mut horizons = Horizons::default();
            move |(input, frontier), _output| {
                input.for_each(|_cap, data| {
                    for item in data.drain(..) {
                        match item {
                            CommitItem::Staged(s) => staged.entry(s.group).or_default().push(s),
                            CommitItem::Offsets(r) => reports.entry(r.epoch).or_default().push(r),
                            CommitItem::State(s) => states.entry(s.group).or_default().push(s),
                        }
                    }
                });
                let Some(tx) = sender.as_ref() else { return };
                let frontier = frontier.frontier();
                let min_epoch = frontier.iter().map(|t| t.epoch).min();
                horizons.observe(min_epoch, event_frontier(frontier.iter()));
                let label = match min_epoch {
                    // Everything is in: commit the rest under the last group.
                    None => [
                        staged.keys().next_back(),
                        reports.keys().next_back(),
                        states.keys().next_back(),
                    ]
                    .into_iter()
                    .flatten()
                    .max()
                    .map(|e| spec.groups.group_of(*e)),
                    Some(0) => None,
                    // The newest group the frontier has passed with output,
                    // state, or offsets that moved.
                    Some(e) => {
                        let f = staged.range(..e).next_back().map(|(g, _)| *g);
                        let s = states.range(..e).next_back().map(|(g, _)| *g);
                        let moved = reports
                            .range(..e)
                            .filter(|(_, rs)| {
                                rs.iter()
                                    .any(|r| current.get(&(r.topic, r.partition)) != Some(&r.next_offset))
                            })
                            .map(|(epoch, _)| spec.groups.group_of(*epoch))
                            .filter(|g| *g < e)
                            .max();
                        f.max(s).max(moved)
                    }
                };
                if let Some(label) = label {
                    let later_staged = staged.split_off(&(label + 1));
                    let later_reports = reports.split_off(&(label + 1));
                    let later_states = states.split_off(&(label + 1));
                    for r in std::mem::replace(&mut reports, later_reports).into_values().flatten() {
                        current.insert((r.topic, r.partition), r.next_offset);
                        if let Some(us) = r.max_event_us {
                            watermarks.insert((r.topic, r.partition), us);
                        }
                        if let Some(ts) = r.last_ts_ms {
                            last_ts.insert((r.topic, r.partition), ts);
                        }
                    }
                    for file in std::mem::replace(&mut states, later_states).into_values().flatten() {
                        add_live(&mut live_state, file);
                    }
                    // Deltas whose every entry has expired are dead: the
                    // operators have evicted them, and so would a restore.
                    // (Never below the restored cut's: what follows this
                    // cut follows that one too.)
                    // The final cut (every source's run is over, see
                    // crate::stop): sources read nothing more, so the last
                    // frontier seen is as of it.
                    let seen = match min_epoch {
                        None | Some(STOPPED) => horizons.last,
                        Some(_) => horizons.as_of(label),
                    };
                    let horizon = seen.max(restored_horizon);
                    if let Some(h) = horizon {
                        live_state.retain(|s| s.max_expiry > h);
                    }
                    let mut by_participant: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
                    for s in std::mem::replace(&mut staged, later_staged).into_values().flatten() {
                        by_participant.entry(s.participant).or_default().push(s.payload);
                    }
                    let cut = Cut {
                        event_frontier_us: horizon,
                        epoch: label,
                        staged: by_participant,
                        offsets: current.clone(),
                        watermarks: watermarks.clone(),
                        last_ts: last_ts.clone(),
                        state: live_state.clone(),
                    };
                    if tx.send(cut).is_err() {
                        tracing::error!("commit thread is gone; the job is stopping");
                    }
                }
                if min_epoch.is_none() {
                    // Dropping the sender lets the commit thread finish.
                    sender = None;
                }
            }
        },
    );
}

/// The committer's observed event-time frontiers (µs), by the minimum epoch
/// of the frontier they were seen with.
#[derive(Default)]
struct Horizons {
    by_epoch: BTreeMap<u64, u64>,
    /// The last finite one, for the final cut.
    last: Option<u64>,
}

impl Horizons {
    /// Records the frontier's event time; `None` epoch: the input has ended.
    fn observe(&mut self, min_epoch: Option<u64>, event_us: u64) {
        if let (Some(epoch), true) = (min_epoch, event_us != u64::MAX) {
            self.by_epoch.insert(epoch, event_us);
            self.last = Some(event_us);
        }
    }

    /// The event frontier as of the cut through epoch `label`: the last one
    /// seen while epoch `label` was open; `None` if none was (all of them
    /// went by before the first activation). Forgets those no later cut needs.
    fn as_of(&mut self, label: u64) -> Option<u64> {
        let epoch = *self.by_epoch.range(..=label).next_back()?.0;
        self.by_epoch = self.by_epoch.split_off(&epoch);
        self.by_epoch.get(&epoch).copied()
    }
}

fn start_commit_thread(spec: CommitSpec) -> mpsc::Sender<Cut> {
    let (tx, rx) = mpsc::channel::<Cut>();
    let thread_spec = spec.clone();
    let handle = std::thread::Builder::new()
        .name("k2-committer".into())
        .spawn(move || {
            let spec = thread_spec;
            while let Ok(mut cut) = rx.recv() {
                // Cuts that queued while the previous commit ran are committed
                // as one, as of the newest: commits never queue behind each
                // other, so the commit interval shortens to what the catalog
                // allows.
                let mut queued = 0;
                while let Ok(next) = rx.try_recv() {
                    cut = cut.then(next);
                    queued += 1;
                }
                if queued > 0 {
                    tracing::debug!(
                        cuts = queued + 1,
                        epoch = cut.epoch,
                        "a commit outlasted the commit interval; committing the cuts queued behind it as one"
                    );
                    spec.stats.lock().expect("stats").coalesced += queued;
                }
                if spec.stats.lock().expect("stats").error.is_some() {
                    continue;
                }
                if let Err(e) = commit_cut(&spec, cut) {
                    let e = e.to_string();
                    tracing::error!(error = %e, "commit failed for good; stopping");
                    spec.stats.lock().expect("stats").error = Some(e.clone());
                    (spec.on_fatal)(e);
                }
            }
        })
        .expect("spawn committer thread");
    *spec.thread.lock().expect("thread slot") = Some(handle);
    tx
}

fn commit_cut(spec: &CommitSpec, mut cut: Cut) -> crate::error::Result<()> {
    let started = std::time::Instant::now();
    fault::point("before-manifest");
    spec.fence.check()?;
    let mut parts = BTreeMap::new();
    let mut produce_ms = Vec::new();
    for p in &spec.participants {
        let staged = cut.staged.remove(p.name()).unwrap_or_default();
        if staged.is_empty() {
            continue;
        }
        let prepared = p.prepare(&spec.job, cut.epoch, staged)?;
        produce_ms.extend(prepared.produce_ms);
        if let Some(part) = prepared.part {
            parts.insert(p.name().to_string(), part);
        }
    }
    if let Some(name) = cut.staged.keys().next() {
        return Err(crate::error::Error::Checkpoint(format!(
            "output was staged for `{name}`, which is no participant of this job"
        )));
    }
    let manifest = Manifest {
        job: spec.job.clone(),
        generation: spec.fence.generation,
        epoch: cut.epoch,
        created_ms: chrono::Utc::now().timestamp_millis(),
        offsets: named_offsets(&spec.topics, &cut.offsets),
        max_event_us: named_offsets(
            &spec.topics,
            &cut.watermarks.iter().map(|(k, v)| (*k, *v as i64)).collect(),
        ),
        last_ts_ms: named_offsets(&spec.topics, &cut.last_ts),
        state: cut.state,
        event_frontier_us: cut.event_frontier_us,
        parts,
        workers: spec.workers,
    };
    spec.manifests.write(&manifest)?;
    fault::point("after-manifest");

    let mut committed = Vec::new();
    for p in &spec.participants {
        if let Some(part) = manifest.parts.get(p.name()) {
            committed.push(p.commit(&manifest, part, Some(&spec.fence))?);
        }
    }
    let mut stats = spec.stats.lock().expect("stats");
    let mut visible = None;
    for c in &committed {
        stats.snapshots += c.commits;
        for took in &c.took {
            let _ = stats.commit_us.record(took.as_micros() as u64);
        }
        for (dest, rows) in &c.rows {
            *stats.rows.entry(dest.clone()).or_default() += rows;
        }
        visible = visible.max(c.visible_ms);
    }
    if let Some(visible) = visible {
        for (ms, n) in &produce_ms {
            let _ = stats.latency_ms.record_n((visible - ms).max(0) as u64, *n as u64);
        }
    }
    stats.cuts += 1;
    stats.last_epoch = Some(cut.epoch);
    stats.first_commit_at.get_or_insert_with(std::time::Instant::now);
    let prune = stats.cuts % 10 == 1;
    let took = started.elapsed();
    let _ = stats.cut_us.record(took.as_micros() as u64);
    drop(stats);
    if let Some(hook) = &spec.on_committed {
        hook(&manifest, took);
    }
    if prune {
        prune_checkpoints(&spec.manifests, &spec.state_store, spec.keep_manifests, cut.epoch);
    }
    for p in &spec.participants {
        p.maintain();
    }
    Ok(())
}

/// Keeps the newest `keep` manifests and the state files they reference.
pub fn prune_checkpoints(manifests: &ManifestStore, state: &StateStore, keep: usize, epoch: u64) {
    let result = (|| -> crate::error::Result<()> {
        manifests.prune(keep)?;
        let mut live = HashSet::new();
        for e in manifests.epochs()? {
            live.extend(manifests.read(e)?.state.into_iter().map(|s| s.path));
        }
        state.prune(&live, Some(epoch))?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "pruning old checkpoints failed; will retry later");
    }
}

/// A deterministic id for one destination's commit of one cut: FNV-1a of
/// `job/destination/epoch`, stable across builds and platforms.
pub fn commit_id(job: &str, destination: &str, epoch: u64) -> String {
    format!(
        "{:016x}",
        crate::hash::fnv1a(format!("{job}/{destination}/{epoch}").as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::{Cut, Horizons};
    use std::collections::BTreeMap;

    fn cut(epoch: u64, staged: &[(&str, &[u8])], offset: i64) -> Cut {
        let mut by: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (p, bytes) in staged {
            by.entry(p.to_string()).or_default().push(bytes.to_vec());
        }
        Cut {
            epoch,
            staged: by,
            offsets: BTreeMap::from([((0, 0), offset)]),
            watermarks: BTreeMap::new(),
            last_ts: BTreeMap::new(),
            state: Vec::new(),
            event_frontier_us: Some(epoch * 10),
        }
    }

    #[test]
    fn queued_cuts_commit_everything_both_staged_as_of_the_later() {
        let a = cut(4, &[("iceberg", b"a1"), ("kafka", b"k1")], 10);
        let b = cut(9, &[("iceberg", b"b1"), ("iceberg", b"b2")], 25);
        let c = cut(14, &[], 31);
        let merged = a.then(b).then(c);
        assert_eq!(merged.epoch, 14);
        assert_eq!(merged.offsets[&(0, 0)], 31);
        assert_eq!(merged.event_frontier_us, Some(140));
        assert_eq!(
            merged.staged["iceberg"],
            vec![b"a1".to_vec(), b"b1".to_vec(), b"b2".to_vec()]
        );
        assert_eq!(merged.staged["kafka"], vec![b"k1".to_vec()]);
    }

    #[test]
    fn a_cut_gets_the_event_frontier_seen_while_its_epochs_were_open() {
        let mut h = Horizons::default();
        h.observe(Some(3), 100);
        h.observe(Some(3), 150);
        h.observe(Some(5), 400); // epochs 3 and 4 closed; event time moved on
        assert_eq!(h.as_of(4), Some(150), "not the later frontier's 400");
        h.observe(Some(6), 500);
        assert_eq!(h.as_of(5), Some(400));
        assert_eq!(h.as_of(2), None, "forgotten, or never seen: no horizon");
        h.observe(None, u64::MAX);
        assert_eq!(h.last, Some(500));
    }
}
