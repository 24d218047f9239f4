//! Lookup: the top-down walk through the layers for one name.

use std::ffi::OsStr;
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, Stat};
use rustix::io::Errno;

use super::layers::LayerRef;
use super::node::{LowerEntry, NodeState};
use super::{FileKind, NodeRef, Overlay};
use crate::error::Result;
use crate::format::{self, Opacity};

/// What a lookup found.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// `lstat` of the topmost real object (what `getattr` reports).
    pub stat: Option<Stat>,
    pub kind: FileKind,
    pub ino: u64,
    pub state: NodeState,
}

/// One layer's answer for a name.
pub(crate) enum LayerHit {
    Absent,
    Whiteout,
    Found(Stat),
}

/// The operation named in the error for a redirected directory (see
/// [`Overlay::has_redirect`]).
const REDIRECT_REFUSED: &str =
    "lookup (a directory renamed by a kernel mount with redirect_dir=on: its lower part lives \
     under another name; redirects are not followed, as with the kernel's redirect_dir=nofollow)";

/// True when the object `fd` carries xattr `name` (its value is not read).
fn xattr_present(fd: std::os::fd::BorrowedFd<'_>, name: &str) -> bool {
    matches!(
        rustix::fs::fgetxattr(fd, name, &mut [0u8; 0][..]),
        Ok(_) | Err(Errno::RANGE)
    )
}

/// The operation named in the error for a metacopy file (see [`Overlay::is_metacopy`]).
const METACOPY_REFUSED: &str =
    "lookup (a metacopy file: its data lives in a lower layer; metacopy is not supported, \
     as with the kernel's metacopy=off)";

