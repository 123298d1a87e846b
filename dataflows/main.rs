//! The `k2` command: run dataflows, produce feeds, run the demo.
#![forbid(unsafe_code)]

mod arbitrage;
mod bronze;
mod demo;
mod divergence;
mod market;
mod produce;
mod registry;

use anyhow::{Context, Result, anyhow};

use clap::{Parser, Subcommand};
use k2::config::{Config, RunMode, StartPosition};
use k2::launch::{RunOptions, TimelyArgs};
use std::path::PathBuf;

/// K2 Stream: exactly-once Kafka → Iceberg streaming on timely dataflow.
#[derive(Parser)]
#[command(name = "k2", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a named dataflow (see `k2 dataflows`).
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Produce a deterministic two-exchange trade feed into Kafka.
    Produce(produce::ProduceArgs),
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
}

#[derive(clap::Args)]
struct CheckpointsArgs {
    /// The job's name.
    job: String,
    /// Read the checkpoint folder from this config (default: .k2/checkpoints).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Print JSON, one manifest per line.
    #[arg(long)]
    json: bool,
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

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,iceberg=warn,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal, not in log files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
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
            produce::produce(&args)?;
            Ok(())
        }
        Command::Cluster(args) => cluster(&args),
        Command::Demo(args) => demo::demo(&args),
        Command::Checkpoints(args) => checkpoints(&args),
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
    let spec = k2::launch::supervisor::ClusterSpec {
        program: std::env::current_exe().context("the k2 executable")?,
        dataflow: args.dataflow.clone(),
        config: std::path::absolute(&args.config)?,
        job_dir: config.checkpoint.job_dir(&config.job.name),
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
    let dir = config.checkpoint.job_dir(&args.job);
    if !dir.exists() {
        anyhow::bail!("no checkpoints of job `{}` in {}", args.job, dir.display());
    }
    let store = k2::checkpoint::ManifestStore::open(&dir)?;
    let epochs = store.epochs()?;
    if !args.json {
        println!(
            "job `{}`: {} checkpoints in {} (newest last)",
            args.job,
            epochs.len(),
            dir.display()
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
        let tables: Vec<String> = m.tables.iter().map(|(t, c)| format!("{t} ({})", c.rows)).collect();
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
