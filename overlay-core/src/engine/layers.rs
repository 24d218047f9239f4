//! Layer roots, safe `*at` access beneath them, the workdir staging area, inode-number
//! mapping (samefs / xino) and a bounded cache of lower-layer directory fds.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::format::{self, Opacity, XattrNamespace};
use crate::stack::LayerStack;

/// Which layer an object lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LayerRef {
    /// The upper layer.
    Upper,
    /// A lower layer, by index in top-first order (0 = top lower).
    Lower(u16),
}

/// One layer's root directory.
#[derive(Debug)]
pub(crate) struct LayerRoot {
    pub fd: Arc<OwnedFd>,
    pub path: PathBuf,
    /// xino filesystem id (0 = the upper filesystem, lowers from 1).
    pub fsid: u64,
    /// `st_dev` of the layer root.
    pub dev: u64,
    /// UUID of the layer's filesystem (zeros when it has none), for `overlay.origin`.
    pub uuid: [u8; 16],
    /// The root is on a private detached mount of just this filesystem (`open_tree`
    /// without `AT_RECURSIVE`): no submount is reachable beneath it. When false (no
    /// privilege for `open_tree`), mount points beneath the root are presented as empty
    /// directories (see [`Layers::open`]).
    pub detached: bool,
}

/// How overlay inode numbers are built from real ones.
#[derive(Debug, Clone, Copy)]
pub(crate) enum InoMode {
    /// Every layer on one filesystem: the real inode number.
    SameFs,
    /// xino: the filesystem id in the high `64 - shift` bits.
    Xino { shift: u32 },
}

/// The upper layer with its workdir.
#[derive(Debug)]
pub(crate) struct Upper {
    pub root: LayerRoot,
    /// `workdir`, kept open and `flock`ed for the overlay's lifetime.
    pub workdir: OwnedFd,
    /// The workdir's path (for messages).
    pub work_path: PathBuf,
    /// `workdir/work`, the staging area.
    pub work: Arc<OwnedFd>,
    /// `workdir/index`, with `index=on` (see [`super::index`]).
    pub index: Option<Arc<OwnedFd>>,
}

/// All layers of an overlay.
#[derive(Debug)]
pub(crate) struct Layers {
    pub upper: Option<Upper>,
    /// Lower layers, top-first, then the data-only layers in search order (indices from
    /// `normal_lowers` on: never listed nor looked up by name).
    pub lowers: Vec<LayerRoot>,
    /// How many of `lowers` are normal lower layers (the rest are data-only).
    pub normal_lowers: usize,
    pub ns: XattrNamespace,
    pub ino_mode: InoMode,
    staging_counter: AtomicU64,
    /// Our pid, for staging names (read once).
    pid: u32,
    /// Bit `i` (lower `i`, the last bit for 63 and up): `FICLONE` from that lower layer
    /// failed as unsupported, do not try again.
    pub no_reflink: AtomicU64,
    /// Name in `workdir/work` of the whiteout that new whiteouts are hard links to (as the
    /// kernel does since 5.8: one inode for all whiteouts). Created on first use.
    shared_whiteout: RwLock<Option<OsString>>,
    /// The upper filesystem refused a hard link to the shared whiteout: make each one anew.
    no_shared_whiteout: AtomicBool,
}

/// A bounded cache of directory fds, keyed by (node, layer).
///
/// Each entry holds a weak reference to its node, which keeps the node's allocation (not the
/// node) alive, so the address key cannot be reused by another node while the entry exists.
/// A cached fd stays right for its node: lower layers are immutable while mounted, and an
/// upper directory keeps its inode when renamed (a node removed from the tree is never
/// resolved through again, and its entries are dropped).
pub(crate) struct DirFdCache {
    map: Mutex<DirFdMap>,
    max: usize,
}

#[derive(Default)]
struct DirFdMap {
    map: HashMap<(usize, LayerRef), CachedDirFd>,
    tick: u64,
}

