//! Nodes: names in the merged tree, with their per-layer presence and per-node locks.
//!
//! Nodes are kept small (a FUSE mount holds one per inode the kernel caches, i.e. up to
//! millions): names up to 22 bytes are stored inline, the lower-layer list holds two
//! entries inline, directory-only data (children, namespace lock) is boxed and absent for
//! non-directories, and a parent's table of children stores only the name's hash and a weak
//! reference (the name lives once, in the child).

use std::ffi::OsStr;
use std::hash::{BuildHasher, RandomState};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};

use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

use super::layers::LayerRef;
use super::{FileKind, NodeRef};

/// Presence of a directory (or file) in one lower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LowerEntry {
    /// Lower layer index, top-first.
    pub layer: u16,
    /// The directory in this layer is marked `opaque=x`: its entries may be xwhiteouts.
    pub xwhiteouts: bool,
}

/// A list of [`LowerEntry`], two inline (most nodes have at most one).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Lowers {
    /// Up to two entries.
    Inline(u8, [LowerEntry; 2]),
    /// More entries (a thin pointer keeps the enum at 16 bytes).
    #[allow(clippy::box_collection)]
    Heap(Box<Vec<LowerEntry>>),
}

impl Default for Lowers {
    fn default() -> Self {
        Lowers::Inline(0, [LowerEntry::default(); 2])
    }
}

impl std::fmt::Debug for Lowers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Lowers {
    pub fn as_slice(&self) -> &[LowerEntry] {
        match self {
            Lowers::Inline(n, a) => &a[..*n as usize],
            Lowers::Heap(v) => v,
        }
    }

    pub fn push(&mut self, e: LowerEntry) {
        match self {
            Lowers::Inline(n, a) if (*n as usize) < a.len() => {
                a[*n as usize] = e;
                *n += 1;
            }
            Lowers::Inline(_, a) => {
                let mut v = a.to_vec();
                v.push(e);
                *self = Lowers::Heap(Box::new(v));
            }
            Lowers::Heap(v) => v.push(e),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub fn first(&self) -> Option<&LowerEntry> {
        self.as_slice().first()
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
}

impl<'a> IntoIterator for &'a Lowers {
    type Item = &'a LowerEntry;
    type IntoIter = std::slice::Iter<'a, LowerEntry>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// Where a node exists in the layers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodeState {
    /// The name exists in the upper layer.
    pub upper: bool,
    /// The upper directory is known to carry `overlay.impure` (directories only).
    pub impure: bool,
    /// A regular file whose top object holds metadata only (`overlay.metacopy`, the
    /// kernel's `metacopy=on`): its data is the last entry of `lowers`.
    pub metacopy: bool,
    /// A metacopy file whose data was looked up in the data-only layers through its
    /// absolute redirect and is in none of them: it stats, but opening it fails with ENOENT
    /// (the kernel looks data-only layers up lazily, at open, and fails so; 6.18 observed).
    pub data_missing: bool,
    /// Lower layers holding the object, top-first. For a directory: every merged lower
    /// directory. For a non-directory: the one lower object (kept after copy-up as origin).
    pub lowers: Lowers,
    /// For a directory whose lower directories are not found by its name under its
    /// parent's (a redirect in the upper or a lower layer, or a rename with
    /// `redirect_dir=on`): where they are. `None`: under the parent's lower directories, by
    /// name.
    pub redirect: Option<Arc<Redirected>>,
    /// With `index=on`, a non-directory whose lower object has other names (`st_nlink > 1`):
    /// its index entry's name and the lower link count. All its names are one inode, as
    /// the kernel's: a copy-up goes through `workdir/index` and links the name to it.
    pub index: Option<Arc<super::index::IndexInfo>>,
    /// `index` names an existing entry of this very inode (the kernel's `OVL_INDEX`): the
    /// upper object is it, and without `upper` (no upper name yet) the node shows it.
    pub indexed: bool,
}

/// Where a redirected directory's lower directories are, and its redirect as the kernel
/// keeps it in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Redirected {
    /// The value of the upper directory's `overlay.redirect` (read at lookup or written by a
    /// rename): a bare name or an absolute path from the overlay root. A later rename keeps
    /// it where it still fits, and an absolute redirect of a descendant is built from it.
    pub upper: Option<Box<[u8]>>,
    /// Lower layer and the directory's path from that layer's root, for the layers where it
    /// is not the parent's path there joined with the node's name.
    pub paths: Vec<(u16, std::path::PathBuf)>,
}

impl Redirected {
    /// The recorded path of the directory in lower `layer`.
    pub fn path_in(&self, layer: u16) -> Option<&std::path::Path> {
        self.paths
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, p)| p.as_path())
    }
}

