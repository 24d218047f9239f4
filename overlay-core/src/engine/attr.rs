//! setattr and extended attributes.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::{OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::{acl, Attr, FileKind, NodeRef, Overlay, SetAttr, TimeSet};
use crate::error::Result;
pub use crate::sys::FsXattr;

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO))
}

impl TimeSet {
    /// The `utimensat`/`futimens` timespec for an optional time change (`None` is
    /// `UTIME_OMIT`, [`TimeSet::Now`] is `UTIME_NOW`).
    pub fn to_timespec(t: Option<TimeSet>) -> Timespec {
        match t {
            None => Timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT as _,
            },
            Some(TimeSet::Now) => Timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW as _,
            },
            Some(TimeSet::At(t)) => Timespec {
                tv_sec: t.sec,
                tv_nsec: t.nsec as _,
            },
        }
    }
}

impl Overlay {
    /// Change attributes (copies up first; a truncation to 0 copies no data).
    pub fn setattr(&self, node: &NodeRef, changes: &SetAttr) -> Result<Attr> {
        let op = "setattr";
        if *changes == SetAttr::default() {
            return self.getattr(node);
        }
        if changes.size.is_some() && node.kind == FileKind::Directory {
            return Err(self.node_err(op, node, Errno::ISDIR));
        }
        if changes.size.is_some() && node.kind != FileKind::File {
            return Err(self.node_err(op, node, Errno::INVAL));
        }
        self.check_writable(op, || node.rel_path())?;
        if changes.size.is_some() {
            // A truncation copies the data (none for a truncation to 0).
            self.copy_up_node(node, changes.size != Some(0))?;
        } else {
            self.copy_up_meta(node)?;
        }
        let real = self.top_real(op, node)?;
        let err = |e: Errno| self.node_err(op, node, e);
        if changes.uid.is_some() || changes.gid.is_some() {
            real.chown(changes.uid, changes.gid).map_err(err)?;
        }
        if let Some(m) = changes.mode {
            match real.chmod(m) {
                Ok(()) => {}
                Err(Errno::OPNOTSUPP) if node.kind == FileKind::Symlink => {}
                Err(e) => return Err(err(e)),
            }
        }
        if let Some(size) = changes.size {
            let (fd, _) = self.open_real(op, node, &real, OFlags::WRONLY)?;
            rustix::fs::ftruncate(&fd, size).map_err(err)?;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            let ts = Timestamps {
                last_access: TimeSet::to_timespec(changes.atime),
                last_modification: TimeSet::to_timespec(changes.mtime),
            };
            real.utimes(&ts).map_err(err)?;
        }
        self.getattr(node)
    }

    /// [`Overlay::setattr`] of times only, for a FUSE server's writeback of the times the
    /// kernel cached for an inode (a request that names no path): a name not copied up yet
    /// of an indexed inode (`index=on`, whose upper copy exists: another name was written)
    /// changes that copy, without an upper link of its own, as the kernel overlay changes
    /// the inode it wrote. Anything else is [`Overlay::setattr`].
    pub fn set_cached_times(&self, node: &NodeRef, changes: &SetAttr) -> Result<Attr> {
        let times_only = changes.mode.is_none()
            && changes.uid.is_none()
            && changes.gid.is_none()
            && changes.size.is_none();
        if !times_only || !self.is_index_alias(node) {
            return self.setattr(node, changes);
        }
        let op = "setattr";
        self.check_writable(op, || node.rel_path())?;
        let real = self.top_real(op, node)?;
        let ts = Timestamps {
            last_access: TimeSet::to_timespec(changes.atime),
            last_modification: TimeSet::to_timespec(changes.mtime),
        };
        real.utimes(&ts).map_err(|e| self.node_err(op, node, e))?;
        self.getattr(node)
    }

    /// The inode flags (`lsattr`, `FS_IOC_GETFLAGS`) of a regular file or directory: those
    /// of its topmost real object. Other kinds give ENOTTY, as from the kernel.
    pub fn inode_flags(&self, node: &NodeRef) -> Result<rustix::fs::IFlags> {
        let op = "get inode flags";
        let real = self.top_real(op, node)?;
        let fd = self.open_for_flags(op, node, &real)?;
        rustix::fs::ioctl_getflags(&fd).map_err(|e| self.node_err(op, node, e))
    }

    /// Set the inode flags (`chattr`, `FS_IOC_SETFLAGS`) of a regular file or directory,
    /// copying it up first (as the kernel overlay). Permission checks (owner, and
    /// CAP_LINUX_IMMUTABLE for `i` and `a`) are the caller's; the kernel makes them before a
    /// FUSE request.
    pub fn set_inode_flags(&self, node: &NodeRef, flags: rustix::fs::IFlags) -> Result<()> {
        let op = "set inode flags";
        let fd = self.upper_fd_for_flags(op, node)?;
        rustix::fs::ioctl_setflags(&fd, flags).map_err(|e| self.node_err(op, node, e))
    }