struct CachedDirFd {
    node: std::sync::Weak<super::Node>,
    fd: Arc<OwnedFd>,
    tick: u64,
}

impl std::fmt::Debug for DirFdCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirFdCache")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl DirFdCache {
    /// A cache using at most a quarter of the soft `RLIMIT_NOFILE` (64 to 4096 fds).
    pub fn new() -> DirFdCache {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(4 * 4096);
        DirFdCache {
            map: Mutex::new(DirFdMap::default()),
            max: (soft / 4).clamp(64, 4096) as usize,
        }
    }

    fn key(node: &super::NodeRef, layer: LayerRef) -> (usize, LayerRef) {
        (Arc::as_ptr(node) as usize, layer)
    }

    pub fn get(&self, node: &super::NodeRef, layer: LayerRef) -> Option<Arc<OwnedFd>> {
        let mut m = self.map.lock();
        m.tick += 1;
        let tick = m.tick;
        let e = m.map.get_mut(&Self::key(node, layer))?;
        e.tick = tick;
        Some(e.fd.clone())
    }

    pub fn insert(&self, node: &super::NodeRef, layer: LayerRef, fd: Arc<OwnedFd>) {
        let mut old = Vec::new();
        {
            let mut m = self.map.lock();
            if m.map.len() >= self.max {
                // Drop entries of dead nodes and the least recently used half.
                let mut ticks: Vec<u64> = m.map.values().map(|e| e.tick).collect();
                ticks.sort_unstable();
                let cut = ticks[ticks.len() / 2];
                let keys: Vec<_> = m
                    .map
                    .iter()
                    .filter(|(_, e)| e.tick <= cut || e.node.strong_count() == 0)
                    .map(|(k, _)| *k)
                    .collect();
                for k in keys {
                    old.extend(m.map.remove(&k));
                }
            }
            let tick = m.tick;
            old.extend(m.map.insert(
                Self::key(node, layer),
                CachedDirFd {
                    node: Arc::downgrade(node),
                    fd,
                    tick,
                },
            ));
        }
        // Weak references are released outside the lock.
        drop(old);
    }

    /// Forget every cached fd (tests: as a flood of other directories would evict them).
    #[cfg(test)]
    pub fn clear(&self) {
        let old = std::mem::take(&mut self.map.lock().map);
        drop(old);
    }

    /// Forget the upper fd of `node`.
    pub fn remove(&self, node: &super::NodeRef, layer: LayerRef) {
        let old = self.map.lock().map.remove(&Self::key(node, layer));
        drop(old);
    }
}

/// Convert a rustix errno into an engine error.
pub(crate) fn ioerr(op: &'static str, path: impl Into<PathBuf>, e: Errno) -> Error {
    Error::errno(op, path, e.raw_os_error())
}

/// Display path of a node for errors: relative to the overlay root, `.` for the root.
pub(crate) fn display_path(rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel.to_path_buf()
    }
}

