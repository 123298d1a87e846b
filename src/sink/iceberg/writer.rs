//! Per-worker staging of data files: the Iceberg sink's half of the commit
//! protocol.
//!
//! A worker buffers its rows per commit group ([`GroupBuffer`]) and, once its
//! input frontier has passed the group's last epoch, writes them as Parquet
//! data files (one per partition, rolled at the target size) and stages their
//! descriptions for the [`super::participant::IcebergParticipant`], through
//! the worker's cut. Until then it holds a capability for the group, so the
//! committer cannot consider the group complete while any worker still has
//! rows for it.
//!
//! The rows stay in memory until the group is staged: a write that fails
//! keeps them and the capability, deletes the files the attempt began, and
//! the whole group is written again after an exponential backoff (capped at
//! 30 s; the log says the real wait). Meanwhile the writer holds a
//! [`Stall`], and the sources stop reading, so memory stays bounded. The job may stall on a full disk, but it
//! never commits a group without its rows.

use super::rows::{RowContext, TableRow};
use crate::checkpoint::backpressure::{Backpressure, Stall};
use crate::checkpoint::{CommitGroups, CommitItem, Cut, GroupBuffer, Staged};
use crate::time::{Time, stamp_time};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey, Struct, Transform, serialize_data_file_to_json};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// Data files staged by one worker for one table and commit group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StagedFiles {
    /// Table name within the job's namespace.
    pub table: String,
    /// The commit group (its last epoch).
    pub group: u64,
    /// The worker that wrote them.
    pub worker: usize,
    /// Iceberg `DataFile`s, as Iceberg's own JSON.
    pub data_files: Vec<String>,
    /// Rows in these files.
    pub rows: u64,
    /// Bytes in these files.
    pub bytes: u64,
    /// Produce times of the rows, ms, run-length encoded `(ms, count)`: the
    /// committer turns them into produce-to-visible latencies.
    pub produce_ms: Vec<(i64, u32)>,
}

/// Everything a worker needs to write one table's data files.
#[derive(Clone)]
pub struct TableWriter<R> {
    /// Table name within the namespace.
    pub name: String,
    /// The table, as loaded at start (for its schema, spec and location).
    pub table: iceberg::table::Table,
    /// The job's name, the first part of every file name.
    pub job: String,
    /// A per-run token in file names, so runs never collide.
    pub run_id: String,
    /// Roll files at this size.
    pub target_file_size: usize,
    /// The commit group rule.
    pub groups: CommitGroups,
    /// Row conversion context.
    pub ctx: RowContext,
    /// Runtime that drives iceberg's async writers.
    pub runtime: tokio::runtime::Handle,
    /// Held while this writer cannot write: the sources stop reading.
    pub backpressure: Backpressure,
    /// The row type.
    pub rows: PhantomData<fn() -> R>,
}

/// An open data file writer of one partition.
type PartitionWriter = DataFileWriter<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// Whether `a` and `b` differ only in labels (time zone, decimal precision).
fn same_layout(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::Timestamp(u1, _), DataType::Timestamp(u2, _)) => u1 == u2,
        (DataType::Decimal128(_, s1), DataType::Decimal128(_, s2)) => s1 == s2,
        (DataType::Utf8, DataType::LargeUtf8) | (DataType::LargeUtf8, DataType::Utf8) => false,
        _ => false,
    }
}

/// Re-labels an array whose physical layout already matches `to`.
fn relabel(col: ArrayRef, to: &DataType) -> ArrayRef {
    let data = col
        .to_data()
        .into_builder()
        .data_type(to.clone())
        .build()
        .expect("same physical layout");
    arrow_array::make_array(data)
}

