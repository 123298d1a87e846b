//! Job configuration: TOML with defaults, environment overrides and validation.
//!
//! A config file is read in three steps, each of which can only make it more
//! specific:
//!
//! 1. the TOML file (every key is optional and has a documented default);
//! 2. environment overrides `K2__<SECTION>__<KEY>=value`, for example
//!    `K2__KAFKA__BROKERS=10.0.0.1:9092` or `K2__JOB__EPOCH_MS=100`; the value
//!    is read as a TOML value when it parses as one, else as a string;
//! 3. validation of the result.
//!
//! Unknown keys are rejected rather than ignored, and every error names the key
//! (`config `job.epoch_ms`: invalid type: string "x", expected u64`), so a
//! typo cannot silently fall back to a default.

use crate::error::{Error, Result};
use crate::record::Exchange;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A whole job's configuration: the engine's sections, typed and strict,
/// and the sections of the job's dataflows (e.g. `[arbitrage]`), which each
/// dataflow reads with [`Config::section`] into a type of its own.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Job identity and progress settings.
    pub job: JobConfig,
    /// The Kafka cluster and topics.
    pub kafka: KafkaConfig,
    /// Event-time settings of the source.
    pub source: SourceConfig,
    /// Dedup settings.
    pub dedup: DedupConfig,
    /// The Iceberg catalog and warehouse.
    pub iceberg: IcebergConfig,
    /// Where checkpoints live.
    pub checkpoint: CheckpointConfig,
    /// The dataflows' own sections, by name, as written (see [`Config::section`]).
    #[serde(skip_deserializing)]
    pub sections: BTreeMap<String, toml::Value>,
    /// Where the config came from, to name lines in errors.
    #[serde(skip)]
    origin: ConfigSource,
}

/// The text and origin of a config, for error messages. Not part of what
/// the config *is*: any two compare equal.
#[derive(Clone, Debug, Default)]
struct ConfigSource {
    text: String,
    file: String,
    /// Dotted keys set by the environment, and by which variable.
    from_env: BTreeMap<String, String>,
}

impl PartialEq for ConfigSource {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl ConfigSource {
    /// Where `key` (dotted, e.g. `arbitrage.delta_ms`) was set.
    fn origin(&self, key: &str) -> String {
        if let Some(var) = self.from_env.get(key) {
            return format!("from the environment variable {var}");
        }
        match find_line(&self.text, key) {
            Some(line) => format!("{} line {line}", self.file),
            None => self.file.clone(),
        }
    }
}

/// The engine's own top-level sections; every other one belongs to a dataflow.
const ENGINE_SECTIONS: [&str; 6] = ["job", "kafka", "source", "dedup", "iceberg", "checkpoint"];

/// How alerts reach Kafka.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KafkaSinkMode {
    /// At once; at least once across crashes, idempotent by alert id.
    Immediate,
    /// In a Kafka transaction per commit; exactly once, visible per commit.
    Transactional,
}

/// What happens to late trades in event-time dataflows.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LatePolicy {
    /// Written to the `late_trades` table.
    Table,
    /// Counted in the run report and dropped.
    Drop,
}

/// `[job]`: identity and progress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// The job's name: it keys checkpoints and appears in every snapshot
    /// summary as `k2.job`. Two runs with the same name are the same job.
    pub name: String,
    /// Epoch length in ms. Epochs are the unit of consistency: shorter epochs
    /// mean lower commit latency and more, smaller files.
    pub epoch_ms: u64,
    /// Minimum time between Iceberg commits, in ms. A commit covers every
    /// complete epoch since the previous one.
    pub commit_interval_ms: u64,
    /// `continuous` (run until SIGINT/SIGTERM) or `bounded` (stop at the end
    /// offsets seen at start).
    pub mode: RunMode,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            name: "bronze".into(),
            epoch_ms: 200,
            commit_interval_ms: 1000,
            mode: RunMode::Continuous,
        }
    }
}

/// How long a job runs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// Until SIGINT/SIGTERM, then a clean final commit.
    Continuous,
    /// Until the end offsets seen at start, then a final commit and exit.
    Bounded,
}

