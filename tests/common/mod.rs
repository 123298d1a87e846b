//! Shared harness of the integration tests: the real broker, the k2 binary,
//! fresh topics and warehouses, and pyiceberg as the outside reader.
#![allow(dead_code)]

pub mod arb;
pub mod job;
pub mod sasl;
pub mod store;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The k2 binary under test: cargo's, or `$K2_BENCH_K2` (benches/run.sh
/// points it at a private copy, so that others' builds cannot swap it mid-run).
pub fn k2_path() -> PathBuf {
    std::env::var_os("K2_BENCH_K2")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_k2")))
}

/// A command running the k2 binary under test.
pub fn k2() -> Command {
    Command::new(k2_path())
}

pub(crate) fn run_script(script: &str, args: &[&str]) -> String {
    let out = Command::new(root().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts the project's broker if needed (idempotent, safe in parallel) and
/// returns its bootstrap address.
pub fn broker() -> String {
    let out = run_script("scripts/kafka.sh", &["start"]);
    out.lines().last().unwrap_or("127.0.0.1:9092").to_string()
}

/// The venv python with pyiceberg (installed on first use).
pub fn python() -> String {
    run_script("scripts/pyenv.sh", &[])
}

/// A fresh folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = root()
        .join("target/k2-tests")
        .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Fresh topic names for one test.
pub fn topics(name: &str) -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (format!("test.{name}.{id}.binance"), format!("test.{name}.{id}.kraken"))
}

/// `k2 produce` into `topics` (4 partitions); callers add the feed's flags.
pub fn produce_cmd(brokers: &str, topics: &(String, String)) -> Command {
    let mut cmd = k2();
    cmd.args([
        "produce",
        "--brokers",
        brokers,
        "--binance-topic",
        &topics.0,
        "--kraken-topic",
        &topics.1,
    ])
    .args(["--partitions", "4"]);
    cmd
}

/// Runs a command; panics with its output unless it succeeds.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .take(2000)
            .collect::<String>(),
        tail(&String::from_utf8_lossy(&out.stderr), 60)
    );
    out
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes a job config for the bronze dataflow, its tables in a local
/// warehouse (`dir/warehouse`, SQLite) and its checkpoints in
/// `dir/checkpoints`; `kafka_extra` lines go into the `[kafka]` table.
pub fn bronze_config(dir: &Path, job: &str, brokers: &str, topics: &(String, String), kafka_extra: &str) -> PathBuf {
    let path = store::job_config(dir, job, brokers, topics, &store::Catalog::local(dir));
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("[kafka]\n", &format!("[kafka]\n{kafka_extra}\n"), 1);
    std::fs::write(&path, text).unwrap();
    path
}

