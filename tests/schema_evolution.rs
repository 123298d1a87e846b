//! Schema evolution against real tables: another tool (pyiceberg) changes a
//! K2 table between runs or while a job runs, and K2's own row types gain
//! columns. Compatible changes are written through; incompatible ones stop
//! the job at once with the table and the column named, and no panic.

mod common;

use common::job::*;
use common::store::Catalog;
use common::*;
use iceberg::spec::deserialize_data_file_from_json;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use k2::sink::iceberg::{JobCatalog, RowContext, TableDecl, TableRow, TableWriter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs `iceberg_admin.py` on `catalog`.
fn admin(catalog: &Catalog, args: &[&str]) {
    ok(catalog.py("iceberg_admin.py").args(args));
}

/// The current schema of `table`: `(name, type, required)` by field.
fn schema_of(catalog: &Catalog, table: &str) -> Vec<(String, String, bool)> {
    let out = ok(catalog.py("iceberg_admin.py").args(["schema", &catalog.ident(table)]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["type"].as_str().unwrap().to_string(),
                f["required"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// `column` of every row of `table`, with the message id, sorted by id.
fn column(catalog: &Catalog, table: &str, column: &str) -> Vec<(String, Value)> {
    let t = read_tables_in(catalog, &[table], &format!("message_id,{column}"), false);
    let mut rows: Vec<(String, Value)> = t[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["message_id"].as_str().unwrap().to_string(), r[column].clone()))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// The message ids the truth file's feed puts into `topic`'s table.
fn ids_of(exp: &Expected, topic: &str) -> BTreeSet<String> {
    exp.ids.get(topic).cloned().unwrap_or_default()
}

fn run_bounded(config: &Path) -> std::process::Output {
    k2().args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

/// (a) pyiceberg adds an optional column to a K2 table between runs and
/// while a job runs: K2 goes on writing, the new column null in its rows.
#[test]
fn a_column_another_tool_adds_is_written_as_null_between_runs_and_while_running() {
    let brokers = broker();
    let topics = topics("evoadd");
    let dir = temp_dir("evoadd");
    let catalog = Catalog::local(&dir);
    let config = bronze_config(&dir, "evoadd", &brokers, &topics, "");
    let mut truth = read_truth(&produce(&dir.join("p1").tap_mkdir(), &brokers, &topics, 400, 31));
    ok(k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(&config));

    // Between runs.
    admin(
        &catalog,
        &[
            "add-column",
            &catalog.ident("bronze_binance_trades"),
            "analyst_note",
            "string",
        ],
    );
    truth.extend(read_truth(&produce(
        &dir.join("p2").tap_mkdir(),
        &brokers,
        &topics,
        400,
        32,
    )));
    ok(k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(&config));

    // While a continuous job runs: it keeps its schema from the start, and
    // its files (without the column) read as null in it.
    let log = dir.join("job.log");
    let job = spawn_job(&config, "bronze", 2, &log);
    truth.extend(read_truth(&produce(
        &dir.join("p3").tap_mkdir(),
        &brokers,
        &topics,
        400,
        33,
    )));
    let exp = expected(&truth);
    wait_for_offsets(&dir, "evoadd", &exp.ends, 60);
    admin(
        &catalog,
        &["add-column", &catalog.ident("bronze_kraken_trades"), "desk", "long"],
    );
    truth.extend(read_truth(&produce(
        &dir.join("p4").tap_mkdir(),
        &brokers,
        &topics,
        400,
        34,
    )));
    let exp = expected(&truth);
    wait_for_offsets(&dir, "evoadd", &exp.ends, 60);
    stop_job(job, &log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "{text}");

    check_exactly_once(&dir, &topics, &exp, "evoadd");
    let notes = column(&catalog, "bronze_binance_trades", "analyst_note");
    assert_eq!(notes.len(), ids_of(&exp, &topics.0).len());
    assert!(
        notes.iter().all(|(_, v)| v.is_null()),
        "K2 writes nulls into a column it does not know"
    );
    let desks = column(&catalog, "bronze_kraken_trades", "desk");
    assert!(desks.iter().all(|(_, v)| v.is_null()));
    // The other tool's columns are still there, after K2's columns.
    let schema = schema_of(&catalog, "bronze_binance_trades");
    assert_eq!(
        schema.last().unwrap(),
        &("analyst_note".to_string(), "string".to_string(), false)
    );
    assert!(schema.iter().any(|(n, _, _)| n == "message_id"));
    for t in [&topics.0, &topics.1] {
        delete_topic(&brokers, t);
    }
}

/// (b) Changes K2 cannot write through stop the job at once, naming the
/// table and the column, with no panic; undone, the job goes on exactly
/// once.
#[test]
fn incompatible_changes_are_refused_naming_the_table_and_column() {
    let brokers = broker();
    let topics = topics("evobad");
    let dir = temp_dir("evobad");
    let catalog = Catalog::local(&dir);
    let config = bronze_config(&dir, "evobad", &brokers, &topics, "");
    let mut truth = read_truth(&produce(&dir.join("p1").tap_mkdir(), &brokers, &topics, 200, 41));
    ok(k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(&config));
    truth.extend(read_truth(&produce(
        &dir.join("p2").tap_mkdir(),
        &brokers,
        &topics,
        200,
        42,
    )));
    let binance = catalog.ident("bronze_binance_trades");
    let kraken = catalog.ident("bronze_kraken_trades");

    // (change, undo, the column and words the error must name)
    let cases: Vec<(Vec<&str>, Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["set-type", &binance, "symbol", "long"],
            vec!["set-type", &binance, "symbol", "string"],
            vec![
                "`market_data.bronze_binance_trades`",
                "column `symbol`",
                "long",
                "string",
            ],
        ),
        (
            vec!["add-column", &kraken, "region", "string", "--required"],
            vec!["drop-column", &kraken, "region"],
            vec!["`market_data.bronze_kraken_trades`", "column `region`", "requires"],
        ),
        (
            vec!["rename-column", &binance, "price", "px"],
            vec!["rename-column", &binance, "px", "price"],
            vec![
                "`market_data.bronze_binance_trades`",
                "column `price`",
                "renamed it to `px`",
            ],
        ),
    ];
    for (change, undo, words) in &cases {
        admin(&catalog, change);
        let started = Instant::now();
        let out = run_bounded(&config);
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{change:?}: the run succeeded:\n{err}");
        for w in words {
            assert!(err.contains(w), "{change:?}: the error names {w}:\n{err}");
        }
        assert!(err.contains("incompatible schema change"), "{err}");
        assert!(!err.contains("panicked"), "{change:?}: a panic:\n{err}");
        assert!(
            !err.contains("retrying"),
            "{change:?}: a permanent error is not retried:\n{err}"
        );
        assert!(took < Duration::from_secs(60), "{change:?}: took {took:?}");
        admin(&catalog, undo);
    }
    // Undone, the job reads on from where it was, exactly once.
    ok(k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(&config));
    check_exactly_once(&dir, &topics, &expected(&truth), "evobad");
    for t in [&topics.0, &topics.1] {
        delete_topic(&brokers, t);
    }
}

/// (c) A column K2's row type has and the table lacks (a table made by an
/// older K2; here pyiceberg drops it) is added when the job starts; the rows
/// written before read as null in it.
#[test]
fn a_column_k2_has_and_the_table_lacks_is_added_on_start() {
    let brokers = broker();
    let topics = topics("evonew");
    let dir = temp_dir("evonew");
    let catalog = Catalog::local(&dir);
    let config = bronze_config(&dir, "evonew", &brokers, &topics, "");
    let first = read_truth(&produce(&dir.join("p1").tap_mkdir(), &brokers, &topics, 300, 51));
    ok(k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(&config));
    admin(
        &catalog,
        &["drop-column", &catalog.ident("bronze_kraken_trades"), "native_symbol"],
    );
    assert!(
        !schema_of(&catalog, "bronze_kraken_trades")
            .iter()
            .any(|(n, _, _)| n == "native_symbol")
    );
    let second = read_truth(&produce(&dir.join("p2").tap_mkdir(), &brokers, &topics, 300, 52));
    let out = ok(k2()
        .args(["run", "bronze", "--bounded", "-w", "2", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("adding a column K2's row type has"), "{err}");
    let schema = schema_of(&catalog, "bronze_kraken_trades");
    assert!(
        schema.contains(&("native_symbol".to_string(), "string".to_string(), false)),
        "added back as an optional column: {schema:?}"
    );
    let mut truth = first.clone();
    truth.extend(second);
    let exp = expected(&truth);
    check_exactly_once(&dir, &topics, &exp, "evonew");
    // Rows of the first run: null; of the second: the symbol.
    let before = ids_of(&expected(&first), &topics.1);
    let rows = column(&catalog, "bronze_kraken_trades", "native_symbol");
    assert!(!rows.is_empty());
    for (id, v) in rows {
        assert_eq!(v.is_null(), before.contains(&id), "{id}: {v}");
    }
    for t in [&topics.0, &topics.1] {
        delete_topic(&brokers, t);
    }
}

/// A row type and its next version, with two more columns (one of them
/// required in K2); both partitioned by day.
#[derive(Clone, Debug, Serialize, Deserialize, k2::sink::iceberg::TableRow)]
#[row(partition = "day(at)")]
struct V1 {
    message_id: String,
    #[row(timestamp)]
    at: i64,
    qty: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, k2::sink::iceberg::TableRow)]
#[row(partition = "day(at)")]
struct V2 {
    message_id: String,
    #[row(timestamp)]
    at: i64,
    qty: i64,
    venue: Option<String>,
    weight: f64,
}

/// Writes `rows` to `table` of `catalog` through K2's writer and commits
/// them with a fast append, as the participant does.
fn write<R: TableRow>(runtime: &tokio::runtime::Runtime, catalog: &JobCatalog, table: &str, mut rows: Vec<R>) {
    let t = runtime.block_on(catalog.load(table)).unwrap();
    let writer = TableWriter::<R> {
        name: table.to_string(),
        table: t.clone(),
        job: "evo".into(),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        target_file_size: 1 << 30,
        groups: k2::checkpoint::CommitGroups {
            epoch_ms: 100,
            commit_interval_ms: 100,
        },
        ctx: RowContext {
            topics: Arc::new(vec!["t".into()]),
        },
        runtime: runtime.handle().clone(),
        backpressure: Default::default(),
        rows: PhantomData,
    };
    let staged = writer.write(0, 1, &mut rows).unwrap();
    let metadata = t.metadata();
    let schema = metadata.current_schema();
    let spec = metadata.default_partition_spec();
    let partition_type = spec.partition_type(schema).unwrap();
    let files = staged
        .data_files
        .iter()
        .map(|json| deserialize_data_file_from_json(json, spec.spec_id(), &partition_type, schema).unwrap())
        .collect::<Vec<_>>();
    let tx = Transaction::new(&t);
    let tx = tx.fast_append().add_data_files(files).apply(tx).unwrap();
    runtime.block_on(tx.commit(catalog.catalog.as_ref())).unwrap();
}

/// K2's row type gains columns: the next version's start adds them, its
/// rows have them, the older rows read as null; and a job still on the
/// older version writes nulls into them. On the local SQL catalog and on
/// the REST catalog with the S3 store.
#[test]
fn a_row_type_that_gains_columns_evolves_its_table_local_and_rest() {
    for catalog in [Catalog::local(&temp_dir("evorow")), Catalog::rest("evorow")] {
        let dir = temp_dir("evorow-cfg");
        let text = format!("[job]\nname = \"evo\"\n{}", catalog.toml());
        let config = k2::config::Config::from_toml_with_env(&text, Vec::<(String, String)>::new()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let jc = runtime.block_on(JobCatalog::open(&config.iceberg, &config.s3)).unwrap();
        let day = 1_767_225_600_000_000i64;
        runtime.block_on(jc.ensure_table(&TableDecl::of::<V1>("evo"))).unwrap();
        write(
            &runtime,
            &jc,
            "evo",
            (0..3)
                .map(|i| V1 {
                    message_id: format!("a{i}"),
                    at: day + i,
                    qty: i,
                })
                .collect(),
        );
        // The new version: two columns added, as optional columns.
        runtime.block_on(jc.ensure_table(&TableDecl::of::<V2>("evo"))).unwrap();
        let schema = schema_of(&catalog, "evo");
        let names: Vec<&str> = schema.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["message_id", "at", "qty", "venue", "weight"],
            "{}",
            catalog.namespace
        );
        assert!(schema[3..].iter().all(|(_, _, required)| !required));
        write(
            &runtime,
            &jc,
            "evo",
            (0..3)
                .map(|i| V2 {
                    message_id: format!("b{i}"),
                    at: day + i,
                    qty: i,
                    venue: (i > 0).then(|| format!("v{i}")),
                    weight: i as f64 / 2.0,
                })
                .collect(),
        );
        // A job still on the old version writes nulls into the new columns.
        runtime.block_on(jc.ensure_table(&TableDecl::of::<V1>("evo"))).unwrap();
        write(
            &runtime,
            &jc,
            "evo",
            vec![V1 {
                message_id: "c0".into(),
                at: day,
                qty: 9,
            }],
        );
        let t = read_tables_in(&catalog, &["evo"], "message_id,qty,venue,weight", false);
        let mut rows: Vec<(String, Value, Value, Value)> = t[0]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["message_id"].as_str().unwrap().to_string(),
                    r["qty"].clone(),
                    r["venue"].clone(),
                    r["weight"].clone(),
                )
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let row = |id: &str, qty: i64, venue: Value, weight: Value| (id.to_string(), Value::from(qty), venue, weight);
        let null = Value::Null;
        let want = vec![
            row("a0", 0, null.clone(), null.clone()),
            row("a1", 1, null.clone(), null.clone()),
            row("a2", 2, null.clone(), null.clone()),
            row("b0", 0, null.clone(), Value::from(0.0)),
            row("b1", 1, Value::from("v1"), Value::from(0.5)),
            row("b2", 2, Value::from("v2"), Value::from(1.0)),
            row("c0", 9, null.clone(), null.clone()),
        ];
        assert_eq!(rows, want, "{}", catalog.namespace);
        catalog.drop();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `mkdir -p` on a path, returning it.
trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
