//! The inode table: FUSE node ids to engine nodes, with the kernel's lookup counts.
//!
//! fuser uses `st_ino` as the FUSE node id, so the node id *is* the inode number the mount
//! shows. It is the engine's overlay inode number (unique, stable across copy-up), except that
//! the root is always node id 1 (`FUSE_ROOT_ID`): the engine's root inode number and 1 swap
//! places, which keeps the mapping a bijection.
//!
//! An entry lives while the kernel holds lookups on it; `forget` drops the engine node when
//! the count reaches 0, so memory stays bounded by what the kernel caches. A new entry gets a
//! new generation, so an inode number reused after a forget is a different inode for the
//! kernel.
//!
//! The table is sharded; shard locks are leaf locks, never held across engine calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fuser::BackingId;
use overlay_core::NodeRef;
use parking_lot::Mutex;

/// FUSE's root node id.
pub const ROOT_ID: u64 = 1;

const SHARDS: usize = 64;

/// How the open files of one inode do their I/O. The kernel requires that all opens of an
/// inode agree while any is live: either all through the daemon (cached) or all passthrough
/// with the *same* backing.
#[derive(Debug, Default)]
pub struct IoState {
    /// Live opens served through the daemon.
    pub cached: u32,
    /// Live passthrough opens.
    pub passthrough: u32,
    /// The backing shared by the live passthrough opens.
    pub backing: Option<Arc<BackingId>>,
    /// Passthrough writes bypassed the FUSE page cache at some point, so cached opens must
    /// not keep it.
    pub had_passthrough: bool,
}

/// The I/O mode an open file was given (recorded so that release undoes the right count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// Served through the daemon.
    Cached,
    /// Kernel passthrough to a backing file.
    Passthrough,
}

#[derive(Debug)]
struct Entry {
    /// The newest engine node the kernel reached this inode through.
    node: NodeRef,
    /// Other names of the same inode (hard links) the kernel reached it through, so that a
    /// name removed by unlink or rename-over does not take the inode down with it.
    aliases: Vec<NodeRef>,
    lookups: u64,
    generation: u64,
    /// Parent node id (directories only; 0 when unknown).
    parent: u64,
    io: IoState,
}

/// The table of node ids the kernel knows.
#[derive(Debug)]
pub struct InodeTable {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    root_engine_ino: u64,
    next_generation: AtomicU64,
}

