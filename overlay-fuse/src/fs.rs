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
//! * Passthrough only for files that already live in the upper layer: a lower file is never
//!   given to the kernel as a backing file, so no write can reach it after a copy-up, even
//!   while read-only opens of the lower file are live. Those are served through the daemon
//!   and switch to the upper copy on their next read.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier,
    OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use overlay_core::{
    Attr, DirEntry, FileKind, NewMode, NodeRef, Overlay, Owner, RenameFlags, SetAttr, TimeSet,
    Timestamp,
};
use parking_lot::{Mutex, RwLock};
use tracing::{debug, error, info, warn};

use crate::caller::{Caller, Capability};
use crate::idmap::IdPolicy;
use crate::pool::LongOpPool;
use crate::prefetch::{Job, Prefetcher};
use crate::table::{CachedXattr, InodeTable, IoMode};

/// Behaviour of an [`OverlayFs`] (the FUSE-side options; the layers are in the engine).
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Entry, attribute and negative-entry TTL (`timeout=`). Zero disables the kernel's
    /// caching of names, attributes and directory listings.
    pub timeout: Duration,
    /// ID translation and squashing.
    pub ids: IdPolicy,
    /// Report `st_nlink` 1 for every directory (`static_nlink`).
    pub static_nlink: bool,
    /// Negotiate POSIX ACLs (off with `noacl`).
    pub acl: bool,
    /// Honour fsync (off with `fsync=0` or `volatile`: fsync answers ENOSYS, which the kernel
    /// then treats as success without asking again).
    pub fsync: bool,
    /// Use the kernel's writeback cache when passthrough is not in use (`writeback=0` off).
    pub writeback: bool,
    /// Try FUSE passthrough (it is used only with CAP_SYS_ADMIN in the initial user
    /// namespace, and never together with `fsync=0`).
    pub passthrough: bool,
    /// Support xattrs (off with `noxattrs=1`: every xattr call answers ENOSYS).
    pub xattrs: bool,
    /// Serve requests through FUSE over io_uring when the kernel offers it (`io_uring=0`
    /// off): one ring per CPU, each served by a thread pinned to that CPU, so a request is
    /// served on the CPU of its caller. The kernel offers it only while
    /// `/sys/module/fuse/parameters/enable_uring` is `Y`.
    pub io_uring: bool,
    /// Mount read-only (no upper layer, or `ro`).
    pub read_only: bool,
    /// Soft limit on the inodes the daemon keeps (`max_inodes=`, 0: none). The kernel keeps
    /// every dentry it has memory for, and each holds one of our inodes; beyond the limit
    /// the least recently used ones are dropped from the kernel's cache (which then forgets
    /// them), so the daemon's memory stays bounded on huge trees.
    pub max_inodes: usize,
    /// Test hook: a lookup of this name panics inside the handler (to check that a panic
    /// becomes EIO for that request and the mount survives).
    #[doc(hidden)]
    pub panic_on_lookup: Option<OsString>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            timeout: Duration::from_secs(1_000_000_000),
            ids: IdPolicy::default(),
            static_nlink: false,
            acl: true,
            fsync: true,
            writeback: true,
            passthrough: true,
            xattrs: true,
            io_uring: true,
            read_only: false,
            max_inodes: 128 * 1024,
            panic_on_lookup: None,
        }
    }
}

/// Counters of what the filesystem holds, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Inodes the kernel holds references to (including the root).
    pub inodes: usize,
    /// Open file handles.
    pub open_files: usize,
    /// Open directory handles.
    pub open_dirs: usize,
    /// Whether passthrough was negotiated (and not switched off since).
    pub passthrough: bool,
    /// Whether the writeback cache was negotiated.
    pub writeback: bool,
    /// Opens given a passthrough backing so far.
    pub passthrough_opens: u64,
    /// Opens served through the daemon so far.
    pub cached_opens: u64,
    /// Directory entries resolved ahead of the kernel's lookups so far.
    pub prefetched: u64,
    /// FUSE-over-io_uring queues serving the mount (one per possible CPU), 0 when requests
    /// come through `/dev/fuse` reads.
    pub io_uring_queues: usize,
    /// Requests served through the io_uring queues so far.
    pub io_uring_requests: u64,
}

/// A cheap, cloneable view of a running [`OverlayFs`]'s counters.
#[derive(Debug, Clone)]
pub struct FsInspector {
    inner: Arc<Inner>,
}

impl FsInspector {
    /// Current counters.
    pub fn stats(&self) -> FsStats {
        FsStats {
            inodes: self.inner.table.len(),
            open_files: self.inner.files.len(),
            open_dirs: self.inner.dirs.len(),
            passthrough: self.inner.passthrough.load(Ordering::Relaxed),
            writeback: self.inner.writeback.load(Ordering::Relaxed),
            passthrough_opens: self.inner.passthrough_opens.load(Ordering::Relaxed),
            cached_opens: self.inner.cached_opens.load(Ordering::Relaxed),
            prefetched: self.inner.prefetch.resolved(),
            io_uring_queues: self.inner.io_uring.get().map_or(0, |s| s.queues),
            io_uring_requests: self
                .inner
                .io_uring
                .get()
                .map_or(0, |s| s.served.load(Ordering::Relaxed)),
        }
    }
}

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