/// `col` widened to `to` as Iceberg promotes a column's type (`int` to
/// `long`, `float` to `double`; a wider decimal is [`same_layout`]), if
/// that is the difference; see [`super::schema`].
fn promote(col: &ArrayRef, to: &DataType) -> Option<ArrayRef> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int32Type};
    match (col.data_type(), to) {
        (DataType::Int32, DataType::Int64) => {
            let wide: arrow_array::Int64Array = col.as_primitive::<Int32Type>().unary(i64::from);
            Some(Arc::new(wide))
        }
        (DataType::Float32, DataType::Float64) => {
            let wide: arrow_array::Float64Array = col.as_primitive::<Float32Type>().unary(f64::from);
            Some(Arc::new(wide))
        }
        _ => None,
    }
}

/// Rows encoded per Arrow batch: bounds the Arrow copy of a big group.
const BATCH_ROWS: usize = 65_536;

/// Encode a group's rows once this many are waiting, rather than all at the
/// group's end.
const ENCODE_EVERY: usize = 8_192;

/// Open data files of one commit group, one per partition seen so far.
pub struct OpenFiles {
    worker: usize,
    group: u64,
    partitions: BTreeMap<Option<i32>, PartitionWriter>,
    /// The unique parts of the file names begun, to clean up a failed attempt.
    markers: Vec<String>,
}

/// `rows` of table `name` as an Arrow batch of `schema` (the table's
/// current one), by column name: a nullable column K2's row type lacks
/// (another tool added it) is null; a required one, or a column of another
/// type, is an error. What the writer writes, and what `k2 query` builds
/// the Kafka tail's rows with.
pub fn rows_batch<R: TableRow>(
    name: &str,
    rows: &[R],
    ctx: &RowContext,
    schema: &SchemaRef,
) -> iceberg::Result<RecordBatch> {
    let err = |message: String| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, message);
    let columns = R::to_columns(rows, ctx);
    let names = R::columns();
    let mut out = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        match names.iter().position(|(n, _, _)| *n == field.name()) {
            Some(i) => {
                let col = &columns[i];
                if col.data_type() == field.data_type() {
                    out.push(col.clone());
                } else if same_layout(col.data_type(), field.data_type()) {
                    out.push(relabel(col.clone(), field.data_type()));
                } else if let Some(promoted) = promote(col, field.data_type()) {
                    out.push(promoted);
                } else {
                    return Err(err(format!(
                        "table `{name}`: column `{}` is {}, but K2 writes {}: an incompatible schema change",
                        field.name(),
                        field.data_type(),
                        col.data_type()
                    )));
                }
            }
            None if field.is_nullable() => out.push(arrow_array::new_null_array(field.data_type(), rows.len())),
            None => {
                return Err(err(format!(
                    "table `{name}` requires column `{}`, which K2's rows do not have: an incompatible schema change",
                    field.name()
                )));
            }
        }
    }
    RecordBatch::try_new(schema.clone(), out).map_err(|e| err(format!("table `{name}`: {e}")))
}

impl<R: TableRow> TableWriter<R> {
    /// Starts the data files of `group` on `worker`; nothing is written yet.
    pub fn open(&self, worker: usize, group: u64) -> OpenFiles {
        OpenFiles {
            worker,
            group,
            partitions: BTreeMap::new(),
            markers: Vec::new(),
        }
    }

