//! [`OverlayFs`]: the fuser `Filesystem` over an [`overlay_core::Overlay`].
//!
//! Design (see the crate docs for the why):
//! * node id == `st_ino` (fuser's rule), taken from the engine's stable overlay inode number,
//!   or a fresh one for a new object whose number a removed object the kernel still holds
//!   had ([`crate::table`]); `readdir`'s `d_ino` uses the same mapping.
//! * Every handler runs under `catch_unwind`: a panic answers EIO to that request (the
//!   dropped reply does it) and the worker goes on.
//! * No global lock: the inode table and the handle tables are sharded, and no lock of this
//!   crate is held across an engine call. Operations that may copy a big file up (a
//!   write-open, setattr, link, rename or xattr change of a lower-only regular file over
//!   1 MiB) and fsync run on a pool of reusable threads, so the fixed fuser workers
//!   stay free.
//! * Round trips are what costs (each one wakes a daemon thread and the caller, often across
//!   CPUs): FLUSH answers ENOSYS so the kernel stops sending it; the absence of
//!   `security.capability` and the ACLs (asked before every write and on every permission
//!   refresh) is remembered per inode; attributes of inodes with an open upper file are read
//!   and changed through that file; plain READDIR replies are prefetched
//!   by a background thread so the LOOKUPs that usually follow are answered from live nodes.
//! * Memory: the inode table has a soft capacity ([`FsConfig::max_inodes`]); cold inodes
//!   beyond it are dropped from the kernel's dentry cache so their FORGETs free them.
//! * Passthrough for files in the upper layer and for read-only opens of lower files
//!   ([`FsConfig::lower_passthrough`]). The kernel gives every open of an inode the backing
//!   of its live passthrough opens, so a lower backing is never shared with a writer or with
//!   an open of the copied-up file: such an open moves the object to a new node id (same
//!   `st_ino`) and answers ESTALE, and the kernel looks the path up again and retries the
//!   open on the new inode, while the old inode's read-only opens go on reading the lower
//!   file. Without lower passthrough, read-only opens of lower files are served through the
//!   daemon and switch to the upper copy on their next read (as the kernel overlay's do).
//!
//! Where things are (one concern per file):
//! * this file: [`OverlayFs`], the state its handlers share (`Inner`), and the fuser
//!   `Filesystem` glue: each trait method unpacks its request and runs the handler under
//!   `guarded`, inline or (`offload`) on the long-operation pool;
//! * `config`: [`FsConfig`], [`FsStats`] and [`FsInspector`];
//! * `init`: INIT negotiation (capabilities, passthrough and its stack depth);
//! * `names`: lookup and the namespace changes (mknod, mkdir, symlink, link, unlink, rmdir,
//!   rename), with the bookkeeping of the kernel's lookups and of split hard links;
//! * `attrs`: getattr, setattr, readlink, access, statfs and the inode-flags ioctls;
//! * `xattrs`: the xattr calls and the remembered absence of the xattrs the kernel keeps
//!   asking for;
//! * `files`: open, create and file I/O, the passthrough-or-daemon choice, and the copy-up
//!   size rule that decides what runs on the long-operation pool;
//! * `dirs`: open directories, listings (readdir, readdirplus) and fsyncdir;
//! * `handles`: the sharded tables of open files and directories;
//! * `notify`: kernel cache invalidations and the eviction of cold inodes, sent from their
//!   own thread;
//! * `convert`: errno, time, device-number, file-type and attribute conversions between the
//!   engine, fuser and the kernel.

mod attrs;
mod config;
mod convert;
pub(crate) use convert::file_type;
mod dirs;
mod files;
mod handles;
mod init;
mod names;
mod notify;
mod plus_policy;
mod xattrs;

