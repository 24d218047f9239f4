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
//!
//! Depth: nothing in the engine recurses over the depth of the tree. Opening a directory
//! through its ancestors, copying up the ancestors of a node, building a redirected
//! directory's lower path, dropping the last node of a long chain (each node holds its
//! parent), removing a tree (the workdir's staging leftovers, [`crate::PathApi`]'s
//! `remove_dir_all`) all walk iteratively, so a directory at any depth the kernel allows costs
//! heap, not stack: a deep tree cannot overflow the stack of a FUSE worker thread.
//!
//! Layers may be writable by others while mounted: every open of a layer object is
//! non-blocking where the object is a regular file or directory (`O_NONBLOCK`, which those
//! ignore), never follows a symlink nor takes a terminal (`O_NOFOLLOW`, `O_NOCTTY`), and is
//! checked with `fstat` to be of the node's type; an object replaced behind the engine's back
//! (a FIFO where a file was) gives [`crate::Error::Changed`] (ESTALE, as the kernel overlay
//! for a changed lower object) instead of blocking a worker thread.

use std::ffi::{OsStr, OsString};
use std::fs::File;

use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::Stat;
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::stack::LayerStack;

mod acl;
mod attr;
mod copy_up;
mod file;
mod index;
mod layers;
mod lookup;
mod mutate;
mod node;
mod origin;
mod readdir;
mod real;

pub use attr::FsXattr;
pub use file::OverlayFile;
use layers::{display_path, ioerr, DirFdCache, LayerRef, Layers, RESOLVE_LAYER};
pub use node::Node;
use node::{LowerEntry, NodeState};
use real::RealObj;

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

/// The mode of a new object: permission bits (and file type for `mknod`) and the creator's
/// umask. As POSIX requires, the umask applies only where the parent directory has no
/// default ACL; with one, the ACL and `mode` decide. A bare `u32` converts with umask 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NewMode {
    /// Requested mode (`mode_t`).
    pub mode: u32,
    /// The creator's umask.
    pub umask: u32,
}

impl From<u32> for NewMode {
    fn from(mode: u32) -> Self {
        NewMode { mode, umask: 0 }
    }
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

/// When copied-up data is made durable (the kernel's `fsync=` mount option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncMode {
    /// fsync the staged copy of a file before renaming it into place (the kernel default;
    /// directories, which carry no data, are not synced, as in the kernel).
    #[default]
    Ordered,
    /// Like `Ordered`, and also fsync staged directories and the upper parent directory
    /// after the rename.
    Strict,
    /// Never fsync (the kernel's `volatile`): faster, but a crash may leave empty or
    /// partial files under their final names.
    Volatile,
}

/// What `getattr` reports for a node removed from the tree.
#[derive(Clone)]
pub(crate) enum RemovedAttr {
    /// The attributes at removal time (link count decremented).
    Attr(Attr),
    /// A non-directory that lived only in a lower layer: its lower object, which stays as it
    /// was (lower layers do not change), is read when asked (link count decremented).
    Lower(RealObj),
}

