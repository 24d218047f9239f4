//! Read-only access to layer directories through directory file descriptors.
//!
//! Every directory below the layer root is opened with `openat(O_NOFOLLOW|O_DIRECTORY)`
//! relative to its parent's descriptor and every entry is `fstatat(AT_SYMLINK_NOFOLLOW)`ed, so
//! a symlink inside a layer is never followed out of it. Xattrs of entries are read with the
//! `l*xattr` calls through `/proc/self/fd/<dirfd>/<name>`, which resolves the directory by its
//! descriptor and does not follow the final symlink.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::error::Error;

/// What kind of entry a layer holds at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A kernel whiteout: character device 0/0.
    Whiteout,
    /// Anything else (file, symlink, device, fifo, socket).
    Other,
}

/// One directory entry with its `lstat`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name inside its directory.
    pub name: OsString,
    /// `fstatat(AT_SYMLINK_NOFOLLOW)` of the entry.
    pub stat: Stat,
}

impl Entry {
    /// The entry's kind.
    pub fn kind(&self) -> EntryKind {
        let ft = FileType::from_raw_mode(self.stat.st_mode);
        if ft == FileType::Directory {
            EntryKind::Dir
        } else if overlay_core::format::is_whiteout_stat(self.stat.st_mode, self.stat.st_rdev) {
            EntryKind::Whiteout
        } else {
            EntryKind::Other
        }
    }

    /// The file type.
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }
}

/// An open directory of a layer, with the path it was reached by (for messages only).
#[derive(Debug)]
pub struct LayerDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_err(path: &Path, what: &str, e: rustix::io::Errno) -> Error {
    Error::io(path, what, std::io::Error::from(e))
}

