//! A path-based convenience API over the node API of [`Overlay`], for library users who want
//! `std::fs`-like calls on the merged view without mounting anything.
//!
//! ```no_run
//! use overlay_core::{LayerStack, Overlay};
//!
//! let stack = LayerStack::builder()
//!     .lower("/srv/base")
//!     .upper("/srv/upper", "/srv/work")
//!     .build()?;
//! let ovl = Overlay::new(stack)?;
//! let fs = ovl.path();
//! fs.create_dir_all("etc/app", 0o755)?;
//! fs.write("etc/app/config", b"key = 1\n")?;
//! for e in fs.read_dir("etc")? {
//!     println!("{}", e.name.to_string_lossy());
//! }
//! fs.rename("etc/app/config", "etc/app/config.old")?;
//! fs.remove_dir_all("etc/app")?;
//! # Ok::<(), overlay_core::Error>(())
//! ```
//!
//! Path rules:
//! * Paths are relative to the overlay root; a leading `/` is ignored, so `/etc` and `etc`
//!   are the same. `..` never leaves the root (as in a chroot).
//! * Symlinks met in the middle of a path are followed *inside the overlay* (absolute targets
//!   start at the overlay root), at most 40 of them (ELOOP beyond). Calls named after `lstat`
//!   semantics ([`PathApi::symlink_metadata`], [`PathApi::read_link`], removals, renames) do
//!   not follow a final symlink; the others ([`PathApi::metadata`], [`PathApi::open`],
//!   [`PathApi::read`], ...) do.
//! * Errors are [`crate::Error`]s naming the operation and the path, with the errno the
//!   kernel overlay would give.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::engine::{
    Attr, DirEntry, FileKind, NodeRef, Overlay, Owner, RenameFlags, SetAttr, TimeSet,
};
use crate::error::{Error, Result};

/// Maximum number of symlinks followed while resolving one path (the kernel's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// Path-based calls on an [`Overlay`]; get one with [`Overlay::path`].
#[derive(Debug, Clone, Copy)]
pub struct PathApi<'a> {
    ovl: &'a Overlay,
    owner: Option<Owner>,
}

impl Overlay {
    /// The path-based API over this overlay.
    pub fn path(&self) -> PathApi<'_> {
        PathApi {
            ovl: self,
            owner: None,
        }
    }
}

fn err(op: &'static str, path: &Path, errno: i32) -> Error {
    Error::errno(op, path, errno)
}