/// Tunables of an [`Overlay`].
///
/// The defaults are the kernel's on this project's reference machine (Linux 6.18 with the
/// module's defaults: `redirect_dir=N` with `redirect_always_follow=Y`, `metacopy=N`,
/// `index=N`): redirects are followed but not created, no metadata-only copy-up, no index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OverlayOptions {
    /// Durability of copy-up.
    pub fsync: FsyncMode,
    /// Copy-up data chunk size in bytes for `copy_file_range`/read-write (0: 8 MiB).
    pub copy_chunk: usize,
    /// The kernel's `redirect_dir=`: `On` lets lower and merged directories be renamed
    /// (the upper copy gets `overlay.redirect`, the old name a whiteout); `Follow` (the
    /// default) follows the redirects it finds and gives EXDEV for such renames; `NoFollow`
    /// refuses redirected directories (EPERM). With `user.overlay.*` xattrs (the kernel's
    /// `userxattr`) redirects are never followed, whatever this says, and `On` is refused
    /// by [`Overlay::with_options`], as the kernel refuses `userxattr,redirect_dir=on`.
    pub redirect_dir: crate::mount::RedirectDir,
    /// The kernel's `metacopy=on`: changing the metadata of a lower file (chmod, chown,
    /// times, xattrs, a hard link, a rename) copies up only its metadata (the upper file
    /// gets `overlay.metacopy`, and `overlay.redirect` once it is renamed); its data is
    /// copied on the first open for write or truncation. Metacopy files in the layers are
    /// followed; with `false` (the default) they are refused (EPERM), as by the kernel.
    /// Needs `redirect_dir` `On` and `trusted.overlay.*` xattrs, as the kernel's.
    pub metacopy: bool,
    /// Copy-up leaves the copy owned by the engine's process instead of copying the lower
    /// object's owner. For views that squash ownership (a FUSE mount with `squash_to_root`
    /// in a user namespace): the owner is never shown there, and an owner the namespace
    /// does not map (root's files seen from an unprivileged user) could not be set.
    pub copy_up_keeps_own_ids: bool,
    /// The kernel's `index=on` (default off, as the kernel's): hard links to lower files
    /// survive copy-up. The first copy-up of a lower file with several names goes to
    /// `workdir/index/<hex of its origin file handle>`, and each name copied up is a hard
    /// link to it; a name not copied up yet shows the indexed inode; `st_nlink` counts the
    /// names through the overlay (`overlay.nlink`). At open, the upper root's
    /// `overlay.origin` must name the top lower layer's root (set when absent, ESTALE when
    /// another), and the index directory's `overlay.upper` the upper root. As the kernel,
    /// the index falls back to off (with a warning) where the layers' filesystems cannot
    /// make file handles or two lower filesystems share a UUID. Needs an upper layer
    /// (ignored without one, as by the kernel). Not done: directories are never indexed
    /// (the kernel does that for `nfs_export` only), and without CAP_DAC_READ_SEARCH (no
    /// `open_by_handle_at`) a name already copied up reports its upper inode's number and
    /// link count, and the mount-time cleanup of stale and orphan entries is skipped.
    pub index: bool,
}

/// The engine: a union view of a [`LayerStack`].
///
/// Differences from the kernel overlay (documented, deliberate or not yet done):
/// * `redirect_dir` and `metacopy` are options ([`OverlayOptions`]) with the kernel's
///   defaults (`follow`, off) and its on-disk format: with `redirect_dir=on` renaming a lower
///   or merged directory writes `overlay.redirect` (EXDEV otherwise, or for an absolute
///   redirect over the kernel's 256 bytes); with `metacopy=on` metadata changes of lower
///   files copy up metadata only. Redirects are followed in the upper and in lower layers
///   (not read in the bottom layer, as the kernel); `nofollow` refuses them (EPERM).
///   With `index` ([`OverlayOptions::index`]) hard links to lower files survive copy-up, in
///   the kernel's format; `nfs_export` is not supported. Not followed either: the redirect of a metacopy file
///   inside a lower layer, and a redirect on an intermediate component of an absolute
///   redirect's path (the kernel follows both).
/// * A renamed merged directory's upper copy is reached by name: a concurrent rename of it
///   while a lookup walks through it may send that lookup to the directory now at the name
///   (pure upper directories are checked by inode number).
/// * With `user.overlay.*` xattrs ([`crate::XattrNamespace::User`], the kernel's
///   `userxattr`) redirects are never followed, as the kernel forces `redirect_dir=nofollow`
///   there: any user can write `user.overlay.redirect` on an upper directory they own, and
///   following it would show them a lower directory they cannot read. Such a directory's
///   lookup fails with EPERM where its parent has lower directories (the xattr is ignored
///   where it has none), as the kernel's "refusing to follow redirect".
/// * A bad `overlay.redirect` fails only its own directory, with the kernel's errno: EINVAL
///   for a malformed value, EACCES for `.`/`..` components; the parent's listing leaves the
///   directory out (as the kernel does when it computes the entry's d_ino) and goes on.
/// * `.wh.<name>` AUFS whiteouts and `.wh..wh..opq` markers are honoured in lower layers only;
///   in the upper layer such names are ordinary files (as for the kernel).
/// * A [`File`] from [`Overlay::open`] opened read-only before a copy-up keeps reading the
///   lower file; [`Overlay::open_file`] gives an [`OverlayFile`] that follows the copy-up, as
///   the kernel's files do.
/// * Layers never include submounts, as for the kernel: with CAP_SYS_ADMIN every layer is
///   opened on a private detached mount of just its filesystem (`open_tree` without
///   `AT_RECURSIVE`), so a mount point inside a layer shows the directory it covers. Without
///   that privilege the engine cannot see covered directories: it resolves with
///   `RESOLVE_NO_XDEV` and shows a mount point as an empty directory (attributes of the
///   mounted root, inode number of the covered directory); a file bind-mounted over a
///   file still shows the mounted file. The kernel refuses such layers unprivileged.
/// * As the kernel, the engine never updates the atime of a lower object: with CAP_SYS_ADMIN
///   the private layer mounts are noatime; without, lower files and directories are opened
///   with `O_NOATIME` where the caller owns them (or has CAP_FOWNER), and reading a lower
///   symlink (`readlinkat` has no such flag) or an object owned by someone else can update
///   its atime under the layer's own mount options.
pub struct Overlay {
    stack: LayerStack,
    layers: Layers,
    root: NodeRef,
    opts: OverlayOptions,
    /// Serialises cross-directory renames, as the kernel's `s_vfs_rename_mutex`.
    rename_lock: Mutex<()>,
    /// Serialises the changes of the names of indexed inodes (index=on): the overlay link
    /// count in `overlay.nlink` is read and rewritten around each (the kernel's inode lock
    /// in `ovl_nlink_start`/`ovl_nlink_end`). A leaf lock.
    index_lock: Mutex<()>,
    /// Open directories of directory nodes, per layer.
    dir_fds: DirFdCache,
    /// Attributes of removed nodes at removal time, reported by `getattr` (open files
    /// outlive their name), keyed by node address (the weak reference pins the address).
    removed: Mutex<std::collections::HashMap<usize, (std::sync::Weak<Node>, RemovedAttr)>>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("stack", &self.stack)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl FileKind {
    /// The kind of file an `st_mode` describes (anything unknown counts as a regular file).
    pub fn from_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => FileKind::File,
        }
    }
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }
}

