//! Lookup: the top-down walk through the layers for one name.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, Stat};
use rustix::io::Errno;

use super::layers::LayerRef;
use super::node::{LowerEntry, NodeState, Redirected};
use super::{FileKind, NodeRef, Overlay};
use crate::error::Result;
use crate::format::{self, Opacity, XattrNamespace};

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

/// The operation named in the error for a lower directory that carries a redirect itself
/// (an upper with redirects later used as a lower layer) when redirects are not followed,
/// as the kernel with redirect_dir=nofollow or userxattr.
const REDIRECT_REFUSED: &str =
    "lookup (a lower directory with its own overlay.redirect: redirects are not followed, \
     as the kernel's redirect_dir=nofollow, forced by user.overlay.* xattrs (userxattr))";

/// The operation named in the error for an upper directory whose redirect is malformed
/// (EINVAL, as the kernel's "invalid redirect").
const REDIRECT_INVALID: &str = "lookup (invalid overlay.redirect)";

/// The operation named in the error for an upper directory whose redirect names `.`, `..`
/// or an empty name (EACCES: the kernel's lookup of such a name in a lower layer is refused).
const REDIRECT_DOTS: &str = "lookup (overlay.redirect names '.', '..' or an empty name)";

/// The operation named in the error for an upper directory whose redirect is not followed
/// because the stack uses `user.overlay.*` xattrs, which any user can write on what they own
/// (EPERM, as the kernel's "refusing to follow redirect" with userxattr, which forces
/// redirect_dir=nofollow).
const REDIRECT_NOT_FOLLOWED: &str =
    "lookup (overlay.redirect not followed: with user.overlay.* xattrs (userxattr) redirects \
     are not followed, as the kernel's redirect_dir=nofollow)";

/// Which overlay xattrs an upper object carries (names only).
struct OverlayXattrs {
    origin: bool,
    metacopy: bool,
    redirect: bool,
    opaque: bool,
}

/// What a lookup asks the lower layers for: the kernel's `d.name`.
#[derive(Clone)]
enum Wanted<'a> {
    /// A name in the parent's lower directories.
    Name(std::borrow::Cow<'a, OsStr>),
    /// A path from every lower layer's root (an absolute redirect).
    Path(PathBuf),
}

/// A redirect read, if any, or the operation to name and the errno.
type RedirectResult<T> = std::result::Result<Option<T>, (&'static str, Errno)>;

/// How a walk down an absolute path in one lower layer failed.
enum WalkError {
    /// Nothing there (or not a directory): the layer has no such path.
    Missing(Errno),
    /// A bad redirect on the way: the lookup fails (operation to name, errno).
    Fatal(&'static str, Errno),
}

/// What a walk down an absolute path in one lower layer found.
struct Walked {
    /// The directory holding the last component.
    dir: std::result::Result<Arc<std::os::fd::OwnedFd>, WalkError>,
    /// The path the layers below look up instead (a redirect on the way).
    rewritten: Option<PathBuf>,
    /// An opaque directory or a whiteout on the way: no layer below is looked at.
    stop: bool,
}

/// Read an `overlay.redirect` value with `get` (an `fgetxattr` or `lgetxattr`); `None`
/// when there is none.
fn read_redirect(
    get: impl FnMut(&mut [u8]) -> std::result::Result<usize, Errno>,
) -> RedirectResult<Vec<u8>> {
    match super::layers::read_xattr(get) {
        Ok(v) => Ok(Some(v)),
        Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) => Ok(None),
        Err(e) => Err(("lookup (read overlay.redirect)", e)),
    }
}

/// A well-formed `overlay.redirect` value.
struct RedirectValue<'a> {
    /// `/a/b`: a path from the overlay root; else a bare name.
    absolute: bool,
    /// The value without its leading `/`.
    body: &'a [u8],
    /// A component is `.`, `..` or empty (EACCES where it is used, as the kernel's lookup
    /// of such a name in a lower layer).
    dots: bool,
}

