//! The benchmark's error type: every failure that ends a run, each rendered as one line.

use std::path::PathBuf;

/// Why a `bench serve` or `bench sweep` run stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag value or a combination of flags is not usable.
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// The tokenizer could not be found or loaded.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The dataset could not be built or read.
    #[error("dataset: {0}")]
    Dataset(String),
    /// Nothing answered at the server's address.
    #[error("server unreachable at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered, but not as needed (e.g. `/v1/models` failed).
    #[error("server error: {0}")]
    Server(String),
    /// Every benchmark request failed; `summary` lists the error counts.
    #[error("all {total} requests failed: {summary}")]
    AllFailed { total: usize, summary: String },
    /// Every point of a sweep failed.
    #[error("sweep: every point failed ({0})")]
    SweepFailed(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("plot {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

impl BenchError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io {
            path: path.into(),
            source,
        }
    }
}
