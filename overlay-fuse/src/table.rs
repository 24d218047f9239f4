//! The inode table: FUSE node ids to engine nodes, with the kernel's lookup counts.
//!
//! A node id is the engine's overlay inode number (unique, stable across copy-up), except
//! that the root is always node id 1 (`FUSE_ROOT_ID`): the engine's root inode number and 1
//! swap places, which keeps the mapping a bijection. The `st_ino` the mount shows is the
//! engine's number ([`InodeTable::st_ino`]; the vendored fuser sends node id and `st_ino`
//! apart), so the root shows its real number, not 1.
//!
//! An entry lives while the kernel holds lookups on it; `forget` drops the engine node when
//! the count reaches 0, so memory stays bounded by what the kernel caches. A new entry gets a
//! new generation, so an inode number reused after a forget is a different inode for the
//! kernel.
//!
//! An inode number can also be reused *while* the kernel still holds the old inode: a file
//! deleted through the mount while a process keeps an `O_PATH` descriptor or a working
//! directory in it (no open file, so the daemon holds nothing and the filesystem frees the
//! inode), then a new file that gets the same number (ext4 does that at once). The entry of
//! a removed object is marked gone when its last name goes ([`InodeTable::removing`]); a
//! new object that comes with the number of a gone entry the kernel still holds gets a node
//! id of its own, never used before (counted down from `u64::MAX - 1`, a range no
//! filesystem's inode numbers reach), and keeps it while it exists (the remap is dropped
//! when it is removed through the mount). The old inode goes on answering as the removed
//! object it was (attributes from removal time, no opens), as the kernel overlay's does;
//! the new object's `st_ino` is its node id.
//!
//!
//! A file can also get a new node id while it lives ([`InodeTable::reassign`]): when it was
//! copied up while read-only opens of its lower file are live with that file as their
//! passthrough backing, the kernel would give any further open of the old inode the same
//! (lower) backing. The object then goes on under a node id of its own (from a range below
//! the one above), keeping the engine's number as its `st_ino`; the old inode keeps serving
//! the opens it has.
//!
//! The table is sharded; shard locks are leaf locks, never held across engine calls.
//!
//! The kernel keeps dentries (and with them our entries and the engine's nodes) for as long
//! as it has memory to spare, so the table alone would grow with every name ever looked up.
//! It therefore has a soft capacity: beyond it, [`InodeTable::cold_entries`] picks entries
//! not used since the last sweep (a clock algorithm), and the filesystem asks the kernel to
//! drop their dentries (`inval_entry`); the kernel's FORGETs then free them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use fuser::BackingId;
use overlay_core::NodeRef;
use parking_lot::{Mutex, RwLock};

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
    /// `backing` is a lower file (read-only opens of a lower-only file): no open of the
    /// inode after a copy-up may share it.
    pub backing_lower: bool,
    /// Passthrough writes bypassed the FUSE page cache at some point, so cached opens must
    /// not keep it.
    pub had_passthrough: bool,
    /// An open upper copy of the file, while any open of it is live: attributes are read and
    /// changed through it (`fstat`, `fchmod`, ...) instead of by name.
    pub upper_file: Option<Arc<std::fs::File>>,
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
    node: NodeRef,
    lookups: u64,
    generation: u64,
    /// Parent node id of the name `node` has (0 when unknown). For a hard link: the parent
    /// of the name last looked up.
    parent: u64,
    /// Used since the last eviction sweep.
    referenced: bool,
    /// Chosen for eviction; its invalidation was sent (not chosen again until used).
    evicting: bool,
    io: IoState,
    /// Bits of [`CachedXattr`] names known to be absent on `node` (see
    /// [`InodeTable::xattr_absent`]).
    xattr_absent: u8,
    /// Bumped whenever the xattrs of the inode change through this mount.
    xattr_epoch: u32,
    /// Further names (hard links) of the inode the kernel looked up; `node` falls back to
    /// one of them when its own name is removed.
    links: Vec<(NodeRef, u64)>,
    /// The object was removed through the mount (its last name went): another object
    /// remembered under this number is a new inode, and gets a node id of its own.
    gone: bool,
}

