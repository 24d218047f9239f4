//! Directories: open directories, their listing snapshots (readdir, readdirplus), and
//! fsyncdir.

use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyOpen,
};
use overlay_core::{DirEntry, FileKind};
use parking_lot::Mutex;

use super::convert::{errno, file_type, negative_attr};
use super::handles::OpenDir;
use super::Inner;
use crate::prefetch::Job;

/// An open directory, its listing snapshot and its parent's node id.
type Listing = (Arc<OpenDir>, Arc<Vec<DirEntry>>, u64);

impl Inner {
    pub(super) fn opendir(&self, ino: u64, reply: ReplyOpen) {
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

    /// The open directory `fh`, its listing from `offset` on, and its parent's node id.
    fn listing(&self, fh: u64, offset: u64) -> Result<Listing, Errno> {
        let d = self.dirs.get(fh).ok_or(Errno::EBADF)?;
        let entries = self.dir_entries(&d, offset)?;
        let parent = self.table.parent_of(d.nodeid).unwrap_or(d.nodeid);
        Ok((d, entries, parent))
    }

    /// The `st_ino` of an open directory and of its parent (node id `parent`), for the
    /// `d_ino` of "." and "..".
    fn dot_inos(&self, d: &OpenDir, parent: u64) -> (u64, u64) {
        let dot = self.table.st_ino(d.nodeid, d.node.ino());
        let dotdot = match self.table.get(parent) {
            Some(p) => self.table.st_ino(parent, p.ino()),
            None => dot,
        };
        (dot, dotdot)
    }

    pub(super) fn readdir(&self, fh: u64, offset: u64, mut reply: ReplyDirectory) {
        let (d, entries, parent) = match self.listing(fh, offset) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let total = entries.len() as u64 + 2;
        let (dot, dotdot) = self.dot_inos(&d, parent);
        let mut sent = offset;
        for i in offset..total {
            let full = match i {
                0 => reply.add(INodeNo(dot), 1, FileType::Directory, "."),
                1 => reply.add(INodeNo(dotdot), 2, FileType::Directory, ".."),
                _ => {
                    let e = &entries[(i - 2) as usize];
                    reply.add(
                        INodeNo(self.table.st_ino_of(e.ino)),
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
        self.prefetch_listed(&d, entries, offset, sent);
    }

    /// Entries listed without attributes (offsets `offset..sent`) are usually stat'ed next:
    /// resolve them ahead.
    fn prefetch_listed(&self, d: &OpenDir, entries: Arc<Vec<DirEntry>>, offset: u64, sent: u64) {
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

    /// READDIRPLUS from `offset`; without `attrs`, the entries carry names only (node id 0,
    /// no lookup reference) and are prefetched as after a plain READDIR.
    pub(super) fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        attrs: bool,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (d, entries, parent) = match self.listing(fh, offset) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let total = entries.len() as u64 + 2;
        let (dot, dotdot) = if offset < 2 {
            self.dot_inos(&d, parent)
        } else {
            (0, 0)
        };
        let mut sent = offset;
        for i in offset..total {
            if i < 2 {
                // "." and "..": the kernel takes no lookup reference for them.
                let (id, st_ino, name) = if i == 0 {
                    (d.nodeid, dot, ".")
                } else {
                    (parent, dotdot, "..")
                };
                let mut attr = negative_attr();
                attr.ino = INodeNo(st_ino);
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
            if !attrs {
                let mut attr = negative_attr();
                attr.ino = INodeNo(self.table.st_ino_of(e.ino));
                attr.kind = file_type(e.kind);
                if reply.add(
                    INodeNo(0),
                    i + 1,
                    &e.name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                sent = i + 1;
                continue;
            }
            // One `lstat` when the lookup resolves the name (the attributes come with it).
            let Ok((node, a)) = self.ovl.lookup_attr(&d.node, &e.name) else {
                continue; // removed since the snapshot
            };
            let entry_ttl = self.entry_ttl(&node);
            // Count the lookup first; undo it if the entry does not fit.
            let Some((id, generation)) = self.remember(node, d.nodeid) else {
                continue; // removed since the lookup
            };
            let attr = self.to_attr(id, &a);
            if reply.add(
                INodeNo(id),
                i + 1,
                &e.name,
                &entry_ttl,
                &attr,
                Generation(generation),
            ) {
                self.table.forget(id, 1);
                break;
            }
        }
        reply.ok();
        if !attrs {
            self.plus_policy.listed_without_attrs(d.nodeid);
            self.prefetch_listed(&d, entries, offset, sent);
        }
    }

    pub(super) fn releasedir(&self, fh: u64, reply: ReplyEmpty) {
        self.dirs.remove(fh);
        reply.ok()
    }

    pub(super) fn fsyncdir(&self, fh: u64, datasync: bool, reply: ReplyEmpty) {
        let Some(d) = self.dirs.get(fh) else {
            return reply.error(Errno::EBADF);
        };
        match self.ovl.fsync_dir(&d.node, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsyncdir", &e)),
        }
    }
}