fn ts(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: nsec as u32,
    }
}

/// Build an [`Attr`] from a real stat.
pub(crate) fn attr_from_stat(st: &Stat, ino: u64) -> Attr {
    Attr {
        ino,
        kind: FileKind::from_mode(st.st_mode),
        perm: st.st_mode & 0o7777,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        blksize: st.st_blksize as u32,
        atime: ts(st.st_atime, st.st_atime_nsec as i64),
        mtime: ts(st.st_mtime, st.st_mtime_nsec as i64),
        ctime: ts(st.st_ctime, st.st_ctime_nsec as i64),
    }
}

/// Validate a single name component for lookups and creations.
pub(crate) fn check_name(op: &'static str, parent: &Node, name: &OsStr) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    let errno = if b.is_empty() {
        libc::ENOENT
    } else if b.contains(&b'/') || b.contains(&0) {
        libc::EINVAL
    } else if b.len() > 255 {
        libc::ENAMETOOLONG
    } else {
        return Ok(());
    };
    Err(Error::errno(
        op,
        display_path(&parent.rel_path().join(name)),
        errno,
    ))
}

fn is_dot(name: &OsStr) -> bool {
    name == "." || name == ".."
}

impl Overlay {
    /// Open a union view of `stack`. Prepares `work/work` in the workdir (clearing stale
    /// staging files left by a crash) and locks the workdir: a second overlay on the same
    /// upper/workdir gets EBUSY, as with the kernel.
    pub fn new(stack: LayerStack) -> Result<Self> {
        Self::with_options(stack, OverlayOptions::default())
    }

    /// Like [`Overlay::new`], with tunables.
    pub fn with_options(stack: LayerStack, opts: OverlayOptions) -> Result<Self> {
        Self::open_with(stack, opts, true)
    }

    /// `detach`: try private detached mounts for the layers (false: only `RESOLVE_NO_XDEV`,
    /// as without privilege; for tests).
    pub(crate) fn open_with(stack: LayerStack, opts: OverlayOptions, detach: bool) -> Result<Self> {
        if stack.xattr_namespace() == crate::XattrNamespace::User
            && opts.redirect_dir == crate::mount::RedirectDir::On
        {
            return Err(Error::OptionConflict(
                "redirect_dir=on with user.overlay.* xattrs (userxattr): any user could forge \
                 the redirects, so the kernel refuses this combination too"
                    .into(),
            ));
        }
        if opts.metacopy && opts.redirect_dir != crate::mount::RedirectDir::On {
            return Err(Error::OptionConflict(format!(
                "metacopy=on needs redirect_dir=on (a renamed metacopy file carries a redirect \
                 to its data), but redirect_dir={}",
                opts.redirect_dir.as_str()
            )));
        }
        let mut layers = Layers::open(&stack, detach)?;
        index::open_index(&mut layers, &opts)?;
        let mut state = NodeState {
            upper: layers.upper.is_some(),
            ..Default::default()
        };
        for (i, l) in layers.lowers[..layers.normal_lowers].iter().enumerate() {
            let xw = layers.lower_dir_opacity(std::os::fd::AsFd::as_fd(&*l.fd))
                == crate::format::Opacity::HasXWhiteouts;
            state.lowers.push(LowerEntry {
                layer: i as u16,
                xwhiteouts: xw,
            });
        }
        let top = state.top().expect("at least one layer");
        let root_fd = layers.root(top).fd.clone();
        let st = rustix::fs::fstat(&*root_fd)
            .map_err(|e| ioerr("stat layer root", &layers.root(top).path, e))?;
        // As the kernel: the root reports the upper root's inode number when there is an
        // upper layer, else the top lower root's.
        let ino = layers.map_ino(top, st.st_ino);
        let root = Arc::new(Node::new(
            ino,
            FileKind::Directory,
            None,
            OsStr::new(""),
            state,
        ));
        let ovl = Overlay {
            stack,
            layers,
            root,
            opts,
            rename_lock: Mutex::new(()),
            index_lock: Mutex::new(()),
            dir_fds: DirFdCache::new(),
            removed: Mutex::new(std::collections::HashMap::new()),
        };
        ovl.cleanup_index();
        Ok(ovl)
    }

