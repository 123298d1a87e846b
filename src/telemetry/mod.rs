//! What a running job tells the outside: Prometheus metrics, the consumer
//! group's offsets, a progress line, and the log format.
//!
//! Nothing here touches the record path. The operators already count in
//! atomics they own ([`crate::source::kafka::SourceStats`],
//! [`crate::operators::dedup::DedupStats`], ...) and the source publishes
//! its positions and watermarks once per activation; one telemetry thread
//! per process reads them every second ([`snapshot`]), fetches the
//! partitions' ends for lag ([`lag`]), and sets the metrics from that
//! ([`prometheus`]) and logs the progress line ([`progress`]). The committer
//! tells [`Telemetry::on_cut`] of each committed cut, which records the
//! commit's duration and hands the cut's offsets to the consumer group
//! ([`group`]) on a thread of its own.
//!
//! So a metric is at most one tick (1 s) old when scraped, and counters
//! count from 0 again after a restart, which Prometheus's `rate()` handles.

pub mod group;
pub mod lag;
pub mod process;
pub mod progress;
pub mod prometheus;
pub mod snapshot;

use crate::checkpoint::Manifest;
use crate::error::Result;
use group::GroupOffsets;
use prometheus::Exporter;
use rdkafka::ClientConfig;
use snapshot::{CheckpointInfo, Snapshot, Sources};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the telemetry thread reads the counters and fetches the ends.
const TICK: Duration = Duration::from_secs(1);

/// How long the end of a run waits for the last cut's group offsets.
const GROUP_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// What a run shows besides its report.
#[derive(Clone, Debug, Default)]
pub struct TelemetryOptions {
    /// Serve Prometheus metrics here (`k2 run --metrics-addr`).
    pub metrics_addr: Option<SocketAddr>,
    /// Log a progress line this often (`k2 run --progress`).
    pub progress_every: Option<Duration>,
}

/// The log format of the `k2` binary (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colours when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`
    /// and the event's fields at the top level), for log collectors.
    Json,
}

/// Sends `tracing` events to stderr in `format`, filtered by `RUST_LOG`
/// (default: info, with the Iceberg and SQL libraries at warn). Does
/// nothing if a subscriber is already set.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,iceberg=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Colours only for a terminal, not in log files and pipes.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// Who this process is, for labels and for what it may do.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The job's name (label `k2_job`).
    pub job: String,
    /// The dataflow it runs.
    pub dataflow: String,
    /// This process's index (label `process`).
    pub process: usize,
    /// Whether this process commits the job's cuts (process 0).
    pub leader: bool,
}

/// One run's telemetry; see the module docs.
pub struct Telemetry {
    exporter: Option<Arc<Exporter>>,
    group: Option<GroupOffsets>,
    checkpoint: Arc<Mutex<Option<CheckpointInfo>>>,
    sampler: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    options: TelemetryOptions,
    consumer: ClientConfig,
}

impl Telemetry {
    /// Starts the metrics endpoint (an address already in use is an error)
    /// and, in the committing process when `group_offsets` is on, the
    /// consumer-group offset thread. `consumer` is the source's consumer
    /// config; `restored` the checkpoint the run resumes from.
    pub fn start(
        options: &TelemetryOptions,
        who: &Identity,
        consumer: ClientConfig,
        group_offsets: bool,
        restored: Option<&Manifest>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Telemetry> {
        let exporter = match options.metrics_addr {
            Some(addr) => {
                let labels = [("k2_job", who.job.clone()), ("process", who.process.to_string())];
                let exporter = Exporter::start(addr, &labels, runtime)?;
                exporter.build_info(&who.dataflow);
                Some(Arc::new(exporter))
            }
            None => None,
        };
        let group = (who.leader && group_offsets).then(|| {
            let exporter = exporter.clone();
            GroupOffsets::start(consumer.clone(), move |ok| {
                if let Some(e) = &exporter {
                    e.group_commit(ok);
                }
            })
        });
        Ok(Telemetry {
            exporter,
            group,
            checkpoint: Arc::new(Mutex::new(restored.map(CheckpointInfo::of))),
            sampler: Mutex::new(None),
            options: options.clone(),
            consumer,
        })
    }

    /// Called by the committer after each committed cut; returns at once.
    pub fn on_cut(&self, manifest: &Manifest, took: Duration) {
        if let Some(e) = &self.exporter {
            e.commit_took(took);
        }
        *self.checkpoint.lock().expect("checkpoint info") = Some(CheckpointInfo::of(manifest));
        if let Some(g) = &self.group {
            g.offer(manifest.epoch, manifest.offsets.clone());
        }
    }

    /// Starts the thread that reads `sources` every tick, when there is
    /// anything to show (metrics or progress).
    pub fn watch(&self, sources: Sources) {
        if self.exporter.is_none() && self.options.progress_every.is_none() {
            return;
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let exporter = self.exporter.clone();
        let checkpoint = self.checkpoint.clone();
        let progress_every = self.options.progress_every;
        let mut ends = lag::EndOffsets::new(self.consumer.clone());
        let spawned = std::thread::Builder::new().name("k2-telemetry".into()).spawn(move || {
            let mut last_progress: Option<Snapshot> = None;
            loop {
                let partitions: Vec<(String, i32)> = sources
                    .source
                    .partitions
                    .lock()
                    .expect("source partitions")
                    .iter()
                    .map(|p| (p.topic.clone(), p.partition))
                    .collect();
                ends.refresh(&partitions);
                let info = *checkpoint.lock().expect("checkpoint info");
                let now = sources.snapshot(&ends.ends, info);
                if let Some(e) = &exporter {
                    e.export(&now);
                }
                if let Some(every) = progress_every {
                    match &last_progress {
                        Some(before) if now.at.duration_since(before.at) >= every => {
                            progress::report(before, &now);
                            last_progress = Some(now);
                        }
                        Some(_) => {}
                        None => last_progress = Some(now),
                    }
                }
                match stopped.recv_timeout(TICK) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        });
        match spawned {
            Ok(thread) => *self.sampler.lock().expect("sampler") = Some((stop, thread)),
            Err(e) => tracing::warn!(error = %e, "cannot start the telemetry thread; no metrics or progress"),
        }
    }

    /// Ends the run's telemetry: stops the thread and commits the last
    /// cut's offsets to the consumer group (waiting a few seconds at most).
    pub fn finish(&self) {
        if let Some((stop, thread)) = self.sampler.lock().expect("sampler").take() {
            // It ends at once; not joined, as closing its Kafka client can
            // take long while the brokers are unreachable.
            drop(stop);
            drop(thread);
        }
        if let Some(g) = &self.group {
            g.close(GROUP_CLOSE_WAIT);
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.finish();
    }
}
