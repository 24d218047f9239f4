//! A kernel overlay mount of a fixture stack (RAII), and the path-based backend that applies
//! operations through any mounted overlay (kernel or FUSE) with ordinary system calls.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};

use super::features::Features;
use super::fixture::FixtureStack;
use super::ops::{NodeKind, Op, RenameMode};
use super::tree::{snapshot_dir, Tree, XattrFilter};
use super::{Backend, Outcome};

/// A kernel overlay mounted with mount(2); unmounted when dropped (also while unwinding from a
/// panic).
#[derive(Debug)]
pub struct KernelOverlay {
    mountpoint: PathBuf,
}

impl KernelOverlay {
    /// Mount `stack` at `mountpoint` (an existing empty directory) with the options of
    /// [`Features::DEFAULTS`] (every feature explicit: redirects followed but not created,
    /// no index, no metacopy, no xino, no uuid on the upper root).
    pub fn mount(stack: &FixtureStack, mountpoint: &Path) -> std::io::Result<KernelOverlay> {
        Self::mount_with(stack, mountpoint, Features::DEFAULTS)
    }

    /// Mount `stack` at `mountpoint` with the options of `features`.
    pub fn mount_with(
        stack: &FixtureStack,
        mountpoint: &Path,
        features: Features,
    ) -> std::io::Result<KernelOverlay> {
        let [top, bottom] = stack.lowers_top_first();
        let data = format!(
            "lowerdir={}:{},upperdir={},workdir={},{}",
            top.display(),
            bottom.display(),
            stack.upper.display(),
            stack.work.display(),
            features.kernel_options()
        );
        Self::mount_data(&data, mountpoint)
    }

    /// Mount a kernel overlay with the option string `data` at `mountpoint`.
    pub fn mount_data(data: &str, mountpoint: &Path) -> std::io::Result<KernelOverlay> {
        let data = std::ffi::CString::new(data).expect("no NUL in paths");
        rustix::mount::mount(
            "overlay",
            mountpoint,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!(
                    "mount -t overlay {:?} at {}: {e}",
                    data,
                    mountpoint.display()
                ),
            )
        })?;
        Ok(KernelOverlay {
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        use rustix::mount::{unmount, UnmountFlags};
        if let Err(e) = unmount(&self.mountpoint, UnmountFlags::empty()) {
            eprintln!(
                "unmount {}: {e}; detaching lazily",
                self.mountpoint.display()
            );
            if let Err(e) = unmount(&self.mountpoint, UnmountFlags::DETACH) {
                eprintln!("lazy unmount {}: {e}", self.mountpoint.display());
            }
        }
    }
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn rerrno(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

/// The outcome of [`Op::Stat`]: kind, permissions, and link count and size of non-directories.
pub fn describe(kind: &str, mode: u32, nlink: u64, size: u64) -> String {
    if kind == "dir" {
        format!("{kind} {:04o}", mode & 0o7777)
    } else {
        format!("{kind} {:04o} nlink={nlink} size={size}", mode & 0o7777)
    }
}

/// Describe a stat result for [`Op::Stat`] (kind, permissions, size of files and symlinks).
pub fn describe_stat(md: &fs::Metadata) -> String {
    let ft = md.file_type();
    let kind = if ft.is_file() {
        "file"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "chardev"
    } else {
        "other"
    };
    describe(kind, md.mode(), md.nlink(), md.size())
}

/// Apply `op` with ordinary system calls on paths under `root` (a mounted overlay).
///
/// Every open for write uses `O_NONBLOCK`, so that opening a FIFO without a reader fails
/// with ENXIO instead of blocking the test forever.
pub fn apply_path_op(root: &Path, op: &Op) -> Outcome {
    let p = |rel: &str| root.join(rel);
    match op {
        Op::Create { path, mode, excl } => {
            let mut o = fs::OpenOptions::new();
            o.write(true).mode(*mode).custom_flags(libc::O_NONBLOCK);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true);
            }
            o.open(p(path)).map_err(errno)?;
        }
        Op::Write { path, offset, data } => {
            let f = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p(path))
                .map_err(errno)?;
            f.write_all_at(data, *offset).map_err(errno)?;
        }
        Op::Append { path, data } => {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p(path))
                .map_err(errno)?;
            f.write_all(data).map_err(errno)?;
        }
        Op::Truncate { path, size } => {
            nix::unistd::truncate(&p(path), *size as i64).map_err(|e| e as i32)?;
        }
        Op::Chmod { path, mode } => {
            fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)).map_err(errno)?
        }
        Op::Chown { path, uid } => {
            std::os::unix::fs::lchown(p(path), Some(*uid), None).map_err(errno)?
        }
        Op::Touch { path } => {
            let t = rustix::fs::Timespec {
                tv_sec: super::ops::TOUCH_TIME,
                tv_nsec: 0,
            };
            let times = rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                p(path),
                &times,
                rustix::fs::AtFlags::empty(),
            )
            .map_err(rerrno)?
        }
        Op::Unlink { path } => fs::remove_file(p(path)).map_err(errno)?,
        Op::Rmdir { path } => fs::remove_dir(p(path)).map_err(errno)?,
        Op::Mkdir { path, mode } => fs::DirBuilder::new()
            .mode(*mode)
            .create(p(path))
            .map_err(errno)?,
        Op::Rename { from, to, mode } => {
            let flags = match mode {
                RenameMode::Plain => rustix::fs::RenameFlags::empty(),
                RenameMode::NoReplace => rustix::fs::RenameFlags::NOREPLACE,
                RenameMode::Exchange => rustix::fs::RenameFlags::EXCHANGE,
            };
            rustix::fs::renameat_with(rustix::fs::CWD, p(from), rustix::fs::CWD, p(to), flags)
                .map_err(rerrno)?
        }
        Op::Link { from, to } => fs::hard_link(p(from), p(to)).map_err(errno)?,
        Op::Symlink { target, path } => {
            std::os::unix::fs::symlink(target, p(path)).map_err(errno)?
        }
        Op::SetXattr {
            path,
            name,
            value,
            mode,
        } => rustix::fs::lsetxattr(
            p(path),
            name.as_str(),
            value,
            rustix::fs::XattrFlags::from_bits_retain(mode.raw() as _),
        )
        .map_err(rerrno)?,
        Op::RemoveXattr { path, name } => {
            rustix::fs::lremovexattr(p(path), name.as_str()).map_err(rerrno)?
        }
        Op::Mknod { path, kind } => {
            let ft = match kind {
                NodeKind::Fifo => rustix::fs::FileType::Fifo,
                NodeKind::WhiteoutDevice => rustix::fs::FileType::CharacterDevice,
            };
            let mode = rustix::fs::Mode::from_raw_mode(0o644);
            rustix::fs::mknodat(rustix::fs::CWD, p(path), ft, mode, 0).map_err(rerrno)?
        }
        Op::Stat { path, follow } => {
            let md = if *follow {
                fs::metadata(p(path))
            } else {
                fs::symlink_metadata(p(path))
            }
            .map_err(errno)?;
            return Ok(describe_stat(&md));
        }
    }
    Ok(String::new())
}

