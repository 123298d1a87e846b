//! Checkpoint manifests: one JSON object per committed cut, created (never
//! replaced) in the job's checkpoint store: its creation is the cut's commit point.

use super::state::StateFile;
use super::store::Store;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Everything needed to finish or resume from one cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Job name.
    pub job: String,
    /// Generation of the instance that wrote it.
    pub generation: u64,
    /// The cut's epoch (its commit group's label).
    pub epoch: u64,
    /// When it was written, ms since the Unix epoch.
    pub created_ms: i64,
    /// Next offset per topic and partition at the end of the cut.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Largest event time (µs) read per topic and partition before those
    /// offsets: lateness decisions continue from it after a restart.
    #[serde(default)]
    pub max_event_us: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Kafka timestamp (ms) of the last message read per topic and partition
    /// (at offset − 1): recovery checks the broker still has that message.
    #[serde(default)]
    pub last_ts_ms: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Operator state needed to resume: every live state file.
    pub state: Vec<StateFile>,
    /// The committer's event-time frontier when it took the cut, µs: how far
    /// event time had progressed (watermarks, idleness) over the whole job.
    /// A final cut records the last finite frontier before the input ended.
    #[serde(default)]
    pub event_frontier_us: Option<u64>,
    /// Each participant's part of the cut, by participant name (Iceberg
    /// tables' new files, transactional Kafka records, ...): what it must
    /// commit, again after a crash (participants without output in the cut
    /// are absent).
    #[serde(default)]
    pub parts: BTreeMap<String, serde_json::Value>,
    /// Workers of the instance that wrote it (state is re-partitioned on restore).
    pub workers: usize,
}

impl Manifest {
    /// Total bytes of operator state.
    pub fn state_bytes(&self) -> u64 {
        self.state.iter().map(|s| s.bytes).sum()
    }

    /// `k2.offsets` JSON, as in snapshot summaries.
    pub fn offsets_json(&self) -> String {
        serde_json::to_string(&self.offsets).expect("offsets serialize")
    }
}

/// The manifests of one job, in its checkpoint store.
#[derive(Clone, Debug)]
pub struct ManifestStore {
    store: Arc<dyn Store>,
}

fn manifest_key(epoch: u64) -> String {
    format!("manifests/m-{epoch:020}.json")
}

impl ManifestStore {
    /// The manifests in `store`.
    pub fn open(store: Arc<dyn Store>) -> ManifestStore {
        ManifestStore { store }
    }

    /// Writes `m`, if no manifest of its epoch exists: this is the commit
    /// point of its cut, and of two writers of one epoch (a split brain the
    /// fence did not catch) only one succeeds. Returns where it is.
    pub fn write(&self, m: &Manifest) -> Result<String> {
        let key = manifest_key(m.epoch);
        let bytes = serde_json::to_vec_pretty(m).expect("manifest serializes");
        if !self.store.create(&key, &bytes)? {
            return Err(Error::Fenced(format!(
                "the manifest {} already exists: another instance of job `{}` committed epoch {}",
                self.store.location(&key),
                m.job,
                m.epoch
            )));
        }
        Ok(self.store.location(&key))
    }

    /// Epochs of all manifests, oldest first.
    pub fn epochs(&self) -> Result<Vec<u64>> {
        let mut epochs: Vec<u64> = self
            .store
            .list("manifests")?
            .iter()
            .filter_map(|name| name.strip_prefix("m-")?.strip_suffix(".json")?.parse().ok())
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// Reads the manifest of `epoch`.
    pub fn read(&self, epoch: u64) -> Result<Manifest> {
        let key = manifest_key(epoch);
        let location = self.store.location(&key);
        let bytes = self
            .store
            .get(&key)?
            .ok_or_else(|| Error::Checkpoint(format!("{location} is missing")))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint(format!("{location} is corrupt: {e}")))
    }

    /// The newest manifest, if any.
    pub fn latest(&self) -> Result<Option<Manifest>> {
        match self.epochs()?.last() {
            Some(&e) => self.read(e).map(Some),
            None => Ok(None),
        }
    }

    /// Keeps the newest `keep` manifests; returns the removed epochs.
    pub fn prune(&self, keep: usize) -> Result<Vec<u64>> {
        let epochs = self.epochs()?;
        let n = epochs.len().saturating_sub(keep);
        for e in &epochs[..n] {
            self.store.delete(&manifest_key(*e))?;
        }
        Ok(epochs[..n].to_vec())
    }

    /// Removes every manifest (for `--reset`).
    pub fn clear(&self) -> Result<()> {
        for e in self.epochs()? {
            self.store.delete(&manifest_key(e))?;
        }
        Ok(())
    }

    /// Where the manifests are, for messages.
    pub fn location(&self) -> String {
        self.store.location("manifests")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::store::LocalStore;

    fn manifest(epoch: u64) -> Manifest {
        Manifest {
            job: "j".into(),
            generation: 1,
            epoch,
            created_ms: 0,
            offsets: BTreeMap::from([("t".to_string(), BTreeMap::from([(0, 5), (3, 7)]))]),
            max_event_us: BTreeMap::new(),
            last_ts_ms: BTreeMap::new(),
            state: vec![],
            event_frontier_us: None,
            parts: BTreeMap::new(),
            workers: 2,
        }
    }

    #[test]
    fn write_read_latest_prune() {
        let dir = std::env::temp_dir().join(format!("k2-manifest-{}", uuid::Uuid::new_v4().simple()));
        let store = ManifestStore::open(Arc::new(LocalStore::new(&dir)));
        assert_eq!(store.latest().unwrap(), None);
        for e in [5, 12, 9, 100] {
            store.write(&manifest(e)).unwrap();
        }
        assert_eq!(store.epochs().unwrap(), vec![5, 9, 12, 100]);
        let again = store.write(&manifest(12)).unwrap_err().to_string();
        assert!(
            again.starts_with("fenced:") && again.contains("already exists"),
            "{again}"
        );
        assert_eq!(store.latest().unwrap().unwrap(), manifest(100));
        assert_eq!(store.prune(2).unwrap(), vec![5, 9]);
        assert_eq!(store.epochs().unwrap(), vec![12, 100]);
        assert_eq!(manifest(1).offsets_json(), r#"{"t":{"0":5,"3":7}}"#);
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("manifests"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_or_truncated_manifest_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("k2-manifest-bad-{}", uuid::Uuid::new_v4().simple()));
        let store = ManifestStore::open(Arc::new(LocalStore::new(&dir)));
        let path = store.write(&manifest(7)).unwrap();
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() / 2]).unwrap();
        let err = store.latest().unwrap_err().to_string();
        assert!(err.starts_with("checkpoint:") && err.contains("is corrupt"), "{err}");
        std::fs::write(&path, b"\xff\xfe not json").unwrap();
        assert!(store.read(7).unwrap_err().to_string().contains("is corrupt"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