/// Stack depth for passthrough backing files: 2 when a layer is itself on a stacking
/// filesystem (overlayfs, or FUSE with passthrough), else 1 (which keeps this mount usable as
/// a layer of a kernel overlay).
fn backing_stack_depth(ovl: &Overlay) -> u32 {
    const OVERLAYFS: i64 = overlay_core::stack::OVERLAYFS_SUPER_MAGIC;
    const FUSE: i64 = 0x6573_5546;
    let stack = ovl.stack();
    let mut paths: Vec<&Path> = stack.lowers().iter().map(|l| l.path.as_path()).collect();
    if let Some(u) = stack.upper() {
        paths.push(&u.upper);
    }
    let stacked = paths.iter().any(|p| {
        rustix::fs::statfs(*p)
            .map(|s| {
                #[allow(clippy::unnecessary_cast)] // c_long on some targets
                let t = s.f_type as i64;
                t == OVERLAYFS || t == FUSE
            })
            .unwrap_or(true)
    });
    if stacked {
        2
    } else {
        1
    }
}

/// True when this process has CAP_SYS_ADMIN in the initial user namespace (the kernel's
/// condition for `FUSE_DEV_IOC_BACKING_OPEN`).
pub fn has_initial_cap_sys_admin() -> bool {
    // PROC_USER_INIT_INO: the inode number of the initial user namespace.
    const INIT_USER_NS: &str = "user:[4026531837]";
    const CAP_SYS_ADMIN: u32 = 21;
    let in_init_ns = std::fs::read_link("/proc/self/ns/user")
        .map(|l| l.as_os_str() == INIT_USER_NS)
        .unwrap_or(false);
    if !in_init_ns {
        return false;
    }
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// A kernel cache invalidation, sent after the reply from the notify thread (sending it from
/// a handler can deadlock on the kernel's inode lock).
#[derive(Debug)]
enum Invalidation {
    /// Attributes of an inode (and, with `data`, its page cache).
    Inode { nodeid: u64, data: bool },
    /// The inode table is over its capacity: drop cold dentries.
    Evict,
    /// A name now refers to another inode: drop the kernel's dentry.
    Entry { parent: u64, name: OsString },
}

fn notify_loop(
    rx: mpsc::Receiver<Invalidation>,
    notifier: Arc<OnceLock<Notifier>>,
    table: Arc<InodeTable>,
) {
    while let Ok(msg) = rx.recv() {
        let Some(n) = notifier.get() else {
            if matches!(msg, Invalidation::Evict) {
                table.cancel_eviction();
            }
            continue;
        };
        let res = match &msg {
            Invalidation::Inode { nodeid, data } => {
                n.inval_inode(INodeNo(*nodeid), if *data { 0 } else { -1 }, 0)
            }
            Invalidation::Evict => {
                evict_cold(n, &table);
                while table.end_eviction() {
                    evict_cold(n, &table);
                }
                Ok(())
            }
            Invalidation::Entry { parent, name } => n.inval_entry(INodeNo(*parent), name),
        };
        if let Err(e) = res {
            debug!("invalidation {msg:?}: {e}");
        }
    }
}

/// Ask the kernel to drop the dentries of cold inodes until the table is back at 3/4 of its
/// capacity; their FORGETs then free the entries and the engine nodes.
fn evict_cold(n: &Notifier, table: &InodeTable) {
    let want = table.excess_over(table.capacity() / 4 * 3);
    if want == 0 {
        return;
    }
    let cold = table.cold_entries(want);
    debug!("evicting {} of {} inodes", cold.len(), table.len());
    for (parent, node) in cold {
        let path = node.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        // ENOENT: the kernel no longer has that dentry (swallowed by fuser).
        if let Err(e) = n.inval_entry(INodeNo(parent), name) {
            debug!("evict {}: {e}", path.display());
            table.eviction_failed(table.nodeid_of(node.ino()));
        }
    }
}

type Shard<T> = Mutex<HashMap<u64, Arc<T>>>;

/// A sharded table of open handles.
#[derive(Debug)]
struct HandleMap<T> {
    shards: Box<[Shard<T>]>,
    next: AtomicU64,
}

impl<T> HandleMap<T> {
    const SHARDS: usize = 16;

    fn new() -> Self {
        HandleMap {
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            next: AtomicU64::new(1),
        }
    }

    fn shard(&self, fh: u64) -> &Shard<T> {
        &self.shards[fh as usize % Self::SHARDS]
    }

    fn insert(&self, v: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.shard(fh).lock().insert(fh, Arc::new(v));
        fh
    }

    fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.shard(fh).lock().get(&fh).cloned()
    }

    fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.shard(fh).lock().remove(&fh)
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// An open regular file.
#[derive(Debug)]
struct OpenFile {
    nodeid: u64,
    node: NodeRef,
    /// The real file in its layer; replaced by the upper copy when a read-only open of a lower
    /// file sees that the file was copied up.
    file: RwLock<Arc<File>>,
    /// The file is the lower one (read-only open of a lower-only file).
    from_lower: AtomicBool,
    mode: IoMode,
}

/// An open directory with its listing snapshot (taken at the first read from offset 0).
#[derive(Debug)]
struct OpenDir {
    nodeid: u64,
    node: NodeRef,
    entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
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

fn errno(op: &str, e: &overlay_core::Error) -> Errno {
    let code = e.raw_os_error();
    if code == libc::EIO {
        warn!("{op}: {e}");
    } else {
        debug!("{op}: {e}");
    }
    Errno::from_i32(code)
}

fn io_errno(op: &str, e: &io::Error) -> Errno {
    debug!("{op}: {e}");
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn rustix_errno(op: &str, e: rustix::io::Errno) -> Errno {
    debug!("{op}: {e}");
    Errno::from_i32(e.raw_os_error())
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec.into())
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timestamp { sec, nsec }
        }
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(timestamp(t)),
    }
}