    /// The stack this overlay views.
    pub fn stack(&self) -> &LayerStack {
        &self.stack
    }

    /// The options this overlay runs with.
    pub fn options(&self) -> &OverlayOptions {
        &self.opts
    }

    /// The kernel's `ovl_allow_offline_changes`: none of the features that make lower
    /// layers unchangeable while unmounted is on (`redirect_dir=on`, `metacopy`, `index`;
    /// the kernel also names `xino=on`). When one is, the kernel marks new directories in
    /// merged directories opaque.
    pub(crate) fn allow_offline_changes(&self) -> bool {
        !(self.opts.metacopy
            || self.index_dir().is_some()
            || self.opts.redirect_dir == crate::mount::RedirectDir::On && self.follow_redirects())
    }

    /// The real object holding `node`'s data: its top object, or for a metadata-only copy
    /// the lower file below it (the last of its lowers).
    pub(crate) fn data_real(&self, op: &'static str, node: &NodeRef) -> Result<RealObj> {
        let data = if self.metacopy_now(node) {
            let st = node.state.read();
            if st.data_missing {
                // ENOENT, as the kernel's (6.18, observed) failed lazy lookup of the data.
                return Err(self.node_err(
                    "open data (a metacopy file whose data is in no data-only layer)",
                    node,
                    Errno::NOENT,
                ));
            }
            st.lowers.as_slice().last().map(|l| l.layer)
        } else {
            None
        };
        match data {
            Some(l) if !node.is_unlinked() => self
                .real(node, LayerRef::Lower(l))
                .map_err(|e| self.node_err(op, node, e)),
            _ => self.top_real(op, node),
        }
    }

    /// The root directory node.
    pub fn root(&self) -> NodeRef {
        self.root.clone()
    }

    /// The real object of `node` in `layer`.
    pub(crate) fn real(&self, node: &Node, layer: LayerRef) -> std::result::Result<RealObj, Errno> {
        // The upper inode of a name not copied up yet of an indexed lower file: its entry.
        if layer == LayerRef::Upper && node.kind != FileKind::Directory {
            let alias = {
                let st = node.state.read();
                (!st.upper && st.indexed)
                    .then(|| st.index.clone())
                    .flatten()
            };
            if let Some(info) = alias {
                return self.index_real(&info);
            }
        }
        // A lower directory found through a redirect lives under another path.
        if let LayerRef::Lower(l) = layer {
            let redirected = node.state.read().redirect.clone();
            if let Some(p) = redirected.as_ref().and_then(|r| r.path_in(l)) {
                let parent = p.parent().unwrap_or(std::path::Path::new(""));
                return Ok(RealObj {
                    layer,
                    dir: self.open_lower_path(layer, parent)?,
                    name: p.file_name().map(|n| n.to_os_string()),
                });
            }
        }
        match node.parent_name() {
            None => Ok(RealObj {
                layer,
                dir: self.layers.root(layer).fd.clone(),
                name: None,
            }),
            Some((p, name)) => Ok(RealObj {
                layer,
                dir: self.dir_fd(&p, layer)?,
                name: Some(name.as_os_str().to_os_string()),
            }),
        }
    }

