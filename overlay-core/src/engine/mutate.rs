//! Namespace changes: create, mkdir, mknod, symlink, link, unlink, rmdir, rename.
//!
//! Errno precedence follows the VFS: for creations EEXIST comes before EROFS; for removals
//! and renames EROFS comes first.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use parking_lot::RwLockWriteGuard;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags as RxRename, XattrFlags};
use rustix::io::Errno;

use super::layers::{remove_tree_at, LayerRef};
use super::node::{NodeName, NodeState, Redirected};
use super::real::RealObj;
use super::{
    check_name, is_dot, FileKind, NewMode, Node, NodeRef, Overlay, Owner, RemovedAttr, RenameFlags,
};
use crate::error::Result;
use crate::format;

/// The kernel's `redirect_max` default: the longest absolute redirect a rename writes.
const REDIRECT_MAX: usize = 256;

/// What to create.
enum NewObj<'a> {
    File { mode: u32, flags: i32 },
    Dir { mode: u32 },
    Special { mode: u32, rdev: u64 },
    Symlink { target: &'a OsStr },
    // A hard link to `src`, the upper object of node `of` (its kind and inode number).
    Link { src: RealObj, of: &'a Node },
}

/// State of a name in an upper directory.
enum UpperName {
    Absent,
    Whiteout,
    Present(rustix::fs::Stat),
}

fn upper_name(dir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<UpperName, Errno> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if format::is_whiteout_stat(st.st_mode, st.st_rdev) => Ok(UpperName::Whiteout),
        Ok(st) => Ok(UpperName::Present(st)),
        Err(Errno::NOENT) => Ok(UpperName::Absent),
        Err(e) => Err(e),
    }
}

impl Overlay {
    /// Remember the attributes of `node` before it is removed (for `getattr` on open files).
    fn stash_attr(&self, node: &NodeRef) {
        let lower_only = {
            let st = node.state.read();
            !st.upper && node.kind != FileKind::Directory
        };
        let stashed = if lower_only {
            // No stat now: the lower object does not change.
            self.top_real("getattr", node).map(RemovedAttr::Lower)
        } else {
            // The caller holds the node's copy lock: no waiting for a removal in flight.
            self.getattr_now(node).map(|mut a| {
                a.nlink = a.nlink.saturating_sub(if node.kind == FileKind::Directory {
                    2
                } else {
                    1
                });
                RemovedAttr::Attr(a)
            })
        };
        if let Ok(a) = stashed {
            let mut dead = Vec::new();
            {
                let mut m = self.removed.lock();
                if m.len() >= 64 {
                    // Entries of nodes nobody holds any more.
                    let keys: Vec<usize> = m
                        .iter()
                        .filter(|(_, (w, _))| w.strong_count() == 0)
                        .map(|(k, _)| *k)
                        .collect();
                    for k in keys {
                        dead.extend(m.remove(&k));
                    }
                }
                dead.extend(m.insert(Arc::as_ptr(node) as usize, (Arc::downgrade(node), a)));
            }
            drop(dead);
        }
    }

    /// Mark `node` removed from the tree.
    fn detach(&self, parent: &Node, name: &OsStr, node: &NodeRef) {
        node.set_unlinked();
        parent.remove_child(name, Arc::as_ptr(node));
        self.forget_dir_fds(node);
    }

