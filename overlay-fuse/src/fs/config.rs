//! The options of an [`OverlayFs`] ([`FsConfig`]) and the view of its counters
//! ([`FsInspector`], [`FsStats`]).
//!
//! [`OverlayFs`]: super::OverlayFs

use std::ffi::OsString;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use super::plus_policy::ReaddirPlus;
use super::Inner;
use crate::idmap::IdPolicy;

/// Behaviour of an [`OverlayFs`] (the FUSE-side options; the layers are in the engine).
///
/// [`OverlayFs`]: super::OverlayFs
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Entry, attribute and negative-entry TTL (`timeout=`). Zero disables the kernel's
    /// caching of names, attributes and directory listings.
    pub timeout: Duration,
    /// ID translation and squashing.
    pub ids: IdPolicy,
    /// Report `st_nlink` 1 for every directory (`static_nlink`).
    pub static_nlink: bool,
    /// Negotiate POSIX ACLs (off with `noacl`).
    pub acl: bool,
    /// Honour fsync (off with `fsync=0` or `volatile`: fsync answers ENOSYS, which the kernel
    /// then treats as success without asking again).
    pub fsync: bool,
    /// Use the kernel's writeback cache when passthrough is not in use (`writeback=0` off).
    pub writeback: bool,
    /// Try FUSE passthrough (it is used only with CAP_SYS_ADMIN in the initial user
    /// namespace, and never together with `fsync=0`).
    pub passthrough: bool,
    /// With passthrough, give read-only opens of lower files the lower file as their
    /// backing too (`lower_passthrough=1`), so their reads never cross the daemon. A writer
    /// never gets a lower backing; a file copied up while such opens are live goes on under
    /// a new node id (same `st_ino`). Unlike the kernel overlay, whose read-only descriptors
    /// switch to the upper copy after a copy-up, those opens keep reading the lower file (as
    /// the kernel's do for a `mmap` taken before the copy-up). Off by default, for the
    /// kernel's behaviour; `ovl-fuse` turns it on for a read-only mount (no upper, or `ro`),
    /// where no copy-up can happen, unless told otherwise.
    pub lower_passthrough: bool,
    /// Which directory chunks carry attributes (`readdirplus=auto|kernel|always`, see
    /// [`ReaddirPlus`]).
    pub readdirplus: ReaddirPlus,
    /// Support xattrs (off with `noxattrs=1`: every xattr call answers ENOSYS).
    pub xattrs: bool,
    /// Serve requests through FUSE over io_uring when the kernel offers it (`io_uring=0`
    /// off): one ring per CPU, each served by a thread pinned to that CPU, so a request is
    /// served on the CPU of its caller. The kernel offers it only while
    /// `/sys/module/fuse/parameters/enable_uring` is `Y`.
    pub io_uring: bool,
    /// Mount read-only (no upper layer, or `ro`).
    pub read_only: bool,
    /// Soft limit on the inodes the daemon keeps (`max_inodes=`, 0: none). The kernel keeps
    /// every dentry it has memory for, and each holds one of our inodes; beyond the limit
    /// the least recently used ones are dropped from the kernel's cache (which then forgets
    /// them), so the daemon's memory stays bounded on huge trees.
    pub max_inodes: usize,
    /// Test hook: a lookup of this name panics inside the handler (to check that a panic
    /// becomes EIO for that request and the mount survives).
    #[doc(hidden)]
    pub panic_on_lookup: Option<OsString>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            timeout: Duration::from_secs(1_000_000_000),
            ids: IdPolicy::default(),
            static_nlink: false,
            acl: true,
            fsync: true,
            writeback: true,
            passthrough: true,
            lower_passthrough: false,
            readdirplus: ReaddirPlus::Adaptive,
            xattrs: true,
            io_uring: true,
            read_only: false,
            max_inodes: 128 * 1024,
            panic_on_lookup: None,
        }
    }
}

/// Counters of what the filesystem holds, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Inodes the kernel holds references to (including the root).
    pub inodes: usize,
    /// Open file handles.
    pub open_files: usize,
    /// Open directory handles.
    pub open_dirs: usize,
    /// Whether passthrough was negotiated (and not switched off since).
    pub passthrough: bool,
    /// Whether the writeback cache was negotiated.
    pub writeback: bool,
    /// Opens given a passthrough backing so far.
    pub passthrough_opens: u64,
    /// Opens served through the daemon so far.
    pub cached_opens: u64,
    /// Directory entries resolved ahead of the kernel's lookups so far.
    pub prefetched: u64,
    /// FUSE-over-io_uring queues serving the mount (one per possible CPU), 0 when requests
    /// come through `/dev/fuse` reads.
    pub io_uring_queues: usize,
    /// Requests served through the io_uring queues so far.
    pub io_uring_requests: u64,
}

/// A cheap, cloneable view of a running [`OverlayFs`]'s counters.
///
/// [`OverlayFs`]: super::OverlayFs
#[derive(Debug, Clone)]
pub struct FsInspector {
    pub(super) inner: Arc<Inner>,
}

impl FsInspector {
    /// Current counters.
    pub fn stats(&self) -> FsStats {
        FsStats {
            inodes: self.inner.table.len(),
            open_files: self.inner.files.len(),
            open_dirs: self.inner.dirs.len(),
            passthrough: self.inner.passthrough.load(Ordering::Relaxed),
            writeback: self.inner.writeback.load(Ordering::Relaxed),
            passthrough_opens: self.inner.passthrough_opens.load(Ordering::Relaxed),
            cached_opens: self.inner.cached_opens.load(Ordering::Relaxed),
            prefetched: self.inner.prefetch.resolved(),
            io_uring_queues: self.inner.io_uring.get().map_or(0, |s| s.queues),
            io_uring_requests: self
                .inner
                .io_uring
                .get()
                .map_or(0, |s| s.served.load(Ordering::Relaxed)),
        }
    }
}