impl InodeTable {
    /// A table holding `root` as node id 1.
    pub fn new(root: NodeRef) -> Self {
        let root_engine_ino = root.ino();
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(HashMap::new()))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let t = InodeTable {
            shards,
            root_engine_ino,
            next_generation: AtomicU64::new(1),
        };
        t.shard(ROOT_ID).lock().insert(
            ROOT_ID,
            Entry {
                node: root,
                aliases: Vec::new(),
                lookups: 1,
                generation: 0,
                parent: ROOT_ID,
                io: IoState::default(),
            },
        );
        t
    }

    fn shard(&self, nodeid: u64) -> &Mutex<HashMap<u64, Entry>> {
        // Inode numbers are often sequential; mix the bits a little.
        let h = nodeid.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
        &self.shards[h as usize % SHARDS]
    }

    /// The node id (= `st_ino` shown) for an engine inode number.
    pub fn nodeid_of(&self, engine_ino: u64) -> u64 {
        if engine_ino == self.root_engine_ino {
            ROOT_ID
        } else if engine_ino == ROOT_ID {
            self.root_engine_ino
        } else {
            engine_ino
        }
    }

    /// The engine node of a node id the kernel knows: a name of the inode still in the tree
    /// when there is one (hard links), else the newest one.
    pub fn get(&self, nodeid: u64) -> Option<NodeRef> {
        let mut shard = self.shard(nodeid).lock();
        let e = shard.get_mut(&nodeid)?;
        if e.node.is_removed() {
            if let Some(i) = e.aliases.iter().position(|n| !n.is_removed()) {
                std::mem::swap(&mut e.node, &mut e.aliases[i]);
            }
            e.aliases.retain(|n| !n.is_removed());
        }
        Some(e.node.clone())
    }

    /// Make `node` the current name of `e`, keeping the previous one as an alias when it is a
    /// different, still linked name of the same inode.
    fn set_node(e: &mut Entry, node: NodeRef) {
        if Arc::ptr_eq(&e.node, &node) {
            return;
        }
        e.aliases
            .retain(|n| !Arc::ptr_eq(n, &node) && !n.is_removed());
        let old = std::mem::replace(&mut e.node, node);
        if !old.is_removed() {
            e.aliases.push(old);
        }
    }

    /// Record one kernel lookup of `node` (a lookup, create, mkdir, ... reply or a
    /// readdirplus entry). The newest engine node replaces an older one for the same inode.
    /// `parent` is recorded for directories. Returns (node id, generation).
    pub fn remember(&self, node: NodeRef, parent: Option<u64>) -> (u64, u64) {
        let nodeid = self.nodeid_of(node.ino());
        let mut shard = self.shard(nodeid).lock();
        match shard.get_mut(&nodeid) {
            Some(e) => {
                e.lookups += 1;
                Self::set_node(e, node);
                if let Some(p) = parent {
                    e.parent = p;
                }
                (nodeid, e.generation)
            }
            None => {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                shard.insert(
                    nodeid,
                    Entry {
                        node,
                        aliases: Vec::new(),
                        lookups: 1,
                        generation,
                        parent: parent.unwrap_or(0),
                        io: IoState::default(),
                    },
                );
                (nodeid, generation)
            }
        }
    }

    /// Replace the engine node of a known inode (after a rename) without counting a lookup.
    pub fn refresh(&self, node: NodeRef, parent: Option<u64>) {
        let nodeid = self.nodeid_of(node.ino());
        if let Some(e) = self.shard(nodeid).lock().get_mut(&nodeid) {
            Self::set_node(e, node);
            if let Some(p) = parent {
                e.parent = p;
            }
        }
    }

    /// Drop `n` kernel lookups; the entry goes when none remain. The root stays.
    pub fn forget(&self, nodeid: u64, n: u64) {
        if nodeid == ROOT_ID {
            return;
        }
        let mut shard = self.shard(nodeid).lock();
        if let Some(e) = shard.get_mut(&nodeid) {
            e.lookups = e.lookups.saturating_sub(n);
            if e.lookups == 0 {
                shard.remove(&nodeid);
            }
        }
    }

    /// The parent node id of a directory, if known.
    pub fn parent_of(&self, nodeid: u64) -> Option<u64> {
        self.shard(nodeid)
            .lock()
            .get(&nodeid)
            .map(|e| e.parent)
            .filter(|p| *p != 0)
    }

    /// Run `f` on the I/O state of an inode under its shard lock.
    pub fn with_io<R>(&self, nodeid: u64, f: impl FnOnce(&mut IoState) -> R) -> Option<R> {
        self.shard(nodeid)
            .lock()
            .get_mut(&nodeid)
            .map(|e| f(&mut e.io))
    }

    /// Undo the count of one released open.
    pub fn release_io(&self, nodeid: u64, mode: IoMode) {
        self.with_io(nodeid, |io| match mode {
            IoMode::Cached => io.cached = io.cached.saturating_sub(1),
            IoMode::Passthrough => {
                io.passthrough = io.passthrough.saturating_sub(1);
                if io.passthrough == 0 {
                    io.backing = None;
                }
            }
        });
    }

    /// Number of inodes the table holds (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Never true: the root is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Lookup count of a node id (for tests and diagnostics).
    pub fn lookups(&self, nodeid: u64) -> Option<u64> {
        self.shard(nodeid).lock().get(&nodeid).map(|e| e.lookups)
    }
}
