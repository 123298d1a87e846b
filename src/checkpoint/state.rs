//! Operator-state snapshot files.
//!
//! Stateful operators checkpoint *deltas*: at the end of each commit group a
//! worker writes the entries it added in that group (JSON lines, fsynced) and
//! reports a [`StateFile`] to the committer, which lists every still-live
//! delta in the manifest. A delta is live until all its entries have expired
//! in event time (`max_expiry`), so a checkpoint costs what changed, not the
//! whole state. Restoring reads all live deltas and keeps the entries whose
//! key routes to the worker, which also re-partitions state when the number
//! of workers changes.
//!
//! Operators write deltas with [`StateStore::write_in_background`]: the
//! serialization and the fsync happen on a thread of their own while the
//! worker goes on processing records, and the operator hands the delta to the
//! committer (releasing its capability) only once it is durable.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// A state delta being written on a background thread.
#[derive(Debug)]
pub struct BackgroundWrite {
    rx: std::sync::mpsc::Receiver<StateFile>,
}

impl BackgroundWrite {
    /// The delta's description, once the file is durable.
    pub fn done(&self) -> Option<StateFile> {
        self.rx.try_recv().ok()
    }
}

/// Runs `encode`, then writes and fsyncs its bytes as the delta of `target`
/// (store, operator, worker, group, run id) on a thread of its own, retrying
/// every second until it succeeds; then activates `wake`.
fn background<F>(
    target: (StateStore, String, usize, u64, String),
    max_expiry: u64,
    wake: timely::scheduling::SyncActivator,
    encode: F,
) -> BackgroundWrite
where
    F: FnOnce() -> (Vec<u8>, u64) + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let (store, operator, worker, group, run_id) = target;
    std::thread::Builder::new()
        .name("k2-state-writer".into())
        .spawn(move || {
            let (bytes, entries) = encode();
            loop {
                match store.write_encoded(&operator, worker, group, &run_id, &bytes, entries, max_expiry) {
                    Ok(file) => {
                        let _ = tx.send(file);
                        let _ = wake.activate();
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, group, operator, "writing state failed; retrying in 1 s");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
            }
        })
        .expect("start a state writer thread");
    BackgroundWrite { rx }
}

/// One snapshot file of one operator on one worker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StateFile {
    /// The operator's name in the dataflow, e.g. `dedup`.
    pub operator: String,
    /// The worker that wrote it.
    pub worker: usize,
    /// The commit group it belongs to.
    pub group: u64,
    /// Path relative to the job's checkpoint folder.
    pub path: String,
    /// Entries in the file.
    pub entries: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Event time (ms) from which none of its entries is live any more.
    pub max_expiry: u64,
}

/// What a stateful operator needs to checkpoint itself.
#[derive(Clone, Debug)]
pub struct StateCheckpoint {
    /// The operator's name, unique in the dataflow (e.g. `dedup`).
    pub operator: String,
    /// Where to write deltas.
    pub store: StateStore,
    /// The commit-group rule of the job.
    pub groups: crate::sink::iceberg::CommitGroups,
    /// A per-run token for file names.
    pub run_id: String,
    /// Live deltas of the restored checkpoint (all operators; filter by name).
    pub restore: Vec<StateFile>,
}

/// Where a job's state files live.
#[derive(Clone, Debug)]
pub struct StateStore {
    job_dir: PathBuf,
}

impl StateStore {
    /// The store of the job folder `job_dir`.
    pub fn new(job_dir: &Path) -> StateStore {
        StateStore {
            job_dir: job_dir.to_path_buf(),
        }
    }

    /// `entries` as JSON lines, the format of delta files.
    pub fn encode<T: Serialize>(entries: &[T]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(entries.len() * 48);
        for e in entries {
            serde_json::to_writer(&mut bytes, e).expect("state entries serialize");
            bytes.push(b'\n');
        }
        bytes
    }

    /// Writes `entries` as one delta file and describes it.
    pub fn write<T: Serialize>(
        &self,
        operator: &str,
        worker: usize,
        group: u64,
        run_id: &str,
        entries: &[T],
        max_expiry: u64,
    ) -> Result<StateFile> {
        let bytes = Self::encode(entries);
        self.write_encoded(
            operator,
            worker,
            group,
            run_id,
            &bytes,
            entries.len() as u64,
            max_expiry,
        )
    }

    /// Writes `bytes` ([`StateStore::encode`]d `entries` entries) as one delta
    /// file, fsynced, and describes it.
    #[allow(clippy::too_many_arguments)]
    pub fn write_encoded(
        &self,
        operator: &str,
        worker: usize,
        group: u64,
        run_id: &str,
        bytes: &[u8],
        entries: u64,
        max_expiry: u64,
    ) -> Result<StateFile> {
        let rel = format!("state/{operator}-g{group}-w{worker}-{run_id}.jsonl");
        let path = self.job_dir.join(&rel);
        let dir = path.parent().expect("state folder");
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let mut file = std::fs::File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        file.write_all(bytes).map_err(|e| Error::io("write", &path, e))?;
        file.sync_all().map_err(|e| Error::io("fsync", &path, e))?;
        Ok(StateFile {
            operator: operator.to_string(),
            worker,
            group,
            path: rel,
            entries,
            bytes: bytes.len() as u64,
            max_expiry,
        })
    }

