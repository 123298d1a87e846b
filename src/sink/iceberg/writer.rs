//! Per-worker staging of data files: the first half of the commit protocol.
//!
//! Epochs are grouped into *commit groups* of `commit_interval_ms` by a rule
//! that every worker computes alike ([`CommitGroups`]). A worker buffers its
//! rows per group and, once its input frontier has passed the group's last
//! epoch, writes them as Parquet data files (one per day partition, rolled at
//! the target size) and sends their descriptions to the committer. Until then
//! it holds a capability for the group, so the committer cannot consider the
//! group complete while any worker still has rows for it.
//!
//! A write that fails keeps the rows and the capability and is retried: the
//! job may stall on a full disk, but it never commits a group without them.

use super::schema::{RowContext, TableRow};
use crate::time::{Time, epoch_complete};
use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey, Struct, serialize_data_file_to_json};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
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
use std::time::Duration;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::CapabilitySet;
use timely::dataflow::operators::generic::Operator;

/// Which epochs end a commit group. Every worker and the committer use the
/// same rule, so all tables of a job are cut at the same epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitGroups {
    /// Epoch length, ms.
    pub epoch_ms: u64,
    /// Commit interval, ms (>= `epoch_ms`).
    pub commit_interval_ms: u64,
}

impl CommitGroups {
    /// The last epoch of the group that `epoch` belongs to: the group's label.
    pub fn group_of(&self, epoch: u64) -> u64 {
        let window = epoch.saturating_mul(self.epoch_ms) / self.commit_interval_ms;
        let next_window_ms = (window + 1).saturating_mul(self.commit_interval_ms);
        next_window_ms.div_ceil(self.epoch_ms).saturating_sub(1).max(epoch)
    }
}

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
    pub table: Table,
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
    /// The row type.
    pub rows: PhantomData<fn() -> R>,
}

impl<R: TableRow> TableWriter<R> {
    /// Writes `rows` of one group as data files, one or more per day.
    pub fn write(&self, worker: usize, group: u64, rows: &mut [R]) -> iceberg::Result<StagedFiles> {
        let metadata = self.table.metadata();
        let schema = metadata.current_schema().clone();
        let spec = metadata.default_partition_spec().as_ref().clone();
        let partition_type = spec.partition_type(&schema)?;
        let arrow_schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
        let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();

        let mut produce: Vec<i64> = rows.iter().map(|r| r.produce_ms()).collect();
        produce.sort_unstable();
        let mut produce_ms: Vec<(i64, u32)> = Vec::new();
        for ms in produce {
            match produce_ms.last_mut() {
                Some((last, n)) if *last == ms => *n += 1,
                _ => produce_ms.push((ms, 1)),
            }
        }
        let total = rows.len() as u64;
        rows.sort_by_key(|r| r.partition_day());

        let mut data_files: Vec<DataFile> = Vec::new();
        self.runtime.block_on(async {
            let mut start = 0;
            while start < rows.len() {
                let day = rows[start].partition_day();
                let end = start + rows[start..].iter().take_while(|r| r.partition_day() == day).count();
                let key = PartitionKey::new(
                    spec.clone(),
                    schema.clone(),
                    Struct::from_iter([Some(Literal::date(day))]),
                );
                let names = DefaultFileNameGenerator::new(
                    format!("{}-{}-w{worker}-g{group}-d{day}", self.job, self.run_id),
                    None,
                    DataFileFormat::Parquet,
                );
                let rolling = RollingFileWriterBuilder::new(
                    ParquetWriterBuilder::new(props.clone(), schema.clone()),
                    self.target_file_size,
                    self.table.file_io().clone(),
                    DefaultLocationGenerator::new(metadata)?,
                    names,
                );
                let mut writer = DataFileWriterBuilder::new(rolling).build(Some(key)).await?;
                // Bounded batches keep the Arrow copy of a big group small.
                for chunk in rows[start..end].chunks(65_536) {
                    writer.write(R::to_batch(chunk, &self.ctx, &arrow_schema)).await?;
                }
                data_files.extend(writer.close().await?);
                start = end;
            }
            iceberg::Result::Ok(())
        })?;
        let bytes = data_files.iter().map(|f| f.file_size_in_bytes()).sum();
        let data_files = data_files
            .into_iter()
            .map(|f| serialize_data_file_to_json(f, &partition_type, metadata.format_version()))
            .collect::<iceberg::Result<Vec<_>>>()?;
        Ok(StagedFiles {
            table: self.name.clone(),
            group,
            worker,
            data_files,
            rows: total,
            bytes,
            produce_ms,
        })
    }
}

/// Writes a stream of rows into staged Iceberg data files.
pub trait WriteIceberg<'scope, R> {
    /// Stages this worker's rows per commit group; see the module docs.
    fn write_iceberg(self, writer: TableWriter<R>) -> Stream<'scope, Time, Vec<StagedFiles>>;
}

impl<'scope, R: TableRow> WriteIceberg<'scope, R> for Stream<'scope, Time, Vec<R>> {
    fn write_iceberg(self, writer: TableWriter<R>) -> Stream<'scope, Time, Vec<StagedFiles>> {
        let name = format!("Iceberg({})", writer.name);
        let scope = self.scope();
        let worker = scope.index();
        self.unary_frontier(Pipeline, &name, move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut pending: BTreeMap<u64, (CapabilitySet<Time>, Vec<R>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(time) = cap.stamp().elements().iter().min_by_key(|t| t.epoch).copied() else {
                        tracing::error!(table = %writer.name, "records without a timestamp; K2 sources always stamp records");
                        return;
                    };
                    let group = writer.groups.group_of(time.epoch);
                    let entry = pending.entry(group).or_insert_with(|| (CapabilitySet::new(), Vec::new()));
                    entry.0.insert(cap.delayed(&time, 0));
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                let frontier = frontier.frontier();
                while let Some(entry) = pending.first_entry() {
                    if !epoch_complete(frontier.iter(), *entry.key()) {
                        break;
                    }
                    let (group, (caps, mut rows)) = entry.remove_entry();
                    match writer.write(worker, group, &mut rows) {
                        Ok(staged) => output.session(&caps).give(staged),
                        Err(e) => {
                            tracing::error!(table = %writer.name, group, error = %e, "writing data files failed; retrying in 1 s");
                            pending.insert(group, (caps, rows));
                            activator.activate_after(Duration::from_secs(1));
                            break;
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_end_on_commit_interval_boundaries() {
        let g = CommitGroups {
            epoch_ms: 200,
            commit_interval_ms: 1000,
        };
        assert_eq!(
            (0..10).map(|e| g.group_of(e)).collect::<Vec<_>>(),
            vec![4, 4, 4, 4, 4, 9, 9, 9, 9, 9]
        );
        let g = CommitGroups {
            epoch_ms: 300,
            commit_interval_ms: 1000,
        };
        for e in 0..1000 {
            let label = g.group_of(e);
            assert!(label >= e);
            assert_eq!(g.group_of(label), label, "a label is its own group's end");
        }
        let g = CommitGroups {
            epoch_ms: 100,
            commit_interval_ms: 100,
        };
        assert_eq!(g.group_of(8_800_000_000), 8_800_000_000);
    }
}
