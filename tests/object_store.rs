//! The production path against the real services: tables in the S3 store
//! (SeaweedFS, `scripts/s3.sh`) through Apache Iceberg's REST catalog server
//! (`scripts/iceberg-rest.sh`) or through the SQL catalog with an `s3://`
//! warehouse, read back by pyiceberg as an outside client, exactly once by
//! message id; table maintenance (orphans, expiry, the files-intact checks of
//! recovery and `k2 checkpoints --verify`) on S3. Checkpoints stay local.
//!
//! A service that is down fails the test with the script that starts it.

mod common;

use common::job::*;
use common::store::{self, Catalog, S3_SECRET};
use common::*;
use k2::sink::iceberg::IcebergPart;
use std::path::Path;
use std::process::Output;

/// Output of every k2 command, to check no secret was printed.
#[derive(Default)]
struct Printed(String);

impl Printed {
    fn keep(&mut self, out: &Output) {
        self.0.push_str(&String::from_utf8_lossy(&out.stdout));
        self.0.push_str(&String::from_utf8_lossy(&out.stderr));
    }

    fn none_of(&self, secrets: &[&str]) {
        for s in secrets {
            assert!(!self.0.contains(s), "a secret was printed:\n{}", self.0);
        }
    }
}

fn run(config: &Path, workers: usize, printed: &mut Printed) -> Output {
    let out = ok(k2()
        .args(["run", "bronze", "--bounded", "-w", &workers.to_string(), "--config"])
        .arg(config)
        .env("RUST_LOG", "info"));
    printed.keep(&out);
    out
}

/// Runs with `K2_FAULT=fault`, which must abort the run.
fn run_to_fault(config: &Path, fault: &str, printed: &mut Printed) {
    let out = k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(config)
        .env("K2_FAULT", fault)
        .output()
        .unwrap();
    printed.keep(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("K2_FAULT: aborting"),
        "the run stops at {fault}:\n{err}"
    );
}

/// The S3 key of an `s3://bucket/key` location.
fn key_of(location: &str) -> String {
    let rest = location.split_once("://").unwrap().1;
    rest.split_once('/').unwrap().1.to_string()
}

fn snapshot_count(catalog: &Catalog, table: &str) -> usize {
    read_tables_in(catalog, &[table], "message_id", false)[0]["snapshots"]
        .as_array()
        .unwrap()
        .len()
}

/// Bronze through the REST catalog into S3, in three parts with a crash
/// between two tables' commits: every valid message exactly once, every
/// snapshot a consistent cut, orphans removed from S3 and other files kept,
/// snapshots expired, and no S3 secret or catalog token printed.
#[test]
fn bronze_through_the_rest_catalog_into_s3_exactly_once() {
    let catalog = Catalog::rest("bronze_rest");
    let brokers = broker();
    let topics = topics("rest");
    let dir = temp_dir("rest");
    let job = "rest-e2e";
    let config = store::job_config(&dir, job, &brokers, &topics, &catalog);
    // A bearer token (this server accepts any): sent, never printed.
    let token = "k2-test-token-7b1e";
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[iceberg]\n", &format!("[iceberg]\ntoken = \"{token}\"\n"));
    std::fs::write(&config, text).unwrap();
    let mut printed = Printed::default();

    let mut truth = Vec::new();
    let part = |n: u64, truth: &mut Vec<Truth>| {
        let d = dir.join(format!("part{n}"));
        std::fs::create_dir_all(&d).unwrap();
        truth.extend(read_truth(&produce(&d, &brokers, &topics, 1200, 60 + n)));
    };
    part(1, &mut truth);
    run(&config, 2, &mut printed);
    check_exactly_once_in(&catalog, &dir, &topics, &expected(&truth), job);

    // A crash between two tables' commits: the next start rolls forward.
    part(2, &mut truth);
    run_to_fault(&config, "between-tables:1", &mut printed);
    // Orphans in S3: a file of this job no snapshot or checkpoint holds is
    // removed at the next start; another writer's file is kept.
    let prefix = catalog
        .s3_prefix
        .clone()
        .expect("the REST warehouse is in the test bucket");
    let data = format!("{prefix}/bronze_binance_trades/data");
    let orphan = format!("{data}/{job}-orphan-w0-g1-p1-00000.parquet");
    let foreign = format!("{data}/compaction-00000.parquet");
    store::s3_put(&orphan, b"not a parquet file".to_vec());
    store::s3_put(&foreign, b"not ours".to_vec());
    let out = run(&config, 1, &mut printed);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("removed data files"), "{log}");
    let files = store::s3_list(&data);
    assert!(!files.contains(&orphan), "the orphan is gone: {files:?}");
    assert!(files.contains(&foreign), "another writer's file stays: {files:?}");
    store::s3_delete(&foreign);

    part(3, &mut truth);
    run(&config, 2, &mut printed);
    let exp = expected(&truth);
    check_exactly_once_in(&catalog, &dir, &topics, &exp, job);
    check_cuts_in(&catalog, &topics, &exp);
    let out = ok(k2().args(["checkpoints", "--verify", "--config"]).arg(&config));
    printed.keep(&out);
    let verified = String::from_utf8_lossy(&out.stdout);
    assert!(
        verified.contains("bronze_binance_trades: ") && !verified.contains(" 0 data files checked"),
        "{verified}"
    );
    assert!(verified.lines().all(|l| l.ends_with(", 0 problems")), "{verified}");

    // Expiry: the next start keeps one snapshot per table; the rows stay.
    assert!(snapshot_count(&catalog, "bronze_kraken_trades") >= 3);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[iceberg]\n",
        "[iceberg]\nmax_snapshot_age_ms = 0\nmin_snapshots_to_keep = 1\n",
    );
    std::fs::write(&config, text).unwrap();
    run(&config, 1, &mut printed);
    assert_eq!(snapshot_count(&catalog, "bronze_kraken_trades"), 1);
    check_exactly_once_in(&catalog, &dir, &topics, &exp, job);

    printed.none_of(&[S3_SECRET, token]);
    catalog.drop();
    for t in [&topics.0, &topics.1] {
        delete_topic(&brokers, t);
    }
}

