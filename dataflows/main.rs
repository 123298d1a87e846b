//! The `k2` command: run dataflows, produce feeds, run the demo.
#![forbid(unsafe_code)]

mod arbitrage;
mod bars;
mod bronze;
mod demo;
mod divergence;
mod feed;
mod gold;
mod market;
mod ohlcv;
mod produce;
mod query;
mod registry;

use anyhow::{Context, Result, anyhow};

use clap::{Parser, Subcommand};
use k2::config::{Config, RunMode, StartPosition};
use k2::launch::{RunOptions, TimelyArgs};
use k2::telemetry::{LogFormat, TelemetryOptions};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// K2 Stream: exactly-once Kafka → Iceberg streaming on timely dataflow.
#[derive(Parser)]
#[command(name = "k2", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` or as `json` objects (one per line, for log
    /// collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "K2_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a named dataflow (see `k2 dataflows`).
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Produce a deterministic two-exchange trade feed into Kafka.
    Produce(Box<produce::ProduceArgs>),
    /// Start a local broker if needed, produce a few seconds of market data,
    /// run bronze + arbitrage on 2 workers and print what happened.
    Demo(demo::DemoArgs),
    /// Launch and supervise a multi-process job on this machine: restart
    /// all processes from the newest checkpoint when one dies.
    #[command(disable_help_flag = true)]
    Cluster(ClusterArgs),
    /// List the dataflows.
    Dataflows,
    /// List a job's checkpoints: epoch, time, offsets, state size, tables.
    Checkpoints(CheckpointsArgs),
    /// SQL over a job's tables: history, the Kafka tail, or both joined exactly.
    Query(query::QueryArgs),
}

