//! The userspace union engine: node-based lookup, readdir and the mutating operations with
//! the kernel overlay's semantics.
//!
//! The API is node-based: [`Overlay::lookup`] returns a [`NodeRef`] for a name in a directory
//! node, and every other operation takes nodes. A FUSE adapter only maps inode numbers to
//! nodes. [`crate::path_api`] offers path-based calls on top for library users.
//!
//! Inode numbers ([`Attr::ino`], [`DirEntry::ino`], [`Node::ino`]) are unique within the
//! overlay and stable across copy-up, like the kernel's samefs/xino behaviour.
//!
//! Concurrency: an [`Overlay`] is `Send + Sync`; there is no global lock.

// NOTE: skeleton. The engine issue implements every `todo!()` below; the signatures are the
// contract the FUSE adapter and the tests build against.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::sync::Arc;

use crate::error::Result;
use crate::stack::LayerStack;

/// A shared handle to a node (a name in the merged tree).
pub type NodeRef = Arc<Node>;

/// Kind of a file, as in `st_mode & S_IFMT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Directory,
    /// Symbolic link.
    Symlink,
    /// Character device (never 0/0 through the overlay: that is a whiteout).
    CharDevice,
    /// Block device.
    BlockDevice,
    /// FIFO.
    Fifo,
    /// Unix socket.
    Socket,
}

/// A point in time, as in `struct timespec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: u32,
}

/// Attributes of a node as seen through the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Overlay inode number: unique in the overlay, stable across copy-up.
    pub ino: u64,
    /// Kind of file.
    pub kind: FileKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub perm: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for device nodes.
    pub rdev: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Preferred I/O size.
    pub blksize: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
}

/// One entry of a merged directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Entry name (never `.` or `..`).
    pub name: OsString,
    /// Equals the `st_ino` a lookup of this name reports.
    pub ino: u64,
    /// Kind of file.
    pub kind: FileKind,
}

/// A time to set in [`SetAttr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time.
    Now,
    /// A given time.
    At(Timestamp),
}

/// Attribute changes for [`Overlay::setattr`]; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
}

/// Who creates a new object: its owner is set to these ids (as the kernel overlay does with
/// the caller's fsuid/fsgid). `None` keeps the engine process's own ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

bitflags::bitflags! {
    /// Flags of [`Overlay::rename`], as for `renameat2`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct RenameFlags: u32 {
        /// Fail with EEXIST if the target exists.
        const NOREPLACE = 1;
        /// Atomically exchange source and target.
        const EXCHANGE = 2;
    }
}

/// Filesystem statistics (those of the upper layer, or the top lower when read-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// A name in the merged tree. Obtain nodes from [`Overlay::root`] and [`Overlay::lookup`].
#[derive(Debug)]
pub struct Node {
    _private: (),
}

impl Node {
    /// The overlay inode number (same as [`Attr::ino`]).
    pub fn ino(&self) -> u64 {
        todo!()
    }

    /// Kind of file.
    pub fn kind(&self) -> FileKind {
        todo!()
    }

    /// True while the node lives only in lower layers (immutable while mounted, so callers may
    /// cache it for long).
    pub fn is_lower_only(&self) -> bool {
        todo!()
    }
}

/// The engine: a union view of a [`LayerStack`].
#[derive(Debug)]
pub struct Overlay {
    _private: (),
}

impl Overlay {
    /// Open a union view of `stack`. Prepares `work/work` in the workdir (clearing stale
    /// staging files left by a crash).
    pub fn new(stack: LayerStack) -> Result<Self> {
        let _ = stack;
        todo!()
    }

    /// The stack this overlay views.
    pub fn stack(&self) -> &LayerStack {
        todo!()
    }

    /// The root directory node.
    pub fn root(&self) -> NodeRef {
        todo!()
    }

    /// Look `name` up in directory `parent`, top layer first. ENOENT for missing or whited-out
    /// names.
    pub fn lookup(&self, parent: &NodeRef, name: &OsStr) -> Result<NodeRef> {
        let _ = (parent, name);
        todo!()
    }

    /// Attributes of `node`.
    pub fn getattr(&self, node: &NodeRef) -> Result<Attr> {
        let _ = node;
        todo!()
    }