impl NodeState {
    /// The topmost layer holding the object.
    pub fn top(&self) -> Option<LayerRef> {
        if self.upper {
            Some(LayerRef::Upper)
        } else {
            self.lowers.first().map(|l| LayerRef::Lower(l.layer))
        }
    }

    /// The kernel's "merge" type: a directory with several real directories.
    pub fn is_merge(&self) -> bool {
        if self.upper {
            !self.lowers.is_empty()
        } else {
            self.lowers.len() > 1
        }
    }
}

/// Inline capacity of [`NodeName`].
const NAME_INLINE: usize = 22;

/// A name component: inline up to 22 bytes, else on the heap.
#[derive(Clone)]
pub(crate) enum NodeName {
    Inline(u8, [u8; NAME_INLINE]),
    Heap(Box<[u8]>),
}

impl NodeName {
    pub fn new(name: &OsStr) -> NodeName {
        let b = name.as_bytes();
        if b.len() <= NAME_INLINE {
            let mut a = [0u8; NAME_INLINE];
            a[..b.len()].copy_from_slice(b);
            NodeName::Inline(b.len() as u8, a)
        } else {
            NodeName::Heap(b.into())
        }
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(match self {
            NodeName::Inline(n, a) => &a[..*n as usize],
            NodeName::Heap(b) => b,
        })
    }
}

/// Where a node sits in the tree.
pub(crate) struct Loc {
    pub parent: Option<NodeRef>,
    pub name: NodeName,
}

static NAME_HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

fn name_hash(name: &OsStr) -> u64 {
    NAME_HASHER.hash_one(name.as_bytes())
}

/// Directory-only parts of a node.
pub(crate) struct DirData {
    /// Live children: hash of the name and a weak reference (the name is the child's).
    children: Mutex<HashTable<(u64, Weak<Node>)>>,
    /// Namespace lock: shared for lookup/readdir, exclusive for changes.
    lock: RwLock<()>,
}

/// A name in the merged tree. Obtain nodes from [`super::Overlay::root`] and
/// [`super::Overlay::lookup`].
///
/// A node stays valid while it is referenced; a parent keeps only weak references to its
/// children, so nodes are freed when the caller drops them. Looking the same name up while
/// a node for it is alive returns the same `Arc`. Hard links are distinct nodes with equal
/// [`Node::ino`].
pub struct Node {
    /// Overlay inode number. Changes once when a lower hard link (`st_nlink > 1`) is copied
    /// up without `index=on`: the kernel then reports the upper inode's number for that
    /// name. With the index it stays the lower file's, for every name.
    ino: AtomicU64,
    pub(crate) loc: Mutex<Loc>,
    pub(crate) state: RwLock<NodeState>,
    dir: Option<Box<DirData>>,
    pub(crate) kind: FileKind,
    /// Removed from the tree (unlinked, rmdir'ed, or replaced by a rename).
    unlinked: AtomicBool,
    /// Serialises copy-up and the replacement of this name in upper.
    pub(crate) copy_lock: Mutex<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("ino", &self.ino())
            .field("kind", &self.kind)
            .field("path", &self.rel_path())
            .field("state", &*self.state.read())
            .finish()
    }
}

impl Node {
    pub(crate) fn new(
        ino: u64,
        kind: FileKind,
        parent: Option<NodeRef>,
        name: &OsStr,
        state: NodeState,
    ) -> Node {
        Node {
            ino: AtomicU64::new(ino),
            kind,
            loc: Mutex::new(Loc {
                parent,
                name: NodeName::new(name),
            }),
            state: RwLock::new(state),
            dir: (kind == FileKind::Directory).then(|| {
                Box::new(DirData {
                    children: Mutex::new(HashTable::new()),
                    lock: RwLock::new(()),
                })
            }),
            unlinked: AtomicBool::new(false),
            copy_lock: Mutex::new(()),
        }
    }