impl<'a> PathApi<'a> {
    /// Create new objects owned by `owner` (default: the process's own ids).
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The overlay this API works on.
    pub fn overlay(&self) -> &'a Overlay {
        self.ovl
    }

    /// Resolve `path` to a node, following a final symlink when `follow`.
    pub fn resolve(&self, path: impl AsRef<Path>, follow: bool) -> Result<NodeRef> {
        let mut budget = MAX_SYMLINKS;
        self.walk(&self.ovl.root(), path.as_ref(), follow, &mut budget)
    }

    fn walk(
        &self,
        start: &NodeRef,
        path: &Path,
        follow: bool,
        budget: &mut usize,
    ) -> Result<NodeRef> {
        let comps: Vec<Component<'_>> = path.components().collect();
        let mut cur = if path.is_absolute() {
            self.ovl.root()
        } else {
            start.clone()
        };
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            match c {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    cur = self.ovl.lookup(&cur, OsStr::new(".."))?;
                }
                Component::Normal(name) => {
                    if cur.kind() != FileKind::Directory {
                        return Err(err("resolve", path, libc::ENOTDIR));
                    }
                    let next = self.ovl.lookup(&cur, name)?;
                    if next.kind() == FileKind::Symlink && (!last || follow) {
                        if *budget == 0 {
                            return Err(err("resolve", path, libc::ELOOP));
                        }
                        *budget -= 1;
                        let target = PathBuf::from(self.ovl.readlink(&next)?);
                        cur = self.walk(&cur, &target, true, budget)?;
                    } else {
                        cur = next;
                    }
                }
            }
        }
        Ok(cur)
    }

    /// Resolve the parent directory of `path` and return it with the final name.
    fn parent_of(&self, op: &'static str, path: &Path) -> Result<(NodeRef, OsString)> {
        let name = match path.components().next_back() {
            Some(Component::Normal(n)) => n.to_os_string(),
            _ => return Err(err(op, path, libc::EINVAL)),
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        let dir = self.resolve(parent, true)?;
        if dir.kind() != FileKind::Directory {
            return Err(err(op, path, libc::ENOTDIR));
        }
        Ok((dir, name))
    }

    /// True when `path` exists (following symlinks).
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.resolve(path, true).is_ok()
    }

    /// Attributes, following a final symlink (`stat`).
    pub fn metadata(&self, path: impl AsRef<Path>) -> Result<Attr> {
        self.ovl.getattr(&self.resolve(path, true)?)
    }

    /// Attributes of the object itself (`lstat`).
    pub fn symlink_metadata(&self, path: impl AsRef<Path>) -> Result<Attr> {
        self.ovl.getattr(&self.resolve(path, false)?)
    }

    /// The merged listing of a directory.
    pub fn read_dir(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>> {
        self.ovl.readdir(&self.resolve(path, true)?)
    }

    /// Open an existing file with `open(2)` flags (write access copies it up).
    pub fn open(&self, path: impl AsRef<Path>, flags: i32) -> Result<File> {
        self.ovl.open(&self.resolve(path, true)?, flags)
    }

    /// Read a whole file.
    pub fn read(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        let path = path.as_ref();
        let mut f = self.open(path, libc::O_RDONLY)?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)
            .map_err(|e| Error::io("read", path, e))?;
        Ok(v)
    }

    /// Read a whole file as UTF-8.
    pub fn read_to_string(&self, path: impl AsRef<Path>) -> Result<String> {
        let path = path.as_ref();
        String::from_utf8(self.read(path)?).map_err(|_| err("read", path, libc::EILSEQ))
    }

    /// Create a file (or truncate an existing one) with mode `0o644` and write `data`.
    pub fn write(&self, path: impl AsRef<Path>, data: impl AsRef<[u8]>) -> Result<()> {
        let path = path.as_ref();
        let mut f = self.create_file(path, 0o644)?;
        f.write_all(data.as_ref())
            .map_err(|e| Error::io("write", path, e))
    }

    /// Create a file, or truncate an existing one, and open it for writing (`File::create`).
    pub fn create_file(&self, path: impl AsRef<Path>, mode: u32) -> Result<File> {
        let path = path.as_ref();
        if let Ok(n) = self.resolve(path, true) {
            return self.ovl.open(&n, libc::O_WRONLY | libc::O_TRUNC);
        }
        let (dir, name) = self.parent_of("create", path)?;
        Ok(self
            .ovl
            .create(
                &dir,
                &name,
                mode,
                libc::O_WRONLY | libc::O_TRUNC,
                self.owner,
            )?
            .1)
    }

    /// Create a new file; EEXIST if the name exists (`O_CREAT|O_EXCL`).
    pub fn create_new(&self, path: impl AsRef<Path>, mode: u32) -> Result<File> {
        let (dir, name) = self.parent_of("create", path.as_ref())?;
        Ok(self
            .ovl
            .create(&dir, &name, mode, libc::O_RDWR | libc::O_EXCL, self.owner)?
            .1)
    }

    /// Create a directory.
    pub fn create_dir(&self, path: impl AsRef<Path>, mode: u32) -> Result<()> {
        let (dir, name) = self.parent_of("mkdir", path.as_ref())?;
        self.ovl.mkdir(&dir, &name, mode, self.owner).map(|_| ())
    }

    /// Create a directory and its missing parents; existing directories are fine.
    pub fn create_dir_all(&self, path: impl AsRef<Path>, mode: u32) -> Result<()> {
        let path = path.as_ref();
        let mut cur = self.ovl.root();
        for c in path.components() {
            match c {
                Component::Normal(name) => {
                    cur = match self.ovl.lookup(&cur, name) {
                        Ok(n) if n.kind() == FileKind::Directory => n,
                        Ok(n) if n.kind() == FileKind::Symlink => self.resolve(n.path(), true)?,
                        Ok(_) => return Err(err("mkdir", path, libc::ENOTDIR)),
                        Err(e) if e.is_not_found() => {
                            match self.ovl.mkdir(&cur, name, mode, self.owner) {
                                Ok(n) => n,
                                Err(e) if e.raw_os_error() == libc::EEXIST => {
                                    self.ovl.lookup(&cur, name)?
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        Err(e) => return Err(e),
                    };
                }
                Component::ParentDir => cur = self.ovl.lookup(&cur, OsStr::new(".."))?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Remove a non-directory (a whiteout hides lower copies).
    pub fn remove_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let (dir, name) = self.parent_of("unlink", path.as_ref())?;
        self.ovl.unlink(&dir, &name)
    }

    /// Remove an empty directory.
    pub fn remove_dir(&self, path: impl AsRef<Path>) -> Result<()> {
        let (dir, name) = self.parent_of("rmdir", path.as_ref())?;
        self.ovl.rmdir(&dir, &name)
    }

    /// Remove a file or an empty directory, whichever `path` is.
    pub fn remove(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (dir, name) = self.parent_of("remove", path)?;
        let n = self.ovl.lookup(&dir, &name)?;
        if n.kind() == FileKind::Directory {
            self.ovl.rmdir(&dir, &name)
        } else {
            self.ovl.unlink(&dir, &name)
        }
    }

    /// Remove a directory tree (a final symlink is removed, not followed).
    pub fn remove_dir_all(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (dir, name) = self.parent_of("remove", path)?;
        self.remove_tree(&dir, &name)
    }

    /// Remove `name` in `dir` with everything inside. Iterative: the directories entered are
    /// kept on the heap (a directory is listed again after each subdirectory it held is
    /// gone), so a tree of any depth costs no stack.
    fn remove_tree(&self, dir: &NodeRef, name: &OsStr) -> Result<()> {
        let n = self.ovl.lookup(dir, name)?;
        if n.kind() != FileKind::Directory {
            return self.ovl.unlink(dir, name);
        }
        drop(n);
        // The directories entered, top first: each one's parent and name.
        let mut entered: Vec<(NodeRef, OsString)> = vec![(dir.clone(), name.to_os_string())];
        while let Some((parent, name)) = entered.last().cloned() {
            let n = self.ovl.lookup(&parent, &name)?;
            let mut subdir = None;
            for e in self.ovl.readdir(&n)? {
                if e.kind == FileKind::Directory {
                    subdir = Some(e.name);
                    break;
                }
                self.ovl.unlink(&n, &e.name)?;
            }
            match subdir {
                Some(s) => entered.push((n, s)),
                None => {
                    drop(n);
                    entered.pop();
                    self.ovl.rmdir(&parent, &name)?;
                }
            }
        }
        Ok(())
    }

    /// Rename (replacing a non-directory or empty directory target).
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
        self.rename_with(from, to, RenameFlags::empty())
    }

    /// Rename with `renameat2` flags.
    pub fn rename_with(
        &self,
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
        flags: RenameFlags,
    ) -> Result<()> {
        let (d1, n1) = self.parent_of("rename", from.as_ref())?;
        let (d2, n2) = self.parent_of("rename", to.as_ref())?;
        self.ovl.rename(&d1, &n1, &d2, &n2, flags)
    }

    /// Create a symlink at `link` pointing to `target`.
    pub fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<()> {
        let (dir, name) = self.parent_of("symlink", link.as_ref())?;
        self.ovl
            .symlink(&dir, &name, target.as_ref().as_os_str(), self.owner)
            .map(|_| ())
    }

    /// The target of a symlink.
    pub fn read_link(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        Ok(PathBuf::from(
            self.ovl.readlink(&self.resolve(path, false)?)?,
        ))
    }

    /// Hard-link `src` as `dst`.
    pub fn hard_link(&self, src: impl AsRef<Path>, dst: impl AsRef<Path>) -> Result<()> {
        let n = self.resolve(src, false)?;
        let (dir, name) = self.parent_of("link", dst.as_ref())?;
        self.ovl.link(&n, &dir, &name).map(|_| ())
    }

    /// Change permission bits (`chmod`).
    pub fn set_permissions(&self, path: impl AsRef<Path>, mode: u32) -> Result<()> {
        self.setattr(
            path,
            SetAttr {
                mode: Some(mode),
                ..SetAttr::default()
            },
        )
    }

    /// Change owner and/or group without following a final symlink (`lchown`).
    pub fn set_owner(
        &self,
        path: impl AsRef<Path>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        let n = self.resolve(path, false)?;
        self.ovl
            .setattr(
                &n,
                &SetAttr {
                    uid,
                    gid,
                    ..SetAttr::default()
                },
            )
            .map(|_| ())
    }

    /// Set access and modification times.
    pub fn set_times(
        &self,
        path: impl AsRef<Path>,
        atime: Option<TimeSet>,
        mtime: Option<TimeSet>,
    ) -> Result<()> {
        self.setattr(
            path,
            SetAttr {
                atime,
                mtime,
                ..SetAttr::default()
            },
        )
    }

    /// Truncate or extend a file.
    pub fn truncate(&self, path: impl AsRef<Path>, size: u64) -> Result<()> {
        self.setattr(
            path,
            SetAttr {
                size: Some(size),
                ..SetAttr::default()
            },
        )
    }

    /// Apply a [`SetAttr`] (following a final symlink).
    pub fn setattr(&self, path: impl AsRef<Path>, changes: SetAttr) -> Result<()> {
        self.ovl
            .setattr(&self.resolve(path, true)?, &changes)
            .map(|_| ())
    }

    /// Read an xattr of the object itself.
    pub fn get_xattr(&self, path: impl AsRef<Path>, name: impl AsRef<OsStr>) -> Result<Vec<u8>> {
        self.ovl
            .getxattr(&self.resolve(path, false)?, name.as_ref())
    }

    /// List xattr names of the object itself.
    pub fn list_xattr(&self, path: impl AsRef<Path>) -> Result<Vec<OsString>> {
        self.ovl.listxattr(&self.resolve(path, false)?)
    }

    /// Set an xattr on the object itself (flags: `XATTR_CREATE`/`XATTR_REPLACE` or 0).
    pub fn set_xattr(
        &self,
        path: impl AsRef<Path>,
        name: impl AsRef<OsStr>,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        self.ovl
            .setxattr(&self.resolve(path, false)?, name.as_ref(), value, flags)
    }

    /// Remove an xattr from the object itself.
    pub fn remove_xattr(&self, path: impl AsRef<Path>, name: impl AsRef<OsStr>) -> Result<()> {
        self.ovl
            .removexattr(&self.resolve(path, false)?, name.as_ref())
    }

    /// Walk the merged tree below `path` depth-first, calling `f` with each path (relative
    /// to the overlay root) and its attributes. Symlinks are not followed.
    pub fn walk_tree(&self, path: impl AsRef<Path>, f: &mut dyn FnMut(&Path, &Attr)) -> Result<()> {
        let start = self.resolve(path.as_ref(), true)?;
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            for e in self.ovl.readdir(&dir)? {
                // One lstat gives both, for entries without a live node.
                let (n, a) = self.ovl.lookup_attr(&dir, &e.name)?;
                f(&n.path(), &a);
                if n.kind() == FileKind::Directory {
                    stack.push(n);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::LayerStack;

    #[test]
    fn path_api_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let (l, u, w) = (t.path().join("l"), t.path().join("u"), t.path().join("w"));
        for d in [&l, &u, &w] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::create_dir_all(l.join("etc/sub")).unwrap();
        std::fs::write(l.join("etc/passwd"), b"root").unwrap();
        std::os::unix::fs::symlink("/etc", l.join("link")).unwrap();
        let ns = if rustix::process::geteuid().is_root() {
            crate::XattrNamespace::Trusted
        } else {
            crate::XattrNamespace::User
        };
        let stack = LayerStack::builder()
            .lower(&l)
            .upper(&u, &w)
            .xattr_namespace(ns)
            .build()
            .unwrap();
        let ovl = Overlay::new(stack).unwrap();
        let fs = ovl.path();
        assert_eq!(fs.read_to_string("/etc/passwd").unwrap(), "root");
        // Symlinks resolve inside the overlay.
        assert_eq!(fs.read_to_string("link/passwd").unwrap(), "root");
        assert_eq!(fs.read_link("link").unwrap(), PathBuf::from("/etc"));
        assert_eq!(fs.symlink_metadata("link").unwrap().kind, FileKind::Symlink);
        assert_eq!(fs.metadata("link").unwrap().kind, FileKind::Directory);
        assert_eq!(fs.metadata("../../etc").unwrap().kind, FileKind::Directory);
        fs.create_dir_all("a/b/c", 0o755).unwrap();
        fs.write("a/b/c/f", "hello").unwrap();
        fs.write("etc/passwd", "changed").unwrap();
        assert_eq!(std::fs::read(u.join("etc/passwd")).unwrap(), b"changed");
        fs.rename("a/b/c/f", "etc/f2").unwrap();
        assert!(!fs.exists("a/b/c/f"));
        fs.hard_link("etc/f2", "etc/f3").unwrap();
        assert_eq!(fs.metadata("etc/f3").unwrap().nlink, 2);
        fs.truncate("etc/f3", 2).unwrap();
        assert_eq!(fs.read("etc/f2").unwrap(), b"he");
        fs.set_permissions("etc/f2", 0o600).unwrap();
        assert_eq!(fs.metadata("etc/f2").unwrap().perm, 0o600);
        assert_eq!(
            fs.create_dir("etc", 0o755).unwrap_err().raw_os_error(),
            libc::EEXIST
        );
        assert_eq!(
            fs.remove_dir("etc").unwrap_err().raw_os_error(),
            libc::ENOTEMPTY
        );
        // walk_tree reports what symlink_metadata does, for merged and lower-only entries.
        let mut walked = Vec::new();
        fs.walk_tree("", &mut |p, a| walked.push((p.to_path_buf(), *a)))
            .unwrap();
        assert!(walked.len() >= 8, "{walked:?}");
        for (p, a) in &walked {
            let m = fs.symlink_metadata(p).unwrap();
            let key = |a: &Attr| (a.ino, a.kind, a.perm, a.nlink, a.size, a.uid, a.mtime);
            assert_eq!(key(a), key(&m), "{p:?}");
        }
        fs.remove_dir_all("etc").unwrap();
        assert!(!fs.exists("etc"));
        assert_eq!(
            fs.metadata("link").unwrap_err().raw_os_error(),
            libc::ENOENT
        );
        fs.remove("link").unwrap();
        fs.remove_dir_all("a").unwrap();
        let mut seen = Vec::new();
        fs.walk_tree("", &mut |p, _| seen.push(p.to_path_buf()))
            .unwrap();
        assert!(seen.is_empty(), "{seen:?}");
        fs.symlink("loop", "loop").unwrap();
        assert_eq!(fs.metadata("loop").unwrap_err().raw_os_error(), libc::ELOOP);
    }
}
