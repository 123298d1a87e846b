//! Operator-state files.
//!
//! Stateful operators checkpoint in one of two ways ([`StateKind`]):
//!
//! * **Deltas**: at the end of each commit group a worker writes the entries
//!   it added in that group and reports a [`StateFile`] to the committer,
//!   which lists every still-live delta in the manifest. A delta is live until
//!   all its entries have expired in event time (`max_expiry`, µs), so a
//!   checkpoint costs what changed, not the whole state. Restoring reads all
//!   live deltas and keeps the entries whose key routes to the worker, which
//!   also re-partitions state when the number of workers changes.
//! * **Snapshots**: a worker writes its whole state (small state, such as
//!   dedup's per-stream sequence ranges, or live window aggregates), at the
//!   first commit group of a run and whenever it changed. A snapshot is
//!   *authoritative* for the keys its worker owns in its run: a key absent
//!   from it is gone. The newest snapshot of a worker replaces its older
//!   ones, and once every worker of a run has written one, the snapshots of
//!   older runs are dropped. Until then restore takes each key from the
//!   newest run whose owner of that key wrote a snapshot
//!   ([`restore_snapshots`]), so a rescaled run that crashed half-way
//!   restores neither a stale nor a resurrected entry.
//!
//! Files are binary: a format version byte, then the entries as one
//! [`postcard`] sequence. A file of another version is refused with a clear
//! error, never misread.
//!
//! Operators write deltas with [`StateStore::write_in_background`]: the
//! serialization and the fsync happen on a thread of their own while the
//! worker goes on processing records, and the operator hands the delta to the
//! committer (releasing its capability) only once it is durable.

use super::store::Store;
use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

/// The format version of state files written by this build.
pub const STATE_FORMAT: u8 = 1;

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

/// State files being written, each with the capabilities to report it once
/// it is durable (a cut must not list a file that is not).
#[derive(Default)]
pub struct StateWrites {
    writing: Vec<(
        timely::dataflow::operators::CapabilitySet<crate::time::Time>,
        BackgroundWrite,
    )>,
}

impl StateWrites {
    /// Tracks `write`, to be reported under `caps`.
    pub fn push(
        &mut self,
        caps: timely::dataflow::operators::CapabilitySet<crate::time::Time>,
        write: BackgroundWrite,
    ) {
        self.writing.push((caps, write));
    }

    /// Calls `report` for every write that is durable now, then drops its
    /// capabilities.
    pub fn report(
        &mut self,
        mut report: impl FnMut(&timely::dataflow::operators::CapabilitySet<crate::time::Time>, StateFile),
    ) {
        self.writing.retain(|(caps, write)| match write.done() {
            Some(file) => {
                report(caps, file);
                false
            }
            None => true,
        });
    }
}

/// Runs `encode`, then writes and fsyncs its bytes as the file `file`
/// describes, on a thread of its own, retrying with backoff until it
/// succeeds; then activates `wake`.
fn background<F>(
    store: StateStore,
    file: StateFile,
    wake: timely::scheduling::SyncActivator,
    encode: F,
) -> BackgroundWrite
where
    F: FnOnce() -> (Vec<u8>, u64) + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("k2-state-writer".into())
        .spawn(move || {
            let (bytes, entries) = encode();
            let mut delays = crate::retry::backoff(std::time::Duration::from_millis(200), std::time::Duration::from_secs(30));
            loop {
                match store.write_bytes(file.clone(), &bytes, entries) {
                    Ok(file) => {
                        let _ = tx.send(file);
                        let _ = wake.activate();
                        return;
                    }
                    Err(e) => {
                        let wait = delays.next().unwrap_or(std::time::Duration::from_secs(30));
                        tracing::error!(error = %e, group = file.group, operator = file.operator, "writing state failed; retrying in {wait:?}");
                        std::thread::sleep(wait);
                    }
                }
            }
        })
        .expect("start a state writer thread");
    BackgroundWrite { rx }
}

/// How a state file relates to the others of its operator (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    /// Entries added in one commit group; live until `max_expiry`.
    #[default]
    Delta,
    /// The worker's whole state; replaces its older snapshots.
    Snapshot,
}

/// One state file of one operator on one worker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StateFile {
    /// The operator's name in the dataflow, e.g. `dedup`.
    pub operator: String,
    /// The worker that wrote it.
    pub worker: usize,
    /// The number of workers of the run that wrote it.
    #[serde(default)]
    pub workers: usize,
    /// The generation (run) that wrote it.
    #[serde(default)]
    pub generation: u64,
    /// The commit group it belongs to.
    pub group: u64,
    /// Delta or snapshot.
    #[serde(default)]
    pub kind: StateKind,
    /// Path relative to the job's checkpoint folder.
    pub path: String,
    /// Entries in the file.
    pub entries: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Event time (µs) from which none of a delta's entries is live any more
    /// (`u64::MAX` for snapshots).
    pub max_expiry: u64,
}

