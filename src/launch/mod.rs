//! Launching a job: timely configuration, the job context, and the run loop.
//!
//! [`run`] does, in order:
//! 1. open the Iceberg catalog and create the dataflow's tables;
//! 2. take the job's lock and generation, and recover from the newest
//!    checkpoint ([`crate::checkpoint::recover`]);
//! 3. plan the Kafka partitions and their offsets (once, for all workers);
//! 4. start the timely workers, each building the dataflow on a [`Job`]: the
//!    dataflow's operators and sinks register with the worker's cut as they
//!    are built, and the launcher then commits everything registered;
//! 5. wait for the last commit and report.
//!
//! In a job of several processes only process 0 does 2 and 3, and commits;
//! the others receive its plan and checkpoint in a [`handshake`] before
//! timely connects them. [`supervisor`] launches and restarts such a cluster.

pub mod handshake;
pub mod supervisor;
pub mod timely_args;

use crate::checkpoint::state::{StateCheckpoint, StateStore};
use crate::checkpoint::{
    Checkpointed, CommitGroups, CommitSpec, CommitStats, Cut, Fence, Manifest, ManifestStore, Participant, Recovered,
    Reset, Resume,
};
use crate::config::{Config, RunMode, StartPosition};
use crate::error::{Error, Result};
use crate::operators::dedup::DedupStats;
use crate::sink::iceberg::TableDecl;
use crate::sink::iceberg::{IcebergParticipant, JobCatalog, RowContext, Table, TableRow, TableWriter};
use crate::sink::kafka::{KafkaParticipant, KafkaTopic};
use crate::source::kafka::{PartitionWatch, SourcePlan, SourceSpec, SourceStats, SourceStreams, kafka_source};
use crate::stop::StopSignal;
use crate::telemetry::Telemetry;
use crate::time::Time;
use iceberg::table::Table as IcebergTable;
use rdkafka::ClientConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timely::dataflow::Scope;
pub use timely_args::TimelyArgs;

/// A named dataflow: its tables and how to build it on one worker.
pub struct Dataflow {
    /// Name used on the command line: `k2 run <name>`.
    pub name: &'static str,
    /// One line for `k2 run --help` and the registry listing.
    pub about: &'static str,
    /// The tables it writes, created at start, committed in this order.
    pub tables: &'static [TableDecl],
    /// Builds the dataflow on one worker.
    pub build: for<'scope> fn(&Job<'scope>) -> Result<()>,
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
    /// Metrics endpoint and progress line.
    pub telemetry: crate::telemetry::TelemetryOptions,
}

/// Shared by every worker of a process: configuration, plan, tables, stats.
pub struct JobContext {
    /// The job's config.
    pub config: Config,
    /// The Kafka partitions and offsets of this run.
    pub plan: SourcePlan,
    /// The first epoch of this run.
    pub first_epoch: u64,
    /// The job's tables, as loaded at start.
    pub tables: BTreeMap<String, IcebergTable>,
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
    /// The counters of every dedup operator (see [`Job::dedup_stats`]).
    pub dedup_counters: Arc<Mutex<BTreeMap<String, Arc<DedupStats>>>>,
    /// Window operator counters by operator name.
    pub window_counters: Arc<Mutex<BTreeMap<String, Arc<crate::operators::WindowStats>>>>,
    /// Interval-join counters.
    pub join_stats: Arc<crate::operators::JoinStats>,
    /// Kafka sink counters.
    pub kafka_stats: Arc<crate::sink::kafka::KafkaSinkStats>,
    /// Commit statistics.
    pub commit_stats: Arc<Mutex<CommitStats>>,
    /// The committer thread, joined at the end.
    pub commit_thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The participants of the job's cuts, in commit order.
    pub participants: Vec<Arc<dyn Participant>>,
    /// The job's checkpoint folder.
    pub store: Arc<dyn crate::checkpoint::Store>,
    /// This instance's generation.
    pub fence: Fence,
    /// The checkpoint this run resumed from, if any.
    pub restored: Option<Manifest>,
    /// Where the sources resumed (offsets, watermarks, last timestamps).
    pub resume: Resume,
    /// Partitions added while the job runs (continuous jobs).
    pub watch: Option<PartitionWatch>,
    /// Workers over the whole cluster.
    pub workers: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// Dataflow sections read while building (checked against the config's).
    pub sections_read: Mutex<BTreeSet<String>>,
    /// Metrics, consumer-group offsets and progress.
    pub telemetry: Arc<Telemetry>,
    /// The Kafka consumers the workers of this process share: the n-th
    /// source each worker builds uses the n-th.
    pub consumers: Mutex<Vec<crate::source::kafka::SharedConsumer>>,
}