/// A backend that works on an already mounted overlay through its mount point (kernel
/// overlay or FUSE). It owns whatever keeps the mount alive (`guard`), dropped before the
/// temp dir.
pub struct MountedBackend<G> {
    name: String,
    root: PathBuf,
    upper: PathBuf,
    /// Keeps the mount alive; dropped (unmounted) first.
    pub guard: G,
    _tmp: tempfile::TempDir,
}

impl<G> MountedBackend<G> {
    /// Wrap a mount at `root` whose upper layer is `upper`. `tmp` holds the layers and is
    /// removed after `guard` is dropped.
    pub fn new(
        name: &str,
        root: PathBuf,
        upper: PathBuf,
        guard: G,
        tmp: tempfile::TempDir,
    ) -> Self {
        MountedBackend {
            name: name.to_string(),
            root,
            upper,
            guard,
            _tmp: tmp,
        }
    }
}

impl<G> MountedBackend<G> {
    /// The mount point (root of the merged view).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Unmount (drop the guard) and hand back the temp dir with the layers, to mount them
    /// again (with the other backend).
    pub fn unmount(self) -> tempfile::TempDir {
        drop(self.guard);
        self._tmp
    }
}

impl<G> Backend for MountedBackend<G> {
    fn name(&self) -> &str {
        &self.name
    }
    fn apply(&mut self, op: &Op) -> Outcome {
        apply_path_op(&self.root, op)
    }
    fn merged(&mut self) -> Tree {
        snapshot_dir(&self.root, XattrFilter::All)
    }
    fn upper(&self) -> &Path {
        &self.upper
    }
}

/// A fresh fixture in its own temp dir, with a kernel overlay mounted on it.
pub fn kernel_backend() -> MountedBackend<KernelOverlay> {
    kernel_backend_with(Features::DEFAULTS)
}

/// The same with the options of `features`.
pub fn kernel_backend_with(features: Features) -> MountedBackend<KernelOverlay> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stack = FixtureStack::create_for(tmp.path(), features);
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let guard = KernelOverlay::mount_with(&stack, &mnt, features).unwrap_or_else(|e| panic!("{e}"));
    MountedBackend::new("kernel", mnt, stack.upper.clone(), guard, tmp)
}
