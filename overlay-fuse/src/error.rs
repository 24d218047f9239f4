//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// An error setting up or running a FUSE overlay mount.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or an `-o` option is invalid.
    #[error("invalid option: {0}")]
    Options(String),
    /// The layer stack or the engine refused to start.
    #[error(transparent)]
    Overlay(#[from] overlay_core::Error),
    /// Mounting (or the FUSE handshake) failed.
    #[error("mount {}: {source}", path.display())]
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// What the kernel or fusermount3 said.
        #[source]
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("unmount {}: {source}", path.display())]
    Unmount {
        /// The mountpoint.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The FUSE session ended with an error.
    #[error("FUSE session on {}: {source}", path.display())]
    Session {
        /// The mountpoint.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An EROFS image cannot be opened or read (`ovl-erofs`); `op` names what failed
    /// (the superblock, a directory, a file's data ...) and `reason` why.
    #[error("EROFS image {}: {op}: {reason}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// What was being read.
        op: String,
        /// Why it failed (the reader's message).
        reason: String,
    },
    /// Daemonizing (fork, pipe, setsid, stdio) failed.
    #[error("daemonize: {op}: {source}")]
    Daemon {
        /// The step that failed.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
