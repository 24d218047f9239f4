//! Names: lookup and the namespace changes (mknod, mkdir, symlink, link, unlink, rmdir,
//! rename), with the bookkeeping of the kernel's lookups and of hard links split by a
//! copy-up.

use std::ffi::OsStr;
use std::path::Path;

use fuser::{Errno, Generation, INodeNo, ReplyEmpty, ReplyEntry};
use overlay_core::{FileKind, NewMode, NodeRef, Owner, RenameFlags};

use super::convert::{decode_dev, errno, negative_attr};
use super::notify::Invalidation;
use super::Inner;

impl Inner {
    /// Record one kernel lookup of `node` as a name in `parent` (see
    /// [`InodeTable::remember`]), and start an eviction sweep when the table is over its
    /// capacity.
    ///
    /// [`InodeTable::remember`]: crate::table::InodeTable::remember
    pub(super) fn remember(&self, node: NodeRef, parent: u64) -> Option<(u64, u64)> {
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
    pub(super) fn check_split(&self, nodeid: u64, node: &NodeRef) {
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

    /// Owner for a new object: the caller's ids translated to layer ids, with the group of a
    /// set-group-ID parent. `None` when they are the daemon's own ids (no chown needed).
    pub(super) fn owner(
        &self,
        req_uid: u32,
        req_gid: u32,
        parent: &NodeRef,
    ) -> Result<Option<Owner>, Errno> {
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
        let entry_ttl = self.entry_ttl(&node);
        match self.ovl.getattr(&node) {
            Ok(a) => match self.remember(node, parent) {
                Some((id, generation)) => reply.entry_node(
                    INodeNo(id),
                    &self.ttl(),
                    &entry_ttl,
                    &self.to_attr(id, &a),
                    Generation(generation),
                ),
                // Removed by another request since: the name is gone.
                None => reply.error(Errno::ENOENT),
            },
            Err(e) => reply.error(errno("getattr", &e)),
        }
    }

    /// How long the kernel may keep the name of `node` without asking again. A name of a
    /// hard-linked lower file under `index=on` is looked up on every use: a request names
    /// an inode, and a copy-up must link the name the caller used (the node the inode's
    /// entry then holds), as the kernel overlay does.
    pub(super) fn entry_ttl(&self, node: &NodeRef) -> std::time::Duration {
        if node.is_indexed_link() {
            std::time::Duration::ZERO
        } else {
            self.ttl()
        }
    }

    pub(super) fn lookup(&self, parent: u64, name: &OsStr, reply: ReplyEntry) {
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

    pub(super) fn mknod(
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

    pub(super) fn mkdir(
        &self,
        req: (u32, u32),
        parent: u64,
        name: &OsStr,
        mode: NewMode,
        reply: ReplyEntry,
    ) {
        self.make_entry("mkdir", req, parent, reply, |p, owner| {
            self.ovl.mkdir(p, name, mode, owner)
        })
    }

    pub(super) fn symlink(
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

    pub(super) fn link(&self, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let n = self.node(ino)?;
            let p = self.node(newparent)?;
            let was_lower = n.is_lower_only();
            let tmpfile = self.tmpfiles.lock().get(&ino).and_then(|f| f.upgrade());
            let linked = match tmpfile {
                // An O_TMPFILE file gets its first name.
                Some(f) => {
                    let linked = self.ovl.link_tmpfile(&f, &n, &p, newname);
                    if linked.is_ok() {
                        self.tmpfiles.lock().remove(&ino);
                    }
                    linked
                }
                None => self.ovl.link(&n, &p, newname),
            }
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

    pub(super) fn unlink(&self, parent: u64, name: &OsStr, reply: ReplyEmpty) {
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

    pub(super) fn rmdir(&self, parent: u64, name: &OsStr, reply: ReplyEmpty) {
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

    pub(super) fn rename(
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
}
