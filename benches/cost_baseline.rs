//! The COST baseline of the bronze job (McSherry, Isard, Murray: "Scalability!
//! But at what COST?"): one hand-written, single-threaded loop that does the
//! work of `k2 run bronze --bounded -w 1` for one exchange (Binance), with none
//! of the dataflow machinery.
//!
//! Kafka → decode → Arrow → Parquet → one Iceberg commit:
//!
//! 1. an rdkafka `BaseConsumer` with K2's own consumer settings
//!    ([`k2::launch::consumer_config`]) is assigned every partition of the topic
//!    from its low watermark, and reads up to the high watermarks seen at start
//!    (what `--bounded` does);
//! 2. each message is decoded by K2's decoder ([`k2::source::kafka::decode::decode`]);
//! 3. every 65,536 trades (the chunk size of K2's writer) the trades become one
//!    Arrow batch ([`TableRow::to_batch`], K2's conversion) that is appended to
//!    one open Parquet data file per day partition, through the same
//!    iceberg-rust writer stack and Parquet settings as K2's
//!    [`TableWriter`](k2::sink::iceberg::writer::TableWriter);
//! 4. at the end the files are closed and committed in one Iceberg fast append.
//!
//! No dedup: the baseline is meant for input without duplicates
//! (`k2 produce --duplicates 0`), for which K2's dedup passes everything. No
//! dead-letter table either: with `--malformed 0` there are none; any that
//! occur are counted on stderr, not written. Everything runs on the main
//! thread (a current-thread Tokio runtime drives iceberg's async API, and the
//! local file IO is synchronous); only librdkafka's own threads, which K2 has
//! too, run beside it.
//!
//! ```sh
//! target/debug/k2 produce --binance-topic base.test.b --kraken-topic base.test.k --exchanges binance \
//!     --count 300000 --rate 0 --duplicates 0 --malformed 0 --quiet
//! cargo bench --bench cost_baseline -- --brokers 127.0.0.1:9092 --topic base.test.b --warehouse /tmp/cost-wh
//! ```
//!
//! Prints one JSON line on stdout:
//! `{"engine":"baseline","messages":N,"rows":N,"wall_s":..,"cpu_s":..,"peak_rss_mib":..}`
//! (wall time from start to the end of the commit, catalog set-up included;
//! CPU time and peak RSS of the whole process), and a breakdown on stderr.
//! The table is `market_data.bronze_binance_trades` in catalog `k2` of the
//! warehouse's `catalog.db`, as K2 would name it; use a fresh warehouse, or
//! the rows are appended to those already there.

use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use k2::config::{Config, IcebergConfig};
use k2::record::{Exchange, SourcePosition, Trade};
use k2::sink::iceberg::{JobCatalog, RowContext, TableDecl, TableRow};
use k2::source::kafka::decode::decode;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Trades per Arrow batch, as in K2's writer.
const CHUNK: usize = 65_536;
/// Give up when no message arrives for this long before the end offsets.
const STALL: Duration = Duration::from_secs(30);

type Writer = DataFileWriter<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

struct Args {
    brokers: String,
    topic: String,
    warehouse: PathBuf,
    table: String,
    consumer: Vec<(String, String)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: cost_baseline --brokers HOST:PORT --topic TOPIC --warehouse DIR [--table NAME] \
         [--consumer KEY=VALUE]...\n\
         (via cargo: cargo bench --bench cost_baseline -- --brokers ...)"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut brokers = "127.0.0.1:9092".to_string();
    let mut topic = None;
    let mut warehouse = None;
    let mut table = "bronze_binance_trades".to_string();
    let mut consumer = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--brokers" => brokers = value(),
            "--topic" => topic = Some(value()),
            "--warehouse" => warehouse = Some(PathBuf::from(value())),
            "--table" => table = value(),
            // Extra librdkafka properties, like K2's `[kafka.consumer]`.
            "--consumer" => {
                let kv = value();
                let Some((k, v)) = kv.split_once('=') else { usage() };
                consumer.push((k.to_string(), v.to_string()));
            }
            // `cargo bench` passes `--bench` to every bench target.
            "--bench" => {}
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument `{other}`");
                usage()
            }
        }
    }
    let (Some(topic), Some(warehouse)) = (topic, warehouse) else {
        usage()
    };
    Args {
        brokers,
        topic,
        warehouse,
        table,
        consumer,
    }
}

