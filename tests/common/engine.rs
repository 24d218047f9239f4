//! The engine backend: applies operations through `overlay_core::Overlay`'s node API.
//!
//! The engine is what a FUSE adapter calls *after* the kernel's VFS has done its generic part
//! (path walk, symlink following, "does the name exist", type checks). This module plays that
//! VFS part — each such check is marked `VFS:` — so that errors the real VFS would report
//! before reaching a filesystem are reported here too, and everything else comes from the
//! engine.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use overlay_core::{FileKind, NodeRef, Overlay, RenameFlags, SetAttr};

use super::features::Features;
use super::fixture::FixtureStack;
use super::kernel::describe;
use super::ops::{NodeKind, Op, RenameMode, UMASK};
use super::tree::{join, Entry, EntryKind, Tree, TreeBuilder, FIXTURE_MTIME};
use super::{Backend, Outcome};

/// Flags of every open for write: `O_NONBLOCK` as on the kernel side (see
/// [`super::kernel::apply_path_op`]), so a FIFO without a reader gives ENXIO.
const WRITE_FLAGS: i32 = libc::O_WRONLY | libc::O_NONBLOCK;

/// Linux's limit on symlinks followed in one path walk.
const MAX_SYMLINK_FOLLOWS: u32 = 40;

fn err(e: overlay_core::Error) -> i32 {
    e.raw_os_error()
}

/// A path resolved up to its last component.
struct Resolved {
    /// The directory holding the last component.
    parent: NodeRef,
    /// The last component.
    name: OsString,
    /// The node named, if it exists.
    node: Option<NodeRef>,
    /// Inode numbers of the directories from the root down to `parent`, inclusive.
    chain: Vec<u64>,
}

/// Nodes kept across operations, keyed by (parent directory inode, name), the way the
/// kernel's dentry cache keeps FUSE inodes: a name once looked up is not looked up again, and
/// the cache is updated only by the operations made through it (create, unlink, rename, ...).
type NodeCache = RefCell<HashMap<(u64, OsString), NodeRef>>;

/// The engine on a fresh fixture stack in its own temp dir.
pub struct EngineBackend {
    ovl: Overlay,
    upper: std::path::PathBuf,
    /// `Some` in node-cache mode ([`EngineBackend::with_node_cache`]).
    cache: Option<NodeCache>,
    _tmp: tempfile::TempDir,
}

impl EngineBackend {
    /// Build a fresh fixture and open the engine on it; every path is looked up afresh.
    pub fn new() -> EngineBackend {
        Self::build(None, Features::DEFAULTS)
    }

    /// Like [`EngineBackend::new`] with the options of `features`; `node_cache` as
    /// [`EngineBackend::with_node_cache`].
    pub fn with_features(features: Features, node_cache: bool) -> EngineBackend {
        Self::build(node_cache.then(|| RefCell::new(HashMap::new())), features)
    }

    /// Like [`EngineBackend::new`], but keep nodes across operations as a FUSE adapter under
    /// the kernel's dentry cache does: nodes obtained before a copy-up, rename or unlink of a
    /// neighbour keep being used afterwards.
    pub fn with_node_cache() -> EngineBackend {
        Self::build(Some(RefCell::new(HashMap::new())), Features::DEFAULTS)
    }

    fn build(cache: Option<NodeCache>, features: Features) -> EngineBackend {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = FixtureStack::create_for(tmp.path(), features);
        let ovl = Overlay::with_options(s.layer_stack(), features.engine_options())
            .unwrap_or_else(|e| panic!("Overlay::new: {e}"));
        EngineBackend {
            ovl,
            upper: s.upper.clone(),
            cache,
            _tmp: tmp,
        }
    }

    /// Look `name` up in `dir`, through the node cache when there is one.
    fn lookup(&self, dir: &NodeRef, name: &OsStr) -> overlay_core::Result<NodeRef> {
        let Some(cache) = &self.cache else {
            return self.ovl.lookup(dir, name);
        };
        let key = (dir.ino(), name.to_os_string());
        if let Some(n) = cache.borrow().get(&key) {
            return Ok(n.clone());
        }
        let n = self.ovl.lookup(dir, name)?;
        cache.borrow_mut().insert(key, n.clone());
        Ok(n)
    }