impl JobContext {
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
}

/// What a dataflow's build function works with on one worker: the job's
/// shared context, the worker's scope, and the worker's cut, with which the
/// sources, the stateful operators and the sinks register as they are built
/// (so none can be left out of the job's commits).
pub struct Job<'scope> {
    ctx: Arc<JobContext>,
    scope: Scope<'scope, Time>,
    cut: Cut<'scope>,
    /// Kafka sources built so far on this worker.
    sources: std::cell::Cell<usize>,
}

impl<'scope> Job<'scope> {
    /// The worker's scope.
    pub fn scope(&self) -> Scope<'scope, Time> {
        self.scope
    }

    /// The job's config.
    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// The dataflow section `[name]` of the config as `T` (see
    /// [`Config::section`]).
    pub fn section<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        self.ctx
            .sections_read
            .lock()
            .expect("sections")
            .insert(name.to_string());
        self.ctx.config.section(name)
    }

    /// The shared context.
    pub fn context(&self) -> &JobContext {
        &self.ctx
    }

    /// The Kafka source for this worker's share of the partitions; its
    /// offsets are part of every cut.
    pub fn kafka_source(&self) -> Result<SourceStreams<'scope>> {
        let ctx = &self.ctx;
        let source = &ctx.config.source;
        let nth = self.sources.replace(self.sources.get() + 1);
        let consumer = {
            let mut shared = ctx.consumers.lock().expect("consumers");
            if shared.len() <= nth {
                shared.resize_with(nth + 1, Default::default);
            }
            shared[nth].clone()
        };
        let spec = SourceSpec {
            client: consumer_config(&ctx.config),
            consumer,
            partitions: ctx.plan.for_worker(self.scope.index(), self.scope.peers()),
            watch: ctx.watch.clone(),
            worker: (self.scope.index(), self.scope.peers()),
            epoch_ms: ctx.config.job.epoch_ms,
            first_epoch: ctx.first_epoch,
            max_out_of_orderness_ms: source.max_out_of_orderness_ms,
            idle_timeout_ms: source.idle_timeout_ms,
            max_future_ms: source.max_future_ms,
            future: source.future,
            control: source.control,
            bounded: ctx.config.job.mode == RunMode::Bounded,
            poll_batch: ctx.config.kafka.poll_batch,
            stop: ctx.stop.clone(),
            backpressure: ctx.backpressure.clone(),
            stats: ctx.source_stats.clone(),
        };
        let streams = kafka_source(self.scope, spec, self.cut.release())?;
        use timely::dataflow::operators::vec::Map;
        self.cut
            .register(streams.progress.clone().map(crate::checkpoint::CommitItem::from));
        Ok(streams)
    }

    /// What the stateful operator `operator` (a name unique in the
    /// dataflow) needs to checkpoint itself and restore.
    pub fn state(&self, operator: &str) -> Checkpointed<'scope> {
        Checkpointed {
            state: StateCheckpoint {
                operator: operator.to_string(),
                store: StateStore::new(self.ctx.store.clone()),
                groups: self.ctx.groups(),
                run_id: self.ctx.run_id.clone(),
                generation: self.ctx.fence.generation,
                restore: self.ctx.restored.as_ref().map(|m| m.state.clone()).unwrap_or_default(),
            },
            cut: self.cut.clone(),
            first_epoch: self.ctx.first_epoch,
        }
    }

    /// Window parameters for `windows` under the job's epoch rule: results
    /// are expected to close `source.max_out_of_orderness_ms` after their
    /// window's end (see [`crate::operators::window`]).
    pub fn window_params(&self, windows: crate::operators::Windows) -> crate::operators::WindowParams {
        crate::operators::WindowParams::new(windows).with_clock(crate::operators::EpochClock {
            epoch_ms: self.ctx.config.job.epoch_ms,
            close_delay_us: self.ctx.config.source.max_out_of_orderness_ms.saturating_mul(1000),
        })
    }

    /// The counters of the window operator `operator`, shared by its workers.
    pub fn window_stats(&self, operator: &str) -> Arc<crate::operators::WindowStats> {
        let mut counters = self.ctx.window_counters.lock().expect("window counters");
        counters.entry(operator.to_string()).or_default().clone()
    }

    /// The table `name` of the dataflow, to write rows `R` into.
    pub fn table<R: TableRow>(&self, name: &str) -> Result<Table<'scope, R>> {
        let ctx = &self.ctx;
        let table = ctx
            .tables
            .get(name)
            .ok_or_else(|| Error::Other(format!("table `{name}` is not declared in the dataflow's `tables`")))?
            .clone();
        Ok(Table {
            writer: TableWriter {
                name: name.to_string(),
                table,
                job: ctx.config.job.name.clone(),
                run_id: ctx.run_id.clone(),
                target_file_size: ctx.config.iceberg.target_file_size_bytes as usize,
                groups: ctx.groups(),
                ctx: RowContext {
                    topics: ctx.topic_names(),
                },
                runtime: ctx.runtime.clone(),
                backpressure: ctx.backpressure.clone(),
                rows: PhantomData,
            },
            cut: self.cut.clone(),
        })
    }

    /// The transactional Kafka topic `topic`, whose records are published
    /// once per cut, exactly once.
    pub fn kafka_topic(&self, topic: &str) -> KafkaTopic<'scope> {
        KafkaTopic {
            topic: topic.to_string(),
            groups: self.ctx.groups(),
            cut: self.cut.clone(),
        }
    }

    /// The counters of the dedup operator named `operator`, shared by all
    /// workers of the process. The run report's `duplicates` is the most any
    /// one operator removed: in a job with two dedups over the same trades
    /// (bronze and arbitrage), each duplicate counts once.
    pub fn dedup_stats(&self, operator: &str) -> Arc<DedupStats> {
        let mut counters = self.ctx.dedup_counters.lock().expect("dedup counters");
        counters.entry(operator.to_string()).or_default().clone()
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
        .set("fetch.queue.backoff.ms", "10")
        // K2 reads each partition from a queue of its own, and then these
        // prefetch limits apply per partition, not per consumer: the
        // defaults (100,000 messages, 64 MB) kept ~130 MB more resident than
        // one queue does when reading a backlog of 4 partitions, for no
        // speed. 10,000 messages is still 20 ms of reading at 500k msg/s.
        .set("queued.min.messages", "10000")
        .set("queued.max.messages.kbytes", "8192");
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
    /// Time to commit one cut (prepare, manifest, every table and
    /// transaction), ms: p50, p99, max.
    pub commit_ms: Option<(f64, f64, f64)>,
    /// Cuts committed together with a later one because they queued behind
    /// a commit that outlasted the commit interval.
    pub cuts_coalesced: u64,
    /// Last committed epoch.
    pub last_epoch: Option<u64>,
    /// CPU time of this process (user + system), seconds.
    pub cpu_s: f64,
    /// Peak resident memory of this process, MiB.
    pub peak_rss_mib: f64,
}