/// The SQL catalog with its warehouse in S3: a crash after the manifest
/// rolls forward; a data file of the cut still to commit that is missing
/// from S3 is refused at recovery, naming it; put back, the job goes on,
/// exactly once. `k2 checkpoints --verify` finds a missing file too.
#[test]
fn sql_catalog_with_an_s3_warehouse_recovers_and_checks_its_files() {
    let dir = temp_dir("sqls3");
    let catalog = Catalog::sql_s3(&dir, "bronze_sqls3");
    let brokers = broker();
    let topics = topics("sqls3");
    let job = "sqls3-e2e";
    let config = store::job_config(&dir, job, &brokers, &topics, &catalog);
    let mut printed = Printed::default();
    let truth = read_truth(&produce(&dir, &brokers, &topics, 1000, 71));

    run_to_fault(&config, "after-manifest:1", &mut printed);
    let manifest = latest_manifest(&dir, job).expect("a manifest");
    let part = IcebergPart::of(&manifest).expect("the cut has data files");
    let (table, commit) = part.tables.iter().next().unwrap();
    let (path, _) = commit.files().next().unwrap();
    assert!(path.starts_with("s3://"), "{path}");
    let key = key_of(&path);
    let bytes = store::s3_read(&key);
    store::s3_delete(&key);
    let out = k2()
        .args(["run", "bronze", "--bounded", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    printed.keep(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "recovery refuses a missing data file");
    assert!(
        err.contains(&format!("must still be committed to `{table}`")) && err.contains(&path),
        "{err}"
    );
    // Put back, the cut rolls forward.
    store::s3_put(&key, bytes);
    run(&config, 2, &mut printed);
    check_exactly_once_in(&catalog, &dir, &topics, &expected(&truth), job);

    // --verify: all there, then one missing.
    let out = ok(k2().args(["checkpoints", "--verify", "--config"]).arg(&config));
    assert!(String::from_utf8_lossy(&out.stdout).contains(", 0 problems"));
    let t = read_tables_in(&catalog, &["dead_letters"], "source_offset", false);
    assert!(t[0]["row_count"].as_u64().unwrap() > 0);
    let files = store::s3_list(&format!(
        "{}/{}/dead_letters/data",
        catalog.s3_prefix.as_ref().unwrap(),
        catalog.namespace
    ));
    assert!(!files.is_empty());
    store::s3_delete(&files[0]);
    let out = k2()
        .args(["checkpoints", "--verify", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    printed.keep(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && said.contains(&files[0]), "{said}");

    printed.none_of(&[S3_SECRET]);
    catalog.drop();
    for t in [&topics.0, &topics.1] {
        delete_topic(&brokers, t);
    }
}

/// Catalog settings that cannot work are refused at once, naming the key,
/// with no secret in the message.
#[test]
fn bad_catalog_settings_are_refused_at_once_without_secrets() {
    let dir = temp_dir("badcat");
    let topics = topics("badcat");
    // A REST URI with credentials in it.
    let catalog = Catalog::rest("badcat");
    let config = store::job_config(&dir, "badcat", "127.0.0.1:9092", &topics, &catalog);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("catalog_uri = \"{}\"", store::rest_uri()),
        "catalog_uri = \"http://admin:hunter2-secret@127.0.0.1:8182\"",
    );
    std::fs::write(&config, text).unwrap();
    let out = k2()
        .args(["run", "bronze", "--bounded", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("iceberg.catalog_uri") && err.contains("iceberg.credential"),
        "{err}"
    );
    assert!(!err.contains("hunter2") && !err.contains(S3_SECRET), "{err}");
    assert!(!err.contains("retrying"), "not retried: {err}");

    // The SQL catalog with an S3 warehouse and no database URI.
    let text = format!(
        "[job]\nname = \"badcat\"\n[kafka]\nbrokers = \"127.0.0.1:9092\"\ntopics = {{ binance = \"{}\", kraken = \"{}\" }}\n\
         [checkpoint]\ndir = \"{}\"\n[iceberg]\nwarehouse = \"s3://{}/k2-tests/nowhere\"\n",
        topics.0,
        topics.1,
        dir.join("checkpoints").display(),
        store::s3_bucket()
    );
    std::fs::write(&config, text).unwrap();
    let out = k2()
        .args(["run", "bronze", "--bounded", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("iceberg.catalog_uri") && err.contains("s3://"), "{err}");
    assert!(!err.contains("retrying"), "not retried: {err}");
}
