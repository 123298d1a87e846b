//! The Iceberg tables of a job as a participant of its cuts.
//!
//! * **prepare**: the data files every worker staged for the cut's groups,
//!   per table, with a deterministic `k2.commit-id` = FNV-1a(job/table/epoch);
//! * **commit**: a fast append per table with rows in the cut, summary
//!   `k2.job`, `k2.epoch`, `k2.offsets`, `k2.generation`, `k2.commit-id`; a
//!   table whose retained snapshots already hold that id, or a `k2.epoch` at
//!   or after the cut's, is skipped (cuts go in order), so a retry or a roll
//!   forward never appends twice. The fence is checked before every append:
//!   iceberg-rust's transaction re-applies an append on top of newer
//!   snapshots, so it cannot fence a stale writer by itself;
//! * **check** (recovery): a table whose newest `k2.epoch` of this job is
//!   beyond the newest manifest means checkpoints were lost: refuse. The cut
//!   still to roll forward must have its data files, whole;
//! * **clean** (recovery): orphan files, snapshot expiry ([`maintenance`]).
//!
//! # Design note: one commit per table, not a multi-table transaction
//!
//! The Iceberg REST spec has `POST /v1/{prefix}/transactions/commit`, which
//! would append a cut to all its tables in one request. K2 does not use it,
//! because nothing on the path makes it atomic (checked 2026-11-30):
//!
//! * iceberg-catalog-rest 0.10.1 has no client for it: iceberg 0.10.1's
//!   `Catalog` trait commits one table per call (`update_table`, i.e.
//!   `POST …/namespaces/{ns}/tables/{table}`).
//! * Iceberg 1.10.0's `RESTCatalogServer` (what `scripts/iceberg-rest.sh`
//!   runs) answers the route in `RESTCatalogAdapter.commitTransaction`
//!   (iceberg-core 1.10.0 `tests` jar; `CatalogHandlers` has no such
//!   handler in 1.10.0). Read from its bytecode: for each table it loads the
//!   table, opens a `Transaction` and applies the requirements and updates
//!   in memory (`CatalogHandlers.commit`), and only if all pass does it run
//!   `transactions.forEach(Transaction::commitTransaction)`: one commit per
//!   table, each a separate conditional `UPDATE` of that table's metadata
//!   location in the JDBC catalog (`JdbcTableOperations.doCommit`). A writer
//!   that commits to the second table after the check (a compaction), or a
//!   server crash between the two updates, leaves the first table committed
//!   and the second not. Tried against the running server: requirements
//!   failing on the second table change neither table (the check is up
//!   front), but that is all it guarantees.
//!
//! So a cut would still need what it has now: the manifest as the commit
//! point, each table's append identified by its `k2.commit-id`, and recovery
//! rolling the rest forward. An unanswered request (a timeout, a 5xx) leaves
//! the outcome unknown with the endpoint too. A catalog that commits every
//! table of the request in one database transaction would let readers see
//! all tables of a cut at once; with per-table commits they read a
//! consistent view as `DESIGN.md` ("Reading several tables consistently")
//! says.

use super::catalog::JobCatalog;
use super::maintenance;
use super::writer::{PARTICIPANT, StagedFiles};
use crate::checkpoint::committer::commit_id;
use crate::checkpoint::{Committed, Fence, Manifest, Participant, Prepared, fault};
use crate::config::Config;
use crate::error::{Error, Result};
use iceberg::spec::deserialize_data_file_from_json;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// One table's part of a cut: the files to append and the commit's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCommit {
    /// `k2.commit-id` of this append.
    pub commit_id: String,
    /// Iceberg `DataFile`s, as Iceberg's own JSON.
    pub data_files: Vec<String>,
    /// Rows in those files.
    pub rows: u64,
    /// Bytes in those files.
    pub bytes: u64,
}

impl TableCommit {
    /// `(path, size)` of every data file.
    pub fn files(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.data_files.iter().filter_map(|json| {
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            Some((v["file_path"].as_str()?.to_string(), v["file_size_in_bytes"].as_u64()?))
        })
    }
}