    /// Node cache: `parent/name` now names `node` (or nothing).
    fn cache_set(&self, parent: &NodeRef, name: &OsStr, node: Option<NodeRef>) {
        if let Some(cache) = &self.cache {
            let key = (parent.ino(), name.to_os_string());
            let mut c = cache.borrow_mut();
            match node {
                Some(n) => c.insert(key, n),
                None => c.remove(&key),
            };
        }
    }

    /// The engine.
    pub fn overlay(&self) -> &Overlay {
        &self.ovl
    }

    /// VFS: walk `path` from the root, following symlinks in the middle and, when `follow`,
    /// at the end. A missing last component is not an error (`node: None`).
    fn resolve(&self, path: &str, follow: bool) -> Result<Resolved, i32> {
        let mut comps: VecDeque<OsString> = split(path.as_bytes());
        let mut dirs: Vec<NodeRef> = vec![self.ovl.root()];
        let mut follows = 0;
        loop {
            let dir = dirs.last().unwrap().clone();
            let name = comps.pop_front().expect("path has a last component");
            let last = comps.is_empty();
            // VFS: only directories can be searched.
            if dir.kind() != FileKind::Directory {
                return Err(libc::ENOTDIR);
            }
            if name == "." || name == ".." {
                if name == ".." && dirs.len() > 1 {
                    dirs.pop();
                }
                if last {
                    panic!("paths ending in . or .. are not generated: {path}");
                }
                continue;
            }
            let node = match self.lookup(&dir, &name) {
                Ok(n) => n,
                Err(e) if last && e.raw_os_error() == libc::ENOENT => {
                    return Ok(Resolved {
                        chain: dirs.iter().map(|d| d.ino()).collect(),
                        parent: dir,
                        name,
                        node: None,
                    })
                }
                Err(e) => return Err(err(e)),
            };
            if node.kind() == FileKind::Symlink && (follow || !last) {
                follows += 1;
                if follows > MAX_SYMLINK_FOLLOWS {
                    return Err(libc::ELOOP);
                }
                let target = self.ovl.readlink(&node).map_err(err)?;
                if target.as_bytes().starts_with(b"/") {
                    dirs.truncate(1);
                }
                let mut t = split(target.as_bytes());
                if t.is_empty() {
                    return Err(libc::ENOENT);
                }
                t.extend(comps);
                comps = t;
                continue;
            }
            if last {
                return Ok(Resolved {
                    chain: dirs.iter().map(|d| d.ino()).collect(),
                    parent: dir,
                    name,
                    node: Some(node),
                });
            }
            dirs.push(node);
        }
    }

    fn existing(&self, path: &str, follow: bool) -> Result<NodeRef, i32> {
        self.resolve(path, follow)?.node.ok_or(libc::ENOENT)
    }

    fn is_dir(n: &NodeRef) -> bool {
        n.kind() == FileKind::Directory
    }

