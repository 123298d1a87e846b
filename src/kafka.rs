//! Kafka clients: the one place where K2 builds librdkafka configurations,
//! and the context every client logs through.
//!
//! Every consumer, producer and admin client of a job starts from
//! [`client_config`], so the brokers and the security settings reach all of
//! them alike. librdkafka reports a broker that is down once per connection
//! attempt and per client; [`Quiet`] logs such errors at most once per
//! interval per process, saying how many it held back, so that an outage is
//! a few lines in the log, not thousands.

use crate::config::KafkaConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::ProducerContext;
use rdkafka::{ClientConfig, Message};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The settings every client of the job shares: the brokers and, when
/// configured, the security protocol and credentials.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.client {
        c.set(k, v);
    }
    c
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
