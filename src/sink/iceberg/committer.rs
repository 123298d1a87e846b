//! The committer: the second half of the commit protocol, on worker 0.
//!
//! It collects every worker's [`StagedFiles`], every source worker's
//! [`OffsetReport`]s and every stateful operator's [`StateFile`]s. Once its
//! input frontier has passed the end of a commit group, no worker can still
//! send anything for that group, so the cut is complete. A dedicated thread
//! then, in order:
//!
//! 1. checks the fence (a newer instance of the job stops this one);
//! 2. writes the cut's [`Manifest`]: offsets, live state files, and each
//!    table's new data files. **This is the commit point**;
//! 3. appends each table that has files in the cut, with the snapshot summary
//!    `k2.job`, `k2.epoch` (equal across tables), `k2.offsets`,
//!    `k2.generation` and `k2.commit-id`, skipping a table that already has
//!    the cut (so a retry, or recovery rolling the cut forward, never
//!    appends twice);
//! 4. now and then prunes old manifests and dead state files.
//!
//! Commits run off the timely workers, so a slow catalog never blocks one.
//! Tables that received no rows get no snapshot; the manifest still records
//! the cut.

use super::catalog::JobCatalog;
use super::writer::{CommitGroups, StagedFiles};
use crate::checkpoint::manifest::{Manifest, ManifestStore, TableCommit};
use crate::checkpoint::state::{StateFile, StateStore, add_live};
use crate::checkpoint::{Fence, fault};
use crate::sink::kafka::{KafkaBatch, TxnPublisher};
use crate::source::kafka::OffsetReport;
use crate::time::{Time, event_frontier};
use hdrhistogram::Histogram;
use iceberg::spec::deserialize_data_file_from_json;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

/// Everything the committer consumes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CommitItem {
    /// Data files staged by a sink.
    Files(StagedFiles),
    /// Source offsets at an epoch's close.
    Offsets(OffsetReport),
    /// An operator-state delta.
    State(StateFile),
    /// Records for a transactional Kafka sink.
    Kafka(KafkaBatch),
}

impl From<KafkaBatch> for CommitItem {
    fn from(b: KafkaBatch) -> Self {
        CommitItem::Kafka(b)
    }
}

impl From<StagedFiles> for CommitItem {
    fn from(s: StagedFiles) -> Self {
        CommitItem::Files(s)
    }
}
impl From<OffsetReport> for CommitItem {
    fn from(r: OffsetReport) -> Self {
        CommitItem::Offsets(r)
    }
}
impl From<StateFile> for CommitItem {
    fn from(s: StateFile) -> Self {
        CommitItem::State(s)
    }
}

/// What the committer has done, for the CLI, the demo and the tests.
#[derive(Debug)]
pub struct CommitStats {
    /// Iceberg snapshots committed.
    pub snapshots: u64,
    /// Cuts committed (one manifest each).
    pub cuts: u64,
    /// Rows committed, per table.
    pub rows: BTreeMap<String, u64>,
    /// Produce-to-visible latency of committed rows, ms.
    pub latency_ms: Histogram<u64>,
    /// Time taken by each table commit, µs.
    pub commit_us: Histogram<u64>,
    /// The last committed cut's epoch.
    pub last_epoch: Option<u64>,
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
            last_epoch: None,
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
    /// The catalog.
    pub catalog: JobCatalog,
    /// The job's tables, in commit order.
    pub tables: Vec<String>,
    /// Topic names by index.
    pub topics: Arc<Vec<String>>,
    /// The commit-group rule, shared with the writers.
    pub groups: CommitGroups,
    /// Runtime for iceberg's async API.
    pub runtime: tokio::runtime::Handle,
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
    /// Live state files of the restored checkpoint.
    pub restored_state: Vec<StateFile>,
    /// Offsets of the restored checkpoint.
    pub restored_offsets: BTreeMap<(u16, i32), i64>,
    /// Per-partition largest event times (µs) of the restored checkpoint.
    pub restored_watermarks: BTreeMap<(u16, i32), u64>,
    /// Per-partition Kafka timestamps of the last messages read, of the restored checkpoint.
    pub restored_last_ts: BTreeMap<(u16, i32), i64>,
    /// The event-time frontier of the restored checkpoint, µs.
    pub restored_event_frontier: Option<u64>,
    /// Workers of this instance, recorded in manifests.
    pub workers: usize,
    /// The Kafka settings of transactional Kafka sinks.
    pub kafka: crate::config::KafkaConfig,
}

