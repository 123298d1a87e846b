//! Launching a job: timely configuration, the shared job context, and the run loop.
//!
//! [`run`] does, in order:
//! 1. open the Iceberg catalog and create the dataflow's tables;
//! 2. take the job's lock and generation, and recover: roll the newest cut
//!    forward, remove orphans, and resume after it (offsets, watermarks and
//!    operator state from its manifest);
//! 3. plan the Kafka partitions and their offsets (once, for all workers);
//! 4. start the timely workers, each building the dataflow with a
//!    [`JobContext`], and step them until the dataflow is done;
//! 5. wait for the last commit and report.
//!
//! In a job of several processes only process 0 does 2 and 3, and commits;
//! the others receive its plan and checkpoint in a [`handshake`] before
//! timely connects them. [`supervisor`] launches and restarts such a cluster.
//!
//! All bridging between tokio (iceberg's async API, signals) and the timely
//! workers is here and in the sink's committer thread: workers call
//! `Handle::block_on` only to write their own data files.

pub mod handshake;
pub mod supervisor;
pub mod timely_args;

use crate::checkpoint::manifest::{Manifest, ManifestStore};
use crate::checkpoint::state::{StateCheckpoint, StateFile, StateStore};
use crate::checkpoint::{Fence, JobLock};
use crate::config::{Config, RunMode, StartPosition};
use crate::error::{Error, Result};
use crate::operators::dedup::DedupStats;
use crate::record::{DeadLetter, Trade};
use crate::sink::iceberg::committer::{CommitSpec, CommitStats};
use crate::sink::iceberg::committer::{commit_manifest, prune_checkpoints};
use crate::sink::iceberg::maintenance;
use crate::sink::iceberg::writer::TableWriter;
use crate::sink::iceberg::{CommitGroups, CommitItem, JobCatalog, RowContext, TableRow};
use crate::source::kafka::{
    PartitionWatch, Resume, SourcePlan, SourceSpec, SourceStats, SourceStreams, StopSignal, kafka_source,
};
use crate::time::Time;
use iceberg::table::Table;
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timely::dataflow::{Scope, Stream};
pub use timely_args::TimelyArgs;

/// The row type of a table, so the launcher can create it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// Normalized trades.
    Trades,
    /// Dead letters.
    DeadLetters,
    /// Arbitrage alerts.
    Alerts,
}

/// A named dataflow: its tables and how to build it on one worker.
pub struct Dataflow {
    /// Name used on the command line: `k2 run <name>`.
    pub name: &'static str,
    /// One line for `k2 run --help` and the registry listing.
    pub about: &'static str,
    /// The tables it writes, created at start, committed in this order.
    pub tables: &'static [(&'static str, TableKind)],
    /// Builds the dataflow in `scope`.
    pub build: for<'scope> fn(&JobContext, Scope<'scope, Time>) -> Result<()>,
    /// Run once per process before the workers start, e.g. to create the
    /// Kafka topics the dataflow writes.
    pub prepare: Option<fn(&Config) -> Result<()>>,
}

/// Options of one run that are not part of the job's config.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Stop requests (signals, the demo, the committer on a fatal error).
    pub stop: StopSignal,
    /// Set once the sources have their partitions and offsets.
    pub ready: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Start afresh from this position, discarding the job's checkpoints.
    /// Only ever on explicit request (`k2 run --reset`).
    pub reset: Option<StartPosition>,
    /// The user confirmed a reset of a job whose tables hold rows (`--yes`).
    pub reset_acknowledged: bool,
}