/// Check an `overlay.redirect` value as the kernel (6.18) does, observed: a C string (cut at
/// its first NUL); an empty value, a `/` in a relative one, or an empty component in an
/// absolute one is malformed (EINVAL).
fn parse_redirect(v: &[u8]) -> std::result::Result<RedirectValue<'_>, (&'static str, Errno)> {
    if v.is_empty() {
        return Err((REDIRECT_INVALID, Errno::INVAL));
    }
    let v = &v[..v.iter().position(|c| *c == 0).unwrap_or(v.len())];
    let (absolute, body) = match v.strip_prefix(b"/") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let mut parts = body.split(|c| *c == b'/');
    let well_formed = if absolute {
        parts.clone().all(|c| !c.is_empty())
    } else {
        parts.clone().count() == 1
    };
    if !well_formed {
        return Err((REDIRECT_INVALID, Errno::INVAL));
    }
    let dots = parts.any(|c| c.is_empty() || c == b"." || c == b"..");
    Ok(RedirectValue {
        absolute,
        body,
        dots,
    })
}

/// True when the object `fd` carries xattr `name` (its value is not read).
fn xattr_present(fd: std::os::fd::BorrowedFd<'_>, name: &str) -> bool {
    present(rustix::fs::fgetxattr(fd, name, &mut [0u8; 0][..]))
}

/// True when `name` in `dir` (not followed if a symlink) carries xattr `xname` (its value is
/// not read).
fn xattr_present_at(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr, xname: &str) -> bool {
    // A lookup probes every non-empty lower file for `overlay.metacopy`: without the walk
    // through procfs it costs a third of the daemon's time in a stat-walk less.
    if let Some(r) = crate::sys::getxattrat_size(dir, name, xname) {
        return present(r);
    }
    let p = super::layers::proc_path(dir, name);
    present(rustix::fs::lgetxattr(&p, xname, &mut [0u8; 0][..]))
}

/// A size query of an xattr: it exists (ERANGE cannot come with an empty buffer, but
/// counts as present).
fn present(r: std::result::Result<usize, Errno>) -> bool {
    matches!(r, Ok(_) | Err(Errno::RANGE))
}

/// The operation named in the error for a metadata-only copy whose data is nowhere below
/// (EIO, as the kernel's "metacopy with no lower data found").
const METACOPY_NO_DATA: &str = "lookup (a metacopy file whose data is in no lower layer)";