    /// Encodes `rows` into `files` (sorting them by partition first).
    pub fn append(&self, files: &mut OpenFiles, rows: &mut [R]) -> iceberg::Result<()> {
        rows.sort_by_key(|r| r.partition());
        let metadata = self.table.metadata();
        let schema = metadata.current_schema().clone();
        let arrow_schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
        self.runtime.block_on(async {
            let mut start = 0;
            while start < rows.len() {
                let partition = rows[start].partition();
                let end = start + rows[start..].iter().take_while(|r| r.partition() == partition).count();
                let writer = match files.partitions.entry(partition) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        // Unique per attempt: a retry never reuses a failed attempt's names.
                        let marker = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
                        files.markers.push(marker.clone());
                        v.insert(
                            self.open_partition(files.worker, files.group, partition, marker)
                                .await?,
                        )
                    }
                };
                for chunk in rows[start..end].chunks(BATCH_ROWS) {
                    writer
                        .write(rows_batch(&self.name, chunk, &self.ctx, &arrow_schema)?)
                        .await?;
                }
                start = end;
            }
            iceberg::Result::Ok(())
        })
    }

    async fn open_partition(
        &self,
        worker: usize,
        group: u64,
        partition: Option<i32>,
        marker: String,
    ) -> iceberg::Result<PartitionWriter> {
        let metadata = self.table.metadata();
        let schema = metadata.current_schema().clone();
        let spec = metadata.default_partition_spec().as_ref().clone();
        let key = match (partition, spec.fields().first()) {
            (Some(value), Some(field)) => {
                let literal = match field.transform {
                    Transform::Day => Literal::date(value),
                    _ => Literal::int(value),
                };
                Some(PartitionKey::new(
                    spec,
                    schema.clone(),
                    Struct::from_iter([Some(literal)]),
                ))
            }
            _ => None,
        };
        let part = partition.map_or("none".to_string(), |p| p.to_string());
        let names = DefaultFileNameGenerator::new(
            format!("{}-{}-w{worker}-g{group}-p{part}", self.job, self.run_id),
            Some(marker),
            DataFileFormat::Parquet,
        );
        let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
        let rolling = RollingFileWriterBuilder::new(
            ParquetWriterBuilder::new(props, schema),
            self.target_file_size,
            self.table.file_io().clone(),
            DefaultLocationGenerator::new(metadata)?,
            names,
        );
        DataFileWriterBuilder::new(rolling).build(key).await
    }

    /// Closes `files` and describes them for the committer; `rows` are all
    /// the group's rows (for the counts and produce times).
    pub fn close(&self, files: OpenFiles, rows: &[R]) -> iceberg::Result<StagedFiles> {
        let metadata = self.table.metadata();
        let schema = metadata.current_schema().clone();
        let partition_type = metadata.default_partition_spec().partition_type(&schema)?;
        let mut data_files: Vec<DataFile> = Vec::new();
        self.runtime.block_on(async {
            for (_, mut writer) in files.partitions {
                data_files.extend(writer.close().await?);
            }
            iceberg::Result::Ok(())
        })?;
        let mut produce: Vec<i64> = rows.iter().filter_map(|r| r.produce_ms()).collect();
        produce.sort_unstable();
        let mut produce_ms: Vec<(i64, u32)> = Vec::new();
        for ms in produce {
            match produce_ms.last_mut() {
                Some((last, n)) if *last == ms => *n += 1,
                _ => produce_ms.push((ms, 1)),
            }
        }
        let bytes = data_files.iter().map(|f| f.file_size_in_bytes()).sum();
        let data_files = data_files
            .into_iter()
            .map(|f| serialize_data_file_to_json(f, &partition_type, metadata.format_version()))
            .collect::<iceberg::Result<Vec<_>>>()?;
        Ok(StagedFiles {
            table: self.name.clone(),
            group: files.group,
            worker: files.worker,
            data_files,
            rows: rows.len() as u64,
            bytes,
            produce_ms,
        })
    }

    /// Writes `rows` of one group as data files, one or more per day, at once.
    pub fn write(&self, worker: usize, group: u64, rows: &mut [R]) -> iceberg::Result<StagedFiles> {
        let mut files = self.open(worker, group);
        let markers = |f: &OpenFiles| f.markers.clone();
        let written = self.append(&mut files, rows);
        let begun = markers(&files);
        match written.and_then(|_| self.close(files, rows)) {
            Ok(staged) => Ok(staged),
            Err(e) => {
                self.abandon(&begun);
                Err(e)
            }
        }
    }

    /// Deletes the files a failed attempt began.
    fn abandon(&self, markers: &[String]) {
        let deleted = self
            .runtime
            .block_on(super::maintenance::delete_attempt(&self.table, markers));
        if deleted > 0 {
            tracing::debug!(table = %self.name, deleted, "removed the files of a failed write");
        }
    }
}

/// Retries of failed writes: when the next may run, and the stall held meanwhile.
struct Retry {
    at: Instant,
    attempt: u32,
    delays: Box<dyn Iterator<Item = Duration>>,
    _stall: Stall,
}