impl Entry {
    /// A freshly looked-up inode: one kernel lookup, used, no I/O state.
    fn new(node: NodeRef, generation: u64, parent: u64) -> Self {
        Entry {
            node,
            lookups: 1,
            generation,
            parent,
            referenced: true,
            evicting: false,
            io: IoState::default(),
            xattr_absent: 0,
            xattr_epoch: 0,
            links: Vec::new(),
            gone: false,
        }
    }
}

/// Node ids above this one come from reuse remaps (counting down from `u64::MAX - 1`) and
/// are the `st_ino` their object shows; node ids of [`InodeTable::reassign`] count down from
/// here and show the engine's number.
const REUSE_REMAP_FLOOR: u64 = u64::MAX - (1 << 48);

/// Hard-link names remembered per inode.
const MAX_LINKS: usize = 8;

/// Extended attributes whose absence the table remembers per inode: the kernel asks for
/// them on every write (`security.capability`, to drop capabilities) and on permission
/// checks of each new inode (the ACLs), and most files have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachedXattr {
    /// `security.capability`.
    Capability = 1,
    /// `system.posix_acl_access`.
    AclAccess = 2,
    /// `system.posix_acl_default`.
    AclDefault = 4,
}

impl CachedXattr {
    /// The cached attribute of this name, if it is one.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        match name {
            b"security.capability" => Some(CachedXattr::Capability),
            b"system.posix_acl_access" => Some(CachedXattr::AclAccess),
            b"system.posix_acl_default" => Some(CachedXattr::AclDefault),
            _ => None,
        }
    }
}

/// The table of node ids the kernel knows.
#[derive(Debug)]
pub struct InodeTable {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    root_engine_ino: u64,
    next_generation: AtomicU64,
    /// Entries held.
    count: AtomicUsize,
    /// Soft capacity (0: unbounded).
    capacity: usize,
    /// An eviction sweep is queued or running.
    evicting: AtomicBool,
    /// The table went over its capacity while a sweep was running: sweep again after it.
    sweep_again: AtomicBool,
    /// Entries chosen for eviction whose FORGET has not come yet.
    in_flight: AtomicUsize,
    /// Shard where the next sweep starts.
    cursor: AtomicUsize,
    /// Engine inode numbers whose object has a node id of its own (see the module docs).
    /// Lock order: this lock, then a shard lock; never the other way round.
    remaps: RwLock<HashMap<u64, u64>>,
    /// `remaps` is not empty (the common case reads no lock).
    any_remaps: AtomicBool,
    /// The next node id to hand out for a remap (counts down).
    next_remap: AtomicU64,
    /// The next node id to hand out for a [`InodeTable::reassign`] (counts down).
    next_reassign: AtomicU64,
}

impl InodeTable {
    /// A table holding `root` as node id 1, with no capacity limit.
    pub fn new(root: NodeRef) -> Self {
        Self::with_capacity(root, 0)
    }

