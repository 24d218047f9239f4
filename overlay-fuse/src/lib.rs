//! `overlay-fuse`: a FUSE union filesystem over the [`overlay_core`] engine (fuser 0.18), and
//! the `ovl-fuse` daemon, a drop-in for fuse-overlayfs's command line.
//!
//! ```no_run
//! use overlay_core::{LayerStack, Overlay};
//! use overlay_fuse::{spawn_mount, FsConfig, MountConfig};
//!
//! let stack = LayerStack::builder()
//!     .lower("/srv/base")
//!     .upper("/srv/upper", "/srv/work")
//!     .build()?;
//! let mount = spawn_mount(
//!     Overlay::new(stack)?,
//!     "/mnt/merged".as_ref(),
//!     &MountConfig::for_current_user(FsConfig::default()),
//! )?;
//! // ... use /mnt/merged ...
//! mount.unmount()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Behaviour, as the kernel overlay: whiteouts, opaque directories and the overlay xattrs are
//! the engine's (kernel format, `user.overlay.*` for unprivileged mounts); one `st_dev` for
//! the whole mount (FUSE gives that); `st_ino` is the engine's stable inode number and is the
//! FUSE node id ([`table`]), except for a new object that got the number of a removed one
//! the kernel still holds (an `O_PATH` descriptor or a working directory in a deleted
//! file): it gets a node id never used before, and that is its `st_ino` while it exists;
//! `readdir`'s `d_ino` equals `st_ino`.
//!
//! Differences from the kernel overlay that FUSE itself imposes: `statfs` reports FUSE's
//! magic, not overlayfs's; `open(O_TMPFILE)` fails with EOPNOTSUPP (the kernel overlay
//! supports it; fuser 0.18 has no TMPFILE request); the mount's root is node id 1, so its
//! `st_ino` is 1. Inode flags (`lsattr`/`chattr`) work through the mount; the xfs-style
//! `FS_IOC_FSSETXATTR` (project ids, extent size hints) does not (EOPNOTSUPP), and
//! `FS_IOC_FSGETXATTR` reports only the flags. A FUSE open carries no name: when a lower
//! file has several hard links (one FUSE inode until a copy-up splits them), a write copies up
//! the name the kernel looked up last, which need not be the name the program opened (the
//! kernel overlay copies up the opened one). Checked side by side with a kernel mount (`nlink` of merged and plain
//! directories, `d_type`, SEEK_DATA/SEEK_HOLE, fallocate, flock, EXDEV for renaming a lower
//! directory, hard links, xattr listing, mkfifo, umask and default ACLs, utimes on
//! symlinks, inode flags): the same.
//!
//! Performance: FUSE over io_uring where the kernel offers it (one ring per CPU, served by a
//! thread pinned to that CPU, so a request and its reply stay on the caller's CPU; the
//! transport is in the vendored fuser, `third_party/fuser/src/uring.rs`; see
//! [`FsConfig::io_uring`]), else a multi-threaded session with cloned fds; PARALLEL_DIROPS, READDIRPLUS (auto),
//! ATOMIC_O_TRUNC, CACHE_SYMLINKS, long entry/attr TTLs with negative entries and kernel
//! directory caching, writeback cache, and FUSE passthrough for upper files when the daemon
//! has CAP_SYS_ADMIN in the initial user namespace (see [`fs`] for the copy-up rule and the
//! round-trip savings); a bounded inode table (`max_inodes=`).
#![warn(missing_docs)]

pub mod caller;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod idmap;
pub mod mount;
pub mod options;
mod pool;
mod prefetch;
mod sys;
pub mod table;

pub use error::{Error, Result};

/// How the daemon's log (warn level) starts the line for a copy-up it could not do for lack
/// of permission (its process cannot read the lower object, e.g. a 0600 file of root seen
/// from a user namespace); the overlay path follows, absolute, then `: ` and the cause.
pub const COPY_UP_REFUSED: &str = "copy-up refused: ";
pub use fs::{FsConfig, FsInspector, FsStats, OverlayFs};
pub use idmap::{IdMapping, IdPolicy};
pub use mount::{mount_session, spawn_mount, FuseMount, MountConfig, MountedSession, Unmounter};