/// One commit group's rows on one worker: all of them, kept until the group
/// is staged (so a failed write can be retried from the rows), and the data
/// files the first `encoded` of them are already in.
struct Pending<R> {
    rows: Vec<R>,
    encoded: usize,
    /// The files being written; `None` before the first row, and once an
    /// early write failed (the group is then written at once at its end, as
    /// a retry would).
    files: Option<OpenFiles>,
    /// An early write failed.
    failed: bool,
}

impl<R> Default for Pending<R> {
    fn default() -> Self {
        Pending {
            rows: Vec::new(),
            encoded: 0,
            files: None,
            failed: false,
        }
    }
}

/// A table of the job, for one worker's dataflow: how to write it, and the
/// cut its staged files join.
pub struct Table<'scope, R> {
    /// How to write the table.
    pub writer: TableWriter<R>,
    /// The worker's cut.
    pub cut: Cut<'scope>,
}

/// The participant name of Iceberg tables in cuts and manifests.
pub const PARTICIPANT: &str = "iceberg";

/// Writes a stream of rows into an Iceberg table, exactly once.
pub trait WriteIceberg<'scope, R> {
    /// Stages this worker's rows per commit group for the table's commits;
    /// see the module docs.
    fn write_iceberg(self, table: Table<'scope, R>);
}