    /// The directory of directory node `dir` in `layer` (cached; opened beneath the
    /// parent's directory, one component, never following a symlink or crossing a mount).
    ///
    /// Iterative: the ancestors up to the nearest one whose directory is at hand (cached, the
    /// layer root, or a redirected one) are collected on the heap and opened from the top
    /// down, so a directory at any depth costs no stack.
    pub(crate) fn dir_fd(
        &self,
        dir: &NodeRef,
        layer: LayerRef,
    ) -> std::result::Result<Arc<std::os::fd::OwnedFd>, Errno> {
        // A concurrent rename of a pure upper directory on the way: start again.
        for _ in 0..8 {
            if let Some(fd) = self.dir_fd_at_hand(dir, layer)? {
                return Ok(fd);
            }
            // `chain[i + 1]` is the parent of `chain[i]`; the last one's parent is at hand.
            let mut chain: Vec<NodeRef> = vec![dir.clone()];
            let mut fd = loop {
                let (parent, _) = chain
                    .last()
                    .and_then(|n| n.parent_name())
                    .expect("the root is at hand");
                if let Some(fd) = self.dir_fd_at_hand(&parent, layer)? {
                    chain.push(parent);
                    break fd;
                }
                chain.push(parent);
            };
            let mut moved = false;
            for pair in chain.windows(2).rev() {
                let (node, parent) = (&pair[0], &pair[1]);
                match self.open_child_dir(&fd, parent, node, layer)? {
                    Some(child) => fd = child,
                    None => {
                        moved = true;
                        break;
                    }
                }
            }
            if !moved {
                return Ok(fd);
            }
        }
        Err(Errno::NOENT)
    }

    /// The directory of `dir` in `layer` when it needs no walk from an ancestor: cached, the
    /// layer root, or (in a lower layer) where its redirect points.
    fn dir_fd_at_hand(
        &self,
        dir: &NodeRef,
        layer: LayerRef,
    ) -> std::result::Result<Option<Arc<std::os::fd::OwnedFd>>, Errno> {
        if let Some(fd) = self.dir_fds.get(dir, layer) {
            return Ok(Some(fd));
        }
        if dir.parent_name().is_none() {
            return Ok(Some(self.layers.root(layer).fd.clone()));
        }
        // A redirected directory's lower directories are where its redirect points.
        if let LayerRef::Lower(l) = layer {
            let redirected = dir.state.read().redirect.clone();
            if let Some(p) = redirected.as_ref().and_then(|r| r.path_in(l)) {
                let fd = self.open_lower_path(layer, p)?;
                self.dir_fds.insert(dir, layer, fd.clone());
                return Ok(Some(fd));
            }
        }
        Ok(None)
    }

    /// Open directory node `dir` in `layer` beneath `parent_fd`, the directory of `parent`,
    /// and cache it. `None` when `dir` is no longer a child of `parent`, or (pure upper
    /// directories move) the name now holds another directory: a concurrent rename.
    fn open_child_dir(
        &self,
        parent_fd: &std::os::fd::OwnedFd,
        parent: &NodeRef,
        dir: &NodeRef,
        layer: LayerRef,
    ) -> std::result::Result<Option<Arc<std::os::fd::OwnedFd>>, Errno> {
        use rustix::fs::{Mode, OFlags};
        let Some((now_parent, name)) = dir.parent_name() else {
            return Ok(None);
        };
        if !Arc::ptr_eq(&now_parent, parent) {
            return Ok(None);
        }
        if dir.is_unlinked() {
            return Err(Errno::NOENT);
        }
        // O_DIRECTORY: a FIFO put in its place is refused (ENOTDIR) before it is opened.
        let fd = rustix::fs::openat2(
            parent_fd,
            name.as_os_str(),
            OFlags::RDONLY
                | OFlags::DIRECTORY
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE_LAYER,
        )?;
        // Only pure upper directories move (renames of merged ones are EXDEV): check
        // that a concurrent rename did not make us open another directory.
        if layer == LayerRef::Upper && dir.state.read().lowers.is_empty() {
            let st = rustix::fs::fstat(&fd)?;
            if self.layers.map_ino(LayerRef::Upper, st.st_ino) != dir.ino() {
                return Ok(None);
            }
        }
        let fd = Arc::new(fd);
        self.dir_fds.insert(dir, layer, fd.clone());
        Ok(Some(fd))
    }

    /// Forget the cached directory fds of a directory node removed from the tree (or
    /// replaced in upper).
    pub(crate) fn forget_dir_fds(&self, dir: &NodeRef) {
        if dir.kind != FileKind::Directory {
            return;
        }
        self.dir_fds.remove(dir, LayerRef::Upper);
        let st = dir.state.read().clone();
        for le in &st.lowers {
            self.dir_fds.remove(dir, LayerRef::Lower(le.layer));
        }
    }