    /// A table holding `root` as node id 1 that asks for eviction beyond `capacity` entries
    /// (0: never).
    pub fn with_capacity(root: NodeRef, capacity: usize) -> Self {
        let root_engine_ino = root.ino();
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(HashMap::new()))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let t = InodeTable {
            shards,
            root_engine_ino,
            next_generation: AtomicU64::new(1),
            count: AtomicUsize::new(1),
            capacity,
            evicting: AtomicBool::new(false),
            sweep_again: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
            remaps: RwLock::new(HashMap::new()),
            any_remaps: AtomicBool::new(false),
            next_remap: AtomicU64::new(u64::MAX - 1),
            next_reassign: AtomicU64::new(REUSE_REMAP_FLOOR),
        };
        t.shard(ROOT_ID)
            .lock()
            .insert(ROOT_ID, Entry::new(root, 0, ROOT_ID));
        t
    }

    fn shard(&self, nodeid: u64) -> &Mutex<HashMap<u64, Entry>> {
        // Inode numbers are often sequential; mix the bits a little.
        let h = nodeid.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
        &self.shards[h as usize % SHARDS]
    }

    /// The node id (= `st_ino` shown) for an engine inode number.
    pub fn nodeid_of(&self, engine_ino: u64) -> u64 {
        if self.any_remaps.load(Ordering::Acquire) {
            if let Some(id) = self.remaps.read().get(&engine_ino) {
                return *id;
            }
        }
        self.natural_nodeid(engine_ino)
    }

    /// The `st_ino` shown for node id `nodeid` whose object has engine inode number
    /// `engine_ino`: the engine's number, except for a new object that got the number of a
    /// removed one the kernel still holds (its own node id; see the module docs).
    pub fn st_ino(&self, nodeid: u64, engine_ino: u64) -> u64 {
        if nodeid > REUSE_REMAP_FLOOR {
            nodeid
        } else {
            engine_ino
        }
    }

    /// The `st_ino` shown for the object of engine inode number `engine_ino` (readdir's
    /// `d_ino`).
    pub fn st_ino_of(&self, engine_ino: u64) -> u64 {
        self.st_ino(self.nodeid_of(engine_ino), engine_ino)
    }

    /// Give the object the kernel knows as `nodeid` (engine node `node`) a new node id, for
    /// the lookups to come; the entry `nodeid` stays for what the kernel holds of it. Its
    /// `st_ino` does not change. Returns the new node id, or `None` when the object's node
    /// id is no longer `nodeid` (another request reassigned it already).
    pub fn reassign(&self, nodeid: u64, node: &NodeRef) -> Option<u64> {
        let ino = node.ino();
        let mut remaps = self.remaps.write();
        let current = remaps
            .get(&ino)
            .copied()
            .unwrap_or_else(|| self.natural_nodeid(ino));
        if current != nodeid || nodeid == ROOT_ID {
            return None;
        }
        let new = self.next_reassign.fetch_sub(1, Ordering::Relaxed);
        remaps.insert(ino, new);
        self.any_remaps.store(true, Ordering::Release);
        Some(new)
    }

    /// The node id of an engine inode number without a remap.
    fn natural_nodeid(&self, engine_ino: u64) -> u64 {
        if engine_ino == self.root_engine_ino {
            ROOT_ID
        } else if engine_ino == ROOT_ID {
            self.root_engine_ino
        } else {
            engine_ino
        }
    }

    /// The engine node of a node id the kernel knows (marks the entry used).
    pub fn get(&self, nodeid: u64) -> Option<NodeRef> {
        self.shard(nodeid).lock().get_mut(&nodeid).map(|e| {
            self.touch(e);
            e.node.clone()
        })
    }

    /// Record one kernel lookup of `node` (a lookup, create, mkdir, ... reply or a
    /// readdirplus entry), reached as a name in directory `parent`. The newest engine node
    /// replaces an older one for the same inode. Returns (node id, generation).
    ///
    /// When the entry's object is gone (removed through the mount) and `node` is another
    /// object that got its inode number, `node` gets a node id of its own (see the module
    /// docs): the kernel must not take the new object for the old inode it may still hold.
    ///
    /// `None` when `node` was removed from the tree meanwhile (a race with an unlink or a
    /// rename): the name is gone, and its number may already be another object's.
    pub fn remember(&self, node: NodeRef, parent: u64) -> Option<(u64, u64)> {
        loop {
            let nodeid = self.nodeid_of(node.ino());
            let mut shard = self.shard(nodeid).lock();
            // Checked under the shard lock: an unlink marks the node before the entry.
            if node.is_unlinked() {
                return None;
            }
            match shard.get_mut(&nodeid) {
                Some(e) if e.gone && !Arc::ptr_eq(&e.node, &node) => {
                    // A new object with the number of a removed one the kernel still holds.
                    drop(shard);
                    if let Some(r) = self.remap(node.clone(), parent, nodeid) {
                        return Some(r);
                    }
                    // Another request remapped it meanwhile: look again.
                }
                Some(e) => {
                    e.lookups += 1;
                    self.touch(e);
                    if !Arc::ptr_eq(&e.node, &node) {
                        e.xattr_absent = 0;
                        e.xattr_epoch = e.xattr_epoch.wrapping_add(1);
                        // Another name of the same inode (a hard link): keep the old one
                        // too, unless a copy-up split it off (it has another number now).
                        e.links.retain(|(n, _)| !Arc::ptr_eq(n, &node));
                        if e.node.ino() == node.ino() && e.links.len() < MAX_LINKS {
                            e.links.push((e.node.clone(), e.parent));
                        }
                    }
                    e.node = node;
                    e.parent = parent;
                    return Some((nodeid, e.generation));
                }
                None => {
                    let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                    shard.insert(nodeid, Entry::new(node, generation, parent));
                    self.count.fetch_add(1, Ordering::Relaxed);
                    return Some((nodeid, generation));
                }
            }
        }
    }

    /// Give `node`'s object a node id of its own, in place of `taken` (the node id of a
    /// removed object the kernel still holds), and record its first lookup. `None` when
    /// another request changed the object's node id meanwhile.
    fn remap(&self, node: NodeRef, parent: u64, taken: u64) -> Option<(u64, u64)> {
        let ino = node.ino();
        let mut remaps = self.remaps.write();
        if remaps
            .get(&ino)
            .copied()
            .unwrap_or_else(|| self.natural_nodeid(ino))
            != taken
        {
            return None;
        }
        let nodeid = self.next_remap.fetch_sub(1, Ordering::Relaxed);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        // Under the remap lock, so that no request sees the remap before the entry.
        self.shard(nodeid)
            .lock()
            .insert(nodeid, Entry::new(node, generation, parent));
        self.count.fetch_add(1, Ordering::Relaxed);
        remaps.insert(ino, nodeid);
        self.any_remaps.store(true, Ordering::Release);
        Some((nodeid, generation))
    }

    /// The object of `engine_ino` that had node id `nodeid` was removed: later objects with
    /// the number get the natural node id again (or a new remap while the kernel holds it).
    fn drop_remap(&self, engine_ino: u64, nodeid: u64) {
        if !self.any_remaps.load(Ordering::Acquire) {
            return;
        }
        let mut remaps = self.remaps.write();
        if remaps.get(&engine_ino) == Some(&nodeid) {
            remaps.remove(&engine_ino);
            self.any_remaps.store(!remaps.is_empty(), Ordering::Release);
        }
    }

    /// Replace the engine node of a known inode (after a rename) without counting a lookup.
    pub fn refresh(&self, node: NodeRef, parent: u64) {
        let nodeid = self.nodeid_of(node.ino());
        if let Some(e) = self.shard(nodeid).lock().get_mut(&nodeid) {
            if !Arc::ptr_eq(&e.node, &node) {
                e.xattr_absent = 0;
                e.xattr_epoch = e.xattr_epoch.wrapping_add(1);
            }
            e.node = node;
            e.parent = parent;
        }
    }

    /// The name of `node` is about to be removed (unlink, rmdir, or replaced by a rename).
    /// When that removes the object (`last_link`: a directory, or a file whose `st_nlink`
    /// is 1), its entry is marked gone *before* the removal: the filesystem may hand the
    /// freed number to a new object the moment the removal is done, and that object must
    /// be a new inode for the kernel. With one link left, whatever node the entry holds
    /// (an older node of the same name) stands for that object. Returns what
    /// [`InodeTable::removal_failed`] needs (the node id it marked).
    pub fn removing(&self, node: &NodeRef, last_link: bool) -> Option<u64> {
        if !last_link {
            return None;
        }
        let nodeid = self.nodeid_of(node.ino());
        let mut shard = self.shard(nodeid).lock();
        let e = shard.get_mut(&nodeid)?;
        let was_gone = std::mem::replace(&mut e.gone, true);
        (!was_gone).then_some(nodeid)
    }

    /// The removal announced by [`InodeTable::removing`] failed: the object lives on.
    pub fn removal_failed(&self, marked: Option<u64>) {
        let Some(nodeid) = marked else {
            return;
        };
        if let Some(e) = self.shard(nodeid).lock().get_mut(&nodeid) {
            e.gone = false;
        }
    }

    /// The name of `node` was removed (unlink, rmdir, or replaced by a rename): if the inode
    /// has another known name, the entry switches to it, so operations on the inode keep
    /// working through its remaining links. When `last_link`, the object is gone (its entry
    /// was marked by [`InodeTable::removing`]): the other nodes the entry knew were older
    /// nodes of the same name, and its remap, if any, is dropped.
    pub fn unlinked(&self, node: &NodeRef, last_link: bool) {
        let nodeid = self.nodeid_of(node.ino());
        if let Some(e) = self.shard(nodeid).lock().get_mut(&nodeid) {
            e.links.retain(|(n, _)| !Arc::ptr_eq(n, node));
            if last_link {
                e.links.clear();
            } else if Arc::ptr_eq(&e.node, node) {
                if let Some((n, p)) = e.links.pop() {
                    e.node = n;
                    e.parent = p;
                    e.xattr_absent = 0;
                    e.xattr_epoch = e.xattr_epoch.wrapping_add(1);
                }
            }
        }
        if last_link {
            self.drop_remap(node.ino(), nodeid);
        }
    }

    /// `node` no longer is a name of inode `nodeid`: a copy-up split a lower hard link and
    /// gave the name the upper inode's number. The entry switches to another name if it has
    /// one. Returns the parent node id of `node`'s name, if the entry knew it.
    pub fn split(&self, nodeid: u64, node: &NodeRef) -> Option<u64> {
        let mut shard = self.shard(nodeid).lock();
        let e = shard.get_mut(&nodeid)?;
        let mut parent = None;
        e.links.retain(|(n, p)| {
            if Arc::ptr_eq(n, node) {
                parent = Some(*p);
                false
            } else {
                true
            }
        });
        if Arc::ptr_eq(&e.node, node) {
            parent = Some(e.parent);
            if let Some((n, p)) = e.links.pop() {
                e.node = n;
                e.parent = p;
                e.xattr_absent = 0;
                e.xattr_epoch = e.xattr_epoch.wrapping_add(1);
            }
        }
        parent.filter(|p| *p != 0)
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
                if e.evicting {
                    self.in_flight.fetch_sub(1, Ordering::Relaxed);
                }
                shard.remove(&nodeid);
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// `Ok` when `x` is known to be absent on `node` (the engine node `nodeid` maps to);
    /// otherwise the epoch to pass to [`InodeTable::set_xattr_absent`] after asking the
    /// engine (`None` when the node id is unknown or maps to another node).
    pub fn xattr_absent(
        &self,
        nodeid: u64,
        node: &NodeRef,
        x: CachedXattr,
    ) -> Result<(), Option<u32>> {
        match self.shard(nodeid).lock().get(&nodeid) {
            Some(e) if Arc::ptr_eq(&e.node, node) => {
                if e.xattr_absent & x as u8 != 0 {
                    Ok(())
                } else {
                    Err(Some(e.xattr_epoch))
                }
            }
            _ => Err(None),
        }
    }

    /// Remember that `x` is absent on `node`, unless `nodeid` maps to another node now or
    /// its xattrs changed since `epoch` was read.
    pub fn set_xattr_absent(&self, nodeid: u64, node: &NodeRef, x: CachedXattr, epoch: u32) {
        if let Some(e) = self.shard(nodeid).lock().get_mut(&nodeid) {
            if Arc::ptr_eq(&e.node, node) && e.xattr_epoch == epoch {
                e.xattr_absent |= x as u8;
            }
        }
    }

    /// Forget what is known about the xattrs of `nodeid` (after it set or removed one).
    pub fn clear_xattr_absent(&self, nodeid: u64) {
        if let Some(e) = self.shard(nodeid).lock().get_mut(&nodeid) {
            e.xattr_absent = 0;
            e.xattr_epoch = e.xattr_epoch.wrapping_add(1);
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
        let mut shard = self.shard(nodeid).lock();
        let Some(e) = shard.get_mut(&nodeid) else {
            return;
        };
        let io = &mut e.io;
        match mode {
            IoMode::Cached => io.cached = io.cached.saturating_sub(1),
            IoMode::Passthrough => {
                io.passthrough = io.passthrough.saturating_sub(1);
                if io.passthrough == 0 {
                    io.backing = None;
                    io.backing_lower = false;
                }
            }
        }
        if io.cached == 0 && io.passthrough == 0 {
            io.upper_file = None;
        }
    }

    /// Like [`InodeTable::get`], with the open upper copy of the inode if an open of one is
    /// live (one shard lock for both).
    pub fn get_with_upper_file(
        &self,
        nodeid: u64,
    ) -> Option<(NodeRef, Option<Arc<std::fs::File>>)> {
        self.shard(nodeid).lock().get_mut(&nodeid).map(|e| {
            self.touch(e);
            (e.node.clone(), e.io.upper_file.clone())
        })
    }

    /// Number of inodes the table holds.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Mark an entry used; if it was chosen for eviction, the kernel still wants it.
    fn touch(&self, e: &mut Entry) {
        e.referenced = true;
        self.stop_evicting(e);
    }

    /// The entry is no longer on its way out: it stops counting as in flight.
    fn stop_evicting(&self, e: &mut Entry) {
        if e.evicting {
            e.evicting = false;
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Entries beyond `limit`, not counting those whose eviction is under way.
    pub fn excess_over(&self, limit: usize) -> usize {
        self.len()
            .saturating_sub(self.in_flight.load(Ordering::Relaxed))
            .saturating_sub(limit)
    }

    /// True when the table is over its capacity and no sweep is under way; the caller must
    /// then run [`InodeTable::cold_entries`] and [`InodeTable::end_eviction`]. When a sweep
    /// is under way, it is asked to run once more.
    pub fn begin_eviction(&self) -> bool {
        if self.capacity == 0 || self.excess_over(self.capacity) == 0 {
            return false;
        }
        if self.evicting.swap(true, Ordering::AcqRel) {
            self.sweep_again.store(true, Ordering::Release);
            return false;
        }
        true
    }

    /// End a sweep. True when the table went over its capacity again while it ran (new
    /// lookups came in): the caller then owns a new sweep and must run it, so the table
    /// never stays above its capacity for want of a lookup to trigger the next one.
    pub fn end_eviction(&self) -> bool {
        self.evicting.store(false, Ordering::Release);
        self.sweep_again.swap(false, Ordering::AcqRel) && self.begin_eviction()
    }

    /// Give up a sweep that cannot run (no notifier yet, or the mount is going away).
    pub fn cancel_eviction(&self) {
        self.sweep_again.store(false, Ordering::Release);
        self.evicting.store(false, Ordering::Release);
    }

    /// The kernel refused to drop the dentry of `nodeid` (it no longer had that name, say):
    /// it is no longer counted as being evicted.
    pub fn eviction_failed(&self, nodeid: u64) {
        if let Some(e) = self.shard(nodeid).lock().get_mut(&nodeid) {
            self.stop_evicting(e);
        }
    }

    /// Pick up to `want` entries not used since the last sweep (clock algorithm: used ones
    /// lose their mark and are passed over), skipping the root and inodes with open files.
    /// Returns each with the parent node id its name lives in.
    pub fn cold_entries(&self, want: usize) -> Vec<(u64, NodeRef)> {
        let mut out = Vec::new();
        let start = self.cursor.load(Ordering::Relaxed);
        // Two passes: the first may only clear marks.
        for step in 0..2 * SHARDS {
            if out.len() >= want {
                break;
            }
            let i = (start + step) % SHARDS;
            self.cursor.store((i + 1) % SHARDS, Ordering::Relaxed);
            let mut shard = self.shards[i].lock();
            for (id, e) in shard.iter_mut() {
                if out.len() >= want {
                    break;
                }
                if *id == ROOT_ID || e.evicting || e.parent == 0 {
                    continue;
                }
                if e.io.cached > 0 || e.io.passthrough > 0 {
                    continue;
                }
                if e.referenced {
                    e.referenced = false;
                    continue;
                }
                e.evicting = true;
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                out.push((e.parent, e.node.clone()));
            }
        }
        out
    }

    /// The soft capacity (0: unbounded).
    pub fn capacity(&self) -> usize {
        self.capacity
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

#[cfg(test)]
mod tests {
    use super::*;
    use overlay_core::{LayerStack, Overlay};
    use std::ffi::OsStr;

    /// An engine over one lower holding `n` files, and their nodes.
    fn nodes(n: usize) -> (tempfile::TempDir, Overlay, Vec<NodeRef>) {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        }
        let ovl = Overlay::new(LayerStack::builder().lower(dir.path()).build().unwrap()).unwrap();
        let root = ovl.root();
        let nodes = (0..n)
            .map(|i| ovl.lookup(&root, OsStr::new(&format!("f{i}"))).unwrap())
            .collect();
        (dir, ovl, nodes)
    }

    #[test]
    fn a_sweep_reruns_when_the_table_grew_during_it() {
        let (_dir, ovl, nodes) = nodes(12);
        let t = InodeTable::with_capacity(ovl.root(), 8);
        for n in &nodes[..9] {
            t.remember(n.clone(), ROOT_ID);
        }
        // 10 entries with the root: over capacity, the first caller owns the sweep.
        assert!(t.begin_eviction());
        assert!(!t.begin_eviction(), "one sweep at a time");
        // The first pass only clears the marks; the second picks cold entries.
        let want = t.excess_over(6);
        assert_eq!(want, 4);
        let cold = t.cold_entries(want);
        assert_eq!(cold.len(), 4);
        // Those count as leaving: the table is no longer over its capacity for a new sweep...
        assert_eq!(t.excess_over(8), 0);
        // ...until lookups arrive while the sweep runs.
        for n in &nodes[9..] {
            t.remember(n.clone(), ROOT_ID);
            assert!(!t.begin_eviction());
        }
        assert!(t.end_eviction(), "the sweep must run again");
        assert!(!t.end_eviction());
        // The kernel forgets the evicted ones: the count drops, nothing stays in flight.
        for (_, n) in &cold {
            t.forget(t.nodeid_of(n.ino()), 1);
        }
        assert_eq!(t.len(), 9);
        assert_eq!(t.excess_over(0), 9);
    }

    #[test]
    fn a_used_or_refused_eviction_is_no_longer_in_flight() {
        let (_dir, ovl, nodes) = nodes(4);
        let t = InodeTable::with_capacity(ovl.root(), 2);
        let ids: Vec<u64> = nodes
            .iter()
            .map(|n| t.remember(n.clone(), ROOT_ID).unwrap().0)
            .collect();
        let cold = t.cold_entries(4);
        assert_eq!(cold.len(), 4);
        assert_eq!(t.excess_over(0), 1, "only the root is not leaving");
        t.get(ids[0]).unwrap();
        t.eviction_failed(ids[1]);
        assert_eq!(t.excess_over(0), 3);
        // A table without a cap never sweeps.
        let unbounded = InodeTable::new(ovl.root());
        unbounded.remember(nodes[0].clone(), ROOT_ID);
        assert!(!unbounded.begin_eviction());
    }
}