    fn apply_op(&self, op: &Op) -> Outcome {
        let o = &self.ovl;
        match op {
            Op::Create { path, mode, excl } => {
                let r = self.resolve(path, !excl)?;
                match r.node {
                    // VFS: O_EXCL on an existing name; write-open of a directory.
                    Some(_) if *excl => return Err(libc::EEXIST),
                    Some(n) if Self::is_dir(&n) => return Err(libc::EISDIR),
                    Some(n) => drop(o.open(&n, WRITE_FLAGS).map_err(err)?),
                    None => {
                        let flags =
                            WRITE_FLAGS | libc::O_CREAT | if *excl { libc::O_EXCL } else { 0 };
                        let (n, _file) = o
                            .create(&r.parent, &r.name, mode & !UMASK, flags, None)
                            .map_err(err)?;
                        self.cache_set(&r.parent, &r.name, Some(n));
                    }
                }
            }
            Op::Write { path, offset, data } => {
                let n = self.existing(path, true)?;
                if Self::is_dir(&n) {
                    return Err(libc::EISDIR); // VFS
                }
                let f = o.open(&n, WRITE_FLAGS).map_err(err)?;
                f.write_all_at(data, *offset)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            }
            Op::Append { path, data } => {
                let n = self.existing(path, true)?;
                if Self::is_dir(&n) {
                    return Err(libc::EISDIR); // VFS
                }
                let mut f = o.open(&n, WRITE_FLAGS | libc::O_APPEND).map_err(err)?;
                f.write_all(data)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            }
            Op::Truncate { path, size } => {
                let n = self.existing(path, true)?;
                if Self::is_dir(&n) {
                    return Err(libc::EISDIR); // VFS
                }
                let changes = SetAttr {
                    size: Some(*size),
                    ..SetAttr::default()
                };
                o.setattr(&n, &changes).map_err(err)?;
            }
            Op::Chmod { path, mode } => {
                let n = self.existing(path, true)?;
                let changes = SetAttr {
                    mode: Some(*mode),
                    ..SetAttr::default()
                };
                o.setattr(&n, &changes).map_err(err)?;
            }
            Op::Chown { path, uid } => {
                let n = self.existing(path, false)?;
                let changes = SetAttr {
                    uid: Some(*uid),
                    ..SetAttr::default()
                };
                o.setattr(&n, &changes).map_err(err)?;
            }
            Op::Touch { path } => {
                let n = self.existing(path, true)?;
                let t = overlay_core::TimeSet::At(overlay_core::Timestamp {
                    sec: super::ops::TOUCH_TIME,
                    nsec: 0,
                });
                let changes = SetAttr {
                    atime: Some(t),
                    mtime: Some(t),
                    ..SetAttr::default()
                };
                o.setattr(&n, &changes).map_err(err)?;
            }
            Op::Unlink { path } => {
                let r = self.resolve(path, false)?;
                let n = r.node.ok_or(libc::ENOENT)?;
                if Self::is_dir(&n) {
                    return Err(libc::EISDIR); // VFS
                }
                o.unlink(&r.parent, &r.name).map_err(err)?;
                self.cache_set(&r.parent, &r.name, None);
            }
            Op::Rmdir { path } => {
                let r = self.resolve(path, false)?;
                let n = r.node.ok_or(libc::ENOENT)?;
                if !Self::is_dir(&n) {
                    return Err(libc::ENOTDIR); // VFS
                }
                o.rmdir(&r.parent, &r.name).map_err(err)?;
                self.cache_set(&r.parent, &r.name, None);
            }
            Op::Mkdir { path, mode } => {
                let r = self.resolve(path, false)?;
                if r.node.is_some() {
                    return Err(libc::EEXIST); // VFS
                }
                let n = o
                    .mkdir(&r.parent, &r.name, mode & !UMASK, None)
                    .map_err(err)?;
                self.cache_set(&r.parent, &r.name, Some(n));
            }
            Op::Rename { from, to, mode } => self.rename(from, to, *mode)?,
            Op::Link { from, to } => {
                let n = self.existing(from, false)?;
                let r = self.resolve(to, false)?;
                if r.node.is_some() {
                    return Err(libc::EEXIST); // VFS
                }
                if Self::is_dir(&n) {
                    return Err(libc::EPERM); // VFS: no hard links to directories
                }
                let l = o.link(&n, &r.parent, &r.name).map_err(err)?;
                self.cache_set(&r.parent, &r.name, Some(l));
            }
            Op::Symlink { target, path } => {
                let r = self.resolve(path, false)?;
                if r.node.is_some() {
                    return Err(libc::EEXIST); // VFS
                }
                let n = o
                    .symlink(&r.parent, &r.name, OsStr::new(target), None)
                    .map_err(err)?;
                self.cache_set(&r.parent, &r.name, Some(n));
            }
            Op::SetXattr {
                path,
                name,
                value,
                mode,
            } => {
                let n = self.existing(path, false)?;
                user_xattr_permission(&n, name)?;
                o.setxattr(&n, OsStr::new(name), value, mode.raw())
                    .map_err(err)?;
            }
            Op::RemoveXattr { path, name } => {
                let n = self.existing(path, false)?;
                user_xattr_permission(&n, name)?;
                o.removexattr(&n, OsStr::new(name)).map_err(err)?;
            }
            Op::Mknod { path, kind } => {
                let r = self.resolve(path, false)?;
                if r.node.is_some() {
                    return Err(libc::EEXIST); // VFS
                }
                let mode = match kind {
                    NodeKind::Fifo => libc::S_IFIFO | 0o644,
                    NodeKind::WhiteoutDevice => libc::S_IFCHR | 0o644,
                };
                let n = o
                    .mknod(&r.parent, &r.name, mode & !UMASK, 0, None)
                    .map_err(err)?;
                self.cache_set(&r.parent, &r.name, Some(n));
            }
            Op::Stat { path, follow } => {
                let n = self.existing(path, *follow)?;
                let a = o.getattr(&n).map_err(err)?;
                return Ok(describe(
                    kind_name(a.kind),
                    a.perm,
                    u64::from(a.nlink),
                    a.size,
                ));
            }
        }
        Ok(String::new())
    }

