//! Shared harness of the integration tests: the real broker, the k2 binary,
//! fresh topics and warehouses, and pyiceberg as the outside reader.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The k2 binary under test.
pub fn k2() -> Command {
    Command::new(env!("CARGO_BIN_EXE_k2"))
}

fn run_script(script: &str, args: &[&str]) -> String {
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

/// Writes a job config for the bronze dataflow; `kafka_extra` lines go into
/// the `[kafka]` table.
pub fn bronze_config(dir: &Path, job: &str, brokers: &str, topics: &(String, String), kafka_extra: &str) -> PathBuf {
    let path = dir.join(format!("{job}.toml"));
    let text = format!(
        r#"
[job]
name = "{job}"
epoch_ms = 100
commit_interval_ms = 300

[kafka]
brokers = "{brokers}"
{kafka_extra}
topics = {{ binance = "{}", kraken = "{}" }}

[iceberg]
warehouse = "{}"

[checkpoint]
dir = "{}"
"#,
        topics.0,
        topics.1,
        dir.join("warehouse").display(),
        dir.join("checkpoints").display()
    );
    std::fs::write(&path, text).unwrap();
    path
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
    let warehouse = dir.join("warehouse");
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/py/read_iceberg.py"))
        .arg("--catalog-uri")
        .arg(format!("sqlite:///{}", warehouse.join("catalog.db").display()))
        .arg("--warehouse")
        .arg(&warehouse)
        .arg("--columns")
        .arg(columns);
    if per_snapshot {
        cmd.arg("--per-snapshot");
    }
    for t in tables {
        cmd.arg("--table").arg(format!("market_data.{t}"));
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
