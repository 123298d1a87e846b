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
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A whole job's configuration: the engine's sections, typed and strict,
/// and the sections of the job's dataflows (e.g. `[arbitrage]`), which each
/// dataflow reads with [`Config::section`] into a type of its own. Its
/// `Debug` is [`Config::effective`], without credentials.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
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
    /// The S3-compatible object store of `s3://` warehouses and checkpoints.
    pub s3: S3Config,
    /// The dataflows' own sections, by name, as written (see [`Config::section`]).
    #[serde(skip_deserializing)]
    pub sections: BTreeMap<String, toml::Value>,
    /// Where the config came from, to name lines in errors.
    #[serde(skip)]
    origin: ConfigSource,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Config {}", self.effective())
    }
}

/// The text and origin of a config, for error messages. Not part of what
/// the config *is*: any two compare equal. Its `Debug` leaves the text out,
/// which may hold credentials.
#[derive(Clone, Default)]
struct ConfigSource {
    text: String,
    file: String,
    /// Dotted keys set by the environment, and by which variable.
    from_env: BTreeMap<String, String>,
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("file", &self.file)
            .field("from_env", &self.from_env)
            .finish_non_exhaustive()
    }
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
const ENGINE_SECTIONS: [&str; 7] = ["job", "kafka", "source", "dedup", "iceberg", "checkpoint", "s3"];

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
    /// complete epoch since the previous one; cuts that queue behind a commit
    /// that takes longer are committed together, as one.
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
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic of each exchange's trade feed.
    pub topics: TopicsConfig,
    /// Most messages one worker polls per activation before yielding.
    pub poll_batch: usize,
    /// How clients connect and log in: TLS and SASL (see [`KafkaSecurity`]).
    pub security: KafkaSecurity,
    /// Other librdkafka properties for every client of the job (consumers,
    /// producers, the admin client), passed through. Values may be strings,
    /// numbers or booleans; those whose key names a credential are shown as
    /// `***` wherever the config is printed.
    #[serde(serialize_with = "serialize_redacted", deserialize_with = "deserialize_properties")]
    pub client: BTreeMap<String, String>,
    /// Extra librdkafka consumer properties, passed through unchanged (like
    /// `client`).
    #[serde(serialize_with = "serialize_redacted", deserialize_with = "deserialize_properties")]
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
            security: KafkaSecurity::default(),
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            replication_factor: 1,
            metadata_refresh_ms: 5000,
            connect_timeout_ms: 120_000,
            commit_group_offsets: true,
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    /// As derived, but with the values of credential-named properties in
    /// `client` and `consumer` shown as `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let KafkaConfig {
            brokers,
            topics,
            poll_batch,
            security,
            client,
            consumer,
            replication_factor,
            metadata_refresh_ms,
            connect_timeout_ms,
            commit_group_offsets,
        } = self;
        f.debug_struct("KafkaConfig")
            .field("brokers", brokers)
            .field("topics", topics)
            .field("poll_batch", poll_batch)
            .field("security", security)
            .field("client", &redacted(client))
            .field("consumer", &redacted(consumer))
            .field("replication_factor", replication_factor)
            .field("metadata_refresh_ms", metadata_refresh_ms)
            .field("connect_timeout_ms", connect_timeout_ms)
            .field("commit_group_offsets", commit_group_offsets)
            .finish()
    }
}

impl KafkaConfig {
    /// A config for `brokers` with every other setting at its default
    /// (plaintext, no login): for tools and tests.
    pub fn plaintext(brokers: &str) -> Self {
        KafkaConfig {
            brokers: brokers.to_string(),
            ..KafkaConfig::default()
        }
    }