/// [`bronze_config`] with other epoch and commit intervals.
pub fn bronze_config_timed(
    dir: &Path,
    job: &str,
    brokers: &str,
    topics: &(String, String),
    epoch_ms: u64,
    commit_ms: u64,
) -> PathBuf {
    let path = bronze_config(dir, job, brokers, topics, "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("epoch_ms = 100", &format!("epoch_ms = {epoch_ms}"))
        .replace("commit_interval_ms = 300", &format!("commit_interval_ms = {commit_ms}"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The sorted message ids of `table` (none while the table has no snapshot).
pub fn table_ids(dir: &Path, table: &str) -> Vec<String> {
    table_ids_in(&store::Catalog::local(dir), table)
}

/// [`table_ids`] for the tables of `catalog`.
pub fn table_ids_in(catalog: &store::Catalog, table: &str) -> Vec<String> {
    let t = read_tables_in(catalog, &[table], "message_id", false);
    let mut ids: Vec<String> = t[0]["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r["message_id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// One line of a producer truth file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Truth {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub kind: String,
    pub message_ids: Vec<String>,
}

/// Reads a truth file written by `k2 produce --truth`.
pub fn read_truth(path: &Path) -> Vec<Truth> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A message's offset and the trade ids it carries.
pub type OffsetIds = (i64, Vec<String>);

/// What the tables must hold, derived from the truth alone.
#[derive(Debug, Default)]
pub struct Expected {
    /// Distinct valid message ids per topic.
    pub ids: BTreeMap<String, BTreeSet<String>>,
    /// `(topic, partition, offset)` of malformed messages.
    pub malformed: BTreeSet<(String, i32, i64)>,
    /// Next offset per `(topic, partition)`.
    pub ends: BTreeMap<(String, i32), i64>,
    /// Offset of the last message that added new ids, per `(topic, partition)`.
    pub last_row: BTreeMap<(String, i32), i64>,
    /// Per partition: `(offset, message ids)` of valid and duplicate messages.
    pub by_partition: BTreeMap<(String, i32), Vec<OffsetIds>>,
}

pub fn expected(truth: &[Truth]) -> Expected {
    let mut e = Expected::default();
    for t in truth {
        let end = e.ends.entry((t.topic.clone(), t.partition)).or_insert(0);
        *end = (*end).max(t.offset + 1);
        match t.kind.as_str() {
            "malformed" => {
                e.malformed.insert((t.topic.clone(), t.partition, t.offset));
            }
            _ => {
                let ids = e.ids.entry(t.topic.clone()).or_default();
                if t.message_ids.iter().any(|id| !ids.contains(id)) {
                    let last = e.last_row.entry((t.topic.clone(), t.partition)).or_insert(t.offset);
                    *last = (*last).max(t.offset);
                }
                e.ids
                    .entry(t.topic.clone())
                    .or_default()
                    .extend(t.message_ids.iter().cloned());
                e.by_partition
                    .entry((t.topic.clone(), t.partition))
                    .or_default()
                    .push((t.offset, t.message_ids.clone()));
            }
        }
    }
    e
}

/// Reads tables with pyiceberg: one JSON object per table.
pub fn read_tables(dir: &Path, tables: &[&str], columns: &str, per_snapshot: bool) -> Vec<Value> {
    read_tables_in(&store::Catalog::local(dir), tables, columns, per_snapshot)
}

/// Reads tables of `catalog` with pyiceberg: one JSON object per table.
pub fn read_tables_in(catalog: &store::Catalog, tables: &[&str], columns: &str, per_snapshot: bool) -> Vec<Value> {
    let mut cmd = catalog.py("read_iceberg.py");
    cmd.arg("--columns").arg(columns);
    if per_snapshot {
        cmd.arg("--per-snapshot");
    }
    for t in tables {
        cmd.arg("--table").arg(catalog.ident(t));
    }
    let out = ok(&mut cmd);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `k2.offsets` of a snapshot summary, as `(topic, partition) -> next`.
pub fn summary_offsets(snapshot: &Value) -> BTreeMap<(String, i32), i64> {
    let raw = snapshot["summary"]["k2.offsets"]
        .as_str()
        .expect("k2.offsets in summary");
    let parsed: BTreeMap<String, BTreeMap<String, i64>> = serde_json::from_str(raw).unwrap();
    parsed
        .into_iter()
        .flat_map(|(t, ps)| ps.into_iter().map(move |(p, o)| ((t.clone(), p.parse().unwrap()), o)))
        .collect()
}

/// The message ids of a table's rows, with multiplicity.
pub fn ids(rows: &Value) -> Vec<String> {
    let mut v: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// The bronze tables.
pub const TABLES: [&str; 3] = ["bronze_binance_trades", "bronze_kraken_trades", "dead_letters"];

/// The feed's mix in most tests: 5 % duplicates and 2 % malformed
/// messages, from `seed`.
pub fn mixed_feed(seed: u64) -> [String; 6] {
    [
        "--duplicates",
        "0.05",
        "--malformed",
        "0.02",
        "--seed",
        &seed.to_string(),
    ]
    .map(String::from)
}

/// Produces a known feed (2 topics x 4 partitions, duplicates and malformed
/// messages) and returns its truth file.
pub fn produce(dir: &Path, brokers: &str, topics: &(String, String), count: u64, seed: u64) -> PathBuf {
    let truth = dir.join("truth.jsonl");
    ok(produce_cmd(brokers, topics)
        .args(["--count", &count.to_string(), "--rate", "0"])
        .args(mixed_feed(seed))
        .args([
            "--event-start-ms",
            "1767225600000",
            "--symbols",
            "BTC,ETH,SOL,DOGE,PEPE,XRP,ADA,AVAX",
            "--quiet",
            "--truth",
            truth.to_str().unwrap(),
        ]));
    truth
}

/// The tables hold every distinct valid message exactly once, the dead
/// letters exactly the malformed messages, and the newest snapshots carry the
/// end offsets of the feed.
pub fn check_exactly_once(dir: &Path, topics: &(String, String), exp: &Expected, job: &str) {
    check_exactly_once_in(&store::Catalog::local(dir), dir, topics, exp, job)
}

/// [`check_exactly_once`] for the tables of `catalog`; the job's config is
/// `dir/{job}.toml`.
pub fn check_exactly_once_in(
    catalog: &store::Catalog,
    dir: &Path,
    topics: &(String, String),
    exp: &Expected,
    job: &str,
) {
    let tables = read_tables_in(
        catalog,
        &TABLES[..2],
        "message_id,source_topic,source_partition,source_offset",
        false,
    );
    let binance = &tables[0];
    let kraken = &tables[1];
    for (table, topic) in [(binance, &topics.0), (kraken, &topics.1)] {
        let got = ids(&table["rows"]);
        let distinct: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(
            got.len(),
            distinct.len(),
            "{}: duplicate message ids in the table",
            table["table"]
        );
        assert_eq!(
            &distinct,
            exp.ids.get(topic).unwrap(),
            "{}: rows differ from the distinct valid messages",
            table["table"]
        );
    }
    // Dead letters: exactly the malformed messages, each with a reason.
    let dead = read_tables_in(
        catalog,
        &["dead_letters"],
        "source_topic,source_partition,source_offset,reason",
        false,
    );
    let rows = dead[0]["rows"].as_array().unwrap();
    let got: BTreeSet<(String, i32, i64)> = rows
        .iter()
        .map(|r| {
            assert!(
                !r["reason"].as_str().unwrap().is_empty(),
                "a dead letter without a reason: {r}"
            );
            (
                r["source_topic"].as_str().unwrap().to_string(),
                r["source_partition"].as_i64().unwrap() as i32,
                r["source_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), got.len(), "a malformed message was written twice");
    assert_eq!(got, exp.malformed, "dead letters differ from the malformed messages");
    // The newest snapshot of each trade table covers the last message that
    // added a row in each of its topic's partitions (later messages may be
    // duplicates or malformed, committed in cuts without rows for it).
    for (t, topic) in tables.iter().zip([&topics.0, &topics.1]) {
        let snapshots = t["snapshots"].as_array().unwrap();
        let newest = snapshots
            .last()
            .unwrap_or_else(|| panic!("{} has no snapshot", t["table"]));
        assert_eq!(newest["summary"]["k2.job"], job);
        let offsets = summary_offsets(newest);
        assert_eq!(offsets.len(), 8, "offsets of 2 topics x 4 partitions");
        for ((tp, p), next) in offsets.iter().filter(|((tp, _), _)| tp == topic) {
            let end = exp.ends.get(&(tp.clone(), *p)).copied().unwrap_or(0);
            let last_row = exp.last_row.get(&(tp.clone(), *p)).map_or(0, |o| o + 1);
            assert!(
                last_row <= *next && *next <= end,
                "{}: k2.offsets of {tp}/{p} = {next}, want {last_row}..={end}",
                t["table"]
            );
        }
    }
    // The job's newest checkpoint is at the end of the feed.
    let out = ok(k2()
        .args(["checkpoints", job, "--json", "--config"])
        .arg(dir.join(format!("{job}.toml"))));
    let last = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .expect("a checkpoint")
        .to_string();
    let manifest: Value = serde_json::from_str(&last).unwrap();
    for (topic, parts) in manifest["offsets"].as_object().unwrap() {
        for (p, next) in parts.as_object().unwrap() {
            let end = exp.ends.get(&(topic.clone(), p.parse().unwrap())).copied().unwrap_or(0);
            assert_eq!(next.as_i64().unwrap(), end, "newest checkpoint offset of {topic}/{p}");
        }
    }
}

/// Every snapshot's `k2.offsets` matches exactly the rows the table holds at
/// that snapshot: per partition, the distinct ids first seen below the offset.
pub fn check_cuts(dir: &Path, topics: &(String, String), exp: &Expected) {
    check_cuts_in(&store::Catalog::local(dir), topics, exp)
}

/// [`check_cuts`] for the tables of `catalog`.
pub fn check_cuts_in(catalog: &store::Catalog, topics: &(String, String), exp: &Expected) {
    let tables = read_tables_in(
        catalog,
        &TABLES[..2],
        "message_id,source_topic,source_partition,source_offset",
        true,
    );
    for t in &tables {
        let snapshots = t["snapshots"].as_array().unwrap();
        assert!(
            snapshots.len() >= 2,
            "{}: expected several commits, got {}",
            t["table"],
            snapshots.len()
        );
        for s in snapshots {
            let offsets = summary_offsets(s);
            let rows = s["rows"].as_array().unwrap();
            let mut got: BTreeMap<(String, i32), BTreeSet<String>> = BTreeMap::new();
            for r in rows {
                got.entry((
                    r["source_topic"].as_str().unwrap().into(),
                    r["source_partition"].as_i64().unwrap() as i32,
                ))
                .or_default()
                .insert(r["message_id"].as_str().unwrap().into());
            }
            let topic = if t["table"].as_str().unwrap().contains("binance") {
                &topics.0
            } else {
                &topics.1
            };
            for ((tp, p), next) in offsets.iter().filter(|((tp, _), _)| tp == topic) {
                // The distinct ids first seen below `next` in this partition.
                let mut want = BTreeSet::new();
                let mut seen = BTreeSet::new();
                for (offset, ids) in exp.by_partition.get(&(tp.clone(), *p)).cloned().unwrap_or_default() {
                    if offset < *next {
                        for id in ids {
                            if seen.insert(id.clone()) {
                                want.insert(id);
                            }
                        }
                    }
                }
                let have = got.remove(&(tp.clone(), *p)).unwrap_or_default();
                assert_eq!(
                    have, want,
                    "{} snapshot {}: rows of {tp}/{p} vs k2.offsets {next}",
                    t["table"], s["snapshot_id"]
                );
            }
            assert!(
                got.is_empty(),
                "rows from partitions missing in k2.offsets: {:?}",
                got.keys()
            );
        }
    }
}
