//! SQL over a job's tables, joined exactly with the live Kafka tail.
//!
//! A bronze table lags Kafka by up to a commit interval; readers that need
//! the last seconds too usually merge Kafka and the table by a time cutoff,
//! which either misses trades committed late or counts some twice. K2 needs
//! no cutoff: every snapshot records exactly where it stops in Kafka
//! (`k2.offsets`, the next offset per partition), so the rows it lacks are
//! exactly the messages from there on. A query reads three ways ([`Mode`]):
//!
//! * **history**: the tables at their newest snapshot, or as of one cut of
//!   the job for a consistent view of several tables ([`AsOf`]);
//! * **tail**: only what Kafka holds beyond the newest snapshot's
//!   `k2.offsets`, up to the high watermarks read at query start, decoded
//!   by K2's decoder and deduplicated by K2's rules, as rows of the table's
//!   schema: the rows the job's next commits will add;
//! * **hybrid** (the default): the snapshot plus exactly that tail,
//!   deduplicated across the seam ([`seam`]). Nothing is missed, nothing is
//!   counted twice, and a query over several tables sees them all cut at the
//!   same high watermarks.
//!
//! The bronze tables (`bronze_<exchange>_trades`, `dead_letters`) have a
//! tail; other tables are read as history in every mode but `tail`, which
//! refuses them. The [`Answer`] carries the [`Seam`] the query used: each
//! table's snapshot, epoch and start offsets, the high watermarks read, and
//! how the tail was deduplicated.
//!
//! ```no_run
//! # async fn example() -> Result<(), k2::query::QueryError> {
//! let config = k2::config::Config::load("config/bronze.toml".as_ref())?;
//! let query = k2::query::Query::open(&config).await?;
//! let answer = query
//!     .sql("SELECT symbol, count(*) FROM bronze_binance_trades GROUP BY symbol")
//!     .await?;
//! println!("{} rows up to {:?}", answer.rows(), answer.seam.high_watermarks);
//! # Ok(())
//! # }
//! ```
//!
//! The SQL runs in [DataFusion](https://datafusion.apache.org), the history
//! through `iceberg-datafusion` (pruning by partition and file statistics
//! applies), the tail as an in-memory table unioned with it. Only queries
//! are accepted: no DDL, DML or `SET`.

pub mod error;
pub mod seam;
pub mod snapshot;
pub mod tail;

pub use error::{QueryError, QueryResult};
pub use seam::{DedupCounts, DedupSource};
pub use snapshot::{Cut, Offsets};

use crate::config::{CatalogKind, Config, Location};
use crate::error::Error;
use crate::operators::dedup::DedupState;
use crate::record::{DeadLetter, Exchange, Trade};
use crate::sink::iceberg::{JobCatalog, RowContext, TableRow, rows_batch};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::catalog::TableProvider;
use datafusion::datasource::{MemTable, ViewTable, provider_as_source};
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::sql::TableReference;
use futures::StreamExt;
use iceberg::table::Table;
use iceberg::{Catalog, NamespaceIdent};
use iceberg_datafusion::IcebergStaticTableProvider;
use serde::{Deserialize, Serialize};
use snapshot::Pinned;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tail::{TailReader, TopicSpec, TopicTail};

/// How a query reads the tables (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Snapshots only.
    History,
    /// The Kafka tail beyond the newest snapshot only.
    Tail,
    /// The newest snapshot plus the tail, deduplicated across the seam.
    #[default]
    Hybrid,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "history" => Ok(Mode::History),
            "tail" => Ok(Mode::Tail),
            "hybrid" => Ok(Mode::Hybrid),
            other => Err(format!("unknown mode `{other}` (expected history, tail or hybrid)")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::History => "history",
            Mode::Tail => "tail",
            Mode::Hybrid => "hybrid",
        })
    }
}

/// Which cut a history query reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AsOf {
    /// Each table at its newest K2 snapshot with `k2.epoch <= E`.
    Epoch(u64),
    /// The newest cut that every table of the query has reached: `E` = the
    /// smallest newest `k2.epoch` among them (README, "Reading the tables").
    LatestCommon,
}

impl std::str::FromStr for AsOf {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(AsOf::LatestCommon),
            n => n
                .parse()
                .map(AsOf::Epoch)
                .map_err(|_| format!("`{n}` is not an epoch (a number, or `latest` for the newest common cut)")),
        }
    }
}

