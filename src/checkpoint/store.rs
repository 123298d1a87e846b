//! Where a job's checkpoints live: one trait, [`Store`], for a folder on a
//! local (or mounted) disk and for a prefix in an S3-compatible object
//! store; manifests, state files, generations and the job's lock all go
//! through it.
//!
//! What the checkpoint protocol needs of a store, and how each gives it:
//!
//! | need | local folder | object store |
//! |---|---|---|
//! | a write is whole or absent | temp file, fsync, rename | a PUT is atomic |
//! | create-if-absent, one winner (the manifest is the commit point; generations fence) | temp file, fsync, `link` (fails if the name exists) | PUT with `If-None-Match: *` |
//! | one live instance per job | an OS file lock (`LOCK`), dropped by the kernel when the process dies | a lease object renewed with `If-Match` on its ETag; a dead holder's lease expires |
//!
//! Keys are `/`-separated paths relative to the job's location:
//! `manifests/m-….json`, `state/….bin`, `generations/…`.

use crate::config::{Location, S3Config};
use crate::error::{Error, Result};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A job's checkpoint store; see the module docs.
pub trait Store: Send + Sync + fmt::Debug {
    /// The contents of `key`, or `None` if it does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Whether `key` exists.
    fn exists(&self, key: &str) -> Result<bool>;
    /// Writes `key` whole and durably, replacing it if it exists.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Writes `key` whole and durably if it does not exist yet: `false` if
    /// it did (another writer won). Of concurrent creators, one wins.
    fn create(&self, key: &str, bytes: &[u8]) -> Result<bool>;
    /// The names of the keys directly in `dir` (`manifests`, `state`, …),
    /// unsorted; none if `dir` has none.
    fn list(&self, dir: &str) -> Result<Vec<String>>;
    /// Removes `key`; a key that does not exist is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Where `key` is, for messages: a path or an `s3://` URL.
    fn location(&self, key: &str) -> String;
    /// Takes the job's lock: one live instance per job (module docs). A
    /// lease that another instance takes over later calls `lost` with the
    /// reason (the job must stop: its commits are fenced anyway).
    fn lock(&self, job: &str, lease: Duration, lost: Box<dyn Fn(String) + Send + Sync>) -> Result<JobLock>;
}

/// The job's lock, held until dropped.
pub struct JobLock {
    _guard: Box<dyn Send>,
}

impl fmt::Debug for JobLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobLock")
    }
}

/// The store at `location` (a job's, see [`crate::config::CheckpointConfig::job_location`]).
pub fn open(location: &Location, s3: &S3Config) -> Result<Arc<dyn Store>> {
    Ok(match location {
        Location::Local(dir) => Arc::new(LocalStore::new(dir)),
        Location::S3 { bucket, prefix } => Arc::new(ObjectStore::new(bucket, prefix, s3)?),
    })
}

/// A folder on a local or mounted disk.
#[derive(Clone, Debug)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// The store in folder `dir` (created when first written).
    pub fn new(dir: &Path) -> LocalStore {
        LocalStore { dir: dir.to_path_buf() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Writes `bytes` to a fresh temp file beside `path`, fsynced.
    fn temp(&self, path: &Path, bytes: &[u8]) -> Result<PathBuf> {
        let dir = path.parent().expect("a key in a folder");
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
        let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        Ok(tmp)
    }

    fn sync_dir(path: &Path) {
        if let Some(d) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = d.sync_all();
        }
    }
}

impl Store for LocalStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.path(key).exists())
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key);
        let tmp = self.temp(&path, bytes)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename into", &path, e))?;
        Self::sync_dir(&path);
        Ok(())
    }

    fn create(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let path = self.path(key);
        let tmp = self.temp(&path, bytes)?;
        // A hard link fails if the name exists: create-if-absent, atomically.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                Self::sync_dir(&path);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("create", &path, e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.path(dir);
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &path, e)),
        };
        Ok(entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|name| !name.starts_with('.'))
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path, e)),
        }
    }

    fn location(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    fn lock(&self, job: &str, _lease: Duration, _lost: Box<dyn Fn(String) + Send + Sync>) -> Result<JobLock> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("create", &self.dir, e))?;
        let path = self.dir.join("LOCK");
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(JobLock { _guard: Box::new(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Fenced(format!(
                "job `{job}` is already running (lock {} is held); stop it first",
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
        }
    }
}

/// A prefix in an S3-compatible bucket, through OpenDAL.
#[derive(Clone)]
pub struct ObjectStore {
    op: opendal::Operator,
    url: String,
    /// OpenDAL is async; the store's callers are threads outside any
    /// runtime (the committer, state writers, the launcher).
    runtime: Arc<tokio::runtime::Runtime>,
}

impl fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStore({})", self.url)
    }
}