/// The Iceberg part of a manifest: the cut's new files per table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcebergPart {
    /// Tables with rows in the cut.
    pub tables: BTreeMap<String, TableCommit>,
}

impl IcebergPart {
    /// The Iceberg part of `manifest`, if it has one.
    pub fn of(manifest: &Manifest) -> Option<IcebergPart> {
        manifest
            .parts
            .get(PARTICIPANT)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

/// A job's Iceberg tables, committed together per cut.
pub struct IcebergParticipant {
    catalog: JobCatalog,
    /// The tables, in commit order.
    tables: Vec<String>,
    config: Config,
    runtime: tokio::runtime::Handle,
    /// When snapshots were last expired (at start, by recovery's clean).
    expired_at: std::sync::Mutex<std::time::Instant>,
}

impl IcebergParticipant {
    /// The participant for `tables` (in commit order) of `catalog`.
    pub fn new(catalog: JobCatalog, tables: Vec<String>, config: Config, runtime: tokio::runtime::Handle) -> Self {
        IcebergParticipant {
            catalog,
            tables,
            config,
            runtime,
            expired_at: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    fn load(&self, name: &str) -> Result<Table> {
        self.runtime.block_on(self.catalog.load(name))
    }
}

/// A table's newest cut of one job, from its retained snapshots.
struct TableCut {
    epoch: u64,
    commit_id: String,
    rows: u64,
}

fn newest_cut(table: &Table, job: &str) -> Option<TableCut> {
    let (epoch, snapshot) = table
        .metadata()
        .snapshots()
        .filter(|s| s.summary().additional_properties.get("k2.job").map(String::as_str) == Some(job))
        .filter_map(|s| {
            Some((
                s.summary().additional_properties.get("k2.epoch")?.parse::<u64>().ok()?,
                s,
            ))
        })
        .max_by_key(|(epoch, _)| *epoch)?;
    let current = table.metadata().current_snapshot()?.summary();
    Some(TableCut {
        epoch,
        commit_id: snapshot
            .summary()
            .additional_properties
            .get("k2.commit-id")
            .cloned()
            .unwrap_or_default(),
        rows: current
            .additional_properties
            .get("total-records")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
    })
}

impl Participant for IcebergParticipant {
    fn name(&self) -> &str {
        PARTICIPANT
    }

    fn prepare(&self, job: &str, epoch: u64, staged: Vec<Vec<u8>>) -> Result<Prepared> {
        let mut by_table: BTreeMap<String, TableCommit> = BTreeMap::new();
        let mut produce: BTreeMap<i64, u32> = BTreeMap::new();
        for v in staged {
            let s: StagedFiles = serde_json::from_slice(&v)
                .map_err(|e| Error::Checkpoint(format!("staged Iceberg files do not parse: {e}")))?;
            if s.data_files.is_empty() {
                continue;
            }
            let tc = by_table.entry(s.table.clone()).or_insert_with(|| TableCommit {
                commit_id: commit_id(job, &s.table, epoch),
                data_files: Vec::new(),
                rows: 0,
                bytes: 0,
            });
            tc.data_files.extend(s.data_files);
            tc.rows += s.rows;
            tc.bytes += s.bytes;
            for (ms, n) in s.produce_ms {
                *produce.entry(ms).or_default() += n;
            }
        }
        let part = (!by_table.is_empty())
            .then(|| serde_json::to_value(IcebergPart { tables: by_table }).expect("the Iceberg part serializes"));
        Ok(Prepared {
            part,
            produce_ms: produce.into_iter().collect(),
        })
    }

    fn commit(&self, manifest: &Manifest, part: &serde_json::Value, fence: Option<&Fence>) -> Result<Committed> {
        let part: IcebergPart = serde_json::from_value(part.clone()).map_err(|e| {
            Error::Checkpoint(format!(
                "the Iceberg part of epoch {} does not parse: {e}",
                manifest.epoch
            ))
        })?;
        let mut done = Committed::default();
        let mut first = true;
        for table in &self.tables {
            let Some(tc) = part.tables.get(table) else { continue };
            if !first {
                fault::point("between-tables");
            }
            first = false;
            let props = HashMap::from([
                ("k2.job".to_string(), manifest.job.clone()),
                ("k2.epoch".to_string(), manifest.epoch.to_string()),
                ("k2.offsets".to_string(), manifest.offsets_json()),
                ("k2.generation".to_string(), manifest.generation.to_string()),
                ("k2.commit-id".to_string(), tc.commit_id.clone()),
            ]);
            let mut attempt = 0u32;
            let mut delays = crate::retry::backoff(Duration::from_millis(100), Duration::from_secs(10));
            loop {
                if let Some(f) = fence {
                    f.check()?;
                }
                let started = Instant::now();
                let result = self
                    .runtime
                    .block_on(commit_table(&self.catalog, table, manifest, tc, props.clone()));
                match result {
                    Ok(Some(ms)) => {
                        done.commits += 1;
                        done.took.push(started.elapsed());
                        *done.rows.entry(table.clone()).or_default() += tc.rows;
                        done.visible_ms = done.visible_ms.max(Some(ms));
                        break;
                    }
                    Ok(None) => {
                        tracing::debug!(table, epoch = manifest.epoch, "cut already in the table; skipped");
                        break;
                    }
                    Err(e) if attempt < 8 => {
                        attempt += 1;
                        let wait = delays.next().unwrap_or(Duration::from_secs(10));
                        tracing::warn!(table, epoch = manifest.epoch, error = %e, "commit failed; retrying in {wait:?}");
                        std::thread::sleep(wait);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(done)
    }

    fn check(&self, job: &str, newest: Option<&Manifest>) -> Result<()> {
        let part = newest.and_then(IcebergPart::of).unwrap_or_default();
        for name in &self.tables {
            let table = self.load(name)?;
            let cut = newest_cut(&table, job);
            let Some(manifest) = newest else {
                if let Some(cut) = cut {
                    return Err(Error::Checkpoint(format!(
                        "table `{name}` holds data of job `{job}` up to epoch {}, but the job has no checkpoint: \
                         the checkpoints were lost. Resuming without them would read every message again and \
                         duplicate the rows. Restore the checkpoints, or start afresh anyway with --reset \
                         earliest|latest",
                        cut.epoch
                    )));
                }
                continue;
            };
            if let Some(cut) = &cut {
                if cut.epoch > manifest.epoch {
                    return Err(Error::Checkpoint(format!(
                        "table `{name}` holds job `{job}`'s data up to epoch {}, but the newest checkpoint is \
                         epoch {}: checkpoints were lost (deleted, or restored from an old backup). Resuming from \
                         epoch {} would write the data of the later epochs a second time. Restore the lost \
                         manifests, or start afresh with --reset earliest|latest --yes",
                        cut.epoch, manifest.epoch, manifest.epoch
                    )));
                }
                let expected = commit_id(job, name, cut.epoch);
                if cut.commit_id != expected {
                    return Err(Error::Checkpoint(format!(
                        "table `{name}`'s newest snapshot of job `{job}` (epoch {}) has commit id {}, not \
                         {expected}: it was written by another job or another table of the same name. Refusing \
                         to resume",
                        cut.epoch, cut.commit_id
                    )));
                }
            }
            // The cut still to roll forward: its files must be there, whole.
            if let Some(tc) = part.tables.get(name)
                && cut.as_ref().is_none_or(|c| c.epoch < manifest.epoch)
            {
                let problems = self.runtime.block_on(maintenance::check_files(&table, tc.files()));
                if !problems.is_empty() {
                    return Err(Error::Checkpoint(format!(
                        "the checkpoint of epoch {} must still be committed to `{name}`, but its data files are \
                         damaged: {}",
                        manifest.epoch,
                        problems.join("; ")
                    )));
                }
            }
        }
        Ok(())
    }

    fn maintain(&self) {
        let due = {
            let mut last = self.expired_at.lock().expect("expiry clock");
            let due = last.elapsed() >= std::time::Duration::from_millis(self.config.iceberg.expire_every_ms);
            if due {
                *last = std::time::Instant::now();
            }
            due
        };
        if !due {
            return;
        }
        for name in &self.tables {
            if let Err(e) = self
                .runtime
                .block_on(maintenance::expire_snapshots(&self.catalog, name, &self.config))
            {
                tracing::warn!(table = name, error = %e, "snapshot expiry failed; will try again later");
            }
        }
    }

    fn clean(&self, job: &str, kept: &[Manifest]) -> Result<()> {
        let keep: HashSet<String> = kept
            .iter()
            .filter_map(IcebergPart::of)
            .flat_map(|p| p.tables.into_values())
            .flat_map(|tc| tc.files().map(|(path, _)| path).collect::<Vec<_>>())
            .collect();
        let mut orphans = 0;
        for name in &self.tables {
            orphans += self
                .runtime
                .block_on(maintenance::remove_orphans(&self.catalog, name, job, &keep))?;
            if let Err(e) = self
                .runtime
                .block_on(maintenance::expire_snapshots(&self.catalog, name, &self.config))
            {
                tracing::warn!(table = name, error = %e, "snapshot expiry failed; will retry at the next start");
            }
        }
        if orphans > 0 {
            tracing::info!(
                data_files = orphans,
                "recovery: removed data files no checkpoint and no retained snapshot references"
            );
        }
        Ok(())
    }

    fn holdings(&self, job: &str) -> Result<Vec<String>> {
        let mut held = Vec::new();
        for name in &self.tables {
            if let Some(cut) = newest_cut(&self.load(name)?, job) {
                held.push(format!("`{name}` ({} rows, up to epoch {})", cut.rows, cut.epoch));
            }
        }
        Ok(held)
    }
}

/// Commits one table's part of `manifest`; `Ok(None)` when the table
/// already has this cut. Returns the commit time, ms.
async fn commit_table(
    catalog: &JobCatalog,
    table: &str,
    manifest: &Manifest,
    tc: &TableCommit,
    props: HashMap<String, String>,
) -> Result<Option<i64>> {
    let q = catalog.qualified(table);
    let ice = |what: &'static str| {
        let q = q.clone();
        move |e| Error::iceberg(q, format!("{what} of epoch {}", manifest.epoch), e)
    };
    let t = catalog.load(table).await?;
    let metadata = t.metadata();
    let has_id = metadata
        .snapshots()
        .any(|s| s.summary().additional_properties.get("k2.commit-id") == Some(&tc.commit_id));
    // Cuts are committed in order, so a table at this epoch or later has it.
    if has_id || newest_cut(&t, &manifest.job).is_some_and(|c| c.epoch >= manifest.epoch) {
        return Ok(None);
    }
    let schema = metadata.current_schema();
    let spec_ref = metadata.default_partition_spec();
    let partition_type = spec_ref.partition_type(schema).map_err(ice("partition type"))?;
    let mut data_files = Vec::with_capacity(tc.data_files.len());
    for json in &tc.data_files {
        data_files.push(
            deserialize_data_file_from_json(json, spec_ref.spec_id(), &partition_type, schema)
                .map_err(ice("read the data files"))?,
        );
    }
    let tx = Transaction::new(&t);
    let tx = tx
        .fast_append()
        .with_check_duplicate(false)
        .set_snapshot_properties(props)
        .add_data_files(data_files)
        .apply(tx)
        .map_err(ice("append"))?;
    let committed = tx.commit(catalog.catalog.as_ref()).await.map_err(ice("commit"))?;
    let ms = committed
        .metadata()
        .current_snapshot()
        .map(|s| s.timestamp_ms())
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    Ok(Some(ms))
}
