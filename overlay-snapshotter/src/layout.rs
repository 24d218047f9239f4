//! The snapshotter's directory: `ROOT/metadata.redb`, and `ROOT/snapshots/ID/{fs,work}` for
//! each snapshot (short paths, so a long chain fits the kernel's one-page option string once
//! containerd mounts it from `ROOT/snapshots` with relative lowers).
//!
//! A new snapshot's directory is made as `snapshots/new-*` and renamed to its id inside the
//! database transaction that records it ([`Layout::make_snapshot_dir`]); anything in
//! `snapshots/` whose name is not a recorded id is an orphan for [`Layout::orphans`].

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// Remove a tree, first giving the owner access to directories the kernel left without
/// (an overlay workdir's `work/` is mode 000), which a non-root owner could not descend.
pub fn remove_tree(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            let mut stack = vec![p.to_path_buf()];
            while let Some(d) = stack.pop() {
                let Ok(md) = fs::symlink_metadata(&d) else {
                    continue;
                };
                if md.is_dir() {
                    let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
                    if let Ok(rd) = fs::read_dir(&d) {
                        stack.extend(rd.flatten().map(|e| e.path()));
                    }
                }
            }
            fs::remove_dir_all(p).map_err(|e| Error::io("remove", p, e))
        }
    }
}

/// Disk usage of a tree as containerd counts it (`continuity/fs.DiskUsage`): every inode
/// once (hard links), the root included; bytes are `st_blocks * 512`. Iterative: a deep
/// tree costs heap, not stack. Does not cross into other filesystems' mounts.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut u = Usage::default();
    let md = fs::symlink_metadata(root).map_err(|e| Error::io("measure", root, e))?;
    let dev = md.dev();
    let mut stack = vec![(root.to_path_buf(), md)];
    while let Some((p, md)) = stack.pop() {
        if seen.insert((md.dev(), md.ino())) {
            u.inodes += 1;
            u.size += (md.blocks() as i64) * 512;
        }
        if md.is_dir() && md.dev() == dev {
            let rd = match fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) => return Err(Error::io("measure", &p, e)),
            };
            for e in rd {
                let e = e.map_err(|e| Error::io("measure", &p, e))?;
                let path = e.path();
                match fs::symlink_metadata(&path) {
                    Ok(m) => stack.push((path, m)),
                    // Removed while we looked: not part of the usage.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("measure", &path, e)),
                }
            }
        }
    }
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
