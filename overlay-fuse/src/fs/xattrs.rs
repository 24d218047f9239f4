//! Extended attributes, with the remembered absence of the ones the kernel keeps asking for
//! (`security.capability`, the ACLs).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use fuser::{Errno, ReplyEmpty, ReplyXattr};
use overlay_core::NodeRef;

use super::convert::errno;
use super::Inner;
use crate::caller::{Caller, Capability};
use crate::table::CachedXattr;

impl Inner {
    pub(super) fn getxattr(&self, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.cfg.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        // The kernel asks for security.capability before every write and for the ACLs of
        // every inode it checks permissions on; remember which of them a file lacks. Every
        // change of them goes through setxattr/removexattr here (which forget it), copy-up
        // copies them unchanged, and chown or a write can only remove a capability.
        let cached = CachedXattr::from_name(name.as_bytes()).filter(|_| !self.ttl().is_zero());
        let mut epoch = None;
        if let Some(x) = cached {
            match self.table.xattr_absent(ino, &n, x) {
                Ok(()) => return reply.error(Errno::ENODATA),
                Err(e) => epoch = e,
            }
        }
        match self.ovl.getxattr(&n, name) {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => {
                let code = errno("getxattr", &e);
                if code == Errno::ENODATA {
                    if let (Some(x), Some(epoch)) = (cached, epoch) {
                        self.table.set_xattr_absent(ino, &n, x, epoch);
                    }
                }
                reply.error(code)
            }
        }
    }

    /// The names of the inode's xattrs; `trusted.*` ones only for a caller with
    /// `CAP_SYS_ADMIN`, as the kernel overlay lists them (the daemon itself may see them all).
    pub(super) fn listxattr(&self, caller: Caller, ino: u64, size: u32, reply: ReplyXattr) {
        if !self.cfg.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        match self
            .node(ino)
            .and_then(|n| self.ovl.listxattr(&n).map_err(|e| errno("listxattr", &e)))
        {
            Ok(mut names) => {
                let trusted = |n: &OsString| n.as_bytes().starts_with(b"trusted.");
                if names.iter().any(trusted) && !caller.has_capability(Capability::SysAdmin) {
                    names.retain(|n| !trusted(n));
                }
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                reply_xattr(reply, size, &buf)
            }
            Err(e) => reply.error(e),
        }
    }

    pub(super) fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        if !self.cfg.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        self.change_xattr("setxattr", ino, reply, |n| {
            self.ovl.setxattr(n, name, value, flags)
        })
    }

    pub(super) fn removexattr(&self, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        if !self.cfg.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        self.change_xattr("removexattr", ino, reply, |n| self.ovl.removexattr(n, name))
    }

    /// Change the xattrs of `ino` with `change` (which may copy it up) and forget what the
    /// table knew about its absent xattrs.
    fn change_xattr(
        &self,
        op: &str,
        ino: u64,
        reply: ReplyEmpty,
        change: impl FnOnce(&NodeRef) -> overlay_core::Result<()>,
    ) {
        match self.node(ino).and_then(|n| {
            let was_lower = n.is_lower_only();
            change(&n).map_err(|e| errno(op, &e))?;
            if was_lower {
                self.check_split(ino, &n);
            }
            Ok(())
        }) {
            Ok(()) => {
                self.table.clear_xattr_absent(ino);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}
