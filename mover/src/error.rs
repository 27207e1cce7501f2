//! Lifeboat's one public error type.
//!
//! Rules:
//! - Every fallible public function returns [`Result`]; the error carries a [`ErrorKind`] a caller can
//!   match on, a human sentence (`context`), and a [`Retry`] status that agrees with opendal's
//!   `ErrorStatus` (permanent or temporary).
//! - `Display` is one line a user can act on. It never contains a secret: nothing that holds a
//!   password or key is ever formatted into an error.
//! - The underlying cause is kept for `Debug`, `tracing` and `--verbose` output; its gist is in the
//!   message.

use std::fmt;

/// What went wrong, coarsely; callers (and the CLI's exit codes) match on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The repository does not exist where it was looked for.
    RepositoryNotFound,
    /// The location exists but holds no Lifeboat repository.
    NotARepository,
    /// `init` on a location that already holds a repository.
    AlreadyExists,
    /// No key slot opens with the secret given.
    WrongKey,
    /// An object failed authentication or could not be decoded: damage or tampering.
    Corrupt,
    /// An object the repository refers to is missing.
    Missing,
    /// An object authenticates (the repository's key wrote it) but is in a form this version
    /// does not read: a newer Lifeboat wrote it. Not damage: nothing should delete it.
    Unsupported,
    /// The user asked for something that cannot be done (bad argument, unknown snapshot, ...).
    InvalidInput,
    /// The operation is refused to protect data (for example removing the last key).
    Refused,
    /// A local filesystem operation failed.
    Io,
    /// The storage backend failed.
    Storage,
}

/// Whether repeating the operation may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The same call will fail again.
    Permanent,
    /// A transient failure (network, throttling); retrying may succeed.
    Temporary,
}

/// Lifeboat's error: a kind, a one-line context and an optional cause.
pub struct Error {
    kind: ErrorKind,
    retry: Retry,
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Lifeboat's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A permanent error of `kind` described by `context`.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            retry: Retry::Permanent,
            context: context.into(),
            source: None,
        }
    }

    /// Attach the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Mark the error as temporary (retrying may succeed).
    #[must_use]
    pub fn temporary(mut self) -> Self {
        self.retry = Retry::Temporary;
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether a retry may succeed.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// Prefix the context with where it happened ("reading pack 1a2b…: …").
    #[must_use]
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.context = format!("{what}: {}", self.context);
        self
    }

    pub(crate) fn corrupt(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, context)
    }

    pub(crate) fn invalid(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, context)
    }

    /// A local I/O error on `what` (a path or an operation).
    pub(crate) fn io(what: impl fmt::Display, err: impl Into<std::io::Error>) -> Self {
        let err: std::io::Error = err.into();
        Self::new(ErrorKind::Io, format!("{what}: {err}")).with_source(err)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("retry", &self.retry)
            .field("context", &self.context)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    /// The cause is summarised in the message already; it is not chained again, so a printed
    /// error chain stays one readable line. `Debug` (and `--verbose` logs) still show it whole.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}

impl From<opendal::Error> for Error {
    fn from(err: opendal::Error) -> Self {
        let kind = match err.kind() {
            opendal::ErrorKind::NotFound => ErrorKind::Missing,
            _ => ErrorKind::Storage,
        };
        let temporary = err.is_temporary();
        // What went wrong at the bottom (connection refused, a server's error code): opendal's
        // messages and causes name paths, operations and URLs, never credentials or signatures.
        let mut root: Option<String> = None;
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            root = Some(c.to_string());
            cause = c.source();
        }
        let mut what = format!("storage: {}", err.kind());
        if !err.message().is_empty() {
            what = format!("{what}: {}", err.message());
        }
        if let Some(r) = root.filter(|r| !r.is_empty() && !what.contains(r.as_str())) {
            what = format!("{what}: {r}");
        }
        let what = what.replace(['\n', '\r'], " ");
        let mut e = Error::new(kind, what).with_source(err);
        if temporary {
            e = e.temporary();
        }
        e
    }
}
