//! Fencing: one live instance per job.
//!
//! Two mechanisms, for two failure modes:
//!
//! * The job's lock ([`super::Store::lock`]), held for the whole run: a
//!   second instance fails at once with a clear error. Local: an OS file
//!   lock, which the kernel drops when the process dies, even by SIGKILL.
//!   Object store: a lease that a dead holder stops renewing.
//! * [`Fence`]: a generation number, taken at start by creating
//!   `generations/<n>` in the store with create-if-absent, one higher than
//!   any before. The committer checks before every commit that no higher
//!   generation exists; a stale instance that comes back (a paused VM, a
//!   partitioned host) therefore stops with an error instead of committing.
//!   This check cannot be left to Iceberg: iceberg-rust's transaction
//!   re-applies an append on top of newer snapshots.

use super::store::Store;
use crate::error::{Error, Result};
use std::sync::Arc;

/// This instance's generation, and the check that it is still the newest.
#[derive(Clone, Debug)]
pub struct Fence {
    store: Arc<dyn Store>,
    job: String,
    /// This instance's generation.
    pub generation: u64,
}

fn generations(store: &dyn Store) -> Result<Vec<u64>> {
    let mut v: Vec<u64> = store
        .list("generations")?
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

fn key(generation: u64) -> String {
    format!("generations/{generation:010}")
}

impl Fence {
    /// Takes the next generation of the job.
    pub fn take(store: Arc<dyn Store>, job: &str) -> Result<Fence> {
        let next = generations(store.as_ref())?.last().copied().unwrap_or(0) + 1;
        if !store.create(&key(next), b"")? {
            return Err(Error::Fenced(format!(
                "another instance of job `{job}` took generation {next} at the same time"
            )));
        }
        // Old generation markers are only needed for their maximum.
        for old in generations(store.as_ref())?.into_iter().filter(|g| *g + 10 < next) {
            let _ = store.delete(&key(old));
        }
        Ok(Fence {
            store,
            job: job.to_string(),
            generation: next,
        })
    }

    /// The generation `generation` taken by another process of the same
    /// instance (the leader of a multi-process job).
    pub fn joined(store: Arc<dyn Store>, job: &str, generation: u64) -> Fence {
        Fence {
            store,
            job: job.to_string(),
            generation,
        }
    }

    /// Fails if a newer instance of the job has started since this one.
    pub fn check(&self) -> Result<()> {
        let newest = generations(self.store.as_ref())?.last().copied().unwrap_or(0);
        if newest > self.generation {
            return Err(Error::Fenced(format!(
                "a newer instance of job `{}` (generation {newest}) has started; this one (generation {}) stops without committing",
                self.job, self.generation
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::store::LocalStore;
    use std::time::Duration;

    #[test]
    fn a_second_lock_fails_and_a_newer_generation_fences() {
        let dir = std::env::temp_dir().join(format!("k2-fence-{}", uuid::Uuid::new_v4().simple()));
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(&dir));
        let lock = |s: &Arc<dyn Store>| s.lock("j", Duration::from_secs(1), Box::new(|_| {}));
        let held = lock(&store).unwrap();
        let err = lock(&store).unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        drop(held);
        lock(&store).unwrap();

        let first = Fence::take(store.clone(), "j").unwrap();
        first.check().unwrap();
        let second = Fence::take(store.clone(), "j").unwrap();
        assert_eq!(second.generation, first.generation + 1);
        second.check().unwrap();
        let err = first.check().unwrap_err().to_string();
        assert!(err.starts_with("fenced:"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
