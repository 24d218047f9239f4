//! The kernel's inode index (`index=on`): hard links to lower files survive copy-up.
//!
//! On disk, as the kernel (6.18, observed byte for byte):
//! * `workdir/index/` (mode 0) holds one entry per copied-up lower file with several names,
//!   named by the hex of its origin file handle (the `overlay.origin` encoding, see
//!   [`super::origin`]). The first copy-up of any of its names makes the entry (a full copy,
//!   or a metadata-only one with `metacopy=on`, carrying `overlay.origin`), then links the
//!   name to it; a later copy-up of another name only links that name (the kernel's
//!   `ovl_link_up`). A name not copied up yet shows the indexed inode.
//! * `overlay.nlink` on the inode keeps the overlay's link count relative to the upper
//!   inode's (`U+1`: one more than the upper inode has) or, while a name is being linked,
//!   to the lower one's (`L+0`). It is written before every change of the names (the
//!   kernel's `ovl_nlink_start`); when the last name goes, the entry is removed.
//! * At open, the upper root's `overlay.origin` must name the top lower layer's root (set
//!   when absent, ESTALE when it names another), and `workdir/index`'s `overlay.upper` the
//!   upper root (a handle with the "upper" flag). The index directory is then the staging
//!   area too (as the kernel's workdir), and its `#` leftovers are removed.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;

use rustix::fs::{AtFlags, Stat, XattrFlags};
use rustix::io::Errno;

use super::layers::{ioerr, read_xattr, remove_tree_at, LayerRef, Layers};
use super::real::RealObj;
use super::{FileKind, Node, NodeRef, Overlay, OverlayOptions};
use crate::error::Result;

/// What the index knows of a lower file with several names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct IndexInfo {
    /// Its entry's name in `workdir/index`: the hex of its origin file handle.
    pub name: OsString,
    /// `st_nlink` of the lower object (lower layers do not change while mounted).
    pub lower_nlink: u32,
}

/// What the index knows of a lower file, and its entry's stat when it has one.
pub(crate) type IndexHit = (Arc<IndexInfo>, Option<Stat>);

/// The operation named when an index entry is a whiteout or of another kind than its
/// lower file (EIO, as the kernel's "bad index found").
const BAD_INDEX: &str = "lookup (a bad entry in workdir/index: a whiteout, or another kind of \
                         file than the lower file it indexes)";

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of a file handle: an index entry's name.
pub(crate) fn hex_name(fh: &[u8]) -> OsString {
    let mut s = Vec::with_capacity(fh.len() * 2);
    for b in fh {
        s.push(HEX[usize::from(b >> 4)]);
        s.push(HEX[usize::from(b & 0xf)]);
    }
    OsString::from_vec(s)
}