/// Open Parquet data files, one per day partition, fed one Arrow batch at a time.
struct Sink {
    table: Table,
    ctx: RowContext,
    props: WriterProperties,
    arrow_schema: arrow_schema::SchemaRef,
    target_file_size: usize,
    writers: HashMap<i32, Writer>,
    files: Vec<DataFile>,
    rows: u64,
}

impl Sink {
    fn new(table: Table, topic: &str, target_file_size: usize) -> iceberg::Result<Sink> {
        let schema = table.metadata().current_schema().clone();
        let arrow_schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
        Ok(Sink {
            table,
            ctx: RowContext {
                topics: Arc::new(vec![topic.to_string()]),
            },
            // The same Parquet settings as K2's writer.
            props: WriterProperties::builder().set_compression(Compression::SNAPPY).build(),
            arrow_schema,
            target_file_size,
            writers: HashMap::new(),
            files: Vec::new(),
            rows: 0,
        })
    }

    /// Converts `trades` to Arrow and appends them to their days' files; empties `trades`.
    async fn append(&mut self, trades: &mut Vec<Trade>) -> iceberg::Result<()> {
        if trades.is_empty() {
            return Ok(());
        }
        let first_day = trades[0].partition().unwrap_or(0);
        if trades.iter().all(|t| t.partition().unwrap_or(0) == first_day) {
            self.append_day(first_day, trades).await?;
        } else {
            trades.sort_by_key(|t| t.partition().unwrap_or(0));
            let mut start = 0;
            while start < trades.len() {
                let day = trades[start].partition().unwrap_or(0);
                let end = start
                    + trades[start..]
                        .iter()
                        .take_while(|t| t.partition().unwrap_or(0) == day)
                        .count();
                self.append_day(day, &trades[start..end]).await?;
                start = end;
            }
        }
        self.rows += trades.len() as u64;
        trades.clear();
        Ok(())
    }

