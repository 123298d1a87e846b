//! Kafka clients: the one place where K2 builds librdkafka configurations,
//! and the context every client logs through.
//!
//! Every consumer, producer and admin client of a job, of `k2 produce` and
//! of the tools starts from [`client_config`], so the brokers and the
//! security settings (`[kafka.security]`, then the `kafka.client`
//! passthrough) reach all of them alike. librdkafka reports a broker that is
//! down once per connection attempt and per client; [`Quiet`] logs such
//! errors at most once per interval per process, saying how many it held
//! back, so that an outage is a few lines in the log, not thousands.
//!
//! A login that fails (a wrong SASL password, a broker certificate the CA
//! does not vouch for) is not an outage: librdkafka would retry it forever.
//! [`Quiet`] remembers it, and [`wait_for_metadata`] gives up at once with
//! what failed, naming the brokers and the mechanism, never the password.

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::producer::ProducerContext;
use rdkafka::{ClientConfig, Message};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The settings every client shares: the brokers, `[kafka.security]` and
/// the `kafka.client` passthrough (which cannot repeat a security setting:
/// the config refuses that).
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in config.security.properties() {
        c.set(k, v);
    }
    for (k, v) in &config.client {
        c.set(k, v);
    }
    c
}

/// How a client reaches the brokers, for messages: `127.0.0.1:9094 (SASL_SSL,
/// SASL SCRAM-SHA-512 as user `k2`)`. Read from the client's own settings,
/// so it is right for the passthrough too; never shows a secret.
pub fn describe(client: &ClientConfig) -> String {
    let brokers = crate::secret::redact_uri(client.get("bootstrap.servers").unwrap_or("?"));
    let protocol = client
        .get("security.protocol")
        .unwrap_or("plaintext")
        .to_ascii_uppercase();
    let mut how = protocol;
    if let Some(m) = client.get("sasl.mechanism").or_else(|| client.get("sasl.mechanisms")) {
        how.push_str(&format!(", SASL {m}"));
    }
    if let Some(u) = client.get("sasl.username") {
        how.push_str(&format!(" as user `{u}`"));
    }
    format!("{brokers} ({how})")
}

/// The last login failure of any client of this process: when, and what
/// failed with librdkafka's reason (which names the broker and mechanism,
/// not the password).
static LOGIN_FAILURE: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// Whether `error` means the client cannot log in with its settings, which
/// retrying does not change.
fn is_login_failure(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::SSL)
    )
}

/// What failed at the last login failure after `since`, if any, e.g.
/// `the TLS handshake failed: <librdkafka's reason>`.
pub fn login_failure_since(since: Instant) -> Option<String> {
    let last = LOGIN_FAILURE.lock().unwrap_or_else(|e| e.into_inner());
    last.as_ref().filter(|(at, _)| *at >= since).map(|(_, why)| why.clone())
}

/// How long one metadata request may take before the wait reports.
const ATTEMPT: Duration = Duration::from_secs(2);

/// `topic`'s metadata, waiting (with backoff, saying why) while the brokers
/// cannot be reached, up to `timeout` (`kafka.connect_timeout_ms`). A login
/// failure ends the wait at once. Errors name the brokers and how the
/// client logs in.
pub fn wait_for_metadata(
    consumer: &BaseConsumer<Quiet>,
    client: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Metadata> {
    let started = Instant::now();
    let deadline = started + timeout;
    let brokers = describe(client);
    let mut delays = crate::retry::backoff(Duration::from_millis(500), Duration::from_secs(10));
    let login_failed = |why: String| {
        Error::Other(format!(
            "cannot connect to Kafka at {brokers}: {why}; check [kafka.security] (or the kafka.client passthrough)"
        ))
    };
    loop {
        // Short tries, so that the wait is reported while it lasts.
        let attempt = ATTEMPT.min(deadline.saturating_duration_since(Instant::now()));
        let result = consumer.fetch_metadata(Some(topic), attempt.max(Duration::from_millis(100)));
        // Client errors (a failed login among them) reach the context only
        // when the consumer is polled; it has no assignment, so this reads
        // no messages.
        let _ = consumer.poll(Duration::ZERO);
        if let Some(why) = login_failure_since(started) {
            return Err(login_failed(why));
        }
        match result {
            Ok(m) => return Ok(m),
            Err(e) if Instant::now() < deadline => {
                let wait = delays
                    .next()
                    .unwrap_or(Duration::from_secs(10))
                    .min(deadline.saturating_duration_since(Instant::now()));
                tracing::warn!(
                    brokers,
                    topic,
                    error = %e,
                    "waiting for Kafka at {brokers} (kafka.brokers); retrying in {wait:?}, giving up after kafka.connect_timeout_ms"
                );
                // Sleep in steps, so that a login failure ends the wait soon.
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    let _ = consumer.poll(Duration::ZERO);
                    if let Some(why) = login_failure_since(started) {
                        return Err(login_failed(why));
                    }
                    std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
                }
            }
            Err(e) => {
                return Err(Error::kafka(
                    format!(
                        "reach the brokers at {brokers} (kafka.brokers) for topic `{topic}` within kafka.connect_timeout_ms = {} ms",
                        timeout.as_millis()
                    ),
                    e,
                ));
            }
        }
    }
}

/// Waits until the brokers of `config` answer and accept the client's login
/// (see [`wait_for_metadata`]); `topic` need not exist.
pub fn wait_for_brokers(config: &KafkaConfig, topic: &str) -> Result<()> {
    let client = client_config(config);
    let consumer: BaseConsumer<Quiet> = client
        .create_with_context(Quiet)
        .map_err(|e| Error::kafka("create consumer", e))?;
    wait_for_metadata(
        &consumer,
        &client,
        topic,
        Duration::from_millis(config.connect_timeout_ms),
    )
    .map(|_| ())
}

/// The client context of K2's Kafka clients: librdkafka's logs and errors
/// through `tracing`, rate-limited (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

/// At most one client error line per this many ms, per process.
const LOG_EVERY_MS: u64 = 5_000;

static LAST_LOG_MS: AtomicU64 = AtomicU64::new(0);
static HELD_BACK: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// True when a line may be logged now; otherwise counts it as held back.
fn may_log() -> Option<u64> {
    let now = now_ms();
    let last = LAST_LOG_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= LOG_EVERY_MS
        && LAST_LOG_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        Some(HELD_BACK.swap(0, Ordering::Relaxed))
    } else {
        HELD_BACK.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if let Some(held) = may_log() {
                    tracing::warn!(facility = fac, held_back = held, "librdkafka: {log_message}");
                }
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // End of partition is normal progress (the source's idleness policy
        // uses it), not an error; librdkafka also reports it here.
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if eof {
            return;
        }
        if is_login_failure(&error) {
            let what = match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::SSL) => "the TLS handshake failed",
                _ => "the login failed",
            };
            *LOGIN_FAILURE.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((Instant::now(), format!("{what}: {reason}")));
        }
        if let Some(held) = may_log() {
            tracing::warn!(%error, reason, held_back = held, "waiting for Kafka: client error; librdkafka reconnects and retries");
        }
    }
}

impl ConsumerContext for Quiet {}

impl ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((e, m)) = result
            && let Some(held) = may_log()
        {
            tracing::warn!(error = %e, topic = m.topic(), held_back = held, "a record was not delivered");
        }
    }
}
