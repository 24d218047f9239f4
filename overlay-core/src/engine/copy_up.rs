//! Copy-up: bring a lower object (and its parents) into the upper layer.
//!
//! The copy is built under a fresh name in `workdir/work`, complete with data, xattrs,
//! owner, mode and times, fsync'ed (copied file data unless volatile, as the kernel's
//! `fsync=ordered`; every staged file and directory with [`FsyncMode::Strict`]), and then
//! renamed into place with
//! `RENAME_NOREPLACE`: the upper name never shows a partial object, even if the process dies
//! mid-copy (stale staging files are removed by the next [`Overlay::new`]).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;

use rustix::fs::{
    FileType, Mode, OFlags, RenameFlags as RxRename, SeekFrom, Stat, Timespec, Timestamps,
    XattrFlags,
};
use rustix::io::Errno;

use super::layers::{remove_tree_at, LayerRef};
use super::real::RealObj;
use super::{FileKind, FsyncMode, NodeRef, Overlay};
use crate::error::Result;

const DEFAULT_CHUNK: usize = 8 << 20;
/// Files up to this size are copied without looking for holes.
const SMALL_FILE: u64 = 64 << 10;

pub(crate) fn stat_times(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Removes a staging entry on early return.
struct StagingGuard<'a> {
    work: BorrowedFd<'a>,
    name: Option<OsString>,
}

impl Drop for StagingGuard<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.name.take() {
            let _ = remove_tree_at(self.work, &n);
        }
    }
}

impl Overlay {
    /// Copy `node` (and its parents) up; `with_data` false skips the data (for `O_TRUNC`).
    ///
    /// The ancestors not yet in upper are collected on the heap and copied up from the top
    /// down (as the kernel does), so a node at any depth costs no stack.
    pub(crate) fn copy_up_node(&self, node: &NodeRef, with_data: bool) -> Result<()> {
        self.copy_up_chain(node, with_data, false)
    }

    /// Copy `node` up for a change of its metadata only (attributes, xattrs, a hard link, a
    /// rename): with `metacopy=on` a regular file gets a metadata-only copy, as the kernel's
    /// `ovl_copy_up` (no open flags); anything else a full one.
    pub(crate) fn copy_up_meta(&self, node: &NodeRef) -> Result<()> {
        let meta_only = self.opts.metacopy && node.kind == FileKind::File;
        self.copy_up_chain(node, true, meta_only)
    }

    /// True when `node` is a metadata-only copy now. Another name of the same upper inode
    /// (a hard link) may have had the data copied up since this node learnt it: the upper
    /// file's `overlay.metacopy` decides.
    pub(crate) fn metacopy_now(&self, node: &NodeRef) -> bool {
        let (metacopy, upper) = {
            let st = node.state.read();
            (st.metacopy, st.upper || st.indexed)
        };
        if !metacopy {
            return false;
        }
        if !upper {
            return true;
        }
        let present = self.real(node, LayerRef::Upper).is_ok_and(|r| {
            matches!(
                r.getxattr(OsStr::new(self.layers.ns.metacopy())),
                Ok(_) | Err(Errno::RANGE)
            )
        });
        if !present {
            node.state.write().metacopy = false;
        }
        present
    }

    fn copy_up_chain(&self, node: &NodeRef, with_data: bool, meta_only: bool) -> Result<()> {
        // (No state guard may be alive while `metacopy_now` runs: it may take the write lock.)
        let upper = node.state.read().upper;
        let metacopy = self.metacopy_now(node);
        if upper {
            if metacopy && !meta_only {
                return self.copy_up_data_in_place(node, with_data);
            }
            return Ok(());
        }
        self.check_writable("copy-up", || node.rel_path())?;
        // Nearest first.
        let mut ancestors: Vec<NodeRef> = Vec::new();
        let mut cur = node.parent_name().map(|(p, _)| p);
        while let Some(p) = cur {
            if p.state.read().upper {
                break;
            }
            cur = p.parent_name().map(|(pp, _)| pp);
            ancestors.push(p);
        }
        for a in ancestors.iter().rev() {
            self.copy_up_one(a, true, false)?;
        }
        self.copy_up_one(node, with_data, meta_only)?;
        // A name linked to a metadata-only index entry (index=on) gets the data now.
        if !meta_only && self.metacopy_now(node) {
            return self.copy_up_data_in_place(node, with_data);
        }
        Ok(())
    }