    /// The topmost real object of `node`.
    pub(crate) fn top_real(&self, op: &'static str, node: &Node) -> Result<RealObj> {
        self.refresh_index(node);
        let (top, alias) = {
            let st = node.state.read();
            let alias = (!st.upper && st.indexed)
                .then(|| st.index.clone())
                .flatten();
            (st.top(), alias)
        };
        if let Some(info) = alias {
            // A name not copied up yet of an indexed lower file: the index entry is it.
            if node.is_unlinked() {
                return Err(self.node_err(op, node, Errno::NOENT));
            }
            return self
                .index_real(&info)
                .map_err(|e| self.node_err(op, node, e));
        }
        let Some(top) = top else {
            return Err(self.node_err(op, node, Errno::NOENT));
        };
        if node.is_unlinked() {
            return Err(self.node_err(op, node, Errno::NOENT));
        }
        self.real(node, top).map_err(|e| self.node_err(op, node, e))
    }

    pub(crate) fn node_err(&self, op: &'static str, node: &Node, e: Errno) -> Error {
        ioerr(op, display_path(&node.rel_path()), e)
    }

    pub(crate) fn name_err(
        &self,
        op: &'static str,
        parent: &Node,
        name: &OsStr,
        e: Errno,
    ) -> Error {
        ioerr(op, display_path(&parent.rel_path().join(name)), e)
    }

    pub(crate) fn check_writable(
        &self,
        op: &'static str,
        path: impl FnOnce() -> std::path::PathBuf,
    ) -> Result<()> {
        if self.layers.upper.is_none() {
            return Err(ioerr(op, display_path(&path()), Errno::ROFS));
        }
        Ok(())
    }

    fn check_dir(&self, op: &'static str, node: &Node) -> Result<()> {
        if node.kind != FileKind::Directory {
            return Err(self.node_err(op, node, Errno::NOTDIR));
        }
        Ok(())
    }

    /// Look `name` up in directory `parent`, top layer first. ENOENT for missing or whited-out
    /// names. `.` and `..` are accepted (`..` of the root is the root).
    pub fn lookup(&self, parent: &NodeRef, name: &OsStr) -> Result<NodeRef> {
        self.check_dir("lookup", parent)?;
        if name == "." {
            return Ok(parent.clone());
        }
        if name == ".." {
            return Ok(parent
                .parent_name()
                .map(|(p, _)| p)
                .unwrap_or_else(|| parent.clone()));
        }
        check_name("lookup", parent, name)?;
        let _g = parent.dir_lock().read();
        self.lookup_locked(parent, name)?
            .ok_or_else(|| self.name_err("lookup", parent, name, Errno::NOENT))
    }

    /// [`Overlay::lookup`] and [`Overlay::getattr`] in one call: when the name is resolved
    /// through the layers (no live node for it), the attributes come from the same `lstat`,
    /// saving one system call per lookup (a FUSE lookup reply needs both).
    pub fn lookup_attr(&self, parent: &NodeRef, name: &OsStr) -> Result<(NodeRef, Attr)> {
        if name == "." || name == ".." {
            let n = self.lookup(parent, name)?;
            let a = self.getattr(&n)?;
            return Ok((n, a));
        }
        self.check_dir("lookup", parent)?;
        check_name("lookup", parent, name)?;
        let (node, stat) = {
            let _g = parent.dir_lock().read();
            self.lookup_locked_stat(parent, name)?
                .ok_or_else(|| self.name_err("lookup", parent, name, Errno::NOENT))?
        };
        match stat {
            Some(st) => {
                let mut a = attr_from_stat(&st, node.ino());
                if node.kind == FileKind::Directory && node.state.read().is_merge() {
                    a.nlink = 1;
                }
                self.metacopy_blocks(&node, &mut a);
                self.indexed_nlink_of(&node, &mut a);
                Ok((node, a))
            }
            None => {
                let a = self.getattr(&node)?;
                Ok((node, a))
            }
        }
    }

    /// Lookup with `parent.dir_lock` held (shared or exclusive).
    pub(crate) fn lookup_locked(&self, parent: &NodeRef, name: &OsStr) -> Result<Option<NodeRef>> {
        Ok(self.lookup_locked_stat(parent, name)?.map(|(n, _)| n))
    }

