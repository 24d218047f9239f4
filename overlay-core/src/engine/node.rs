//! Nodes: names in the merged tree, with their per-layer presence and per-node locks.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use super::layers::LayerRef;
use super::{FileKind, NodeRef};

/// Presence of a directory (or file) in one lower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LowerEntry {
    /// Lower layer index, top-first.
    pub layer: u16,
    /// The directory in this layer is marked `opaque=x`: its entries may be xwhiteouts.
    pub xwhiteouts: bool,
}

/// Where a node exists in the layers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodeState {
    /// The name exists in the upper layer.
    pub upper: bool,
    /// Lower layers holding the object, top-first. For a directory: every merged lower
    /// directory. For a non-directory: the one lower object (kept after copy-up as origin).
    pub lowers: Vec<LowerEntry>,
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

/// Where a node sits in the tree.
#[derive(Debug)]
pub(crate) struct Loc {
    pub parent: Option<NodeRef>,
    pub name: OsString,
    /// Removed from the tree (unlinked, rmdir'ed, or replaced by a rename).
    pub unlinked: bool,
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
    /// up: the kernel then reports the upper inode's number for that name.
    pub(crate) ino: AtomicU64,
    pub(crate) kind: FileKind,
    pub(crate) loc: Mutex<Loc>,
    pub(crate) state: RwLock<NodeState>,
    /// Live children (directories only).
    pub(crate) children: Mutex<HashMap<OsString, Weak<Node>>>,
    /// Namespace lock of a directory: shared for lookup/readdir, exclusive for changes.
    pub(crate) dir_lock: RwLock<()>,
    /// Serialises copy-up and the replacement of this name in upper.
    pub(crate) copy_lock: Mutex<()>,
    /// Attributes at removal time, reported by `getattr` once the node is unlinked (open
    /// files outlive their name).
    pub(crate) removed_attr: Mutex<Option<super::Attr>>,
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
        name: OsString,
        state: NodeState,
    ) -> Node {
        Node {
            ino: AtomicU64::new(ino),
            kind,
            loc: Mutex::new(Loc {
                parent,
                name,
                unlinked: false,
            }),
            state: RwLock::new(state),
            children: Mutex::new(HashMap::new()),
            dir_lock: RwLock::new(()),
            copy_lock: Mutex::new(()),
            removed_attr: Mutex::new(None),
        }
    }

    /// The overlay inode number (same as [`super::Attr::ino`]).
    ///
    /// Stable across copy-up, except for a lower hard link (a lower file with `st_nlink > 1`):
    /// the kernel without `index=on` breaks hard links on copy-up, and the copied-up name
    /// then reports the new upper inode's number. Callers that key on the inode number (a
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

    /// True while the node lives only in lower layers (immutable while mounted, so callers may
    /// cache it for long).
    pub fn is_lower_only(&self) -> bool {
        !self.state.read().upper
    }

    /// Path relative to the overlay root (empty for the root).
    pub fn path(&self) -> PathBuf {
        self.rel_path()
    }

    pub(crate) fn rel_path(&self) -> PathBuf {
        let mut names: Vec<OsString> = Vec::new();
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
            p.push(n);
        }
        p
    }

    /// Parent node and name (None for the root).
    pub(crate) fn parent_name(&self) -> Option<(NodeRef, OsString)> {
        let l = self.loc.lock();
        l.parent.clone().map(|p| (p, l.name.clone()))
    }

    pub(crate) fn is_unlinked(&self) -> bool {
        self.loc.lock().unlinked
    }

    /// The live child `name`, if any.
    pub(crate) fn cached_child(&self, name: &OsStr) -> Option<NodeRef> {
        self.children.lock().get(name).and_then(Weak::upgrade)
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

impl Drop for Node {
    fn drop(&mut self) {
        let me: *const Node = self;
        let l = self.loc.get_mut();
        if let Some(p) = &l.parent {
            let mut ch = p.children.lock();
            if let Some(w) = ch.get(&l.name) {
                if std::ptr::eq(w.as_ptr(), me) {
                    ch.remove(&l.name);
                }
            }
        }
    }
}