/// How the tail's duplicates of the history are found ([`seam`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeamDedup {
    /// The job's checkpointed dedup state if it can be read, else the anti-join.
    #[default]
    Auto,
    /// Always the anti-join against the snapshot.
    AntiJoin,
}

/// Options of one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryOptions {
    /// History, tail or hybrid.
    pub mode: Mode,
    /// For history: which cut (default: each table's newest snapshot).
    pub as_of: Option<AsOf>,
    /// How the seam is deduplicated.
    pub seam_dedup: SeamDedup,
    /// Longest wait for Kafka (metadata, watermarks, reading the tail).
    pub kafka_timeout: Duration,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            mode: Mode::Hybrid,
            as_of: None,
            seam_dedup: SeamDedup::Auto,
            kafka_timeout: Duration::from_secs(30),
        }
    }
}

/// The rows of a query and the seam they were read at.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The result's schema.
    pub schema: SchemaRef,
    /// The result.
    pub batches: Vec<RecordBatch>,
    /// Which snapshots and which Kafka range the result covers.
    pub seam: Seam,
}

impl Answer {
    /// Rows in the result.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Where a query joined history and tail.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Seam {
    /// Each table the query read.
    pub tables: Vec<TableSeam>,
    /// The high watermarks read at query start, per topic and partition:
    /// every tail ends there (empty when no tail was read).
    pub high_watermarks: Offsets,
    /// Where the time went.
    pub timings: Timings,
}

/// How one table was read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableSeam {
    /// The table's name.
    pub table: String,
    /// How it was read (`history` for tables without a Kafka tail).
    pub mode: Mode,
    /// The snapshot whose rows were read (history and hybrid; `None` when
    /// the table had none).
    pub snapshot_id: Option<i64>,
    /// The cut of that snapshot (in tail mode: of the newest snapshot, the
    /// tail's start).
    pub cut: Option<Cut>,
    /// The tail, when one was read.
    pub tail: Option<TailSeam>,
}

/// The tail of one table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailSeam {
    /// Where it starts, per topic and partition: the cut's offsets, or the
    /// first retained offset of partitions the cut does not know.
    pub from: Offsets,
    /// Messages read from its topics.
    pub messages: u64,
    /// Rows it added to the answer.
    pub rows: u64,
    /// How trades were deduplicated (trade tables only).
    pub dedup: Option<DedupCounts>,
    /// Where the history's ids came from (trade tables only).
    pub dedup_source: Option<DedupSource>,
}

/// Where a query's time went, ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Parsing, the catalog, the snapshots.
    pub plan_ms: f64,
    /// Kafka: reading the high watermarks (and the partitions).
    pub watermarks_ms: f64,
    /// Kafka: reading and decoding the tail.
    pub tail_ms: f64,
    /// Deduplicating the tail across the seam.
    pub seam_ms: f64,
    /// Running the SQL.
    pub execute_ms: f64,
}

/// What feeds a table from Kafka, if anything.
#[derive(Clone, Debug)]
enum Feed {
    /// The trades of one exchange's topic.
    Trades(TopicSpec),
    /// The dead letters of every topic.
    DeadLetters(Vec<TopicSpec>),
}

impl Feed {
    fn topics(&self) -> Vec<&TopicSpec> {
        match self {
            Feed::Trades(t) => vec![t],
            Feed::DeadLetters(ts) => ts.iter().collect(),
        }
    }
}

fn topic_specs(config: &Config) -> Vec<TopicSpec> {
    config
        .kafka
        .topics
        .list()
        .into_iter()
        .enumerate()
        .map(|(i, (exchange, name))| TopicSpec {
            index: i as u16,
            name,
            exchange,
        })
        .collect()
}

/// The bronze dataflow's tables and their topics.
fn feed_of(table: &str, topics: &[TopicSpec]) -> Option<Feed> {
    if table == "dead_letters" {
        return Some(Feed::DeadLetters(topics.to_vec()));
    }
    Exchange::ALL
        .iter()
        .find(|e| table == format!("bronze_{}_trades", e.name()))
        .and_then(|e| topics.iter().find(|t| t.exchange == *e))
        .map(|t| Feed::Trades(t.clone()))
}

/// A job's tables, queryable with SQL; see the module docs.
pub struct Query {
    config: Arc<Config>,
    catalog: JobCatalog,
    tail: Mutex<Option<Arc<TailReader>>>,
}