    /// Checks values that parse but make no sense; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.brokers.trim().is_empty() {
            return Err(Error::config("kafka.brokers", "must not be empty"));
        }
        if self.poll_batch == 0 {
            return Err(Error::config("kafka.poll_batch", "must be > 0"));
        }
        if self.replication_factor < 1 {
            return Err(Error::config("kafka.replication_factor", "must be >= 1"));
        }
        if self.metadata_refresh_ms == 0 {
            return Err(Error::config("kafka.metadata_refresh_ms", "must be > 0"));
        }
        if self.topics.binance == self.topics.kraken {
            return Err(Error::config(
                "kafka.topics.kraken",
                "must differ from kafka.topics.binance",
            ));
        }
        self.security.validate()?;
        // One place per setting: a property that `[kafka.security]` sets
        // must not also come from the passthrough, where it would win
        // silently (or lose, depending on the order).
        for (table, map) in [("client", &self.client), ("consumer", &self.consumer)] {
            for name in self.security.property_names() {
                let alias = match name {
                    "sasl.mechanism" => "sasl.mechanisms",
                    other => other,
                };
                if let Some(key) = [name, alias].into_iter().find(|k| map.contains_key(*k)) {
                    return Err(Error::config(
                        format!("kafka.{table}.\"{key}\""),
                        "is also set by [kafka.security]; set it in one place",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[kafka.security]`: how every client of the job (consumers, producers,
/// the admin client, `k2 produce`) reaches the brokers and logs in. The
/// default is plaintext without a login.
///
/// ```toml
/// [kafka.security]
/// protocol = "SASL_SSL"
/// sasl_mechanism = "SCRAM-SHA-512"
/// username = "k2"
/// password = { file = "/run/secrets/kafka-password" }   # or { env = "K2_KAFKA_PASSWORD" }
/// ca_file = "/etc/k2/kafka-ca.pem"
/// ```
///
/// Settings that only make sense with another protocol are refused rather
/// than ignored (a password with `PLAINTEXT`, a CA file without TLS), and
/// files are checked when the config loads.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `PLAINTEXT` (the default), `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with SASL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user; required with SASL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The SASL password, from the environment or a file (see
    /// [`crate::secret`]); required with SASL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// PEM file of the CA certificates that signed the brokers'
    /// certificates (TLS). Default: the system's trust store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate, for brokers that authenticate
    /// clients by TLS (with `key_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The passphrase of `key_file`, if it is encrypted (a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_password: Option<Secret>,
}

/// How Kafka clients talk to the brokers (librdkafka's `security.protocol`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no login.
    #[default]
    #[serde(rename = "PLAINTEXT", alias = "plaintext")]
    Plaintext,
    /// TLS, optionally with a client certificate.
    #[serde(rename = "SSL", alias = "ssl")]
    Ssl,
    /// A SASL login without TLS: the credentials cross the network in the
    /// clear with `PLAIN`.
    #[serde(rename = "SASL_PLAINTEXT", alias = "sasl_plaintext")]
    SaslPlaintext,
    /// TLS, then a SASL login.
    #[serde(rename = "SASL_SSL", alias = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The name as Kafka spells it, e.g. `SASL_SSL`.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether connections use TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether clients log in with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

/// The SASL mechanisms K2 configures itself; others (GSSAPI, OAUTHBEARER)
/// go through the `kafka.client` passthrough.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    /// User and password in the clear (use it with `SASL_SSL` only).
    #[serde(rename = "PLAIN", alias = "plain")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256", alias = "scram-sha-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512", alias = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name as Kafka spells it, e.g. `SCRAM-SHA-512`.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl KafkaSecurity {
    /// The librdkafka properties these settings stand for, secrets
    /// included: for [`crate::kafka::client_config`] only, never to print.
    /// Empty for the default (plaintext), so that it changes nothing.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let KafkaSecurity {
            protocol,
            sasl_mechanism,
            username,
            password,
            ca_file,
            cert_file,
            key_file,
            key_password,
        } = self;
        let mut p = Vec::new();
        if *protocol == SecurityProtocol::Plaintext {
            return p;
        }
        p.push(("security.protocol", protocol.name().to_ascii_lowercase()));
        let path = |f: &PathBuf| absolute(f).display().to_string();
        if let Some(m) = sasl_mechanism {
            p.push(("sasl.mechanism", m.name().to_string()));
        }
        if let Some(u) = username {
            p.push(("sasl.username", u.clone()));
        }
        if let Some(pw) = password {
            p.push(("sasl.password", pw.expose().to_string()));
        }
        if let Some(f) = ca_file {
            p.push(("ssl.ca.location", path(f)));
        }
        if let Some(f) = cert_file {
            p.push(("ssl.certificate.location", path(f)));
        }
        if let Some(f) = key_file {
            p.push(("ssl.key.location", path(f)));
        }
        if let Some(pw) = key_password {
            p.push(("ssl.key.password", pw.expose().to_string()));
        }
        p
    }

    /// The names of [`KafkaSecurity::properties`].
    pub fn property_names(&self) -> Vec<&'static str> {
        self.properties().into_iter().map(|(k, _)| k).collect()
    }

    /// `SASL_SSL, SCRAM-SHA-512 as user k2`: how clients log in, for
    /// messages (never the password).
    pub fn describe(&self) -> String {
        let mut s = self.protocol.name().to_string();
        if let Some(m) = self.sasl_mechanism {
            s.push_str(&format!(", SASL {}", m.name()));
        }
        if let Some(u) = &self.username {
            s.push_str(&format!(" as user `{u}`"));
        }
        s
    }

    /// Checks that the settings fit the protocol, and that the files exist.
    pub fn validate(&self) -> Result<()> {
        let KafkaSecurity {
            protocol,
            sasl_mechanism,
            username,
            password,
            ca_file,
            cert_file,
            key_file,
            key_password,
        } = self;
        let key = |k: &str| format!("kafka.security.{k}");
        let name = protocol.name();
        if protocol.sasl() {
            if sasl_mechanism.is_none() {
                return Err(Error::config(
                    key("sasl_mechanism"),
                    format!("required with protocol {name}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
                ));
            }
            if username.as_deref().is_none_or(|u| u.trim().is_empty()) {
                return Err(Error::config(key("username"), format!("required with protocol {name}")));
            }
            match password {
                None => {
                    return Err(Error::config(
                        key("password"),
                        format!("required with protocol {name}: {{ env = \"VAR\" }} or {{ file = \"path\" }}"),
                    ));
                }
                Some(p) if p.is_empty() => {
                    return Err(Error::config(
                        key("password"),
                        format!("is empty (read from {})", p.origin()),
                    ));
                }
                Some(_) => {}
            }
        } else {
            let set = [
                ("sasl_mechanism", sasl_mechanism.is_some()),
                ("username", username.is_some()),
                ("password", password.is_some()),
            ];
            if let Some((k, _)) = set.into_iter().find(|(_, on)| *on) {
                return Err(Error::config(
                    key(k),
                    format!("is only used with protocol SASL_PLAINTEXT or SASL_SSL (protocol is {name})"),
                ));
            }
        }
        if !protocol.tls() {
            let set = [
                ("ca_file", ca_file.is_some()),
                ("cert_file", cert_file.is_some()),
                ("key_file", key_file.is_some()),
                ("key_password", key_password.is_some()),
            ];
            if let Some((k, _)) = set.into_iter().find(|(_, on)| *on) {
                return Err(Error::config(
                    key(k),
                    format!("is only used with protocol SSL or SASL_SSL (protocol is {name})"),
                ));
            }
        }
        match (cert_file, key_file) {
            (Some(_), None) => return Err(Error::config(key("key_file"), "required with kafka.security.cert_file")),
            (None, Some(_)) => return Err(Error::config(key("cert_file"), "required with kafka.security.key_file")),
            _ => {}
        }
        if key_password.is_some() && key_file.is_none() {
            return Err(Error::config(
                key("key_password"),
                "is only used with kafka.security.key_file",
            ));
        }
        for (k, file) in [("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)] {
            if let Some(f) = file {
                let path = absolute(f);
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => return Err(Error::config(key(k), format!("`{}` is not a file", path.display()))),
                    Err(e) => return Err(Error::config(key(k), format!("cannot read `{}`: {e}", path.display()))),
                }
            }
        }
        Ok(())
    }
}

/// `map` with the values of credential-named keys replaced by `***`.
fn redacted(map: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter()
        .map(|(k, v)| {
            let shown = if crate::secret::is_secret_name(k) {
                "***"
            } else {
                v.as_str()
            };
            (k.as_str(), shown)
        })
        .collect()
}

/// Serializes a librdkafka property map with credentials as `***`, so that
/// the effective config and the cluster handshake never carry them.
fn serialize_redacted<S: serde::Serializer>(
    map: &BTreeMap<String, String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    redacted(map).serialize(s)
}

/// A librdkafka property value as written in TOML: a string, number or
/// boolean, kept as the string librdkafka takes. A wrong type is reported
/// without the value, which may be a credential.
struct Property(String);

impl<'de> Deserialize<'de> for Property {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Property;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Property, E> {
                Ok(Property(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<Property, E> {
                Ok(Property(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Property, E> {
                Ok(Property(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Property, E> {
                Ok(Property(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Property, E> {
                Ok(Property(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn deserialize_properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, Property>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, Property(v))| (k, v)).collect())
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
    /// `sql` (the default: SQLite in the warehouse, or `catalog_uri`) or
    /// `rest` (an Iceberg REST catalog at `catalog_uri`).
    pub catalog: CatalogKind,
    /// Catalog name; outside readers must use the same one.
    pub catalog_name: String,
    /// Warehouse: a folder (relative paths are taken from the working
    /// directory) or `s3://bucket/prefix` (see `[s3]`). With a REST
    /// catalog, the warehouse the catalog is asked for (its own name for it,
    /// if it has one).
    pub warehouse: PathBuf,
    /// SQL catalog URI (defaults to a SQLite file `catalog.db` in a local
    /// warehouse), or the REST catalog's base URI.
    pub catalog_uri: Option<String>,
    /// REST catalog: OAuth2 client credential, `client_id:client_secret`.
    pub credential: Option<Secret>,
    /// REST catalog: a bearer token.
    pub token: Option<Secret>,
    /// Namespace of the job's tables.
    pub namespace: String,
    /// Data files are rolled at this size, as well as at every commit.
    pub target_file_size_bytes: u64,
    /// Snapshots older than this are expired, at start and every
    /// `expire_every_ms` while running (metadata only: the data files of an
    /// append-only table stay). Every commit rewrites the table's metadata,
    /// which lists every snapshot kept: at a commit a second, an hour's
    /// snapshots are a few MB.
    pub max_snapshot_age_ms: u64,
    /// ... but at least this many snapshots are kept.
    pub min_snapshots_to_keep: usize,
    /// How often a running job expires snapshots, ms.
    pub expire_every_ms: u64,
}

impl Default for IcebergConfig {
    fn default() -> Self {
        IcebergConfig {
            catalog: CatalogKind::Sql,
            catalog_name: "k2".into(),
            warehouse: PathBuf::from(".k2/warehouse"),
            catalog_uri: None,
            credential: None,
            token: None,
            namespace: "market_data".into(),
            target_file_size_bytes: 128 * 1024 * 1024,
            max_snapshot_age_ms: 3600 * 1000,
            min_snapshots_to_keep: 100,
            expire_every_ms: 5 * 60 * 1000,
        }
    }
}

impl IcebergConfig {
    /// The warehouse as an absolute path (for a local warehouse).
    pub fn warehouse_abs(&self) -> PathBuf {
        absolute(&self.warehouse)
    }

    /// Where the warehouse is.
    pub fn warehouse_location(&self) -> Location {
        Location::of(&self.warehouse)
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
    /// Where manifests, operator state, the job's lease and generations
    /// live: a folder every process reaches, or `s3://bucket/prefix` (see
    /// `[s3]`), which needs nothing shared but the store.
    pub dir: PathBuf,
    /// How many manifests to keep.
    pub keep: usize,
    /// On an object store, the job's lease lasts this long after its
    /// holder's last renewal (every third of it): a restart after a crash
    /// waits up to this long for the dead instance's lease.
    pub lease_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: PathBuf::from(".k2/checkpoints"),
            keep: 10,
            lease_ms: 10_000,
        }
    }
}

impl CheckpointConfig {
    /// This job's checkpoint folder, absolute (for local checkpoints).
    pub fn job_dir(&self, job: &str) -> PathBuf {
        absolute(&self.dir).join(job)
    }

    /// Where this job's checkpoints are.
    pub fn job_location(&self, job: &str) -> Location {
        match Location::of(&self.dir) {
            Location::Local(_) => Location::Local(self.job_dir(job)),
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket,
                prefix: join_key(&prefix, job),
            },
        }
    }
}

/// `[iceberg] catalog`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CatalogKind {
    /// A SQL catalog (SQLite by default).
    #[default]
    Sql,
    /// An Iceberg REST catalog.
    Rest,
}

/// Where a warehouse or the checkpoints are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local (or mounted) folder, absolute.
    Local(PathBuf),
    /// A prefix in an S3 bucket (no leading or trailing `/`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix, possibly empty.
        prefix: String,
    },
}

impl Location {
    /// `s3://bucket/prefix` or a folder (relative to the working directory).
    pub fn of(path: &Path) -> Location {
        let text = path.to_string_lossy();
        match text.strip_prefix("s3://").or_else(|| text.strip_prefix("s3a://")) {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                Location::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                }
            }
            None => Location::Local(absolute(path)),
        }
    }

    /// As a URI: `file:///...` or `s3://bucket/prefix`.
    pub fn uri(&self) -> String {
        match self {
            Location::Local(p) => format!("file://{}", p.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// `a/b` from `a` and `b`, either of which may be empty.
fn join_key(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// `[s3]`: the S3-compatible object store that `s3://` locations are in.
/// Credentials default to the usual `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY` environment variables.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// The endpoint, e.g. `http://127.0.0.1:8333`; AWS's if absent.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), which most S3-compatible
    /// servers want.
    pub path_style: bool,
    /// The access key id.
    pub access_key_id: Option<Secret>,
    /// The secret access key.
    pub secret_access_key: Option<Secret>,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

impl S3Config {
    /// The access key id and secret: as configured, else from the
    /// environment's `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub fn credentials(&self) -> (Option<Secret>, Option<Secret>) {
        let env = |name: &str| Secret::from_env(name).ok();
        (
            self.access_key_id.clone().or_else(|| env("AWS_ACCESS_KEY_ID")),
            self.secret_access_key.clone().or_else(|| env("AWS_SECRET_ACCESS_KEY")),
        )
    }

    /// The settings of iceberg-rust's S3 file IO (`s3.*` properties).
    pub fn iceberg_props(&self) -> Vec<(String, String)> {
        let mut props = vec![
            ("s3.region".to_string(), self.region.clone()),
            ("s3.path-style-access".to_string(), self.path_style.to_string()),
        ];
        if let Some(endpoint) = &self.endpoint {
            props.push(("s3.endpoint".into(), endpoint.clone()));
        }
        let (id, secret) = self.credentials();
        if let Some(id) = id {
            props.push(("s3.access-key-id".into(), id.expose().to_string()));
        }
        if let Some(secret) = secret {
            props.push(("s3.secret-access-key".into(), secret.expose().to_string()));
        }
        props
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
    /// dataflows', all at the top level, as a file would write them, without
    /// credentials: secrets, string values whose key names a credential
    /// (`sasl.password`, `s3.secret-access-key`, ...) and the user and
    /// password of URIs (`postgres://***@db/x`) are shown as `***`. It is
    /// what may be logged, and what the cluster handshake digests.
    pub fn effective(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a config serializes");
        if let Some(map) = v.as_object_mut()
            && let Some(serde_json::Value::Object(sections)) = map.remove("sections")
        {
            map.extend(sections);
        }
        redact_json(&mut v);
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
        self.kafka.validate()?;
        if self.iceberg.expire_every_ms < 1000 {
            return Err(Error::config("iceberg.expire_every_ms", "must be >= 1000"));
        }
        if self.iceberg.namespace.is_empty() {
            return Err(Error::config("iceberg.namespace", "must not be empty"));
        }
        if self.checkpoint.keep == 0 {
            return Err(Error::config("checkpoint.keep", "must be >= 1"));
        }
        if self.checkpoint.lease_ms < 300 {
            return Err(Error::config("checkpoint.lease_ms", "must be >= 300"));
        }
        if self.iceberg.catalog == CatalogKind::Rest && self.iceberg.catalog_uri.is_none() {
            return Err(Error::config(
                "iceberg.catalog_uri",
                "required with catalog = \"rest\": the REST catalog's base URI, e.g. http://127.0.0.1:8182",
            ));
        }
        for (key, location) in [
            ("iceberg.warehouse", Location::of(&self.iceberg.warehouse)),
            ("checkpoint.dir", Location::of(&self.checkpoint.dir)),
        ] {
            if let Location::S3 { bucket, .. } = location
                && bucket.is_empty()
            {
                return Err(Error::config(
                    key,
                    "an s3:// location needs a bucket: s3://bucket/prefix",
                ));
            }
        }
        Ok(())
    }
}

/// Hides credentials in a config as JSON (see [`Config::effective`]).
fn redact_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(s) if crate::secret::is_secret_name(k) => *s = "***".into(),
                    other => redact_json(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        serde_json::Value::String(s) if s.contains("://") => *s = crate::secret::redact_uri(s),
        _ => {}
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

    /// A file that exists, for `ca_file` and friends.
    fn some_file() -> String {
        let path = std::env::temp_dir().join(format!("k2-config-test-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, "not really a certificate").unwrap();
        path.display().to_string()
    }

    #[test]
    fn kafka_security_reaches_librdkafka_and_prints_no_secret() {
        let ca = some_file();
        let text = format!(
            r#"
[kafka]
brokers = "b:9094"
client = {{ "linger.ms" = 5, "enable.idempotence" = true, "sasl.oauthbearer.client.secret" = "oauth-s3cret" }}
[kafka.security]
protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
username = "k2"
password = {{ env = "K2_TEST_KAFKA_PASSWORD" }}
ca_file = "{ca}"
"#
        );
        let c = parse(&text, &[("K2_TEST_KAFKA_PASSWORD", "hunter2")]);
        // The variable is read from the process environment, not the override list.
        assert!(c.unwrap_err().to_string().contains("K2_TEST_KAFKA_PASSWORD is not set"));
        let text = text.replace("{ env = \"K2_TEST_KAFKA_PASSWORD\" }", "\"hunter2\"");
        let c = parse(&text, &[]).unwrap();
        let s = &c.kafka.security;
        assert_eq!(s.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(s.sasl_mechanism, Some(SaslMechanism::ScramSha512));
        let props: BTreeMap<&str, String> = s.properties().into_iter().collect();
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(props["sasl.password"], "hunter2");
        assert_eq!(props["ssl.ca.location"], ca);
        assert_eq!(c.kafka.client["linger.ms"], "5");
        assert_eq!(c.kafka.client["enable.idempotence"], "true");
        assert_eq!(s.describe(), "SASL_SSL, SASL SCRAM-SHA-512 as user `k2`");
        for shown in [
            c.effective().to_string(),
            format!("{c:?}"),
            format!("{:?}", c.kafka),
            format!("{:?}", crate::kafka::client_config(&c.kafka)),
        ] {
            assert!(!shown.contains("hunter2") && !shown.contains("oauth-s3cret"), "{shown}");
        }
        assert_eq!(c.effective()["kafka"]["security"]["password"], "***");
        assert_eq!(c.effective()["kafka"]["client"]["linger.ms"], "5");
        // The default changes nothing in the clients' settings.
        assert!(KafkaSecurity::default().properties().is_empty());
    }

    #[test]
    fn effective_hides_credentials_of_every_section() {
        let c = parse(
            r#"
[iceberg]
catalog_uri = "postgres://k2:pg-s3cret@db:5432/cat?sslpassword=q-s3cret"
[kafka.consumer]
"ssl.key.password" = "key-s3cret"
[mine]
token = "t-s3cret"
delta_ms = 5
"#,
            &[],
        )
        .unwrap();
        for shown in [c.effective().to_string(), format!("{c:?}")] {
            for secret in ["pg-s3cret", "q-s3cret", "key-s3cret", "t-s3cret"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert_eq!(
            c.effective()["iceberg"]["catalog_uri"],
            "postgres://***@db:5432/cat?sslpassword=***"
        );
        assert_eq!(c.effective()["mine"]["delta_ms"], 5);
    }

    #[test]
    fn kafka_security_refuses_what_does_not_fit() {
        let ca = some_file();
        let cases = [
            (
                "protocol = \"SASL_SSL\"".to_string(),
                "kafka.security.sasl_mechanism",
                "required with protocol SASL_SSL",
            ),
            (
                "protocol = \"SASL_SSL\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"".into(),
                "kafka.security.password",
                "required",
            ),
            (
                "protocol = \"SASL_SSL\"\nsasl_mechanism = \"PLAIN\"\npassword = \"p\"".into(),
                "kafka.security.username",
                "required",
            ),
            (
                "password = \"p\"".into(),
                "kafka.security.password",
                "only used with protocol SASL_PLAINTEXT or SASL_SSL (protocol is PLAINTEXT)",
            ),
            (
                format!(
                    "protocol = \"SASL_PLAINTEXT\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"p\"\nca_file = \"{ca}\""
                ),
                "kafka.security.ca_file",
                "only used with protocol SSL or SASL_SSL",
            ),
            (
                "protocol = \"SSL\"\nca_file = \"/surely/not/there.pem\"".into(),
                "kafka.security.ca_file",
                "cannot read `/surely/not/there.pem`",
            ),
            (
                format!("protocol = \"SSL\"\ncert_file = \"{ca}\""),
                "kafka.security.key_file",
                "required with kafka.security.cert_file",
            ),
            (
                "protocol = \"TLS\"".into(),
                "kafka.security.protocol",
                "unknown variant `TLS`",
            ),
            (
                "protocol = \"SASL_SSL\"\nsasl_mechanism = \"GSSAPI\"".into(),
                "kafka.security.sasl_mechanism",
                "unknown variant `GSSAPI`",
            ),
            (
                "password = 12345678".into(),
                "kafka.security.password",
                "expected a secret",
            ),
        ];
        for (body, key, says) in cases {
            let e = parse(&format!("[kafka.security]\n{body}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("config `{key}`")) && e.contains(says),
                "{body}: {e}"
            );
            assert!(!e.contains("12345678"), "a secret in an error: {e}");
        }
        // A setting in both places is refused; the passthrough alone is fine.
        let both = "[kafka.security]\nprotocol = \"SASL_SSL\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"p\"\n[kafka.client]\n\"sasl.mechanisms\" = \"PLAIN\"\n";
        let e = parse(both, &[]).unwrap_err().to_string();
        assert!(
            e.contains("kafka.client.\"sasl.mechanisms\"") && e.contains("set it in one place"),
            "{e}"
        );
        parse("[kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n", &[]).unwrap();
        // A passthrough value of the wrong type is not echoed.
        let e = parse("[kafka.client]\n\"sasl.password\" = [\"s3cret\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected a string, number or boolean") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let e = parse("[job]\nepoch_ms = 0\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("config `job.epoch_ms`"), "{e}");
        let e = parse("[job]\ncommit_interval_ms = 10\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("config `job.commit_interval_ms`"), "{e}");
    }
}