/// Flags for opening a directory beneath a layer root: never follow a symlink, never leave
/// the root, never cross into another mount.
pub(crate) const RESOLVE_LAYER: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Open `path` as a private detached mount of just its filesystem (`open_tree` with
/// `OPEN_TREE_CLONE`, without `AT_RECURSIVE`): submounts are not part of it, so a mount point
/// beneath shows the directory it covers, as in a kernel overlay layer. `None` when not
/// permitted (EPERM without CAP_SYS_ADMIN; EINVAL in a user namespace when locked mounts lie
/// beneath) or not supported.
///
/// `noatime`: make the mount noatime while it still has its anonymous namespace (that is,
/// before the tree fd is closed; `mount_setattr` refuses a dissolved mount). Failing that is
/// not fatal.
fn open_detached(path: &Path, noatime: bool) -> Option<OwnedFd> {
    use rustix::mount::{open_tree, OpenTreeFlags};
    let tree = open_tree(
        rustix::fs::CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .ok()?;
    if noatime {
        if let Err(e) = crate::sys::mount_set_noatime(tree.as_fd()) {
            tracing::debug!("noatime on the layer mount of {}: {e}", path.display());
        }
    }
    // The tree fd is O_PATH; a real directory fd (for getdents, fgetxattr, fstatvfs) keeps
    // the detached mount alive as well.
    rustix::fs::openat(
        &tree,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// Deepest common ancestor of two absolute paths.
fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for (x, y) in a.components().zip(b.components()) {
        if x != y {
            break;
        }
        out.push(x);
    }
    out
}

fn same_inode(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

/// Open the upper directory and the workdir on ONE private detached mount (renames between
/// them must stay within one mount): a clone of their common ancestor, which must be on the
/// same mount as both (the kernel requires upper and work on one mount too). `None` when
/// not permitted or when they are on different mounts.
fn open_upper_detached(
    upper: &Path,
    work: &Path,
    plain_upper: &OwnedFd,
    plain_work: &OwnedFd,
) -> Option<(OwnedFd, OwnedFd)> {
    let common = common_ancestor(upper, work);
    let tree = open_detached(&common, false)?;
    let beneath = |p: &Path| -> Option<OwnedFd> {
        let rel = p.strip_prefix(&common).ok()?;
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            &tree,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE_LAYER,
        )
        .ok()
    };
    let u = beneath(upper)?;
    let w = beneath(work)?;
    // A mount between the common ancestor and either directory would make the clone show
    // a covered directory instead: compare with what the plain paths name.
    if same_inode(&u, plain_upper) && same_inode(&w, plain_work) {
        Some((u, w))
    } else {
        None
    }
}

fn open_root(path: &Path, what: &'static str) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ioerr(what, path, e))
}

/// How long [`Layers::open`] waits for the workdir's lock before it reports the workdir in
/// use: a FUSE daemon whose mount was just unmounted still holds it for a moment while it
/// exits (containerd unmounts and mounts a snapshot again at once when a mount helper's exit
/// status got lost).
pub const WORKDIR_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Take the exclusive lock of an overlay's workdir, waiting up to [`WORKDIR_LOCK_PATIENCE`].
fn lock_workdir(workdir: &OwnedFd) -> std::result::Result<(), Errno> {
    let deadline = std::time::Instant::now() + WORKDIR_LOCK_PATIENCE;
    loop {
        match rustix::fs::flock(
            workdir,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Err(Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

impl Layers {
    /// Open every layer root, lock and clean the workdir.
    ///
    /// Like the kernel, a layer is one filesystem's tree: when permitted (`detach`, and
    /// CAP_SYS_ADMIN), each root is opened on a private detached mount without submounts,
    /// so a mount point inside a layer shows the directory it covers. Otherwise every
    /// directory is opened with `RESOLVE_NO_XDEV`, and a mount point beneath a layer root
    /// reads as an empty directory (its attributes are those of the mounted root, its
    /// inode number the covered directory's; a file bind-mounted over a file still shows
    /// the mounted file).
    pub fn open(stack: &LayerStack, detach: bool) -> Result<Layers> {
        let mut devs: Vec<u64> = Vec::new();
        let upper = match stack.upper() {
            None => None,
            Some(u) => {
                let fd = open_root(&u.upper, "open upper layer")?;
                let st =
                    rustix::fs::fstat(&fd).map_err(|e| ioerr("stat upper layer", &u.upper, e))?;
                devs.push(st.st_dev);
                let workdir = open_root(&u.work, "open workdir")?;
                let (fd, workdir, detached) = match detach
                    .then(|| open_upper_detached(&u.upper, &u.work, &fd, &workdir))
                    .flatten()
                {
                    Some((fd, workdir)) => (fd, workdir, true),
                    None => (fd, workdir, false),
                };
                lock_workdir(&workdir).map_err(|e| {
                    if e == Errno::WOULDBLOCK {
                        ioerr(
                            "lock workdir (in use by another overlay)",
                            &u.work,
                            Errno::BUSY,
                        )
                    } else {
                        ioerr("lock workdir", &u.work, e)
                    }
                })?;
                let work = open_staging_dir(&workdir, &u.work.join("work"))?;
                clean_dir(&work, &u.work.join("work"))?;
                let uuid = crate::sys::fs_uuid(fd.as_fd()).unwrap_or_default();
                Some(Upper {
                    root: LayerRoot {
                        fd: Arc::new(fd),
                        path: u.upper.clone(),
                        fsid: 0,
                        dev: st.st_dev,
                        uuid,
                        detached,
                    },
                    workdir,
                    work_path: u.work.clone(),
                    work: Arc::new(work),
                    index: None,
                })
            }
        };
        // fsid 0 is reserved for the upper filesystem even without an upper layer (as the
        // kernel does); lower filesystems are numbered from 1 in top-first order.
        let upper_dev = devs.first().copied();
        let mut fs_ids: Vec<u64> = Vec::new();
        let mut lowers = Vec::new();
        let mut all_same = true;
        let first_dev = {
            let mut first = upper_dev;
            for l in stack.lowers_top_first().chain(stack.data_lowers()) {
                let plain = open_root(&l.path, "open lower layer")?;
                // As the kernel, never update the atime of a lower object: its detached
                // mount is made noatime (which covers readlink too). Reading opens of lower
                // objects also ask for O_NOATIME (see `open_noatime`), for layers without one.
                let lower_mount = || open_detached(&l.path, true);
                let (fd, detached) = match detach.then(lower_mount).flatten() {
                    Some(t) if same_inode(&t, &plain) => (t, true),
                    _ => (plain, false),
                };
                let st =
                    rustix::fs::fstat(&fd).map_err(|e| ioerr("stat lower layer", &l.path, e))?;
                let dev = st.st_dev;
                if first.is_none() {
                    first = Some(dev);
                }
                if Some(dev) != first {
                    all_same = false;
                }
                let fsid = if Some(dev) == upper_dev {
                    0
                } else if let Some(i) = fs_ids.iter().position(|d| *d == dev) {
                    i as u64 + 1
                } else {
                    fs_ids.push(dev);
                    fs_ids.len() as u64
                };
                let uuid = crate::sys::fs_uuid(fd.as_fd()).unwrap_or_default();
                lowers.push(LayerRoot {
                    fd: Arc::new(fd),
                    path: l.path.clone(),
                    fsid,
                    dev,
                    uuid,
                    detached,
                });
            }
            first
        };
        let _ = first_dev;
        let ino_mode = if all_same {
            // samefs: one filesystem. Make fsids all 0 so mapping is the identity.
            for l in &mut lowers {
                l.fsid = 0;
            }
            InoMode::SameFs
        } else {
            let numfs = fs_ids.len() as u64 + 1;
            // The kernel's xino_mode: ilog2(numfs - 1) + 2 high bits, the topmost of which
            // marks non-persistent numbers; the fsid sits just below it (observed on 6.18:
            // one lower fs over a tmpfs upper gives `ino | 1 << 63`).
            let bits = (63 - (numfs - 1).max(1).leading_zeros()) + 2;
            InoMode::Xino { shift: 65 - bits }
        };
        Ok(Layers {
            upper,
            normal_lowers: stack.lowers().len(),
            lowers,
            ns: stack.xattr_namespace(),
            ino_mode,
            staging_counter: AtomicU64::new(0),
            pid: std::process::id(),
            no_reflink: AtomicU64::new(0),
            shared_whiteout: RwLock::new(None),
            no_shared_whiteout: AtomicBool::new(false),
        })
    }

    /// The root of a layer.
    pub fn root(&self, layer: LayerRef) -> &LayerRoot {
        match layer {
            LayerRef::Upper => &self.upper.as_ref().expect("upper layer").root,
            LayerRef::Lower(i) => &self.lowers[i as usize],
        }
    }

    /// The staging directory `workdir/work`.
    pub fn work(&self) -> BorrowedFd<'_> {
        self.upper.as_ref().expect("upper layer").work.as_fd()
    }

    /// The staging directory, shared.
    pub fn work_arc(&self) -> Arc<OwnedFd> {
        self.upper.as_ref().expect("upper layer").work.clone()
    }

    /// Overlay inode number of a real inode in `layer`.
    pub fn map_ino(&self, layer: LayerRef, ino: u64) -> u64 {
        match self.ino_mode {
            InoMode::SameFs => ino,
            InoMode::Xino { shift } => {
                let fsid = self.root(layer).fsid;
                if fsid == 0 || ino >> shift != 0 {
                    ino
                } else {
                    ino | (fsid << shift)
                }
            }
        }
    }

    /// For a layer not on a detached mount: when directory `name` in `dir` is a mount
    /// point, the inode number of the directory it covers (its `d_ino` in the listing of
    /// `dir`), which is what the entry then reports. `None` for anything else.
    pub fn covered_mount_point(
        &self,
        layer: LayerRef,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Option<u64> {
        use rustix::fs::{StatxAttributes, StatxFlags};
        if self.root(layer).detached {
            return None;
        }
        let stx = rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE).ok()?;
        if !stx
            .stx_attributes_mask
            .contains(StatxAttributes::MOUNT_ROOT)
            || !stx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        {
            return None;
        }
        let mut d = rustix::fs::Dir::read_from(dir).ok()?;
        while let Some(Ok(ent)) = d.read() {
            if ent.file_name().to_bytes() == name.as_bytes() {
                return Some(self.map_ino(layer, ent.ino()));
            }
        }
        None
    }

    /// A fresh, unique staging name in `workdir/work`.
    pub fn staging_name(&self) -> OsString {
        let n = self.staging_counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#ovl.{}.{n:x}", self.pid))
    }

    /// Create a whiteout (char 0/0) in the staging area and return its name.
    pub fn make_staged_whiteout(&self) -> std::result::Result<OsString, Errno> {
        let name = self.staging_name();
        self.make_whiteout(self.work(), &name)?;
        Ok(name)
    }

    /// Create a whiteout named `name` in directory `dir` of the upper filesystem, atomically
    /// (EEXIST if something is there). As the kernel overlay, a whiteout is a hard link to one
    /// shared whiteout inode in `workdir/work`; when the upper filesystem refuses that link,
    /// each whiteout is a char 0/0 device of its own (the kernel's fallback too). A shared
    /// whiteout that reached the link limit is left to its links and replaced.
    pub fn make_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> std::result::Result<(), Errno> {
        let fresh = |d: BorrowedFd<'_>, n: &OsStr| {
            rustix::fs::mknodat(d, n, FileType::CharacterDevice, Mode::empty(), 0)
        };
        let work = self.work();
        for _ in 0..3 {
            if self.no_shared_whiteout.load(Ordering::Relaxed) {
                break;
            }
            let current = self.shared_whiteout.read().clone();
            let Some(shared) = current else {
                let mut slot = self.shared_whiteout.write();
                if slot.is_none() {
                    let n = self.staging_name();
                    fresh(work, &n)?;
                    *slot = Some(n);
                }
                continue;
            };
            match rustix::fs::linkat(work, &*shared, dir, name, AtFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(Errno::EXIST) => return Err(Errno::EXIST),
                // ENOENT for the target directory (removed meanwhile), not for the shared
                // whiteout: nothing to replace.
                Err(Errno::NOENT)
                    if rustix::fs::statat(work, &*shared, AtFlags::SYMLINK_NOFOLLOW).is_ok() =>
                {
                    return Err(Errno::NOENT);
                }
                // Full (or gone): start a new shared whiteout, once per old one.
                Err(Errno::MLINK) | Err(Errno::NOENT) => {
                    let mut slot = self.shared_whiteout.write();
                    if slot.as_ref() == Some(&shared) {
                        let _ = rustix::fs::unlinkat(work, &*shared, AtFlags::empty());
                        *slot = None;
                    }
                }
                Err(e) => {
                    tracing::debug!("hard link to the shared whiteout: {e}; not sharing");
                    self.no_shared_whiteout.store(true, Ordering::Relaxed);
                }
            }
        }
        fresh(dir, name)
    }

    /// Read the opacity of a directory in a lower layer (xattr or `.wh..wh..opq`).
    pub fn lower_dir_opacity(&self, dir: BorrowedFd<'_>) -> Opacity {
        let op = get_xattr_fd(dir, self.ns.opaque());
        let o = Opacity::from_xattr(op.as_deref());
        if o == Opacity::Opaque {
            return o;
        }
        if rustix::fs::statat(
            dir,
            OsStr::from_bytes(format::AUFS_OPAQUE_MARKER),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok()
        {
            return Opacity::Opaque;
        }
        o
    }
}

/// Remove everything inside directory `dir` (stale staging files), never following symlinks.
pub(crate) fn clean_dir(dir: &OwnedFd, display: &Path) -> Result<()> {
    for name in list_dir_names(dir).map_err(|e| ioerr("clean workdir", display, e))? {
        remove_tree_at(dir.as_fd(), &name)
            .map_err(|e| ioerr("clean workdir", display.join(&name), e))?;
    }
    Ok(())
}

/// Create (if needed) and open `workdir/work`, the staging area, prepared as the kernel
/// prepares it: no ACL that staged files could inherit (a copied-up file would get an ACL
/// its lower file does not have), and mode 0 (users have no business in it) when we can
/// still work in a mode-0 directory (CAP_DAC_OVERRIDE), 0700 otherwise. A mode-0
/// `work/` left by a kernel mount is opened up to 0700 for an unprivileged owner.
fn open_staging_dir(workdir: &OwnedFd, path: &Path) -> Result<OwnedFd> {
    open_work_subdir(workdir.as_fd(), "work", path)
}

/// [`open_staging_dir`] for `workdir/<sub>` (`work`, or `index` with `index=on`, which the
/// kernel then uses as its staging area too).
pub(crate) fn open_work_subdir(workdir: BorrowedFd<'_>, sub: &str, path: &Path) -> Result<OwnedFd> {
    let privileged = rustix::thread::capabilities(None).is_ok_and(|c| {
        c.effective
            .contains(rustix::thread::CapabilitySet::DAC_OVERRIDE)
    });
    let mode = if privileged { 0 } else { 0o700 };
    match rustix::fs::mkdirat(workdir, sub, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(ioerr("create a directory in the workdir", path, e)),
    }
    let open = || {
        rustix::fs::openat(
            workdir,
            sub,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let work = match open() {
        Err(Errno::ACCESS) if !privileged => {
            rustix::fs::chmodat(workdir, sub, Mode::from_raw_mode(0o700), AtFlags::empty())
                .and_then(|()| open())
        }
        r => r,
    }
    .map_err(|e| ioerr("open a directory in the workdir", path, e))?;
    for acl in ["system.posix_acl_default", "system.posix_acl_access"] {
        match rustix::fs::fremovexattr(&work, acl) {
            Ok(()) | Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) => {}
            Err(e) => {
                return Err(ioerr(
                    "remove the ACL of a directory in the workdir",
                    path,
                    e,
                ))
            }
        }
    }
    // fchmod after the ACL is gone (an access ACL would keep group bits alive otherwise).
    if let Err(e) = rustix::fs::fchmod(&work, Mode::from_raw_mode(mode)) {
        tracing::debug!("chmod {:o} {}: {e}", mode, path.display());
    }
    Ok(work)
}

/// A directory stream of its own (own file position) on the directory `dir`: one `openat`
/// of "." (`Dir::read_from` also asks for the fd's flags first). `noatime` for a lower
/// directory: listing it to merge it must not change the lower layer (see [`open_noatime`]).
pub(crate) fn own_dir_stream(
    dir: &OwnedFd,
    noatime: bool,
) -> std::result::Result<rustix::fs::Dir, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = if noatime {
        open_noatime(dir.as_fd(), OsStr::new("."), flags, Mode::empty())?
    } else {
        rustix::fs::openat(dir, ".", flags, Mode::empty())?
    };
    rustix::fs::Dir::new(fd)
}

/// `openat` with `O_NOATIME`, and without it where that is not permitted (EPERM: neither
/// the owner nor CAP_FOWNER). For opens that read a layer's objects: the kernel overlay
/// never updates the atime of a lower object (it opens them with O_NOATIME where it may),
/// and reading a directory to merge it is not an access by the user either.
pub(crate) fn open_noatime(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlags,
    mode: Mode,
) -> std::result::Result<OwnedFd, Errno> {
    match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, mode) {
        Err(Errno::PERM) => rustix::fs::openat(dir, name, flags, mode),
        r => r,
    }
}

/// `f` of each entry of a directory (without `.` and `..`), given its name.
pub(crate) fn map_dir_entries<T>(
    dir: &OwnedFd,
    noatime: bool,
    mut f: impl FnMut(OsString, &rustix::fs::DirEntry) -> T,
) -> std::result::Result<Vec<T>, Errno> {
    let mut d = own_dir_stream(dir, noatime)?;
    let mut out = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        out.push(f(OsString::from_vec(n.to_vec()), &ent));
    }
    Ok(out)
}

/// Names in a directory (without `.` and `..`).
pub(crate) fn list_dir_names(dir: &OwnedFd) -> std::result::Result<Vec<OsString>, Errno> {
    map_dir_entries(dir, false, |name, _| name)
}

/// Remove `name` in `dir`, with everything inside when it is a directory, without following
/// symlinks. Iterative and with two fds at a time, whatever the depth: a tree of any depth
/// costs heap (a name and an inode number per level entered), neither stack nor fds. It goes
/// back up through `..`, checking that it lands in the directory it came from (ESTALE if
/// the tree was moved meanwhile).
pub(crate) fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<(), Errno> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e),
    }
    let id = |fd: BorrowedFd<'_>| rustix::fs::fstat(fd).map(|st| (st.st_dev, st.st_ino));
    let mut cur = rustix::fs::openat(dir, name, dir_flags, Mode::empty())?;
    // The directories entered below `name`: their names and their parents' identities.
    let mut entered: Vec<(OsString, (u64, u64))> = Vec::new();
    loop {
        let mut sub = None;
        for n in list_dir_names(&cur)? {
            match rustix::fs::unlinkat(&cur, &n, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => {
                    sub = Some(n);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(n) = sub {
            let parent_id = id(cur.as_fd())?;
            cur = rustix::fs::openat(&cur, &n, dir_flags, Mode::empty())?;
            entered.push((n, parent_id));
            continue;
        }
        let Some((n, parent_id)) = entered.pop() else {
            break;
        };
        cur = rustix::fs::openat(&cur, "..", dir_flags, Mode::empty())?;
        if id(cur.as_fd())? != parent_id {
            return Err(Errno::STALE);
        }
        rustix::fs::unlinkat(&cur, &n, AtFlags::REMOVEDIR)?;
    }
    drop(cur);
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// The `/proc/self/fd/<dir>/<name>` path: the directory fd is followed (it was opened safely),
/// the final `name` (a single component) is used with the `l*` calls, which do not follow it.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

/// Path of an fd itself (for `chmod` through an `O_PATH` fd).
pub(crate) fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Read an xattr of an open fd (None when absent or unreadable).
pub(crate) fn get_xattr_fd(fd: BorrowedFd<'_>, name: &str) -> Option<Vec<u8>> {
    read_xattr(|buf| rustix::fs::fgetxattr(fd, name, buf)).ok()
}

/// Read an xattr with a growing buffer.
pub(crate) fn read_xattr(
    mut f: impl FnMut(&mut [u8]) -> std::result::Result<usize, Errno>,
) -> std::result::Result<Vec<u8>, Errno> {
    let mut size = 256;
    loop {
        let mut buf = vec![0u8; size];
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) if size < 65536 * 4 => size *= 4,
            Err(e) => return Err(e),
        }
    }
}