/// `(cpu seconds, peak RSS MiB)` of this process, from `/proc` (Linux).
pub fn process_usage() -> (f64, f64) {
    use crate::telemetry::process;
    let peak = process::peak_resident_bytes().map_or(0.0, |b| b as f64 / (1024.0 * 1024.0));
    (process::cpu_seconds().unwrap_or(0.0), peak)
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

    let table_order: Vec<String> = dataflow.tables.iter().map(|t| t.name.to_string()).collect();
    if let Some(prepare) = dataflow.prepare {
        prepare(&config)?;
    }
    let mut config = config;
    if let Some(position) = options.reset {
        config.source.start = position;
    }
    let store = crate::checkpoint::store::open(&config.checkpoint.job_location(&config.job.name), &config.s3)?;
    let fingerprint = handshake::Fingerprint {
        dataflow: dataflow.name.to_string(),
        processes: timely.processes,
        workers: timely.workers,
        version: env!("CARGO_PKG_VERSION").to_string(),
        config: handshake::Fingerprint::digest(&config.effective()),
    };
    let leader = timely.process == 0;
    // Only the leader (process 0) locks, fences and recovers; the others
    // take its plan and checkpoint in the handshake.
    let _lock = leader
        .then(|| {
            let lost = stop.clone();
            let lease = Duration::from_millis(config.checkpoint.lease_ms);
            store.lock(&config.job.name, lease, Box::new(move |reason| lost.fail(reason)))
        })
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
    let topics: Vec<String> = config.kafka.topics.list().into_iter().map(|(_, t)| t).collect();
    let (catalog, tables) = handle.block_on(async {
        // A catalog that is busy (a locked SQLite file, a restarting server)
        // is waited for, as commits wait for it mid-run.
        // A wrong config or an incompatible table is reported at once.
        let transient = |e: &crate::error::Error| !e.is_permanent();
        let catalog = crate::retry::retry_async_if("opening the catalog", CATALOG_WAIT, transient, || {
            JobCatalog::open(&config.iceberg, &config.s3)
        })
        .await?;
        let mut tables = BTreeMap::new();
        for decl in dataflow.tables {
            let name = decl.name;
            let what = format!("creating or loading table `{name}`");
            let table =
                crate::retry::retry_async_if(&what, CATALOG_WAIT, transient, || catalog.ensure_table(decl)).await?;
            tables.insert(name.to_string(), table);
        }
        Result::Ok((catalog, tables))
    })?;
    let participants: Vec<Arc<dyn Participant>> = vec![
        Arc::new(IcebergParticipant::new(
            catalog,
            table_order.clone(),
            config.clone(),
            handle.clone(),
        )),
        Arc::new(KafkaParticipant::new(config.kafka.clone(), &config.job.name)),
    ];
    let manifests = ManifestStore::open(store.clone());
    let state = StateStore::new(store.clone());
    let (fence, recovered, plan) = match agreed {
        Some(agreed) => {
            let fence = Fence::joined(store.clone(), &config.job.name, agreed.generation);
            let manifest = match agreed.checkpoint_epoch {
                Some(epoch) => Some(manifests.read(epoch).map_err(|e| {
                    Error::Checkpoint(format!(
                        "process 0 resumes from epoch {epoch}, which this process cannot read \
                         (checkpoint.dir must be a folder all processes share, or an object store): {e}"
                    ))
                })?),
                None => None,
            };
            let recovered = Recovered {
                resume: Resume::of(&topics, manifest.as_ref()),
                manifest,
            };
            // The leader binds its timely port right after answering; timely
            // retries a refused connection only after a second (and says so on
            // stdout), so give it a moment.
            std::thread::sleep(Duration::from_millis(300));
            (fence, recovered, agreed.plan)
        }
        None => {
            let fence = Fence::take(store.clone(), &config.job.name)?;
            let reset = options.reset.map(|position| Reset {
                position,
                acknowledged: options.reset_acknowledged,
            });
            let recovered = crate::checkpoint::recover(
                &config.job.name,
                &topics,
                &manifests,
                &state,
                &participants,
                &fence,
                reset,
            )?;
            let plan = SourcePlan::discover(
                &consumer_config(&config),
                &config.kafka.topics.list(),
                config.source.start,
                &recovered.resume,
                config.job.mode == RunMode::Bounded,
                Duration::from_millis(config.kafka.connect_timeout_ms),
            )?;
            if timely.processes > 1 {
                let agreement = handshake::Agreement {
                    generation: fence.generation,
                    checkpoint_epoch: recovered.manifest.as_ref().map(|m| m.epoch),
                    plan: plan.clone(),
                };
                let address = timely.addresses()?.remove(0);
                handshake::lead(&address, timely.processes, &fingerprint, &agreement, HANDSHAKE_TIMEOUT)?;
            }
            (fence, recovered, plan)
        }
    };
    let first_epoch = recovered.manifest.as_ref().map_or(0, |m| m.epoch + 1);
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
    let telemetry = Arc::new(Telemetry::start(
        &options.telemetry,
        &crate::telemetry::Identity {
            job: config.job.name.clone(),
            dataflow: dataflow.name.to_string(),
            process: timely.process,
            leader,
        },
        consumer_config(&config),
        config.kafka.commit_group_offsets,
        recovered.manifest.as_ref(),
        &handle,
    )?);
    let ctx = Arc::new(JobContext {
        config,
        plan,
        first_epoch,
        tables,
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        runtime: handle.clone(),
        stop: stop.clone(),
        backpressure: Default::default(),
        source_stats: Default::default(),
        dedup_counters: Default::default(),
        window_counters: Default::default(),
        join_stats: Default::default(),
        kafka_stats: Default::default(),
        commit_stats: Default::default(),
        commit_thread: Default::default(),
        participants,
        store: store.clone(),
        fence,
        restored: recovered.manifest,
        resume: recovered.resume,
        watch,
        workers: timely.total_workers(),
        processes: timely.processes,
        sections_read: Default::default(),
        telemetry,
        consumers: Default::default(),
    });
    ctx.telemetry.watch(crate::telemetry::snapshot::Sources {
        source: ctx.source_stats.clone(),
        dedup: ctx.dedup_counters.clone(),
        windows: ctx.window_counters.clone(),
        join: ctx.join_stats.clone(),
        kafka_sink: ctx.kafka_stats.clone(),
        commits: leader.then(|| ctx.commit_stats.clone()),
    });
    let started = Instant::now();
    let build = dataflow.build;
    let worker_ctx = ctx.clone();
    let guards = timely::execute(timely.to_config()?, move |worker| {
        let ctx = worker_ctx.clone();
        let built = worker.dataflow::<Time, _, _>(|scope| {
            let job = Job {
                ctx: ctx.clone(),
                scope,
                cut: Cut::default(),
                sources: Default::default(),
            };
            build(&job)?;
            let unread: Vec<&str> = {
                let read = ctx.sections_read.lock().expect("sections");
                ctx.config.section_names().filter(|s| !read.contains(*s)).collect()
            };
            if let Some(section) = unread.first() {
                return Err(Error::config(
                    *section,
                    "no part of this dataflow reads this section (a typo, or a config for another dataflow?)",
                ));
            }
            let items = job.cut.all(scope);
            crate::checkpoint::commit(items, commit_spec(&ctx));
            Result::Ok(())
        });
        if let Err(e) = built {
            tracing::error!(error = %e, "building the dataflow failed; stopping");
            ctx.stop.fail(e.to_string());
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
        crate::checkpoint::committer::prune_checkpoints(&manifests, &state, ctx.config.checkpoint.keep, u64::MAX);
    }
    if let Some(watch) = &ctx.watch {
        watch.stop();
    }
    ctx.telemetry.finish();
    if let Some(e) = ctx.stop.failure() {
        return Err(Error::Other(e));
    }
    if let Some(e) = worker_error {
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
        cuts_coalesced: stats.coalesced,
        commit_ms: (!stats.cut_us.is_empty()).then(|| {
            let ms = |us: u64| us as f64 / 1000.0;
            (
                ms(stats.cut_us.value_at_quantile(0.5)),
                ms(stats.cut_us.value_at_quantile(0.99)),
                ms(stats.cut_us.max()),
            )
        }),
        last_epoch: stats.last_epoch,
        cpu_s: process_usage().0,
        peak_rss_mib: process_usage().1,
    })
}

/// The committer's spec for this job.
fn commit_spec(ctx: &Arc<JobContext>) -> CommitSpec {
    let stop = ctx.stop.clone();
    let processes = ctx.processes;
    CommitSpec {
        job: ctx.config.job.name.clone(),
        topics: ctx.topic_names(),
        groups: ctx.groups(),
        participants: ctx.participants.clone(),
        stats: ctx.commit_stats.clone(),
        on_fatal: Arc::new(move |e| {
            if processes > 1 {
                // The other processes cannot finish without the committer:
                // end the whole cluster, so that it restarts from the last
                // checkpoint.
                tracing::error!(error = %e, "the committer failed; exiting the cluster");
                std::process::exit(1);
            }
            stop.fail(e)
        }),
        thread: ctx.commit_thread.clone(),
        manifests: ManifestStore::open(ctx.store.clone()),
        state_store: StateStore::new(ctx.store.clone()),
        fence: ctx.fence.clone(),
        keep_manifests: ctx.config.checkpoint.keep,
        resume: ctx.resume.clone(),
        restored: ctx.restored.clone(),
        workers: ctx.workers,
        on_committed: Some({
            let telemetry = ctx.telemetry.clone();
            Arc::new(move |manifest: &Manifest, took: Duration| telemetry.on_cut(manifest, took))
        }),
    }
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