/// `[kafka]`: the cluster and the topics.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic of each exchange's trade feed.
    pub topics: TopicsConfig,
    /// Most messages one worker polls per activation before yielding.
    pub poll_batch: usize,
    /// librdkafka properties for every client of the job (consumers, the
    /// alert producers, the admin client): the place for the security
    /// settings, e.g. `"security.protocol" = "SASL_SSL"`.
    pub client: BTreeMap<String, String>,
    /// Extra librdkafka consumer properties, passed through unchanged.
    pub consumer: BTreeMap<String, String>,
    /// Replication factor of the topics K2 creates (the alerts topic).
    pub replication_factor: i32,
    /// How often a continuous job looks for partitions added to its topics,
    /// ms: a new partition is read within about this long.
    pub metadata_refresh_ms: u64,
    /// How long a job waits at start for unreachable brokers before it gives
    /// up, ms (it logs what it waits for meanwhile).
    pub connect_timeout_ms: u64,
    /// After each committed cut, also commit its offsets to the job's
    /// consumer group (the consumer's `group.id`, `k2-<job name>` unless
    /// `kafka.consumer."group.id"` says otherwise), so that Kafka's tools
    /// show the job's lag. Informational: the job resumes from its
    /// checkpoints, and a failed group commit is only logged.
    pub commit_group_offsets: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topics: TopicsConfig::default(),
            poll_batch: 4096,
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            replication_factor: 1,
            metadata_refresh_ms: 5000,
            connect_timeout_ms: 120_000,
            commit_group_offsets: true,
        }
    }
}

/// `[kafka.topics]`: one topic per exchange.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Binance `trade` events.
    pub binance: String,
    /// Kraken v2 `trade` channel messages.
    pub kraken: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            binance: "market.crypto.trades.binance".into(),
            kraken: "market.crypto.trades.kraken".into(),
        }
    }
}

impl TopicsConfig {
    /// `(exchange, topic)` pairs in a fixed order; the index in this list is
    /// the topic number carried in [`crate::record::SourcePosition::topic`].
    pub fn list(&self) -> Vec<(Exchange, String)> {
        vec![
            (Exchange::Binance, self.binance.clone()),
            (Exchange::Kraken, self.kraken.clone()),
        ]
    }
}

/// `[source]`: event-time progress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Allowed out-of-orderness: a partition's watermark is the largest event
    /// time it has shown minus this.
    pub max_out_of_orderness_ms: u64,
    /// A partition that is caught up and has shown nothing for this long stops
    /// holding the watermark back (see `source::kafka` for the policy).
    pub idle_timeout_ms: u64,
    /// Where a job without a checkpoint starts: `earliest` or `latest`. It
    /// applies to a partition only when the job sees it for the first time
    /// and it existed before the job's first checkpoint; partitions added
    /// later are always read from their first offset.
    pub start: StartPosition,
    /// A trade whose event time lies more than this after its Kafka timestamp
    /// never moves a watermark, ms; `future` says where it goes.
    pub max_future_ms: u64,
    /// `late`: bronze keeps such a trade, event-time operators treat it as
    /// late; `dead_letter`: its message goes to `dead_letters` with the reason.
    pub future: FuturePolicy,
    /// Control messages (heartbeats, status, subscription responses): `skip`
    /// (counted per kind) or `dead_letter` (also written to `dead_letters`).
    pub control: ControlPolicy,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            max_out_of_orderness_ms: 2000,
            idle_timeout_ms: 2000,
            start: StartPosition::Earliest,
            max_future_ms: 10_000,
            future: FuturePolicy::Late,
            control: ControlPolicy::Skip,
        }
    }
}

/// Where a trade dated beyond `source.max_future_ms` goes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FuturePolicy {
    /// Flagged late: bronze keeps it, event-time operators route it as late.
    Late,
    /// Its message goes to the dead letters, with the reason.
    DeadLetter,
}

/// What happens to well-formed messages that carry no trade.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ControlPolicy {
    /// Counted per kind, otherwise skipped.
    Skip,
    /// Counted, and written to the dead letters.
    DeadLetter,
}

/// Where a fresh job starts reading.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    /// The oldest retained message.
    Earliest,
    /// Only messages produced after the start.
    Latest,
}

