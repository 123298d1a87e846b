//! Table maintenance: orphan files, snapshot expiry, and checking that the
//! files a table or a checkpoint references are really there.
//!
//! **Orphans** are this job's data files (named `{job}-…`) that no retained
//! snapshot of the table references. Every retained snapshot's manifests are
//! walked, not only the current one: another writer (compaction, an
//! overwrite) may have rewritten the table, and older snapshots, which time
//! travel still reads, reference files the current one no longer does.
//! Files are read and deleted through the table's `FileIO`, and listed
//! through OpenDAL on the same storage, so the same code works on local disk
//! and on object storage.

use super::catalog::JobCatalog;
use crate::config::Config;
use crate::error::{Error, Result};
use iceberg::io::FileIO;
use iceberg::spec::ManifestList;
use iceberg::table::Table;
use std::collections::{HashMap, HashSet};

/// Every file path (data and delete files) that a retained snapshot of
/// `table` references.
pub async fn referenced_files(table: &Table, qualified: &str) -> Result<HashSet<String>> {
    let ice = |e| Error::iceberg(qualified, "list referenced files", e);
    let io = table.file_io();
    let metadata = table.metadata();
    let mut manifests_seen = HashSet::new();
    let mut referenced = HashSet::new();
    for snapshot in metadata.snapshots() {
        let bytes = io
            .new_input(snapshot.manifest_list())
            .map_err(ice)?
            .read()
            .await
            .map_err(ice)?;
        let list = ManifestList::parse_with_version(&bytes, metadata.format_version()).map_err(ice)?;
        for mf in list.entries() {
            // Snapshots share most manifests: read each once.
            if !manifests_seen.insert(mf.manifest_path.clone()) {
                continue;
            }
            let manifest = mf.load_manifest(io).await.map_err(ice)?;
            for entry in manifest.entries() {
                referenced.insert(entry.file_path().to_string());
            }
        }
    }
    Ok(referenced)
}

/// Lists the files under `location` (a table's `data/` folder) through
/// OpenDAL: local (`file://` or a plain path) or S3 (`s3://`, `s3a://`),
/// reached with the same `s3.*` properties as the table's `io`.
pub(crate) async fn list_files(io: &FileIO, location: &str) -> Result<Vec<String>> {
    let (op, root, prefix) = operator_for(io, location)?;
    let entries = match op.list_with(&root).recursive(true).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Other(format!("list {location}: {e}"))),
    };
    Ok(entries
        .into_iter()
        .filter(|e| e.metadata().is_file())
        .map(|e| format!("{prefix}{}", e.path()))
        .collect())
}

/// An OpenDAL operator for `location`, the path to list in it, and the prefix
/// that turns a listed path back into a location.
fn operator_for(io: &FileIO, location: &str) -> Result<(opendal::Operator, String, String)> {
    let (scheme, path) = location.split_once("://").unwrap_or(("file", location));
    match scheme {
        "file" => {
            let op = opendal::Operator::new(opendal::services::Fs::default().root("/"))
                .map_err(|e| Error::Other(format!("open local storage: {e}")))?
                .finish();
            // OpenDAL paths are relative to the root `/`.
            let root = format!("{}/", path.trim_matches('/'));
            Ok((op, root, "file:///".to_string()))
        }
        "s3" | "s3a" | "s3n" => {
            let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
            if bucket.is_empty() {
                return Err(Error::Other(format!("`{location}` names no bucket")));
            }
            let op = opendal::Operator::new(s3_builder(io.config().props(), bucket))
                .map_err(|e| Error::Other(format!("open S3 bucket `{bucket}`: {e}")))?
                .finish();
            // Paths are relative to the bucket's root; listing a folder
            // needs the trailing `/`.
            let key = key.trim_matches('/');
            let root = if key.is_empty() {
                String::new()
            } else {
                format!("{key}/")
            };
            Ok((op, root, format!("{scheme}://{bucket}/")))
        }
        other => Err(Error::Other(format!("cannot list `{other}://` locations"))),
    }
}

/// OpenDAL's S3 service for `bucket`, set up from iceberg's `s3.*` FileIO
/// properties (the ones [`crate::config::S3Config::iceberg_props`] gives,
/// plus whatever a REST catalog vends), as iceberg-storage-opendal reads
/// them: path-style only when `s3.path-style-access` says so.
fn s3_builder(props: &HashMap<String, String>, bucket: &str) -> opendal::services::S3 {
    let truthy = |k: &str| {
        props
            .get(k)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "t" | "1" | "on"))
    };
    let mut b = opendal::services::S3::default().bucket(bucket).root("/");
    if let Some(v) = props.get("s3.endpoint") {
        b = b.endpoint(v);
    }
    if let Some(v) = props.get("s3.region").or_else(|| props.get("client.region")) {
        b = b.region(v);
    }
    if let Some(v) = props.get("s3.access-key-id") {
        b = b.access_key_id(v);
    }
    if let Some(v) = props.get("s3.secret-access-key") {
        b = b.secret_access_key(v);
    }
    if let Some(v) = props.get("s3.session-token") {
        b = b.session_token(v);
    }
    if !truthy("s3.path-style-access") {
        b = b.enable_virtual_host_style();
    }
    if truthy("s3.allow-anonymous") {
        b = b.skip_signature();
    }
    b
}