    /// Common front of the creating operations, in the VFS's errno order: `parent` must be a
    /// live directory, `name` a valid new name absent from the merged view (EEXIST before
    /// EROFS). Returns the exclusive namespace lock of `parent`, to hold across the creation.
    fn lock_new_name<'p>(
        &self,
        op: &'static str,
        parent: &'p NodeRef,
        name: &OsStr,
    ) -> Result<RwLockWriteGuard<'p, ()>> {
        self.check_dir(op, parent)?;
        if is_dot(name) {
            return Err(self.name_err(op, parent, name, Errno::EXIST));
        }
        check_name(op, parent, name)?;
        let g = parent.dir_lock().write();
        if parent.is_unlinked() {
            return Err(self.name_err(op, parent, name, Errno::NOENT));
        }
        if self.lookup_locked(parent, name)?.is_some() {
            return Err(self.name_err(op, parent, name, Errno::EXIST));
        }
        self.check_writable(op, || parent.rel_path().join(name))?;
        Ok(g)
    }

    /// Create an object in the upper layer; the caller holds `parent.dir_lock` exclusively
    /// through [`Overlay::lock_new_name`], which checked that `name` does not exist in the
    /// merged view and that the overlay is writable.
    fn create_upper(
        &self,
        op: &'static str,
        parent: &NodeRef,
        name: &OsStr,
        owner: Option<Owner>,
        spec: NewObj<'_>,
        umask: u32,
    ) -> Result<(NodeRef, Option<OwnedFd>)> {
        let err = |e: Errno| self.name_err(op, parent, name, e);
        let pdir = self.upper_dir_of(parent)?;
        // With a default ACL on the upper parent, the permission bits come from the ACL and
        // the requested mode (the umask does not apply), as the upper filesystem computes
        // them for a direct creation; one made in the workdir gets the ACL and bits it would
        // have inherited (the kernel's posix_acl_create). Without one, the umask applies.
        let has_mode = matches!(
            spec,
            NewObj::File { .. } | NewObj::Dir { .. } | NewObj::Special { .. }
        );
        let default_acl = if has_mode {
            super::layers::read_xattr(|b| {
                rustix::fs::fgetxattr(pdir.as_fd(), super::acl::DEFAULT_ACL, b)
            })
            .ok()
        } else {
            None
        };
        let mask = |mode: u32| {
            if default_acl.is_some() {
                mode
            } else {
                mode & !(umask & 0o777)
            }
        };
        let spec = match spec {
            NewObj::File { mode, flags } => NewObj::File {
                mode: mask(mode),
                flags,
            },
            NewObj::Dir { mode } => NewObj::Dir { mode: mask(mode) },
            NewObj::Special { mode, rdev } => NewObj::Special {
                mode: mask(mode),
                rdev,
            },
            other => other,
        };
        // The name is absent from the merged view, so in upper it is absent or a whiteout.
        // Try the direct creation first; EEXIST means a whiteout (checked), which is then
        // replaced through the workdir.
        let mut fd = None;
        let mut over_whiteout = false;
        let mut tmp = OsString::new();
        let (kind, perm) = loop {
            let work = self.layers.work();
            let (tdir, tname): (BorrowedFd<'_>, &OsStr) = if over_whiteout {
                (work, &tmp)
            } else {
                (pdir.as_fd(), name)
            };
            let r = match &spec {
                NewObj::File { mode, flags } => {
                    let f = OFlags::from_bits_retain(
                        (*flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL)) as u32,
                    ) | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC;
                    rustix::fs::openat(tdir, tname, f, Mode::from_raw_mode(*mode & 0o7777)).map(
                        |f| {
                            fd = Some(f);
                            (FileKind::File, Some(*mode & 0o7777))
                        },
                    )
                }
                NewObj::Dir { mode } => {
                    rustix::fs::mkdirat(tdir, tname, Mode::from_raw_mode(*mode & 0o7777))
                        .map(|()| (FileKind::Directory, Some(*mode & 0o7777)))
                }
                NewObj::Special { mode, rdev } => {
                    let ft = FileType::from_raw_mode(*mode);
                    rustix::fs::mknodat(tdir, tname, ft, Mode::from_raw_mode(*mode & 0o7777), *rdev)
                        .map(|()| (FileKind::from_mode(*mode), Some(*mode & 0o7777)))
                }
                NewObj::Symlink { target } => {
                    rustix::fs::symlinkat(*target, tdir, tname).map(|()| (FileKind::Symlink, None))
                }
                NewObj::Link { src, of } => match src.name.as_deref() {
                    Some(sname) => {
                        rustix::fs::linkat(src.dir.as_fd(), sname, tdir, tname, AtFlags::empty())
                    }
                    // An open unnamed file (O_TMPFILE): linked through /proc, which needs no
                    // CAP_DAC_READ_SEARCH (AT_EMPTY_PATH would).
                    None => rustix::fs::linkat(
                        rustix::fs::CWD,
                        super::layers::proc_fd_path(src.dir.as_fd()),
                        tdir,
                        tname,
                        AtFlags::SYMLINK_FOLLOW,
                    ),
                }
                .map(|()| (of.kind, None)),
            };
            match r {
                Ok(x) => break x,
                Err(Errno::EXIST) if !over_whiteout => {
                    match upper_name(pdir.as_fd(), name).map_err(err)? {
                        UpperName::Whiteout => {
                            over_whiteout = true;
                            tmp = self.layers.staging_name();
                        }
                        _ => return Err(err(Errno::EXIST)),
                    }
                }
                Err(e) => return Err(err(e)),
            }
        };
        let work = self.layers.work();
        let (tdir, tname): (BorrowedFd<'_>, &OsStr) = if over_whiteout {
            (work, &tmp)
        } else {
            (pdir.as_fd(), name)
        };
        let link_of = match spec {
            NewObj::Link { of, .. } => Some(of),
            _ => None,
        };
        let is_link = link_of.is_some();
        // The new object: through its fd for files, else by name in its directory.
        let is_file_fd = fd.is_some();
        let created = match fd.take() {
            Some(f) => RealObj::of_fd(LayerRef::Upper, f),
            None => RealObj {
                layer: LayerRef::Upper,
                dir: if over_whiteout {
                    self.layers.work_arc()
                } else {
                    pdir.clone()
                },
                name: Some(tname.to_os_string()),
            },
        };
        let mut stat = None;
        let mut finish = || -> std::result::Result<(), Errno> {
            if !is_link {
                if let Some(o) = owner {
                    created.chown(Some(o.uid), Some(o.gid))?;
                }
                if let Some(perm) = perm {
                    let st = created.stat()?;
                    let keep_sgid = if kind == FileKind::Directory {
                        st.st_mode & libc::S_ISGID
                    } else {
                        0
                    };
                    let bits = match &default_acl {
                        None => perm & 0o777,
                        Some(_) if !over_whiteout => st.st_mode & 0o777,
                        Some(dacl) => match super::acl::inherit(dacl, perm) {
                            Some((bits, access)) => {
                                if let Some(a) = access {
                                    created.setxattr(
                                        OsStr::new(super::acl::ACCESS_ACL),
                                        &a,
                                        XattrFlags::empty(),
                                    )?;
                                }
                                if kind == FileKind::Directory {
                                    created.setxattr(
                                        OsStr::new(super::acl::DEFAULT_ACL),
                                        dacl,
                                        XattrFlags::empty(),
                                    )?;
                                }
                                bits
                            }
                            None => perm & 0o777,
                        },
                    };
                    let want = bits | (perm & 0o7000) | keep_sgid;
                    // chown may have cleared set-id bits.
                    let setid = want & (libc::S_ISUID | libc::S_ISGID) != 0;
                    if st.st_mode & 0o7777 != want || (owner.is_some() && setid) {
                        created.chmod(want)?;
                    }
                    stat = Some(st);
                }
            }
            // As the kernel once any of its new features is on: a new directory in a
            // merged one is opaque (an optimisation it allows to fail, so may we).
            if kind == FileKind::Directory
                && !over_whiteout
                && !self.allow_offline_changes()
                && parent.state.read().is_merge()
            {
                let _ = created.setxattr(
                    OsStr::new(self.layers.ns.opaque()),
                    b"y",
                    XattrFlags::empty(),
                );
            }
            if over_whiteout {
                if kind == FileKind::Directory {
                    created.setxattr(
                        OsStr::new(self.layers.ns.opaque()),
                        b"y",
                        XattrFlags::empty(),
                    )?;
                    rustix::fs::renameat_with(work, &*tmp, pdir.as_fd(), name, RxRename::EXCHANGE)?;
                    rustix::fs::unlinkat(work, &*tmp, AtFlags::empty())?;
                } else {
                    rustix::fs::renameat(work, &*tmp, pdir.as_fd(), name)?;
                }
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = remove_tree_at(tdir, tname);
            return Err(err(e));
        }
        if is_file_fd {
            // Hand the created file's fd back (the only reference to it).
            fd = Arc::try_unwrap(created.dir).ok();
        } else {
            drop(created);
        }
        let ino = match (link_of, stat) {
            // Same inode as the source: its overlay inode number.
            (Some(of), _) => of.ino(),
            // The inode does not change with the rename out of the workdir.
            (None, Some(st)) => self.layers.map_ino(LayerRef::Upper, st.st_ino),
            (None, None) => {
                let st = rustix::fs::statat(pdir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(err)?;
                self.layers.map_ino(LayerRef::Upper, st.st_ino)
            }
        };
        // A new name of a metadata-only copy reads the same lower data.
        let of_state = link_of.map(|of| of.state.read().clone());
        // A new name of an indexed inode (index=on) is one of its names.
        let (index, indexed) = match &of_state {
            Some(st) if st.indexed => (st.index.clone(), true),
            _ => (None, false),
        };
        let state = match of_state {
            Some(st) if st.metacopy => NodeState {
                upper: true,
                metacopy: true,
                lowers: st.lowers,
                redirect: st.redirect,
                index,
                indexed,
                ..Default::default()
            },
            _ => NodeState {
                upper: true,
                index,
                indexed,
                ..Default::default()
            },
        };
        let node = Arc::new(Node::new(ino, kind, Some(parent.clone()), name, state));
        parent.set_child(name, &node);
        Ok((node, fd))
    }

    /// Checks, locking and creation for create, mkdir and symlink.
    fn create_common(
        &self,
        op: &'static str,
        parent: &NodeRef,
        name: &OsStr,
        owner: Option<Owner>,
        spec: NewObj<'_>,
        umask: u32,
    ) -> Result<(NodeRef, Option<OwnedFd>)> {
        let _g = self.lock_new_name(op, parent, name)?;
        self.create_upper(op, parent, name, owner, spec, umask)
    }

    /// Create and open a regular file. Without `O_EXCL` an existing file is opened instead
    /// (EISDIR for a directory), as `open(O_CREAT)` does. `mode`: see [`NewMode`].
    pub fn create(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        mode: impl Into<NewMode>,
        flags: i32,
        owner: Option<Owner>,
    ) -> Result<(NodeRef, File)> {
        let NewMode { mode, umask } = mode.into();
        let op = "create";
        if flags & libc::O_EXCL == 0 && !is_dot(name) {
            self.check_dir(op, parent)?;
            check_name(op, parent, name)?;
            let existing = {
                let _g = parent.dir_lock().read();
                self.lookup_locked(parent, name)?
            };
            if let Some(n) = existing {
                let f = self.open(&n, flags & !libc::O_CREAT)?;
                return Ok((n, f));
            }
        }
        let (n, fd) =
            self.create_common(op, parent, name, owner, NewObj::File { mode, flags }, umask)?;
        Ok((n, File::from(fd.expect("created file fd"))))
    }

    /// Create a directory. It is opaque when it replaces a whiteout in the upper layer.
    /// `mode`: see [`NewMode`].
    pub fn mkdir(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        mode: impl Into<NewMode>,
        owner: Option<Owner>,
    ) -> Result<NodeRef> {
        let NewMode { mode, umask } = mode.into();
        Ok(self
            .create_common("mkdir", parent, name, owner, NewObj::Dir { mode }, umask)?
            .0)
    }

    /// Create a device node, FIFO, socket or regular file. A character device 0/0 gives EPERM,
    /// a directory type EPERM, an unknown type EINVAL.
    pub fn mknod(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        mode: impl Into<NewMode>,
        rdev: u64,
        owner: Option<Owner>,
    ) -> Result<NodeRef> {
        let op = "mknod";
        let NewMode { mode, umask } = mode.into();
        let fmt = mode & libc::S_IFMT;
        let mode = if fmt == 0 { mode | libc::S_IFREG } else { mode };
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK => {}
            libc::S_IFDIR => return Err(self.name_err(op, parent, name, Errno::PERM)),
            _ => return Err(self.name_err(op, parent, name, Errno::INVAL)),
        }
        let dev = if matches!(mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK) {
            rdev
        } else {
            0
        };
        let _g = self.lock_new_name(op, parent, name)?;
        if mode & libc::S_IFMT == libc::S_IFCHR && dev == 0 {
            // 0/0 is reserved for whiteouts.
            return Err(self.name_err(op, parent, name, Errno::PERM));
        }
        let (n, _) = self.create_upper(
            op,
            parent,
            name,
            owner,
            NewObj::Special { mode, rdev: dev },
            umask,
        )?;
        Ok(n)
    }

    /// Create a symlink `name` -> `target`.
    pub fn symlink(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        target: &OsStr,
        owner: Option<Owner>,
    ) -> Result<NodeRef> {
        if target.is_empty() {
            return Err(self.name_err("symlink", parent, name, Errno::NOENT));
        }
        Ok(self
            .create_common(
                "symlink",
                parent,
                name,
                owner,
                NewObj::Symlink { target },
                0,
            )?
            .0)
    }

    /// Hard-link `node` (copied up first) as `new_parent/new_name`. The new node has the same
    /// inode number.
    pub fn link(&self, node: &NodeRef, new_parent: &NodeRef, new_name: &OsStr) -> Result<NodeRef> {
        let op = "link";
        let _g = self.lock_new_name(op, new_parent, new_name)?;
        if node.kind == FileKind::Directory {
            return Err(self.node_err(op, node, Errno::PERM));
        }
        if node.is_unlinked() {
            return Err(self.node_err(op, node, Errno::NOENT));
        }
        self.copy_up_meta(node)?;
        let _c = node.copy_lock.lock();
        if node.is_unlinked() {
            return Err(self.node_err(op, node, Errno::NOENT));
        }
        // index=on: the link count of a hard-linked lower file's names, recorded before a
        // name comes (the kernel's `ovl_nlink_start`).
        let _ig = self.index_guard(node);
        self.nlink_start(node)?;
        if self.metacopy_now(node) {
            // As the kernel's `ovl_set_link_redirect`: the new name finds the data through
            // an absolute redirect on the (shared) upper inode.
            let r = self
                .set_redirect(node, false)
                .map_err(|e| self.node_err(op, node, e))?;
            node.state.write().redirect = Some(Arc::new(r));
        }
        let src = self
            .real(node, LayerRef::Upper)
            .map_err(|e| self.node_err(op, node, e))?;
        let (n, _) = self.create_upper(
            op,
            new_parent,
            new_name,
            None,
            NewObj::Link { src, of: node },
            0,
        )?;
        Ok(n)
    }

    /// Common front of unlink (`dir` false) and rmdir (`dir` true), in the VFS's errno
    /// order: EROFS first, then `.`/`..`, the name, ENOENT, and the kind (EISDIR for unlink,
    /// ENOTDIR for rmdir). Returns the exclusive namespace lock of `parent` and the node.
    fn lock_old_name<'p>(
        &self,
        op: &'static str,
        parent: &'p NodeRef,
        name: &OsStr,
        dir: bool,
    ) -> Result<(RwLockWriteGuard<'p, ()>, NodeRef)> {
        self.check_dir(op, parent)?;
        self.check_writable(op, || parent.rel_path().join(name))?;
        let dot = match (dir, name == ".") {
            (false, _) => Errno::ISDIR,
            (true, true) => Errno::INVAL,
            (true, false) => Errno::NOTEMPTY,
        };
        if is_dot(name) {
            return Err(self.name_err(op, parent, name, dot));
        }
        check_name(op, parent, name)?;
        let g = parent.dir_lock().write();
        let node = self
            .lookup_locked(parent, name)?
            .ok_or_else(|| self.name_err(op, parent, name, Errno::NOENT))?;
        if (node.kind == FileKind::Directory) != dir {
            let e = if dir { Errno::NOTDIR } else { Errno::ISDIR };
            return Err(self.name_err(op, parent, name, e));
        }
        Ok((g, node))
    }

    /// Remove a non-directory; leaves a whiteout where a lower name exists.
    pub fn unlink(&self, parent: &NodeRef, name: &OsStr) -> Result<()> {
        let op = "unlink";
        let (_g, node) = self.lock_old_name(op, parent, name, false)?;
        let pdir = self.upper_dir_of(parent)?;
        let err = |e: Errno| self.name_err(op, parent, name, e);
        // index=on: a name of a hard-linked lower file is copied up (linked to its index
        // entry) before it goes, which counts its names (the kernel's `ovl_nlink_start`).
        self.nlink_copy_up(&node)?;
        let _c = node.copy_lock.lock();
        let _ig = self.index_guard(&node);
        let nlink_before = self.nlink_start(&node)?;
        let need_wh = self.need_whiteout(parent, name, &node).map_err(err)?;
        self.stash_attr(&node);
        let r = self.unlink_locked(op, parent, name, &node, &pdir, need_wh);
        if r.is_ok() {
            self.nlink_end(&node, nlink_before);
        }
        r
    }

    /// The removal of [`Overlay::unlink`], with the locks held.
    fn unlink_locked(
        &self,
        op: &'static str,
        parent: &NodeRef,
        name: &OsStr,
        node: &NodeRef,
        pdir: &OwnedFd,
        need_wh: bool,
    ) -> Result<()> {
        let err = |e: Errno| self.name_err(op, parent, name, e);
        let work = self.layers.work();
        if node.state.read().upper {
            if need_wh {
                let wh = self.layers.make_staged_whiteout().map_err(err)?;
                if let Err(e) = rustix::fs::renameat(work, &*wh, pdir.as_fd(), name) {
                    let _ = rustix::fs::unlinkat(work, &*wh, AtFlags::empty());
                    return Err(err(e));
                }
            } else {
                rustix::fs::unlinkat(pdir.as_fd(), name, AtFlags::empty()).map_err(err)?;
            }
        } else {
            self.place_whiteout(pdir.as_fd(), name).map_err(err)?;
        }
        self.detach(parent, name, node);
        Ok(())
    }

    /// Does removing `node` (named `name` in `parent`) need a whiteout?
    fn need_whiteout(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        node: &NodeRef,
    ) -> std::result::Result<bool, Errno> {
        // A node that lives only in lower layers, or a directory with lower objects (those
        // are never renamed: EXDEV), was found in the lower layers (which do not change) under
        // this name with no whiteout above it: yes without asking the layers again. Renamed
        // copied-up files keep their lower objects but not their name: ask the layers.
        {
            let st = node.state.read();
            // A redirected directory's lower part lives under another name: ask the layers.
            if !st.lowers.is_empty()
                && st.redirect.is_none()
                && (!st.upper || node.kind == FileKind::Directory)
            {
                return Ok(true);
            }
        }
        self.lower_positive(parent, name)
    }

    /// Put a whiteout at `name` in upper dir `pdir` where nothing is: one `linkat` to the
    /// shared whiteout (or `mknodat`), which creates the complete whiteout atomically (EEXIST
    /// if something is there).
    fn place_whiteout(&self, pdir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<(), Errno> {
        self.layers.make_whiteout(pdir, name)
    }

    /// Remove the upper directory of `node`, moved to `work/tmp`, which holds only the
    /// `whiteouts` listed by the emptiness check (under the directory locks): they are removed
    /// by name through the directory's fd `dir` (opened before the move), then the
    /// directory. Anything unexpected left inside is removed as a tree.
    fn clear_removed_dir(
        &self,
        dir: Option<Arc<OwnedFd>>,
        tmp: &OsStr,
        whiteouts: &[OsString],
    ) -> std::result::Result<(), Errno> {
        let work = self.layers.work();
        if let Some(fd) = dir {
            for w in whiteouts {
                match rustix::fs::unlinkat(fd.as_fd(), w, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        match rustix::fs::unlinkat(work, tmp, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(()),
            Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => remove_tree_at(work, tmp),
            Err(e) => Err(e),
        }
    }

    /// Remove a directory that is empty in the merged view; leaves a whiteout where a lower
    /// name exists. Leftover whiteouts inside the upper directory are removed through the
    /// workdir.
    pub fn rmdir(&self, parent: &NodeRef, name: &OsStr) -> Result<()> {
        let op = "rmdir";
        let (_g, node) = self.lock_old_name(op, parent, name, true)?;
        let _cg = node.dir_lock().write();
        let Some(whiteouts) = self.merged_empty_locked(&node)? else {
            return Err(self.name_err(op, parent, name, Errno::NOTEMPTY));
        };
        let pdir = self.upper_dir_of(parent)?;
        let err = |e: Errno| self.name_err(op, parent, name, e);
        let _c = node.copy_lock.lock();
        let need_wh = self.need_whiteout(parent, name, &node).map_err(err)?;
        let work = self.layers.work();
        self.stash_attr(&node);
        if node.state.read().upper {
            let ufd = self.dir_fd(&node, LayerRef::Upper).ok();
            if need_wh {
                // One step from "empty directory" to "whiteout" in the merged view: a staged
                // whiteout and the directory change places (as the kernel does), then the
                // directory is removed from the workdir.
                let tmp = self.layers.make_staged_whiteout().map_err(err)?;
                if let Err(e) =
                    rustix::fs::renameat_with(work, &*tmp, pdir.as_fd(), name, RxRename::EXCHANGE)
                {
                    let _ = rustix::fs::unlinkat(work, &*tmp, AtFlags::empty());
                    return Err(err(e));
                }
                self.clear_removed_dir(ufd, &tmp, &whiteouts).map_err(err)?;
            } else {
                match rustix::fs::unlinkat(pdir.as_fd(), name, AtFlags::REMOVEDIR) {
                    Ok(()) => {}
                    Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {
                        let tmp = self.layers.staging_name();
                        rustix::fs::renameat(pdir.as_fd(), name, work, &*tmp).map_err(err)?;
                        self.clear_removed_dir(ufd, &tmp, &whiteouts).map_err(err)?;
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        } else {
            self.place_whiteout(pdir.as_fd(), name).map_err(err)?;
        }
        self.detach(parent, name, &node);
        Ok(())
    }

    /// Write `overlay.redirect` on the upper copy of directory `node` (which has lower
    /// directories and is about to move; `same_dir`: within its parent), as the kernel's
    /// `ovl_set_redirect`: a move within the parent needs a relative redirect (the current
    /// name), any other an absolute one (the path from the root, each ancestor named by its
    /// own redirect where it has one, up to an absolute one). A redirect the directory has
    /// already is kept where it still fits (any one within the parent, an absolute one
    /// anywhere). An absolute redirect longer than the kernel's `redirect_max` (256 bytes)
    /// gives EXDEV (a program falls back to copying, as with the kernel).
    ///
    /// Returns what the node's state is to say once it has moved: the redirect, and the
    /// paths of its lower directories (which no longer follow from its name).
    fn set_redirect(
        &self,
        node: &NodeRef,
        same_dir: bool,
    ) -> std::result::Result<Redirected, Errno> {
        use std::os::unix::ffi::OsStrExt;
        let st = node.state.read().clone();
        // As the kernel's `ovl_need_absolute_redirect`: a file with other names below (a
        // lower hard link) needs an absolute one even within its directory.
        let same_dir = same_dir
            && (node.kind == FileKind::Directory
                || match st.lowers.first() {
                    Some(l) => self
                        .real(node, LayerRef::Lower(l.layer))
                        .and_then(|r| r.stat())
                        .is_ok_and(|s| s.st_nlink <= 1),
                    None => true,
                });
        let mut r = st.redirect.as_deref().cloned().unwrap_or_default();
        if st.indexed && node.kind != FileKind::Directory && r.upper.is_none() {
            // index=on: all names are one inode, whose redirect (set through another name,
            // maybe) is the upper inode's, as the kernel keeps it in the shared inode.
            if let Ok(v) = self
                .real(node, LayerRef::Upper)
                .and_then(|u| u.getxattr(OsStr::new(self.layers.ns.redirect())))
            {
                r.upper = Some(v.into_boxed_slice());
            }
        }
        for le in &st.lowers {
            if r.path_in(le.layer).is_none() {
                let p = self.lower_dir_path(node, le.layer);
                r.paths.push((le.layer, p));
            }
        }
        let keep = match &r.upper {
            Some(v) => same_dir || v.starts_with(b"/"),
            None => false,
        };
        if keep {
            return Ok(r);
        }
        let value: Vec<u8> = if same_dir {
            let (_, name) = node.parent_name().ok_or(Errno::XDEV)?;
            name.as_os_str().as_bytes().to_vec()
        } else {
            // Components from the node up, each a name or an ancestor's redirect.
            let mut comps: Vec<Vec<u8>> = Vec::new();
            let mut len = 0usize;
            let mut cur = node.clone();
            while let Some((parent, name)) = cur.parent_name() {
                let own = cur
                    .state
                    .read()
                    .redirect
                    .as_ref()
                    .and_then(|r| r.upper.clone());
                let c: Vec<u8> = match own {
                    Some(v) => v.into_vec(),
                    None => name.as_os_str().as_bytes().to_vec(),
                };
                let absolute = c.starts_with(b"/");
                len += c.len() + usize::from(!absolute);
                if len > REDIRECT_MAX {
                    return Err(Errno::XDEV);
                }
                comps.push(c);
                if absolute {
                    break;
                }
                cur = parent;
            }
            let mut v = Vec::with_capacity(len);
            for c in comps.iter().rev() {
                if !c.starts_with(b"/") {
                    v.push(b'/');
                }
                v.extend_from_slice(c);
            }
            v
        };
        let upper = self.real(node, LayerRef::Upper)?;
        // As the kernel: a redirect that cannot be set makes the rename EXDEV.
        upper
            .setxattr(
                OsStr::new(self.layers.ns.redirect()),
                &value,
                XattrFlags::empty(),
            )
            .map_err(|_| Errno::XDEV)?;
        r.upper = Some(value.into_boxed_slice());
        Ok(r)
    }

    /// Rename. Non-directories always work (copy-up, whiteout left at the old name if a lower
    /// object existed); directories with lower directories only with `redirect_dir=on` (the
    /// upper copy gets the kernel's `overlay.redirect`), EXDEV otherwise.
    /// `RenameFlags::EXCHANGE` and `NOREPLACE` behave as for `renameat2`.
    pub fn rename(
        &self,
        parent: &NodeRef,
        name: &OsStr,
        new_parent: &NodeRef,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        let op = "rename";
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        let noreplace = flags.contains(RenameFlags::NOREPLACE);
        if flags.bits() & !RenameFlags::all().bits() != 0 || (exchange && noreplace) {
            return Err(self.name_err(op, parent, name, Errno::INVAL));
        }
        self.check_dir(op, parent)?;
        self.check_dir(op, new_parent)?;
        if is_dot(name) {
            return Err(self.name_err(op, parent, name, Errno::BUSY));
        }
        if is_dot(new_name) {
            let e = if noreplace { Errno::EXIST } else { Errno::BUSY };
            return Err(self.name_err(op, new_parent, new_name, e));
        }
        self.check_writable(op, || parent.rel_path().join(name))?;
        check_name(op, parent, name)?;
        check_name(op, new_parent, new_name)?;

        let same_dir = Arc::ptr_eq(parent, new_parent);
        let _rl = if same_dir {
            None
        } else {
            Some(self.rename_lock.lock())
        };
        let first_is_parent = if same_dir || parent.is_ancestor_of(new_parent) {
            true
        } else if new_parent.is_ancestor_of(parent) {
            false
        } else {
            Arc::as_ptr(parent) < Arc::as_ptr(new_parent)
        };
        let (_g1, _g2) = if same_dir {
            (parent.dir_lock().write(), None)
        } else if first_is_parent {
            let a = parent.dir_lock().write();
            (a, Some(new_parent.dir_lock().write()))
        } else {
            let b = new_parent.dir_lock().write();
            (parent.dir_lock().write(), Some(b))
        };
        if parent.is_unlinked() {
            return Err(self.name_err(op, parent, name, Errno::NOENT));
        }
        let src = self
            .lookup_locked(parent, name)?
            .ok_or_else(|| self.name_err(op, parent, name, Errno::NOENT))?;
        if new_parent.is_unlinked() {
            return Err(self.name_err(op, new_parent, new_name, Errno::NOENT));
        }
        let dst = self.lookup_locked(new_parent, new_name)?;
        let nerr = |e: Errno| self.name_err(op, new_parent, new_name, e);
        let serr = |e: Errno| self.name_err(op, parent, name, e);
        if noreplace && dst.is_some() {
            return Err(nerr(Errno::EXIST));
        }
        if exchange && dst.is_none() {
            return Err(nerr(Errno::NOENT));
        }
        if src.kind == FileKind::Directory && src.is_ancestor_of(new_parent) {
            return Err(serr(Errno::INVAL));
        }
        if let Some(d) = &dst {
            if d.kind == FileKind::Directory && d.is_ancestor_of(parent) {
                return Err(nerr(if exchange {
                    Errno::INVAL
                } else {
                    Errno::NOTEMPTY
                }));
            }
            // The same overlay inode under both names (hard links in the upper layer, or
            // of an indexed lower file): nothing to do, as the VFS decides before the
            // kernel overlay sees the rename. (Without the index, the kernel's lower hard
            // links are inodes of their own.)
            let same_inode = src.kind != FileKind::Directory
                && d.kind == src.kind
                && d.ino() == src.ino()
                && ((src.state.read().upper && d.state.read().upper)
                    || (src.is_indexed_link() && d.is_indexed_link()));
            if Arc::ptr_eq(d, &src) || same_inode {
                return Ok(());
            }
            if !exchange {
                if src.kind == FileKind::Directory && d.kind != FileKind::Directory {
                    return Err(nerr(Errno::NOTDIR));
                }
                if src.kind != FileKind::Directory && d.kind == FileKind::Directory {
                    return Err(nerr(Errno::ISDIR));
                }
            }
        }
        // A directory with lower directories moves only with redirect_dir=on (its upper
        // copy then points to them): EXDEV otherwise, as the kernel's.
        let moves_lowers =
            |n: &Node| n.kind == FileKind::Directory && !n.state.read().lowers.is_empty();
        let can_redirect =
            self.opts.redirect_dir == crate::mount::RedirectDir::On && self.follow_redirects();
        let src_redirect = moves_lowers(&src);
        let dst_redirect = exchange && dst.as_deref().is_some_and(moves_lowers);
        if src_redirect && !can_redirect {
            return Err(serr(Errno::XDEV));
        }
        if dst_redirect && !can_redirect {
            return Err(nerr(Errno::XDEV));
        }
        // A directory replaced by the rename must be empty. As the kernel, one with lower
        // directories is checked now, a pure upper one (whose emptiness the kernel leaves to
        // the upper filesystem's rename) only after the copy-ups and the redirect or opaque
        // marker of the source: those stay when the rename then fails.
        let mut check_empty_late = false;
        let _dg = match &dst {
            Some(d) if !exchange && d.kind == FileKind::Directory => {
                let g = d.dir_lock().write();
                if !d.state.read().lowers.is_empty() {
                    if self.merged_empty_locked(d)?.is_none() {
                        return Err(nerr(Errno::NOTEMPTY));
                    }
                } else {
                    check_empty_late = true;
                }
                Some(g)
            }
            _ => None,
        };

        // Copy-ups (parents first), then the per-node locks of both names.
        let pdir = self.upper_dir_of(parent)?;
        let npdir = self.upper_dir_of(new_parent)?;
        self.copy_up_meta(&src)?;
        if let Some(d) = &dst {
            if exchange {
                self.copy_up_meta(d)?;
            } else {
                // index=on: a replaced name of a hard-linked lower file is copied up first
                // (the kernel's `ovl_nlink_start`).
                self.nlink_copy_up(d)?;
            }
        }
        let (_c1, _c2) = match &dst {
            None => (src.copy_lock.lock(), None),
            Some(d) if Arc::as_ptr(&src) < Arc::as_ptr(d) => {
                let a = src.copy_lock.lock();
                (a, Some(d.copy_lock.lock()))
            }
            Some(d) => {
                let b = d.copy_lock.lock();
                (src.copy_lock.lock(), Some(b))
            }
        };
        let work = self.layers.work();
        let need_wh = !exchange && self.lower_positive(parent, name).map_err(serr)?;
        // A pure-upper directory moved into a merged directory must not merge with lower
        // directories of its new name: mark it opaque, as the kernel does.
        let opaque = self.layers.ns.opaque();
        if src.kind == FileKind::Directory && !src_redirect && new_parent.state.read().is_merge() {
            let r = self.real(&src, LayerRef::Upper).map_err(serr)?;
            r.setxattr(OsStr::new(opaque), b"y", XattrFlags::empty())
                .map_err(serr)?;
        }
        if let Some(d) = &dst {
            if exchange
                && d.kind == FileKind::Directory
                && !dst_redirect
                && parent.state.read().is_merge()
            {
                let r = self.real(d, LayerRef::Upper).map_err(nerr)?;
                r.setxattr(OsStr::new(opaque), b"y", XattrFlags::empty())
                    .map_err(nerr)?;
            }
        }
        // A moving directory with lower directories, or a metadata-only copy, gets
        // `overlay.redirect` to them (before the rename, from where it is now, as the
        // kernel's `ovl_set_redirect`).
        let src_redirect = src_redirect || self.metacopy_now(&src);
        let dst_redirect =
            dst_redirect || exchange && dst.as_ref().is_some_and(|d| self.metacopy_now(d));
        // The node learns its redirect at once (the lower paths it records hold before and
        // after the move), as the kernel's in-memory one, which stays if the rename fails.
        if src_redirect {
            let r = self.set_redirect(&src, same_dir).map_err(serr)?;
            src.state.write().redirect = Some(Arc::new(r));
        }
        if let Some(d) = &dst {
            if dst_redirect {
                let r = self.set_redirect(d, same_dir).map_err(nerr)?;
                d.state.write().redirect = Some(Arc::new(r));
            }
        }
        if check_empty_late {
            if let Some(d) = &dst {
                if self.merged_empty_locked(d)?.is_none() {
                    return Err(nerr(Errno::NOTEMPTY));
                }
            }
        }

        // The replaced object's attributes from removal time, taken while its name still
        // holds it.
        let mut dst_nlink = None;
        let _ig = match (exchange, &dst) {
            (false, Some(d)) => self.index_guard(d),
            _ => None,
        };
        if let (false, Some(d)) = (exchange, &dst) {
            dst_nlink = self.nlink_start(d)?;
            self.stash_attr(d);
        }
        if exchange {
            rustix::fs::renameat_with(
                pdir.as_fd(),
                name,
                npdir.as_fd(),
                new_name,
                RxRename::EXCHANGE,
            )
            .map_err(serr)?;
        } else {
            let mut target = upper_name(npdir.as_fd(), new_name).map_err(nerr)?;
            if let (UpperName::Present(st), Some(d)) = (&target, &dst) {
                if d.kind == FileKind::Directory && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    // Clear leftover whiteouts of the replaced directory through the workdir.
                    let tmp = self.layers.staging_name();
                    rustix::fs::mkdirat(work, &*tmp, Mode::from_raw_mode(0o700)).map_err(nerr)?;
                    rustix::fs::renameat_with(
                        work,
                        &*tmp,
                        npdir.as_fd(),
                        new_name,
                        RxRename::EXCHANGE,
                    )
                    .map_err(nerr)?;
                    remove_tree_at(work, &tmp).map_err(nerr)?;
                    target = UpperName::Present(*st);
                }
            }
            match target {
                UpperName::Whiteout => {
                    if need_wh {
                        rustix::fs::renameat_with(
                            pdir.as_fd(),
                            name,
                            npdir.as_fd(),
                            new_name,
                            RxRename::EXCHANGE,
                        )
                        .map_err(serr)?;
                    } else if src.kind == FileKind::Directory {
                        rustix::fs::renameat_with(
                            pdir.as_fd(),
                            name,
                            npdir.as_fd(),
                            new_name,
                            RxRename::EXCHANGE,
                        )
                        .map_err(serr)?;
                        rustix::fs::unlinkat(pdir.as_fd(), name, AtFlags::empty()).map_err(serr)?;
                    } else {
                        rustix::fs::renameat(pdir.as_fd(), name, npdir.as_fd(), new_name)
                            .map_err(serr)?;
                    }
                }
                UpperName::Absent | UpperName::Present(_) => {
                    let fl = if need_wh {
                        RxRename::WHITEOUT
                    } else {
                        RxRename::empty()
                    };
                    rustix::fs::renameat_with(pdir.as_fd(), name, npdir.as_fd(), new_name, fl)
                        .map_err(serr)?;
                }
            }
        }

        if !same_dir
            && (!src.state.read().lowers.is_empty()
                || dst
                    .as_ref()
                    .is_some_and(|d| exchange && !d.state.read().lowers.is_empty()))
        {
            // Entries with an origin moved in: the kernel marks such directories impure.
            self.set_impure(npdir.as_fd());
            self.set_impure(pdir.as_fd());
        }

        // Update the node tree.
        if exchange {
            let d = dst.as_ref().expect("exchange target");
            parent.remove_child(name, Arc::as_ptr(&src));
            new_parent.remove_child(new_name, Arc::as_ptr(d));
            {
                let mut ls = src.loc.lock();
                ls.parent = Some(new_parent.clone());
                ls.name = NodeName::new(new_name);
            }
            {
                let mut ld = d.loc.lock();
                ld.parent = Some(parent.clone());
                ld.name = NodeName::new(name);
            }
            parent.set_child(name, d);
            new_parent.set_child(new_name, &src);
        } else {
            if let Some(d) = &dst {
                self.detach(new_parent, new_name, d);
                self.nlink_end(d, dst_nlink);
            }
            parent.remove_child(name, Arc::as_ptr(&src));
            {
                let mut ls = src.loc.lock();
                ls.parent = Some(new_parent.clone());
                ls.name = NodeName::new(new_name);
            }
            new_parent.set_child(new_name, &src);
        }
        Ok(())
    }
}

impl Overlay {
    /// Create and open an unnamed regular file in directory `parent` (`open(O_TMPFILE)`),
    /// as the kernel overlay does: in the upper copy of `parent` (copied up first), with the
    /// mode rules of [`Overlay::create`]. `flags`: the access mode and status flags of the
    /// open. The node has no name in the tree until [`Overlay::link_tmpfile`] gives it one.
    pub fn tmpfile(
        &self,
        parent: &NodeRef,
        mode: impl Into<NewMode>,
        flags: i32,
        owner: Option<Owner>,
    ) -> Result<(NodeRef, File)> {
        let op = "tmpfile";
        let NewMode { mode, umask } = mode.into();
        self.check_dir(op, parent)?;
        self.check_writable(op, || parent.rel_path())?;
        let err = |e: Errno| self.node_err(op, parent, e);
        let pdir = self.upper_dir_of(parent)?;
        let default_acl = super::layers::read_xattr(|b| {
            rustix::fs::fgetxattr(pdir.as_fd(), super::acl::DEFAULT_ACL, b)
        })
        .is_ok();
        let perm = if default_acl {
            mode & 0o7777
        } else {
            mode & 0o7777 & !(umask & 0o777)
        };
        let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_SYNC;
        let f = OFlags::from_bits_retain((flags & keep) as u32) | OFlags::TMPFILE | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(pdir.as_fd(), ".", f, Mode::from_raw_mode(perm)).map_err(err)?;
        if let Some(o) = owner {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(o.uid)),
                Some(rustix::fs::Gid::from_raw(o.gid)),
            )
            .map_err(err)?;
        }
        let st = rustix::fs::fstat(&fd).map_err(err)?;
        // Without a default ACL the bits are exactly the requested ones (the daemon's umask
        // and a chown's clearing of set-id bits aside); with one, the filesystem's.
        if !default_acl && st.st_mode & 0o7777 != perm {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(perm)).map_err(err)?;
        }
        let ino = self.layers.map_ino(LayerRef::Upper, st.st_ino);
        let node = Arc::new(Node::new(
            ino,
            FileKind::File,
            Some(parent.clone()),
            OsStr::new(""),
            NodeState {
                upper: true,
                ..Default::default()
            },
        ));
        Ok((node, File::from(fd)))
    }

    /// Give the unnamed file `file` (node `node`, from [`Overlay::tmpfile`]) the name
    /// `new_parent/new_name` (`linkat` of an `O_TMPFILE` descriptor).
    pub fn link_tmpfile(
        &self,
        file: &File,
        node: &NodeRef,
        new_parent: &NodeRef,
        new_name: &OsStr,
    ) -> Result<NodeRef> {
        let op = "link";
        let _g = self.lock_new_name(op, new_parent, new_name)?;
        let fd = file.as_fd().try_clone_to_owned().map_err(|e| {
            self.name_err(
                op,
                new_parent,
                new_name,
                Errno::from_io_error(&e).unwrap_or(Errno::IO),
            )
        })?;
        let src = RealObj {
            layer: LayerRef::Upper,
            dir: Arc::new(fd),
            name: None,
        };
        let (n, _) = self.create_upper(
            op,
            new_parent,
            new_name,
            None,
            NewObj::Link { src, of: node },
            0,
        )?;
        Ok(n)
    }
}