    /// An fd of the upper copy of `node` (a regular file or directory, copied up first) for
    /// the flag-setting ioctls.
    fn upper_fd_for_flags(&self, op: &'static str, node: &NodeRef) -> Result<std::os::fd::OwnedFd> {
        if !matches!(node.kind, FileKind::File | FileKind::Directory) {
            return Err(self.node_err(op, node, Errno::NOTTY));
        }
        self.check_writable(op, || node.rel_path())?;
        self.copy_up_meta(node)?;
        let real = self.top_real(op, node)?;
        self.open_for_flags(op, node, &real)
    }

    /// The extended inode attributes (`FS_IOC_FSGETXATTR`: xflags, extent size hints,
    /// project id) of the topmost real object of a regular file or directory.
    pub fn fs_xattr(&self, node: &NodeRef) -> Result<FsXattr> {
        let op = "get extended inode attributes";
        let real = self.top_real(op, node)?;
        let fd = self.open_for_flags(op, node, &real)?;
        crate::sys::fs_get_xattr(std::os::fd::AsFd::as_fd(&fd))
            .map_err(|e| self.node_err(op, node, io_errno(&e)))
    }

    /// Set the extended inode attributes (`FS_IOC_FSSETXATTR`) of a regular file or
    /// directory, copying it up first, as the kernel overlay does. Permission checks are the
    /// caller's, as for [`Overlay::set_inode_flags`].
    pub fn set_fs_xattr(&self, node: &NodeRef, x: &FsXattr) -> Result<()> {
        let op = "set extended inode attributes";
        let fd = self.upper_fd_for_flags(op, node)?;
        crate::sys::fs_set_xattr(std::os::fd::AsFd::as_fd(&fd), x)
            .map_err(|e| self.node_err(op, node, io_errno(&e)))
    }

    /// An fd of `real` for the flags ioctls (which need an open file, and work on a
    /// read-only one).
    fn open_for_flags(
        &self,
        op: &'static str,
        node: &NodeRef,
        real: &super::real::RealObj,
    ) -> Result<std::os::fd::OwnedFd> {
        if !matches!(node.kind, FileKind::File | FileKind::Directory) {
            return Err(self.node_err(op, node, Errno::NOTTY));
        }
        Ok(self.open_real(op, node, real, OFlags::RDONLY)?.0)
    }

    /// Read an xattr (private overlay attributes are invisible: ENODATA; escaped names
    /// `<ns>overlay.overlay.X` read as `<ns>overlay.X`).
    pub fn getxattr(&self, node: &NodeRef, name: &OsStr) -> Result<Vec<u8>> {
        let real = self.top_real("getxattr", node)?;
        let stored = OsString::from_vec(self.layers.ns.stored_name(name.as_bytes()));
        real.getxattr(&stored).map_err(|e| {
            // A layer on a filesystem without POSIX ACLs (squashfs, iso9660, a FUSE lower)
            // says EOPNOTSUPP; the kernel overlay answers ENODATA there (no ACL), and a FUSE
            // kernel fails every permission check on the EOPNOTSUPP.
            let acl = name == acl::ACCESS_ACL || name == acl::DEFAULT_ACL;
            let e = if acl && e == Errno::OPNOTSUPP {
                Errno::NODATA
            } else {
                e
            };
            self.node_err("getxattr", node, e)
        })
    }

    /// List xattr names, without overlay-private ones.
    pub fn listxattr(&self, node: &NodeRef) -> Result<Vec<OsString>> {
        let real = self.top_real("listxattr", node)?;
        let names = real
            .listxattr()
            .map_err(|e| self.node_err("listxattr", node, e))?;
        Ok(names
            .iter()
            .filter_map(|n| self.layers.ns.visible_name(n))
            .map(OsString::from_vec)
            .collect())
    }

    /// Set an xattr (copies up first). `flags` are `XATTR_CREATE`/`XATTR_REPLACE`.
    pub fn setxattr(&self, node: &NodeRef, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let op = "setxattr";
        self.check_writable(op, || node.rel_path())?;
        // As the kernel's `ovl_xattr_set`: an inode with an upper copy (an indexed one
        // whose name is not copied up, index=on) changes there; its name stays as it is.
        if !self.is_index_alias(node) {
            self.copy_up_meta(node)?;
        }
        let real = self.top_real(op, node)?;
        let stored = OsString::from_vec(self.layers.ns.stored_name(name.as_bytes()));
        real.setxattr(&stored, value, XattrFlags::from_bits_retain(flags as u32))
            .map_err(|e| self.node_err(op, node, e))
    }

    /// Remove an xattr (copies up first, unless the attribute does not exist: ENODATA).
    pub fn removexattr(&self, node: &NodeRef, name: &OsStr) -> Result<()> {
        let op = "removexattr";
        self.check_writable(op, || node.rel_path())?;
        let stored = OsString::from_vec(self.layers.ns.stored_name(name.as_bytes()));
        let alias = self.is_index_alias(node);
        if !node.state.read().upper {
            // As the kernel: no copy-up for removing an attribute the lower object lacks.
            let real = self.top_real(op, node)?;
            real.getxattr(&stored)
                .map_err(|e| self.node_err(op, node, e))?;
        }
        // As for setxattr: an indexed inode's upper copy changes, not its name.
        if !alias {
            self.copy_up_meta(node)?;
        }
        let real = self.top_real(op, node)?;
        real.removexattr(&stored)
            .map_err(|e| self.node_err(op, node, e))
    }
}