/// One cut to commit.
struct Cut {
    epoch: u64,
    files: BTreeMap<String, Vec<StagedFiles>>,
    offsets: BTreeMap<(u16, i32), i64>,
    watermarks: BTreeMap<(u16, i32), u64>,
    last_ts: BTreeMap<(u16, i32), i64>,
    state: Vec<StateFile>,
    kafka: Vec<KafkaBatch>,
    event_frontier_us: Option<u64>,
}

/// A deterministic id for one table's commit of one cut.
pub fn commit_id(job: &str, table: &str, epoch: u64) -> String {
    // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in format!("{job}/{table}/{epoch}").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
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

/// Commits staged files, state and source offsets, one cut per commit group.
pub fn commit<'scope>(items: Stream<'scope, Time, Vec<CommitItem>>, spec: CommitSpec) {
    let index = items.scope().index();
    let _unused: Stream<'scope, Time, Vec<()>> = items.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &CommitItem| 0),
        "Committer",
        move |_cap, _info| {
            let mut sender = (index == 0).then(|| start_commit_thread(spec.clone()));
            let mut files: BTreeMap<u64, Vec<StagedFiles>> = BTreeMap::new();
            let mut reports: BTreeMap<u64, Vec<OffsetReport>> = BTreeMap::new();
            let mut states: BTreeMap<u64, Vec<StateFile>> = BTreeMap::new();
            let mut kafka: BTreeMap<u64, Vec<KafkaBatch>> = BTreeMap::new();
            let mut live_state: Vec<StateFile> = spec.restored_state.clone();
            let mut current = spec.restored_offsets.clone();
            let mut watermarks = spec.restored_watermarks.clone();
            let mut last_ts = spec.restored_last_ts.clone();
            // The last finite event-time frontier: a final cut (empty
            // frontier) records it, not "unknown", so that a restore knows
            // which state its pruned logs had already expired.
            let mut last_horizon = spec.restored_event_frontier;
            move |(input, frontier), _output| {
                input.for_each_stamp(|_cap, data| {
                    for batch in data {
                        for item in batch.drain(..) {
                            match item {
                                CommitItem::Files(s) => files.entry(s.group).or_default().push(s),
                                CommitItem::Offsets(r) => reports.entry(r.epoch).or_default().push(r),
                                CommitItem::State(s) => states.entry(s.group).or_default().push(s),
                                CommitItem::Kafka(b) => kafka.entry(b.group).or_default().push(b),
                            }
                        }
                    }
                });
                let Some(tx) = sender.as_ref() else { return };
                let frontier = frontier.frontier();
                let min_epoch = frontier.iter().map(|t| t.epoch).min();
                let label = match min_epoch {
                    // Everything is in: commit the rest under the last group.
                    None => {
                        let last = [
                            files.keys().next_back(),
                            reports.keys().next_back(),
                            states.keys().next_back(),
                            kafka.keys().next_back(),
                        ]
                        .into_iter()
                        .flatten()
                        .max()
                        .copied();
                        last.map(|e| spec.groups.group_of(e))
                    }
                    Some(0) => None,
                    // The newest group the frontier has passed with files,
                    // state, or offsets that moved (a cut of only duplicates
                    // or control messages still records how far it read).
                    Some(e) => {
                        let f = files.range(..e).next_back().map(|(g, _)| *g);
                        let s = states.range(..e).next_back().map(|(g, _)| *g);
                        let k = kafka.range(..e).next_back().map(|(g, _)| *g);
                        let moved = reports
                            .range(..e)
                            .filter(|(_, rs)| {
                                rs.iter()
                                    .any(|r| current.get(&(r.topic, r.partition)) != Some(&r.next_offset))
                            })
                            .map(|(epoch, _)| spec.groups.group_of(*epoch))
                            .filter(|g| *g < e)
                            .max();
                        f.max(s).max(k).max(moved)
                    }
                };
                if let Some(label) = label {
                    let later_files = files.split_off(&(label + 1));
                    let later_reports = reports.split_off(&(label + 1));
                    let later_states = states.split_off(&(label + 1));
                    let later_kafka = kafka.split_off(&(label + 1));
                    let cut_kafka: Vec<KafkaBatch> = std::mem::replace(&mut kafka, later_kafka)
                        .into_values()
                        .flatten()
                        .collect();
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
                    let horizon = event_frontier(frontier.iter());
                    if horizon != u64::MAX {
                        last_horizon = Some(horizon);
                    }
                    if let Some(h) = last_horizon {
                        live_state.retain(|s| s.max_expiry > h);
                    }
                    let mut by_table: BTreeMap<String, Vec<StagedFiles>> = BTreeMap::new();
                    for s in std::mem::replace(&mut files, later_files).into_values().flatten() {
                        by_table.entry(s.table.clone()).or_default().push(s);
                    }
                    let cut = Cut {
                        event_frontier_us: last_horizon,
                        epoch: label,
                        files: by_table,
                        offsets: current.clone(),
                        watermarks: watermarks.clone(),
                        last_ts: last_ts.clone(),
                        state: live_state.clone(),
                        kafka: cut_kafka,
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

fn start_commit_thread(spec: CommitSpec) -> mpsc::Sender<Cut> {
    let (tx, rx) = mpsc::channel::<Cut>();
    let thread_spec = spec.clone();
    let handle = std::thread::Builder::new()
        .name("k2-committer".into())
        .spawn(move || {
            let spec = thread_spec;
            for cut in rx {
                if spec.stats.lock().expect("stats").error.is_some() {
                    continue;
                }
                if let Err(e) = commit_cut(&spec, &cut) {
                    tracing::error!(error = %e, epoch = cut.epoch, "commit failed for good; stopping");
                    spec.stats.lock().expect("stats").error = Some(e.clone());
                    (spec.on_fatal)(e);
                }
            }
        })
        .expect("spawn committer thread");
    *spec.thread.lock().expect("thread slot") = Some(handle);
    tx
}

fn commit_cut(spec: &CommitSpec, cut: &Cut) -> Result<(), String> {
    fault::point("before-manifest");
    spec.fence.check().map_err(|e| e.to_string())?;
    let mut tables = BTreeMap::new();
    for table in &spec.tables {
        let Some(staged) = cut.files.get(table) else { continue };
        let data_files: Vec<String> = staged.iter().flat_map(|s| s.data_files.iter().cloned()).collect();
        if data_files.is_empty() {
            continue;
        }
        tables.insert(
            table.clone(),
            TableCommit {
                commit_id: commit_id(&spec.job, table, cut.epoch),
                data_files,
                rows: staged.iter().map(|s| s.rows).sum(),
                bytes: staged.iter().map(|s| s.bytes).sum(),
            },
        );
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
        state: cut.state.clone(),
        kafka: cut.kafka.clone(),
        event_frontier_us: cut.event_frontier_us,
        tables,
        workers: spec.workers,
    };
    spec.manifests.write(&manifest).map_err(|e| e.to_string())?;
    fault::point("after-manifest");
    publish_kafka(&spec.kafka, &manifest).map_err(|e| e.to_string())?;

    let committed = spec.runtime.block_on(commit_manifest(
        &spec.catalog,
        &spec.tables,
        &manifest,
        Some(&spec.fence),
    ))?;
    let mut stats = spec.stats.lock().expect("stats");
    for (table, (commit_ms, took)) in &committed {
        let _ = stats.commit_us.record(took.as_micros() as u64);
        let staged = &cut.files[table];
        *stats.rows.entry(table.clone()).or_default() += staged.iter().map(|s| s.rows).sum::<u64>();
        for s in staged {
            for (ms, n) in &s.produce_ms {
                let _ = stats.latency_ms.record_n((commit_ms - ms).max(0) as u64, *n as u64);
            }
        }
    }
    stats.snapshots += committed.len() as u64;
    stats.cuts += 1;
    stats.last_epoch = Some(cut.epoch);
    stats.first_commit_at.get_or_insert_with(std::time::Instant::now);
    let prune = stats.cuts % 10 == 1;
    drop(stats);
    if prune {
        prune_checkpoints(&spec.manifests, &spec.state_store, spec.keep_manifests, cut.epoch);
    }
    Ok(())
}

/// Publishes the manifest's transactional Kafka records unless already there.
pub fn publish_kafka(kafka: &crate::config::KafkaConfig, manifest: &Manifest) -> crate::error::Result<()> {
    let Some(first) = manifest.kafka.first() else {
        return Ok(());
    };
    thread_local! {
        static PUBLISHER: std::cell::RefCell<Option<TxnPublisher>> = const { std::cell::RefCell::new(None) };
    }
    PUBLISHER.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_none() {
            *p = Some(TxnPublisher::new(kafka, &manifest.job, &first.topic)?);
        }
        let published = p.as_ref().expect("publisher").publish(manifest.epoch, &manifest.kafka);
        if published.is_err() {
            // A failed transaction leaves the producer unusable: start over.
            *p = None;
        }
        published.map(|_| ())
    })
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

/// Appends every table of `manifest` that does not have its cut yet, in
/// `order`. Used by the committer and by recovery (roll forward). Returns,
/// per table committed now, the commit time (ms) and its duration.
pub async fn commit_manifest(
    catalog: &JobCatalog,
    order: &[String],
    manifest: &Manifest,
    fence: Option<&Fence>,
) -> Result<BTreeMap<String, (i64, Duration)>, String> {
    let mut done = BTreeMap::new();
    let mut first = true;
    for table in order {
        let Some(tc) = manifest.tables.get(table) else { continue };
        if !first {
            fault::point("between-tables");
        }
        first = false;
        let props = HashMap::from([
            ("k2.job".to_string(), manifest.job.clone()),
            ("k2.epoch".to_string(), manifest.epoch.to_string()),
            ("k2.offsets".to_string(), manifest.offsets_json()),
            ("k2.generation".to_string(), manifest.generation.to_string()),
            ("k2.commit-id".to_string(), tc.commit_id.clone()),
        ]);
        let mut attempt = 0u32;
        let mut delays = crate::retry::backoff(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            if let Some(f) = fence {
                f.check().map_err(|e| e.to_string())?;
            }
            let started = std::time::Instant::now();
            match commit_table(catalog, table, &manifest.job, manifest.epoch, tc, props.clone()).await {
                Ok(Some(ms)) => {
                    done.insert(table.clone(), (ms, started.elapsed()));
                    break;
                }
                Ok(None) => {
                    tracing::debug!(table, epoch = manifest.epoch, "cut already in the table; skipped");
                    break;
                }
                Err(e) if attempt < 8 => {
                    attempt += 1;
                    let wait = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(table, epoch = manifest.epoch, error = %e, "commit failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(format!("commit of epoch {} to {table} failed: {e}", manifest.epoch)),
            }
        }
    }
    Ok(done)
}

/// The newest `k2.epoch` this job committed to `table`, among retained snapshots.
pub fn newest_epoch(table: &iceberg::table::Table, job: &str) -> Option<u64> {
    table
        .metadata()
        .snapshots()
        .filter(|s| s.summary().additional_properties.get("k2.job").map(String::as_str) == Some(job))
        .filter_map(|s| s.summary().additional_properties.get("k2.epoch")?.parse().ok())
        .max()
}

/// Commits one table; `Ok(None)` when the table already has this cut.
async fn commit_table(
    catalog: &JobCatalog,
    table: &str,
    job: &str,
    epoch: u64,
    tc: &TableCommit,
    props: HashMap<String, String>,
) -> Result<Option<i64>, String> {
    let t = catalog.load(table).await.map_err(|e| e.to_string())?;
    let metadata = t.metadata();
    let has_id = metadata
        .snapshots()
        .any(|s| s.summary().additional_properties.get("k2.commit-id") == Some(&tc.commit_id));
    // Cuts are committed in order, so a table at this epoch or later has it.
    if has_id || newest_epoch(&t, job).is_some_and(|e| e >= epoch) {
        return Ok(None);
    }
    let schema = metadata.current_schema();
    let spec_ref = metadata.default_partition_spec();
    let partition_type = spec_ref.partition_type(schema).map_err(|e| e.to_string())?;
    let mut data_files = Vec::with_capacity(tc.data_files.len());
    for json in &tc.data_files {
        data_files.push(
            deserialize_data_file_from_json(json, spec_ref.spec_id(), &partition_type, schema)
                .map_err(|e| e.to_string())?,
        );
    }
    let tx = Transaction::new(&t);
    let tx = tx
        .fast_append()
        .with_check_duplicate(false)
        .set_snapshot_properties(props)
        .add_data_files(data_files)
        .apply(tx)
        .map_err(|e| e.to_string())?;
    let committed = tx.commit(catalog.catalog.as_ref()).await.map_err(|e| e.to_string())?;
    let ms = committed
        .metadata()
        .current_snapshot()
        .map(|s| s.timestamp_ms())
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    Ok(Some(ms))
}
