//! The one error type of the K2 library.
//!
//! Errors carry the context a human needs to act: the config key, the topic
//! and partition, the table, the file. Records that fail inside a dataflow are
//! *not* errors of this kind: they are data, routed to the dead-letter output
//! (see [`crate::record::DeadLetter`]), so one bad message never stops a job.

use std::path::PathBuf;

/// Result alias for the K2 library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a K2 job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing, malformed or inconsistent.
    #[error("config `{key}`: {message}")]
    Config {
        /// Dotted path of the offending key, e.g. `job.epoch_ms`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A Kafka operation failed.
    #[error("kafka ({context}): {source}")]
    Kafka {
        /// What K2 was doing, e.g. `fetch metadata for topic t`.
        context: String,
        /// The client's error.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// An Iceberg operation failed.
    #[error("iceberg table `{table}` ({context}): {source}")]
    Iceberg {
        /// The table, `namespace.name`.
        table: String,
        /// What K2 was doing, e.g. `commit epoch 12`.
        context: String,
        /// The library's error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// A table's schema changed in a way K2 cannot write through (see
    /// [`crate::sink::iceberg::schema`]).
    #[error("iceberg table `{table}`, column `{column}`: {message}: an incompatible schema change")]
    Schema {
        /// The table, `namespace.name`.
        table: String,
        /// The column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{context} `{}`: {source}", path.display())]
    Io {
        /// What K2 was doing.
        context: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Checkpoint state is missing, corrupt, or belongs to another job.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Another instance of this job has taken over; this one must stop.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Anything else, with a message that says what.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// A config error for `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// A Kafka error with context.
    /// librdkafka's config errors repeat the value, which is hidden when
    /// the property names a credential (`sasl.password`, ...).
    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        use rdkafka::error::KafkaError;
        let source = match source {
            KafkaError::ClientConfig(code, description, key, _) if crate::secret::is_secret_name(&key) => {
                KafkaError::ClientConfig(code, description, key, "***".into())
            }
            other => other,
        };
        Error::Kafka {
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// An Iceberg error with the table and context.
    pub fn iceberg(table: impl Into<String>, context: impl Into<String>, source: iceberg::Error) -> Self {
        Error::Iceberg {
            table: table.into(),
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// Whether trying again cannot help: a wrong config or an incompatible
    /// table stays so until someone changes it, so waiting for it only
    /// hides the message.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Config { .. } | Error::Schema { .. })
    }

    /// An I/O error on `path`.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }
}