pub use config::{FsConfig, FsInspector, FsStats, ReaddirPlus};
pub use init::has_initial_cap_sys_admin;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{mpsc, Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, INodeNo, IoctlFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use overlay_core::{NewMode, NodeRef, Overlay};
use parking_lot::Mutex;
use tracing::{error, warn};

use crate::pool::LongOpPool;
use crate::prefetch::Prefetcher;
use crate::table::InodeTable;
use convert::caller_of;
use handles::{HandleMap, OpenDir, OpenFile};
use init::backing_stack_depth;
use notify::{notify_loop, Invalidation};

/// The FUSE filesystem: hand it to [`crate::mount`] (or fuser directly).
#[derive(Debug)]
pub struct OverlayFs {
    inner: Arc<Inner>,
}

impl OverlayFs {
    /// Wrap an engine.
    pub fn new(overlay: Overlay, config: FsConfig) -> Self {
        let root = overlay.root();
        let stack_depth = backing_stack_depth(&overlay);
        let (tx, rx) = mpsc::channel::<Invalidation>();
        let notifier: Arc<OnceLock<Notifier>> = Arc::new(OnceLock::new());
        let n2 = notifier.clone();
        let table = Arc::new(InodeTable::with_capacity(root, config.max_inodes));
        let t2 = table.clone();
        let spawned = std::thread::Builder::new()
            .name("ovl-notify".into())
            .spawn(move || notify_loop(rx, n2, t2));
        if let Err(e) = spawned {
            warn!("cannot start the invalidation thread, kernel caches rely on TTLs: {e}");
        }
        let inner = Inner {
            table,
            ovl: overlay,
            cfg: config,
            files: HandleMap::new(),
            dirs: HandleMap::new(),
            passthrough: AtomicBool::new(false),
            writeback: AtomicBool::new(false),
            stack_depth,
            notify_tx: Mutex::new(Some(tx)),
            notifier,
            io_uring: OnceLock::new(),
            long_ops: LongOpPool::new(MAX_OFFLOADED, "ovl-long-op"),
            prefetch: Prefetcher::default(),
            passthrough_opens: AtomicU64::new(0),
            cached_opens: AtomicU64::new(0),
            tmpfiles: Mutex::new(HashMap::new()),
            plus_policy: plus_policy::PlusPolicy::default(),
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
        };
        let inner = Arc::new(inner);
        if !inner.ttl().is_zero() {
            let weak = Arc::downgrade(&inner);
            inner.prefetch.start(move |dir, name| {
                let i = weak.upgrade()?;
                let n = i.ovl.lookup(dir, name).ok();
                if let Some(n) = &n {
                    let _ = i.ovl.getattr(n);
                }
                Some(n)
            });
        }
        OverlayFs { inner }
    }

    /// A handle on the counters, valid while the filesystem lives.
    pub fn inspector(&self) -> FsInspector {
        FsInspector {
            inner: self.inner.clone(),
        }
    }

    /// Give the filesystem the session's notifier (after `Session::new`), enabling precise
    /// kernel cache invalidation.
    pub fn set_notifier(inspector: &FsInspector, notifier: Notifier) {
        let _ = inspector.inner.notifier.set(notifier);
    }

    /// Record the session's io_uring transport (after `Session::new`), for [`FsStats`].
    pub fn set_io_uring(inspector: &FsInspector, status: Option<fuser::IoUringStatus>) {
        // fuser logs the transport itself.
        if let Some(status) = status {
            let _ = inspector.inner.io_uring.set(status);
        }
    }
}

#[derive(Debug)]
struct Inner {
    ovl: Overlay,
    cfg: FsConfig,
    table: Arc<InodeTable>,
    files: HandleMap<OpenFile>,
    dirs: HandleMap<OpenDir>,
    /// Passthrough negotiated (and not switched off after a refusal).
    passthrough: AtomicBool,
    writeback: AtomicBool,
    stack_depth: u32,
    notify_tx: Mutex<Option<mpsc::Sender<Invalidation>>>,
    notifier: Arc<OnceLock<Notifier>>,
    /// The io_uring transport of the session, once known.
    io_uring: OnceLock<fuser::IoUringStatus>,
    long_ops: LongOpPool,
    prefetch: Prefetcher,
    passthrough_opens: AtomicU64,
    cached_opens: AtomicU64,
    /// Which READDIRPLUS chunks carry attributes ([`ReaddirPlus::Adaptive`]).
    plus_policy: plus_policy::PlusPolicy,
    /// Unnamed files from `open(O_TMPFILE)` by node id, while open, for their first `link`.
    tmpfiles: Mutex<HashMap<u64, Weak<File>>>,
    euid: u32,
    egid: u32,
}

/// Upper bound on the threads running long operations; beyond it they queue.
const MAX_OFFLOADED: usize = 64;

/// Run a handler body, turning a panic into EIO for the request (the reply is dropped while
/// unwinding, and fuser's drop guard answers EIO) without killing the worker.
fn guarded(op: &'static str, f: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        error!("{op}: handler panicked ({msg}); answered EIO");
    }
}

fn unknown_node(nodeid: u64) -> Errno {
    warn!("kernel used unknown node id {nodeid}");
    Errno::ESTALE
}

impl Inner {
    fn ttl(&self) -> Duration {
        self.cfg.timeout
    }

