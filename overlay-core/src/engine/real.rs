//! Access to one real object in one layer: a directory fd plus a single name component
//! (or the directory itself for a layer root). Every call is an `*at`/`l*`/`f*` call that
//! does not follow a symlink in the final component.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Stat, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::layers::{display_path, proc_fd_path, proc_path, read_xattr, LayerRef};
use super::{FileKind, Node, Overlay};
use crate::error::{Error, Result};

/// One real object: `name` in directory `dir`, or `dir` itself when `name` is `None`.
#[derive(Debug, Clone)]
pub(crate) struct RealObj {
    pub layer: LayerRef,
    pub dir: Arc<OwnedFd>,
    pub name: Option<OsString>,
}

type R<T> = std::result::Result<T, Errno>;

impl RealObj {
    /// The object an open fd refers to (every call goes through the fd).
    pub fn of_fd(layer: LayerRef, fd: OwnedFd) -> RealObj {
        RealObj {
            layer,
            dir: Arc::new(fd),
            name: None,
        }
    }

    fn dirfd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The inode flags (`FS_IOC_GETFLAGS`) of an object held as an fd (ENOTTY for one held
    /// by name: the ioctl needs an open file).
    pub fn inode_flags(&self) -> R<rustix::fs::IFlags> {
        match &self.name {
            None => rustix::fs::ioctl_getflags(self.dirfd()),
            Some(_) => Err(Errno::NOTTY),
        }
    }

    /// Set the inode flags (`FS_IOC_SETFLAGS`) of an object held as an fd.
    pub fn set_inode_flags(&self, flags: rustix::fs::IFlags) -> R<()> {
        match &self.name {
            None => rustix::fs::ioctl_setflags(self.dirfd(), flags),
            Some(_) => Err(Errno::NOTTY),
        }
    }

    /// `lstat`.
    pub fn stat(&self) -> R<Stat> {
        match &self.name {
            None => rustix::fs::fstat(self.dirfd()),
            Some(n) => rustix::fs::statat(self.dirfd(), &**n, AtFlags::SYMLINK_NOFOLLOW),
        }
    }

    /// Read an xattr by its stored name.
    pub fn getxattr(&self, name: &OsStr) -> R<Vec<u8>> {
        match &self.name {
            None => read_xattr(|b| rustix::fs::fgetxattr(self.dirfd(), name, b)),
            Some(n) => {
                let p = proc_path(self.dirfd(), n);
                read_xattr(|b| rustix::fs::lgetxattr(&p, name, b))
            }
        }
    }

    /// List stored xattr names.
    pub fn listxattr(&self) -> R<Vec<Vec<u8>>> {
        let raw = match &self.name {
            None => read_xattr(|b| rustix::fs::flistxattr(self.dirfd(), b))?,
            Some(n) => {
                let p = proc_path(self.dirfd(), n);
                read_xattr(|b| rustix::fs::llistxattr(&p, b))?
            }
        };
        Ok(raw
            .split(|c| *c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| s.to_vec())
            .collect())
    }

    /// Set an xattr by its stored name.
    pub fn setxattr(&self, name: &OsStr, value: &[u8], flags: XattrFlags) -> R<()> {
        match &self.name {
            None => rustix::fs::fsetxattr(self.dirfd(), name, value, flags),
            Some(n) => rustix::fs::lsetxattr(proc_path(self.dirfd(), n), name, value, flags),
        }
    }

    /// Remove an xattr by its stored name.
    pub fn removexattr(&self, name: &OsStr) -> R<()> {
        match &self.name {
            None => rustix::fs::fremovexattr(self.dirfd(), name),
            Some(n) => rustix::fs::lremovexattr(proc_path(self.dirfd(), n), name),
        }
    }

    /// `lchown`.
    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> R<()> {
        let (u, g) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
        match &self.name {
            None => rustix::fs::fchown(self.dirfd(), u, g),
            Some(n) => rustix::fs::chownat(self.dirfd(), &**n, u, g, AtFlags::SYMLINK_NOFOLLOW),
        }
    }

    /// `chmod` of the object itself (never through a symlink): symlinks give EOPNOTSUPP.
    pub fn chmod(&self, mode: u32) -> R<()> {
        let m = Mode::from_raw_mode(mode & 0o7777);
        match &self.name {
            None => rustix::fs::fchmod(self.dirfd(), m),
            Some(n) => {
                let fd = rustix::fs::openat(
                    self.dirfd(),
                    &**n,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let st = rustix::fs::fstat(&fd)?;
                if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                    return Err(Errno::OPNOTSUPP);
                }
                rustix::fs::chmodat(
                    rustix::fs::CWD,
                    proc_fd_path(fd.as_fd()),
                    m,
                    AtFlags::empty(),
                )
            }
        }
    }

    /// `utimensat(..., AT_SYMLINK_NOFOLLOW)`.
    pub fn utimes(&self, ts: &Timestamps) -> R<()> {
        match &self.name {
            None => rustix::fs::futimens(self.dirfd(), ts),
            Some(n) => rustix::fs::utimensat(self.dirfd(), &**n, ts, AtFlags::SYMLINK_NOFOLLOW),
        }
    }

    /// Open the object (`O_NOFOLLOW` and `O_NOCTTY` are always added: a layer object is
    /// never followed nor made a controlling terminal). A lower object is opened with
    /// `O_NOATIME` where permitted: reading it must not change the lower layer, as with the
    /// kernel overlay. The engine opens objects through [`super::Overlay::open_real`], which
    /// also makes the open non-blocking and checks the type of what it opened.
    pub fn open(&self, flags: OFlags, mode: Mode) -> R<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC;
        let name: &OsStr = match &self.name {
            None => OsStr::new("."),
            Some(n) => n,
        };
        if matches!(self.layer, LayerRef::Lower(_)) && !flags.contains(OFlags::PATH) {
            super::layers::open_noatime(self.dirfd(), name, flags, mode)
        } else {
            rustix::fs::openat(self.dirfd(), name, flags, mode)
        }
    }