impl<'scope, R: TableRow> WriteIceberg<'scope, R> for Stream<'scope, Time, Vec<R>> {
    fn write_iceberg(self, table: Table<'scope, R>) {
        let Table { writer, cut } = table;
        let name = format!("Iceberg({})", writer.name);
        let scope = self.scope();
        let worker = scope.index();
        let staged = self.unary_frontier(Pipeline, &name, move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut pending: GroupBuffer<Pending<R>> = GroupBuffer::new(writer.groups);
            let mut retry: Option<Retry> = None;
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(time) = stamp_time(cap.stamp().iter()) else {
                        tracing::error!(table = %writer.name, "records without a timestamp; K2 sources always stamp records");
                        return;
                    };
                    let group = writer.groups.group_of(time.epoch);
                    let entry = pending.at(&cap, time, 0);
                    if entry.files.is_none() && !entry.failed {
                        entry.files = Some(writer.open(worker, group));
                    }
                    entry.rows.append(data);
                    // Encode as rows arrive, so that closing the group at its
                    // end (on the way to the commit) has little left to do.
                    if entry.rows.len() - entry.encoded >= ENCODE_EVERY
                        && let Some(files) = entry.files.as_mut()
                    {
                        if let Err(e) = writer.append(files, &mut entry.rows[entry.encoded..]) {
                            tracing::warn!(table = %writer.name, group, error = %e, "writing data files failed; will write the group at its end");
                            writer.abandon(&files.markers);
                            entry.files = None;
                            entry.failed = true;
                        }
                        entry.encoded = entry.rows.len();
                    }
                });
                let frontier = frontier.frontier();
                // After a failure, nothing is written before the backoff ends,
                // however often the operator is woken.
                if let Some(r) = &retry
                    && Instant::now() < r.at
                {
                    return;
                }
                let mut complete = pending.complete(frontier.iter()).into_iter();
                while let Some((group, caps, mut p)) = complete.next() {
                    let staged = match p.files.take() {
                        Some(mut files) => {
                            let written = writer.append(&mut files, &mut p.rows[p.encoded..]);
                            let begun = files.markers.clone();
                            let closed = written.and_then(|_| writer.close(files, &p.rows));
                            if closed.is_err() {
                                writer.abandon(&begun);
                            }
                            closed
                        }
                        None => writer.write(worker, group, &mut p.rows),
                    };
                    match staged {
                        Ok(staged) => {
                            if let Some(r) = retry.take() {
                                tracing::info!(table = %writer.name, group, attempts = r.attempt + 1, "writing data files works again");
                            }
                            let payload = serde_json::to_vec(&staged).expect("staged files serialize");
                            output.session(&caps).give(CommitItem::Staged(Staged {
                                participant: PARTICIPANT.to_string(),
                                group,
                                worker,
                                payload,
                            }))
                        }
                        Err(e) => {
                            let r = retry.get_or_insert_with(|| Retry {
                                at: Instant::now(),
                                attempt: 0,
                                delays: Box::new(crate::retry::backoff(
                                    Duration::from_millis(500),
                                    Duration::from_secs(30),
                                )),
                                _stall: writer.backpressure.stall(),
                            });
                            let wait = r.delays.next().unwrap_or(Duration::from_secs(30));
                            r.attempt += 1;
                            r.at = Instant::now() + wait;
                            tracing::error!(
                                table = %writer.name,
                                group,
                                attempt = r.attempt,
                                error = %e,
                                "writing data files failed; the sources pause; retrying in {wait:?}"
                            );
                            pending.put_back(group, caps, p);
                            for (group, caps, p) in complete.by_ref() {
                                pending.put_back(group, caps, p);
                            }
                            activator.activate_after(wait);
                            break;
                        }
                    }
                }
            }
        });
        cut.register(staged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Exchange, Trade};

    fn trade(id: u64, event_us: i64) -> Trade {
        crate::record::test_trade(Exchange::Binance, id, "1", event_us)
    }

    /// Message ids in the Parquet files of `staged`, read back from disk.
    fn ids_in(staged: &StagedFiles) -> Vec<String> {
        use arrow_array::{Array, StringArray};
        let mut ids = Vec::new();
        for json in &staged.data_files {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            let path = v["file_path"].as_str().unwrap().trim_start_matches("file://");
            let file = std::fs::File::open(path).unwrap();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let col = batch.column_by_name("message_id").unwrap();
                let col = col.as_any().downcast_ref::<StringArray>().unwrap();
                ids.extend((0..col.len()).map(|i| col.value(i).to_string()));
            }
        }
        ids.sort();
        ids
    }

    #[test]
    fn staging_in_pieces_writes_the_same_rows_as_at_once() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("k2-writer-{}", uuid::Uuid::new_v4().simple()));
        let cfg = crate::config::IcebergConfig {
            warehouse: dir.clone(),
            ..Default::default()
        };
        let table = runtime.block_on(async {
            let catalog = super::super::JobCatalog::open(&cfg, &Default::default()).await.unwrap();
            catalog
                .ensure_table(&crate::sink::iceberg::TableDecl::of::<Trade>("t"))
                .await
                .unwrap()
        });
        let writer = TableWriter::<Trade> {
            name: "t".into(),
            table,
            job: "j".into(),
            run_id: "r".into(),
            target_file_size: 1 << 30,
            groups: CommitGroups {
                epoch_ms: 100,
                commit_interval_ms: 100,
            },
            ctx: RowContext {
                topics: Arc::new(vec!["topic".into()]),
            },
            runtime: runtime.handle().clone(),
            backpressure: Default::default(),
            rows: PhantomData,
        };
        // Three days, interleaved, in pieces of uneven size.
        let day_us = 86_400_000_000;
        let mut rows: Vec<Trade> = (0..20_000u64)
            .map(|i| trade(i, 1_767_225_600_000_000 + (i % 3) as i64 * day_us))
            .collect();
        let want: Vec<String> = {
            let mut v: Vec<String> = rows.iter().map(|t| t.message_id.to_string()).collect();
            v.sort();
            v
        };
        let mut files = writer.open(0, 1);
        for (a, b) in [(0, 7_000), (7_000, 7_001), (7_001, 20_000)] {
            writer.append(&mut files, &mut rows[a..b]).unwrap();
        }
        let pieces = writer.close(files, &rows).unwrap();
        let at_once = writer.write(0, 2, &mut rows.clone()).unwrap();
        assert_eq!((pieces.rows, at_once.rows), (20_000, 20_000));
        assert_eq!(pieces.data_files.len(), 3, "one file per day");
        assert_eq!(ids_in(&pieces), want);
        assert_eq!(ids_in(&at_once), want);
        assert_eq!(pieces.produce_ms, at_once.produce_ms);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