/// Removes this job's data files that neither a retained snapshot of table
/// `name` nor `keep` references; returns how many.
pub async fn remove_orphans(catalog: &JobCatalog, name: &str, job: &str, keep: &HashSet<String>) -> Result<usize> {
    let table = catalog.load(name).await?;
    let qualified = catalog.qualified(name);
    let referenced = referenced_files(&table, &qualified).await?;
    let data = format!("{}/data", table.metadata().location().trim_end_matches('/'));
    let mut removed = 0;
    for file in list_files(table.file_io(), &data).await? {
        let name = file.rsplit('/').next().unwrap_or("");
        let ours = name.starts_with(&format!("{job}-"));
        if ours && !referenced.contains(&file) && !keep.contains(&file) {
            match table.file_io().delete(&file).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(file, error = %e, "cannot remove an orphan file; will retry at the next start")
                }
            }
        }
    }
    Ok(removed)
}

/// Expires old snapshots of `name` by the configured policy (metadata only:
/// the data files of an append-only table stay referenced).
pub async fn expire_snapshots(catalog: &JobCatalog, name: &str, config: &Config) -> Result<()> {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    let table = catalog.load(name).await?;
    let keep = config.iceberg.min_snapshots_to_keep.max(1);
    if table.metadata().snapshots().len() <= keep {
        return Ok(());
    }
    let cutoff = chrono::Utc::now().timestamp_millis() - config.iceberg.max_snapshot_age_ms as i64;
    let tx = Transaction::new(&table);
    let tx = tx
        .expire_snapshots()
        .expire_older_than_ms(cutoff)
        .retain_last(keep)
        .apply(tx)
        .map_err(|e| Error::iceberg(catalog.qualified(name), "expire snapshots", e))?;
    tx.commit(catalog.catalog.as_ref())
        .await
        .map_err(|e| Error::iceberg(catalog.qualified(name), "expire snapshots", e))?;
    Ok(())
}

/// Checks that each `(path, size)` exists with that size; returns one line
/// per problem.
pub async fn check_files(table: &Table, files: impl IntoIterator<Item = (String, u64)>) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, size) in files {
        let found = match table.file_io().new_input(&path) {
            Ok(input) => input.metadata().await.map(|m| m.size),
            Err(e) => Err(e),
        };
        match found {
            Ok(found) if found == size => {}
            Ok(found) => problems.push(format!("{path}: {found} bytes, but {size} were written")),
            Err(e) => problems.push(format!("{path}: missing or unreadable ({e})")),
        }
    }
    problems
}

/// Checks every data file the current snapshot of `name` references;
/// returns how many were checked and one line per problem.
pub async fn verify_table(catalog: &JobCatalog, name: &str) -> Result<(usize, Vec<String>)> {
    let table = catalog.load(name).await?;
    let qualified = catalog.qualified(name);
    let ice = |e| Error::iceberg(&qualified, "read the current snapshot", e);
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok((0, Vec::new()));
    };
    let io = table.file_io();
    let bytes = io
        .new_input(snapshot.manifest_list())
        .map_err(ice)?
        .read()
        .await
        .map_err(ice)?;
    let list = ManifestList::parse_with_version(&bytes, table.metadata().format_version()).map_err(ice)?;
    let mut files = Vec::new();
    for mf in list.entries() {
        let manifest = mf.load_manifest(io).await.map_err(ice)?;
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            files.push((entry.file_path().to_string(), entry.file_size_in_bytes()));
        }
    }
    let n = files.len();
    Ok((n, check_files(&table, files).await))
}

/// Deletes the files under `table`'s data folder whose names contain one of
/// `markers` (the unique parts of a failed write attempt's file names), so
/// that a retried write leaves nothing behind; returns how many.
pub(crate) async fn delete_attempt(table: &Table, markers: &[String]) -> usize {
    if markers.is_empty() {
        return 0;
    }
    let data = format!("{}/data", table.metadata().location().trim_end_matches('/'));
    let Ok(files) = list_files(table.file_io(), &data).await else {
        return 0;
    };
    let mut deleted = 0;
    for file in files {
        let name = file.rsplit('/').next().unwrap_or("");
        if markers.iter().any(|m| name.contains(m.as_str())) && table.file_io().delete(&file).await.is_ok() {
            deleted += 1;
        }
    }
    deleted
}