/// Shared by every worker of a process: configuration, plan, tables, stats.
pub struct JobContext {
    /// The job's config.
    pub config: Config,
    /// The Kafka partitions and offsets of this run.
    pub plan: SourcePlan,
    /// The first epoch of this run.
    pub first_epoch: u64,
    /// The catalog.
    pub catalog: JobCatalog,
    /// The job's tables, as loaded at start.
    pub tables: BTreeMap<String, Table>,
    /// A per-run token used in file names.
    pub run_id: String,
    /// The async runtime.
    pub runtime: tokio::runtime::Handle,
    /// Stop requests.
    pub stop: StopSignal,
    /// Stalled sinks pause the sources.
    pub backpressure: crate::checkpoint::Backpressure,
    /// Source counters.
    pub source_stats: Arc<SourceStats>,
    /// The counters of every dedup operator (see [`JobContext::dedup_stats`]).
    pub dedup_counters: Mutex<BTreeMap<String, Arc<DedupStats>>>,
    /// Interval-join counters.
    pub join_stats: Arc<crate::operators::JoinStats>,
    /// Kafka sink counters.
    pub kafka_stats: Arc<crate::sink::kafka::KafkaSinkStats>,
    /// Commit statistics.
    pub commit_stats: Arc<Mutex<CommitStats>>,
    /// The committer thread, joined at the end.
    pub commit_thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The dataflow's table names, in commit order.
    pub table_order: Vec<String>,
    /// The job's checkpoint folder.
    pub job_dir: std::path::PathBuf,
    /// This instance's generation.
    pub fence: Fence,
    /// The checkpoint this run resumed from, if any.
    pub restored: Option<Manifest>,
    /// Where the sources resumed, by topic index (offsets, watermarks, last
    /// Kafka timestamps), from the restored checkpoint.
    pub resume: Resume,
    /// Partitions added while the job runs (continuous jobs).
    pub watch: Option<PartitionWatch>,
    /// Workers over the whole cluster.
    pub workers: usize,
    /// Processes in the cluster.
    pub processes: usize,
}

impl JobContext {
    /// librdkafka consumer settings. Every override says why.
    pub fn consumer_config(&self) -> ClientConfig {
        consumer_config(&self.config)
    }

    /// The counters of the dedup operator named `operator`, shared by all
    /// workers of the process. The run report's `duplicates` is the most any
    /// one operator removed: in a job with two dedups over the same trades
    /// (bronze and arbitrage), each duplicate counts once.
    pub fn dedup_stats(&self, operator: &str) -> Arc<DedupStats> {
        let mut counters = self.dedup_counters.lock().expect("dedup counters");
        counters.entry(operator.to_string()).or_default().clone()
    }

    /// The commit-group rule of this job.
    pub fn groups(&self) -> CommitGroups {
        CommitGroups {
            epoch_ms: self.config.job.epoch_ms,
            commit_interval_ms: self.config.job.commit_interval_ms,
        }
    }

    /// Topic names by index.
    pub fn topic_names(&self) -> Arc<Vec<String>> {
        Arc::new(self.config.kafka.topics.list().into_iter().map(|(_, t)| t).collect())
    }

