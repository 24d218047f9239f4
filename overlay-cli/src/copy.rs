//! Copy an upper layer with its overlay format intact (whiteouts, opaque and other overlay
//! xattrs, hard links, owners, modes, times): used by `ovl run --keep DIR`.
//!
//! Both trees are walked through directory file descriptors (`openat` with `O_NOFOLLOW`), so
//! symlinks inside the upper are copied as symlinks and never followed.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};

use crate::error::CliError;

/// Totals of a copy.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries created.
    pub entries: u64,
    /// File bytes copied.
    pub bytes: u64,
}

/// A progress line on stderr, only when stderr is a terminal.
pub struct Progress {
    what: &'static str,
    enabled: bool,
    last: Instant,
    shown: bool,
}

impl Progress {
    /// A progress display for an operation described by `what` ("keeping upper").
    pub fn new(what: &'static str) -> Self {
        Progress {
            what,
            enabled: std::io::stderr().is_terminal(),
            last: Instant::now(),
            shown: false,
        }
    }

    fn tick(&mut self, s: &CopyStats) {
        if self.enabled && self.last.elapsed() >= Duration::from_millis(200) {
            self.last = Instant::now();
            self.shown = true;
            crate::say_raw(format_args!(
                "\rovl: {}: {} entries, {:.1} MiB ",
                self.what,
                s.entries,
                s.bytes as f64 / (1024.0 * 1024.0)
            ));
        }
    }

    fn finish(&mut self, s: &CopyStats) {
        if self.shown {
            crate::say(format_args!(
                "\rovl: {}: {} entries, {:.1} MiB, done",
                self.what,
                s.entries,
                s.bytes as f64 / (1024.0 * 1024.0)
            ));
        }
    }
}

struct Copier {
    stats: CopyStats,
    links: HashMap<(u64, u64), (OwnedFd, OsString, PathBuf)>,
    progress: Progress,
    /// Set when chown is refused (unprivileged): owners are then left to the copier.
    chown_refused: bool,
}

fn err(path: &Path, what: &str, e: rustix::io::Errno) -> CliError {
    CliError::io(path, what, std::io::Error::from(e))
}

fn open_dir_at(dir: impl AsFd, name: &OsStr, path: &Path) -> Result<OwnedFd, CliError> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(path, "cannot open directory", e))
}

fn proc_path(fd: &OwnedFd, name: Option<&OsStr>) -> PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if let Some(n) = name {
        p.push(n);
    }
    p
}

/// Copy every xattr of `name` in `src_dir` onto `name` in `dst_dir` (no symlink following).
fn copy_xattrs(
    src_dir: &OwnedFd,
    dst_dir: &OwnedFd,
    name: Option<&OsStr>,
    shown: &Path,
) -> Result<(), CliError> {
    let sp = proc_path(src_dir, name);
    let dp = proc_path(dst_dir, name);
    let mut buf = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(&sp, &mut buf) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(()),
            Err(e) => return Err(err(shown, "cannot list xattrs", e)),
        }
    };
    let names: Vec<Vec<u8>> = buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    for xname in names {
        let xname = OsStr::from_bytes(&xname);
        let mut val = vec![0u8; 4096];
        let len = loop {
            match rustix::fs::lgetxattr(&sp, xname, &mut val) {
                Ok(n) => break Some(n),
                Err(rustix::io::Errno::RANGE) => val.resize(val.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(err(shown, "cannot read xattr", e)),
            }
        };
        let Some(len) = len else { continue };
        rustix::fs::lsetxattr(&dp, xname, &val[..len], rustix::fs::XattrFlags::empty()).map_err(
            |e| {
                err(
                    shown,
                    &format!("cannot set xattr {}", xname.to_string_lossy()),
                    e,
                )
            },
        )?;
    }
    Ok(())
}

