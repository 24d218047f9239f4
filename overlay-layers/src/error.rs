//! The crate's one error type. Every error names the path (on disk, or the entry's name in
//! an archive) and says what went wrong in words.

use std::path::{Path, PathBuf};

/// Errors of `overlay-layers`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{}: {op}: {}", path.display(), describe(source))]
    Io {
        /// What was being done ("cannot open directory", "cannot write").
        op: String,
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something about a path is wrong (not a directory, bad format, refused).
    #[error("{}: {reason}", path.display())]
    Path {
        /// The path concerned.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },
    /// An archive entry is hostile, broken or beyond a limit: nothing of it was written
    /// outside the target, and the apply stopped at this entry.
    #[error("archive entry {entry:?} (at byte {offset} of the tar stream): {reason}")]
    Entry {
        /// The entry's name as the archive gives it (lossy UTF-8), or `<header>` when the
        /// header itself cannot be read.
        entry: String,
        /// Offset of the entry's header in the uncompressed tar stream.
        offset: u64,
        /// Why it was refused.
        reason: String,
    },
    /// The archive as a whole cannot be read (truncated, bad compression, a bomb).
    #[error("{}: {reason}", archive.display())]
    Archive {
        /// The archive (or `-` for a stream).
        archive: PathBuf,
        /// Why.
        reason: String,
    },
    /// An external program (mksquashfs, mkfs.erofs) failed or is missing.
    #[error("{program}: {reason}")]
    Tool {
        /// The program.
        program: String,
        /// What happened, with its stderr.
        reason: String,
    },
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error about `path` caused by an I/O error.
    pub fn io(path: impl AsRef<Path>, op: &str, source: std::io::Error) -> Self {
        Error::Io {
            op: op.to_string(),
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An error about `path` caused by an errno.
    pub fn errno(path: impl AsRef<Path>, op: &str, e: rustix::io::Errno) -> Self {
        Self::io(path, op, std::io::Error::from(e))
    }

    /// An error about `path`.
    pub fn path(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::Path {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The path the error is about, if it names one on disk.
    pub fn disk_path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. } | Error::Path { path, .. } => Some(path),
            Error::Archive { archive, .. } => Some(archive),
            _ => None,
        }
    }
}

/// An I/O error in words, without the "(os error N)" suffix std adds.
pub fn describe(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}
