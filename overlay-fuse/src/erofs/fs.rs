//! The read-only FUSE filesystem over an [`ErofsImage`]: lookup, getattr, readdir and
//! readdirplus, open and read, readlink, getxattr and listxattr, statfs. Anything that
//! would change the image is refused by the kernel (the mount is `ro`) or answered EROFS.
//!
//! Node ids: the root directory is 1 (FUSE's), every other inode `nid + 2`; `st_ino` and
//! `d_ino` are the node id. An image that cannot be read where it is asked gives EIO (the
//! reason goes to the log), never a panic.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tracing::warn;

use overlay_core::FileKind;

use super::image::{ErofsImage, Listing, NodeAttr};
use crate::error::Error;
use crate::fs::file_type;

/// How long the kernel may cache entries and attributes: the image never changes.
const TTL: Duration = Duration::from_secs(3600);

/// Largest single read answered (the kernel asks for at most `max_read`, 128 KiB to 1 MiB).
const MAX_READ: u32 = 4 << 20;

/// An EROFS image served through FUSE.
#[derive(Debug)]
pub struct ErofsFs {
    image: ErofsImage,
    /// List `trusted.*` attributes to callers with CAP_SYS_ADMIN (see [`ErofsFs::new`]).
    trusted_for_root: bool,
}

impl ErofsFs {
    /// Serve `image`. `trusted.*` attributes are listed to callers with CAP_SYS_ADMIN only when
    /// this process runs in the initial user namespace (elsewhere the kernel would refuse
    /// to read them anyway), as the kernel's EROFS lists them to privileged callers only.
    pub fn new(image: ErofsImage) -> ErofsFs {
        let init_ns = std::fs::read_link("/proc/self/ns/user")
            .map(|l| l.as_os_str() == "user:[4026531837]")
            .unwrap_or(false);
        ErofsFs {
            image,
            trusted_for_root: init_ns,
        }
    }

    /// The image served.
    pub fn image(&self) -> &ErofsImage {
        &self.image
    }

    fn nid(&self, ino: INodeNo) -> Result<u64, Errno> {
        match ino.0 {
            1 => Ok(self.image.root()),
            0 => Err(Errno::EINVAL),
            n => Ok(n - 2),
        }
    }

    fn ino(&self, nid: u64) -> Result<u64, Errno> {
        if nid == self.image.root() {
            return Ok(1);
        }
        nid.checked_add(2).ok_or(Errno::EIO)
    }

    fn attr(&self, a: &NodeAttr) -> Result<FileAttr, Errno> {
        let (major, minor) = a.rdev;
        Ok(FileAttr {
            ino: INodeNo(self.ino(a.nid)?),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.mtime,
            mtime: a.mtime,
            ctime: a.mtime,
            crtime: a.mtime,
            kind: file_type(a.kind),
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            // The kernel's new_encode_dev, which FUSE carries.
            rdev: (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
            blksize: 4096,
            flags: 0,
        })
    }

    /// The node id of the parent of directory `ino` (itself for the root).
    fn parent(&self, ino: INodeNo) -> INodeNo {
        self.nid(ino)
            .map(|nid| self.image.parent(nid))
            .and_then(|p| self.ino(p))
            .map_or(ino, INodeNo)
    }

    /// The listing of directory `ino` and its parent's node id.
    fn listing(&self, ino: INodeNo, op: &str) -> Result<(Listing, INodeNo), Errno> {
        let nid = self.nid(ino)?;
        let l = self.image.listing(nid).map_err(|e| eio(op, &e))?;
        Ok((l, self.parent(ino)))
    }

    fn node(&self, ino: INodeNo) -> Result<NodeAttr, Errno> {
        let nid = self.nid(ino)?;
        self.image.attr(nid).map_err(|e| eio("getattr", &e))
    }
}

fn eio(op: &str, e: &Error) -> Errno {
    warn!("{op}: {e}");
    Errno::EIO
}

/// Reply to a getxattr/listxattr size probe or with the bytes.
fn reply_xattr(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    let Ok(len) = u32::try_from(bytes.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len)
    } else if len > size {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(bytes)
    }
}