/// The file handle an index entry's name spells ([`hex_name`]'s inverse): `None` for any
/// name that is not lower-case hex digits in pairs. Bytes, never `str` slices: an entry's
/// name comes from the workdir and may be anything.
fn hex_decode(name: &[u8]) -> Option<Vec<u8>> {
    if name.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| HEX.iter().position(|&h| h == c).map(|v| v as u8);
    name.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Parse an `overlay.nlink` value: the base (`b'U'` upper, `b'L'` lower) and the difference.
fn parse_nlink(v: &[u8]) -> Option<(u8, i64)> {
    let (&base, rest) = v.split_first()?;
    if !matches!(base, b'U' | b'L') || !matches!(rest.first(), Some(b'+') | Some(b'-')) {
        return None;
    }
    let text = std::str::from_utf8(rest).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    Some((base, text.parse::<i64>().ok()?))
}

/// Why the index falls back to off for these layers (the kernel's warnings), if it does.
fn index_unsupported(layers: &Layers) -> Option<String> {
    let upper = &layers.upper.as_ref()?.root;
    if crate::sys::name_to_handle(upper.fd.as_fd(), OsStr::new(".")).is_err() {
        return Some(format!(
            "the upper layer's filesystem ({}) cannot make file handles",
            upper.path.display()
        ));
    }
    let normal = &layers.lowers[..layers.normal_lowers];
    for (i, l) in normal.iter().enumerate() {
        if crate::sys::name_to_handle(l.fd.as_fd(), OsStr::new(".")).is_err() {
            return Some(format!(
                "the filesystem of lower layer {} cannot make file handles",
                l.path.display()
            ));
        }
        // As the kernel's `ovl_lower_uuid_ok`: a lower file handle names its filesystem by
        // UUID, so two lower filesystems (not the upper's) must not share one.
        let clash = normal[..i]
            .iter()
            .any(|o| o.dev != l.dev && o.dev != upper.dev && o.uuid == l.uuid);
        if l.dev != upper.dev && clash {
            return Some(format!(
                "lower layer {} is on a filesystem whose UUID another lower filesystem has",
                l.path.display()
            ));
        }
    }
    None
}

/// Check (or, when absent, set) xattr `name` of directory `fd` to `want`: ESTALE when it
/// holds something else, as the kernel's `ovl_verify_origin_fh` / `ovl_verify_upper`.
fn verify_or_set(fd: BorrowedFd<'_>, name: &str, want: &[u8]) -> std::result::Result<(), Errno> {
    match read_xattr(|b| rustix::fs::fgetxattr(fd, name, b)) {
        Ok(v) if v == want => Ok(()),
        Ok(_) => Err(Errno::STALE),
        Err(Errno::NODATA) => rustix::fs::fsetxattr(fd, name, want, XattrFlags::empty()),
        Err(e) => Err(e),
    }
}

/// Set up the index of `layers` for `opts` (see the module docs): nothing unless
/// `opts.index` and an upper layer; with a warning and no index where the kernel falls
/// back to `index=off`.
pub(crate) fn open_index(layers: &mut Layers, opts: &OverlayOptions) -> Result<()> {
    if !opts.index || layers.upper.is_none() || layers.normal_lowers == 0 {
        return Ok(());
    }
    if let Some(why) = index_unsupported(layers) {
        tracing::warn!("{why}: falling back to index=off, as the kernel overlay does");
        return Ok(());
    }
    let ns = layers.ns;
    let upper = layers.upper.as_ref().expect("checked above");
    let root = &upper.root;
    let lower = &layers.lowers[0];
    let fh = |fd: BorrowedFd<'_>, uuid: &[u8; 16], upper: bool, path: &std::path::Path| {
        let (ty, h) = crate::sys::name_to_handle(fd, OsStr::new(".")).map_err(|e| {
            let e = Errno::from_io_error(&e).unwrap_or(Errno::IO);
            ioerr("encode a file handle (index=on)", path, e)
        })?;
        let v = if upper {
            super::origin::encode_upper(uuid, ty, &h)
        } else {
            super::origin::encode(uuid, ty, &h)
        };
        v.ok_or_else(|| {
            ioerr(
                "encode a file handle (index=on: too long)",
                path,
                Errno::OVERFLOW,
            )
        })
    };
    let lower_fh = fh(lower.fd.as_fd(), &lower.uuid, false, &lower.path)?;
    let upper_fh = fh(root.fd.as_fd(), &root.uuid, true, &root.path)?;
    verify_or_set(root.fd.as_fd(), ns.origin(), &lower_fh).map_err(|e| {
        ioerr(
            if e == Errno::STALE {
                "index=on: the upper root's overlay.origin names another lower layer than the \
                 top one (this upper layer was used over other lowers; mount it with \
                 index=off, or over its own lowers)"
            } else {
                "index=on: record the lower root as the upper root's overlay.origin"
            },
            &root.path,
            e,
        )
    })?;
    let index_path = upper.work_path.join("index");
    // Prepared as the kernel prepares it: mode 0 (0700 without CAP_DAC_OVERRIDE), no ACL.
    let index = super::layers::open_work_subdir(upper.workdir.as_fd(), "index", &index_path)?;
    verify_or_set(index.as_fd(), ns.upper(), &upper_fh).map_err(|e| {
        ioerr(
            if e == Errno::STALE {
                "index=on: the index directory's overlay.upper names another upper layer \
                 (remove the workdir's index/ or mount with index=off)"
            } else {
                "index=on: record the upper root as the index directory's overlay.upper"
            },
            &index_path,
            e,
        )
    })?;
    // Leftovers of a kernel mount's or a crashed copy-up ('#' temporary names), as the
    // kernel's `ovl_indexdir_cleanup`.
    let names = super::layers::list_dir_names(&index)
        .map_err(|e| ioerr("index=on: list the index directory", &index_path, e))?;
    for n in names {
        if n.as_encoded_bytes().first() == Some(&b'#') {
            remove_tree_at(index.as_fd(), &n).map_err(|e| {
                ioerr(
                    "index=on: clean the index directory",
                    index_path.join(&n),
                    e,
                )
            })?;
        }
    }
    // As the kernel: the index directory is the staging area too (copy-ups are built and
    // whiteouts shared there), so an index entry is made by a rename within it.
    let index = Arc::new(index);
    let upper = layers.upper.as_mut().expect("checked above");
    upper.work = index.clone();
    upper.index = Some(index);
    Ok(())
}