    /// Lookup with `parent.dir_lock` held; also the `lstat` of the node's top object when
    /// this call resolved it (None for a node that was already live).
    fn lookup_locked_stat(
        &self,
        parent: &NodeRef,
        name: &OsStr,
    ) -> Result<Option<(NodeRef, Option<Stat>)>> {
        if parent.is_unlinked() {
            return Ok(None);
        }
        if let Some(n) = parent.cached_child(name) {
            return Ok(Some((n, None)));
        }
        let Some(res) = self.resolve(parent, name)? else {
            return Ok(None);
        };
        let node = Arc::new(Node::new(
            res.ino,
            res.kind,
            Some(parent.clone()),
            name,
            res.state,
        ));
        let got = parent.child_or_insert(name, node.clone());
        // Another thread registered the name first: its node, attributes read afresh.
        let stat = if Arc::ptr_eq(&got, &node) {
            res.stat
        } else {
            None
        };
        drop(node);
        Ok(Some((got, stat)))
    }

    /// Attributes of `node`.
    ///
    /// A node removed from the tree reports its attributes from removal time (link count
    /// decremented), as `fstat` on an open, unlinked file does.
    pub fn getattr(&self, node: &NodeRef) -> Result<Attr> {
        match self.getattr_now(node) {
            // Another kind of object at the name: a removal may be replacing it.
            Err(Error::Changed { .. }) => self.attr_after_removal_race(node),
            r => r,
        }
    }

    /// [`Overlay::getattr`] without waiting for a removal in flight (for callers holding
    /// the node's copy lock): an object of another kind at the name is [`Error::Changed`].
    pub(crate) fn getattr_now(&self, node: &NodeRef) -> Result<Attr> {
        if node.is_unlinked() {
            let key = Arc::as_ptr(node) as usize;
            let stashed = self.removed.lock().get(&key).map(|(_, a)| a.clone());
            match stashed {
                Some(RemovedAttr::Attr(a)) => return Ok(a),
                Some(RemovedAttr::Lower(real)) => {
                    let st = real.stat().map_err(|e| self.node_err("getattr", node, e))?;
                    let mut a = attr_from_stat(&st, node.ino());
                    a.nlink = a.nlink.saturating_sub(1);
                    return Ok(a);
                }
                None => {}
            }
        }
        let real = self.top_real("getattr", node)?;
        let st = real.stat().map_err(|e| self.node_err("getattr", node, e))?;
        self.check_kind("getattr", node, &st)?;
        let mut a = attr_from_stat(&st, node.ino());
        if node.kind == FileKind::Directory && node.state.read().is_merge() {
            // As the kernel: counting subdirectories of a merged directory is not worth it.
            a.nlink = 1;
        }
        self.metacopy_blocks(node, &mut a);
        self.indexed_nlink_of(node, &mut a);
        Ok(a)
    }

    /// An indexed inode (index=on) reports the overlay's link count of its names, as the
    /// kernel's (`overlay.nlink`), not its upper inode's.
    fn indexed_nlink_of(&self, node: &NodeRef, a: &mut Attr) {
        let info = {
            let st = node.state.read();
            (st.indexed && node.kind != FileKind::Directory)
                .then(|| st.index.clone())
                .flatten()
        };
        if let Some(info) = info {
            a.nlink = self.indexed_nlink(&info, a.nlink as u64);
        }
    }

    /// As the kernel: a metadata-only copy reports the blocks of its data (the lower file),
    /// not those of the sparse upper file.
    fn metacopy_blocks(&self, node: &NodeRef, a: &mut Attr) {
        // The first operand's guard would live through the second: read it on its own.
        let metacopy = node.state.read().metacopy;
        if !metacopy || !self.metacopy_now(node) {
            return;
        }
        if let Ok(st) = self
            .data_real("getattr", node)
            .and_then(|r| r.stat().map_err(|e| self.node_err("getattr", node, e)))
        {
            a.blocks = st.st_blocks as u64;
        }
    }

    /// Target of a symlink.
    pub fn readlink(&self, node: &NodeRef) -> Result<OsString> {
        if node.kind != FileKind::Symlink {
            return Err(self.node_err("readlink", node, Errno::INVAL));
        }
        let real = self.top_real("readlink", node)?;
        real.readlink()
            .map_err(|e| self.node_err("readlink", node, e))
    }