impl Overlay {
    /// Classify `name` in directory `dir` of a lower layer whose directory is xwhiteout-capable
    /// when `xwh`.
    pub(crate) fn lower_hit(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        xwh: bool,
    ) -> std::result::Result<LayerHit, Errno> {
        if format::is_aufs_metadata_name(name) {
            return Ok(LayerHit::Absent);
        }
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                if format::is_whiteout_stat(st.st_mode, st.st_rdev)
                    || (xwh && self.is_xwhiteout(dir, name, &st))
                {
                    Ok(LayerHit::Whiteout)
                } else {
                    Ok(LayerHit::Found(st))
                }
            }
            Err(Errno::NOENT) => {
                let wh = format::aufs_whiteout_name(name);
                match rustix::fs::statat(dir, &wh, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(_) => Ok(LayerHit::Whiteout),
                    Err(Errno::NOENT) | Err(Errno::NAMETOOLONG) => Ok(LayerHit::Absent),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// An xwhiteout: a zero-size regular file carrying `overlay.whiteout`.
    pub(crate) fn is_xwhiteout(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
    ) -> bool {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size != 0 {
            return false;
        }
        let p = super::layers::proc_path(dir, name);
        let xname = self.layers.ns.whiteout();
        matches!(
            rustix::fs::lgetxattr(&p, xname, &mut [0u8; 64][..]),
            Ok(_) | Err(Errno::RANGE)
        )
    }

    /// Resolve `name` in directory `parent` through the layers.
    pub(crate) fn resolve(&self, parent: &NodeRef, name: &OsStr) -> Result<Option<Resolved>> {
        let pstate = parent.state.read().clone();
        let err = |e: Errno| self.name_err("lookup", parent, name, e);
        let mut state = NodeState::default();
        let mut kind: Option<FileKind> = None;
        let mut ino: Option<u64> = None;
        let mut merge_lowers = true;
        let mut top_stat: Option<Stat> = None;

        if pstate.upper {
            let dir = match self.dir_fd(parent, LayerRef::Upper) {
                Ok(d) => Some(d),
                // EXDEV: a mount point, empty without a detached layer mount.
                Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::XDEV) => None,
                Err(e) => return Err(err(e)),
            };
            if let Some(dir) = dir {
                match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => {
                        if format::is_whiteout_stat(st.st_mode, st.st_rdev) {
                            return Ok(None);
                        }
                        let k = FileKind::from_mode(st.st_mode);
                        if self.is_metacopy(dir.as_fd(), name, &st) {
                            return Err(self.name_err(METACOPY_REFUSED, parent, name, Errno::PERM));
                        }
                        top_stat = Some(st);
                        state.upper = true;
                        kind = Some(k);
                        if k != FileKind::Directory {
                            merge_lowers = false;
                            let origin = self.origin_ino_of(dir.as_fd(), name);
                            ino = Some(origin.unwrap_or_else(|| {
                                self.layers.map_ino(LayerRef::Upper, st.st_ino)
                            }));
                        } else {
                            if self.has_redirect(dir.as_fd(), name) {
                                return Err(self.name_err(
                                    REDIRECT_REFUSED,
                                    parent,
                                    name,
                                    Errno::PERM,
                                ));
                            }
                            merge_lowers = !self.upper_dir_opaque(dir.as_fd(), name);
                            ino = Some(
                                self.layers
                                    .covered_mount_point(LayerRef::Upper, dir.as_fd(), name)
                                    .unwrap_or_else(|| {
                                        self.layers.map_ino(LayerRef::Upper, st.st_ino)
                                    }),
                            );
                        }
                    }
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(err(e)),
                }
            }
        }

        if merge_lowers {
            let mut first_lower_ino: Option<u64> = None;
            for le in &pstate.lowers {
                let layer = LayerRef::Lower(le.layer);
                let dir = match self.dir_fd(parent, layer) {
                    Ok(d) => d,
                    Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::XDEV) => continue,
                    Err(e) => return Err(err(e)),
                };
                match self
                    .lower_hit(dir.as_fd(), name, le.xwhiteouts)
                    .map_err(err)?
                {
                    LayerHit::Absent => continue,
                    LayerHit::Whiteout => break,
                    LayerHit::Found(st) => {
                        let k = FileKind::from_mode(st.st_mode);
                        if kind.is_none() && self.is_metacopy(dir.as_fd(), name, &st) {
                            return Err(self.name_err(METACOPY_REFUSED, parent, name, Errno::PERM));
                        }
                        if top_stat.is_none() {
                            top_stat = Some(st);
                        }
                        match kind {
                            Some(FileKind::Directory) if k != FileKind::Directory => break,
                            Some(FileKind::Directory) | None if k == FileKind::Directory => {
                                kind = Some(k);
                                let covered =
                                    self.layers.covered_mount_point(layer, dir.as_fd(), name);
                                if first_lower_ino.is_none() {
                                    first_lower_ino =
                                        Some(covered.unwrap_or_else(|| {
                                            self.layers.map_ino(layer, st.st_ino)
                                        }));
                                }
                                let op = if covered.is_some() {
                                    // A mount point reads as an empty directory.
                                    Opacity::Transparent
                                } else {
                                    let sub = rustix::fs::openat(
                                        dir.as_fd(),
                                        name,
                                        rustix::fs::OFlags::RDONLY
                                            | rustix::fs::OFlags::DIRECTORY
                                            | rustix::fs::OFlags::NOFOLLOW
                                            | rustix::fs::OFlags::CLOEXEC,
                                        rustix::fs::Mode::empty(),
                                    )
                                    .map_err(err)?;
                                    if xattr_present(sub.as_fd(), self.layers.ns.redirect()) {
                                        return Err(self.name_err(
                                            REDIRECT_REFUSED,
                                            parent,
                                            name,
                                            Errno::PERM,
                                        ));
                                    }
                                    self.layers.lower_dir_opacity(sub.as_fd())
                                };
                                state.lowers.push(LowerEntry {
                                    layer: le.layer,
                                    xwhiteouts: op == Opacity::HasXWhiteouts,
                                });
                                if op == Opacity::Opaque
                                    || rustix::fs::statat(
                                        dir.as_fd(),
                                        format::aufs_whiteout_name(name),
                                        AtFlags::SYMLINK_NOFOLLOW,
                                    )
                                    .is_ok()
                                {
                                    break;
                                }
                            }
                            None => {
                                kind = Some(k);
                                state.lowers.push(LowerEntry {
                                    layer: le.layer,
                                    xwhiteouts: false,
                                });
                                ino = Some(self.layers.map_ino(layer, st.st_ino));
                                break;
                            }
                            Some(_) => break,
                        }
                    }
                }
            }
            if let Some(i) = first_lower_ino {
                ino = Some(i);
            }
        }
        match (kind, ino) {
            (Some(kind), Some(ino)) => Ok(Some(Resolved {
                stat: top_stat,
                kind,
                ino,
                state,
            })),
            _ => Ok(None),
        }
    }

    /// True when regular file `name` in `dir` (stat `st`) is a metadata-only copy
    /// (`overlay.metacopy`), whose data lives in a lower layer. The engine does not follow
    /// metacopy, so such a file is refused (EPERM), as the kernel refuses one in any layer
    /// with `metacopy=off` ("refusing to follow metacopy origin"), instead of showing its
    /// empty data. An empty file has no data to hide: it costs no xattr read.
    pub(crate) fn is_metacopy(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
    ) -> bool {
        if FileKind::from_mode(st.st_mode) != FileKind::File || st.st_size == 0 {
            return false;
        }
        let p = super::layers::proc_path(dir, name);
        matches!(
            rustix::fs::lgetxattr(&p, self.layers.ns.metacopy(), &mut [0u8; 0][..]),
            Ok(_) | Err(Errno::RANGE)
        )
    }

    /// True when directory `name` in `dir` carries `overlay.redirect`: a kernel mount with
    /// `redirect_dir=on` renamed a merged directory, and its lower part lives under another
    /// name. The engine does not follow redirects, so such a directory is refused (EPERM),
    /// as the kernel refuses it with `redirect_dir=nofollow`, instead of showing only its
    /// upper part.
    pub(crate) fn has_redirect(&self, dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> bool {
        let p = super::layers::proc_path(dir, name);
        matches!(
            rustix::fs::lgetxattr(&p, self.layers.ns.redirect(), &mut [0u8; 0][..]),
            Ok(_) | Err(Errno::RANGE)
        )
    }

    /// True when an upper directory `name` in `dir` is opaque (`overlay.opaque=y`).
    pub(crate) fn upper_dir_opaque(&self, dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> bool {
        let p = super::layers::proc_path(dir, name);
        let x = self.layers.ns.opaque();
        // Only "y" counts: a one-byte buffer answers (longer values give ERANGE), with no
        // heap buffer per lookup.
        let mut b = [0u8; 1];
        match rustix::fs::lgetxattr(&p, x, &mut b[..]) {
            Ok(n) => Opacity::from_xattr(Some(&b[..n])) == Opacity::Opaque,
            Err(_) => false,
        }
    }

    /// The kernel's `ovl_lower_positive`: does `name` exist (not whited out) in the lower
    /// layers merged into `parent`? Decides whether removing it needs a whiteout.
    pub(crate) fn lower_positive(
        &self,
        parent: &NodeRef,
        name: &OsStr,
    ) -> std::result::Result<bool, Errno> {
        let pstate = parent.state.read().clone();
        for le in &pstate.lowers {
            let dir = match self.dir_fd(parent, LayerRef::Lower(le.layer)) {
                Ok(d) => d,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::XDEV) => continue,
                Err(e) => return Err(e),
            };
            match self.lower_hit(dir.as_fd(), name, le.xwhiteouts)? {
                LayerHit::Absent => continue,
                LayerHit::Whiteout => return Ok(false),
                LayerHit::Found(_) => return Ok(true),
            }
        }
        Ok(false)
    }
}