/// The operation named in the error for a metacopy file (see [`Overlay::is_metacopy`]).
const METACOPY_REFUSED: &str =
    "lookup (a metacopy file: its data lives in a lower layer; not followed with \
     metacopy=off, as by the kernel)";

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
            // Only a redirect can ask for a name this long: it finds nothing.
            Err(Errno::NAMETOOLONG) => Ok(LayerHit::Absent),
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
        xattr_present_at(dir, name, self.layers.ns.whiteout())
    }

    /// Resolve `name` in directory `parent` through the layers.
    pub(crate) fn resolve(&self, parent: &NodeRef, name: &OsStr) -> Result<Option<Resolved>> {
        let mut pstate = parent.state.read().clone();
        let err = |e: Errno| self.name_err("lookup", parent, name, e);
        let mut state = NodeState::default();
        let mut kind: Option<FileKind> = None;
        let mut ino: Option<u64> = None;
        let mut merge_lowers = true;
        let mut top_stat: Option<Stat> = None;
        // The upper directory's redirect: its value, and where the lower directories are.
        let mut redirect: Option<(Box<[u8]>, Wanted<'_>)> = None;
        // A metadata-only copy was found (metacopy=on): the lower layers are searched for
        // its data.
        let mut need_data = false;
        let mut upper_redirect_value: Option<Box<[u8]>> = None;

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
                        // One listxattr tells which overlay xattrs to read (usually none).
                        let x = self.overlay_xattrs(dir.as_fd(), name);
                        // With metacopy=on the marker decides (even on an empty file, whose
                        // copy-up of data removes it); else a file with data to hide is refused.
                        if self.opts.metacopy {
                            need_data = x.metacopy
                                && k == FileKind::File
                                && xattr_present_at(dir.as_fd(), name, self.layers.ns.metacopy());
                        } else if x.metacopy && self.is_metacopy(dir.as_fd(), name, &st) {
                            return Err(self.name_err(METACOPY_REFUSED, parent, name, Errno::PERM));
                        }
                        state.metacopy = need_data;
                        top_stat = Some(st);
                        state.upper = true;
                        kind = Some(k);
                        if k != FileKind::Directory {
                            // A metadata-only copy: its data is looked up below, by name or
                            // through its redirect (a renamed or linked one).
                            merge_lowers = need_data;
                            if need_data && x.redirect {
                                let parent_has_lowers = !pstate.lowers.is_empty();
                                redirect = self
                                    .upper_redirect(parent_has_lowers, dir.as_fd(), name)
                                    .map_err(|(op, e)| self.name_err(op, parent, name, e))?;
                            }
                            let origin = if x.origin {
                                self.origin_of(dir.as_fd(), name)
                            } else {
                                None
                            };
                            if let Some((_, Some(info))) = &origin {
                                // index=on: a name of the indexed inode of a lower file.
                                state.index = Some(info.clone());
                                state.indexed = true;
                            }
                            ino = Some(origin.map(|(i, _)| i).unwrap_or_else(|| {
                                self.layers.map_ino(LayerRef::Upper, st.st_ino)
                            }));
                        } else {
                            merge_lowers = !(x.opaque && self.upper_dir_opaque(dir.as_fd(), name));
                            // As the kernel, the redirect of an opaque directory is not read:
                            // nothing below it is merged.
                            if x.redirect && merge_lowers {
                                let parent_has_lowers = !pstate.lowers.is_empty();
                                redirect = self
                                    .upper_redirect(parent_has_lowers, dir.as_fd(), name)
                                    .map_err(|(op, e)| self.name_err(op, parent, name, e))?;
                            }
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
            let follow = self.follow_redirects();
            let bottom = self.layers.normal_lowers.saturating_sub(1);
            let mut first_lower_ino: Option<u64> = None;
            // What the lower layers are asked for (the kernel's `d.name`): the name in the
            // parent's lower directories, or an absolute redirect's path looked up from the
            // root of every lower layer. A redirect met in a lower layer changes it for the
            // layers below.
            let (mut want, mut stack, mut from_root) = match redirect.take() {
                Some((raw, w)) => {
                    upper_redirect_value = Some(raw);
                    match w {
                        Wanted::Path(_) => (w, self.root().state.read().lowers.clone(), true),
                        Wanted::Name(_) => (w, std::mem::take(&mut pstate.lowers), false),
                    }
                }
                None => (
                    Wanted::Name(std::borrow::Cow::Borrowed(name)),
                    std::mem::take(&mut pstate.lowers),
                    false,
                ),
            };
            let mut paths: Vec<(u16, PathBuf)> = Vec::new();
            let mut i = 0;
            while i < stack.len() {
                let le = stack.as_slice()[i];
                i += 1;
                let layer = LayerRef::Lower(le.layer);
                // A redirect read in this layer: where the layers below look.
                let mut next: Option<Wanted<'_>> = None;
                // As the kernel, the last layer's opacity and redirects are not read (with
                // nofollow: the last of the parent's layers).
                let last = if follow {
                    le.layer as usize == bottom
                } else {
                    i == stack.len()
                };
                // An absolute path is walked component by component: an opaque directory
                // or a whiteout on the way stops the layers below, a redirect on the way
                // changes where they look (the kernel's `ovl_lookup_layer`).
                let mut stop_below = false;
                let walked = match &want {
                    Wanted::Path(p) => {
                        let w = self.walk_lower_path(layer, p, follow, last);
                        stop_below = w.stop;
                        if let Some(r) = w.rewritten {
                            next = Some(Wanted::Path(r));
                        }
                        Some(w.dir)
                    }
                    Wanted::Name(_) => None,
                };
                let walked = match walked {
                    Some(Err(WalkError::Fatal(op, e))) => {
                        return Err(self.name_err(op, parent, name, e))
                    }
                    Some(Err(WalkError::Missing(e))) => Some(Err(e)),
                    Some(Ok(fd)) => Some(Ok(fd)),
                    None => None,
                };
                let (dir, lname): (_, &OsStr) = match (&want, walked) {
                    (Wanted::Path(p), Some(d)) => (d, p.file_name().unwrap_or_default()),
                    (Wanted::Name(n), _) => (self.dir_fd(parent, layer), &**n),
                    (Wanted::Path(_), None) => unreachable!("walked above"),
                };
                let dir = match dir {
                    Ok(d) => d,
                    // ENAMETOOLONG, ELOOP: a redirect through an over-long name or a
                    // symlink finds nothing, as in the kernel.
                    Err(Errno::NOENT)
                    | Err(Errno::NOTDIR)
                    | Err(Errno::XDEV)
                    | Err(Errno::NAMETOOLONG)
                    | Err(Errno::LOOP) => {
                        if stop_below {
                            break;
                        }
                        if let Some(w) = next {
                            want = w;
                        }
                        continue;
                    }
                    Err(e) => return Err(err(e)),
                };
                match self
                    .lower_hit(dir.as_fd(), lname, le.xwhiteouts)
                    .map_err(err)?
                {
                    LayerHit::Absent => {}
                    LayerHit::Whiteout => break,
                    LayerHit::Found(st) => {
                        let k = FileKind::from_mode(st.st_mode);
                        let lower_metacopy = (kind.is_none() || need_data)
                            && self.is_metacopy(dir.as_fd(), lname, &st);
                        if lower_metacopy && !self.opts.metacopy {
                            return Err(self.name_err(METACOPY_REFUSED, parent, name, Errno::PERM));
                        }
                        if top_stat.is_none() {
                            top_stat = Some(st);
                        }
                        match kind {
                            // The data of a metadata-only copy: a regular file (else EIO, as
                            // the kernel's "metacopy with no lower data found"), itself
                            // metadata-only or not.
                            Some(FileKind::File) if need_data => {
                                if k != FileKind::File {
                                    return Err(self.name_err(
                                        METACOPY_NO_DATA,
                                        parent,
                                        name,
                                        Errno::IO,
                                    ));
                                }
                                state.lowers.push(LowerEntry {
                                    layer: le.layer,
                                    xwhiteouts: false,
                                });
                                self.record_lower_path(&mut paths, parent, name, &want, le.layer);
                                if !lower_metacopy {
                                    need_data = false;
                                    break;
                                }
                                next = self
                                    .file_redirect_below(dir.as_fd(), lname, &want, next, follow)
                                    .map_err(|(op, e)| self.name_err(op, parent, name, e))?;
                            }
                            None if lower_metacopy => {
                                // A metadata-only lower file: its data is further down, by
                                // name or where its redirect points.
                                kind = Some(k);
                                need_data = true;
                                state.metacopy = true;
                                state.lowers.push(LowerEntry {
                                    layer: le.layer,
                                    xwhiteouts: false,
                                });
                                ino = Some(self.layers.map_ino(layer, st.st_ino));
                                // index=on: as for any lower file with several names (the
                                // index is keyed by the top lower object, metadata-only or not).
                                self.index_state(
                                    &mut state,
                                    &mut top_stat,
                                    le.layer,
                                    dir.as_fd(),
                                    lname,
                                    &st,
                                )
                                .map_err(|(op, e)| self.name_err(op, parent, name, e))?;
                                next = self
                                    .file_redirect_below(dir.as_fd(), lname, &want, next, follow)
                                    .map_err(|(op, e)| self.name_err(op, parent, name, e))?;
                            }
                            Some(FileKind::Directory) if k != FileKind::Directory => break,
                            Some(FileKind::Directory) | None if k == FileKind::Directory => {
                                kind = Some(k);
                                let covered =
                                    self.layers.covered_mount_point(layer, dir.as_fd(), lname);
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
                                        lname,
                                        rustix::fs::OFlags::RDONLY
                                            | rustix::fs::OFlags::DIRECTORY
                                            | rustix::fs::OFlags::NOFOLLOW
                                            | rustix::fs::OFlags::NONBLOCK
                                            | rustix::fs::OFlags::NOCTTY
                                            | rustix::fs::OFlags::CLOEXEC,
                                        rustix::fs::Mode::empty(),
                                    )
                                    .map_err(err)?;
                                    let op = self.layers.lower_dir_opacity(sub.as_fd());
                                    if !last && op != Opacity::Opaque {
                                        // Relative to the path as rewritten on the way.
                                        let base = next.take();
                                        next = self
                                            .lower_redirect(
                                                sub.as_fd(),
                                                base.as_ref().unwrap_or(&want),
                                                follow,
                                            )
                                            .map_err(|(op, e)| self.name_err(op, parent, name, e))?
                                            .or(base);
                                    }
                                    op
                                };
                                state.lowers.push(LowerEntry {
                                    layer: le.layer,
                                    xwhiteouts: op == Opacity::HasXWhiteouts,
                                });
                                self.record_lower_path(&mut paths, parent, name, &want, le.layer);
                                if op == Opacity::Opaque
                                    || rustix::fs::statat(
                                        dir.as_fd(),
                                        format::aufs_whiteout_name(lname),
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
                                // index=on: a lower file with several names shows its index
                                // entry once one of them was copied up.
                                self.index_state(
                                    &mut state,
                                    &mut top_stat,
                                    le.layer,
                                    dir.as_fd(),
                                    lname,
                                    &st,
                                )
                                .map_err(|(op, e)| self.name_err(op, parent, name, e))?;
                                break;
                            }
                            Some(_) => break,
                        }
                    }
                }
                if stop_below {
                    break;
                }
                if let Some(w) = next {
                    // An absolute redirect goes on from the roots, in the layers below this
                    // one (the kernel's switch to the root's lower stack).
                    if matches!(w, Wanted::Path(_)) && !from_root {
                        stack = self.root().state.read().lowers.clone();
                        i = stack
                            .as_slice()
                            .iter()
                            .position(|e| e.layer > le.layer)
                            .unwrap_or(stack.len());
                        from_root = true;
                    }
                    want = w;
                }
            }
            if need_data && self.layers.lowers.len() > self.layers.normal_lowers {
                // Data-only layers: only an absolute redirect of the lowest metadata copy
                // leads there, as in the kernel (`ovl_lookup_data_layers`).
                if let Wanted::Path(p) = &want {
                    match self.lookup_data_only(p).map_err(err)? {
                        Some(l) => {
                            state.lowers.push(LowerEntry {
                                layer: l,
                                xwhiteouts: false,
                            });
                            paths.push((l, p.clone()));
                        }
                        None => state.data_missing = true,
                    }
                    need_data = false;
                }
            }
            if need_data {
                return Err(self.name_err(METACOPY_NO_DATA, parent, name, Errno::IO));
            }
            if let Some(i) = first_lower_ino {
                ino = Some(i);
            }
            if upper_redirect_value.is_some() || (!paths.is_empty() && !state.lowers.is_empty()) {
                state.redirect = Some(Arc::new(Redirected {
                    upper: upper_redirect_value,
                    paths,
                }));
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

    /// index=on: record in `state` what the index knows of lower non-directory `lname` in
    /// `dir` (lower layer `layer`, stat `st`), and when its entry exists (another name was
    /// copied up), show the entry: its stat becomes `top_stat`, its metacopy state the
    /// node's. A metadata-only entry with `metacopy=off` is refused (EPERM), as any.
    fn index_state(
        &self,
        state: &mut NodeState,
        top_stat: &mut Option<Stat>,
        layer: u16,
        dir: std::os::fd::BorrowedFd<'_>,
        lname: &OsStr,
        st: &Stat,
    ) -> std::result::Result<(), (&'static str, Errno)> {
        let Some((info, entry)) = self.index_lookup(layer, dir, lname, st)? else {
            return Ok(());
        };
        if let Some(est) = entry {
            let ireal = self
                .index_real(&info)
                .map_err(|e| ("lookup (workdir/index)", e))?;
            let mc = matches!(
                ireal.getxattr(OsStr::new(self.layers.ns.metacopy())),
                Ok(_) | Err(Errno::RANGE)
            );
            if mc && !self.opts.metacopy && est.st_size != 0 {
                return Err((METACOPY_REFUSED, Errno::PERM));
            }
            state.metacopy = mc && self.opts.metacopy;
            state.indexed = true;
            *top_stat = Some(est);
        }
        state.index = Some(info);
        Ok(())
    }

    /// The first data-only layer holding a regular file at `path` (from its root, no
    /// symlink followed, no overlay xattr read), as the kernel's `ovl_lookup_data_layer`.
    fn lookup_data_only(&self, path: &Path) -> std::result::Result<Option<u16>, Errno> {
        let (Some(parent), Some(fname)) = (path.parent(), path.file_name()) else {
            return Ok(None);
        };
        for i in self.layers.normal_lowers..self.layers.lowers.len() {
            let layer = LayerRef::Lower(i as u16);
            let dir = match self.open_lower_path(layer, parent) {
                Ok(d) => d,
                Err(Errno::NOENT)
                | Err(Errno::NOTDIR)
                | Err(Errno::XDEV)
                | Err(Errno::NAMETOOLONG)
                | Err(Errno::LOOP) => continue,
                Err(e) => return Err(e),
            };
            match rustix::fs::statat(dir.as_fd(), fname, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileKind::from_mode(st.st_mode) == FileKind::File => {
                    return Ok(Some(i as u16))
                }
                Ok(_) | Err(Errno::NOENT) | Err(Errno::NAMETOOLONG) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// True when regular file `name` in `dir` (stat `st`) is a metadata-only copy
    /// (`overlay.metacopy`), whose data lives in a lower layer. With `metacopy=off` such a
    /// file is refused (EPERM), as the kernel refuses one in any layer ("refusing to follow
    /// metacopy origin"), instead of showing its empty data; with `metacopy=on` its data is
    /// looked up below. An empty file has no data to hide: it costs no xattr read.
    pub(crate) fn is_metacopy(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
    ) -> bool {
        if FileKind::from_mode(st.st_mode) != FileKind::File || st.st_size == 0 {
            return false;
        }
        xattr_present_at(dir, name, self.layers.ns.metacopy())
    }

    /// The overlay xattrs upper object `name` in `dir` carries, from one `llistxattr`, so a
    /// lookup reads only those it has (most objects have none). When the list cannot be
    /// read, every one counts as present and is read on its own.
    fn overlay_xattrs(&self, dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> OverlayXattrs {
        let p = super::layers::proc_path(dir, name);
        let ns = self.layers.ns;
        match super::layers::read_xattr(|b| rustix::fs::llistxattr(&p, b)) {
            Ok(list) => {
                let has = |x: &str| list.split(|c| *c == 0).any(|n| n == x.as_bytes());
                OverlayXattrs {
                    origin: has(ns.origin()),
                    metacopy: has(ns.metacopy()),
                    redirect: has(ns.redirect()),
                    opaque: has(ns.opaque()),
                }
            }
            Err(_) => OverlayXattrs {
                origin: true,
                metacopy: true,
                redirect: true,
                opaque: true,
            },
        }
    }

    /// True when redirects are followed: `redirect_dir` is `on` or `follow`, and the
    /// stack uses `trusted.overlay.*` xattrs (with `user.overlay.*`, the kernel's
    /// `userxattr`, any user can write a redirect on what they own: the kernel forces
    /// `redirect_dir=nofollow` there).
    pub(crate) fn follow_redirects(&self) -> bool {
        self.layers.ns == XattrNamespace::Trusted
            && self.opts.redirect_dir != crate::mount::RedirectDir::NoFollow
    }

    /// The redirect of upper directory `name` in `dir`, if it has one: a kernel mount with
    /// `redirect_dir=on` (or this engine) renamed a merged or lower directory, whose lower
    /// part lives under another name. An absolute value (`/a/b`) names a path from the
    /// lower layers' roots, a relative one a name in the parent's lower directories.
    ///
    /// What the kernel (6.18) does, observed, and done here alike (see [`parse_redirect`]):
    /// * a malformed value: EINVAL;
    /// * `.`, `..` or an empty name as a component: EACCES (the kernel's lookup of such a
    ///   name in a lower layer is refused), for a relative value only where the parent has
    ///   lower directories (otherwise it is never used);
    /// * anything else is followed (non-UTF-8 or over-long names simply find nothing).
    ///
    /// When redirects are not followed ([`Overlay::follow_redirects`]: `redirect_dir=nofollow`
    /// or `user.overlay.*` xattrs), where the parent has lower directories a well-formed one
    /// gives EPERM (a malformed one EINVAL), as the kernel's "refusing to follow redirect",
    /// and where it has none the xattr is not even read.
    ///
    /// Returns the raw value and what the lower layers are asked for; the error is the
    /// operation to name and the errno.
    fn upper_redirect(
        &self,
        parent_has_lowers: bool,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
    ) -> RedirectResult<(Box<[u8]>, Wanted<'static>)> {
        let follow = self.follow_redirects();
        if !follow && !parent_has_lowers {
            return Ok(None);
        }
        let p = super::layers::proc_path(dir, name);
        let Some(v) = read_redirect(|b| rustix::fs::lgetxattr(&p, self.layers.ns.redirect(), b))?
        else {
            return Ok(None);
        };
        let r = parse_redirect(&v)?;
        if !follow {
            return Err((REDIRECT_NOT_FOLLOWED, Errno::PERM));
        }
        if r.dots {
            return if r.absolute || parent_has_lowers {
                Err((REDIRECT_DOTS, Errno::ACCESS))
            } else {
                Ok(None)
            };
        }
        let body = OsStr::from_bytes(r.body);
        let want = if r.absolute {
            Wanted::Path(PathBuf::from(body))
        } else {
            Wanted::Name(std::borrow::Cow::Owned(body.to_os_string()))
        };
        let raw: Box<[u8]> = v[..v.iter().position(|c| *c == 0).unwrap_or(v.len())].into();
        Ok(Some((raw, want)))
    }

    /// The redirect of a lower directory (open as `sub`), found while looking up `want`:
    /// where the layers below look instead. A relative one replaces the last component of
    /// what was looked up, an absolute one all of it (as the kernel's `ovl_check_redirect`).
    /// When redirects are not followed, a redirect is refused (EPERM, the kernel's
    /// "refusing to follow redirect"). Malformed values as for [`Overlay::upper_redirect`].
    fn lower_redirect(
        &self,
        sub: std::os::fd::BorrowedFd<'_>,
        want: &Wanted<'_>,
        follow: bool,
    ) -> RedirectResult<Wanted<'static>> {
        let x = self.layers.ns.redirect();
        // Most directories have none: one size query, no buffer.
        if !xattr_present(sub, x) {
            return Ok(None);
        }
        match read_redirect(|b| rustix::fs::fgetxattr(sub, x, b))? {
            Some(v) => self.next_wanted(&v, want, follow),
            None => Ok(None),
        }
    }

    /// The redirect of metadata-only lower file `name` in `dir` (a renamed or linked one,
    /// in an upper later used as a lower layer), as [`Overlay::lower_redirect`].
    fn lower_file_redirect(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        want: &Wanted<'_>,
        follow: bool,
    ) -> RedirectResult<Wanted<'static>> {
        let p = super::layers::proc_path(dir, name);
        match read_redirect(|b| rustix::fs::lgetxattr(&p, self.layers.ns.redirect(), b))? {
            Some(v) => self.next_wanted(&v, want, follow),
            None => Ok(None),
        }
    }

    /// Where the layers below look for the data of metadata-only lower file `lname` in
    /// `dir`, looked up as `want`: its redirect, relative to `rewritten` (what a redirect on
    /// the way made of `want`), else `rewritten` itself.
    fn file_redirect_below<'a>(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        lname: &OsStr,
        want: &Wanted<'_>,
        rewritten: Option<Wanted<'a>>,
        follow: bool,
    ) -> RedirectResult<Wanted<'a>> {
        let base = rewritten.as_ref().unwrap_or(want);
        Ok(self
            .lower_file_redirect(dir, lname, base, follow)?
            .or(rewritten))
    }

    /// Where the layers below look after a lower object's redirect `v`.
    fn next_wanted(
        &self,
        v: &[u8],
        want: &Wanted<'_>,
        follow: bool,
    ) -> RedirectResult<Wanted<'static>> {
        let r = parse_redirect(v)?;
        if !follow {
            return Err((REDIRECT_REFUSED, Errno::PERM));
        }
        if r.dots {
            return Err((REDIRECT_DOTS, Errno::ACCESS));
        }
        let body = OsStr::from_bytes(r.body);
        Ok(Some(match want {
            _ if r.absolute => Wanted::Path(PathBuf::from(body)),
            Wanted::Name(_) => Wanted::Name(std::borrow::Cow::Owned(body.to_os_string())),
            Wanted::Path(p) => Wanted::Path(p.parent().unwrap_or(Path::new("")).join(body)),
        }))
    }

    /// Walk down the directories of absolute lookup path `path` (all but its last
    /// component) in lower `layer`, as the kernel's `ovl_lookup_layer`: a whiteout or a
    /// non-directory on the way ends the walk and the search below; unless `last`, an opaque
    /// directory on the way ends the search below, and a redirect on the way (followed when
    /// `follow`, else EPERM) rewrites the path for the layers below (a relative one replaces
    /// its component, an absolute one everything up to it).
    fn walk_lower_path(&self, layer: LayerRef, path: &Path, follow: bool, last: bool) -> Walked {
        let comps: Vec<&OsStr> = path.iter().collect();
        let n = comps.len();
        let mut fd = self.layers.root(layer).fd.clone();
        let mut rewritten: Option<PathBuf> = None;
        let mut stop = false;
        let missing = |e, rewritten, stop| Walked {
            dir: Err(WalkError::Missing(e)),
            rewritten,
            stop,
        };
        for (i, c) in comps.iter().enumerate().take(n.saturating_sub(1)) {
            let st = match rustix::fs::statat(&*fd, *c, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => return missing(e, rewritten, stop),
            };
            if format::is_whiteout_stat(st.st_mode, st.st_rdev)
                || FileKind::from_mode(st.st_mode) != FileKind::Directory
            {
                return missing(Errno::NOENT, rewritten, true);
            }
            let sub = match rustix::fs::openat2(
                &*fd,
                *c,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::NONBLOCK
                    | rustix::fs::OFlags::NOCTTY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
                super::layers::RESOLVE_LAYER,
            ) {
                Ok(s) => s,
                Err(e) => return missing(e, rewritten, stop),
            };
            if !last {
                if self.layers.lower_dir_opacity(sub.as_fd()) == Opacity::Opaque {
                    stop = true;
                } else {
                    let cur = rewritten.clone().unwrap_or_else(|| path.to_path_buf());
                    // The component's place in `cur`: the components after it are the
                    // original path's.
                    let keep = cur.iter().count().saturating_sub(n - i);
                    let prefix: PathBuf = cur.iter().take(keep).collect();
                    let here = Wanted::Path(prefix.join(c));
                    match self.lower_redirect(sub.as_fd(), &here, follow) {
                        Ok(Some(Wanted::Path(p))) => {
                            let mut new = p;
                            for rest in &comps[i + 1..] {
                                new.push(rest);
                            }
                            rewritten = Some(new);
                        }
                        Ok(_) => {}
                        Err((op, e)) => {
                            return Walked {
                                dir: Err(WalkError::Fatal(op, e)),
                                rewritten,
                                stop,
                            }
                        }
                    }
                }
            }
            fd = Arc::new(sub);
        }
        Walked {
            dir: Ok(fd),
            rewritten,
            stop,
        }
    }

    /// Record where the object looked up as `want` (for `name` in `parent`) is in lower
    /// `layer`, when that is not under the parent's directory by its own name.
    fn record_lower_path(
        &self,
        paths: &mut Vec<(u16, PathBuf)>,
        parent: &NodeRef,
        name: &OsStr,
        want: &Wanted<'_>,
        layer: u16,
    ) {
        match want {
            Wanted::Path(p) => paths.push((layer, p.clone())),
            Wanted::Name(n) if **n != *name => {
                paths.push((layer, self.lower_dir_path(parent, layer).join(n)))
            }
            Wanted::Name(_) => {}
        }
    }

    /// Where directory `node` is in lower `layer`, relative to that layer's root: its path,
    /// or the path of its nearest ancestor found elsewhere (a redirect, a rename) joined with
    /// the names below it. Iterative: any depth costs heap, not stack.
    pub(crate) fn lower_dir_path(&self, node: &NodeRef, layer: u16) -> PathBuf {
        let mut names = Vec::new();
        let mut cur = node.clone();
        let mut path = loop {
            if let Some(p) = cur
                .state
                .read()
                .redirect
                .as_ref()
                .and_then(|r| r.path_in(layer))
            {
                break p.to_path_buf();
            }
            match cur.parent_name() {
                Some((parent, name)) => {
                    names.push(name);
                    cur = parent;
                }
                None => break PathBuf::new(),
            }
        };
        for n in names.iter().rev() {
            path.push(n.as_os_str());
        }
        path
    }

    /// Open directory `path` (relative, no `..`) beneath the root of lower `layer`, never
    /// following a symlink or leaving the layer.
    pub(crate) fn open_lower_path(
        &self,
        layer: LayerRef,
        path: &Path,
    ) -> std::result::Result<Arc<std::os::fd::OwnedFd>, Errno> {
        let root = self.layers.root(layer).fd.clone();
        if path.as_os_str().is_empty() {
            return Ok(root);
        }
        rustix::fs::openat2(
            &*root,
            path,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::NONBLOCK
                | rustix::fs::OFlags::NOCTTY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
            super::layers::RESOLVE_LAYER,
        )
        .map(Arc::new)
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

#[cfg(test)]
mod probe_tests {
    use std::ffi::OsStr;
    use std::os::fd::AsFd;

    /// The xattr probe answers the same through `getxattrat` and through procfs (the path
    /// taken on kernels before 6.13 and under seccomp filters that refuse the call).
    #[test]
    fn xattr_probe_without_getxattrat() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("l")).unwrap();
        let dir = rustix::fs::open(
            tmp.path(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let set = rustix::fs::setxattr(
            tmp.path().join("f"),
            "user.probe",
            b"",
            rustix::fs::XattrFlags::empty(),
        );
        if set.is_err() {
            eprintln!("SKIPPED: no user xattrs on {}", tmp.path().display());
            return;
        }
        let look = || {
            ["f", "l", "missing"]
                .map(|n| super::xattr_present_at(dir.as_fd(), OsStr::new(n), "user.probe"))
        };
        let fast = look();
        crate::sys::forget_getxattrat();
        let procfs = look();
        // The symlink is not followed: only the file carries it.
        assert_eq!(fast, [true, false, false]);
        assert_eq!(procfs, fast);
    }
}