/// What a stateful operator needs to checkpoint itself.
#[derive(Clone, Debug)]
pub struct StateCheckpoint {
    /// The operator's name, unique in the dataflow (e.g. `dedup`).
    pub operator: String,
    /// Where to write state files.
    pub store: StateStore,
    /// The commit-group rule of the job.
    pub groups: super::groups::CommitGroups,
    /// A per-run token for file names.
    pub run_id: String,
    /// This run's generation.
    pub generation: u64,
    /// Live state files of the restored checkpoint (all operators; filter by name).
    pub restore: Vec<StateFile>,
}

impl StateCheckpoint {
    /// The description of a file this operator is about to write on `worker`
    /// (of `workers`) for `group`; the store fills in path, size and count.
    pub fn file(&self, worker: usize, workers: usize, group: u64, kind: StateKind, max_expiry: u64) -> StateFile {
        StateFile {
            operator: self.operator.clone(),
            worker,
            workers,
            generation: self.generation,
            group,
            kind,
            path: String::new(),
            entries: 0,
            bytes: 0,
            max_expiry,
        }
    }

    /// The restored files of this operator.
    pub fn restored(&self) -> impl Iterator<Item = &StateFile> {
        self.restore.iter().filter(|f| f.operator == self.operator)
    }
}

/// The entries of the restored snapshots of `ckpt`'s operator that `worker`
/// (of `peers`) owns now, each key taken from the newest run whose owner of
/// the key wrote a snapshot (see the module docs). `hash` is the hash the
/// operator routes keys by.
pub fn restore_snapshots<K, V>(
    ckpt: &StateCheckpoint,
    worker: usize,
    peers: usize,
    hash: impl Fn(&K) -> u64,
) -> Result<Vec<(K, V)>>
where
    K: DeserializeOwned,
    V: DeserializeOwned,
{
    let files: Vec<&StateFile> = ckpt.restored().filter(|f| f.kind == StateKind::Snapshot).collect();
    // Per generation: its worker count and which of its workers wrote one.
    let mut runs: BTreeMap<u64, (usize, BTreeSet<usize>)> = BTreeMap::new();
    for f in &files {
        let run = runs.entry(f.generation).or_insert((f.workers.max(1), BTreeSet::new()));
        run.1.insert(f.worker);
    }
    let mut out = Vec::new();
    for f in files {
        for (key, value) in ckpt.store.read::<(K, V)>(f)? {
            let h = hash(&key);
            if route(h, f.workers.max(1)) != f.worker || route(h, peers) != worker {
                continue;
            }
            // A newer run whose owner of this key wrote a snapshot is the authority.
            let superseded = runs
                .range(f.generation + 1..)
                .any(|(_, (n, wrote))| wrote.contains(&route(h, *n)));
            if !superseded {
                out.push((key, value));
            }
        }
    }
    Ok(out)
}

/// Keeps the live set of state files of a job current as new files arrive:
/// snapshots replace their worker's older ones, and a run whose every worker
/// wrote a snapshot retires the older runs' snapshots (module docs).
pub fn add_live(live: &mut Vec<StateFile>, new: StateFile) {
    if new.kind == StateKind::Snapshot {
        live.retain(|f| {
            !(f.kind == StateKind::Snapshot
                && f.operator == new.operator
                && f.generation == new.generation
                && f.worker == new.worker
                && f.group <= new.group)
        });
        let (op, generation, workers) = (new.operator.clone(), new.generation, new.workers);
        live.push(new);
        let wrote: BTreeSet<usize> = live
            .iter()
            .filter(|f| f.kind == StateKind::Snapshot && f.operator == op && f.generation == generation)
            .map(|f| f.worker)
            .collect();
        if wrote.len() >= workers {
            live.retain(|f| !(f.kind == StateKind::Snapshot && f.operator == op && f.generation < generation));
        }
    } else {
        live.push(new);
    }
}

/// Where a job's state files live: `state/` in its checkpoint store.
#[derive(Clone, Debug)]
pub struct StateStore {
    store: Arc<dyn Store>,
}

impl StateStore {
    /// The state files in `store`.
    pub fn new(store: Arc<dyn Store>) -> StateStore {
        StateStore { store }
    }

