//! Typed errors, one enum per layer. Texts that callers match on are stable and tested:
//! `non-monotonic`, `store closed`, `max blocks per file must be greater than 0`, `corrupt`.

pub use crate::files::FilesError;
use std::io;
use std::path::PathBuf;

/// Errors of the WAL layer.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal io error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("wal corrupt: {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("wal record too large: {len} bytes (limit {limit})")]
    RecordTooLarge { len: usize, limit: usize },
    #[error(transparent)]
    Files(#[from] FilesError),
}

/// Errors of the store's public API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store closed")]
    Closed,
    #[error("store closed after a simulated crash; it was not closed cleanly")]
    Crashed,
    #[error(
        "non-monotonic write: height {height} is below last seen block {last_seen} (lastSeenBlock {last_seen})"
    )]
    NonMonotonic { height: u64, last_seen: u64 },
    #[error(
        "non-monotonic write: height {height} is at or below block {sealed} already sealed in a closed file (last seen block {last_seen})"
    )]
    Sealed {
        height: u64,
        sealed: u64,
        last_seen: u64,
    },
    #[error("max blocks per file must be greater than 0")]
    ZeroMaxBlocksPerFile,
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("store must be reopened: an earlier failure ({0}) left state that is only recoverable by WAL replay")]
    Poisoned(String),
    #[error("io error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("parquet error on {path}: {reason}")]
    Parquet { path: PathBuf, reason: String },
    #[error("corrupt file {path}: {reason}")]
    CorruptFile { path: PathBuf, reason: String },
    #[error("injected fault at failpoint {0}")]
    Failpoint(String),
    #[error("{0}")]
    Joined(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Joins several errors into one, keeping every message.
    pub(crate) fn join(errors: Vec<Error>) -> Option<Error> {
        match errors.len() {
            0 => None,
            1 => errors.into_iter().next(),
            _ => Some(Error::Joined(
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