impl ObjectStore {
    /// The store at `s3://bucket/prefix` under the `[s3]` settings.
    pub fn new(bucket: &str, prefix: &str, s3: &S3Config) -> Result<ObjectStore> {
        let mut builder = opendal::services::S3::default()
            .bucket(bucket)
            .root(&format!("/{prefix}"))
            .region(&s3.region);
        if let Some(endpoint) = &s3.endpoint {
            builder = builder.endpoint(endpoint);
        }
        if !s3.path_style {
            builder = builder.enable_virtual_host_style();
        }
        let (id, secret) = s3.credentials();
        if let Some(id) = id {
            builder = builder.access_key_id(id.expose());
        }
        if let Some(secret) = secret {
            builder = builder.secret_access_key(secret.expose());
        }
        let url = format!("s3://{bucket}/{prefix}");
        let op = opendal::Operator::new(builder)
            .map_err(|e| Error::Checkpoint(format!("open the checkpoint store {url}: {e}")))?
            .layer(opendal::layers::TimeoutLayer::new().with_timeout(Duration::from_secs(30)))
            .layer(opendal::layers::RetryLayer::new().with_max_times(6).with_jitter())
            .finish();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("k2-store")
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("start the checkpoint store's runtime: {e}")))?;
        Ok(ObjectStore {
            op,
            url,
            runtime: Arc::new(runtime),
        })
    }

    fn err(&self, what: &str, key: &str, e: opendal::Error) -> Error {
        Error::Checkpoint(format!("{what} {}: {e}", self.location(key)))
    }

    /// The contents and ETag of `key`.
    fn get_tagged(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        self.runtime.block_on(async {
            let meta = match self.op.stat(key).await {
                Ok(meta) => meta,
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.err("stat", key, e)),
            };
            let etag = meta.etag().unwrap_or_default().to_string();
            match self.op.read_with(key).if_match(&etag).await {
                Ok(buf) => Ok(Some((buf.to_vec(), etag))),
                // Changed or gone between the two: the caller looks again.
                Err(e)
                    if matches!(
                        e.kind(),
                        opendal::ErrorKind::NotFound | opendal::ErrorKind::ConditionNotMatch
                    ) =>
                {
                    Ok(Some((Vec::new(), String::new())))
                }
                Err(e) => Err(self.err("read", key, e)),
            }
        })
    }

    /// Replaces `key` if its ETag is still `etag`: the new ETag, or `None`
    /// if it changed meanwhile.
    fn replace(&self, key: &str, bytes: &[u8], etag: &str) -> Result<Option<String>> {
        self.runtime.block_on(async {
            match self.op.write_with(key, bytes.to_vec()).if_match(etag).await {
                Ok(meta) => Ok(Some(meta.etag().map(str::to_string).unwrap_or_default())),
                Err(e) if e.kind() == opendal::ErrorKind::ConditionNotMatch => Ok(None),
                Err(e) => Err(self.err("replace", key, e)),
            }
        })
    }

    /// The current ETag of `key`.
    fn etag(&self, key: &str) -> Result<Option<String>> {
        self.runtime.block_on(async {
            match self.op.stat(key).await {
                Ok(meta) => Ok(Some(meta.etag().unwrap_or_default().to_string())),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.err("stat", key, e)),
            }
        })
    }
}

impl Store for ObjectStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.runtime.block_on(async {
            match self.op.read(key).await {
                Ok(buf) => Ok(Some(buf.to_vec())),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.err("read", key, e)),
            }
        })
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.runtime
            .block_on(self.op.exists(key))
            .map_err(|e| self.err("stat", key, e))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.runtime
            .block_on(self.op.write(key, bytes.to_vec()))
            .map(drop)
            .map_err(|e| self.err("write", key, e))
    }

    fn create(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        self.runtime.block_on(async {
            match self.op.write_with(key, bytes.to_vec()).if_not_exists(true).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == opendal::ErrorKind::ConditionNotMatch => Ok(false),
                Err(e) => Err(self.err("create", key, e)),
            }
        })
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let dir = format!("{}/", dir.trim_end_matches('/'));
        self.runtime.block_on(async {
            let entries = match self.op.list(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(self.err("list", &dir, e)),
            };
            Ok(entries
                .into_iter()
                .filter(|e| e.metadata().is_file())
                .map(|e| e.name().to_string())
                .collect())
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.runtime
            .block_on(self.op.delete(key))
            .map_err(|e| self.err("delete", key, e))
    }

    fn location(&self, key: &str) -> String {
        format!("{}/{key}", self.url.trim_end_matches('/'))
    }

    fn lock(&self, job: &str, lease: Duration, lost: Box<dyn Fn(String) + Send + Sync>) -> Result<JobLock> {
        let held = Lease::acquire(self.clone(), job, lease)?;
        Ok(JobLock {
            _guard: Box::new(held.keep(lost)),
        })
    }
}

/// The lease object's contents.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct LeaseRecord {
    /// A token of the holding instance.
    holder: String,
    /// Host and pid of the holder, for messages.
    host: String,
    pid: u32,
    /// When the holder last renewed it, ms since the Unix epoch (by its clock).
    renewed_ms: i64,
    /// How long it lasts after that.
    lease_ms: u64,
}

/// The lease key.
const LEASE: &str = "lease.json";