    /// The Kafka source for this worker's share of the partitions.
    pub fn kafka_source<'scope>(&self, scope: Scope<'scope, Time>) -> Result<SourceStreams<'scope>> {
        let source = &self.config.source;
        let spec = SourceSpec {
            client: self.consumer_config(),
            partitions: self.plan.for_worker(scope.index(), scope.peers()),
            watch: self.watch.clone(),
            worker: (scope.index(), scope.peers()),
            epoch_ms: self.config.job.epoch_ms,
            first_epoch: self.first_epoch,
            max_out_of_orderness_ms: source.max_out_of_orderness_ms,
            idle_timeout_ms: source.idle_timeout_ms,
            max_future_ms: source.max_future_ms,
            future: source.future,
            control: source.control,
            bounded: self.config.job.mode == RunMode::Bounded,
            poll_batch: self.config.kafka.poll_batch,
            stop: self.stop.clone(),
            backpressure: self.backpressure.clone(),
            stats: self.source_stats.clone(),
        };
        kafka_source(scope, spec)
    }

    /// A writer for table `name` of this job.
    pub fn table_writer<R: TableRow>(&self, name: &str) -> TableWriter<R> {
        TableWriter {
            name: name.to_string(),
            table: self
                .tables
                .get(name)
                .unwrap_or_else(|| panic!("table `{name}` is not declared by the dataflow"))
                .clone(),
            job: self.config.job.name.clone(),
            run_id: self.run_id.clone(),
            target_file_size: self.config.iceberg.target_file_size_bytes as usize,
            groups: self.groups(),
            ctx: RowContext {
                topics: self.topic_names(),
            },
            runtime: self.runtime.clone(),
            backpressure: self.backpressure.clone(),
            rows: PhantomData,
        }
    }

    /// What a stateful operator named `operator` needs to checkpoint itself.
    pub fn state_checkpoint(&self, operator: &str) -> StateCheckpoint {
        StateCheckpoint {
            operator: operator.to_string(),
            store: StateStore::new(&self.job_dir),
            groups: self.groups(),
            run_id: self.run_id.clone(),
            generation: self.fence.generation,
            restore: self.restored.as_ref().map(|m| m.state.clone()).unwrap_or_default(),
        }
    }

    /// Commits everything of the job together, one cut per commit group:
    /// staged files of all tables, source offsets and operator state.
    pub fn commit<'scope>(&self, items: Stream<'scope, Time, Vec<CommitItem>>) {
        let stop = self.stop.clone();
        let processes = self.processes;
        let spec = CommitSpec {
            job: self.config.job.name.clone(),
            catalog: self.catalog.clone(),
            tables: self.table_order.clone(),
            topics: self.topic_names(),
            groups: self.groups(),
            runtime: self.runtime.clone(),
            stats: self.commit_stats.clone(),
            on_fatal: Arc::new(move |e| {
                if processes > 1 {
                    // The other processes cannot finish without the
                    // committer: end the whole cluster, so that it restarts
                    // from the last checkpoint.
                    tracing::error!(error = %e, "the committer failed; exiting the cluster");
                    std::process::exit(1);
                }
                stop.stop_now()
            }),
            thread: self.commit_thread.clone(),
            manifests: ManifestStore::open(&self.job_dir).expect("checkpoint folder opened at start"),
            state_store: StateStore::new(&self.job_dir),
            fence: self.fence.clone(),
            keep_manifests: self.config.checkpoint.keep,
            restored_state: self.restored.as_ref().map(|m| m.state.clone()).unwrap_or_default(),
            restored_offsets: self.resume.offsets.clone(),
            restored_watermarks: self.resume.watermarks.clone(),
            restored_last_ts: self.resume.last_ts_ms.clone(),
            restored_event_frontier: self.restored.as_ref().and_then(|m| m.event_frontier_us),
            workers: self.workers,
            kafka: self.config.kafka.clone(),
        };
        crate::sink::iceberg::commit(items, spec);
    }
}

/// librdkafka consumer settings for `config`.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut c = crate::kafka::client_config(&config.kafka);
    c
        // `assign` needs some group id, though K2 never joins the group; it
        // is also where monitoring tools look for lag.
        .set("group.id", format!("k2-{}", config.job.name))
        // Offsets belong to K2's checkpoints, never to Kafka's auto-commit.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // End-of-partition events tell the source a partition is caught up,
        // which the idleness policy needs.
        .set("enable.partition.eof", "true")
        // Without this, a fetch at the end of a partition waits 500 ms.
        .set("fetch.wait.max.ms", "10")
        // A resume offset that retention deleted must be an error, not a
        // silent jump that would lose messages.
        .set("auto.offset.reset", "error")
        // Topics are created by the producer or an operator, never by a reader.
        .set("allow.auto.create.topics", "false")
        // After a broker restart a topic can look missing for a moment, and
        // librdkafka then stops fetching it until the next metadata refresh
        // (5 min by default): refresh often enough to resume within seconds.
        .set("topic.metadata.refresh.interval.ms", "2000")
        // Reconnect within a second of a broker coming back, not after the
        // default backoff of up to 10 s.
        .set("reconnect.backoff.max.ms", "1000")
        // When the local queue is full librdkafka pauses fetching for this
        // long (1 s by default), which starves a fast reader.
        .set("fetch.queue.backoff.ms", "10");
    for (k, v) in &config.kafka.consumer {
        c.set(k, v);
    }
    c
}