    fn node(&self, nodeid: u64) -> Result<NodeRef, Errno> {
        self.table.get(nodeid).ok_or_else(|| unknown_node(nodeid))
    }

    /// [`Inner::node`] with the open upper copy of the inode, if any.
    fn node_with_upper_file(&self, nodeid: u64) -> Result<(NodeRef, Option<Arc<File>>), Errno> {
        self.table
            .get_with_upper_file(nodeid)
            .ok_or_else(|| unknown_node(nodeid))
    }

    /// Queue an invalidation; it is sent after the current reply by the notify thread.
    fn invalidate(&self, inv: Invalidation) {
        if let Some(tx) = self.notify_tx.lock().as_ref() {
            let _ = tx.send(inv);
        }
    }

    /// Drop the kernel's cached attributes of `nodeid` now, before the current reply, so
    /// that no stat after it sees attributes from before a change this request made (the
    /// data copy-up of a metacopy file on open changes its mtime). Attributes only: the
    /// kernel takes no inode or page lock for that, so it cannot wait on this request.
    fn invalidate_attrs_now(&self, nodeid: u64) {
        match self.notifier.get() {
            Some(n) => {
                if let Err(e) = n.inval_inode(INodeNo(nodeid), -1, 0) {
                    tracing::debug!("invalidate attributes of {nodeid}: {e}");
                }
            }
            None => self.invalidate(Invalidation::Inode {
                nodeid,
                data: false,
            }),
        }
    }

    /// Run `f` on a thread of the long-operation pool when `long` (a possible whole-file
    /// copy-up or an fsync), so the fuser workers stay free; inline otherwise.
    fn offload(
        self: &Arc<Self>,
        op: &'static str,
        long: bool,
        f: impl FnOnce(&Inner) + Send + 'static,
    ) {
        if long {
            let me = self.clone();
            let job: crate::pool::Job = Box::new(move || guarded(op, || f(&me)));
            match self.long_ops.submit(job) {
                Ok(()) => return,
                // No thread could be started: run it here.
                Err(job) => return job(),
            }
        }
        guarded(op, || f(self));
    }
}