/// The credentials of the process behind `req`.
fn caller_of(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// `dev_t` (glibc encoding) to the kernel's 32-bit `new_encode_dev` used by FUSE.
fn encode_dev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// FUSE's 32-bit device number to `dev_t`.
fn decode_dev(rdev: u32) -> u64 {
    let major = (rdev & 0xf_ff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xf_ff00);
    libc::makedev(major, minor)
}

fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn unknown_node(nodeid: u64) -> Errno {
    warn!("kernel used unknown node id {nodeid}");
    Errno::ESTALE
}

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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

    fn to_attr(&self, nodeid: u64, a: &Attr) -> FileAttr {
        let nlink = if self.cfg.static_nlink && a.kind == FileKind::Directory {
            1
        } else {
            a.nlink
        };
        FileAttr {
            ino: INodeNo(nodeid),
            size: a.size,
            blocks: a.blocks,
            atime: system_time(a.atime),
            mtime: system_time(a.mtime),
            ctime: system_time(a.ctime),
            crtime: UNIX_EPOCH,
            kind: file_type(a.kind),
            perm: (a.perm & 0o7777) as u16,
            nlink,
            uid: self.cfg.ids.view_uid(a.uid),
            gid: self.cfg.ids.view_gid(a.gid),
            rdev: encode_dev(a.rdev),
            blksize: a.blksize,
            flags: 0,
        }
    }

    /// Record one kernel lookup of `node` as a name in `parent` (see
    /// [`InodeTable::remember`]), and start an eviction sweep when the table is over its
    /// capacity.
    fn remember(&self, node: NodeRef, parent: u64) -> Option<(u64, u64)> {
        let r = self.table.remember(node, parent);
        if self.table.begin_eviction() {
            match self.notify_tx.lock().as_ref() {
                Some(tx) if tx.send(Invalidation::Evict).is_ok() => {}
                _ => self.table.cancel_eviction(),
            }
        }
        r
    }

    /// After an operation that may have copied `node` up: a lower hard link split by the
    /// copy-up now has the upper inode's number (as with the kernel overlay), so its name no
    /// longer belongs to inode `nodeid`. The kernel's dentry is dropped; the next lookup
    /// gets the new number.
    fn check_split(&self, nodeid: u64, node: &NodeRef) {
        if self.table.nodeid_of(node.ino()) == nodeid {
            return;
        }
        if let Some(parent) = self.table.split(nodeid, node) {
            if let Some(name) = node.path().file_name() {
                self.invalidate(Invalidation::Entry {
                    parent,
                    name: name.to_os_string(),
                });
            }
        }
    }

    /// Queue an invalidation; it is sent after the current reply by the notify thread.
    fn invalidate(&self, inv: Invalidation) {
        if let Some(tx) = self.notify_tx.lock().as_ref() {
            let _ = tx.send(inv);
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

    /// Owner for a new object: the caller's ids translated to layer ids, with the group of a
    /// set-group-ID parent. `None` when they are the daemon's own ids (no chown needed).
    fn owner(&self, req_uid: u32, req_gid: u32, parent: &NodeRef) -> Result<Option<Owner>, Errno> {
        let ids = &self.cfg.ids;
        let uid = ids.uids.to_layer(req_uid).unwrap_or(self.euid);
        let mut gid = ids.gids.to_layer(req_gid).unwrap_or(self.egid);
        if let Ok(pa) = self.ovl.getattr(parent) {
            if pa.perm & libc::S_ISGID != 0 {
                gid = pa.gid;
            }
        }
        if uid == self.euid && gid == self.egid {
            Ok(None)
        } else {
            Ok(Some(Owner { uid, gid }))
        }
    }

    fn reply_entry(&self, parent: u64, node: NodeRef, reply: ReplyEntry) {
        match self.ovl.getattr(&node) {
            Ok(a) => match self.remember(node, parent) {
                Some((id, generation)) => {
                    reply.entry(&self.ttl(), &self.to_attr(id, &a), Generation(generation))
                }
                // Removed by another request since: the name is gone.
                None => reply.error(Errno::ENOENT),
            },
            Err(e) => reply.error(errno("getattr", &e)),
        }
    }

    // ---- names ----

    fn lookup(&self, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if self.cfg.panic_on_lookup.as_deref() == Some(name) {
            panic!("test hook: lookup of {name:?}");
        }
        let p = match self.node(parent) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.ovl.lookup(&p, name) {
            Ok(n) => self.reply_entry(parent, n, reply),
            Err(e) if e.is_not_found() && !self.ttl().is_zero() => {
                // Negative entry: every name creation goes through this mount's VFS, which
                // replaces the negative dentry, so caching absence is safe.
                reply.entry(&self.ttl(), &negative_attr(), Generation(0))
            }
            Err(e) => reply.error(errno("lookup", &e)),
        }
    }

    fn mknod(
        &self,
        req: (u32, u32),
        parent: u64,
        name: &OsStr,
        mode: NewMode,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.make_entry("mknod", req, parent, reply, |p, owner| {
            self.ovl.mknod(p, name, mode, decode_dev(rdev), owner)
        })
    }

    fn mkdir(&self, req: (u32, u32), parent: u64, name: &OsStr, mode: NewMode, reply: ReplyEntry) {
        self.make_entry("mkdir", req, parent, reply, |p, owner| {
            self.ovl.mkdir(p, name, mode, owner)
        })
    }

    fn symlink(
        &self,
        req: (u32, u32),
        parent: u64,
        name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.make_entry("symlink", req, parent, reply, |p, owner| {
            self.ovl.symlink(p, name, target.as_os_str(), owner)
        })
    }

    /// Create a name in `parent` with `make` (given the parent node and the new object's
    /// owner for the requesting ids) and answer with its entry.
    fn make_entry(
        &self,
        op: &str,
        req: (u32, u32),
        parent: u64,
        reply: ReplyEntry,
        make: impl FnOnce(&NodeRef, Option<Owner>) -> overlay_core::Result<NodeRef>,
    ) {
        let r = self.node(parent).and_then(|p| {
            let owner = self.owner(req.0, req.1, &p)?;
            make(&p, owner).map_err(|e| errno(op, &e))
        });
        match r {
            Ok(n) => self.reply_entry(parent, n, reply),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let n = self.node(ino)?;
            let p = self.node(newparent)?;
            let was_lower = n.is_lower_only();
            let linked = self
                .ovl
                .link(&n, &p, newname)
                .map_err(|e| errno("link", &e))?;
            if was_lower {
                self.check_split(ino, &n);
            }
            Ok::<_, Errno>((linked, was_lower))
        })();
        match r {
            Ok((n, was_lower)) => {
                self.reply_entry(newparent, n, reply);
                if was_lower {
                    self.invalidate(Invalidation::Inode {
                        nodeid: ino,
                        data: false,
                    });
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.node(parent) {
            Ok(p) => {
                // The kernel holds the name, so this is the engine's live child (cheap).
                let victim = self.ovl.lookup(&p, name).ok();
                let last_link = victim.as_ref().is_some_and(|v| self.is_last_link(v));
                let marked = victim
                    .as_ref()
                    .and_then(|v| self.table.removing(v, last_link));
                match self.ovl.unlink(&p, name) {
                    Ok(()) => {
                        // Before the reply: the kernel may send the next request at once.
                        if let Some(v) = victim {
                            self.table.unlinked(&v, last_link);
                        }
                        reply.ok();
                    }
                    Err(e) => {
                        self.table.removal_failed(marked);
                        reply.error(errno("unlink", &e))
                    }
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.node(parent) {
            Ok(p) => {
                let victim = self.ovl.lookup(&p, name).ok();
                let marked = victim.as_ref().and_then(|v| self.table.removing(v, true));
                match self.ovl.rmdir(&p, name) {
                    Ok(()) => {
                        if let Some(v) = victim {
                            self.table.unlinked(&v, true);
                        }
                        reply.ok()
                    }
                    Err(e) => {
                        self.table.removal_failed(marked);
                        reply.error(errno("rmdir", &e))
                    }
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(fuser::RenameFlags::RENAME_WHITEOUT)
            || !(flags - fuser::RenameFlags::RENAME_NOREPLACE - fuser::RenameFlags::RENAME_EXCHANGE)
                .is_empty()
        {
            return reply.error(Errno::EINVAL);
        }
        let mut f = RenameFlags::empty();
        if flags.contains(fuser::RenameFlags::RENAME_NOREPLACE) {
            f |= RenameFlags::NOREPLACE;
        }
        if flags.contains(fuser::RenameFlags::RENAME_EXCHANGE) {
            f |= RenameFlags::EXCHANGE;
        }
        let (p, np) = match (self.node(parent), self.node(newparent)) {
            (Ok(p), Ok(np)) => (p, np),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let victim = if f.contains(RenameFlags::EXCHANGE) {
            None
        } else {
            self.ovl.lookup(&np, newname).ok()
        };
        let last_link = victim.as_ref().is_some_and(|v| self.is_last_link(v));
        let marked = victim
            .as_ref()
            .and_then(|v| self.table.removing(v, last_link));
        match self.ovl.rename(&p, name, &np, newname, f) {
            Ok(()) => {
                // Before the reply (the kernel may send the next request at once): keep the
                // table's engine nodes current for the moved object(s), and the parent of a
                // moved directory (for "..").
                if let Some(v) = victim {
                    self.table.unlinked(&v, last_link);
                }
                self.refresh_name(newparent, &np, newname);
                if f.contains(RenameFlags::EXCHANGE) {
                    self.refresh_name(parent, &p, name);
                }
                reply.ok();
            }
            Err(e) => {
                self.table.removal_failed(marked);
                reply.error(errno("rename", &e))
            }
        }
    }

    /// True when removing the name of `node` removes the object: a directory, or a file
    /// with one link (asked before the removal; an error counts as the last link, which at
    /// worst makes the kernel drop its inode early).
    fn is_last_link(&self, node: &NodeRef) -> bool {
        node.kind() == FileKind::Directory || self.ovl.getattr(node).map_or(true, |a| a.nlink <= 1)
    }

    fn refresh_name(&self, parent: u64, p: &NodeRef, name: &OsStr) {
        if let Ok(n) = self.ovl.lookup(p, name) {
            self.table.refresh(n, parent);
        }
    }

    // ---- attributes ----

    fn getattr(&self, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
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
    fn setattr(
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
                    Ok(md) => {
                        let a = attr_from_metadata(&md, n.ino());
                        reply.attr(&self.ttl(), &self.to_attr(ino, &a))
                    }
                    Err(e) => reply.error(rustix_errno("setattr", e)),
                };
            }
        }
        let was_lower = n.is_lower_only();
        match self.ovl.setattr(&n, &changes) {
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

    fn readlink(&self, ino: u64, reply: ReplyData) {
        match self
            .node(ino)
            .and_then(|n| self.ovl.readlink(&n).map_err(|e| errno("readlink", &e)))
        {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, req: (u32, u32), ino: u64, mask: AccessFlags, reply: ReplyEmpty) {
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

    fn statfs(&self, reply: ReplyStatfs) {
        match self.ovl.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", &e)),
        }
    }

    // ---- xattrs ----

    fn getxattr(&self, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
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
    fn listxattr(&self, caller: Caller, ino: u64, size: u32, reply: ReplyXattr) {
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

    fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32, reply: ReplyEmpty) {
        if !self.cfg.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        self.change_xattr("setxattr", ino, reply, |n| {
            self.ovl.setxattr(n, name, value, flags)
        })
    }

    fn removexattr(&self, ino: u64, name: &OsStr, reply: ReplyEmpty) {
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

    // ---- files ----

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

    /// Decide how an open of `nodeid` does its I/O and count it. `upper_file` is true when
    /// the opened file is a regular file in the upper layer (the only passthrough candidates).
    fn choose_io(
        &self,
        nodeid: u64,
        upper_file: bool,
        file: &Arc<File>,
        open_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> (IoMode, FopenFlags, Option<Arc<BackingId>>) {
        let want_pt = upper_file && self.passthrough.load(Ordering::Relaxed);
        let keep = if self.ttl().is_zero() {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        };
        let decided = self.table.with_io(nodeid, |io| {
            if upper_file && io.upper_file.is_none() {
                io.upper_file = Some(file.clone());
            }
            // Passthrough opens of this inode are live: every further open must share the
            // backing (the kernel refuses anything else). Only upper files ever get one.
            if upper_file && io.passthrough > 0 {
                if let Some(b) = &io.backing {
                    io.passthrough += 1;
                    return (IoMode::Passthrough, FopenFlags::empty(), Some(b.clone()));
                }
            }
            if want_pt && io.cached == 0 {
                match open_backing(file) {
                    Ok(b) => {
                        let b = Arc::new(b);
                        io.backing = Some(b.clone());
                        io.passthrough = 1;
                        io.had_passthrough = true;
                        return (IoMode::Passthrough, FopenFlags::empty(), Some(b));
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
            (IoMode::Cached, flags, None)
        });
        let decided = decided.unwrap_or((IoMode::Cached, FopenFlags::empty(), None));
        let counter = match decided.0 {
            IoMode::Passthrough => &self.passthrough_opens,
            IoMode::Cached => &self.cached_opens,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        decided
    }

    fn open(&self, ino: u64, node: NodeRef, flags: i32, reply: ReplyOpen) {
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
        let upper_file = !from_lower && !split && node.kind() == FileKind::File;
        let file = Arc::new(file);
        let (mode, fopen, backing) =
            self.choose_io(ino, upper_file, &file, |f| reply.open_backing(f));
        let fh = self.files.insert(OpenFile {
            nodeid: ino,
            node,
            file: RwLock::new(file),
            from_lower: AtomicBool::new(from_lower),
            mode,
        });
        match backing {
            Some(b) => reply.opened_passthrough(FileHandle(fh), fopen, &b),
            None => reply.opened(FileHandle(fh), fopen),
        }
        if was_lower && !from_lower {
            // Copied up: ctime and blocks may differ now.
            self.invalidate(Invalidation::Inode {
                nodeid: ino,
                data: false,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
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
            let a = match file.metadata() {
                Ok(md) => attr_from_metadata(&md, node.ino()),
                Err(_) => self.ovl.getattr(&node).map_err(|e| errno("create", &e))?,
            };
            Ok::<_, Errno>((node, file, a))
        })();
        let (node, file, a) = match r {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let Some((id, generation)) = self.remember(node.clone(), parent) else {
            // Removed by another request since: the name is gone.
            return reply.error(Errno::ENOENT);
        };
        let file = Arc::new(file);
        let (mode, fopen, backing) = self.choose_io(id, true, &file, |f| reply.open_backing(f));
        let fh = self.files.insert(OpenFile {
            nodeid: id,
            node,
            file: RwLock::new(file),
            from_lower: AtomicBool::new(false),
            mode,
        });
        let attr = self.to_attr(id, &a);
        match backing {
            Some(b) => reply.created_passthrough(
                &self.ttl(),
                &attr,
                Generation(generation),
                FileHandle(fh),
                fopen,
                &b,
            ),
            None => reply.created(
                &self.ttl(),
                &attr,
                Generation(generation),
                FileHandle(fh),
                fopen,
            ),
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

    fn read(&self, fh: u64, offset: u64, size: u32, reply: ReplyData) {
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

    fn write(&self, fh: u64, offset: u64, data: &[u8], reply: ReplyWrite) {
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

    fn release(&self, fh: u64, reply: ReplyEmpty) {
        if let Some(of) = self.files.remove(fh) {
            self.table.release_io(of.nodeid, of.mode);
        }
        reply.ok();
    }

    fn fsync(&self, fh: u64, datasync: bool, reply: ReplyEmpty) {
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

    fn fsyncdir(&self, fh: u64, datasync: bool, reply: ReplyEmpty) {
        let Some(d) = self.dirs.get(fh) else {
            return reply.error(Errno::EBADF);
        };
        match self.ovl.fsync_dir(&d.node, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsyncdir", &e)),
        }
    }

    /// The inode-flags ioctls (`lsattr`, `chattr`; the kernel sends them for
    /// `FS_IOC_GETFLAGS`/`SETFLAGS` and for fileattr calls), on the topmost real object, a
    /// set after a copy-up. Every other ioctl: ENOTTY, for that call only.
    ///
    /// Only the 64-bit numbers, which the kernel sends after its own checks, are served. The
    /// 32-bit ones (`FS_IOC32_*`) reach a FUSE server from a 64-bit process with no check at
    /// all; the kernel overlay answers them ENOTTY, and so do we. A set is checked here
    /// again all the same, with the caller's credentials (the daemon's would allow
    /// anything): the owner or `CAP_FOWNER`, and `CAP_LINUX_IMMUTABLE` to change the
    /// immutable or append-only flag, as the kernel's `fileattr_set_prepare` does.
    fn ioctl(
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
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match cmd {
            FSGETXATTR => {
                // struct fsxattr, its flags derived from the inode flags as the kernel's
                // fileattr_fill_flags does; extent size hints and project id read as 0.
                match self.ovl.inode_flags(&n) {
                    Ok(f) => {
                        let mut out = [0u8; 28];
                        out[..4].copy_from_slice(&fs_xflags(f.bits()).to_ne_bytes());
                        reply.ioctl(0, &out[..(out_size as usize).min(out.len())])
                    }
                    Err(e) => reply.error(errno("ioctl", &e)),
                }
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
                if let Err(e) = self.may_set_inode_flags(caller, &n, flags) {
                    return reply.error(e);
                }
                let was_lower = n.is_lower_only();
                match self.ovl.set_inode_flags(&n, flags) {
                    Ok(()) => {
                        if was_lower {
                            self.check_split(ino, &n);
                        }
                        reply.ioctl(0, &[])
                    }
                    Err(e) => reply.error(errno("ioctl", &e)),
                }
            }
            _ => reply.error(Errno::ENOTTY),
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

    fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
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

    fn lseek(&self, fh: u64, offset: i64, whence: i32, reply: ReplyLseek) {
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
    fn copy_file_range(
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

    // ---- directories ----

    fn opendir(&self, ino: u64, reply: ReplyOpen) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if n.kind() != FileKind::Directory {
            return reply.error(Errno::ENOTDIR);
        }
        let fh = self.dirs.insert(OpenDir {
            nodeid: ino,
            node: n,
            entries: Mutex::new(None),
        });
        let flags = if self.ttl().is_zero() {
            FopenFlags::empty()
        } else {
            // Let the kernel cache listings: every change goes through this mount's VFS,
            // which invalidates the cache of the directory it changes.
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        };
        reply.opened(FileHandle(fh), flags)
    }

    fn dir_entries(&self, d: &OpenDir, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        let mut slot = d.entries.lock();
        if offset == 0 || slot.is_none() {
            let list = self
                .ovl
                .readdir(&d.node)
                .map_err(|e| errno("readdir", &e))?;
            *slot = Some(Arc::new(list));
        }
        Ok(slot.clone().unwrap_or_default())
    }

    fn readdir(&self, fh: u64, offset: u64, mut reply: ReplyDirectory) {
        let d = match self.dirs.get(fh) {
            Some(d) => d,
            None => return reply.error(Errno::EBADF),
        };
        let entries = match self.dir_entries(&d, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let parent = self.table.parent_of(d.nodeid).unwrap_or(d.nodeid);
        let total = entries.len() as u64 + 2;
        let mut sent = offset;
        for i in offset..total {
            let full = match i {
                0 => reply.add(INodeNo(d.nodeid), 1, FileType::Directory, "."),
                1 => reply.add(INodeNo(parent), 2, FileType::Directory, ".."),
                _ => {
                    let e = &entries[(i - 2) as usize];
                    reply.add(
                        INodeNo(self.table.nodeid_of(e.ino)),
                        i + 1,
                        file_type(e.kind),
                        &e.name,
                    )
                }
            };
            if full {
                break;
            }
            sent = i + 1;
        }
        reply.ok();
        // Entries listed without attributes are usually stat'ed next: resolve them ahead.
        let from = offset.max(2) as usize - 2;
        let to = (sent.max(2) as usize - 2).min(entries.len());
        if from < to {
            self.prefetch.submit(Job {
                dir: d.node.clone(),
                entries,
                range: from..to,
            });
        }
    }

    fn readdirplus(&self, fh: u64, offset: u64, mut reply: ReplyDirectoryPlus) {
        let d = match self.dirs.get(fh) {
            Some(d) => d,
            None => return reply.error(Errno::EBADF),
        };
        let entries = match self.dir_entries(&d, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let parent = self.table.parent_of(d.nodeid).unwrap_or(d.nodeid);
        let ttl = self.ttl();
        let total = entries.len() as u64 + 2;
        for i in offset..total {
            if i < 2 {
                // "." and "..": the kernel takes no lookup reference for them.
                let (id, name) = if i == 0 {
                    (d.nodeid, ".")
                } else {
                    (parent, "..")
                };
                let mut attr = negative_attr();
                attr.ino = INodeNo(id);
                attr.kind = FileType::Directory;
                if reply.add(
                    INodeNo(id),
                    i + 1,
                    name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            let e = &entries[(i - 2) as usize];
            // One `lstat` when the lookup resolves the name (the attributes come with it).
            let Ok((node, a)) = self.ovl.lookup_attr(&d.node, &e.name) else {
                continue; // removed since the snapshot
            };
            // Count the lookup first; undo it if the entry does not fit.
            let Some((id, generation)) = self.remember(node, d.nodeid) else {
                continue; // removed since the lookup
            };
            let attr = self.to_attr(id, &a);
            if reply.add(
                INodeNo(id),
                i + 1,
                &e.name,
                &ttl,
                &attr,
                Generation(generation),
            ) {
                self.table.forget(id, 1);
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(&self, fh: u64, reply: ReplyEmpty) {
        self.dirs.remove(fh);
        reply.ok()
    }

    // ---- INIT ----

    fn negotiate(&self, config: &mut KernelConfig) {
        // add_capabilities is all-or-nothing: add each flag on its own. Never add flags that
        // change the wire format in ways fuser 0.18 does not parse (SETXATTR_EXT,
        // SECURITY_CTX, CREATE_SUPP_GROUP, ALLOW_IDMAP). OVER_IO_URING is served by the
        // transport our vendored fuser adds (third_party/fuser/src/uring.rs).
        fn add(config: &mut KernelConfig, flag: InitFlags, name: &str) -> bool {
            match config.add_capabilities(flag) {
                Ok(()) => true,
                Err(_) => {
                    info!("kernel does not offer {name}");
                    false
                }
            }
        }
        add(config, InitFlags::FUSE_ASYNC_READ, "ASYNC_READ");
        add(config, InitFlags::FUSE_BIG_WRITES, "BIG_WRITES");
        add(config, InitFlags::FUSE_PARALLEL_DIROPS, "PARALLEL_DIROPS");
        add(config, InitFlags::FUSE_ATOMIC_O_TRUNC, "ATOMIC_O_TRUNC");
        add(config, InitFlags::FUSE_CACHE_SYMLINKS, "CACHE_SYMLINKS");
        add(config, InitFlags::FUSE_ASYNC_DIO, "ASYNC_DIO");
        if add(config, InitFlags::FUSE_DO_READDIRPLUS, "DO_READDIRPLUS") {
            add(config, InitFlags::FUSE_READDIRPLUS_AUTO, "READDIRPLUS_AUTO");
        }
        if self.cfg.acl && self.cfg.xattrs && add(config, InitFlags::FUSE_POSIX_ACL, "POSIX_ACL") {
            // The caller's umask comes separately: the engine applies it only where the
            // parent has no default ACL (see `overlay_core::NewMode`).
            add(config, InitFlags::FUSE_DONT_MASK, "DONT_MASK");
        }
        let mut passthrough = false;
        if self.cfg.passthrough && self.cfg.fsync && !self.cfg.read_only {
            if !has_initial_cap_sys_admin() {
                info!("no CAP_SYS_ADMIN in the initial user namespace: no passthrough");
            } else if add(config, InitFlags::FUSE_PASSTHROUGH, "PASSTHROUGH") {
                match config.set_max_stack_depth(self.stack_depth) {
                    Ok(_) => passthrough = true,
                    Err(max) => {
                        passthrough = config.set_max_stack_depth(max).is_ok();
                    }
                }
            }
        }
        self.passthrough.store(passthrough, Ordering::Relaxed);
        if !passthrough && self.cfg.writeback && !self.cfg.read_only {
            let wb = add(config, InitFlags::FUSE_WRITEBACK_CACHE, "WRITEBACK_CACHE");
            self.writeback.store(wb, Ordering::Relaxed);
        }
        if self.cfg.io_uring
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_err()
        {
            use overlay_core::mount::probe::{fuse_uring_switch_on, FUSE_URING_SWITCH};
            if fuse_uring_switch_on() == Some(false) {
                info!(
                    "FUSE over io_uring is switched off in this kernel: `echo Y > \
                     {FUSE_URING_SWITCH}` (as root) makes requests cheaper for mounts made \
                     after it"
                );
            } else {
                info!("kernel does not offer FUSE over io_uring");
            }
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        info!(
            "FUSE session: passthrough={passthrough} writeback={} acl={}",
            self.writeback.load(Ordering::Relaxed),
            self.cfg.acl
        );
    }
}

/// `fsx_xflags` for inode flags `FS_*_FL` (the kernel's `fileattr_fill_flags`).
fn fs_xflags(flags: u32) -> u32 {
    const MAP: [(u32, u32); 7] = [
        (0x0000_0008, 0x0000_0020), // SYNC
        (0x0000_0010, 0x0000_0008), // IMMUTABLE
        (0x0000_0020, 0x0000_0010), // APPEND
        (0x0000_0040, 0x0000_0080), // NODUMP
        (0x0000_0080, 0x0000_0040), // NOATIME
        (0x0200_0000, 0x0000_8000), // DAX
        (0x2000_0000, 0x0000_0200), // PROJINHERIT
    ];
    MAP.iter()
        .filter(|(fl, _)| flags & fl != 0)
        .fold(0, |x, (_, xfl)| x | xfl)
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

/// Attributes of an open file whose name is gone, from `fstat` of the real file.
fn attr_from_metadata(md: &std::fs::Metadata, ino: u64) -> Attr {
    let mode = md.mode();
    let kind = FileKind::from_mode(mode);
    let ts = |sec: i64, nsec: i64| Timestamp {
        sec,
        nsec: nsec as u32,
    };
    Attr {
        ino,
        kind,
        perm: mode & 0o7777,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        size: md.size(),
        blocks: md.blocks(),
        blksize: md.blksize() as u32,
        atime: ts(md.atime(), md.atime_nsec()),
        mtime: ts(md.mtime(), md.mtime_nsec()),
        ctime: ts(md.ctime(), md.ctime_nsec()),
    }
}

fn needs_copy_up_of_data(node: &NodeRef) -> bool {
    node.kind() == FileKind::File && node.is_lower_only()
}

/// Copy-ups of files up to this size run on the request's worker: handing them to the
/// long-operation pool costs a thread wake-up (about as long as copying a small file).
const SHORT_COPY_UP: u64 = 1 << 20;

impl Inner {
    /// [`Inner::long_copy_up`] of the node the kernel calls `nodeid` (false if unknown).
    fn long_copy_up_of(&self, nodeid: u64) -> bool {
        self.table
            .get(nodeid)
            .is_some_and(|n| self.long_copy_up(&n))
    }

    /// True when an operation on `node` may copy a big file up (so it should not hold a
    /// fuser worker).
    fn long_copy_up(&self, node: &NodeRef) -> bool {
        needs_copy_up_of_data(node)
            && self
                .ovl
                .getattr(node)
                .map_or(true, |a| a.size > SHORT_COPY_UP)
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

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
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
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        guarded("readdirplus", || {
            self.inner.readdirplus(fh.0, offset, reply)
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
        let long = cmd & 0xffff == 0x6602 && self.inner.long_copy_up_of(ino.0);
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
    use super::*;

    #[test]
    fn dev_encoding_roundtrip() {
        for (maj, min) in [
            (0u32, 0u32),
            (1, 3),
            (8, 1),
            (259, 65536),
            (4095, 1_048_575),
        ] {
            let dev = libc::makedev(maj, min);
            assert_eq!(decode_dev(encode_dev(dev)), dev, "{maj}:{min}");
        }
        // The kernel's encoding of 1:3 (/dev/null) is 0x103.
        assert_eq!(encode_dev(libc::makedev(1, 3)), 0x103);
    }

    #[test]
    fn timestamps_roundtrip() {
        for t in [
            Timestamp { sec: 0, nsec: 0 },
            Timestamp {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            Timestamp {
                sec: -5,
                nsec: 250_000_000,
            },
        ] {
            assert_eq!(timestamp(system_time(t)), t);
        }
    }

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