/// What a run did, for the CLI and the tests.
#[derive(Debug)]
pub struct RunReport {
    /// Wall time of the run, from the start of the workers.
    pub elapsed: Duration,
    /// Kafka messages read.
    pub messages: u64,
    /// Trades decoded.
    pub trades: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Duplicates removed by dedup.
    pub duplicates: u64,
    /// Trades flagged late (below their partition's watermark, or dated too
    /// far into the future).
    pub late: u64,
    /// Trades dated more than `source.max_future_ms` after their Kafka timestamp.
    pub future: u64,
    /// Control messages (heartbeats, status, responses, ...) by kind.
    pub control: BTreeMap<&'static str, u64>,
    /// Partitions added to the topics while the job ran, and read.
    pub partitions_added: u64,
    /// Pairs found by the interval join.
    pub pairs: u64,
    /// Records sent by immediate Kafka sinks.
    pub kafka_sent: u64,
    /// Iceberg snapshots committed.
    pub snapshots: u64,
    /// Rows committed per table.
    pub rows: BTreeMap<String, u64>,
    /// Produce-to-visible latency, ms: (p50, p99, max).
    pub latency_ms: Option<(u64, u64, u64)>,
    /// Last committed epoch.
    pub last_epoch: Option<u64>,
    /// CPU time of this process (user + system), seconds.
    pub cpu_s: f64,
    /// Peak resident memory of this process, MiB.
    pub peak_rss_mib: f64,
}

/// `(cpu seconds, peak RSS MiB)` of this process, from `/proc` (Linux).
pub fn process_usage() -> (f64, f64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0);
    (cpu, rss)
}

/// Next offset per `(topic index, partition)`.
pub type Offsets = BTreeMap<(u16, i32), i64>;

/// Where a run starts: the checkpoint it resumes from, or nothing.
struct Recovery {
    manifest: Option<Manifest>,
    resume: Resume,
}

