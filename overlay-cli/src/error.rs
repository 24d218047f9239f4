//! The CLI's error type: each error prints as one line, `ovl: <path>: <cause>`.

use std::path::{Path, PathBuf};

/// An error `ovl` reports before exiting.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Something went wrong with a path.
    #[error("{}: {cause}", path.display())]
    Path {
        /// The path concerned.
        path: PathBuf,
        /// What went wrong, in words.
        cause: String,
    },
    /// A problem not tied to one path (bad option value, missing program).
    #[error("{0}")]
    Message(String),
}

impl CliError {
    /// An error about `path`.
    pub fn path(path: impl AsRef<Path>, cause: impl Into<String>) -> Self {
        CliError::Path {
            path: path.as_ref().to_path_buf(),
            cause: cause.into(),
        }
    }

    /// An error about `path` caused by an I/O error.
    pub fn io(path: impl AsRef<Path>, what: &str, e: std::io::Error) -> Self {
        Self::path(path, format!("{what}: {}", describe(&e)))
    }

    /// An error not tied to a path.
    pub fn msg(m: impl Into<String>) -> Self {
        CliError::Message(m.into())
    }
}

/// How messages name the tmpfs upper: by the option that asked for it.
const TMPFS_UPPER_BY_OPTION: &str = "the tmpfs upper (--tmp)";

impl CliError {
    /// The path `from` (and paths under it) named `to` instead, in the path and the cause;
    /// `to` is shown as the [`TMPFS_UPPER_BY_OPTION`] when it is [`overlay::TMPFS_UPPER`].
    pub fn rename_prefix(self, from: &Path, to: &Path) -> Self {
        self.rename_prefixes(&[(from.to_path_buf(), to.to_path_buf())])
    }

    /// [`CliError::rename_prefix`] for several `(from, to)` pairs (longer `from` first when
    /// one contains another).
    pub fn rename_prefixes(self, renames: &[(PathBuf, PathBuf)]) -> Self {
        if renames.is_empty() {
            return self;
        }
        let e = match self {
            CliError::Path { path, cause } => CliError::Path {
                path: overlay::core::error::rename_path(path, renames),
                cause: overlay::core::error::rename_in_text(cause, renames),
            },
            CliError::Message(m) => {
                CliError::Message(overlay::core::error::rename_in_text(m, renames))
            }
        };
        e.tmpfs_by_option()
    }

    /// Name the facade's [`overlay::TMPFS_UPPER`] by the option the user gave (`--tmp`).
    fn tmpfs_by_option(self) -> Self {
        let fix = |s: &str| s.replace(overlay::TMPFS_UPPER, TMPFS_UPPER_BY_OPTION);
        match self {
            CliError::Path { path, cause } => {
                let shown = path.to_string_lossy();
                let path = if shown.starts_with(overlay::TMPFS_UPPER) {
                    PathBuf::from(fix(&shown))
                } else {
                    path
                };
                CliError::Path {
                    path,
                    cause: fix(&cause),
                }
            }
            CliError::Message(m) => CliError::Message(fix(&m)),
        }
    }

    /// Convert a facade error; errors that name no path are reported against `context`.
    /// The facade names a tmpfs upper [`overlay::TMPFS_UPPER`]; here it is named by `--tmp`.
    pub fn from_overlay(e: overlay::Error, context: &Path) -> Self {
        Self::from_overlay_raw(e, context).tmpfs_by_option()
    }

    fn from_overlay_raw(e: overlay::Error, context: &Path) -> Self {
        use overlay::core::Error as E;
        match e {
            overlay::Error::Core(E::Io { op, path, source }) => {
                CliError::path(path, format!("{op}: {}", describe(&source)))
            }
            overlay::Error::Core(E::InvalidStack { path, reason })
                if !path.as_os_str().is_empty() =>
            {
                CliError::path(path, reason)
            }
            overlay::Error::Core(E::Mount { path, detail, .. }) => CliError::path(path, detail),
            overlay::Error::Core(E::Unsupported { op, path, reason }) => {
                CliError::path(path, format!("{op}: not possible here: {reason}"))
            }
            overlay::Error::Core(E::Format { path, reason }) => CliError::path(path, reason),
            overlay::Error::Core(E::OptionConflict(m)) => {
                CliError::path(context, format!("conflicting overlay options: {m}"))
            }
            overlay::Error::NoBackend { target, reasons } => CliError::path(
                target,
                format!("no backend could mount it: {}", reasons.join("; ")),
            ),
            overlay::Error::Fuse { target, reason } => CliError::path(target, reason),
            other => CliError::path(context, other.to_string()),
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

impl From<overlay::layers::Error> for CliError {
    fn from(e: overlay::layers::Error) -> Self {
        use overlay::layers::Error as E;
        match e {
            E::Io { op, path, source } => {
                CliError::path(path, format!("{op}: {}", describe(&source)))
            }
            E::Path { path, reason } => CliError::path(path, reason),
            E::Archive { archive, reason } => CliError::path(archive, reason),
            other => CliError::msg(other.to_string()),
        }
    }
}