impl LayerDir {
    /// Open the root directory of a layer (the path the user named may be a symlink).
    pub fn open_root(path: &Path) -> Result<Self, Error> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(path, "cannot open directory", e))?;
        Ok(LayerDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the subdirectory `name` without following symlinks.
    pub fn open_child(&self, name: &OsStr) -> Result<Self, Error> {
        let path = self.path.join(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(&path, "cannot open directory", e))?;
        Ok(LayerDir { fd, path })
    }

    /// Open the regular file `name` for reading, without following a symlink.
    pub fn open_file(&self, name: &OsStr) -> Result<OwnedFd, Error> {
        rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(&self.path.join(name), "cannot open", e))
    }

    /// The target of the symlink `name`.
    pub fn readlink(&self, name: &OsStr) -> Result<Vec<u8>, Error> {
        rustix::fs::readlinkat(&self.fd, name, Vec::new())
            .map(|c| c.into_bytes())
            .map_err(|e| io_err(&self.path.join(name), "cannot read the symlink", e))
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> Result<Self, Error> {
        let fd = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
            .map_err(|e| io_err(&self.path, "cannot duplicate a descriptor", e))?;
        Ok(LayerDir {
            fd,
            path: self.path.clone(),
        })
    }

    /// `lstat` of the entry `name`, `None` when it does not exist (or is not reachable because
    /// this directory has no such entry).
    pub fn stat_child(&self, name: &OsStr) -> Result<Option<Entry>, Error> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(Entry {
                name: name.to_os_string(),
                stat,
            })),
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => Ok(None),
            Err(e) => Err(io_err(&self.path.join(name), "cannot stat", e)),
        }
    }

    /// The entries of this directory (without `.` and `..`), sorted by name.
    pub fn entries(&self) -> Result<Vec<Entry>, Error> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd)
            .map_err(|e| io_err(&self.path, "cannot read directory", e))?;
        let mut out = Vec::new();
        while let Some(ent) = dir.read() {
            let ent = ent.map_err(|e| io_err(&self.path, "cannot read directory", e))?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name).to_os_string();
            // An entry may vanish between readdir and stat if the layer is in use; skip it.
            if let Some(e) = self.stat_child(&name)? {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(out)
    }

    /// `(dev, ino)` of this directory.
    pub fn stat(&self) -> Result<Stat, Error> {
        rustix::fs::fstat(&self.fd).map_err(|e| io_err(&self.path, "cannot stat", e))
    }

    /// statfs `f_type` of the filesystem holding this directory.
    pub fn fs_type(&self) -> Result<i64, Error> {
        rustix::fs::fstatfs(&self.fd)
            .map(|s| s.f_type)
            .map_err(|e| io_err(&self.path, "cannot statfs", e))
    }

    fn proc_path(&self, name: Option<&OsStr>) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        if let Some(n) = name {
            p.push(n);
        }
        p
    }

    /// All xattrs (name, value) of the entry `name`, or of this directory when `None`.
    /// Names that cannot be read (e.g. `trusted.*` as non-root) are not listed by the kernel.
    pub fn xattrs(&self, name: Option<&OsStr>) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let shown = match name {
            Some(n) => self.path.join(n),
            None => self.path.clone(),
        };
        let names = match name {
            None => list_names(|buf| rustix::fs::flistxattr(&self.fd, buf)),
            Some(_) => {
                let p = self.proc_path(name);
                list_names(|buf| rustix::fs::llistxattr(&p, buf))
            }
        };
        let names = match names {
            Ok(n) => n,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&shown, "cannot list xattrs", e)),
        };
        let mut out = Vec::with_capacity(names.len());
        for xname in names {
            let value = match name {
                None => read_value(|buf| rustix::fs::fgetxattr(&self.fd, xname.as_str(), buf)),
                Some(_) => {
                    let p = self.proc_path(name);
                    read_value(|buf| rustix::fs::lgetxattr(&p, xname.as_str(), buf))
                }
            };
            match value {
                Ok(v) => out.push((xname, v)),
                // Listed but unreadable or removed meanwhile: skip it.
                Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::PERM) => {}
                Err(e) => return Err(io_err(&shown, &format!("cannot read xattr {xname}"), e)),
            }
        }
        Ok(out)
    }

    /// All xattrs (name, value) of the file open as `fd` (`shown` names it in errors): the
    /// cheap way for an entry already opened, with no path resolution through `/proc`.
    pub fn xattrs_of_fd(
        fd: std::os::fd::BorrowedFd<'_>,
        shown: &Path,
    ) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let names = match list_names(|buf| rustix::fs::flistxattr(fd, buf)) {
            Ok(n) => n,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(io_err(shown, "cannot list xattrs", e)),
        };
        let mut out = Vec::with_capacity(names.len());
        for xname in names {
            match read_value(|buf| rustix::fs::fgetxattr(fd, xname.as_str(), buf)) {
                Ok(v) => out.push((xname, v)),
                Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::PERM) => {}
                Err(e) => return Err(io_err(shown, &format!("cannot read xattr {xname}"), e)),
            }
        }
        Ok(out)
    }

    /// The value of one xattr of entry `name` (or this directory), `None` when absent.
    pub fn xattr(&self, name: Option<&OsStr>, xname: &str) -> Result<Option<Vec<u8>>, Error> {
        let r = match name {
            None => read_value(|buf| rustix::fs::fgetxattr(&self.fd, xname, buf)),
            Some(_) => {
                let p = self.proc_path(name);
                read_value(|buf| rustix::fs::lgetxattr(&p, xname, buf))
            }
        };
        match r {
            Ok(v) => Ok(Some(v)),
            Err(rustix::io::Errno::NODATA)
            | Err(rustix::io::Errno::NOTSUP)
            | Err(rustix::io::Errno::PERM) => Ok(None),
            Err(e) => {
                let shown = name.map_or_else(|| self.path.clone(), |n| self.path.join(n));
                Err(io_err(&shown, &format!("cannot read xattr {xname}"), e))
            }
        }
    }
}

fn list_names(
    mut call: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<String>> {
    let raw = read_value(&mut call)?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// Read a variable-size xattr value (or name list), growing the buffer on ERANGE.
fn read_value(
    mut call: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < (1 << 20) => {
                let n = buf.len() * 4;
                buf.resize(n, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Render a path inside the merged view: `/` plus the components.
pub fn merged_path(components: &[OsString]) -> PathBuf {
    let mut p = PathBuf::from("/");
    for c in components {
        p.push(c);
    }
    p
}
