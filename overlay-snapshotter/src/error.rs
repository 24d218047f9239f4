//! The snapshotter's one error type, and the gRPC codes containerd acts on.

use std::path::{Path, PathBuf};

/// Errors of the snapshotter. Each maps to the gRPC code containerd's `errdefs` turns back
/// into its own error kinds ([`Error::code`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot (or parent) of that name: `NotFound`.
    #[error("{0}: not found")]
    NotFound(String),
    /// The key or name is taken: `AlreadyExists`.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The snapshot is in the wrong state for the call (committing a view, mounting a
    /// committed snapshot, removing a parent): `FailedPrecondition`.
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// The request itself is wrong (empty key, bad filter, immutable field): `InvalidArgument`.
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A request's worker thread failed (a bug): `Internal`.
    #[error("internal error: {0}")]
    Internal(String),
    /// The metadata database failed.
    #[error("metadata database {}: {detail}", path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

impl Error {
    /// An I/O error with its operation and path.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// The gRPC code containerd maps back to its error kind.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                tonic::Code::NotFound
            }
            Error::Io { .. } | Error::Db { .. } | Error::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        // containerd's errdefs.FromGRPC strips a leading copy of the class text; the message
        // names the snapshot and the reason.
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Result alias of the snapshotter.
pub type Result<T, E = Error> = std::result::Result<T, E>;
