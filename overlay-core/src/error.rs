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

    /// Name internal paths by what the user gave instead: every `(internal, shown)` pair
    /// replaces `internal` (and paths under it) in the path field and in the text of the
    /// error, e.g. an image lower's private mount directory by the image file. Longer
    /// internal paths should come first when one contains another.
    pub fn rename_paths(self, renames: &[(PathBuf, PathBuf)]) -> Self {
        if renames.is_empty() {
            return self;
        }
        let path = |p: PathBuf| rename_path(p, renames);
        let text = |s: String| rename_in_text(s, renames);
        match self {
            Error::Io {
                op,
                path: p,
                source,
            } => Error::Io {
                op,
                path: path(p),
                source,
            },
            Error::InvalidStack { path: p, reason } => Error::InvalidStack {
                path: path(p),
                reason: text(reason),
            },
            Error::Mount {
                path: p,
                detail,
                errno,
            } => Error::Mount {
                path: path(p),
                detail: text(detail),
                errno,
            },
            Error::OptionConflict(m) => Error::OptionConflict(text(m)),
            Error::Unsupported {
                op,
                path: p,
                reason,
            } => Error::Unsupported {
                op,
                path: path(p),
                reason: text(reason),
            },
            Error::Format { path: p, reason } => Error::Format {
                path: path(p),
                reason: text(reason),
            },
            Error::Changed {
                op,
                path: p,
                detail,
            } => Error::Changed {
                op,
                path: path(p),
                detail: text(detail),
            },
        }
    }
}

/// `p` with the first matching internal prefix of `renames` replaced by its shown name.
pub fn rename_path(p: PathBuf, renames: &[(PathBuf, PathBuf)]) -> PathBuf {
    for (from, to) in renames {
        if let Ok(rest) = p.strip_prefix(from) {
            return if rest.as_os_str().is_empty() {
                to.clone()
            } else {
                to.join(rest)
            };
        }
    }
    p
}

/// `s` with every internal path of `renames` replaced by its shown name.
pub fn rename_in_text(mut s: String, renames: &[(PathBuf, PathBuf)]) -> String {
    for (from, to) in renames {
        let from = from.to_string_lossy();
        if !from.is_empty() && s.contains(from.as_ref()) {
            s = s.replace(from.as_ref(), &to.to_string_lossy());
        }
    }
    s
}

/// Convert a rustix errno into an io::Error.
pub(crate) fn from_rustix(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_paths_names_internal_paths_as_given() {
        let renames = [(
            PathBuf::from("/tmp/ovl-image-1-2-3"),
            PathBuf::from("/srv/base.sqfs"),
        )];
        let e = Error::Mount {
            path: "/tmp/ovl-image-1-2-3/etc".into(),
            detail: "fsconfig lowerdir+=/tmp/ovl-image-1-2-3: kernel says \"no\"".into(),
            errno: Some(libc::EINVAL),
        }
        .rename_paths(&renames);
        let s = e.to_string();
        assert!(!s.contains("ovl-image-"), "{s}");
        assert_eq!(
            s,
            "mount /srv/base.sqfs/etc: fsconfig lowerdir+=/srv/base.sqfs: kernel says \"no\""
        );
        let other = Error::io("open", "/srv/x", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(
            other.rename_paths(&renames).to_string(),
            Error::io("open", "/srv/x", io::Error::from_raw_os_error(libc::ENOENT)).to_string()
        );
    }
}
