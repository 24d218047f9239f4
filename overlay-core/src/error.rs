//! The one error type of this crate: every error names the operation and the path.

use std::io;
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from the overlay engine, the stack validation or the kernel mount backend.
///
/// Every variant carries the path it concerns (relative to the overlay root for engine
/// operations, absolute for layer directories) and, where relevant, the operation.
/// Use [`Error::errno`] at a FUSE boundary to get the errno to report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "copy-up", "unlink", "open lower layer".
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The layer stack is not valid (missing dir, non-empty workdir, overlapping layers, ...).
    #[error("invalid layer stack: {}: {reason}", path.display())]
    InvalidStack {
        /// The layer directory at fault.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// The kernel refused a mount; `detail` holds the kernel's own message when it gave one.
    #[error("mount {}: {detail}", path.display())]
    Mount {
        /// Mount target.
        path: PathBuf,
        /// Kernel message or our explanation.
        detail: String,
        /// errno, if any.
        errno: Option<i32>,
    },
    /// Mount options conflict with each other.
    #[error("conflicting overlay options: {0}")]
    OptionConflict(String),
    /// The operation cannot be done on this machine or with these privileges (no user
    /// namespaces, no loop devices, not root, kernel too old, ...).
    #[error("{op} {}: not possible here: {reason}", path.display())]
    Unsupported {
        /// What was being attempted, e.g. "mount image lower".
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// Why it is not possible, and what would make it possible.
        reason: String,
    },
    /// An object in a layer is not what the overlay found there: it was replaced behind the
    /// overlay's back (a regular file by a FIFO, a directory by a file, ...), as a user who
    /// can write to a layer may do. The engine refuses to use it (ESTALE from
    /// [`Error::raw_os_error`], as the kernel overlay returns for a changed lower object)
    /// instead of blocking on a FIFO or serving another object.
    #[error("{op} {}: changed in its layer behind the overlay's back: {detail}", path.display())]
    Changed {
        /// What was being done, e.g. "open", "copy-up".
        op: &'static str,
        /// The path concerned (relative to the overlay root).
        path: PathBuf,
        /// What was expected and what is there.
        detail: String,
    },
    /// The upper layer's on-disk format is damaged or foreign.
    #[error("invalid overlay format at {}: {reason}", path.display())]
    Format {
        /// Where.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// Build an [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    /// Build an [`Error::Io`] from a raw errno value.
    pub fn errno(op: &'static str, path: impl Into<PathBuf>, errno: i32) -> Self {
        Self::io(op, path, io::Error::from_raw_os_error(errno))
    }

    /// The errno this error maps to at a FUSE or syscall boundary.
    pub fn raw_os_error(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::InvalidStack { .. } | Error::OptionConflict(_) => libc::EINVAL,
            Error::Mount { errno, .. } => errno.unwrap_or(libc::EINVAL),
            Error::Format { .. } => libc::EIO,
            Error::Changed { .. } => libc::ESTALE,
            Error::Unsupported { .. } => libc::EOPNOTSUPP,
        }
    }

    /// True when this is "no such file or directory".
    pub fn is_not_found(&self) -> bool {
        self.raw_os_error() == libc::ENOENT
    }
}

/// Convert a rustix errno into an io::Error.
pub(crate) fn from_rustix(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}