    /// Open a non-directory. `flags` are `open(2)` flags (`O_RDONLY`, `O_WRONLY`, `O_RDWR`,
    /// `O_TRUNC`, `O_APPEND`, ...). Write access or `O_TRUNC` copies the file up first (no data
    /// is copied with `O_TRUNC`). The returned file is the real file in its layer.
    /// A directory may be opened read-only (EISDIR for write access); a symlink gives ELOOP.
    ///
    /// A regular file or directory is opened with `O_NONBLOCK` (which they ignore; the
    /// returned file keeps the flag) and checked to be one: an object replaced behind the
    /// overlay's back (a FIFO where a file was) gives [`Error::Changed`] (ESTALE) at once
    /// instead of blocking.
    pub fn open(&self, node: &NodeRef, flags: i32) -> Result<File> {
        use rustix::fs::OFlags;
        let acc = flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if node.kind == FileKind::Symlink {
            return Err(self.node_err("open", node, Errno::LOOP));
        }
        if node.kind == FileKind::Directory && write {
            return Err(self.node_err("open", node, Errno::ISDIR));
        }
        let mut f = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY);
        if write {
            self.check_writable("open", || node.rel_path())?;
            self.copy_up_node(node, flags & libc::O_TRUNC == 0)?;
        } else {
            f &= !(libc::O_TRUNC | libc::O_APPEND);
        }
        let real = self.data_real("open", node)?;
        match self.open_real("open", node, &real, OFlags::from_bits_retain(f as u32)) {
            Ok((fd, _)) => Ok(File::from(fd)),
            Err(e @ Error::Changed { .. }) => {
                // The name was being removed (a whiteout, or another file renamed over it,
                // took its place): once the removal is done, the name is gone.
                drop(node.copy_lock.lock());
                if node.is_unlinked() {
                    Err(self.node_err("open", node, Errno::NOENT))
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// `node`'s name showed an object of another kind: an unlink, rmdir or rename is
    /// replacing it (a whiteout takes a file's place in one rename) while we look. Once
    /// that removal is done (it holds the node's copy lock throughout), the attributes are
    /// those of the removed object, as `fstat` of a deleted file gives them; an object that
    /// is still not of the node's kind was changed behind the overlay's back.
    fn attr_after_removal_race(&self, node: &NodeRef) -> Result<Attr> {
        drop(node.copy_lock.lock());
        self.getattr_now(node)
    }

    /// Flush a file's upper copy to disk (`fdatasync` when `datasync`). A lower-only file
    /// has nothing to flush (the kernel does not sync lower files either). Use the open
    /// file's own `sync_all` when one is at hand; this is for callers holding only the node.
    pub fn fsync(&self, node: &NodeRef, datasync: bool) -> Result<()> {
        use rustix::fs::OFlags;
        if node.kind == FileKind::Directory {
            return self.fsync_dir(node, datasync);
        }
        if !node.state.read().upper || node.is_unlinked() {
            return Ok(());
        }
        let real = self
            .real(node, LayerRef::Upper)
            .map_err(|e| self.node_err("fsync", node, e))?;
        // O_PATH cannot be synced; symlinks and special files have no data of their own.
        if node.kind != FileKind::File {
            return Ok(());
        }
        let (fd, _) = self.open_real("fsync", node, &real, OFlags::RDONLY)?;
        sync_fd(&fd, datasync).map_err(|e| self.node_err("fsync", node, e))
    }

    /// Flush a directory's upper copy (its entries) to disk. Nothing to do for a directory
    /// that lives only in lower layers. ENOTDIR for a non-directory.
    pub fn fsync_dir(&self, node: &NodeRef, datasync: bool) -> Result<()> {
        use rustix::fs::OFlags;
        self.check_dir("fsync", node)?;
        if !node.state.read().upper || node.is_unlinked() {
            return Ok(());
        }
        let real = self
            .real(node, LayerRef::Upper)
            .map_err(|e| self.node_err("fsync", node, e))?;
        let (fd, _) = self.open_real("fsync", node, &real, OFlags::RDONLY)?;
        sync_fd(&fd, datasync).map_err(|e| self.node_err("fsync", node, e))
    }

    /// Filesystem statistics (upper layer, or the top lower layer when read-only).
    pub fn statfs(&self) -> Result<StatFs> {
        let layer = if self.layers.upper.is_some() {
            LayerRef::Upper
        } else {
            LayerRef::Lower(0)
        };
        let root = self.layers.root(layer);
        let s = rustix::fs::fstatvfs(&*root.fd).map_err(|e| ioerr("statfs", &root.path, e))?;
        Ok(StatFs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }
}

fn sync_fd(fd: &std::os::fd::OwnedFd, datasync: bool) -> std::result::Result<(), Errno> {
    if datasync {
        rustix::fs::fdatasync(fd)
    } else {
        rustix::fs::fsync(fd)
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn ok<T: Send + Sync>() {}
    ok::<Overlay>();
    ok::<Node>();
}

#[cfg(test)]
mod tests;