/// `[dedup]`: see `operators::dedup`. Trades are numbered per symbol by both
/// exchanges, so their dedup is exact forever in memory per symbol; these
/// settings bound the rest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// How long, in event time of the on-time records, an id without a
    /// sequence number is remembered, ms.
    pub id_retention_ms: u64,
    /// Most gaps kept per numbered stream (a gap is a run of missing trade
    /// numbers); beyond it the oldest gap is closed.
    pub max_gaps: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            id_retention_ms: 600_000,
            max_gaps: 100_000,
        }
    }
}

impl DedupConfig {
    /// The operator's parameters.
    pub fn params(&self) -> crate::operators::DedupParams {
        crate::operators::DedupParams {
            retention_us: self.id_retention_ms.saturating_mul(1000),
            max_gaps: self.max_gaps,
        }
    }
}

/// `[iceberg]`: catalog and warehouse.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IcebergConfig {
    /// Catalog name; outside readers must use the same one.
    pub catalog_name: String,
    /// Warehouse folder (relative paths are taken from the working directory).
    pub warehouse: PathBuf,
    /// SQL catalog URI; defaults to a SQLite file `catalog.db` in the warehouse.
    pub catalog_uri: Option<String>,
    /// Namespace of the job's tables.
    pub namespace: String,
    /// Data files are rolled at this size, as well as at every commit.
    pub target_file_size_bytes: u64,
    /// Snapshots older than this are expired at start (metadata only: the
    /// data files of an append-only table stay).
    pub max_snapshot_age_ms: u64,
    /// ... but at least this many snapshots are kept.
    pub min_snapshots_to_keep: usize,
}

impl Default for IcebergConfig {
    fn default() -> Self {
        IcebergConfig {
            catalog_name: "k2".into(),
            warehouse: PathBuf::from(".k2/warehouse"),
            catalog_uri: None,
            namespace: "market_data".into(),
            target_file_size_bytes: 128 * 1024 * 1024,
            max_snapshot_age_ms: 24 * 3600 * 1000,
            min_snapshots_to_keep: 100,
        }
    }
}

impl IcebergConfig {
    /// The warehouse as an absolute path.
    pub fn warehouse_abs(&self) -> PathBuf {
        absolute(&self.warehouse)
    }

    /// The catalog URI, defaulted from the warehouse.
    pub fn catalog_uri(&self) -> String {
        match &self.catalog_uri {
            Some(uri) => uri.clone(),
            None => format!("sqlite:{}?mode=rwc", self.warehouse_abs().join("catalog.db").display()),
        }
    }
}

/// `[checkpoint]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Folder for manifests and operator state; every process must reach it.
    pub dir: PathBuf,
    /// How many manifests to keep.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: PathBuf::from(".k2/checkpoints"),
            keep: 10,
        }
    }
}

