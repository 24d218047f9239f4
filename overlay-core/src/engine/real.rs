//! Access to one real object in one layer: a directory fd plus a single name component
//! (or the directory itself for a layer root). Every call is an `*at`/`l*`/`f*` call that
//! does not follow a symlink in the final component.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Stat, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::layers::{proc_fd_path, proc_path, read_xattr, LayerRef};

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

    /// Open the object (`O_NOFOLLOW` is always added). A lower object is opened with
    /// `O_NOATIME` where permitted: reading it must not change the lower layer, as with the
    /// kernel overlay.
    pub fn open(&self, flags: OFlags, mode: Mode) -> R<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
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