impl std::fmt::Debug for Query {
    // Not the config: its Kafka client settings may hold credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Query(job {}, {:?})", self.config.job.name, self.catalog)
    }
}

fn sql_error(e: datafusion::error::DataFusionError) -> QueryError {
    let text = e.strip_backtrace();
    QueryError::Sql(text.strip_prefix("SQL error: ").unwrap_or(&text).to_string())
}

/// A query (or the `EXPLAIN` of one), not DDL, DML or a `SET`.
fn is_query(statement: &datafusion::sql::parser::Statement) -> bool {
    use datafusion::sql::parser::Statement as Df;
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    match statement {
        Df::Statement(s) => matches!(**s, Sql::Query(_)),
        Df::Explain(e) => is_query(&e.statement),
        _ => false,
    }
}

fn exec_error(e: datafusion::error::DataFusionError) -> QueryError {
    QueryError::Execution(e.strip_backtrace())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl Query {
    /// Opens the job's catalog as the job does (`[iceberg]` and `[s3]` of
    /// `config`: SQLite or another SQL database, or a REST catalog, with
    /// the warehouse on local disk or in S3); Kafka is reached only when a
    /// query reads a tail.
    pub async fn open(config: &Config) -> QueryResult<Query> {
        let iceberg = &config.iceberg;
        if iceberg.catalog == CatalogKind::Sql
            && iceberg.catalog_uri.is_none()
            && let Location::Local(_) = iceberg.warehouse_location()
        {
            // The default SQLite file: opening it would create an empty one.
            let db = iceberg.warehouse_abs().join("catalog.db");
            if !db.exists() {
                return Err(Error::Other(format!(
                    "no catalog at {}: has the job run yet? (iceberg.warehouse)",
                    db.display()
                ))
                .into());
            }
        }
        let catalog = JobCatalog::open(iceberg, &config.s3).await?;
        Ok(Query::with_job_catalog(config, catalog))
    }

    /// Queries the tables of `config`'s job in `catalog`, an Iceberg catalog
    /// the caller opened (namespace `iceberg.namespace`).
    pub fn with_catalog(config: &Config, catalog: Arc<dyn Catalog>) -> Query {
        let catalog = JobCatalog {
            catalog,
            namespace: NamespaceIdent::new(config.iceberg.namespace.clone()),
            description: "the catalog given to Query::with_catalog".to_string(),
        };
        Query::with_job_catalog(config, catalog)
    }

    /// Queries the tables of `config`'s job in `catalog`, opened by
    /// [`JobCatalog::open`].
    pub fn with_job_catalog(config: &Config, catalog: JobCatalog) -> Query {
        Query {
            config: Arc::new(config.clone()),
            catalog,
            tail: Mutex::new(None),
        }
    }

    /// The tables of the job's namespace, sorted.
    pub async fn tables(&self) -> QueryResult<Vec<String>> {
        let ns = self.catalog.namespace.join(".");
        let mut names: Vec<String> = self
            .catalog
            .catalog
            .list_tables(&self.catalog.namespace)
            .await
            .map_err(|e| Error::iceberg(&ns, format!("list tables in {}", self.catalog.description), e))?
            .into_iter()
            .map(|t| t.name().to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Runs `sql` in the default mode (hybrid for bronze tables).
    pub async fn sql(&self, sql: &str) -> QueryResult<Answer> {
        self.sql_with(sql, &QueryOptions::default()).await
    }

    /// Runs `sql` with `options`.
    pub async fn sql_with(&self, sql: &str, options: &QueryOptions) -> QueryResult<Answer> {
        let start = Instant::now();
        let mut timings = Timings::default();
        if options.as_of.is_some() && options.mode != Mode::History {
            return Err(QueryError::Mode(format!(
                "--as-of-epoch reads history: use --mode history (not {})",
                options.mode
            )));
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads));
        let state = ctx.state();
        let statement = state
            .sql_to_statement(sql, &datafusion::config::Dialect::Generic)
            .map_err(sql_error)?;
        if !is_query(&statement) {
            return Err(QueryError::Sql(
                "only queries are accepted (SELECT, WITH, VALUES, EXPLAIN); the tables are read-only here".into(),
            ));
        }
        let references = state.resolve_table_references(&statement).map_err(sql_error)?;

        // Which tables, each loaded once.
        let namespace = self.catalog.namespace.join(".");
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut known: Option<Vec<String>> = None;
        for r in &references {
            let name = r.table().to_string();
            let qualified_ok = match r {
                TableReference::Bare { .. } => true,
                TableReference::Partial { schema, .. } => **schema == *namespace,
                TableReference::Full { .. } => false,
            };
            if known.is_none() {
                known = Some(self.tables().await?);
            }
            let list = known.as_ref().expect("listed");
            if !qualified_ok || !list.contains(&name) {
                return Err(QueryError::UnknownTable {
                    table: r.to_string(),
                    namespace: namespace.clone(),
                    known: list.clone(),
                });
            }
            names.insert(name);
        }
        let topics = topic_specs(&self.config);
        let mut tables: BTreeMap<String, Table> = BTreeMap::new();
        for name in &names {
            tables.insert(name.clone(), self.load(name).await?);
        }

        // How each is read, and at which snapshot.
        let mut plans: BTreeMap<String, (Mode, Option<Feed>, Pinned)> = BTreeMap::new();
        let common_epoch = match options.as_of {
            Some(AsOf::LatestCommon) => tables.values().filter_map(snapshot::newest_epoch).min(),
            Some(AsOf::Epoch(e)) => Some(e),
            None => None,
        };
        for (name, table) in &tables {
            let feed = feed_of(name, &topics);
            let mode = match (options.mode, &feed) {
                (Mode::Tail, None) => {
                    return Err(QueryError::Mode(format!(
                        "table `{name}` is not fed from Kafka by K2's bronze dataflow, so it has no tail; \
                         use --mode history or hybrid"
                    )));
                }
                (Mode::History, _) | (_, None) => Mode::History,
                (m, Some(_)) => m,
            };
            let pinned = match (options.as_of, common_epoch) {
                (Some(_), Some(e)) => snapshot::as_of(name, table, e)?,
                (Some(_), None) => Pinned {
                    snapshot: None,
                    cut: None,
                },
                (None, _) => snapshot::newest(name, table)?,
            };
            plans.insert(name.clone(), (mode, feed, pinned));
        }
        timings.plan_ms = ms(start);

        // The Kafka side: watermarks after the snapshots were pinned, so that
        // every tail reaches at least as far as its snapshot.
        let kafka_start = Instant::now();
        let mut needed: BTreeMap<String, TopicSpec> = BTreeMap::new();
        for (mode, feed, _) in plans.values() {
            if let (Mode::Tail | Mode::Hybrid, Some(feed)) = (mode, feed) {
                for t in feed.topics() {
                    needed.insert(t.name.clone(), t.clone());
                }
            }
        }
        let mut high_watermarks = Offsets::new();
        let mut starts: BTreeMap<String, Offsets> = BTreeMap::new();
        let mut tails: BTreeMap<String, TopicTail> = BTreeMap::new();
        if !needed.is_empty() {
            let reader = self.tail_reader()?;
            let topic_names: Vec<String> = needed.keys().cloned().collect();
            let timeout = options.kafka_timeout;
            let marks = {
                let reader = reader.clone();
                let names = topic_names.clone();
                tokio::task::spawn_blocking(move || {
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    reader.watermarks(&refs, timeout)
                })
                .await
                .map_err(|e| Error::Other(format!("reading Kafka watermarks: {e}")))??
            };
            // Each table's start per partition; the topic is read from the least.
            let mut ranges: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
            for (name, (mode, feed, pinned)) in &plans {
                let (Mode::Tail | Mode::Hybrid, Some(feed)) = (mode, feed) else {
                    continue;
                };
                let mut from = Offsets::new();
                for t in feed.topics() {
                    let cut = pinned.cut.as_ref().and_then(|c| c.offsets.get(&t.name));
                    for (&p, &(low, high)) in &marks[&t.name] {
                        let start = cut.and_then(|c| c.get(&p)).copied().unwrap_or(low);
                        if start < low {
                            return Err(QueryError::seam(
                                name,
                                format!(
                                    "Kafka no longer holds {}/{p} offsets {start}..{low} (retention), which the \
                                     snapshot has not read: the tail would miss them; query with --mode history",
                                    t.name
                                ),
                            ));
                        }
                        if start > high {
                            return Err(QueryError::seam(
                                name,
                                format!(
                                    "the snapshot has read {}/{p} up to offset {start}, but the partition ends at \
                                     {high}: the topic was re-created; query with --mode history",
                                    t.name
                                ),
                            ));
                        }
                        from.entry(t.name.clone()).or_default().insert(p, start);
                        let range = ranges.entry((t.name.clone(), p)).or_insert((start, high));
                        range.0 = range.0.min(start);
                    }
                }
                starts.insert(name.clone(), from);
            }
            timings.watermarks_ms = ms(kafka_start);
            for (topic, parts) in &marks {
                high_watermarks.insert(topic.clone(), parts.iter().map(|(p, (_, h))| (*p, *h)).collect());
            }
            let specs: Vec<TopicSpec> = needed.values().cloned().collect();
            tails = tokio::task::spawn_blocking(move || reader.read(&specs, &ranges, timeout))
                .await
                .map_err(|e| Error::Other(format!("reading the Kafka tail: {e}")))??;
        }
        timings.tail_ms = ms(kafka_start) - timings.watermarks_ms;

        // Providers: history, tail, or their union.
        let seam_start = Instant::now();
        let row_ctx = RowContext {
            topics: Arc::new(topics.iter().map(|t| t.name.clone()).collect()),
        };
        let mut seams = Vec::new();
        let mut providers: BTreeMap<String, Arc<dyn TableProvider>> = BTreeMap::new();
        for (name, (mode, feed, pinned)) in plans {
            let table = tables.remove(&name).expect("loaded");
            let schema = Arc::new(
                iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
                    .map_err(|e| Error::iceberg(&name, "arrow schema", e))?,
            );
            let history: Option<Arc<dyn TableProvider>> = match &pinned.snapshot {
                Some(s) if mode != Mode::Tail => Some(Arc::new(
                    IcebergStaticTableProvider::try_new_from_table_snapshot(table.clone(), s.snapshot_id())
                        .await
                        .map_err(|e| Error::iceberg(&name, "open snapshot", e))?,
                )),
                _ => None,
            };
            let schema = history.as_ref().map_or(schema, |h| h.schema());
            let mut tail_seam = None;
            let mut tail_batches = Vec::new();
            if let (Mode::Tail | Mode::Hybrid, Some(feed)) = (mode, &feed) {
                let from = starts.remove(&name).unwrap_or_default();
                let (batches, seam) = self
                    .tail_rows(&ctx, &name, feed, &pinned, &from, &tails, &schema, &row_ctx, options)
                    .await?;
                tail_batches = batches;
                tail_seam = Some(seam);
            }
            let provider: Arc<dyn TableProvider> = match (history, mode) {
                (Some(h), Mode::History) => h,
                (Some(h), _) => {
                    let tail = MemTable::try_new(schema.clone(), vec![tail_batches]).map_err(exec_error)?;
                    let plan = LogicalPlanBuilder::scan("history", provider_as_source(h), None)
                        .and_then(|b| {
                            let tail = LogicalPlanBuilder::scan("tail", provider_as_source(Arc::new(tail)), None)?;
                            b.union(tail.build()?)
                        })
                        .and_then(LogicalPlanBuilder::build)
                        .map_err(exec_error)?;
                    Arc::new(ViewTable::new(plan, None))
                }
                (None, _) => Arc::new(MemTable::try_new(schema.clone(), vec![tail_batches]).map_err(exec_error)?),
            };
            providers.insert(name.clone(), provider);
            seams.push(TableSeam {
                table: name,
                mode,
                snapshot_id: if mode == Mode::Tail {
                    None
                } else {
                    pinned.snapshot.as_ref().map(|s| s.snapshot_id())
                },
                cut: pinned.cut,
                tail: tail_seam,
            });
        }
        timings.seam_ms = ms(seam_start);

        // Register under the names the SQL uses, plan, run.
        let exec_start = Instant::now();
        for r in &references {
            let provider = providers[r.table()].clone();
            if let TableReference::Partial { schema, .. } = r
                && let Some(catalog) = ctx.catalog("datafusion")
                && catalog.schema(schema).is_none()
            {
                catalog
                    .register_schema(schema, Arc::new(MemorySchemaProvider::new()))
                    .map_err(exec_error)?;
            }
            if !ctx.table_exist(r.clone()).map_err(exec_error)? {
                ctx.register_table(r.clone(), provider).map_err(exec_error)?;
            }
        }
        let state = ctx.state();
        let plan = state.statement_to_plan(statement).await.map_err(sql_error)?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(sql_error)?;
        let frame = ctx.execute_logical_plan(plan).await.map_err(sql_error)?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await.map_err(exec_error)?;
        timings.execute_ms = ms(exec_start);
        Ok(Answer {
            schema,
            batches,
            seam: Seam {
                tables: seams,
                high_watermarks,
                timings,
            },
        })
    }

    /// The tail rows of table `name`: its feed's messages from `from` on,
    /// deduplicated across the seam for trade tables.
    #[allow(clippy::too_many_arguments)]
    async fn tail_rows(
        &self,
        ctx: &SessionContext,
        name: &str,
        feed: &Feed,
        pinned: &Pinned,
        from: &Offsets,
        tails: &BTreeMap<String, TopicTail>,
        schema: &SchemaRef,
        row_ctx: &RowContext,
        options: &QueryOptions,
    ) -> QueryResult<(Vec<RecordBatch>, TailSeam)> {
        let after_start = |topic: &str, partition: i32, offset: i64| {
            from.get(topic)
                .and_then(|ps| ps.get(&partition))
                .is_some_and(|start| offset >= *start)
        };
        let mut messages = 0;
        match feed {
            Feed::Trades(topic) => {
                let tail = &tails[&topic.name];
                messages += tail.messages;
                let trades: Vec<Trade> = tail
                    .trades
                    .iter()
                    .filter(|t| after_start(&topic.name, t.source.partition, t.source.offset))
                    .cloned()
                    .collect();
                let (kept, counts, source) = self.dedup(ctx, name, topic, pinned, trades, options).await?;
                let batch = tail_batch(name, &kept, row_ctx, schema)?;
                Ok((
                    vec![batch],
                    TailSeam {
                        from: from.clone(),
                        messages,
                        rows: kept.len() as u64,
                        dedup: Some(counts),
                        dedup_source: Some(source),
                    },
                ))
            }
            Feed::DeadLetters(topics) => {
                let mut rows: Vec<DeadLetter> = Vec::new();
                for t in topics {
                    let tail = &tails[&t.name];
                    messages += tail.messages;
                    rows.extend(
                        tail.dead_letters
                            .iter()
                            .filter(|d| after_start(&t.name, d.partition, d.offset))
                            .cloned(),
                    );
                }
                let batch = tail_batch(name, &rows, row_ctx, schema)?;
                Ok((
                    vec![batch],
                    TailSeam {
                        from: from.clone(),
                        messages,
                        rows: rows.len() as u64,
                        dedup: None,
                        dedup_source: None,
                    },
                ))
            }
        }
    }

    /// Drops the tail trades the job would drop ([`seam`]).
    async fn dedup(
        &self,
        ctx: &SessionContext,
        name: &str,
        topic: &TopicSpec,
        pinned: &Pinned,
        trades: Vec<Trade>,
        options: &QueryOptions,
    ) -> QueryResult<(Vec<Trade>, DedupCounts, DedupSource)> {
        let params = self.config.dedup.params();
        let (Some(snapshot), Some(cut)) = (&pinned.snapshot, &pinned.cut) else {
            let (kept, counts) = seam::dedup_tail(trades, &mut DedupState::default(), &params, |_| false);
            return Ok((kept, counts, DedupSource::NoHistory));
        };
        let (trades, reason) = match options.seam_dedup {
            SeamDedup::AntiJoin => (trades, "asked for".to_string()),
            SeamDedup::Auto => {
                // The checkpoint store blocks (it may be S3), and the dedup
                // state stays on the thread that restored it.
                let epoch = cut.epoch;
                let (config, cut, topic) = (self.config.clone(), cut.clone(), topic.name.clone());
                let outcome = tokio::task::spawn_blocking(move || match seam::checkpointed(&config, &cut, &topic) {
                    Ok(mut state) => Ok(seam::dedup_tail(trades, &mut state, &params, |_| false)),
                    Err(reason) => Err((trades, reason)),
                })
                .await
                .map_err(|e| Error::Other(format!("reading the job's dedup checkpoint: {e}")))?;
                match outcome {
                    Ok((kept, counts)) => return Ok((kept, counts, DedupSource::Checkpoint { epoch })),
                    Err(fallback) => fallback,
                }
            }
        };
        tracing::debug!(table = name, reason, "seam: anti-join against the snapshot");
        let wanted = seam::tail_ids(&trades);
        let mut found = seam::FoundIds::new();
        if !wanted.is_empty() {
            let table = self.load(name).await?;
            let history = IcebergStaticTableProvider::try_new_from_table_snapshot(table, snapshot.snapshot_id())
                .await
                .map_err(|e| Error::iceberg(name, "open snapshot", e))?;
            let frame = ctx
                .read_table(Arc::new(history))
                .and_then(|f| f.select_columns(&["message_id"]))
                .map_err(exec_error)?;
            let mut stream = frame.execute_stream().await.map_err(exec_error)?;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(exec_error)?;
                seam::probe(batch.column(0), &wanted, &mut found)?;
            }
        }
        let (kept, counts) = seam::dedup_tail(trades, &mut DedupState::default(), &params, |t| {
            found.contains(&t.message_id)
        });
        Ok((kept, counts, DedupSource::AntiJoin { reason }))
    }

    /// Loads table `name`, waiting out a busy catalog.
    async fn load(&self, name: &str) -> QueryResult<Table> {
        crate::retry::retry_async("load table", Duration::from_secs(10), || self.catalog.load(name))
            .await
            .map_err(Into::into)
    }

    /// The tail reader, created on first use.
    fn tail_reader(&self) -> QueryResult<Arc<TailReader>> {
        let mut slot = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let reader = Arc::new(TailReader::new(&self.config)?);
        *slot = Some(reader.clone());
        Ok(reader)
    }
}

/// Tail rows as a batch of the history's `schema`, by column name as the
/// job writes them (a column another tool added is null); a schema K2
/// cannot write is a seam error.
fn tail_batch<R: TableRow>(name: &str, rows: &[R], ctx: &RowContext, schema: &SchemaRef) -> QueryResult<RecordBatch> {
    rows_batch(name, rows, ctx, schema).map_err(|e| {
        QueryError::seam(
            name,
            format!(
                "tail rows cannot be built in the table's schema ({}); query it with --mode history",
                e.message()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service shares one `Query` across tasks and spawns its futures.
    #[test]
    fn query_and_its_futures_can_cross_threads() {
        fn shared<T: Send + Sync>() {}
        fn spawnable<F: std::future::Future + Send>(_: F) {}
        shared::<Query>();
        shared::<Answer>();
        // Compiled, not run: the future of `sql` is `Send`.
        fn sql_is_spawnable(q: &Query) {
            spawnable(q.sql("SELECT 1"));
        }
        let _compiled: fn(&Query) = sql_is_spawnable;
    }

    #[test]
    fn modes_and_cuts_parse() {
        assert_eq!("tail".parse::<Mode>(), Ok(Mode::Tail));
        assert!("live".parse::<Mode>().unwrap_err().contains("history, tail or hybrid"));
        assert_eq!("latest".parse::<AsOf>(), Ok(AsOf::LatestCommon));
        assert_eq!("42".parse::<AsOf>(), Ok(AsOf::Epoch(42)));
        assert!("x".parse::<AsOf>().is_err());
    }

    #[test]
    fn bronze_tables_have_feeds() {
        let topics = topic_specs(&Config::default());
        assert!(matches!(feed_of("bronze_binance_trades", &topics), Some(Feed::Trades(t)) if t.index == 0));
        assert!(matches!(feed_of("bronze_kraken_trades", &topics), Some(Feed::Trades(t)) if t.index == 1));
        assert!(matches!(feed_of("dead_letters", &topics), Some(Feed::DeadLetters(ts)) if ts.len() == 2));
        assert!(feed_of("divergence_alerts", &topics).is_none());
    }

    #[test]
    fn only_queries_are_accepted() {
        let state = SessionContext::new().state();
        let parse = |sql: &str| {
            state
                .sql_to_statement(sql, &datafusion::config::Dialect::Generic)
                .unwrap()
        };
        assert!(is_query(&parse("SELECT 1")));
        assert!(is_query(&parse("WITH a AS (SELECT 1) SELECT * FROM a")));
        assert!(is_query(&parse("EXPLAIN SELECT 1")));
        for sql in [
            "CREATE TABLE t AS SELECT 1",
            "INSERT INTO t VALUES (1)",
            "DROP TABLE t",
            "SET x = 1",
        ] {
            assert!(!is_query(&parse(sql)), "{sql}");
        }
    }
}