impl Filesystem for ErofsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            // Each on its own: add_capabilities is all-or-nothing.
            let _ = config.add_capabilities(flag);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let dir = self.nid(parent)?;
            match self.image.lookup(dir, name.as_bytes()) {
                Ok(Some(a)) => self.attr(&a),
                Ok(None) => Err(Errno::ENOENT),
                Err(e) => Err(eio("lookup", &e)),
            }
        })();
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino).and_then(|a| self.attr(&a)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self
            .nid(ino)
            .and_then(|nid| self.image.readlink(nid).map_err(|e| eio("readlink", &e)));
        match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.node(ino) {
            Ok(a) if a.kind == FileKind::File => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(a) if a.kind == FileKind::Directory => reply.error(Errno::EISDIR),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.nid(ino).and_then(|nid| {
            self.image
                .read(nid, offset, size.min(MAX_READ) as usize)
                .map_err(|e| eio("read", &e))
        });
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Ok(a) if a.kind == FileKind::Directory => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (entries, parent) = match self.listing(ino, "readdir") {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let total = entries.len() as u64 + 2;
        for i in offset..total {
            let full = match i {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(parent, 2, FileType::Directory, ".."),
                _ => {
                    let e = &entries[(i - 2) as usize];
                    let Ok(child) = self.ino(e.nid) else {
                        continue;
                    };
                    reply.add(
                        INodeNo(child),
                        i + 1,
                        file_type(e.kind),
                        OsStr::from_bytes(&e.name),
                    )
                }
            };
            if full {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (entries, parent) = match self.listing(ino, "readdirplus") {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let total = entries.len() as u64 + 2;
        for i in offset..total {
            if i < 2 {
                // "." and "..": the kernel takes no lookup reference for them.
                let (id, name) = if i == 0 { (ino, ".") } else { (parent, "..") };
                let attr = dot_attr(id);
                if reply.add(id, i + 1, name, &Duration::ZERO, &attr, Generation(0)) {
                    break;
                }
                continue;
            }
            let e = &entries[(i - 2) as usize];
            let attr = match self.image.attr(e.nid) {
                Ok(a) => match self.attr(&a) {
                    Ok(attr) => attr,
                    Err(_) => continue,
                },
                Err(err) => {
                    // Listed, but its inode cannot be read: leave it out here; a lookup
                    // of the name reports the error.
                    warn!("readdirplus: {err}");
                    continue;
                }
            };
            if reply.add(
                attr.ino,
                i + 1,
                OsStr::from_bytes(&e.name),
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let c = self.image.counts();
        reply.statfs(c.blocks, 0, 0, c.inodes, 0, c.block_size, 255, c.block_size)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self
            .nid(ino)
            .and_then(|nid| self.image.xattrs(nid).map_err(|e| eio("getxattr", &e)));
        match r {
            Ok(x) => match x.get(name.as_bytes()) {
                Some(v) => reply_xattr(reply, size, v),
                None => reply.error(Errno::ENODATA),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = self
            .nid(ino)
            .and_then(|nid| self.image.xattrs(nid).map_err(|e| eio("listxattr", &e)));
        let x = match r {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        // As the kernel's EROFS: trusted.* names for CAP_SYS_ADMIN only, judged with the
        // caller's capabilities (uid 0 alone may lack it). GETXATTR of such a name is
        // refused by the kernel's VFS before it reaches us.
        let caller = crate::caller::Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        };
        let trusted =
            self.trusted_for_root && caller.has_capability(crate::caller::Capability::SysAdmin);
        let mut names = Vec::new();
        for k in x.keys() {
            if !trusted && k.starts_with(b"trusted.") {
                continue;
            }
            names.extend_from_slice(k);
            names.push(0);
        }
        reply_xattr(reply, size, &names)
    }
}

/// Attributes sent with "." and ".." by readdirplus (the kernel does not use them).
fn dot_attr(ino: INodeNo) -> FileAttr {
    FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