    /// The data of a metadata-only copy follows (the kernel's
    /// `ovl_copy_up_meta_inode_data`): copied from the lower file into the upper one in
    /// place (`with_data` false: an `O_TRUNC` open, nothing to copy; its modification time
    /// changes, as the kernel's), then `overlay.metacopy` is removed.
    fn copy_up_data_in_place(&self, node: &NodeRef, with_data: bool) -> Result<()> {
        let _g = node.copy_lock.lock();
        if !self.metacopy_now(node) {
            return Ok(());
        }
        if node.is_unlinked() {
            return Err(self.node_err("copy-up", node, Errno::NOENT));
        }
        let err = |e: Errno| self.node_err("copy-up", node, e);
        let upper = self.real(node, LayerRef::Upper).map_err(err)?;
        let (ufd, _) = self.open_real("copy-up", node, &upper, OFlags::WRONLY)?;
        if with_data {
            self.copy_data_of(node, &ufd)?;
            if self.opts.fsync != FsyncMode::Volatile {
                rustix::fs::fsync(&ufd).map_err(err)?;
            }
        }
        match upper.removexattr(OsStr::new(self.layers.ns.metacopy())) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(err(e)),
        }
        node.state.write().metacopy = false;
        Ok(())
    }

    /// Copy the data of metadata-only `node` (from the lower file below it) into `dst`.
    fn copy_data_of(&self, node: &NodeRef, dst: &OwnedFd) -> Result<()> {
        let data = self.data_real("copy-up", node)?;
        let layer = match data.layer {
            LayerRef::Lower(i) => i,
            LayerRef::Upper => 0,
        };
        let (src, st) = self.open_real("copy-up", node, &data, OFlags::RDONLY)?;
        self.copy_data(layer, &src, dst, st.st_size as u64)
            .map_err(|e| self.node_err("copy-up", node, e))
    }

    /// Copy `node` up, its parent being in upper already; `meta_only`: a regular file's
    /// metadata only (`overlay.metacopy`, the data stays below).
    fn copy_up_one(&self, node: &NodeRef, with_data: bool, meta_only: bool) -> Result<()> {
        let _g = node.copy_lock.lock();
        if node.state.read().upper {
            return Ok(());
        }
        if node.is_unlinked() {
            return Err(self.node_err("copy-up", node, Errno::NOENT));
        }
        // Re-read the location under the copy lock: renames take this lock.
        let Some((parent, name)) = node.parent_name() else {
            return Ok(());
        };
        let err = |e: Errno| self.node_err("copy-up", node, e);
        let pdir = self.dir_fd(&parent, LayerRef::Upper).map_err(err)?;
        let pstat = rustix::fs::fstat(&*pdir).ok();
        // index=on: a name of a lower file with several names whose index entry exists is
        // linked to it (the kernel's `ovl_link_up`); the first one makes the entry below.
        self.refresh_index(node);
        let (index, indexed) = {
            let st = node.state.read();
            (st.index.clone(), st.indexed)
        };
        if let (Some(info), true) = (&index, indexed) {
            return self.link_up(node, info, &parent, name.as_os_str(), &pdir, pstat.as_ref());
        }
        let lower = self.top_real("copy-up", node)?;
        let lower_layer = match lower.layer {
            LayerRef::Lower(i) => i,
            LayerRef::Upper => 0,
        };
        // A file or directory is copied from an fd, opened non-blocking and checked to be
        // what the node says (see `open_real`); its stat is that fd's. Other kinds are
        // copied by name, after a check of their type.
        let (mut src_fd, st) = match node.kind {
            FileKind::File | FileKind::Directory => {
                let (fd, st) = self.open_real("copy-up", node, &lower, OFlags::RDONLY)?;
                (Some(fd), st)
            }
            _ => {
                let st = lower.stat().map_err(err)?;
                self.check_kind("copy-up", node, &st)?;
                (None, st)
            }
        };
        // As the kernel: `overlay.origin` for a directory, a single-link object, or the
        // index entry of one with several names (without the index their link breaks).
        let with_origin = node.kind == FileKind::Directory || st.st_nlink <= 1 || index.is_some();
        let work = self.layers.work();
        let tmp = self.layers.staging_name();
        let mut guard = StagingGuard {
            work,
            name: Some(tmp.clone()),
        };
        let sync = self.opts.fsync != FsyncMode::Volatile;
        // Metadata goes through fds where there are some (f* calls: no path lookups).
        let staged = match node.kind {
            FileKind::Directory => {
                rustix::fs::mkdirat(work, &*tmp, Mode::from_raw_mode(0o700)).map_err(err)?;
                let fd = rustix::fs::openat(
                    work,
                    &*tmp,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(err)?;
                let staged = RealObj::of_fd(LayerRef::Upper, fd);
                let src = RealObj::of_fd(lower.layer, src_fd.take().expect("opened above"));
                self.copy_meta(&lower, &src, &staged, &st, with_origin)
                    .map_err(err)?;
                // A directory carries no data: as the kernel, `Ordered` syncs only copied-up
                // file data (the upper filesystem's journal orders the metadata before the
                // rename); `Strict` syncs the directory too.
                if self.opts.fsync == FsyncMode::Strict {
                    rustix::fs::fsync(&*staged.dir).map_err(err)?;
                }
                staged
            }
            FileKind::File => {
                let src = src_fd.take().expect("opened above");
                let dst = rustix::fs::openat(
                    work,
                    &*tmp,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(err)?;
                let lower_metacopy = node.state.read().metacopy;
                if meta_only {
                    // The size without the data (a sparse file), as the kernel's.
                    rustix::fs::ftruncate(&dst, st.st_size as u64).map_err(err)?;
                } else if with_data && lower_metacopy {
                    // A metadata-only lower file: the data comes from the one below it.
                    self.copy_data_of(node, &dst)?;
                } else if with_data {
                    self.copy_data(lower_layer, &src, &dst, st.st_size as u64)
                        .map_err(err)?;
                }
                let src = RealObj::of_fd(lower.layer, src);
                let staged = RealObj::of_fd(LayerRef::Upper, dst);
                self.copy_meta(&lower, &src, &staged, &st, with_origin)
                    .map_err(err)?;
                if meta_only {
                    staged
                        .setxattr(
                            OsStr::new(self.layers.ns.metacopy()),
                            b"",
                            XattrFlags::empty(),
                        )
                        .map_err(err)?;
                }
                // As the kernel's `fsync=ordered`: only copied data is synced (a metadata-only
                // copy or an empty file has none; the upper's journal orders its metadata
                // before the rename). `Strict` syncs every staged file.
                let copied_data = with_data && !meta_only && st.st_size > 0;
                if self.opts.fsync == FsyncMode::Strict || (sync && copied_data) {
                    rustix::fs::fsync(&*staged.dir).map_err(err)?;
                }
                staged
            }
            kind => {
                if kind == FileKind::Symlink {
                    let target = lower.readlink().map_err(err)?;
                    rustix::fs::symlinkat(&*target, work, &*tmp).map_err(err)?;
                } else {
                    rustix::fs::mknodat(
                        work,
                        &*tmp,
                        FileType::from_raw_mode(st.st_mode),
                        Mode::from_raw_mode(0o600),
                        st.st_rdev,
                    )
                    .map_err(err)?;
                }
                let staged = RealObj {
                    layer: LayerRef::Upper,
                    dir: self.layers.work_arc(),
                    name: Some(tmp.clone()),
                };
                self.copy_meta(&lower, &lower, &staged, &st, with_origin)
                    .map_err(err)?;
                staged
            }
        };
        if let Some(info) = &index {
            drop(staged);
            if self.install_index(node, info, &tmp)? {
                guard.name = None;
            } else {
                // Another name's copy-up made the entry meanwhile: link to it.
                drop(guard);
            }
            node.state.write().indexed = true;
            return self.link_up(node, info, &parent, name.as_os_str(), &pdir, pstat.as_ref());
        }
        // A lower hard link is broken by the copy-up (no `index`): as the kernel, the name
        // then reports the upper inode's number (its origin has `st_nlink > 1`).
        let new_ino = if node.kind != FileKind::Directory && st.st_nlink > 1 {
            let up = staged.stat().map_err(err)?;
            Some(self.layers.map_ino(LayerRef::Upper, up.st_ino))
        } else {
            None
        };
        drop(staged);
        rustix::fs::renameat_with(work, &*tmp, &*pdir, name.as_os_str(), RxRename::NOREPLACE)
            .map_err(err)?;
        guard.name = None;
        if let Some(i) = new_ino {
            node.set_ino(i);
        }
        self.set_impure_node(&parent, pdir.as_fd());
        if let Some(ps) = pstat {
            // As the kernel: copy-up does not change the parent's times.
            let _ = rustix::fs::futimens(&*pdir, &stat_times(&ps));
        }
        if self.opts.fsync == FsyncMode::Strict {
            let _ = rustix::fs::fsync(&*pdir);
        }
        {
            let mut st = node.state.write();
            st.upper = true;
            st.metacopy = meta_only;
        }
        Ok(())
    }

    /// Copy xattrs (except private ones), owner, mode and times from `src` to `dst`;
    /// `origin` names the lower object (for `overlay.origin`, written when `with_origin`),
    /// `src` is the same object (possibly as an open fd).
    fn copy_meta(
        &self,
        origin: &RealObj,
        src: &RealObj,
        dst: &RealObj,
        st: &Stat,
        with_origin: bool,
    ) -> std::result::Result<(), Errno> {
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if with_origin {
            self.set_origin(origin, dst);
        }
        // The owner first: chown(2) drops `security.capability` and the set-ID bits (the
        // kernel's copy-up sets the owner without those kill flags), so the xattrs and
        // the mode go on after it.
        if !self.opts.copy_up_keeps_own_ids {
            dst.chown(Some(st.st_uid), Some(st.st_gid))?;
        }
        for name in src.listxattr().unwrap_or_default() {
            if self.layers.ns.is_private(&name) {
                continue;
            }
            let n = OsStr::from_bytes(&name);
            let v = match src.getxattr(n) {
                Ok(v) => v,
                Err(Errno::NODATA) => continue,
                Err(e) => return Err(e),
            };
            match dst.setxattr(n, &v, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::OPNOTSUPP) => {}
                Err(Errno::PERM) if is_link => {}
                Err(e) => return Err(e),
            }
        }
        if !is_link {
            copy_inode_flags(src, dst);
            dst.chmod(st.st_mode & 0o7777)?;
        }
        dst.utimes(&stat_times(st))?;
        Ok(())
    }

    /// Copy `size` bytes: FICLONE, else copy_file_range over data segments (holes kept),
    /// else read/write.
    fn copy_data(
        &self,
        layer: u16,
        src: &OwnedFd,
        dst: &OwnedFd,
        size: u64,
    ) -> std::result::Result<(), Errno> {
        if size == 0 {
            return Ok(());
        }
        let bit = 1u64 << layer.min(63);
        if self.layers.no_reflink.load(Ordering::Relaxed) & bit == 0 {
            match rustix::fs::ioctl_ficlone(dst, src) {
                Ok(()) => return Ok(()),
                // Not supported from this layer's filesystem: do not ask again.
                Err(Errno::OPNOTSUPP)
                | Err(Errno::XDEV)
                | Err(Errno::INVAL)
                | Err(Errno::NOTTY) => {
                    self.layers.no_reflink.fetch_or(bit, Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
        if size <= SMALL_FILE {
            // Small files: no hole search (two lseeks) and no final ftruncate.
            let mut off = 0u64;
            let mut ok = true;
            while off < size {
                let (mut i, mut o) = (off, off);
                match rustix::fs::copy_file_range(
                    src,
                    Some(&mut i),
                    dst,
                    Some(&mut o),
                    (size - off) as usize,
                ) {
                    Ok(0) => break,
                    Ok(n) => off += n as u64,
                    Err(_) if off == 0 => {
                        ok = false;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if ok {
                if off < size {
                    // The file shrank underneath us: keep the size stat() reported.
                    rustix::fs::ftruncate(dst, size)?;
                }
                return Ok(());
            }
        }
        let chunk = if self.opts.copy_chunk == 0 {
            DEFAULT_CHUNK
        } else {
            self.opts.copy_chunk
        };
        // A big copy that is fsync'ed at the end: read ahead harder, and start writing each
        // chunk out as soon as it is copied, so reading, copying and writing overlap instead
        // of the whole file waiting in the page cache for the final fsync (1 GiB on ext4
        // without reflink, cold cache: 0.79 s -> 0.65 s median, measured on this project's
        // benchmark VM). Both are hints: failures are ignored.
        let early_writeback = self.opts.fsync != FsyncMode::Volatile;
        if early_writeback {
            let _ = rustix::fs::fadvise(src, 0, None, rustix::fs::Advice::Sequential);
        }
        let mut pos: u64 = 0;
        let mut use_cfr = true;
        while pos < size {
            // Find the next data segment.
            let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(Errno::NXIO) => break, // only a hole remains
                Err(_) => pos,             // no SEEK_DATA support: treat as data
            };
            let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
                Ok(h) => h.min(size),
                Err(_) => size,
            };
            let mut off = data;
            while off < hole {
                let len = ((hole - off) as usize).min(chunk);
                let n = if use_cfr {
                    let mut i = off;
                    let mut o = off;
                    match rustix::fs::copy_file_range(src, Some(&mut i), dst, Some(&mut o), len) {
                        Ok(n) => n,
                        Err(Errno::XDEV)
                        | Err(Errno::NOSYS)
                        | Err(Errno::OPNOTSUPP)
                        | Err(Errno::INVAL) => {
                            use_cfr = false;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    copy_rw(src, dst, off, len)?
                };
                if n == 0 {
                    break; // file shrank underneath us
                }
                if early_writeback {
                    let _ = crate::sys::start_writeback(dst.as_fd(), off, n as u64);
                }
                off += n as u64;
            }
            pos = hole.max(off);
        }
        rustix::fs::ftruncate(dst, size)?;
        Ok(())
    }

    /// The upper directory fd of directory node `dir`, copying it up first.
    pub(crate) fn upper_dir_of(&self, dir: &NodeRef) -> Result<std::sync::Arc<OwnedFd>> {
        self.copy_up_node(dir, true)?;
        self.dir_fd(dir, LayerRef::Upper)
            .map_err(|e| self.node_err("open upper dir", dir, e))
    }
}

fn copy_rw(
    src: &OwnedFd,
    dst: &OwnedFd,
    off: u64,
    len: usize,
) -> std::result::Result<usize, Errno> {
    let mut buf = vec![0u8; len.min(1 << 20)];
    let n = rustix::io::pread(src, &mut buf, off)?;
    let mut w = 0;
    while w < n {
        w += rustix::io::pwrite(dst, &buf[w..n], off + w as u64)?;
    }
    Ok(n)
}

/// The inode flags copy-up carries over, as the kernel's (`OVL_COPY_FS_FLAGS_MASK`):
/// synchronous updates and no atime updates (`chattr +S`, `+A`). Best effort, as for the
/// kernel when a filesystem has no such flags; both objects are open fds (files and
/// directories).
fn copy_inode_flags(src: &RealObj, dst: &RealObj) {
    use rustix::fs::IFlags;
    let Ok(flags) = src.inode_flags() else {
        return;
    };
    let carried = flags & (IFlags::SYNC | IFlags::NOATIME);
    if carried.is_empty() {
        return;
    }
    if let Err(e) = dst
        .inode_flags()
        .and_then(|now| dst.set_inode_flags(now | carried))
    {
        tracing::debug!("copy-up: inode flags {carried:?} not set: {e}");
    }
}
