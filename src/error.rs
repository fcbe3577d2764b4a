//! pgshift's one error type: opaque, with a message that names what is at
//! fault and accessors that classify it (the rust-postgres model).

use std::fmt;

/// What kind of failure an [`Error`] is; stable for callers to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A migration file could not be read or parsed.
    Parse,
    /// A migration is well-formed but does not fit the database (missing
    /// table, existing column, unsupported change).
    Invalid,
    /// The control state forbids the request (another migration active, no
    /// active migration, another pgshift process holds the lock).
    State,
    /// A DDL statement could not take its lock within the allowed attempts.
    LockExhausted,
    /// Postgres returned an error or the connection failed.
    Db,
    /// Reading a file or the terminal failed.
    Io,
    /// Command-line or configuration values are wrong.
    Config,
    /// A daemon's copier stopped a backfill because a pgshift command
    /// (rollback) asked for the schema.
    SteppedAside,
}

/// The error type of every pgshift operation.
pub struct Error(Box<Inner>);

struct Inner {
    kind: Kind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// `Result` with pgshift's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            source: None,
        }))
    }

    pub(crate) fn parse(message: impl Into<String>) -> Error {
        Error::new(Kind::Parse, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(Kind::Invalid, message)
    }

    pub(crate) fn state(message: impl Into<String>) -> Error {
        Error::new(Kind::State, message)
    }

    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::new(Kind::Config, message)
    }

    pub(crate) fn io(context: impl Into<String>, e: std::io::Error) -> Error {
        let context = context.into();
        Error(Box::new(Inner {
            kind: Kind::Io,
            message: format!("{context}: {e}"),
            source: Some(Box::new(e)),
        }))
    }

    /// A database error, with `context` saying what pgshift was doing.
    pub(crate) fn db(context: impl Into<String>, e: tokio_postgres::Error) -> Error {
        let context = context.into();
        let detail = describe_db_error(&e);
        Error(Box::new(Inner {
            kind: Kind::Db,
            message: if context.is_empty() {
                detail
            } else {
                format!("{context}: {detail}")
            },
            source: Some(Box::new(e)),
        }))
    }

    /// Prefix the message with more context, keeping the kind.
    pub(crate) fn context(mut self, context: impl fmt::Display) -> Error {
        self.0.message = format!("{context}: {}", self.0.message);
        self
    }

    /// The classification of this error.
    pub fn kind(&self) -> Kind {
        self.0.kind
    }

    /// The SQLSTATE code, when Postgres reported one.
    pub fn code(&self) -> Option<&str> {
        self.db_error().map(|d| d.code().code())
    }

    /// The Postgres error behind this one, if any.
    pub fn db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        self.0
            .source
            .as_ref()
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .and_then(|e| e.as_db_error())
    }

    /// The human-readable message (what `Display` prints).
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

/// Render a tokio-postgres error with Postgres' message, detail, hint and code.
pub(crate) fn describe_db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}: {})", self.0.kind, self.0.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl Error {
    /// Reclassify as [`Kind::Invalid`] (bad input found by asking Postgres).
    pub(crate) fn into_invalid(mut self) -> Error {
        self.0.kind = Kind::Invalid;
        self
    }
}
