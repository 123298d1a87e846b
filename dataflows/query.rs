//! `k2 query`: SQL over a job's tables, history, Kafka tail or both
//! (see [`k2::query`]).

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use k2::config::Config;
use k2::query::{AsOf, Mode, Query, QueryOptions, SeamDedup};
use std::io::Write;
use std::path::PathBuf;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// JSON lines, one object per row.
    Json,
    /// A Parquet file (needs `--output`).
    Parquet,
}

/// Flags of `k2 query`.
#[derive(Clone, Debug, clap::Args)]
pub struct QueryArgs {
    /// The SQL, e.g. "SELECT symbol, count(*) FROM bronze_binance_trades GROUP BY symbol".
    /// Tables are named as in the job's namespace: bronze_binance_trades,
    /// bronze_kraken_trades, dead_letters, ...
    pub sql: String,
    /// The job's TOML config: its catalog, topics and brokers.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// history (snapshots), tail (Kafka beyond the newest snapshot) or hybrid
    /// (both, exactly joined). Default: hybrid, or history with --as-of-epoch.
    #[arg(long, value_parser = clap::value_parser!(Mode))]
    pub mode: Option<Mode>,
    /// Read every table as of the job's cut E (a number, or `latest` for the
    /// newest cut all tables of the query have reached). History only.
    #[arg(long, value_name = "E", value_parser = clap::value_parser!(AsOf))]
    pub as_of_epoch: Option<AsOf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the result to this file instead of stdout (required for parquet).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Also print the seam (snapshots, epochs, tail offsets, high watermarks,
    /// timings) as one JSON line on stderr.
    #[arg(long)]
    pub seam: bool,
    /// Deduplicate the seam by an anti-join against the snapshot even when
    /// the job's checkpointed dedup state is readable.
    #[arg(long)]
    pub anti_join: bool,
}

/// Runs `k2 query`.
pub fn run(args: &QueryArgs) -> Result<()> {
    if args.format == Format::Parquet && args.output.is_none() {
        bail!("--format parquet writes a file: add --output FILE");
    }
    let config = Config::load(&args.config)?;
    let options = QueryOptions {
        mode: args.mode.unwrap_or(if args.as_of_epoch.is_some() {
            Mode::History
        } else {
            Mode::Hybrid
        }),
        as_of: args.as_of_epoch,
        seam_dedup: if args.anti_join {
            SeamDedup::AntiJoin
        } else {
            SeamDedup::Auto
        },
        ..QueryOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let answer = runtime.block_on(async {
        let query = Query::open(&config).await?;
        query.sql_with(&args.sql, &options).await
    })?;
    if args.seam {
        eprintln!("seam: {}", serde_json::to_string(&answer.seam)?);
    }
    match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
            write(
                args.format,
                &answer.schema,
                &answer.batches,
                std::io::BufWriter::new(file),
            )
            .with_context(|| format!("write {}", path.display()))
        }
        None => write(
            args.format,
            &answer.schema,
            &answer.batches,
            std::io::BufWriter::new(std::io::stdout()),
        ),
    }
}

fn write<W: Write + Send>(format: Format, schema: &SchemaRef, batches: &[RecordBatch], mut out: W) -> Result<()> {
    match format {
        Format::Table => {
            let text = datafusion::arrow::util::pretty::pretty_format_batches_with_schema(schema.clone(), batches)?;
            writeln!(out, "{text}")?;
        }
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Parquet => {
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema.clone(), None)?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
        }
    }
    out.flush()?;
    Ok(())
}