impl CheckpointConfig {
    /// This job's checkpoint folder, absolute.
    pub fn job_dir(&self, job: &str) -> PathBuf {
        absolute(&self.dir).join(job)
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "K2__";

impl Config {
    /// Reads `path`, applies the process environment's overrides, validates.
    /// Errors name the key, and the file and line or the environment
    /// variable it came from.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read config", path, e))?;
        Self::parse(&text, std::env::vars(), &path.display().to_string())
    }

    /// Parses `text`, applies overrides from `env` (only `K2__*` variables are
    /// read), validates.
    pub fn from_toml_with_env(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config> {
        Self::parse(text, env, "the config")
    }

    fn parse(text: &str, env: impl IntoIterator<Item = (String, String)>, file: &str) -> Result<Config> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| format!(" at line {}", line_of(text, span.start)))
                .unwrap_or_default();
            Error::config("<file>", format!("{}{at} of {file}", e.message().trim_end()))
        })?;
        // Which keys the environment set, and by which variable.
        let mut from_env: BTreeMap<String, String> = BTreeMap::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.iter().any(|p| p.is_empty()) {
                return Err(Error::config(name, "malformed override name; use K2__SECTION__KEY"));
            }
            let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw.clone()));
            let key = path.join(".");
            set_path(&mut value, &path, parsed)
                .map_err(|m| Error::config(&key, format!("{m} (from the environment variable {name})")))?;
            from_env.insert(key, name);
        }
        // Dataflow sections are kept as written, for `Config::section`.
        let mut sections = BTreeMap::new();
        for name in value.keys().cloned().collect::<Vec<_>>() {
            if !ENGINE_SECTIONS.contains(&name.as_str()) {
                let section = value.remove(&name).expect("a listed key");
                if !section.is_table() {
                    return Err(Error::config(
                        &name,
                        format!(
                            "expected a table (a `[{name}]` section), found a {}",
                            section.type_str()
                        ),
                    ));
                }
                sections.insert(name, section);
            }
        }
        let source = ConfigSource {
            text: text.to_string(),
            file: file.to_string(),
            from_env: from_env.clone(),
        };
        let origin = |key: &str, field: Option<&str>| -> String {
            let full = match field {
                Some(f) if !key.is_empty() => format!("{key}.{f}"),
                Some(f) => f.to_string(),
                None => key.to_string(),
            };
            if let Some(var) = from_env.get(&full).or_else(|| from_env.get(key)) {
                return format!("from the environment variable {var}");
            }
            match find_line(text, &full) {
                Some(line) => format!("{file} line {line}"),
                None => file.to_string(),
            }
        };
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let message = e.into_inner().message().to_string();
            // An unknown field is reported at its table: name the field's line.
            let field = message
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
                .map(str::to_string);
            // The path may already end with the field.
            let key = match &field {
                Some(f) if key == *f || key.ends_with(&format!(".{f}")) => {
                    key[..key.len() - f.len()].trim_end_matches('.').to_string()
                }
                _ => key,
            };
            let at = origin(&key, field.as_deref());
            let named = match &field {
                Some(f) if key.is_empty() => f.clone(),
                Some(f) => format!("{key}.{f}"),
                None => key,
            };
            Error::config(named, format!("{message} ({at})"))
        })?;
        config.validate().map_err(|e| match e {
            Error::Config { key, message } => {
                let at = origin(&key, None);
                Error::config(key, format!("{message} ({at})"))
            }
            other => other,
        })?;
        config.sections = sections;
        config.origin = source;
        Ok(config)
    }

    /// The dataflow section `[name]` as `T`: strict (unknown keys are
    /// errors), every key optional (missing ones take `T::default()`'s
    /// values), and errors name the key and where it was set. A missing
    /// section is `T::default()`.
    pub fn section<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        let Some(value) = self.sections.get(name) else {
            return Ok(T::default());
        };
        serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().to_string();
            let field = message
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
                .map(str::to_string);
            let mut key = if path == "." {
                name.to_string()
            } else {
                format!("{name}.{path}")
            };
            if let Some(f) = field
                && !key.ends_with(&format!(".{f}"))
            {
                key = format!("{key}.{f}");
            }
            let at = self.origin.origin(&key);
            Error::config(&key, format!("{message} ({at})"))
        })
    }

    /// A config error for the dataflow key `key` (dotted), saying where it
    /// was set: for a dataflow's own validation.
    pub fn section_error(&self, key: &str, message: impl std::fmt::Display) -> Error {
        Error::config(key, format!("{message} ({})", self.origin.origin(key)))
    }

    /// Sets the dataflow section `[name]` to `value` (for programs that build
    /// a config in code).
    pub fn set_section<T: Serialize>(&mut self, name: &str, value: &T) -> Result<()> {
        let value = toml::Value::try_from(value).map_err(|e| Error::config(name, e.to_string()))?;
        self.sections.insert(name.to_string(), value);
        Ok(())
    }

    /// The effective config as JSON: the engine's sections and the
    /// dataflows', all at the top level, as a file would write them.
    pub fn effective(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a config serializes");
        if let Some(map) = v.as_object_mut()
            && let Some(serde_json::Value::Object(sections)) = map.remove("sections")
        {
            map.extend(sections);
        }
        v
    }

    /// The names of the dataflow sections present.
    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        let job = &self.job;
        if job.name.is_empty()
            || !job
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::config(
                "job.name",
                format!("`{}` must be non-empty [A-Za-z0-9_-]", job.name),
            ));
        }
        if job.epoch_ms == 0 {
            return Err(Error::config("job.epoch_ms", "must be > 0"));
        }
        if job.commit_interval_ms < job.epoch_ms {
            return Err(Error::config(
                "job.commit_interval_ms",
                format!(
                    "{} is shorter than job.epoch_ms ({})",
                    job.commit_interval_ms, job.epoch_ms
                ),
            ));
        }
        if self.kafka.brokers.trim().is_empty() {
            return Err(Error::config("kafka.brokers", "must not be empty"));
        }
        if self.kafka.poll_batch == 0 {
            return Err(Error::config("kafka.poll_batch", "must be > 0"));
        }
        if self.kafka.replication_factor < 1 {
            return Err(Error::config("kafka.replication_factor", "must be >= 1"));
        }
        if self.kafka.metadata_refresh_ms == 0 {
            return Err(Error::config("kafka.metadata_refresh_ms", "must be > 0"));
        }
        if self.kafka.topics.binance == self.kafka.topics.kraken {
            return Err(Error::config(
                "kafka.topics.kraken",
                "must differ from kafka.topics.binance",
            ));
        }
        if self.iceberg.namespace.is_empty() {
            return Err(Error::config("iceberg.namespace", "must not be empty"));
        }
        if self.checkpoint.keep == 0 {
            return Err(Error::config("checkpoint.keep", "must be >= 1"));
        }
        Ok(())
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line that sets the dotted key `key` (`job.epoch_ms`): under its
/// table's header, or as a dotted key. `None` when the file does not set it.
fn find_line(text: &str, key: &str) -> Option<usize> {
    let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(header) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = header.trim_matches(['[', ']']).trim().to_string();
            continue;
        }
        let Some((k, _)) = t.split_once('=') else { continue };
        let k = k.trim().trim_matches('"');
        let full = if current.is_empty() {
            k.to_string()
        } else {
            format!("{current}.{k}")
        };
        if full == key || (current == table && k == name) {
            return Some(i + 1);
        }
    }
    None
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> std::result::Result<(), String> {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        Config::from_toml_with_env(text, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[job]\nepochs_ms = 5\n", &[]).unwrap_err().to_string();
        assert!(e.contains("epochs_ms"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse("[job]\nepoch_ms = \"fast\"\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("config `job.epoch_ms`"), "{e}");
    }

    #[test]
    fn env_overrides_apply_and_are_typed() {
        let c = parse(
            "[job]\nepoch_ms = 5\ncommit_interval_ms = 5\n",
            &[
                ("K2__JOB__EPOCH_MS", "3"),
                ("K2__KAFKA__BROKERS", "h:1"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.job.epoch_ms, 3);
        assert_eq!(c.kafka.brokers, "h:1");
        let e = parse("", &[("K2__JOB__NOPE", "1")]).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn errors_say_where_the_value_came_from() {
        let text = "[job]\nname = \"j\"\nepoch_ms = \"fast\"\n";
        let e = Config::parse(text, [], "bronze.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("config `job.epoch_ms`") && e.contains("bronze.toml line 3"),
            "{e}"
        );
        let e = Config::parse("[job]\nepochs_ms = 5\n", [], "bronze.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`job.epochs_ms`") && e.contains("line 2"), "{e}");
        let env = [("K2__JOB__EPOCH_MS".to_string(), "fast".to_string())];
        let e = Config::parse("[job]\nepoch_ms = 5\n", env, "bronze.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("from the environment variable K2__JOB__EPOCH_MS"), "{e}");
        assert!(!e.contains("bronze.toml"), "{e}");
        let e = Config::parse("[job]\nepoch_ms = \n", [], "bronze.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2 of bronze.toml"), "{e}");
        let e = Config::parse("[job]\nepoch_ms = 0\n", [], "bronze.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be > 0") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let e = parse("[job]\nepoch_ms = 0\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("config `job.epoch_ms`"), "{e}");
        let e = parse("[job]\ncommit_interval_ms = 10\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("config `job.commit_interval_ms`"), "{e}");
    }
}