    /// Target of a symlink.
    pub fn readlink(&self, node: &NodeRef) -> Result<OsString> {
        let _ = node;
        todo!()
    }

    /// The merged listing of directory `dir`: whiteouts hidden, names de-duplicated, in a stable
    /// order (upper entries first, then each lower top-down, each in the layer's own order).
    pub fn readdir(&self, dir: &NodeRef) -> Result<Vec<DirEntry>> {
        let _ = dir;
        todo!()
    }

    /// Open a non-directory. `flags` are `open(2)` flags (`O_RDONLY`, `O_WRONLY`, `O_RDWR`,
    /// `O_TRUNC`, `O_APPEND`, ...). Write access or `O_TRUNC` copies the file up first (no data
    /// is copied with `O_TRUNC`). The returned file is the real file in its layer.
    pub fn open(&self, node: &NodeRef, flags: i32) -> Result<File> {
        let _ = (node, flags);
        todo!()
    }

    /// Create and open a regular file (`O_EXCL` semantics are given by `flags`).
    pub fn create(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        mode: u32,
        flags: i32,
        owner: Option<Owner>,
    ) -> Result<(NodeRef, File)> {
        let _ = (parent, name, mode, flags, owner);
        todo!()
    }

    /// Create a directory. It is opaque when it replaces a whiteout.
    pub fn mkdir(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<NodeRef> {
        let _ = (parent, name, mode, owner);
        todo!()
    }

    /// Create a device node, FIFO, socket or regular file. A character device 0/0 gives EPERM.
    pub fn mknod(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        owner: Option<Owner>,
    ) -> Result<NodeRef> {
        let _ = (parent, name, mode, rdev, owner);
        todo!()
    }

    /// Create a symlink `name` -> `target`.
    pub fn symlink(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        target: &OsStr,
        owner: Option<Owner>,
    ) -> Result<NodeRef> {
        let _ = (parent, name, target, owner);
        todo!()
    }

    /// Hard-link `node` (copied up first) as `new_parent/new_name`.
    pub fn link(&self, node: &NodeRef, new_parent: &NodeRef, new_name: &OsStr) -> Result<NodeRef> {
        let _ = (node, new_parent, new_name);
        todo!()
    }

    /// Remove a non-directory; leaves a whiteout where a lower name exists.
    pub fn unlink(&self, parent: &NodeRef, name: &OsStr) -> Result<()> {
        let _ = (parent, name);
        todo!()
    }

    /// Remove a directory that is empty in the merged view; leaves a whiteout where a lower
    /// name exists.
    pub fn rmdir(&self, parent: &NodeRef, name: &OsStr) -> Result<()> {
        let _ = (parent, name);
        todo!()
    }

    /// Rename. Non-directories always work (copy-up, whiteout left at the old name if a lower
    /// object existed); directories only when they exist only in upper, EXDEV otherwise.
    pub fn rename(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        new_parent: &NodeRef,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        let _ = (parent, name, new_parent, new_name, flags);
        todo!()
    }

    /// Change attributes (copies up first).
    pub fn setattr(&self, node: &NodeRef, changes: &SetAttr) -> Result<Attr> {
        let _ = (node, changes);
        todo!()
    }

    /// Read an xattr (private overlay attributes are invisible: ENODATA).
    pub fn getxattr(&self, node: &NodeRef, name: &OsStr) -> Result<Vec<u8>> {
        let _ = (node, name);
        todo!()
    }

    /// List xattr names, without overlay-private ones.
    pub fn listxattr(&self, node: &NodeRef) -> Result<Vec<OsString>> {
        let _ = node;
        todo!()
    }

    /// Set an xattr (copies up first). `flags` are `XATTR_CREATE`/`XATTR_REPLACE`.
    pub fn setxattr(&self, node: &NodeRef, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let _ = (node, name, value, flags);
        todo!()
    }

    /// Remove an xattr (copies up first).
    pub fn removexattr(&self, node: &NodeRef, name: &OsStr) -> Result<()> {
        let _ = (node, name);
        todo!()
    }

    /// Filesystem statistics.
    pub fn statfs(&self) -> Result<StatFs> {
        todo!()
    }
}