    /// The state files of the job folder `dir` on a local disk.
    pub fn local(dir: &std::path::Path) -> StateStore {
        StateStore::new(Arc::new(super::store::LocalStore::new(dir)))
    }

    /// `entries` in the format of state files: the version byte, then one
    /// postcard sequence.
    pub fn encode<T: Serialize>(entries: &[T]) -> Vec<u8> {
        let mut bytes = vec![STATE_FORMAT];
        postcard::to_io(entries, &mut bytes).expect("state entries serialize");
        bytes
    }

    /// Writes `entries` as the file `file` describes, and completes its description.
    pub fn write<T: Serialize>(&self, file: StateFile, entries: &[T]) -> Result<StateFile> {
        self.write_bytes(file, &Self::encode(entries), entries.len() as u64)
    }

    /// Writes `bytes` ([`StateStore::encode`]d `entries` entries) as the
    /// file `file` describes, fsynced, and completes its description.
    pub fn write_bytes(&self, mut file: StateFile, bytes: &[u8], entries: u64) -> Result<StateFile> {
        let kind = match file.kind {
            StateKind::Delta => "d",
            StateKind::Snapshot => "s",
        };
        let key = format!(
            "state/{}-g{}-w{}-{kind}-{}.bin",
            file.operator, file.group, file.worker, file.generation
        );
        self.store.put(&key, bytes)?;
        file.path = key;
        file.entries = entries;
        file.bytes = bytes.len() as u64;
        Ok(file)
    }

