//! The error type of [`crate::query`].
//!
//! A query fails for one of a few reasons that a user acts on differently:
//! the SQL is wrong ([`QueryError::Sql`]), it names a table the job does not
//! have ([`QueryError::UnknownTable`]), it asks for something the mode cannot
//! give ([`QueryError::Mode`]), the seam between the table and Kafka cannot
//! be made exact ([`QueryError::Seam`]), or a service failed
//! ([`QueryError::Engine`], the engine's own [`crate::error::Error`] with its
//! context). Messages never contain the job's Kafka client settings, which
//! may hold credentials.

/// Result alias of [`crate::query`].
pub type QueryResult<T> = std::result::Result<T, QueryError>;

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The SQL does not parse or plan: a syntax error, an unknown column or
    /// function, a type mismatch, or a statement other than a query.
    #[error("SQL: {0}")]
    Sql(String),
    /// The SQL names a table the job's namespace does not hold.
    #[error("unknown table `{table}`; the tables of namespace `{namespace}` are: {}", known.join(", "))]
    UnknownTable {
        /// The name as written in the SQL.
        table: String,
        /// The job's namespace.
        namespace: String,
        /// The tables it holds.
        known: Vec<String>,
    },
    /// The options ask for what a table or mode cannot give, e.g. the tail of
    /// a table that is not fed from Kafka.
    #[error("{0}")]
    Mode(String),
    /// The table and Kafka cannot be joined exactly at the seam, e.g. Kafka
    /// no longer holds offsets the snapshot has not read.
    #[error("seam of `{table}`: {message}")]
    Seam {
        /// The table.
        table: String,
        /// What is wrong, and what to do.
        message: String,
    },
    /// The query ran but failed while executing.
    #[error("executing the query: {0}")]
    Execution(String),
    /// The catalog, Kafka, a file: the engine's error, with its context.
    #[error(transparent)]
    Engine(#[from] crate::error::Error),
}

impl QueryError {
    /// A seam error for `table`.
    pub fn seam(table: impl Into<String>, message: impl Into<String>) -> Self {
        QueryError::Seam {
            table: table.into(),
            message: message.into(),
        }
    }
}
