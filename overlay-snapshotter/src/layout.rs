//! The snapshotter's directory: `ROOT/metadata.redb`, and `ROOT/snapshots/ID/{fs,work}` for
//! each snapshot (short paths, so a long chain fits the kernel's one-page option string once
//! containerd mounts it from `ROOT/snapshots` with relative lowers).
//!
//! A new snapshot's directory is made as `snapshots/new-*` and renamed to its id inside the
//! database transaction that records it ([`Layout::make_snapshot_dir`]); anything in
//! `snapshots/` whose name is not a recorded id is an orphan for [`Layout::orphans`].

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::error::{Error, Result};
use crate::store::{Kind, Usage};

/// The paths under the root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root` (an absolute path); creates `root` (0700) and
    /// `root/snapshots`.
    pub fn create(root: &Path) -> Result<Layout> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| Error::io("create root directory", root, e))?;
        let root = fs::canonicalize(root).map_err(|e| Error::io("resolve root", root, e))?;
        let l = Layout { root };
        match fs::DirBuilder::new().mode(0o700).create(l.snapshots()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create", l.snapshots(), e)),
        }
        Ok(l)
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/snapshots`.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `ROOT/snapshots/ID`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }

    /// `ROOT/snapshots/ID/fs`: the snapshot's own layer.
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// `ROOT/snapshots/ID/work`: the overlay workdir of an active snapshot.
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    /// Make `ROOT/snapshots/ID` with `fs/` (0755, owned like the parent's `fs/`) and, for an
    /// active snapshot, `work/` (0711): built as `new-*` and renamed into place. A
    /// directory already named ID is an orphan of a crash before its record was committed
    /// (ids are never reused): it is removed first.
    pub fn make_snapshot_dir(&self, id: u64, kind: Kind, parent: Option<u64>) -> Result<()> {
        let tmp = overlay_core::mount::private_dir_in(&self.snapshots(), "new").map_err(|e| {
            Error::Io {
                op: "create a new snapshot directory in",
                path: self.snapshots(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        let made = (|| {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("chmod", &tmp, e))?;
            let fsdir = tmp.join("fs");
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&fsdir)
                .map_err(|e| Error::io("create", &fsdir, e))?;
            // The mode must not depend on the umask (containerd's RootPermission check).
            fs::set_permissions(&fsdir, fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io("chmod", &fsdir, e))?;
            if let Some(p) = parent {
                let pfs = self.fs(p);
                let md = fs::metadata(&pfs).map_err(|e| Error::io("stat parent layer", &pfs, e))?;
                rustix::fs::chown(
                    &fsdir,
                    Some(rustix::fs::Uid::from_raw(md.uid())),
                    Some(rustix::fs::Gid::from_raw(md.gid())),
                )
                .map_err(|e| Error::io("chown", &fsdir, e.into()))?;
            }
            if kind == Kind::Active {
                let w = tmp.join("work");
                fs::DirBuilder::new()
                    .mode(0o711)
                    .create(&w)
                    .map_err(|e| Error::io("create", &w, e))?;
            }
            let dst = self.dir(id);
            if fs::symlink_metadata(&dst).is_ok() {
                tracing::warn!(
                    "{} exists but no snapshot has id {id}: an orphan of a crash; removing it",
                    dst.display()
                );
                remove_tree(&dst)?;
            }
            fs::rename(&tmp, &dst).map_err(|e| Error::io("rename into place", &dst, e))
        })();
        if made.is_err() {
            let _ = remove_tree(&tmp);
        }
        made
    }

    /// Remove a snapshot's directory (after its record is gone).
    pub fn remove_snapshot_dir(&self, id: u64) -> Result<()> {
        remove_tree(&self.dir(id))
    }

    /// Entries of `ROOT/snapshots` that are not a recorded id: half-made (`new-*`) or
    /// left by a crash between a record's removal and its directory's.
    pub fn orphans(&self, ids: &HashSet<u64>) -> Result<Vec<PathBuf>> {
        let dir = self.snapshots();
        let mut v = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let e = e.map_err(|e| Error::io("list", &dir, e))?;
            let name = e.file_name();
            let known = name
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|id| ids.contains(&id) && name.to_str() == Some(&id.to_string()));
            if !known {
                v.push(e.path());
            }
        }
        v.sort();
        Ok(v)
    }
}

/// Open directory `name` under `dir` without following a symlink.
fn open_dir_at(dir: impl AsFd, name: &CStr) -> std::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
}

/// Visit every directory of the tree at `root` (never through a symlink: each directory is
/// opened relative to its parent's fd with `O_NOFOLLOW`, so a layer's content cannot lead the
/// walk elsewhere), and every entry in it. Iterative: depth costs heap, not stack.
fn walk_dirs(
    root: &Path,
    mut on_dir: impl FnMut(&OwnedFd) -> std::io::Result<()>,
    mut on_entry: impl FnMut(&OwnedFd, &CStr) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let top = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Directories still to visit: their parent's fd and their name.
    let mut pending: Vec<(Arc<OwnedFd>, CString)> = Vec::new();
    let mut visit = |fd: OwnedFd, pending: &mut Vec<(Arc<OwnedFd>, CString)>| {
        on_dir(&fd)?;
        let fd = Arc::new(fd);
        for e in rustix::fs::Dir::read_from(&*fd)? {
            let e = e?;
            let name = e.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            on_entry(&fd, name)?;
            let is_dir = match e.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(&*fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
                    .unwrap_or(false),
                _ => false,
            };
            if is_dir {
                pending.push((fd.clone(), name.to_owned()));
            }
        }
        Ok::<(), std::io::Error>(())
    };
    visit(top, &mut pending)?;
    while let Some((parent, name)) = pending.pop() {
        match open_dir_at(&*parent, &name) {
            Ok(fd) => visit(fd, &mut pending)?,
            // Removed or replaced (by a non-directory) meanwhile: nothing to visit.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc_errno::ENOENT | libc_errno::ENOTDIR | libc_errno::ELOOP)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The errno values the walk tolerates.
mod libc_errno {
    pub const ENOENT: i32 = rustix::io::Errno::NOENT.raw_os_error();
    pub const ENOTDIR: i32 = rustix::io::Errno::NOTDIR.raw_os_error();
    pub const ELOOP: i32 = rustix::io::Errno::LOOP.raw_os_error();
}

/// Remove a tree, first giving the owner access to directories the kernel left without
/// (an overlay workdir's `work/` is mode 000), which a non-root owner could not descend.
/// `remove_dir_all` itself never follows symlinks; the permission fix-up goes by fds.
pub fn remove_tree(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            let _ = walk_dirs(
                p,
                |fd| rustix::fs::fchmod(fd, Mode::from_raw_mode(0o700)).map_err(Into::into),
                |_, _| Ok(()),
            );
            fs::remove_dir_all(p).map_err(|e| Error::io("remove", p, e))
        }
    }
}

/// Disk usage of a tree as containerd counts it (`continuity/fs.DiskUsage`): every inode
/// once (hard links), the root included; bytes are `st_blocks * 512`. Walks by fds, never
/// through a symlink.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut u = Usage::default();
    // st_blocks is i64 on some targets and u64 on others.
    #[allow(clippy::unnecessary_cast)]
    let mut count = |st: &rustix::fs::Stat| {
        if seen.insert((st.st_dev, st.st_ino)) {
            u.inodes += 1;
            u.size += st.st_blocks as i64 * 512;
        }
    };
    count(&rustix::fs::lstat(root).map_err(|e| Error::io("measure", root, e.into()))?);
    walk_dirs(
        root,
        |_| Ok(()),
        |dir, name| {
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => count(&st),
                // Removed while we looked: not part of the usage.
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            Ok(())
        },
    )
    .map_err(|e| Error::io("measure", root, e))?;
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), vec![1u8; 10000]).unwrap();
        fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        let u = disk_usage(d.path()).unwrap();
        assert_eq!(u.inodes, 3);
        assert!(u.size >= 10000);
    }

    #[test]
    fn walks_never_follow_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("big"), vec![1u8; 1 << 20]).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o750)).unwrap();
        let tree = d.path().join("tree");
        fs::create_dir_all(tree.join("w/work")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        let u = disk_usage(&tree).unwrap();
        assert_eq!(u.inodes, 4);
        assert!(u.size < 1 << 20);
        fs::set_permissions(tree.join("w/work"), fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(
            fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
            0o750
        );
        assert!(outside.join("big").exists());
    }

    #[test]
    fn orphans_are_what_the_store_does_not_name() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::create(&d.path().join("root")).unwrap();
        l.make_snapshot_dir(1, Kind::Active, None).unwrap();
        l.make_snapshot_dir(2, Kind::View, None).unwrap();
        fs::create_dir(l.snapshots().join("new-x")).unwrap();
        fs::create_dir(l.snapshots().join("01")).unwrap();
        let ids: HashSet<u64> = [1].into();
        let o = l.orphans(&ids).unwrap();
        assert_eq!(
            o,
            vec![
                l.snapshots().join("01"),
                l.snapshots().join("2"),
                l.snapshots().join("new-x")
            ]
        );
        assert_eq!(
            fs::metadata(l.fs(1)).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert!(l.work(1).is_dir() && !l.work(2).exists());
    }
}
