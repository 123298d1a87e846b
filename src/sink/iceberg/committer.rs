//! The committer: the second half of the commit protocol, on worker 0.
//!
//! It collects every worker's [`StagedFiles`] and every source worker's
//! [`OffsetReport`]s. Once its input frontier has passed the end of a commit
//! group, no worker can still send files or offsets for that group, so the cut
//! is complete: it commits each table of the job with one fast append whose
//! snapshot summary carries
//!
//! * `k2.job`: the job name;
//! * `k2.epoch`: the commit group's last epoch, the same for every table of
//!   the cut, so readers can line tables up;
//! * `k2.offsets`: `{topic: {partition: next offset}}` at the end of the cut;
//! * `k2.commit-id`: a hash of job, table and epoch. A commit whose id is
//!   already in the table is skipped, so a retried commit never appends twice.
//!
//! Commits run on a dedicated thread, in order, so a slow catalog never blocks
//! a timely worker. Tables that received no rows get no snapshot.

use super::catalog::JobCatalog;
use super::writer::{CommitGroups, StagedFiles};
use crate::time::Time;
use hdrhistogram::Histogram;
use iceberg::spec::deserialize_data_file_from_json;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

/// Source progress: the next offset of a partition when an epoch closed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OffsetReport {
    /// The epoch that closed.
    pub epoch: u64,
    /// Topic index in the job's topic list.
    pub topic: u16,
    /// Partition.
    pub partition: i32,
    /// The next offset to read: everything before it is in epochs `<= epoch`.
    pub next_offset: i64,
}

/// What the committer has done, for the CLI, the demo and the tests.
#[derive(Debug)]
pub struct CommitStats {
    /// Iceberg snapshots committed.
    pub snapshots: u64,
    /// Cuts committed (each makes one snapshot per table that had rows).
    pub cuts: u64,
    /// Rows committed, per table.
    pub rows: BTreeMap<String, u64>,
    /// Produce-to-visible latency of committed rows, ms.
    pub latency_ms: Histogram<u64>,
    /// Time taken by each table commit, µs.
    pub commit_us: Histogram<u64>,
    /// The last committed cut's epoch.
    pub last_epoch: Option<u64>,
    /// The last committed cut's offsets, `(topic index, partition) -> next`.
    pub offsets: BTreeMap<(u16, i32), i64>,
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
            offsets: BTreeMap::new(),
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
}

/// One cut to commit.
struct Cut {
    epoch: u64,
    files: BTreeMap<String, Vec<StagedFiles>>,
    offsets: BTreeMap<(u16, i32), i64>,
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

/// `k2.offsets` as JSON: `{topic: {partition: next offset}}`.
pub fn offsets_json(topics: &[String], offsets: &BTreeMap<(u16, i32), i64>) -> String {
    let mut by_topic: BTreeMap<&str, BTreeMap<String, i64>> = BTreeMap::new();
    for ((t, p), o) in offsets {
        let name = topics.get(*t as usize).map(String::as_str).unwrap_or("?");
        by_topic.entry(name).or_default().insert(p.to_string(), *o);
    }
    serde_json::to_string(&by_topic).expect("offsets serialize")
}

/// Commits staged files and source offsets, one cut per commit group.
pub fn commit<'scope>(
    staged: Stream<'scope, Time, Vec<StagedFiles>>,
    offsets: Stream<'scope, Time, Vec<OffsetReport>>,
    spec: CommitSpec,
) {
    let index = staged.scope().index();
    let _unused: Stream<'scope, Time, Vec<()>> = staged
        .binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
            offsets,
            Exchange::new(|_: &StagedFiles| 0),
            Exchange::new(|_: &OffsetReport| 0),
            "Committer",
            move |_cap, _info| {
                let mut sender = (index == 0).then(|| start_commit_thread(spec.clone()));
                let mut files: BTreeMap<u64, Vec<StagedFiles>> = BTreeMap::new();
                let mut reports: BTreeMap<u64, Vec<OffsetReport>> = BTreeMap::new();
                let mut current: BTreeMap<(u16, i32), i64> = BTreeMap::new();
                move |(in1, f1), (in2, f2), _output| {
                    in1.for_each_stamp(|_cap, data| {
                        for batch in data {
                            for s in batch.drain(..) {
                                files.entry(s.group).or_default().push(s);
                            }
                        }
                    });
                    in2.for_each_stamp(|_cap, data| {
                        for batch in data {
                            for r in batch.drain(..) {
                                reports.entry(r.epoch).or_default().push(r);
                            }
                        }
                    });
                    let Some(tx) = sender.as_ref() else { return };
                    let min_epoch = f1.frontier().iter().chain(f2.frontier().iter()).map(|t| t.epoch).min();
                    let finished = min_epoch.is_none();
                    let label = match min_epoch {
                        // Everything is in: commit the rest under the last group.
                        None => {
                            let last = files
                                .keys()
                                .next_back()
                                .copied()
                                .max(reports.keys().next_back().copied());
                            last.map(|e| spec.groups.group_of(e))
                        }
                        Some(0) => None,
                        // The newest group with files that the frontier has passed.
                        Some(e) => files.range(..e).next_back().map(|(g, _)| *g),
                    };
                    if let Some(label) = label {
                        let later_files = files.split_off(&(label + 1));
                        let later_reports = reports.split_off(&(label + 1));
                        for r in std::mem::replace(&mut reports, later_reports).into_values().flatten() {
                            current.insert((r.topic, r.partition), r.next_offset);
                        }
                        let mut by_table: BTreeMap<String, Vec<StagedFiles>> = BTreeMap::new();
                        for s in std::mem::replace(&mut files, later_files).into_values().flatten() {
                            by_table.entry(s.table.clone()).or_default().push(s);
                        }
                        let cut = Cut {
                            epoch: label,
                            files: by_table,
                            offsets: current.clone(),
                        };
                        if tx.send(cut).is_err() {
                            tracing::error!("commit thread is gone; the job is stopping");
                        }
                    }
                    if finished {
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
                if let Err(e) = spec.runtime.block_on(commit_cut(&spec, &cut)) {
                    tracing::error!(error = %e, epoch = cut.epoch, "commit failed for good");
                    spec.stats.lock().expect("stats").error = Some(e.clone());
                    (spec.on_fatal)(e);
                }
            }
        })
        .expect("spawn committer thread");
    *spec.thread.lock().expect("thread slot") = Some(handle);
    tx
}