    /// VFS part of `renameat2` (do_renameat2 and vfs_rename), then the engine.
    fn rename(&self, from: &str, to: &str, mode: RenameMode) -> Result<(), i32> {
        let old = self.resolve(from, false)?;
        let new = self.resolve(to, false)?;
        let src = old.node.clone().ok_or(libc::ENOENT)?;
        let exchange = mode == RenameMode::Exchange;
        if mode == RenameMode::NoReplace && new.node.is_some() {
            return Err(libc::EEXIST);
        }
        if exchange && new.node.is_none() {
            return Err(libc::ENOENT);
        }
        // Source must not be an ancestor of the target's parent.
        if new.chain.contains(&src.ino()) {
            return Err(libc::EINVAL);
        }
        if let Some(dst) = &new.node {
            // Target must not be an ancestor of the source.
            if old.chain.contains(&dst.ino()) {
                return Err(if exchange {
                    libc::EINVAL
                } else {
                    libc::ENOTEMPTY
                });
            }
            // Same inode: nothing to do.
            if dst.ino() == src.ino() {
                return Ok(());
            }
            if !exchange {
                match (Self::is_dir(&src), Self::is_dir(dst)) {
                    (true, false) => return Err(libc::ENOTDIR),
                    (false, true) => return Err(libc::EISDIR),
                    _ => {}
                }
            }
        }
        let flags = match mode {
            RenameMode::Plain => RenameFlags::empty(),
            RenameMode::NoReplace => RenameFlags::NOREPLACE,
            RenameMode::Exchange => RenameFlags::EXCHANGE,
        };
        self.ovl
            .rename(&old.parent, &old.name, &new.parent, &new.name, flags)
            .map_err(err)?;
        // As the dentry cache does: the source node moves, an exchanged target moves back.
        let moved_back = if exchange { new.node.clone() } else { None };
        self.cache_set(&old.parent, &old.name, moved_back);
        self.cache_set(&new.parent, &new.name, Some(src));
        Ok(())
    }

    fn snapshot(&self) -> Tree {
        let mut b = TreeBuilder::default();
        self.walk(&self.ovl.root(), "", &mut b);
        b.finish()
    }