    /// Like [`StateStore::write`], on a thread of its own: serializes and
    /// fsyncs `entries` without holding up the worker, retrying with backoff
    /// if it fails (the job's next cut waits for it, as it must), and
    /// activates `wake` when done.
    pub fn write_in_background<T: Serialize + Send + 'static>(
        &self,
        file: StateFile,
        entries: Vec<T>,
        wake: timely::scheduling::SyncActivator,
    ) -> BackgroundWrite {
        background(self.clone(), file, wake, move || {
            (Self::encode(&entries), entries.len() as u64)
        })
    }

    /// Like [`StateStore::write_bytes`], on a thread of its own (see
    /// [`StateStore::write_in_background`]): for entries that borrow from the
    /// operator's state, encoded on the worker.
    pub fn write_bytes_in_background(
        &self,
        file: StateFile,
        bytes: Vec<u8>,
        entries: u64,
        wake: timely::scheduling::SyncActivator,
    ) -> BackgroundWrite {
        background(self.clone(), file, wake, move || (bytes, entries))
    }

    /// Whether `file` exists.
    pub fn exists(&self, file: &StateFile) -> Result<bool> {
        self.store.exists(&file.path)
    }

    /// Where `file` is, for messages.
    pub fn location(&self, file: &StateFile) -> String {
        self.store.location(&file.path)
    }

    /// Reads the entries of `file`.
    pub fn read<T: DeserializeOwned>(&self, file: &StateFile) -> Result<Vec<T>> {
        let location = self.store.location(&file.path);
        let bytes = self
            .store
            .get(&file.path)?
            .ok_or_else(|| Error::Checkpoint(format!("state file {location} is missing")))?;
        match bytes.first() {
            Some(&STATE_FORMAT) => {
                postcard::from_bytes(&bytes[1..]).map_err(|e| Error::Checkpoint(format!("{location} is corrupt: {e}")))
            }
            Some(&v) => Err(Error::Checkpoint(format!(
                "{location} has state format {v}; this build reads format {STATE_FORMAT}"
            ))),
            None => Err(Error::Checkpoint(format!("{location} is empty"))),
        }
    }

    /// Removes state files that `keep` does not list. With `up_to_group`,
    /// only files of groups `<=` it are considered (newer ones may belong to
    /// a cut not yet committed).
    pub fn prune(&self, keep: &HashSet<String>, up_to_group: Option<u64>) -> Result<usize> {
        let mut removed = 0;
        for name in self.store.list("state")? {
            let key = format!("state/{name}");
            if keep.contains(&key) {
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
            if self.store.delete(&key).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The worker that key hash `hash` is routed to among `peers` workers,
/// exactly as timely's exchange routes it.
pub fn route(hash: u64, peers: usize) -> usize {
    crate::hash::worker_of(hash, peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ckpt(dir: &std::path::Path, generation: u64) -> StateCheckpoint {
        StateCheckpoint {
            operator: "dedup".into(),
            store: StateStore::local(dir),
            groups: crate::checkpoint::CommitGroups {
                epoch_ms: 100,
                commit_interval_ms: 100,
            },
            run_id: "r".into(),
            generation,
            restore: vec![],
        }
    }

    #[test]
    fn deltas_round_trip_and_prune() {
        let dir = std::env::temp_dir().join(format!("k2-state-{}", uuid::Uuid::new_v4().simple()));
        let c = ckpt(&dir, 1);
        let store = StateStore::local(&dir);
        let a = store
            .write(
                c.file(0, 2, 7, StateKind::Delta, 12),
                &[("k1".to_string(), 10u64), ("k2".to_string(), 12)],
            )
            .unwrap();
        let b = store
            .write(c.file(1, 2, 9, StateKind::Delta, 20), &[("k3".to_string(), 20u64)])
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
    fn a_corrupt_or_foreign_state_file_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("k2-state-bad-{}", uuid::Uuid::new_v4().simple()));
        let c = ckpt(&dir, 1);
        let f = c
            .store
            .write(
                c.file(0, 1, 1, StateKind::Delta, 2),
                &[("k".to_string(), 1u64), ("j".to_string(), 2)],
            )
            .unwrap();
        let path = dir.join(&f.path);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = c.store.read::<(String, u64)>(&f).unwrap_err().to_string();
        assert!(err.contains("is corrupt") && err.contains(&f.path), "{err}");
        let mut other = bytes.clone();
        other[0] = 9;
        std::fs::write(&path, &other).unwrap();
        let err = c.store.read::<(String, u64)>(&f).unwrap_err().to_string();
        assert!(err.contains("state format 9"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Snapshots: a worker's newest replaces its older ones; a complete run
    /// retires older runs; restore takes each key from the newest run whose
    /// owner wrote, so a half-rescaled run neither loses nor resurrects keys.
    #[test]
    fn snapshots_replace_retire_and_restore_by_the_newest_owner() {
        let dir = std::env::temp_dir().join(format!("k2-state-snap-{}", uuid::Uuid::new_v4().simple()));
        let hash = |k: &u64| *k;
        // Run 1, two workers: worker w owns the keys k with k % 2 == w.
        let run1 = ckpt(&dir, 1);
        let mut live = Vec::new();
        let w = |c: &StateCheckpoint, worker, workers, group, entries: &[(u64, &str)]| {
            let entries: Vec<(u64, String)> = entries.iter().map(|(k, v)| (*k, v.to_string())).collect();
            c.store
                .write(c.file(worker, workers, group, StateKind::Snapshot, u64::MAX), &entries)
                .unwrap()
        };
        add_live(&mut live, w(&run1, 0, 2, 1, &[(0, "a"), (2, "old")]));
        add_live(&mut live, w(&run1, 1, 2, 1, &[(1, "b"), (3, "c")]));
        add_live(&mut live, w(&run1, 0, 2, 2, &[(0, "a"), (2, "b2"), (4, "d")]));
        assert_eq!(live.len(), 2, "the newer snapshot of worker 0 replaced its older one");
        // Run 2, three workers (k % 3): only worker 0 wrote before a crash.
        // It owns 0 and 3: 3 moved from run 1's worker 1 and was deleted; 0 was updated.
        let run2 = ckpt(&dir, 2);
        add_live(&mut live, w(&run2, 0, 3, 5, &[(0, "a2"), (6, "new")]));
        assert_eq!(live.len(), 3, "run 1 stays until every worker of run 2 wrote");
        let restored = StateCheckpoint {
            restore: live.clone(),
            ..ckpt(&dir, 3)
        };
        let mut all: Vec<(u64, String)> = (0..1)
            .flat_map(|worker| restore_snapshots::<u64, String>(&restored, worker, 1, hash).unwrap())
            .collect();
        all.sort();
        let want: Vec<(u64, String)> = [(0, "a2"), (1, "b"), (2, "b2"), (4, "d"), (6, "new")]
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        assert_eq!(all, want, "3 is gone (run 2's owner deleted it), 0 is run 2's");
        // On four workers each key lands once.
        let mut four: Vec<(u64, String)> = (0..4)
            .flat_map(|worker| restore_snapshots::<u64, String>(&restored, worker, 4, hash).unwrap())
            .collect();
        four.sort();
        assert_eq!(four, want);
        // Run 2 completes: run 1's snapshots are retired.
        add_live(&mut live, w(&run2, 1, 3, 5, &[(1, "b")]));
        add_live(&mut live, w(&run2, 2, 3, 5, &[(2, "b2")]));
        assert!(live.iter().all(|f| f.generation == 2), "{live:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