async fn commit_cut(spec: &CommitSpec, cut: &Cut) -> Result<(), String> {
    let offsets = offsets_json(&spec.topics, &cut.offsets);
    let mut snapshots = 0;
    for table in &spec.tables {
        let Some(staged) = cut.files.get(table) else { continue };
        if staged.iter().all(|s| s.data_files.is_empty()) {
            continue;
        }
        let id = commit_id(&spec.job, table, cut.epoch);
        let props = HashMap::from([
            ("k2.job".to_string(), spec.job.clone()),
            ("k2.epoch".to_string(), cut.epoch.to_string()),
            ("k2.offsets".to_string(), offsets.clone()),
            ("k2.commit-id".to_string(), id.clone()),
        ]);
        let mut attempt = 0u32;
        loop {
            let started = std::time::Instant::now();
            match commit_table(spec, table, &id, staged, props.clone()).await {
                Ok(Some(commit_ms)) => {
                    let mut stats = spec.stats.lock().expect("stats");
                    let _ = stats.commit_us.record(started.elapsed().as_micros() as u64);
                    *stats.rows.entry(table.clone()).or_default() += staged.iter().map(|s| s.rows).sum::<u64>();
                    for s in staged {
                        for (ms, n) in &s.produce_ms {
                            let _ = stats.latency_ms.record_n((commit_ms - ms).max(0) as u64, *n as u64);
                        }
                    }
                    snapshots += 1;
                    break;
                }
                Ok(None) => {
                    tracing::info!(table, epoch = cut.epoch, "commit already in the table; skipped");
                    break;
                }
                Err(e) if attempt < 8 => {
                    attempt += 1;
                    let wait = Duration::from_millis(100 << attempt.min(6));
                    tracing::warn!(table, epoch = cut.epoch, error = %e, "commit failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(format!("commit of epoch {} to {table} failed: {e}", cut.epoch)),
            }
        }
    }
    let mut stats = spec.stats.lock().expect("stats");
    stats.snapshots += snapshots;
    stats.cuts += 1;
    stats.last_epoch = Some(cut.epoch);
    stats.offsets = cut.offsets.clone();
    tracing::debug!(epoch = cut.epoch, snapshots, "cut committed");
    Ok(())
}

/// Commits one table; `Ok(None)` when the commit id is already there.
async fn commit_table(
    spec: &CommitSpec,
    table: &str,
    id: &str,
    staged: &[StagedFiles],
    props: HashMap<String, String>,
) -> Result<Option<i64>, String> {
    let t = spec.catalog.load(table).await.map_err(|e| e.to_string())?;
    let metadata = t.metadata();
    let already = metadata.snapshots().any(|s| {
        s.summary()
            .additional_properties
            .get("k2.commit-id")
            .map(String::as_str)
            == Some(id)
    });
    if already {
        return Ok(None);
    }
    let schema = metadata.current_schema();
    let spec_ref = metadata.default_partition_spec();
    let partition_type = spec_ref.partition_type(schema).map_err(|e| e.to_string())?;
    let mut data_files = Vec::new();
    for s in staged {
        for json in &s.data_files {
            data_files.push(
                deserialize_data_file_from_json(json, spec_ref.spec_id(), &partition_type, schema)
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    let tx = Transaction::new(&t);
    let tx = tx
        .fast_append()
        .with_check_duplicate(false)
        .set_snapshot_properties(props)
        .add_data_files(data_files)
        .apply(tx)
        .map_err(|e| e.to_string())?;
    let committed = tx
        .commit(spec.catalog.catalog.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let ms = committed
        .metadata()
        .current_snapshot()
        .map(|s| s.timestamp_ms())
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    Ok(Some(ms))
}