#[derive(clap::Args)]
struct CheckpointsArgs {
    /// The job's name (default: `job.name` of the config).
    job: Option<String>,
    /// The job's config: its checkpoint folder, job name and catalog (default: the defaults).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Print JSON, one manifest per line.
    #[arg(long)]
    json: bool,
    /// Also check that every data file the tables' current snapshots
    /// reference exists with its recorded size.
    #[arg(long)]
    verify: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Progress {
    /// When stderr is a terminal.
    Auto,
    /// Always (also into log files and pipes).
    Always,
    /// Never.
    Never,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ResetPosition {
    Earliest,
    Latest,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The dataflow to run.
    dataflow: String,
    /// The job's TOML config.
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Stop at the end offsets seen at start (overrides `job.mode`).
    #[arg(long)]
    bounded: bool,
    /// Discard the job's checkpoints and start afresh from `earliest` or
    /// `latest`. Without it, a job always resumes from its last checkpoint.
    #[arg(long, value_name = "POSITION")]
    reset: Option<ResetPosition>,
    /// Confirm a `--reset` of a job whose tables already hold rows (it says
    /// what the reset does to them when refused).
    #[arg(long, requires = "reset")]
    yes: bool,
    /// Serve Prometheus metrics over HTTP at this `host:port`, e.g.
    /// `127.0.0.1:9464` (per process: each process of a cluster needs its own).
    #[arg(long, value_name = "HOST:PORT", value_parser = socket_addr, env = "K2_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Log a progress line (messages/s, lag, watermark lag, last commit) every
    /// `--progress-every` seconds: `auto` when stderr is a terminal.
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    progress: Progress,
    /// Seconds between progress lines.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    progress_every: u64,
    #[command(flatten)]
    timely: TimelyArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// The dataflow to run.
    dataflow: String,
    /// The job's TOML config; its `checkpoint.dir` must be shared by all processes.
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Processes to launch.
    #[arg(long = "processes", short = 'n', default_value_t = 2)]
    processes: usize,
    /// Worker threads per process.
    #[arg(long = "workers", short = 'w', default_value_t = 1)]
    workers: usize,
    /// Stop at the end offsets seen at start (overrides `job.mode`).
    #[arg(long)]
    bounded: bool,
    /// Discard the job's checkpoints on the first start (not on restarts).
    #[arg(long, value_name = "POSITION")]
    reset: Option<ResetPosition>,
    /// Confirm a `--reset` of a job whose tables already hold rows.
    #[arg(long, requires = "reset")]
    yes: bool,
    /// First loopback port of the processes (default: free ports).
    #[arg(long)]
    base_port: Option<u16>,
    /// Give up after this many restarts.
    #[arg(long, default_value_t = 10)]
    max_restarts: usize,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 5)]
    status_every: u64,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Set when logs are JSON: then the last error and panics are JSON log
/// lines too, so that a log collector parses every line.
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

fn main() {
    let cli = Cli::parse();
    k2::telemetry::init_logging(cli.log_format);
    JSON_LOGS.store(cli.log_format == LogFormat::Json, Ordering::Relaxed);
    std::panic::set_hook(Box::new(one_line_panic));
    if let Err(e) = real_main(cli) {
        fatal(&chain(&e));
        std::process::exit(1);
    }
}

/// The one line a failing `k2` ends with.
fn fatal(message: &str) {
    if JSON_LOGS.load(Ordering::Relaxed) {
        tracing::error!("{message}");
    } else {
        eprintln!("error: {message}");
    }
}

/// `host:port`, resolved (so `localhost:9464` works too).
fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("`{s}`: {e} (expected host:port, e.g. 127.0.0.1:9464)"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

/// The error and its causes on one line, each cause once: K2's errors
/// already show their source, and anyhow's chain would repeat it.
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Panics as one line, without a backtrace. A timely communication thread
/// panics when another process of the cluster dies: that is not a bug here,
/// so it is said plainly and the process exits (the supervisor restarts the
/// cluster from the last checkpoint).
fn one_line_panic(info: &std::panic::PanicHookInfo<'_>) {
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
    if message.contains("timely communication error") {
        fatal(&format!(
            "lost the connection to another process of the cluster ({}); exiting",
            message.lines().next().unwrap_or("")
        ));
        std::process::exit(1);
    }
    let at = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    fatal(&format!("thread `{thread}` failed{at}: {}", message.replace('\n', " ")));
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            let dataflow = registry::lookup(&args.dataflow)
                .ok_or_else(|| anyhow!("unknown dataflow `{}`; known:\n{}", args.dataflow, registry::listing()))?;
            let mut config = Config::load(&args.config)?;
            if args.bounded {
                config.job.mode = RunMode::Bounded;
            }
            let options = RunOptions {
                reset: args.reset.map(|r| match r {
                    ResetPosition::Earliest => StartPosition::Earliest,
                    ResetPosition::Latest => StartPosition::Latest,
                }),
                reset_acknowledged: args.yes,
                telemetry: TelemetryOptions {
                    metrics_addr: args.metrics_addr,
                    progress_every: match args.progress {
                        Progress::Always => true,
                        Progress::Never => false,
                        Progress::Auto => std::io::stderr().is_terminal(),
                    }
                    .then(|| Duration::from_secs(args.progress_every)),
                },
                ..RunOptions::default()
            };
            let report = k2::launch::run(dataflow, config, &args.timely, options)?;
            println!(
                "{}",
                serde_json::to_string(&demo::report_json(&report)).context("report")?
            );
            Ok(())
        }
        Command::Produce(args) => {
            produce::produce(&args, &args.kafka.resolve()?)?;
            Ok(())
        }
        Command::Cluster(args) => cluster(&args),
        Command::Demo(args) => demo::demo(&args),
        Command::Checkpoints(args) => checkpoints(&args),
        Command::Query(args) => query::run(&args),
        Command::Dataflows => {
            println!("{}", registry::listing());
            Ok(())
        }
    }
}