    /// `readlinkat`.
    pub fn readlink(&self) -> R<OsString> {
        match &self.name {
            None => Err(Errno::INVAL),
            Some(n) => {
                let t = rustix::fs::readlinkat(self.dirfd(), &**n, Vec::new())?;
                Ok(std::os::unix::ffi::OsStringExt::from_vec(t.into_bytes()))
            }
        }
    }
}

/// What an `st_mode` names, for error messages.
pub(crate) fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "a regular file",
        FileKind::Directory => "a directory",
        FileKind::Symlink => "a symlink",
        FileKind::CharDevice => "a character device",
        FileKind::BlockDevice => "a block device",
        FileKind::Fifo => "a FIFO",
        FileKind::Socket => "a socket",
    }
}

impl Overlay {
    /// Open `real`, the object of `node` in one of its layers, as what the node says it is.
    ///
    /// A layer may be writable by someone else, who can replace a regular file by a FIFO
    /// (an open would block the worker thread until someone writes to it) or by anything
    /// else. So a regular file or a directory is opened with `O_NONBLOCK` (which regular
    /// files and directories ignore; the returned fd keeps it), a directory with
    /// `O_DIRECTORY`, everything with `O_NOFOLLOW` and `O_NOCTTY`, and the open fd is
    /// `fstat`'ed: an object of another type is refused with [`Error::Changed`] (ESTALE).
    /// Nodes that are FIFOs or devices themselves are opened as `flags` ask (their own
    /// blocking semantics; a FUSE kernel never forwards opens of special files). Returns the
    /// fd and its `fstat`.
    pub(crate) fn open_real(
        &self,
        op: &'static str,
        node: &Node,
        real: &RealObj,
        flags: OFlags,
    ) -> Result<(OwnedFd, Stat)> {
        let flags = match node.kind {
            FileKind::File => flags | OFlags::NONBLOCK,
            FileKind::Directory => flags | OFlags::NONBLOCK | OFlags::DIRECTORY,
            _ => flags,
        };
        let fd = match real.open(flags, Mode::empty()) {
            Ok(fd) => fd,
            // Not a directory, a directory opened for write, a symlink (O_NOFOLLOW), a FIFO
            // without reader or a socket (ENXIO): what is there now?
            Err(e @ (Errno::NOTDIR | Errno::ISDIR | Errno::LOOP | Errno::NXIO)) => {
                return Err(match real.stat() {
                    Ok(st) if FileKind::from_mode(st.st_mode) != node.kind => {
                        self.changed(op, node, FileKind::from_mode(st.st_mode))
                    }
                    _ => self.node_err(op, node, e),
                });
            }
            Err(e) => return Err(self.node_err(op, node, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.node_err(op, node, e))?;
        self.check_kind(op, node, &st)?;
        Ok((fd, st))
    }

    /// [`Error::Changed`] unless `st` is of the kind `node` says.
    pub(crate) fn check_kind(&self, op: &'static str, node: &Node, st: &Stat) -> Result<()> {
        let found = FileKind::from_mode(st.st_mode);
        if found != node.kind {
            return Err(self.changed(op, node, found));
        }
        Ok(())
    }

    /// The error for `node`'s object found to be of kind `found`.
    pub(crate) fn changed(&self, op: &'static str, node: &Node, found: FileKind) -> Error {
        Error::Changed {
            op,
            path: display_path(&node.rel_path()),
            detail: format!(
                "{} was expected, {} is there",
                kind_name(node.kind),
                kind_name(found)
            ),
        }
    }
}
