//! Attributes: getattr, setattr, readlink, access, statfs and the inode-flags ioctls.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;

use fuser::{
    AccessFlags, Errno, ReplyAttr, ReplyData, ReplyEmpty, ReplyIoctl, ReplyStatfs, TimeOrNow,
};
use overlay_core::{FileKind, FsXattr, NodeRef, SetAttr, TimeSet};

use super::convert::{
    attr_from_metadata, errno, fs_xflags, fsxattr_bytes, fsxattr_from, inode_flags_of, io_errno,
    rustix_errno, time_set,
};
use super::Inner;
use crate::caller::{Caller, Capability};

impl Inner {
    pub(super) fn getattr(&self, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        let (n, upper_file) = match self.node_with_upper_file(ino) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        // An open upper copy answers without resolving the name in the layer.
        if let Some(f) = upper_file {
            if let Ok(md) = f.metadata() {
                let a = attr_from_metadata(&md, n.ino());
                return reply.attr(&self.ttl(), &self.to_attr(ino, &a));
            }
        }
        match self.ovl.getattr(&n) {
            Ok(a) => reply.attr(&self.ttl(), &self.to_attr(ino, &a)),
            Err(e) => {
                // An open file whose name is gone: answer from the open file itself.
                if let Some(of) = fh.and_then(|fh| self.files.get(fh)) {
                    let file = of.file.read().clone();
                    if let Ok(md) = file.metadata() {
                        let a = attr_from_metadata(&md, n.ino());
                        return reply.attr(&self.ttl(), &self.to_attr(ino, &a));
                    }
                }
                reply.error(errno("getattr", &e))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
        reply: ReplyAttr,
    ) {
        let (n, upper_file) = match self.node_with_upper_file(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ids = &self.cfg.ids;
        let mut changes = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ..SetAttr::default()
        };
        if !ids.squashes() {
            if let Some(u) = uid {
                match ids.uids.to_layer(u) {
                    Some(l) => changes.uid = Some(l),
                    None => return reply.error(Errno::EINVAL),
                }
            }
            if let Some(g) = gid {
                match ids.gids.to_layer(g) {
                    Some(l) => changes.gid = Some(l),
                    None => return reply.error(Errno::EINVAL),
                }
            }
        }
        if changes == SetAttr::default() {
            return self.getattr(ino, fh, reply);
        }
        if changes.size.is_none() {
            if let Some(f) = upper_file {
                // The file is open and in the upper layer: change it through the open file
                // (no copy-up needed), in the engine's order.
                return match setattr_fd(&f, &changes) {
                    // A name of an indexed inode (index=on) counts the overlay's links.
                    Ok(_) if n.is_indexed_link() => match self.ovl.getattr(&n) {
                        Ok(a) => reply.attr(&self.ttl(), &self.to_attr(ino, &a)),
                        Err(e) => reply.error(errno("setattr", &e)),
                    },
                    Ok(md) => {
                        let a = attr_from_metadata(&md, n.ino());
                        reply.attr(&self.ttl(), &self.to_attr(ino, &a))
                    }
                    Err(e) => reply.error(rustix_errno("setattr", e)),
                };
            }
        }
        let was_lower = n.is_lower_only();
        // The writeback cache's own SETATTR of the times it kept (mtime and ctime, no
        // atime), which names no path: a name of an indexed inode not copied up gets no
        // upper link for it (index=on; the kernel overlay changed the inode it wrote).
        let cached_times = self.writeback.load(std::sync::atomic::Ordering::Relaxed)
            && changes.atime.is_none()
            && changes.mtime.is_some()
            && n.is_indexed_link();
        let r = if cached_times {
            self.ovl.set_cached_times(&n, &changes)
        } else {
            self.ovl.setattr(&n, &changes)
        };
        match r {
            Ok(a) => {
                if was_lower {
                    self.check_split(ino, &n);
                }
                reply.attr(&self.ttl(), &self.to_attr(ino, &a))
            }
            Err(e) if e.is_not_found() && size.is_some() && fh.is_some() => {
                // ftruncate of an open file whose name is gone.
                let of = fh.and_then(|fh| self.files.get(fh));
                match of {
                    Some(of) if !of.from_lower.load(Ordering::Acquire) => {
                        let file = of.file.read().clone();
                        match file
                            .set_len(size.unwrap_or(0))
                            .and_then(|_| file.metadata())
                        {
                            Ok(md) => {
                                let a = attr_from_metadata(&md, n.ino());
                                reply.attr(&self.ttl(), &self.to_attr(ino, &a))
                            }
                            Err(e) => reply.error(io_errno("ftruncate", &e)),
                        }
                    }
                    _ => reply.error(errno("setattr", &e)),
                }
            }
            Err(e) => reply.error(errno("setattr", &e)),
        }
    }

    pub(super) fn readlink(&self, ino: u64, reply: ReplyData) {
        match self
            .node(ino)
            .and_then(|n| self.ovl.readlink(&n).map_err(|e| errno("readlink", &e)))
        {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    pub(super) fn access(&self, req: (u32, u32), ino: u64, mask: AccessFlags, reply: ReplyEmpty) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let a = match self.ovl.getattr(&n) {
            Ok(a) => a,
            Err(e) => return reply.error(errno("access", &e)),
        };
        let mask = mask.bits();
        if mask == libc::F_OK {
            return reply.ok();
        }
        if mask & libc::W_OK != 0 && self.cfg.read_only {
            return reply.error(Errno::EROFS);
        }
        let (uid, gid) = req;
        let view_uid = self.cfg.ids.view_uid(a.uid);
        let view_gid = self.cfg.ids.view_gid(a.gid);
        let perm = a.perm;
        let ok = if uid == 0 {
            mask & libc::X_OK == 0 || a.kind == FileKind::Directory || perm & 0o111 != 0
        } else {
            let bits = if uid == view_uid {
                (perm >> 6) & 7
            } else if gid == view_gid {
                (perm >> 3) & 7
            } else {
                perm & 7
            };
            (mask as u32) & !bits == 0
        };
        if ok {
            reply.ok()
        } else {
            reply.error(Errno::EACCES)
        }
    }

    pub(super) fn statfs(&self, reply: ReplyStatfs) {
        match self.ovl.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", &e)),
        }
    }

    /// The inode-flags ioctls (`lsattr`, `chattr`; the kernel sends them for
    /// `FS_IOC_GETFLAGS`/`SETFLAGS` and `FS_IOC_FSGETXATTR`/`FSSETXATTR`), on the topmost
    /// real object, a set after a copy-up. Every other ioctl: ENOTTY, for that call only.
    ///
    /// Only the 64-bit numbers, which the kernel sends after its own checks, are served. The
    /// 32-bit ones (`FS_IOC32_*`) reach a FUSE server from a 64-bit process with no check at
    /// all; the kernel overlay answers them ENOTTY, and so do we. A set is checked here
    /// again all the same, with the caller's credentials (the daemon's would allow
    /// anything): the owner or `CAP_FOWNER`, `CAP_LINUX_IMMUTABLE` to change the
    /// immutable or append-only flag, and the daemon's user namespace to change the project
    /// id or its inheritance, as the kernel's `fileattr_set_prepare` does.
    pub(super) fn ioctl(
        &self,
        caller: Caller,
        ino: u64,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        // _IOR('f', 1, long) and _IOW('f', 2, long).
        const GETFLAGS: u32 = 0x8008_6601;
        const SETFLAGS: u32 = 0x4008_6602;
        // _IOR('X', 31, struct fsxattr): the kernel asks it before every SETFLAGS.
        const FSGETXATTR: u32 = 0x801c_581f;
        // _IOW('X', 32, struct fsxattr).
        const FSSETXATTR: u32 = 0x401c_5820;
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match cmd {
            FSGETXATTR => {
                // The real struct fsxattr of the topmost object (as the kernel overlay).
                // Where the layer's filesystem has no FSGETXATTR: its flags derived from the
                // inode flags as the kernel's fileattr_fill_flags does.
                let x = match self.ovl.fs_xattr(&n) {
                    Ok(x) => x,
                    Err(e) if e.raw_os_error() == libc::ENOTTY => match self.ovl.inode_flags(&n) {
                        Ok(f) => FsXattr {
                            xflags: fs_xflags(f.bits()),
                            ..FsXattr::default()
                        },
                        Err(e) => return reply.error(errno("ioctl", &e)),
                    },
                    Err(e) => return reply.error(errno("ioctl", &e)),
                };
                let out = fsxattr_bytes(&x);
                reply.ioctl(0, &out[..(out_size as usize).min(out.len())])
            }
            FSSETXATTR => {
                let Some(x) = fsxattr_from(in_data) else {
                    return reply.error(Errno::EINVAL);
                };
                // The kernel's fileattr_set_prepare: the project id and its inheritance
                // change only from the initial user namespace. A caller in another one than
                // the daemon's gets EINVAL here (where the daemon is not in the initial one,
                // its own set fails with EINVAL the same way).
                const PROJINHERIT: u32 = 0x200;
                if !caller.in_our_user_namespace() {
                    let old = match self.ovl.fs_xattr(&n) {
                        Ok(o) => o,
                        Err(e) if e.raw_os_error() == libc::ENOTTY => FsXattr::default(),
                        Err(e) => return reply.error(errno("ioctl", &e)),
                    };
                    if old.projid != x.projid || (old.xflags ^ x.xflags) & PROJINHERIT != 0 {
                        return reply.error(Errno::EINVAL);
                    }
                }
                let flags = rustix::fs::IFlags::from_bits_retain(inode_flags_of(x.xflags));
                self.set_flags_checked(ino, &n, caller, flags, reply, |o, n| o.set_fs_xattr(n, &x))
            }
            GETFLAGS => match self.ovl.inode_flags(&n) {
                Ok(f) => {
                    let b = f.bits().to_ne_bytes();
                    reply.ioctl(0, &b[..(out_size as usize).min(b.len())])
                }
                Err(e) => reply.error(errno("ioctl", &e)),
            },
            SETFLAGS => {
                let Some(raw) = in_data.first_chunk::<4>() else {
                    return reply.error(Errno::EINVAL);
                };
                let flags = rustix::fs::IFlags::from_bits_retain(u32::from_ne_bytes(*raw));
                self.set_flags_checked(ino, &n, caller, flags, reply, |o, n| {
                    o.set_inode_flags(n, flags)
                })
            }
            _ => reply.error(Errno::ENOTTY),
        }
    }

    /// Set inode flags (`SETFLAGS`, or `FSSETXATTR` whose xflags hold them) with `set`,
    /// after the kernel's checks with the caller's credentials; a lower object is copied
    /// up by the set, and its node split off if that made it a new object.
    fn set_flags_checked(
        &self,
        ino: u64,
        n: &NodeRef,
        caller: Caller,
        flags: rustix::fs::IFlags,
        reply: ReplyIoctl,
        set: impl FnOnce(&overlay_core::Overlay, &NodeRef) -> overlay_core::Result<()>,
    ) {
        if let Err(e) = self.may_set_inode_flags(caller, n, flags) {
            return reply.error(e);
        }
        let was_lower = n.is_lower_only();
        match set(&self.ovl, n) {
            Ok(()) => {
                if was_lower {
                    self.check_split(ino, n);
                }
                reply.ioctl(0, &[])
            }
            Err(e) => reply.error(errno("ioctl", &e)),
        }
    }

    /// The kernel's checks for an inode-flags change, with the caller's credentials: EPERM
    /// unless it owns the inode (as the mount shows the owner) or holds `CAP_FOWNER`, and
    /// unless it holds `CAP_LINUX_IMMUTABLE` when the immutable or append-only flag changes.
    fn may_set_inode_flags(
        &self,
        caller: Caller,
        n: &NodeRef,
        flags: rustix::fs::IFlags,
    ) -> Result<(), Errno> {
        use rustix::fs::IFlags;
        let a = self.ovl.getattr(n).map_err(|e| errno("ioctl", &e))?;
        let owner = self.cfg.ids.view_uid(a.uid) == caller.uid;
        if !owner && !caller.has_capability(Capability::Fowner) {
            return Err(Errno::EPERM);
        }
        let old = self.ovl.inode_flags(n).map_err(|e| errno("ioctl", &e))?;
        let guarded = IFlags::IMMUTABLE | IFlags::APPEND;
        if (old ^ flags).intersects(guarded) && !caller.has_capability(Capability::LinuxImmutable) {
            return Err(Errno::EPERM);
        }
        Ok(())
    }
}

/// Apply `changes` (no size change) to an open real file, in the engine's order (owner
/// first: chown clears the set-ID bits, then the mode, then the times), and `fstat` it.
fn setattr_fd(f: &File, c: &SetAttr) -> Result<std::fs::Metadata, rustix::io::Errno> {
    use rustix::fs::{Gid, Mode, Timestamps, Uid};
    if c.uid.is_some() || c.gid.is_some() {
        rustix::fs::fchown(f, c.uid.map(Uid::from_raw), c.gid.map(Gid::from_raw))?;
    }
    if let Some(m) = c.mode {
        rustix::fs::fchmod(f, Mode::from_raw_mode(m & 0o7777))?;
    }
    if c.atime.is_some() || c.mtime.is_some() {
        let ts = TimeSet::to_timespec;
        rustix::fs::futimens(
            f,
            &Timestamps {
                last_access: ts(c.atime),
                last_modification: ts(c.mtime),
            },
        )?;
    }
    f.metadata()
        .map_err(|e| rustix::io::Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)))
}