    /// Like [`StateStore::write`], on a thread of its own: serializes and
    /// fsyncs `entries` without holding up the worker, retrying every second
    /// if it fails (the job's next cut waits for it, as it must), and
    /// activates `wake` when done.
    #[allow(clippy::too_many_arguments)]
    pub fn write_in_background<T: Serialize + Send + 'static>(
        &self,
        operator: &str,
        worker: usize,
        group: u64,
        run_id: &str,
        entries: Vec<T>,
        max_expiry: u64,
        wake: timely::scheduling::SyncActivator,
    ) -> BackgroundWrite {
        let target = (self.clone(), operator.to_string(), worker, group, run_id.to_string());
        background(target, max_expiry, wake, move || {
            (Self::encode(&entries), entries.len() as u64)
        })
    }

    /// Like [`StateStore::write_encoded`], on a thread of its own (see
    /// [`StateStore::write_in_background`]): for entries that borrow from the
    /// operator's state, encoded on the worker.
    #[allow(clippy::too_many_arguments)]
    pub fn write_encoded_in_background(
        &self,
        operator: &str,
        worker: usize,
        group: u64,
        run_id: &str,
        bytes: Vec<u8>,
        entries: u64,
        max_expiry: u64,
        wake: timely::scheduling::SyncActivator,
    ) -> BackgroundWrite {
        let target = (self.clone(), operator.to_string(), worker, group, run_id.to_string());
        background(target, max_expiry, wake, move || (bytes, entries))
    }

    /// Reads the entries of `file`.
    pub fn read<T: DeserializeOwned>(&self, file: &StateFile) -> Result<Vec<T>> {
        let path = self.job_dir.join(&file.path);
        let f = std::fs::File::open(&path).map_err(|e| Error::io("open state file", &path, e))?;
        let mut out = Vec::with_capacity(file.entries as usize);
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| Error::io("read", &path, e))?;
            out.push(
                serde_json::from_str(&line)
                    .map_err(|e| Error::Checkpoint(format!("{} line {}: {e}", path.display(), i + 1)))?,
            );
        }
        Ok(out)
    }

    /// Removes state files that `keep` does not list. With `up_to_group`,
    /// only files of groups `<=` it are considered (newer ones may belong to
    /// a cut not yet committed).
    pub fn prune(&self, keep: &HashSet<String>, up_to_group: Option<u64>) -> Result<usize> {
        let dir = self.job_dir.join("state");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let rel = format!("state/{name}");
            if keep.contains(&rel) {
                continue;
            }
            let group = name
                .split("-g")
                .nth(1)
                .and_then(|s| s.split('-').next())
                .and_then(|g| g.parse::<u64>().ok());
            if let (Some(limit), Some(g)) = (up_to_group, group)
                && g > limit
            {
                continue;
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The worker that key hash `hash` is routed to among `peers` workers,
/// exactly as timely's exchange routes it.
pub fn route(hash: u64, peers: usize) -> usize {
    let peers = peers as u64;
    if peers.is_power_of_two() {
        (hash & (peers - 1)) as usize
    } else {
        (hash % peers) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_round_trip_and_prune() {
        let dir = std::env::temp_dir().join(format!("k2-state-{}", uuid::Uuid::new_v4().simple()));
        let store = StateStore::new(&dir);
        let a = store
            .write(
                "dedup",
                0,
                7,
                "r1",
                &[("k1".to_string(), 10u64), ("k2".to_string(), 12)],
                12,
            )
            .unwrap();
        let b = store
            .write("dedup", 1, 9, "r1", &[("k3".to_string(), 20u64)], 20)
            .unwrap();
        assert_eq!(a.entries, 2);
        let back: Vec<(String, u64)> = store.read(&a).unwrap();
        assert_eq!(back, vec![("k1".to_string(), 10), ("k2".to_string(), 12)]);
        let keep = HashSet::from([b.path.clone()]);
        assert_eq!(store.prune(&keep, Some(8)).unwrap(), 1);
        assert!(store.read::<(String, u64)>(&a).is_err());
        assert_eq!(store.read::<(String, u64)>(&b).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn routing_matches_timely_exchange() {
        assert_eq!(route(13, 4), 1);
        assert_eq!(route(13, 3), 1);
        assert_eq!(route(14, 3), 2);
        assert_eq!(route(7, 1), 0);
    }

    #[test]
    fn a_corrupt_state_file_names_file_and_line() {
        let dir = std::env::temp_dir().join(format!("k2-state-bad-{}", uuid::Uuid::new_v4().simple()));
        let store = StateStore::new(&dir);
        let f = store
            .write("dedup", 0, 1, "r", &[("k".to_string(), 1u64), ("j".to_string(), 2)], 2)
            .unwrap();
        let path = dir.join(&f.path);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"j\"", "j")).unwrap();
        let err = store.read::<(String, u64)>(&f).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
