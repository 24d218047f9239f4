//! Writing inside a target directory through file descriptors only: every path is resolved
//! beneath the target's root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` (or an `O_NOFOLLOW` walk where openat2 is missing), so neither a
//! symlink nor `..` can lead a write outside it. Used by apply, commit and squash.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::Error;

/// Why a path inside the target could not be resolved.
#[derive(Debug)]
pub enum WalkError {
    /// A component is a symlink (never followed).
    Symlink(Vec<u8>),
    /// A component is not a directory.
    NotDir(Vec<u8>),
    /// A component is missing (and was not to be created).
    Missing(Vec<u8>),
    /// Another error at this prefix.
    Io(Vec<u8>, Errno),
}

impl WalkError {
    /// In words, naming the prefix.
    pub fn describe(&self) -> String {
        let l = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
        match self {
            WalkError::Symlink(p) => format!("{} is a symlink (never followed)", l(p)),
            WalkError::NotDir(p) => format!("{} is not a directory", l(p)),
            WalkError::Missing(p) => format!("{} does not exist", l(p)),
            WalkError::Io(p, e) => format!("{}: {}", l(p), std::io::Error::from(*e)),
        }
    }
}

/// Told of each directory a walk creates: (parent components, parent, name).
pub type Created<'a> = dyn FnMut(&[Vec<u8>], BorrowedFd<'_>, &[u8]) + 'a;

/// The root of a target directory.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    openat2: bool,
}

/// Join components with `/` (for keys and messages).
pub fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c);
    }
    v
}

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Root {
    /// Open the target directory `path` (which the caller named: it may be a symlink).
    pub fn open(path: &Path) -> Result<Root, Error> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::errno(path, "cannot open the target directory", e))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
            openat2: true,
        })
    }

    /// The root's descriptor (an `O_PATH` descriptor).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The path of `rel` below the root, for messages.
    pub fn shown(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(OsStr::from_bytes(rel))
        }
    }

    /// Open the directory at `comps` below the root as an `O_PATH` descriptor. Missing
    /// directories are created (mode 0755, `created` is told each one) when `create` is set.
    pub fn dir(
        &mut self,
        comps: &[Vec<u8>],
        create: bool,
        created: &mut Created<'_>,
    ) -> Result<OwnedFd, WalkError> {
        if comps.is_empty() {
            return rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
                .map_err(|e| WalkError::Io(Vec::new(), e));
        }
        if self.openat2 {
            let rel = join(comps);
            if rel.len() < 4000 {
                let r = rustix::fs::openat2(
                    &self.fd,
                    OsStr::from_bytes(&rel),
                    dir_flags(),
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                );
                match r {
                    Ok(fd) => return Ok(fd),
                    Err(Errno::NOSYS) => self.openat2 = false,
                    // Anything else: the walk below says which component and why (or
                    // creates the missing ones).
                    Err(_) => {}
                }
            }
        }
        self.walk(comps, create, created)
    }

    fn walk(
        &self,
        comps: &[Vec<u8>],
        create: bool,
        created: &mut Created<'_>,
    ) -> Result<OwnedFd, WalkError> {
        let mut cur = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
            .map_err(|e| WalkError::Io(Vec::new(), e))?;
        for (i, c) in comps.iter().enumerate() {
            let name = OsStr::from_bytes(c);
            let prefix = || join(&comps[..=i]);
            let next = match rustix::fs::openat(&cur, name, dir_flags(), Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) => created(&comps[..i], cur.as_fd(), c),
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(WalkError::Io(prefix(), e)),
                    }
                    rustix::fs::openat(&cur, name, dir_flags(), Mode::empty())
                        .map_err(|e| classify(&cur, name, prefix(), e))?
                }
                Err(e) => return Err(classify(&cur, name, prefix(), e)),
            };
            cur = next;
        }
        Ok(cur)
    }
}

fn classify(dir: &OwnedFd, name: &OsStr, prefix: Vec<u8>, e: Errno) -> WalkError {
    match e {
        Errno::NOENT => WalkError::Missing(prefix),
        Errno::LOOP | Errno::NOTDIR => {
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    WalkError::Symlink(prefix)
                }
                _ => WalkError::NotDir(prefix),
            }
        }
        e => WalkError::Io(prefix, e),
    }
}

/// `lstat` of `name` in `dir`; `None` when absent.
pub fn lstat(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<rustix::fs::Stat>, Errno> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `/proc/self/fd/N/NAME` path of an entry of `dir`: the `l*xattr` calls on it reach the
/// entry without following a final symlink, and the directory by its descriptor.
pub fn proc_path(dir: BorrowedFd<'_>, name: Option<&OsStr>) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if let Some(n) = name {
        p.push(n);
    }
    p
}

/// Set an xattr on `name` in `dir` (on `dir` itself for `None`) without following symlinks.
pub fn set_xattr(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    key: &[u8],
    value: &[u8],
) -> Result<(), Errno> {
    let key = OsStr::from_bytes(key);
    let flags = rustix::fs::XattrFlags::empty();
    match name {
        Some(_) => rustix::fs::lsetxattr(proc_path(dir, name), key, value, flags),
        // The directory itself: through its descriptor's /proc link (our own descriptor).
        None => rustix::fs::setxattr(proc_path(dir, None), key, value, flags),
    }
}

/// Names in the directory `dir` (an `O_PATH` or open descriptor), without `.` and `..`.
pub fn list(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    let fd = rustix::fs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = rustix::fs::Dir::read_from(&fd)?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// Remove `name` in `dir`, recursively when it is a directory, never following a symlink.
/// Iterative (the depth costs heap, not stack); `..` is used to climb back and checked
/// against the directory it must lead to.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    // A directory: post-order walk.
    let top = rustix::fs::openat(dir, name, dir_flags(), Mode::empty())?;
    let mut cur = top;
    // Each frame: (names left to look at, stat of the directory, its name in its parent).
    let mut frames: Vec<(Vec<Vec<u8>>, rustix::fs::Stat, std::ffi::OsString)> = vec![(
        list(cur.as_fd())?,
        rustix::fs::fstat(&cur)?,
        name.to_os_string(),
    )];
    while let Some((names, _, _)) = frames.last_mut() {
        match names.pop() {
            Some(n) => {
                let n = OsStr::from_bytes(&n).to_os_string();
                match rustix::fs::unlinkat(&cur, &n, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(Errno::ISDIR) | Err(Errno::PERM) => {
                        let sub = rustix::fs::openat(&cur, &n, dir_flags(), Mode::empty())?;
                        let st = rustix::fs::fstat(&sub)?;
                        frames.push((list(sub.as_fd())?, st, n));
                        cur = sub;
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                // Done with this directory: climb to its parent and remove it.
                let (_, _, child) = frames.pop().expect("frame");
                if frames.is_empty() {
                    break;
                }
                let parent = rustix::fs::openat(&cur, c"..", dir_flags(), Mode::empty())?;
                let pst = rustix::fs::fstat(&parent)?;
                let expect = frames.last().expect("parent frame").1;
                if (pst.st_dev, pst.st_ino) != (expect.st_dev, expect.st_ino) {
                    // Someone moved the tree while we removed it: stop rather than guess.
                    return Err(Errno::STALE);
                }
                cur = parent;
                rustix::fs::unlinkat(&cur, &child, AtFlags::REMOVEDIR)?;
            }
        }
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}