fn cluster(args: &ClusterArgs) -> Result<()> {
    registry::lookup(&args.dataflow)
        .ok_or_else(|| anyhow!("unknown dataflow `{}`; known:\n{}", args.dataflow, registry::listing()))?;
    let config = Config::load(&args.config)?;
    if args.reset.is_some() && !args.yes {
        anyhow::bail!(
            "--reset discards the job's checkpoints; if its tables already hold rows, re-reading duplicates them \
             (earliest) or skips what was not committed (latest). Add --yes to confirm"
        );
    }
    let spec = k2::launch::supervisor::ClusterSpec {
        program: std::env::current_exe().context("the k2 executable")?,
        dataflow: args.dataflow.clone(),
        config: std::path::absolute(&args.config)?,
        store: k2::checkpoint::store::open(&config.checkpoint.job_location(&config.job.name), &config.s3)?,
        work_dir: std::env::temp_dir().join(format!("k2-cluster-{}-{}", config.job.name, std::process::id())),
        processes: args.processes,
        workers: args.workers,
        bounded: args.bounded,
        reset: args.reset.map(|r| match r {
            ResetPosition::Earliest => "earliest".to_string(),
            ResetPosition::Latest => "latest".to_string(),
        }),
        base_port: args.base_port,
        max_restarts: args.max_restarts,
        status_every: std::time::Duration::from_secs(args.status_every.max(1)),
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    });
    let report = k2::launch::supervisor::supervise(&spec, stop)?;
    println!(
        "{}",
        serde_json::json!({"restarts": report.restarts, "processes": report.reports})
    );
    Ok(())
}

fn checkpoints(args: &CheckpointsArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let job = args.job.clone().unwrap_or_else(|| config.job.name.clone());
    let location = config.checkpoint.job_location(&job);
    let store = k2::checkpoint::ManifestStore::open(k2::checkpoint::store::open(&location, &config.s3)?);
    let epochs = store.epochs()?;
    if epochs.is_empty() && !args.verify {
        anyhow::bail!("no checkpoints of job `{job}` in {}", location.uri());
    }
    if args.verify {
        return verify(&config, &store, &epochs);
    }
    if !args.json {
        println!(
            "job `{job}`: {} checkpoints in {} (newest last)",
            epochs.len(),
            location.uri()
        );
        println!(
            "{:>12}  {:<23}  {:>4}  {:>10}  {:>12}  tables committed (rows)",
            "epoch", "time (UTC)", "gen", "offsets", "state"
        );
    }
    for e in epochs {
        let m = store.read(e)?;
        if args.json {
            println!("{}", serde_json::to_string(&m)?);
            continue;
        }
        let time = chrono::DateTime::from_timestamp_millis(m.created_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        let next: i64 = m.offsets.values().flat_map(|p| p.values()).sum();
        let tables: Vec<String> = k2::sink::iceberg::IcebergPart::of(&m)
            .map(|p| p.tables.iter().map(|(t, c)| format!("{t} ({})", c.rows)).collect())
            .unwrap_or_default();
        println!(
            "{:>12}  {:<23}  {:>4}  {:>10}  {:>5} files {:>5} KiB  {}",
            m.epoch,
            time,
            m.generation,
            next,
            m.state.len(),
            m.state_bytes() / 1024,
            if tables.is_empty() {
                "-".to_string()
            } else {
                tables.join(", ")
            }
        );
    }
    Ok(())
}

/// `k2 checkpoints --verify`: every data file of the tables' current
/// snapshots (the tables the job's checkpoints name) exists, whole.
fn verify(config: &Config, store: &k2::checkpoint::ManifestStore, epochs: &[u64]) -> Result<()> {
    let mut tables: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for e in epochs {
        if let Some(part) = k2::sink::iceberg::IcebergPart::of(&store.read(*e)?) {
            tables.extend(part.tables.into_keys());
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut problems = Vec::new();
    runtime.block_on(async {
        let catalog = k2::sink::iceberg::JobCatalog::open(&config.iceberg, &config.s3).await?;
        for table in &tables {
            let (checked, bad) = k2::sink::iceberg::maintenance::verify_table(&catalog, table).await?;
            println!(
                "{}: {checked} data files checked, {} problems",
                catalog.qualified(table),
                bad.len()
            );
            problems.extend(bad.into_iter().map(|p| format!("{table}: {p}")));
        }
        anyhow::Ok(())
    })?;
    if !problems.is_empty() {
        for p in &problems {
            println!("  {p}");
        }
        anyhow::bail!("{} data files are missing or damaged", problems.len());
    }
    Ok(())
}
