//! Regular files: open and create (passthrough or through the daemon), read, write and the
//! other file I/O, and the copy-up size rule that decides which operations leave the fuser
//! workers.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::{
    BackingId, Errno, FileHandle, FopenFlags, Generation, INodeNo, ReplyCreate, ReplyData,
    ReplyEmpty, ReplyLseek, ReplyOpen, ReplyWrite,
};
use overlay_core::{FileKind, NewMode, NodeRef};
use parking_lot::RwLock;
use tracing::{debug, warn};

use super::convert::{attr_from_metadata, errno, io_errno, rustix_errno};
use super::handles::OpenFile;
use super::notify::Invalidation;
use super::Inner;
use crate::table::IoMode;

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Inner {
    /// Flags for the real open: no create/exclusive bits (the kernel resolved those), no
    /// O_DIRECT (our buffers are not aligned), and with the writeback cache read-write
    /// without O_APPEND (the kernel reads on write-only opens and owns the append position).
    fn backing_flags(&self, flags: i32) -> i32 {
        let mut f = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT);
        f &= !libc::O_NOATIME;
        if self.writeback.load(Ordering::Relaxed) {
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        f
    }

    /// Decide how an open of `nodeid` does its I/O and count it. `candidate` says which
    /// backing the opened file could be. `None` when the open cannot be served on this
    /// inode: read-only opens of the lower file are live with it as their passthrough
    /// backing, and this open (of the copied-up file, or a writer) must not share it.
    /// `internal`: the open flags are exactly `O_RDONLY`, as the kernel's own open for an
    /// inode-flags ioctl sends them (an open by a 64-bit process carries `O_LARGEFILE`).
    fn choose_io(
        &self,
        nodeid: u64,
        candidate: Candidate,
        internal: bool,
        file: &Arc<File>,
        open_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Option<(IoMode, FopenFlags, Option<Arc<BackingId>>)> {
        let want_pt = self.passthrough.load(Ordering::Relaxed)
            && match candidate {
                Candidate::Upper => true,
                Candidate::Lower => self.cfg.lower_passthrough,
                Candidate::Daemon => false,
            };
        let keep = if self.ttl().is_zero() {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        };
        let decided = self.table.with_io(nodeid, |io| {
            if io.passthrough > 0 && io.backing_lower && candidate != Candidate::Lower {
                if internal {
                    // The kernel's own open for an inode-flags ioctl: it does no I/O and
                    // the kernel does not check its mode; the ioctl comes to the daemon.
                    io.cached += 1;
                    return Some((IoMode::Cached, FopenFlags::empty(), None));
                }
                // The kernel would open the lower file for this open too (writable, for a
                // writer): never.
                return None;
            }
            if candidate == Candidate::Upper && io.upper_file.is_none() {
                io.upper_file = Some(file.clone());
            }
            // Passthrough opens of this inode are live: every further open must share the
            // backing (the kernel refuses anything else).
            if candidate != Candidate::Daemon && io.passthrough > 0 {
                if let Some(b) = &io.backing {
                    io.passthrough += 1;
                    return Some((IoMode::Passthrough, FopenFlags::empty(), Some(b.clone())));
                }
            }
            if want_pt && io.cached == 0 {
                match open_backing(file) {
                    Ok(b) => {
                        let b = Arc::new(b);
                        io.backing = Some(b.clone());
                        io.backing_lower = candidate == Candidate::Lower;
                        io.passthrough = 1;
                        io.had_passthrough |= candidate == Candidate::Upper;
                        return Some((IoMode::Passthrough, FopenFlags::empty(), Some(b)));
                    }
                    Err(e) => {
                        warn!("passthrough refused ({e}); serving I/O through the daemon");
                        if e.raw_os_error() == Some(libc::EPERM) {
                            self.passthrough.store(false, Ordering::Relaxed);
                        }
                    }
                }
            }
            io.cached += 1;
            // Passthrough writes bypassed the page cache: do not trust it any more.
            let flags = if io.had_passthrough {
                FopenFlags::empty()
            } else {
                keep
            };
            Some((IoMode::Cached, flags, None))
        });
        let decided = match decided {
            Some(d) => d?,
            None => (IoMode::Cached, FopenFlags::empty(), None),
        };
        let counter = match decided.0 {
            IoMode::Passthrough => &self.passthrough_opens,
            IoMode::Cached => &self.cached_opens,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some(decided)
    }

    /// The open of `nodeid` cannot share the lower backing of the read-only opens the
    /// kernel's inode has (see [`Inner::choose_io`]): the object goes on under a new node
    /// id, and the open fails with ESTALE, which makes the kernel look the path up again
    /// (`LOOKUP_REVAL`) and retry the open once, on the new inode. The old inode keeps its
    /// open files, which go on reading the lower file.
    fn move_off_lower_backing(&self, nodeid: u64, node: &NodeRef) -> Errno {
        if let Some(new) = self.table.reassign(nodeid, node) {
            debug!("node {nodeid} copied up under lower passthrough opens: now node {new}");
        }
        // Other cached names of the old inode: dropped, so their next walk looks up too.
        if let (Some(parent), Some(name)) = (self.table.parent_of(nodeid), node.path().file_name())
        {
            self.invalidate(Invalidation::Entry {
                parent,
                name: name.to_os_string(),
            });
        }
        Errno::ESTALE
    }

    pub(super) fn open(&self, ino: u64, node: NodeRef, flags: i32, reply: ReplyOpen) {
        let was_lower = node.is_lower_only();
        let real = self.backing_flags(flags);
        let file = match self.ovl.open(&node, real) {
            Ok(f) => f,
            Err(e) if real != flags && e.raw_os_error() == libc::EACCES => {
                // The upgrade to read-write was refused (a write-only file): open as asked.
                match self
                    .ovl
                    .open(&node, real & !libc::O_ACCMODE | (flags & libc::O_ACCMODE))
                {
                    Ok(f) => f,
                    Err(e) => return reply.error(errno("open", &e)),
                }
            }
            Err(e) => return reply.error(errno("open", &e)),
        };
        // A write-open always gets the upper file (the engine copies up first). A read-only
        // open of a file that was lower-only may have got either copy if a copy-up raced
        // with it: count it as lower (never written through; reads switch to the upper copy).
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let from_lower = if writes {
            false
        } else {
            was_lower || node.is_lower_only()
        };
        // A lower hard link split by this copy-up: the kernel's inode `ino` now stands for
        // the other names (still lower), so this open goes through the daemon.
        let split = was_lower && writes && self.table.nodeid_of(node.ino()) != ino;
        if split {
            self.check_split(ino, &node);
        }
        let candidate = match node.kind() {
            FileKind::File if split => Candidate::Daemon,
            FileKind::File if from_lower => Candidate::Lower,
            FileKind::File => Candidate::Upper,
            _ => Candidate::Daemon,
        };
        let file = Arc::new(file);
        let Some((mode, fopen, backing)) =
            self.choose_io(ino, candidate, flags == libc::O_RDONLY, &file, |f| {
                reply.open_backing(f)
            })
        else {
            return reply.error(self.move_off_lower_backing(ino, &node));
        };
        let fh = self.files.insert(OpenFile {
            nodeid: ino,
            node,
            file: RwLock::new(file),
            from_lower: AtomicBool::new(from_lower),
            mode,
        });
        if was_lower && !from_lower {
            // Copied up: ctime and blocks may differ now, and the mtime of a metacopy file
            // whose data was copied.
            self.invalidate_attrs_now(ino);
        }
        match backing {
            Some(b) => reply.opened_passthrough(FileHandle(fh), fopen, &b),
            None => reply.opened(FileHandle(fh), fopen),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create(
        &self,
        req: (u32, u32),
        parent: u64,
        name: &OsStr,
        mode: NewMode,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            let p = self.node(parent)?;
            let owner = self.owner(req.0, req.1, &p)?;
            let real = self.backing_flags(flags) | libc::O_CREAT | (flags & libc::O_EXCL);
            let (node, file) = self
                .ovl
                .create(&p, name, mode, real, owner)
                .map_err(|e| errno("create", &e))?;
            // The new file is an upper file: its attributes are those of the open file.
            // (Not for a name of an indexed lower file, index=on, which opened an existing
            // file: its link count is the overlay's, not the upper inode's.)
            let a = match file.metadata() {
                Ok(md) if !node.is_indexed_link() => attr_from_metadata(&md, node.ino()),
                _ => self.ovl.getattr(&node).map_err(|e| errno("create", &e))?,
            };
            Ok::<_, Errno>((node, file, a))
        })();
        let (node, file, a) = match r {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        self.reply_created(false, parent, node, Arc::new(file), &a, reply)
    }

    /// Answer a CREATE or (`unnamed`) TMPFILE with the new upper file `file` of `node`
    /// (attributes `a`), opened as any upper file (passthrough where it can be).
    fn reply_created(
        &self,
        unnamed: bool,
        parent: u64,
        node: NodeRef,
        file: Arc<File>,
        a: &overlay_core::Attr,
        reply: ReplyCreate,
    ) {
        let Some((id, generation)) = self.remember(node.clone(), parent) else {
            // Removed by another request since: the name is gone.
            return reply.error(Errno::ENOENT);
        };
        if unnamed {
            // An O_TMPFILE file: kept for its first link while open.
            let mut t = self.tmpfiles.lock();
            t.retain(|_, f| f.strong_count() > 0);
            t.insert(id, Arc::downgrade(&file));
        }
        let Some((mode, fopen, backing)) =
            self.choose_io(id, Candidate::Upper, false, &file, |f| {
                reply.open_backing(f)
            })
        else {
            // A new file has no lower backing; a racing reuse of its number is not served.
            // The kernel gets no entry: the lookup reference taken above is given back.
            self.table.forget(id, 1);
            return reply.error(Errno::ESTALE);
        };
        let ttl = self.entry_ttl(&node);
        let fh = self.files.insert(OpenFile {
            nodeid: id,
            node,
            file: RwLock::new(file),
            from_lower: AtomicBool::new(false),
            mode,
        });
        let attr = self.to_attr(id, a);
        reply.created_node(
            INodeNo(id),
            &ttl,
            &attr,
            Generation(generation),
            FileHandle(fh),
            fopen,
            backing.as_deref(),
        )
    }

    /// `open(O_TMPFILE)` in directory `parent`: an unnamed file in the upper copy of the
    /// directory (as the kernel overlay), open as by [`Inner::create`]; a `link` names it.
    pub(super) fn tmpfile(
        &self,
        req: (u32, u32),
        parent: u64,
        mode: NewMode,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            let p = self.node(parent)?;
            let owner = self.owner(req.0, req.1, &p)?;
            let real = self.backing_flags(flags);
            let (node, file) = self
                .ovl
                .tmpfile(&p, mode, real, owner)
                .map_err(|e| errno("tmpfile", &e))?;
            let md = file.metadata().map_err(|e| io_errno("tmpfile", &e))?;
            Ok::<_, Errno>((node.clone(), file, attr_from_metadata(&md, node.ino())))
        })();
        match r {
            Ok((node, file, a)) => {
                self.reply_created(true, parent, node, Arc::new(file), &a, reply)
            }
            Err(e) => reply.error(e),
        }
    }

    fn open_file(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        self.files.get(fh).ok_or(Errno::EBADF)
    }

    /// The file to read from: a read-only open of a lower file switches to the upper copy
    /// once the file has been copied up, so it never reads stale data.
    fn read_file(&self, of: &OpenFile) -> Arc<File> {
        if of.from_lower.load(Ordering::Acquire) && !of.node.is_lower_only() {
            let mut slot = of.file.write();
            if of.from_lower.load(Ordering::Acquire) {
                match self.ovl.open(&of.node, libc::O_RDONLY) {
                    Ok(f) => {
                        *slot = Arc::new(f);
                        of.from_lower.store(false, Ordering::Release);
                    }
                    Err(e) => debug!("reopen after copy-up: {e}"),
                }
            }
            return slot.clone();
        }
        of.file.read().clone()
    }

    pub(super) fn read(&self, fh: u64, offset: u64, size: u32, reply: ReplyData) {
        let of = match self.open_file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let file = self.read_file(&of);
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            let size = size as usize;
            if buf.len() < size {
                buf.resize(size, 0);
            }
            let mut done = 0;
            while done < size {
                match file.read_at(&mut buf[done..size], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return reply.error(io_errno("read", &e)),
                }
            }
            reply.data(&buf[..done])
        })
    }

    pub(super) fn write(&self, fh: u64, offset: u64, data: &[u8], reply: ReplyWrite) {
        let of = match self.open_file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if of.from_lower.load(Ordering::Acquire) {
            // Never write to a lower file (a read-only open cannot be written anyway).
            return reply.error(Errno::EBADF);
        }
        let file = of.file.read().clone();
        match file.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(io_errno("write", &e)),
        }
    }

    pub(super) fn release(&self, fh: u64, reply: ReplyEmpty) {
        if let Some(of) = self.files.remove(fh) {
            self.table.release_io(of.nodeid, of.mode);
        }
        reply.ok();
    }

    pub(super) fn fsync(&self, fh: u64, datasync: bool, reply: ReplyEmpty) {
        let of = match self.open_file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let file = of.file.read().clone();
        let r = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(io_errno("fsync", &e)),
        }
    }

    pub(super) fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let of = match self.open_file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if of.from_lower.load(Ordering::Acquire) {
            return reply.error(Errno::EBADF);
        }
        let file = of.file.read().clone();
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        match rustix::fs::fallocate(&*file, flags, offset, length) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(rustix_errno("fallocate", e)),
        }
    }

    pub(super) fn lseek(&self, fh: u64, offset: i64, whence: i32, reply: ReplyLseek) {
        let of = match self.open_file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let file = self.read_file(&of);
        let pos = match whence {
            libc::SEEK_SET => rustix::fs::SeekFrom::Start(offset as u64),
            libc::SEEK_END => rustix::fs::SeekFrom::End(offset),
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset as u64),
            _ => return reply.error(Errno::EINVAL),
        };
        match rustix::fs::seek(&*file, pos) {
            Ok(p) => reply.offset(p as i64),
            Err(e) => reply.error(rustix_errno("lseek", e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
        reply: ReplyWrite,
    ) {
        let (fin, fout) = match (self.open_file(fh_in), self.open_file(fh_out)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if fout.from_lower.load(Ordering::Acquire) {
            return reply.error(Errno::EBADF);
        }
        let src = self.read_file(&fin);
        let dst = fout.file.read().clone();
        // One reply carries at most u32::MAX bytes; callers loop on short copies.
        let len = len.min(1 << 30) as usize;
        let (mut oi, mut oo) = (offset_in, offset_out);
        match rustix::fs::copy_file_range(&*src, Some(&mut oi), &*dst, Some(&mut oo), len) {
            Ok(n) => reply.written(n as u32),
            Err(e)
                if e == rustix::io::Errno::XDEV
                    || e == rustix::io::Errno::OPNOTSUPP
                    || e == rustix::io::Errno::INVAL =>
            {
                // Layers on different filesystems: copy a bounded chunk through memory.
                let chunk = len.min(8 << 20);
                let mut buf = vec![0u8; chunk];
                let mut done = 0;
                while done < chunk {
                    match src.read_at(&mut buf[done..], offset_in + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return reply.error(io_errno("copy_file_range", &e)),
                    }
                }
                match dst.write_all_at(&buf[..done], offset_out) {
                    Ok(()) => reply.written(done as u32),
                    Err(e) => reply.error(io_errno("copy_file_range", &e)),
                }
            }
            Err(e) => reply.error(rustix_errno("copy_file_range", e)),
        }
    }
}

/// Which backing file an open could get for passthrough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidate {
    /// A regular file in the upper layer.
    Upper,
    /// A read-only open of a lower-only regular file: the lower file, read-only.
    Lower,
    /// None: served through the daemon.
    Daemon,
}

fn needs_copy_up_of_data(node: &NodeRef) -> bool {
    node.kind() == FileKind::File && node.is_lower_only()
}

/// Copy-ups of files up to this size run on the request's worker: handing them to the
/// long-operation pool costs a thread wake-up (about as long as copying a small file).
const SHORT_COPY_UP: u64 = 1 << 20;

impl Inner {
    /// [`Inner::long_copy_up`] of the node the kernel calls `nodeid` (false if unknown).
    pub(super) fn long_copy_up_of(&self, nodeid: u64) -> bool {
        self.table
            .get(nodeid)
            .is_some_and(|n| self.long_copy_up(&n))
    }

    /// True when an operation on `node` may copy a big file up (so it should not hold a
    /// fuser worker).
    pub(super) fn long_copy_up(&self, node: &NodeRef) -> bool {
        needs_copy_up_of_data(node)
            && self
                .ovl
                .getattr(node)
                .map_or(true, |a| a.size > SHORT_COPY_UP)
    }
}