impl Overlay {
    /// The index directory, when the index is on.
    pub(crate) fn index_dir(&self) -> Option<&Arc<OwnedFd>> {
        self.layers.upper.as_ref()?.index.as_ref()
    }

    /// The kernel's mount-time `ovl_indexdir_cleanup` for non-directory entries: an entry
    /// whose `overlay.origin` is not its name, or names no lower file, is stale; one left
    /// with no name through the overlay (a single link and an overlay link count of 0, as
    /// after a crash between the removal of its last name and its own) is an orphan: both
    /// are removed. Anything else the kernel would refuse to mount over is left alone with
    /// a warning (directories and whiteouts belong to `nfs_export`, kept).
    pub(crate) fn cleanup_index(&self) {
        let Some(index) = self.index_dir() else {
            return;
        };
        // Lower files are found by handle (open_by_handle_at): without the privilege to,
        // nothing can be told stale.
        let can_open_handles = rustix::thread::capabilities(None).is_ok_and(|c| {
            c.effective
                .contains(rustix::thread::CapabilitySet::DAC_READ_SEARCH)
        });
        if !can_open_handles {
            return;
        }
        let names = match super::layers::list_dir_names(index) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("index: cannot list workdir/index: {e}");
                return;
            }
        };
        for name in names {
            let bytes = name.as_encoded_bytes();
            if bytes.first() == Some(&b'#') {
                continue;
            }
            let Ok(st) = rustix::fs::statat(index.as_fd(), &name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            let kind = FileKind::from_mode(st.st_mode);
            if kind == FileKind::Directory
                || crate::format::is_whiteout_stat(st.st_mode, st.st_rdev)
            {
                continue;
            }
            let fh = hex_decode(bytes).filter(|fh| super::origin::decode(fh).is_some());
            let Some(fh) = fh else {
                tracing::warn!("index: {name:?} in workdir/index is not an index entry; left");
                continue;
            };
            let real = RealObj {
                layer: LayerRef::Upper,
                dir: index.clone(),
                name: Some(name.clone()),
            };
            let remove = match real.getxattr(OsStr::new(self.layers.ns.origin())) {
                Ok(v) if v != fh => Some("stale (its origin is not its name)"),
                Ok(_) => match self.origin_lower(&fh) {
                    None => Some("stale (its lower file is gone)"),
                    Some(_) if st.st_nlink != 1 => None,
                    Some((_, lst)) => {
                        let info = IndexInfo {
                            name: name.clone(),
                            lower_nlink: lst.st_nlink as u32,
                        };
                        let orphan = info.lower_nlink <= 1 || {
                            let v = real.getxattr(OsStr::new(self.layers.ns.nlink()));
                            match v.ok().as_deref().and_then(parse_nlink) {
                                // The entry's one link is the upper inode's.
                                Some((b'U', d)) => d < 0,
                                Some((_, d)) => i64::from(info.lower_nlink).saturating_add(d) <= 0,
                                None => true,
                            }
                        };
                        orphan.then_some("an orphan (no name left through the overlay)")
                    }
                },
                Err(e) => {
                    tracing::warn!("index: {name:?} has no readable overlay.origin ({e}); left");
                    None
                }
            };
            if let Some(why) = remove {
                tracing::info!("index: removing {name:?}: {why}");
                if let Err(e) = rustix::fs::unlinkat(index.as_fd(), &name, AtFlags::empty()) {
                    tracing::warn!("index: remove {name:?}: {e}");
                }
            }
        }
    }

    /// The index entry of `info` as a real object (the upper inode of its names).
    pub(crate) fn index_real(&self, info: &IndexInfo) -> std::result::Result<RealObj, Errno> {
        let dir = self.index_dir().ok_or(Errno::NOENT)?.clone();
        Ok(RealObj {
            layer: LayerRef::Upper,
            dir,
            name: Some(info.name.clone()),
        })
    }

    /// With the index on: what it knows of lower non-directory `name` in `dir` (lower layer
    /// `layer`, stat `st`) when it has several names, and its entry's stat when one exists
    /// (the kernel's `ovl_lookup_index`). The error names the operation.
    pub(crate) fn index_lookup(
        &self,
        layer: u16,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
    ) -> std::result::Result<Option<IndexHit>, (&'static str, Errno)> {
        let Some(index) = self.index_dir() else {
            return Ok(None);
        };
        let kind = FileKind::from_mode(st.st_mode);
        if kind == FileKind::Directory || st.st_nlink <= 1 {
            return Ok(None);
        }
        let Ok((ty, h)) = crate::sys::name_to_handle(dir, name) else {
            return Ok(None);
        };
        let uuid = self.layers.lowers[layer as usize].uuid;
        let Some(fh) = super::origin::encode(&uuid, ty, &h) else {
            return Ok(None);
        };
        let info = Arc::new(IndexInfo {
            name: hex_name(&fh),
            lower_nlink: st.st_nlink as u32,
        });
        match rustix::fs::statat(index.as_fd(), &info.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(est) => {
                if crate::format::is_whiteout_stat(est.st_mode, est.st_rdev)
                    || FileKind::from_mode(est.st_mode) != kind
                {
                    return Err((BAD_INDEX, Errno::IO));
                }
                Ok(Some((info, Some(est))))
            }
            Err(Errno::NOENT) => Ok(Some((info, None))),
            Err(e) => Err(("lookup (workdir/index)", e)),
        }
    }

    /// A name whose lower file had no index entry when it was looked up: another name's
    /// copy-up may have made one since, and then this name shows it too (one inode, as the
    /// kernel's).
    pub(crate) fn refresh_index(&self, node: &Node) {
        let info = {
            let st = node.state.read();
            match &st.index {
                Some(i) if !st.indexed && !st.upper => i.clone(),
                _ => return,
            }
        };
        let Some(index) = self.index_dir() else {
            return;
        };
        let Ok(est) = rustix::fs::statat(index.as_fd(), &info.name, AtFlags::SYMLINK_NOFOLLOW)
        else {
            return;
        };
        if FileKind::from_mode(est.st_mode) != node.kind {
            return;
        }
        let metacopy = self.opts.metacopy && self.index_is_metacopy(&info);
        let mut st = node.state.write();
        st.indexed = true;
        st.metacopy = metacopy;
    }

    /// True for a name not copied up yet of an indexed inode (index=on): the inode has an
    /// upper copy (its index entry), the name has no upper link.
    pub(crate) fn is_index_alias(&self, node: &Node) -> bool {
        self.refresh_index(node);
        let st = node.state.read();
        st.indexed && !st.upper
    }

    /// True when the index entry of `info` is a metadata-only copy.
    fn index_is_metacopy(&self, info: &IndexInfo) -> bool {
        self.index_real(info).is_ok_and(|r| {
            matches!(
                r.getxattr(OsStr::new(self.layers.ns.metacopy())),
                Ok(_) | Err(Errno::RANGE)
            )
        })
    }

    /// The overlay link count of indexed inode `info` whose upper inode has `upper_nlink`
    /// links, as the kernel's `ovl_get_nlink`: from `overlay.nlink`, relative to the upper
    /// or the lower inode's count; the upper inode's own count when that is missing or
    /// malformed.
    pub(crate) fn indexed_nlink(&self, info: &IndexInfo, upper_nlink: u64) -> u32 {
        let fallback = upper_nlink as u32;
        if info.lower_nlink <= 1 {
            return fallback;
        }
        let Ok(real) = self.index_real(info) else {
            return fallback;
        };
        let Ok(v) = real.getxattr(OsStr::new(self.layers.ns.nlink())) else {
            return fallback;
        };
        let Some((base, diff)) = parse_nlink(&v) else {
            return fallback;
        };
        let base = if base == b'U' {
            i64::try_from(upper_nlink).unwrap_or(i64::MAX)
        } else {
            i64::from(info.lower_nlink)
        };
        // The value comes from the layer: out-of-range sums fall back, never wrap.
        base.checked_add(diff)
            .filter(|&n| n > 0)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(fallback)
    }

    /// Write `overlay.nlink` on the indexed inode: `overlay` relative to the upper inode's
    /// count `base` (`U`) or to the lower one's (`L`), as the kernel's `"U%+i"`/`"L%+i"`.
    fn set_nlink_xattr(
        &self,
        info: &IndexInfo,
        upper_base: bool,
        overlay: i64,
        base: i64,
    ) -> std::result::Result<(), Errno> {
        let v = format!("{}{:+}", if upper_base { 'U' } else { 'L' }, overlay - base);
        self.index_real(info)?.setxattr(
            OsStr::new(self.layers.ns.nlink()),
            v.as_bytes(),
            XattrFlags::empty(),
        )
    }

    /// The lock serialising the link count changes of indexed inodes, for an indexed
    /// `node` (see `Overlay::index_lock`).
    pub(crate) fn index_guard(&self, node: &Node) -> Option<parking_lot::MutexGuard<'_, ()>> {
        node.is_indexed_link().then(|| self.index_lock.lock())
    }

    /// The kernel's `ovl_link_up`: give `node`'s name (`name` in upper directory `pdir` of
    /// `parent`, whose times `pstat` are kept) a hard link to its index entry. The caller
    /// holds the node's copy lock.
    pub(crate) fn link_up(
        &self,
        node: &NodeRef,
        info: &IndexInfo,
        parent: &NodeRef,
        name: &OsStr,
        pdir: &OwnedFd,
        pstat: Option<&Stat>,
    ) -> Result<()> {
        let err = |e: Errno| self.node_err("copy-up (link to the index)", node, e);
        let index = self.index_dir().ok_or_else(|| err(Errno::NOENT))?;
        let _g = self.index_lock.lock();
        let st = self.index_real(info).and_then(|r| r.stat()).map_err(err)?;
        self.check_kind("copy-up", node, &st)?;
        let overlay = self.indexed_nlink(info, st.st_nlink) as i64;
        self.set_impure_node(parent, pdir.as_fd());
        self.set_nlink_xattr(info, false, overlay, info.lower_nlink as i64)
            .map_err(err)?;
        rustix::fs::linkat(index.as_fd(), &info.name, pdir, name, AtFlags::empty()).map_err(err)?;
        if let Some(ps) = pstat {
            // As the kernel: the parent's times stay.
            let _ = rustix::fs::futimens(pdir, &super::copy_up::stat_times(ps));
        }
        self.set_nlink_xattr(info, true, overlay, st.st_nlink as i64 + 1)
            .map_err(err)?;
        if self.opts.fsync == super::FsyncMode::Strict {
            let _ = rustix::fs::fsync(pdir);
        }
        let metacopy = self.opts.metacopy && self.index_is_metacopy(info);
        let mut s = node.state.write();
        s.upper = true;
        s.indexed = true;
        s.metacopy = metacopy;
        Ok(())
    }

    /// Move a staged copy (`tmp` in the workdir) of `node`'s lower file to its index entry
    /// and record the overlay link count (the lower one's). `false` when another name's
    /// copy-up made the entry meanwhile (the staged copy is then not used).
    pub(crate) fn install_index(
        &self,
        node: &NodeRef,
        info: &IndexInfo,
        tmp: &OsStr,
    ) -> Result<bool> {
        let err = |e: Errno| self.node_err("copy-up (to the index)", node, e);
        let index = self.index_dir().ok_or_else(|| err(Errno::NOENT))?;
        // The entry appears with its link count (the lower file's, relative to the one link
        // of the staged copy: what the kernel writes just after): a lookup or link-up of
        // another name must never see the entry without it.
        let staged = RealObj {
            layer: LayerRef::Upper,
            dir: self.layers.work_arc(),
            name: Some(tmp.to_os_string()),
        };
        staged
            .setxattr(
                OsStr::new(self.layers.ns.nlink()),
                format!("U{:+}", info.lower_nlink as i64 - 1).as_bytes(),
                XattrFlags::empty(),
            )
            .map_err(err)?;
        let _g = self.index_lock.lock();
        match rustix::fs::renameat_with(
            self.layers.work(),
            tmp,
            index.as_fd(),
            &info.name,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Ok(false),
            Err(e) => return Err(err(e)),
        }
        Ok(true)
    }

    /// The first half of the kernel's `ovl_nlink_start`, before a name of `node` goes
    /// (unlink, rename over it): a name of a hard-linked lower file is copied up first (with
    /// `metacopy=on` its metadata only, as the kernel's), so that the index entry exists
    /// to count its names. Call without the node's copy lock; [`Overlay::nlink_start`]
    /// follows with it held.
    pub(crate) fn nlink_copy_up(&self, node: &NodeRef) -> Result<()> {
        if node.kind == FileKind::Directory || !node.is_indexed_link() {
            return Ok(());
        }
        if !node.state.read().upper {
            self.copy_up_meta(node)?;
        }
        Ok(())
    }

    /// The second half of `ovl_nlink_start` (see [`Overlay::nlink_copy_up`]), with the
    /// node's copy lock and [`Overlay::index_guard`] held: record the overlay link count
    /// relative to the upper inode. Returns the count for [`Overlay::nlink_end`]; `None` for
    /// anything not indexed.
    pub(crate) fn nlink_start(&self, node: &NodeRef) -> Result<Option<u32>> {
        let info = {
            let st = node.state.read();
            match &st.index {
                Some(i) if st.indexed && node.kind != FileKind::Directory => i.clone(),
                _ => return Ok(None),
            }
        };
        let err = |e: Errno| self.node_err("record the link count (overlay.nlink)", node, e);
        let st = self.index_real(&info).and_then(|r| r.stat()).map_err(err)?;
        let overlay = self.indexed_nlink(&info, st.st_nlink);
        self.set_nlink_xattr(&info, true, overlay as i64, st.st_nlink as i64)
            .map_err(err)?;
        Ok(Some(overlay))
    }

    /// The kernel's `ovl_nlink_end` after a name of `node` went (`before`: the overlay link
    /// count [`Overlay::nlink_start`] saw): when that was the last name, the index entry
    /// goes too. An entry with other links left (a lower hard link added while mounted)
    /// stays, its count set from them, as the kernel's "cleanup linked index".
    pub(crate) fn nlink_end(&self, node: &NodeRef, before: Option<u32>) {
        if before != Some(1) {
            return;
        }
        let Some(info) = node.state.read().index.clone() else {
            return;
        };
        let (Some(index), Ok(real)) = (self.index_dir(), self.index_real(&info)) else {
            return;
        };
        match real.stat() {
            Ok(st) if st.st_nlink == 1 => {
                if let Err(e) = rustix::fs::unlinkat(index.as_fd(), &info.name, AtFlags::empty()) {
                    tracing::warn!(
                        "index: remove the entry of {}: {e}",
                        node.rel_path().display()
                    );
                }
            }
            Ok(st) => {
                tracing::warn!(
                    "index: the entry of {} has {} links left after its last name went",
                    node.rel_path().display(),
                    st.st_nlink
                );
                let _ =
                    self.set_nlink_xattr(&info, true, st.st_nlink as i64 - 1, st.st_nlink as i64);
            }
            Err(_) => {}
        }
    }

    /// For upper object `name` in `dir` carrying `overlay.origin` of a lower file with
    /// several names: its index entry, when that is this very inode (the kernel's verified
    /// index, `OVL_INDEX`). `fh` is the origin xattr's value, `lower_nlink` the lower file's
    /// link count.
    pub(crate) fn verified_index(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        fh: &[u8],
        lower_nlink: u32,
    ) -> Option<Arc<IndexInfo>> {
        let index = self.index_dir()?;
        let info = IndexInfo {
            name: hex_name(fh),
            lower_nlink,
        };
        let est = rustix::fs::statat(index.as_fd(), &info.name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let ust = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        (est.st_dev == ust.st_dev && est.st_ino == ust.st_ino).then(|| Arc::new(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nlink_values_as_the_kernel_writes_them() {
        assert_eq!(parse_nlink(b"U+1"), Some((b'U', 1)));
        assert_eq!(parse_nlink(b"U+0"), Some((b'U', 0)));
        assert_eq!(parse_nlink(b"L-2"), Some((b'L', -2)));
        assert_eq!(parse_nlink(b"X+1"), None);
        assert_eq!(parse_nlink(b"U1"), None);
        assert_eq!(parse_nlink(b""), None);
        assert_eq!(format!("U{:+}", 0), "U+0");
        assert_eq!(format!("L{:+}", -1), "L-1");
    }

    #[test]
    fn index_names_are_lower_hex() {
        assert_eq!(
            hex_name(&[0x00, 0xfb, 0x1d, 0xab]),
            OsString::from("00fb1dab")
        );
        let fh = [0x00, 0xfb, 0x1d, 0xab, 0xff];
        assert_eq!(
            hex_decode(hex_name(&fh).as_encoded_bytes()).as_deref(),
            Some(&fh[..])
        );
        // Names a hostile workdir may hold: never a panic, never a handle.
        for bad in ["aéb", "+f", "0", "ZZ", "00FB", "é0"] {
            assert_eq!(hex_decode(bad.as_bytes()), None, "{bad}");
        }
    }
}
