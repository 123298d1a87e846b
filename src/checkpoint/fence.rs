//! Fencing: one live instance per job.
//!
//! Two mechanisms, for two failure modes:
//!
//! * [`JobLock`]: an exclusive OS file lock on `<job>/LOCK`, held for the
//!   whole run. A second instance on a machine sharing the folder fails at
//!   once with a clear error. The OS drops the lock when the process dies,
//!   even by SIGKILL, so a restart never waits for a stale lock.
//! * [`Fence`]: a generation number, taken at start by creating
//!   `<job>/generations/<n>` exclusively, one higher than any before. The
//!   committer checks before every commit that no higher generation exists;
//!   a stale instance that comes back (a paused VM, a partitioned host)
//!   therefore stops with an error instead of committing. This check cannot
//!   be left to Iceberg: iceberg-rust's transaction re-applies an append on
//!   top of newer snapshots.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// An exclusive lock on a job's checkpoint folder, released on drop.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
}

impl JobLock {
    /// Takes the lock or fails with an error naming the job.
    pub fn acquire(job_dir: &Path, job: &str) -> Result<JobLock> {
        std::fs::create_dir_all(job_dir).map_err(|e| Error::io("create", job_dir, e))?;
        let path = job_dir.join("LOCK");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(JobLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Fenced(format!(
                "job `{job}` is already running (lock {} is held); stop it first",
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
        }
    }
}

/// This instance's generation, and the check that it is still the newest.
#[derive(Clone, Debug)]
pub struct Fence {
    dir: PathBuf,
    job: String,
    /// This instance's generation.
    pub generation: u64,
}

fn generations(dir: &Path) -> Result<Vec<u64>> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?.flatten() {
        if let Some(n) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

impl Fence {
    /// Takes the next generation of the job.
    pub fn take(job_dir: &Path, job: &str) -> Result<Fence> {
        let dir = job_dir.join("generations");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let next = generations(&dir)?.last().copied().unwrap_or(0) + 1;
        let path = dir.join(format!("{next:010}"));
        File::options().write(true).create_new(true).open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Fenced(format!(
                    "another instance of job `{job}` took generation {next} at the same time"
                ))
            } else {
                Error::io("create", &path, e)
            }
        })?;
        // Old generation markers are only needed for their maximum.
        for old in generations(&dir)?.into_iter().filter(|g| *g + 10 < next) {
            let _ = std::fs::remove_file(dir.join(format!("{old:010}")));
        }
        Ok(Fence {
            dir,
            job: job.to_string(),
            generation: next,
        })
    }

    /// The generation `generation` taken by another process of the same
    /// instance (the leader of a multi-process job).
    pub fn joined(job_dir: &Path, job: &str, generation: u64) -> Fence {
        Fence {
            dir: job_dir.join("generations"),
            job: job.to_string(),
            generation,
        }
    }

    /// Fails if a newer instance of the job has started since this one.
    pub fn check(&self) -> Result<()> {
        let newest = generations(&self.dir)?.last().copied().unwrap_or(0);
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

    #[test]
    fn a_second_lock_fails_and_a_newer_generation_fences() {
        let dir = std::env::temp_dir().join(format!("k2-fence-{}", uuid::Uuid::new_v4().simple()));
        let lock = JobLock::acquire(&dir, "j").unwrap();
        let err = JobLock::acquire(&dir, "j").unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        drop(lock);
        JobLock::acquire(&dir, "j").unwrap();

        let first = Fence::take(&dir, "j").unwrap();
        first.check().unwrap();
        let second = Fence::take(&dir, "j").unwrap();
        assert_eq!(second.generation, first.generation + 1);
        second.check().unwrap();
        let err = first.check().unwrap_err().to_string();
        assert!(err.starts_with("fenced:"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