    async fn append_day(&mut self, day: i32, trades: &[Trade]) -> iceberg::Result<()> {
        let batch = arrow_array::RecordBatch::try_new(self.arrow_schema.clone(), Trade::to_columns(trades, &self.ctx))
            .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string()))?;
        if !self.writers.contains_key(&day) {
            let metadata = self.table.metadata();
            let schema = metadata.current_schema().clone();
            let spec = metadata.default_partition_spec().as_ref().clone();
            let key = PartitionKey::new(spec, schema.clone(), Struct::from_iter([Some(Literal::date(day))]));
            let run = uuid::Uuid::new_v4().simple().to_string();
            let names = DefaultFileNameGenerator::new(format!("baseline-{run}-d{day}"), None, DataFileFormat::Parquet);
            let rolling = RollingFileWriterBuilder::new(
                ParquetWriterBuilder::new(self.props.clone(), schema),
                self.target_file_size,
                self.table.file_io().clone(),
                DefaultLocationGenerator::new(metadata)?,
                names,
            );
            let writer = DataFileWriterBuilder::new(rolling).build(Some(key)).await?;
            self.writers.insert(day, writer);
        }
        self.writers
            .get_mut(&day)
            .expect("writer opened above")
            .write(batch)
            .await
    }

    /// Closes every file.
    async fn close(&mut self) -> iceberg::Result<()> {
        let mut days: Vec<i32> = self.writers.keys().copied().collect();
        days.sort_unstable();
        for day in days {
            let mut writer = self.writers.remove(&day).expect("listed");
            self.files.extend(writer.close().await?);
        }
        Ok(())
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    // Catalog and table, as K2 names them.
    let iceberg = IcebergConfig {
        warehouse: args.warehouse.clone(),
        ..IcebergConfig::default()
    };
    let catalog = runtime.block_on(JobCatalog::open(&iceberg, &Default::default()))?;
    // A table name for the life of the process, as TableDecl wants.
    let table_name: &'static str = Box::leak(args.table.clone().into_boxed_str());
    let table = runtime.block_on(catalog.ensure_table(&TableDecl::of::<Trade>(table_name)))?;
    let mut sink = Sink::new(table, &args.topic, iceberg.target_file_size_bytes as usize)?;

    // K2's consumer settings; every partition from its low to its high watermark.
    let mut config = Config::default();
    config.job.name = "cost-baseline".into();
    config.kafka.brokers = args.brokers.clone();
    config.kafka.consumer.extend(args.consumer.iter().cloned());
    let consumer: BaseConsumer = k2::launch::consumer_config(&config).create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&args.topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == args.topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic `{}` not found or has no partitions", args.topic).into());
    }
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    let mut expected = 0;
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(&args.topic, p, timeout)?;
        if high > low {
            tpl.add_partition_offset(&args.topic, p, Offset::Offset(low))?;
            ends.insert(p, high);
            expected += high - low;
        }
    }
    consumer.assign(&tpl)?;
    let setup = started.elapsed();

    // The loop.
    let mut trades: Vec<Trade> = Vec::with_capacity(CHUNK + 16);
    let (mut messages, mut dead_letters, mut since_clock) = (0u64, 0u64, 0u32);
    let mut ingest_us = now_us();
    let mut last_message = Instant::now();
    let mut first_message: Option<Duration> = None;
    let mut remaining = ends.len();
    while remaining > 0 {
        let m = match consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {
                if last_message.elapsed() > STALL {
                    return Err(
                        format!("no message for {STALL:?}; {remaining} partition(s) short of their end").into(),
                    );
                }
                continue;
            }
            Some(Err(e)) => {
                eprintln!("consumer error (librdkafka retries): {e}");
                continue;
            }
            Some(Ok(m)) => m,
        };
        last_message = Instant::now();
        first_message.get_or_insert_with(|| started.elapsed() - setup);
        let partition = m.partition();
        let Some(end) = ends.get_mut(&partition) else { continue };
        if m.offset() >= *end {
            continue;
        }
        if m.offset() + 1 >= *end {
            // Done with this partition; later messages are skipped above.
            *end = m.offset();
            remaining -= 1;
        }
        messages += 1;
        // The wall clock once per 1024 messages, as K2 reads it once per poll batch.
        since_clock += 1;
        if since_clock == 1024 {
            since_clock = 0;
            ingest_us = now_us();
        }
        let pos = SourcePosition {
            topic: 0,
            partition,
            offset: m.offset(),
            kafka_ts_ms: m.timestamp().to_millis().unwrap_or(0),
            ingest_us,
        };
        if decode(Exchange::Binance, m.payload().unwrap_or_default(), &pos, &mut trades).is_err() {
            dead_letters += 1;
        }
        if trades.len() >= CHUNK {
            runtime.block_on(sink.append(&mut trades))?;
        }
    }
    runtime.block_on(sink.append(&mut trades))?;
    runtime.block_on(sink.close())?;
    let read_write = started.elapsed() - setup;

    // One fast append.
    let commit_started = Instant::now();
    let rows = sink.rows;
    let files = sink.files.len();
    let bytes: u64 = sink.files.iter().map(|f| f.file_size_in_bytes()).sum();
    if !sink.files.is_empty() {
        let table = runtime.block_on(catalog.load(&args.table))?;
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            .set_snapshot_properties(HashMap::from([("k2.job".to_string(), "cost-baseline".to_string())]))
            .add_data_files(std::mem::take(&mut sink.files))
            .apply(tx)?;
        runtime.block_on(tx.commit(catalog.catalog.as_ref()))?;
    }
    let commit = commit_started.elapsed();
    let wall = started.elapsed().as_secs_f64();
    let (cpu_s, peak_rss_mib) = k2::launch::process_usage();

    eprintln!(
        "cost_baseline: {messages} messages (expected {expected}), {rows} rows, {dead_letters} undecodable, \
         {files} file(s) of {:.1} MiB; setup {:.3} s, first message after {:.3} s, read+decode+write {:.3} s \
         ({:.0} msg/s), commit {:.3} s; overall {:.0} msg/s",
        bytes as f64 / (1 << 20) as f64,
        setup.as_secs_f64(),
        first_message.unwrap_or_default().as_secs_f64(),
        read_write.as_secs_f64(),
        messages as f64 / read_write.as_secs_f64(),
        commit.as_secs_f64(),
        messages as f64 / wall,
    );
    println!(
        r#"{{"engine":"baseline","messages":{messages},"rows":{rows},"wall_s":{wall:.3},"cpu_s":{cpu_s:.2},"peak_rss_mib":{peak_rss_mib:.1}}}"#
    );
    Ok(())
}