/// Recovery, before any worker starts: check that the newest cut and the
/// tables agree, roll the cut forward into every table that lacks it (after
/// checking its files), check its state files, remove orphans. See
/// `src/sink/iceberg/DESIGN.md`.
async fn recover(
    config: &Config,
    catalog: &JobCatalog,
    tables: &[String],
    job_dir: &std::path::Path,
    fence: &Fence,
    reset: Option<(StartPosition, bool)>,
) -> Result<Recovery> {
    let job = &config.job.name;
    let manifests = ManifestStore::open(job_dir)?;
    let state = StateStore::new(job_dir);
    // Each table's newest cut of this job: (epoch, commit id, rows).
    let mut newest = BTreeMap::new();
    for name in tables {
        let table = catalog.load(name).await?;
        if let Some(cut) = newest_cut(&table, job) {
            newest.insert(name.clone(), cut);
        }
    }
    if let Some((position, acknowledged)) = reset {
        if !newest.is_empty() && !acknowledged {
            return Err(Error::Checkpoint(reset_warning(job, position, &newest)));
        }
        tracing::warn!(job = %job, ?position, "--reset: discarding the job's checkpoints and starting afresh");
        manifests.clear()?;
        state.prune(&Default::default(), None)?;
        return Ok(Recovery::of(config, None));
    }
    let Some(manifest) = manifests.latest()? else {
        if let Some((name, cut)) = newest.iter().next() {
            return Err(Error::Checkpoint(format!(
                "table `{name}` holds data of job `{job}` up to epoch {}, but {} has no checkpoint: the \
                 checkpoints were lost. Resuming without them would read every message again and duplicate the \
                 rows. Restore the checkpoint folder, or start afresh anyway with --reset earliest|latest",
                cut.epoch,
                job_dir.display()
            )));
        }
        return Ok(Recovery::of(config, None));
    };
    if manifest.job != *job {
        return Err(Error::Checkpoint(format!(
            "{} holds job `{}`, not `{job}`",
            job_dir.display(),
            manifest.job
        )));
    }
    // The tables must not be ahead of the newest checkpoint: that means
    // manifests were lost (deleted, or restored from an old backup), and
    // resuming from the older cut would write its later data twice.
    for (name, cut) in &newest {
        let expected = crate::sink::iceberg::committer::commit_id(job, name, cut.epoch);
        if cut.epoch > manifest.epoch {
            return Err(Error::Checkpoint(format!(
                "table `{name}` holds job `{job}`'s data up to epoch {}, but the newest checkpoint in {} is epoch \
                 {}: checkpoints were lost (deleted, or restored from an old backup). Resuming from epoch {} \
                 would write the data of the later epochs a second time. Restore the lost manifests, or start \
                 afresh with --reset earliest|latest --yes",
                cut.epoch,
                job_dir.display(),
                manifest.epoch,
                manifest.epoch
            )));
        }
        if cut.commit_id != expected {
            return Err(Error::Checkpoint(format!(
                "table `{name}`'s newest snapshot of job `{job}` (epoch {}) has commit id {}, not {expected}: it \
                 was written by another job or a different table of the same name. Refusing to resume",
                cut.epoch, cut.commit_id
            )));
        }
    }
    // Roll forward: a crash between the manifest and the Iceberg commits.
    // First check that the cut's files are there, whole.
    for (name, tc) in &manifest.tables {
        if newest.get(name).is_some_and(|cut| cut.epoch >= manifest.epoch) {
            continue;
        }
        let table = catalog.load(name).await?;
        let files = tc.data_files.iter().filter_map(|json| {
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            Some((v["file_path"].as_str()?.to_string(), v["file_size_in_bytes"].as_u64()?))
        });
        let problems = maintenance::check_files(&table, files).await;
        if !problems.is_empty() {
            return Err(Error::Checkpoint(format!(
                "the checkpoint of epoch {} must still be committed to `{name}`, but its data files are damaged: {}",
                manifest.epoch,
                problems.join("; ")
            )));
        }
    }
    let rolled = commit_manifest(catalog, tables, &manifest, Some(fence))
        .await
        .map_err(Error::Checkpoint)?;
    crate::sink::iceberg::committer::publish_kafka(&config.kafka, &manifest)?;
    for table in rolled.keys() {
        tracing::info!(
            table,
            epoch = manifest.epoch,
            "recovery: committed the checkpointed cut (roll forward)"
        );
    }
    for f in &manifest.state {
        let path = job_dir.join(&f.path);
        if !path.exists() {
            return Err(Error::Checkpoint(format!(
                "state file {} of epoch {} is missing",
                path.display(),
                manifest.epoch
            )));
        }
    }
    // Hygiene: files of crashed runs that no checkpoint references.
    let kept: Vec<Manifest> = manifests
        .epochs()?
        .into_iter()
        .filter_map(|e| manifests.read(e).ok())
        .collect();
    let live: std::collections::HashSet<String> = kept
        .iter()
        .flat_map(|m| m.state.iter().map(|s: &StateFile| s.path.clone()))
        .collect();
    let removed = state.prune(&live, None)?;
    let keep_data: std::collections::HashSet<String> = kept
        .iter()
        .flat_map(|m| m.tables.values().flat_map(|t| t.data_files.iter()))
        .filter_map(|json| {
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            Some(v["file_path"].as_str()?.to_string())
        })
        .collect();
    let mut orphans = 0;
    for name in tables {
        orphans += maintenance::remove_orphans(catalog, name, job, &keep_data).await?;
    }
    if removed + orphans > 0 {
        tracing::info!(
            state_files = removed,
            data_files = orphans,
            "recovery: removed files no checkpoint and no retained snapshot references"
        );
    }
    tracing::info!(
        epoch = manifest.epoch,
        generation = fence.generation,
        "resuming after the last checkpoint"
    );
    Ok(Recovery::of(config, Some(manifest)))
}

/// A table's newest cut of one job, from its retained snapshots.
struct TableCut {
    epoch: u64,
    commit_id: String,
    rows: u64,
}