impl Filesystem for OverlayFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.inner.negotiate(config);
        Ok(())
    }

    fn destroy(&mut self) {
        // Stop the notify and prefetch threads.
        self.inner.notify_tx.lock().take();
        self.inner.prefetch.stop();
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.inner.plus_policy.looked_up(req.pid(), parent.0);
        guarded("lookup", || self.inner.lookup(parent.0, name, reply))
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        guarded("forget", || self.inner.table.forget(ino.0, nlookup))
    }

    // batch_forget: fuser's default calls `forget` for each node (its ForgetOne type is not
    // public, so it cannot be overridden).

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", || {
            self.inner.getattr(ino.0, fh.map(|f| f.0), reply)
        })
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let long = self.inner.long_copy_up_of(ino.0);
        self.inner.offload("setattr", long, move |i| {
            i.setattr(
                ino.0,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
                fh.map(|f| f.0),
                reply,
            )
        })
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("readlink", || self.inner.readlink(ino.0, reply))
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = (req.uid(), req.gid());
        // The engine applies the umask unless the parent has a default ACL (DONT_MASK).
        let mode = NewMode { mode, umask };
        guarded("mknod", || {
            self.inner.mknod(r, parent.0, name, mode, rdev, reply)
        })
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = (req.uid(), req.gid());
        let mode = NewMode { mode, umask };
        guarded("mkdir", || self.inner.mkdir(r, parent.0, name, mode, reply))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("unlink", || self.inner.unlink(parent.0, name, reply))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("rmdir", || self.inner.rmdir(parent.0, name, reply))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = (req.uid(), req.gid());
        guarded("symlink", || {
            self.inner.symlink(r, parent.0, link_name, target, reply)
        })
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let long = self.inner.table.get(parent.0).is_some_and(|p| {
            self.inner
                .ovl
                .lookup(&p, name)
                .is_ok_and(|n| self.inner.long_copy_up(&n))
        });
        if !long {
            return guarded("rename", || {
                self.inner
                    .rename(parent.0, name, newparent.0, newname, flags, reply)
            });
        }
        let (name, newname) = (name.to_os_string(), newname.to_os_string());
        self.inner.offload("rename", true, move |i| {
            i.rename(parent.0, &name, newparent.0, &newname, flags, reply)
        })
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let long = self.inner.long_copy_up_of(ino.0);
        if !long {
            return guarded("link", || {
                self.inner.link(ino.0, newparent.0, newname, reply)
            });
        }
        let newname = newname.to_os_string();
        self.inner.offload("link", true, move |i| {
            i.link(ino.0, newparent.0, &newname, reply)
        })
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags.0;
        let node = match self.inner.node(ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let long = writes && flags & libc::O_TRUNC == 0 && self.inner.long_copy_up(&node);
        self.inner
            .offload("open", long, move |i| i.open(ino.0, node, flags, reply))
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", || self.inner.read(fh.0, offset, size, reply))
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded("write", || self.inner.write(fh.0, offset, data, reply))
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the real file synchronously and locks are the kernel's, so there is
        // nothing to do on close. ENOSYS makes the kernel stop sending FLUSH for this mount
        // (one round trip less per close(); it still writes back its dirty pages first).
        reply.error(Errno::ENOSYS)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded("release", || self.inner.release(fh.0, reply))
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if !self.inner.cfg.fsync {
            // ENOSYS: the kernel stops sending fsync and reports success (fsync=0).
            return reply.error(Errno::ENOSYS);
        }
        self.inner
            .offload("fsync", true, move |i| i.fsync(fh.0, datasync, reply))
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if !self.inner.cfg.fsync {
            return reply.error(Errno::ENOSYS);
        }
        self.inner
            .offload("fsyncdir", true, move |i| i.fsyncdir(fh.0, datasync, reply))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded("opendir", || self.inner.opendir(ino.0, reply))
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        guarded("readdir", || self.inner.readdir(fh.0, offset, reply))
    }

    fn readdirplus(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let attrs = match self.inner.cfg.readdirplus {
            ReaddirPlus::Adaptive => self.inner.plus_policy.wants_attrs(req.pid(), offset),
            ReaddirPlus::Kernel | ReaddirPlus::Always => true,
        };
        guarded("readdirplus", || {
            self.inner.readdirplus(fh.0, offset, attrs, reply)
        })
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guarded("releasedir", || self.inner.releasedir(fh.0, reply))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded("statfs", || self.inner.statfs(reply))
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            return reply.error(Errno::EINVAL);
        }
        let long = self.inner.long_copy_up_of(ino.0);
        if !long {
            return guarded("setxattr", || {
                self.inner.setxattr(ino.0, name, value, flags, reply)
            });
        }
        let (name, value) = (name.to_os_string(), value.to_vec());
        self.inner.offload("setxattr", true, move |i| {
            i.setxattr(ino.0, &name, &value, flags, reply)
        })
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded("getxattr", || self.inner.getxattr(ino.0, name, size, reply))
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let caller = caller_of(req);
        guarded("listxattr", || {
            self.inner.listxattr(caller, ino.0, size, reply)
        })
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let long = self.inner.long_copy_up_of(ino.0);
        if !long {
            return guarded("removexattr", || self.inner.removexattr(ino.0, name, reply));
        }
        let name: OsString = name.to_os_string();
        self.inner.offload("removexattr", true, move |i| {
            i.removexattr(ino.0, &name, reply)
        })
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let r = (req.uid(), req.gid());
        guarded("access", || self.inner.access(r, ino.0, mask, reply))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (req.uid(), req.gid());
        let mode = NewMode { mode, umask };
        guarded("create", || {
            self.inner.create(r, parent.0, name, mode, flags, reply)
        })
    }

    fn tmpfile(
        &self,
        req: &Request,
        parent: INodeNo,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (req.uid(), req.gid());
        let mode = NewMode { mode, umask };
        guarded("tmpfile", || {
            self.inner.tmpfile(r, parent.0, mode, flags, reply)
        })
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        // SETFLAGS and FSSETXATTR copy up.
        let long = matches!(cmd & 0xffff, 0x6602 | 0x5820) && self.inner.long_copy_up_of(ino.0);
        let in_data = in_data.to_vec();
        let caller = caller_of(req);
        self.inner.offload("ioctl", long, move |i| {
            i.ioctl(caller, ino.0, cmd, &in_data, out_size, reply)
        })
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guarded("fallocate", || {
            self.inner.fallocate(fh.0, offset, length, mode, reply)
        })
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guarded("lseek", || self.inner.lseek(fh.0, offset, whence, reply))
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        self.inner
            .offload("copy_file_range", len > (1 << 20), move |i| {
                i.copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len, reply)
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn guarded_swallows_panics() {
        let hit = std::sync::atomic::AtomicBool::new(false);
        guarded("test", || {
            hit.store(true, Ordering::SeqCst);
            panic!("boom");
        });
        assert!(hit.load(Ordering::SeqCst));
    }
}