fn timestamps(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

impl Copier {
    fn chown(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        st: &Stat,
        shown: &Path,
    ) -> Result<(), CliError> {
        if self.chown_refused {
            return Ok(());
        }
        match rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::PERM) | Err(rustix::io::Errno::INVAL) => {
                tracing::info!("cannot keep owners (not privileged); copies belong to the caller");
                self.chown_refused = true;
                Ok(())
            }
            Err(e) => Err(err(shown, "cannot set owner", e)),
        }
    }

    fn copy_dir(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        src_path: &Path,
        dst_path: &Path,
    ) -> Result<(), CliError> {
        let mut names = Vec::new();
        let mut d = rustix::fs::Dir::read_from(src)
            .map_err(|e| err(src_path, "cannot read directory", e))?;
        while let Some(ent) = d.read() {
            let ent = ent.map_err(|e| err(src_path, "cannot read directory", e))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(OsStr::from_bytes(n).to_os_string());
            }
        }
        names.sort();
        for name in names {
            let sp = src_path.join(&name);
            let dp = dst_path.join(&name);
            let st = rustix::fs::statat(src, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| err(&sp, "cannot stat", e))?;
            let ft = FileType::from_raw_mode(st.st_mode);
            let perm = Mode::from_raw_mode(st.st_mode & 0o7777);
            if ft != FileType::Directory && st.st_nlink > 1 {
                if let Some((first_dir, first_name, _)) = self.links.get(&(st.st_dev, st.st_ino)) {
                    rustix::fs::linkat(first_dir, first_name, dst, &name, AtFlags::empty())
                        .map_err(|e| err(&dp, "cannot create hard link", e))?;
                    self.stats.entries += 1;
                    continue;
                }
            }
            match ft {
                FileType::Directory => {
                    rustix::fs::mkdirat(dst, &name, Mode::from_raw_mode(0o700))
                        .map_err(|e| err(&dp, "cannot create directory", e))?;
                    let s = open_dir_at(src, &name, &sp)?;
                    let t = open_dir_at(dst, &name, &dp)?;
                    self.stats.entries += 1;
                    self.copy_dir(&s, &t, &sp, &dp)?;
                    copy_xattrs(src, dst, Some(&name), &sp)?;
                    self.chown(dst, &name, &st, &dp)?;
                    rustix::fs::fchmod(&t, perm).map_err(|e| err(&dp, "cannot set mode", e))?;
                    rustix::fs::futimens(&t, &timestamps(&st))
                        .map_err(|e| err(&dp, "cannot set times", e))?;
                    continue;
                }
                FileType::RegularFile => {
                    let s = rustix::fs::openat(
                        src,
                        &name,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| err(&sp, "cannot open", e))?;
                    let t = rustix::fs::openat(
                        dst,
                        &name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|e| err(&dp, "cannot create", e))?;
                    let mut from = std::fs::File::from(s);
                    let mut to = std::fs::File::from(t);
                    let n = std::io::copy(&mut from, &mut to)
                        .map_err(|e| CliError::io(&dp, "cannot copy data", e))?;
                    self.stats.bytes += n;
                    self.progress.tick(&self.stats);
                }
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(src, &name, Vec::new())
                        .map_err(|e| err(&sp, "cannot read symlink", e))?;
                    rustix::fs::symlinkat(target.as_c_str(), dst, &name)
                        .map_err(|e| err(&dp, "cannot create symlink", e))?;
                }
                FileType::CharacterDevice
                | FileType::BlockDevice
                | FileType::Fifo
                | FileType::Socket => {
                    rustix::fs::mknodat(dst, &name, ft, perm, st.st_rdev)
                        .map_err(|e| err(&dp, "cannot create special file", e))?;
                }
                FileType::Unknown => {
                    return Err(CliError::path(&sp, "unknown file type"));
                }
            }
            self.stats.entries += 1;
            copy_xattrs(src, dst, Some(&name), &sp)?;
            self.chown(dst, &name, &st, &dp)?;
            if ft != FileType::Symlink {
                rustix::fs::chmodat(dst, &name, perm, AtFlags::empty())
                    .map_err(|e| err(&dp, "cannot set mode", e))?;
            }
            rustix::fs::utimensat(dst, &name, &timestamps(&st), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| err(&dp, "cannot set times", e))?;
            if ft != FileType::Directory && st.st_nlink > 1 {
                let again = open_dir_at(dst, OsStr::new("."), dst_path)?;
                self.links
                    .insert((st.st_dev, st.st_ino), (again, name.clone(), dp.clone()));
            }
        }
        Ok(())
    }
}

/// Copy the upper `src` into `dst`, which must not exist or be an empty directory.
/// Shows progress on a terminal.
pub fn copy_upper(src: &Path, dst: &Path) -> Result<CopyStats, CliError> {
    let s = rustix::fs::open(
        src,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(src, "cannot open directory", e))?;
    match std::fs::read_dir(dst) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(CliError::path(
                    dst,
                    "not empty; --keep needs a new or empty directory",
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dst).map_err(|e| CliError::io(dst, "cannot create", e))?;
        }
        Err(e) => return Err(CliError::io(dst, "cannot open", e)),
    }
    let t = rustix::fs::open(
        dst,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(dst, "cannot open directory", e))?;
    let mut c = Copier {
        stats: CopyStats::default(),
        links: HashMap::new(),
        progress: Progress::new("keeping upper"),
        chown_refused: false,
    };
    c.copy_dir(&s, &t, src, dst)?;
    copy_xattrs(&s, &t, None, src)?;
    let st = rustix::fs::fstat(&s).map_err(|e| err(src, "cannot stat", e))?;
    rustix::fs::fchmod(&t, Mode::from_raw_mode(st.st_mode & 0o7777))
        .map_err(|e| err(dst, "cannot set mode", e))?;
    c.progress.finish(&c.stats);
    Ok(c.stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copies_format_and_links() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        std::fs::write(src.join("d/f"), b"hello").unwrap();
        std::fs::hard_link(src.join("d/f"), src.join("g")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("wh"),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        rustix::fs::setxattr(
            src.join("d"),
            "user.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let dst = t.path().join("dst");
        let s = copy_upper(&src, &dst).unwrap();
        assert_eq!(s.bytes, 5);
        assert_eq!(std::fs::read(dst.join("g")).unwrap(), b"hello");
        assert_eq!(
            std::fs::metadata(dst.join("g")).unwrap().ino(),
            std::fs::metadata(dst.join("d/f")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        let wh = std::fs::symlink_metadata(dst.join("wh")).unwrap();
        assert!(overlay_core::format::is_whiteout_stat(wh.mode(), wh.rdev()));
        let mut v = [0u8; 4];
        let n = rustix::fs::getxattr(dst.join("d"), "user.overlay.opaque", &mut v).unwrap();
        assert_eq!(&v[..n], b"y");
        assert!(dst.join("d/e").is_dir());
        // A non-empty destination is refused.
        assert!(copy_upper(&src, &dst).is_err());
    }
}