fn newest_cut(table: &Table, job: &str) -> Option<TableCut> {
    let snapshot = table
        .metadata()
        .snapshots()
        .filter(|s| s.summary().additional_properties.get("k2.job").map(String::as_str) == Some(job))
        .filter_map(|s| {
            let epoch: u64 = s.summary().additional_properties.get("k2.epoch")?.parse().ok()?;
            Some((epoch, s))
        })
        .max_by_key(|(epoch, _)| *epoch)?;
    let props = &snapshot.1.summary().additional_properties;
    let current = table.metadata().current_snapshot()?.summary();
    Some(TableCut {
        epoch: snapshot.0,
        commit_id: props.get("k2.commit-id").cloned().unwrap_or_default(),
        rows: current
            .additional_properties
            .get("total-records")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
    })
}

/// What `--reset` would do to tables that already hold the job's rows.
fn reset_warning(job: &str, position: StartPosition, newest: &BTreeMap<String, TableCut>) -> String {
    let tables: Vec<String> = newest
        .iter()
        .map(|(name, cut)| format!("`{name}` ({} rows, up to epoch {})", cut.rows, cut.epoch))
        .collect();
    let effect = match position {
        StartPosition::Earliest => {
            "re-reads every message Kafka still retains and appends it again: the rows already in the tables \
             will be there twice"
        }
        StartPosition::Latest => {
            "starts at the end of every partition: the rows already in the tables stay, and every message \
             produced since the last checkpoint is skipped"
        }
    };
    format!(
        "--reset {}: job `{job}` already has rows in {}. Discarding its checkpoints {effect}. The tables themselves \
         are not changed. If that is what you want, run again with --yes",
        match position {
            StartPosition::Earliest => "earliest",
            StartPosition::Latest => "latest",
        },
        tables.join(", ")
    )
}

impl Recovery {
    /// Resuming from `manifest`: its offsets, watermarks and last Kafka
    /// timestamps by topic index.
    fn of(config: &Config, manifest: Option<Manifest>) -> Recovery {
        let topics: Vec<String> = config.kafka.topics.list().into_iter().map(|(_, t)| t).collect();
        let mut resume = Resume {
            checkpointed: manifest.is_some(),
            ..Resume::default()
        };
        if let Some(manifest) = &manifest {
            let index = |topic: &str| topics.iter().position(|t| t == topic).map(|i| i as u16);
            for (topic, parts) in &manifest.offsets {
                let Some(t) = index(topic) else {
                    tracing::warn!(
                        topic,
                        "the checkpoint has offsets of a topic the config no longer reads"
                    );
                    continue;
                };
                for (p, o) in parts {
                    resume.offsets.insert((t, *p), *o);
                }
            }
            for (topic, parts) in &manifest.max_event_us {
                if let Some(t) = index(topic) {
                    for (p, us) in parts {
                        resume.watermarks.insert((t, *p), *us as u64);
                    }
                }
            }
            for (topic, parts) in &manifest.last_ts_ms {
                if let Some(t) = index(topic) {
                    for (p, ts) in parts {
                        resume.last_ts_ms.insert((t, *p), *ts);
                    }
                }
            }
        }
        Recovery { manifest, resume }
    }
}

/// How long a job waits at start for a busy catalog before giving up.
const CATALOG_WAIT: Duration = Duration::from_secs(120);