/// A held lease on an object store (module docs).
struct Lease {
    store: ObjectStore,
    job: String,
    record: LeaseRecord,
    etag: String,
}

impl Lease {
    /// Takes the lease: creates it, or takes over one whose holder stopped
    /// renewing it. A lease renewed while waiting for it to expire has a
    /// live holder: the job is already running.
    fn acquire(store: ObjectStore, job: &str, lease: Duration) -> Result<Lease> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let record = LeaseRecord {
            holder: uuid::Uuid::new_v4().simple().to_string(),
            host,
            pid: std::process::id(),
            renewed_ms: now_ms(),
            lease_ms: lease.as_millis() as u64,
        };
        let mut seen: Option<String> = None;
        let mut waited = Duration::ZERO;
        let step = Duration::from_millis(250);
        loop {
            let bytes = serde_json::to_vec(&LeaseRecord {
                renewed_ms: now_ms(),
                ..record.clone()
            })
            .expect("a lease serializes");
            let Some((current, etag)) = store.get_tagged(LEASE)? else {
                if store.create(LEASE, &bytes)? {
                    return Lease::taken(store, job, record);
                }
                continue; // another instance created it: look again
            };
            if etag.is_empty() {
                continue; // it changed while read
            }
            let other: Option<LeaseRecord> = serde_json::from_slice(&current).ok();
            let expired = match &other {
                // Dead: a lease not renewed while we watched it for its
                // whole length, or one whose last renewal is long past (by
                // the holder's clock, as recorded: twice the length allows
                // for skew). So is a garbled one.
                Some(o) => {
                    now_ms() - o.renewed_ms > 2 * o.lease_ms as i64
                        || (seen.as_deref() == Some(&etag) && waited >= Duration::from_millis(o.lease_ms) + step)
                }
                None => true,
            };
            if expired {
                if let Some(etag) = store.replace(LEASE, &bytes, &etag)? {
                    tracing::info!(
                        job,
                        "took over the job's lease from an instance that stopped renewing it"
                    );
                    return Ok(Lease {
                        store,
                        job: job.to_string(),
                        record,
                        etag,
                    });
                }
                continue;
            }
            if seen.as_deref().is_some_and(|s| s != etag) {
                let o = other.expect("a parsed lease");
                return Err(Error::Fenced(format!(
                    "job `{job}` is already running: {} pid {} holds its lease {} and renews it; stop it first",
                    o.host,
                    o.pid,
                    store.location(LEASE)
                )));
            }
            if seen.is_none() {
                let o = other.as_ref().expect("a parsed lease");
                tracing::warn!(
                    job,
                    holder = format!("{} pid {}", o.host, o.pid),
                    "the job's lease is held; waiting up to {} ms to see whether its holder is alive",
                    o.lease_ms
                );
                seen = Some(etag);
            }
            std::thread::sleep(step);
            waited += step;
        }
    }

    fn taken(store: ObjectStore, job: &str, record: LeaseRecord) -> Result<Lease> {
        let etag = store
            .etag(LEASE)?
            .ok_or_else(|| Error::Checkpoint(format!("the lease {} vanished", store.location(LEASE))))?;
        Ok(Lease {
            store,
            job: job.to_string(),
            record,
            etag,
        })
    }

    /// Renews the lease every third of its length until dropped; calls
    /// `lost` if another instance took it.
    fn keep(self, lost: Box<dyn Fn(String) + Send + Sync>) -> LeaseGuard {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let every = Duration::from_millis(self.record.lease_ms / 3).max(Duration::from_millis(50));
        let handle = std::thread::Builder::new()
            .name("k2-lease".into())
            .spawn(move || {
                let mut lease = self;
                loop {
                    match stop_rx.recv_timeout(every) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => {
                            // Released: let the next instance start at once.
                            if lease.store.etag(LEASE).ok().flatten().as_deref() == Some(&lease.etag) {
                                let _ = lease.store.delete(LEASE);
                            }
                            return;
                        }
                    }
                    lease.record.renewed_ms = now_ms();
                    let bytes = serde_json::to_vec(&lease.record).expect("a lease serializes");
                    match lease.store.replace(LEASE, &bytes, &lease.etag) {
                        Ok(Some(etag)) if !etag.is_empty() => lease.etag = etag,
                        Ok(Some(_)) => match lease.store.etag(LEASE) {
                            Ok(Some(etag)) => lease.etag = etag,
                            _ => tracing::warn!(job = lease.job, "could not read the lease's new ETag"),
                        },
                        Ok(None) => {
                            lost(format!(
                                "another instance of job `{}` took over its lease {}; this one stops",
                                lease.job,
                                lease.store.location(LEASE)
                            ));
                            return;
                        }
                        // The store is unreachable: keep trying; commits
                        // are fenced by generation anyway.
                        Err(e) => tracing::warn!(job = lease.job, error = %e, "renewing the job's lease failed"),
                    }
                }
            })
            .expect("start the lease thread");
        LeaseGuard {
            stop: Some(stop_tx),
            handle: Some(handle),
        }
    }
}

/// Renews a lease until dropped, then releases it.
struct LeaseGuard {
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