    fn walk(&self, node: &NodeRef, rel: &str, b: &mut TreeBuilder) {
        let o = &self.ovl;
        let at = |what: &str, e: overlay_core::Error| -> ! { panic!("engine {what} /{rel}: {e}") };
        let a = o.getattr(node).unwrap_or_else(|e| at("getattr", e));
        assert_eq!(
            a.ino,
            node.ino(),
            "engine: Attr::ino != Node::ino at /{rel}"
        );
        assert_eq!(
            a.kind,
            node.kind(),
            "engine: Attr::kind != Node::kind at /{rel}"
        );
        let kind = match a.kind {
            FileKind::File => EntryKind::File,
            FileKind::Directory => EntryKind::Dir,
            FileKind::Symlink => EntryKind::Symlink,
            FileKind::CharDevice if a.rdev == 0 => EntryKind::Whiteout,
            FileKind::CharDevice => EntryKind::CharDev(a.rdev),
            _ => EntryKind::Special,
        };
        let plain = !matches!(kind, EntryKind::Dir | EntryKind::Whiteout);
        let content = (kind == EntryKind::File).then(|| {
            let mut f = o
                .open(node, libc::O_RDONLY)
                .unwrap_or_else(|e| at("open", e));
            let mut v = Vec::new();
            f.read_to_end(&mut v)
                .unwrap_or_else(|e| panic!("engine read /{rel}: {e}"));
            v
        });
        let target = (kind == EntryKind::Symlink).then(|| {
            o.readlink(node)
                .unwrap_or_else(|e| at("readlink", e))
                .as_bytes()
                .to_vec()
        });
        let mut xattrs = std::collections::BTreeMap::new();
        for name in o.listxattr(node).unwrap_or_else(|e| at("listxattr", e)) {
            let v = o
                .getxattr(node, &name)
                .unwrap_or_else(|e| at("getxattr", e));
            xattrs.insert(name.to_string_lossy().into_owned(), v);
        }
        let entry = Entry {
            kind,
            perm: a.perm & 0o7777,
            uid: a.uid,
            nlink: plain.then_some(u64::from(a.nlink)),
            // The merged view shows no whiteouts.
            whiteout_links: None,
            size: matches!(kind, EntryKind::File | EntryKind::Symlink).then_some(a.size),
            content,
            target,
            xattrs,
            links: Vec::new(),
            mtime_kept: (a.mtime.sec, a.mtime.nsec) == FIXTURE_MTIME,
            same_inode_as: None,
        };
        b.add(rel.to_string(), entry, a.ino);
        if kind == EntryKind::Dir {
            let mut entries = o.readdir(node).unwrap_or_else(|e| at("readdir", e));
            entries.sort_by(|x, y| x.name.cmp(&y.name));
            for w in entries.windows(2) {
                assert_ne!(
                    w[0].name, w[1].name,
                    "engine: duplicate readdir entry in /{rel}"
                );
            }
            for d in entries {
                let child_rel = join(rel, &d.name.to_string_lossy());
                let child = self.lookup(node, &d.name).unwrap_or_else(|e| {
                    panic!("engine: readdir lists /{child_rel} but lookup fails: {e}")
                });
                assert_eq!(
                    d.ino,
                    child.ino(),
                    "engine: readdir d_ino != st_ino at /{child_rel}"
                );
                assert_eq!(
                    d.kind,
                    child.kind(),
                    "engine: readdir kind != lookup kind at /{child_rel}"
                );
                self.walk(&child, &child_rel, b);
            }
        }
    }
}

impl Default for EngineBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// VFS (xattr_permission): `user.*` attributes exist only on regular files and directories.
fn user_xattr_permission(n: &NodeRef, name: &str) -> Result<(), i32> {
    if name.starts_with("user.") && !matches!(n.kind(), FileKind::File | FileKind::Directory) {
        return Err(libc::EPERM);
    }
    Ok(())
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Directory => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::CharDevice => "chardev",
        _ => "other",
    }
}

fn split(p: &[u8]) -> VecDeque<OsString> {
    p.split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| OsStr::from_bytes(c).to_os_string())
        .collect()
}

impl Backend for EngineBackend {
    fn name(&self) -> &str {
        "engine"
    }
    fn apply(&mut self, op: &Op) -> Outcome {
        self.apply_op(op)
    }
    fn merged(&mut self) -> Tree {
        self.snapshot()
    }
    fn upper(&self) -> &Path {
        &self.upper
    }
}