/// How long the processes of a cluster wait for each other before timely
/// starts (the leader may be recovering).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `dataflow` with `config` on the workers described by `timely`: this
/// process's share of them. In a multi-process job, process 0 recovers and
/// commits; see [`handshake`].
pub fn run(dataflow: &Dataflow, config: Config, timely: &TimelyArgs, options: RunOptions) -> Result<RunReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("k2-io")
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("start async runtime: {e}")))?;
    let handle = runtime.handle().clone();
    let stop = options.stop.clone();
    install_signal_handlers(&handle, stop.clone());

    let table_order: Vec<String> = dataflow.tables.iter().map(|(n, _)| n.to_string()).collect();
    if let Some(prepare) = dataflow.prepare {
        prepare(&config)?;
    }
    let mut config = config;
    if let Some(position) = options.reset {
        config.source.start = position;
    }
    let job_dir = config.checkpoint.job_dir(&config.job.name);
    let fingerprint = handshake::Fingerprint {
        dataflow: dataflow.name.to_string(),
        processes: timely.processes,
        workers: timely.workers,
        version: env!("CARGO_PKG_VERSION").to_string(),
        config: serde_json::to_value(&config).map_err(|e| Error::Other(format!("config as JSON: {e}")))?,
    };
    let leader = timely.process == 0;
    // Only the leader (process 0) locks, fences and recovers; the others
    // take its plan and checkpoint in the handshake.
    let _lock = leader
        .then(|| JobLock::acquire(&job_dir, &config.job.name))
        .transpose()?;
    // A follower asks first: by the answer, process 0 has created the tables.
    let agreed = if leader {
        None
    } else {
        let address = timely.addresses()?.remove(0);
        Some(handshake::follow(
            &address,
            timely.process,
            &fingerprint,
            HANDSHAKE_TIMEOUT,
        )?)
    };
    let (catalog, tables, fence, recovery, plan) = handle.block_on(async {
        // A catalog that is busy (a locked SQLite file, a restarting server)
        // is waited for, as commits wait for it mid-run.
        let catalog = crate::retry::retry_async("opening the catalog", CATALOG_WAIT, || {
            JobCatalog::open(&config.iceberg)
        })
        .await?;
        let mut tables = BTreeMap::new();
        for (name, kind) in dataflow.tables {
            let table =
                crate::retry::retry_async(&format!("creating or loading table `{name}`"), CATALOG_WAIT, || async {
                    match kind {
                        TableKind::Trades => catalog.ensure_table::<Trade>(name).await,
                        TableKind::DeadLetters => catalog.ensure_table::<DeadLetter>(name).await,
                        TableKind::Alerts => catalog.ensure_table::<crate::record::Alert>(name).await,
                    }
                })
                .await?;
            tables.insert(name.to_string(), table);
        }
        if let Some(agreed) = agreed {
            let fence = Fence::joined(&job_dir, &config.job.name, agreed.generation);
            let manifest = match agreed.checkpoint_epoch {
                Some(epoch) => Some(ManifestStore::open(&job_dir)?.read(epoch).map_err(|e| {
                    Error::Checkpoint(format!(
                        "process 0 resumes from epoch {epoch}, which this process cannot read \
                         (checkpoint.dir must be a folder all processes share): {e}"
                    ))
                })?),
                None => None,
            };
            let recovery = Recovery::of(&config, manifest);
            // The leader binds its timely port right after answering; timely
            // retries a refused connection only after a second (and says so on
            // stdout), so give it a moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Result::Ok((catalog, tables, fence, recovery, agreed.plan));
        }
        let fence = Fence::take(&job_dir, &config.job.name)?;
        let reset = options.reset.map(|p| (p, options.reset_acknowledged));
        let recovery = recover(&config, &catalog, &table_order, &job_dir, &fence, reset).await?;
        for name in &table_order {
            if let Err(e) = maintenance::expire_snapshots(&catalog, name, &config).await {
                tracing::warn!(error = %e, "snapshot expiry failed; will retry at the next start");
            }
        }
        let plan = SourcePlan::discover(
            &consumer_config(&config),
            &config.kafka.topics.list(),
            config.source.start,
            &recovery.resume,
            config.job.mode == RunMode::Bounded,
            Duration::from_millis(config.kafka.connect_timeout_ms),
        )?;
        if timely.processes > 1 {
            let agreement = handshake::Agreement {
                generation: fence.generation,
                checkpoint_epoch: recovery.manifest.as_ref().map(|m| m.epoch),
                plan: plan.clone(),
            };
            let address = timely.addresses()?.remove(0);
            handshake::lead(&address, timely.processes, &fingerprint, &agreement, HANDSHAKE_TIMEOUT)?;
        }
        Result::Ok((catalog, tables, fence, recovery, plan))
    })?;
    let first_epoch = recovery.manifest.as_ref().map_or(0, |m| m.epoch + 1);
    tracing::info!(
        partitions = plan.partitions.len(),
        workers = timely.total_workers(),
        process = timely.process,
        "source planned"
    );
    if let Some(ready) = &options.ready {
        ready.store(true, Ordering::SeqCst);
    }

    let watch = (config.job.mode == RunMode::Continuous).then(|| {
        PartitionWatch::start(
            consumer_config(&config),
            config.kafka.topics.list(),
            &plan,
            Duration::from_millis(config.kafka.metadata_refresh_ms),
        )
    });
    let ctx = Arc::new(JobContext {
        config,
        plan,
        first_epoch,
        catalog,
        tables,
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        runtime: handle.clone(),
        stop: stop.clone(),
        backpressure: Default::default(),
        source_stats: Default::default(),
        dedup_counters: Default::default(),
        join_stats: Default::default(),
        kafka_stats: Default::default(),
        commit_stats: Default::default(),
        commit_thread: Default::default(),
        table_order,
        job_dir: job_dir.clone(),
        fence,
        restored: recovery.manifest,
        resume: recovery.resume,
        watch,
        workers: timely.total_workers(),
        processes: timely.processes,
    });
    let started = Instant::now();
    let build = dataflow.build;
    let worker_ctx = ctx.clone();
    let guards = timely::execute(timely.to_config()?, move |worker| {
        let ctx = worker_ctx.clone();
        let built = worker.dataflow::<Time, _, _>(|scope| build(&ctx, scope));
        if let Err(e) = built {
            tracing::error!(error = %e, "building the dataflow failed; stopping");
            ctx.stop.stop_now();
            return Err(e.to_string());
        }
        while worker.step_or_park(None) {}
        Ok(())
    })
    .map_err(|e| Error::Other(format!("start timely workers: {e}")))?;
    let mut worker_error = None;
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => worker_error = Some(e),
            Err(e) => worker_error = Some(format!("worker failed: {e}")),
        }
    }
    if let Some(thread) = ctx.commit_thread.lock().expect("thread slot").take() {
        let _ = thread.join();
    }
    if leader {
        prune_checkpoints(
            &ManifestStore::open(&job_dir)?,
            &StateStore::new(&job_dir),
            ctx.config.checkpoint.keep,
            u64::MAX,
        );
    }
    if let Some(watch) = &ctx.watch {
        watch.stop();
    }
    if let Some(e) = worker_error {
        return Err(Error::Other(e));
    }
    if let Some(e) = ctx.stop.failure() {
        return Err(Error::Other(e));
    }
    let stats = ctx.commit_stats.lock().expect("stats");
    if let Some(e) = &stats.error {
        return Err(Error::Other(e.clone()));
    }
    let latency = (!stats.latency_ms.is_empty()).then(|| {
        (
            stats.latency_ms.value_at_quantile(0.5),
            stats.latency_ms.value_at_quantile(0.99),
            stats.latency_ms.max(),
        )
    });
    Ok(RunReport {
        elapsed: started.elapsed(),
        messages: ctx.source_stats.messages.load(Ordering::Relaxed),
        trades: ctx.source_stats.trades.load(Ordering::Relaxed),
        dead_letters: ctx.source_stats.dead_letters.load(Ordering::Relaxed),
        duplicates: ctx
            .dedup_counters
            .lock()
            .expect("dedup counters")
            .values()
            .map(|s| s.dropped.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0),
        late: ctx.source_stats.late.load(Ordering::Relaxed),
        future: ctx.source_stats.future.load(Ordering::Relaxed),
        control: ctx.source_stats.control_counts(),
        partitions_added: ctx.source_stats.partitions_added.load(Ordering::Relaxed),
        pairs: ctx.join_stats.pairs.load(Ordering::Relaxed),
        kafka_sent: ctx.kafka_stats.sent.load(Ordering::Relaxed),
        snapshots: stats.snapshots,
        rows: stats.rows.clone(),
        latency_ms: latency,
        last_epoch: stats.last_epoch,
        cpu_s: process_usage().0,
        peak_rss_mib: process_usage().1,
    })
}

fn install_signal_handlers(handle: &tokio::runtime::Handle, stop: StopSignal) {
    handle.spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stop requested: closing the current epoch and committing");
        stop.stop_now();
        // A second signal means "now".
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("second stop request: exiting without a final commit");
        std::process::exit(130);
    });
}