    /// The overlay inode number (same as [`super::Attr::ino`]).
    ///
    /// Stable across copy-up, except for a lower hard link (a lower file with `st_nlink > 1`)
    /// without `index=on`: the kernel then breaks hard links on copy-up, and the copied-up
    /// name reports the new upper inode's number. With the index all names keep the lower
    /// file's number ([`crate::OverlayOptions::index`]). Callers that key on the inode number (a
    /// FUSE node id) must re-read it after an operation that may copy up.
    pub fn ino(&self) -> u64 {
        self.ino.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ino(&self, ino: u64) {
        self.ino.store(ino, Ordering::Relaxed);
    }

    /// Kind of file.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// True while the node's data lives only in lower layers: it is not in the upper layer,
    /// or only its metadata is (a metadata-only copy-up, `metacopy=on`). A read-only open
    /// then reads a lower file, which stays as it is once the data is copied up.
    pub fn is_lower_only(&self) -> bool {
        let st = self.state.read();
        (!st.upper && !st.indexed) || st.metacopy
    }

    /// True for a name of a hard-linked lower file under `index=on`: all its names are one
    /// inode, and a copy-up through this node gives this very name its upper link. A FUSE
    /// server, whose requests name an inode, not which of its names the caller used, looks
    /// such names up again on every use (entry timeout 0) so that the node it holds for the
    /// inode is the name in use.
    pub fn is_indexed_link(&self) -> bool {
        self.state.read().index.is_some()
    }

    /// Path relative to the overlay root (empty for the root).
    pub fn path(&self) -> PathBuf {
        self.rel_path()
    }

    pub(crate) fn rel_path(&self) -> PathBuf {
        let mut names: Vec<NodeName> = Vec::new();
        let mut cur = {
            let l = self.loc.lock();
            if l.parent.is_some() {
                names.push(l.name.clone());
            }
            l.parent.clone()
        };
        while let Some(n) = cur {
            let l = n.loc.lock();
            if l.parent.is_some() {
                names.push(l.name.clone());
            }
            cur = l.parent.clone();
        }
        let mut p = PathBuf::new();
        for n in names.iter().rev() {
            p.push(n.as_os_str());
        }
        p
    }

    /// Parent node and name (None for the root).
    pub(crate) fn parent_name(&self) -> Option<(NodeRef, NodeName)> {
        let l = self.loc.lock();
        l.parent.clone().map(|p| (p, l.name.clone()))
    }

    fn name_is(&self, name: &OsStr) -> bool {
        self.loc.lock().name.as_os_str() == name
    }

    /// True once the name was removed from the tree (unlinked, rmdir'ed, or replaced by a
    /// rename): the node then stands for a name that no longer exists.
    pub fn is_unlinked(&self) -> bool {
        self.unlinked.load(Ordering::Acquire)
    }

    pub(crate) fn set_unlinked(&self) {
        self.unlinked.store(true, Ordering::Release);
    }

    fn dir(&self) -> &DirData {
        self.dir.as_deref().expect("directory node")
    }

    /// The namespace lock of a directory node (panics for other nodes).
    pub(crate) fn dir_lock(&self) -> &RwLock<()> {
        &self.dir().lock
    }

    /// The live child `name`, if any.
    pub(crate) fn cached_child(&self, name: &OsStr) -> Option<NodeRef> {
        let d = self.dir.as_deref()?;
        let h = name_hash(name);
        // Upgraded references are dropped only after the table lock is released: dropping
        // the last one runs `Node::drop`, which takes this lock.
        let mut spare: Vec<NodeRef> = Vec::new();
        let found = live_child(&d.children.lock(), h, name, &mut spare);
        drop(spare);
        found
    }

    /// Register `node` as the child `name`, unless a live child of that name exists: then
    /// that one is returned. The check and the insertion happen under one lock, so two
    /// lookups of the same name racing under the shared directory lock cannot both register
    /// a node (two live nodes for one name would each copy the object up: EEXIST).
    pub(crate) fn child_or_insert(&self, name: &OsStr, node: NodeRef) -> NodeRef {
        let h = name_hash(name);
        // As in `cached_child`: upgraded references are dropped after the lock is released.
        let mut spare: Vec<NodeRef> = Vec::new();
        let found = {
            let mut t = self.dir().children.lock();
            let found = live_child(&t, h, name, &mut spare);
            if found.is_none() {
                t.insert_unique(h, (h, Arc::downgrade(&node)), |(eh, _)| *eh);
            }
            found
        };
        drop(spare);
        found.unwrap_or(node)
    }

    /// Register `node` as the child `name` (replacing any other registration of the name).
    pub(crate) fn set_child(&self, name: &OsStr, node: &NodeRef) {
        let h = name_hash(name);
        let mut spare: Vec<NodeRef> = Vec::new();
        {
            let mut t = self.dir().children.lock();
            let me = Arc::as_ptr(node);
            if let Ok(e) = t.find_entry(h, |(eh, w)| {
                if *eh != h {
                    return false;
                }
                if std::ptr::eq(w.as_ptr(), me) {
                    return true;
                }
                match w.upgrade() {
                    Some(n) => {
                        let same = n.name_is(name);
                        spare.push(n);
                        same
                    }
                    None => false,
                }
            }) {
                e.remove();
            }
            t.insert_unique(h, (h, Arc::downgrade(node)), |(eh, _)| *eh);
        }
        drop(spare);
    }

    /// Remove the registration of `node` as child `name` (if it is registered so).
    pub(crate) fn remove_child(&self, name: &OsStr, node: *const Node) {
        let h = name_hash(name);
        let mut t = self.dir().children.lock();
        if let Ok(e) = t.find_entry(h, |(eh, w)| *eh == h && std::ptr::eq(w.as_ptr(), node)) {
            e.remove();
        }
    }

    /// Number of registered children (live or dying), for tests.
    #[cfg(test)]
    pub(crate) fn child_count(&self) -> usize {
        self.dir.as_deref().map_or(0, |d| d.children.lock().len())
    }

    /// True when `self` is `other` or one of its ancestors.
    pub(crate) fn is_ancestor_of(self: &Arc<Self>, other: &NodeRef) -> bool {
        let mut cur = Some(other.clone());
        while let Some(n) = cur {
            if Arc::ptr_eq(&n, self) {
                return true;
            }
            cur = n.loc.lock().parent.clone();
        }
        false
    }
}

/// The live child registered as `name` (hash `h`) in a children table. Other live
/// children met on the way are pushed to `spare`, for the caller to drop once the table
/// lock is released.
fn live_child(
    t: &HashTable<(u64, Weak<Node>)>,
    h: u64,
    name: &OsStr,
    spare: &mut Vec<NodeRef>,
) -> Option<NodeRef> {
    let mut found = None;
    t.find(h, |(eh, w)| {
        if *eh != h {
            return false;
        }
        match w.upgrade() {
            Some(n) if n.name_is(name) => {
                found = Some(n);
                true
            }
            Some(n) => {
                spare.push(n);
                false
            }
            None => false,
        }
    });
    found
}

impl Drop for Node {
    /// Unregisters the node from its parent and releases its reference to the parent. When
    /// that was the parent's last reference, the parent is taken apart here as well, and so
    /// on up the chain, in a loop: dropping the last node of a long chain (each child holds
    /// its parent) costs no stack per level.
    fn drop(&mut self) {
        let me: *const Node = self;
        let l = self.loc.get_mut();
        let mut parent = l.parent.take();
        if let Some(p) = &parent {
            p.remove_child(l.name.as_os_str(), me);
        }
        while let Some(p) = parent {
            // The address the parent's own parent knows it by (it is moved out below).
            let addr = Arc::as_ptr(&p);
            let Some(mut node) = Arc::into_inner(p) else {
                break;
            };
            let l = node.loc.get_mut();
            parent = l.parent.take();
            if let Some(pp) = &parent {
                pp.remove_child(l.name.as_os_str(), addr);
            }
            // `node` drops here with no parent left: no recursion.
        }
    }
}
