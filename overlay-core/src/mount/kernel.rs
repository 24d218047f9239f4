//! Mounting a [`MountSpec`] in the calling process's mount namespace, and the
//! [`KernelMount`] guard that unmounts it.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::mount::{unmount, UnmountFlags};

use crate::error::{Error, Result};
use crate::mount::child::{ChildPlan, MountApi, KERNEL_MSG_SEPARATOR, NEEDS_FORK};
use crate::mount::image::ImageMount;
use crate::mount::mountinfo::{
    mount_id_of, overlay_module_parameters, read_mountinfo, EffectiveOptions,
};
use crate::mount::spec::MountSpec;

/// Build the one-line [`Error::Mount`] for a failed mount from the errno and the bytes a
/// [`crate::mount::child::MessageSink`] collected (step, separator, kernel messages).
pub(crate) fn mount_error(target: &Path, errno: i32, msg: &[u8]) -> Error {
    let (step, kernel) = match msg.iter().position(|&b| b == KERNEL_MSG_SEPARATOR) {
        Some(i) => (&msg[..i], &msg[i + 1..]),
        None => (msg, &[][..]),
    };
    let step = String::from_utf8_lossy(step);
    let kernel = String::from_utf8_lossy(kernel);
    let strerror = std::io::Error::from_raw_os_error(errno);
    let step = if step.is_empty() {
        "mount".into()
    } else {
        step
    };
    let mut detail = if kernel.is_empty() {
        format!("{step}: {strerror}")
    } else {
        format!("{step}: kernel says \"{kernel}\" ({strerror})")
    };
    if kernel.is_empty() {
        // Most overlayfs mount errors go to dmesg only; name the usual causes.
        let create = step.starts_with("create");
        let likely = match errno {
            libc::EINVAL => Some(
                "the kernel gave no reason here; overlayfs logs option conflicts and layer \
                 problems to dmesg",
            ),
            libc::EBUSY if create => Some(
                "likely: the upper or work directory is in use by another overlay mounted \
                 with index=on",
            ),
            libc::ESTALE => {
                Some("likely: the upper layer was used with index=on over different lower layers")
            }
            libc::ELOOP => {
                Some("likely: the overlay stacking depth is exceeded, or layers overlap")
            }
            libc::EOPNOTSUPP if create => Some(
                "likely: a layer filesystem lacks a feature an option needs (file handles \
                 for index/nfs_export, xattrs)",
            ),
            _ => None,
        };
        if let Some(l) = likely {
            detail.push_str(" (");
            detail.push_str(l);
            detail.push(')');
        }
    }
    if errno == libc::EPERM && !detail.contains("user namespace") {
        detail.push_str(
            " (mounting needs CAP_SYS_ADMIN; unprivileged users can mount in a user namespace, \
             see run_in_user_namespace)",
        );
    }
    Error::Mount {
        path: target.to_path_buf(),
        detail: detail.replace('\n', " "),
        errno: Some(errno),
    }
}

/// A pipe for a child's error text: (read end, write end), both close-on-exec.
pub(crate) fn error_pipe(target: &Path) -> Result<(std::fs::File, std::os::fd::OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::io("create pipe", target, crate::error::from_rustix(e)))?;
    Ok((std::fs::File::from(r), w))
}

/// Read everything a child wrote to its error pipe (the write end must be closed).
pub(crate) fn read_pipe(mut r: std::fs::File) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

impl MountSpec {
    /// Mount the overlay at [`MountSpec::target`] in this process's mount namespace.
    ///
    /// Image lowers are loop-mounted first (root only). Uses the new mount API with one
    /// `lowerdir+` per layer (fd-valued for paths over 255 bytes), falling back to `mount(2)`
    /// per [`MountApi`]. On failure the error names the target, the failing step and layer, and
    /// quotes the kernel's own message from the fs_context when it gave one.
    pub fn mount(&self) -> Result<KernelMount> {
        let md = std::fs::metadata(&self.target).map_err(|e| Error::Mount {
            path: self.target.clone(),
            detail: format!("mount point: {e}"),
            errno: e.raw_os_error(),
        })?;
        if !md.is_dir() {
            return Err(Error::Mount {
                path: self.target.clone(),
                detail: "mount point is not a directory".into(),
                errno: Some(libc::ENOTDIR),
            });
        }
        let mut images = Vec::new();
        let mut lowers = Vec::with_capacity(self.lowers.len());
        for l in &self.lowers {
            match l.image {
                Some(fmt) => {
                    let im = ImageMount::mount(&l.path, fmt)?;
                    lowers.push(im.dir().to_path_buf());
                    images.push(im);
                }
                None => lowers.push(l.path.clone()),
            }
        }
        // An image lower's mount directory is ours: errors name the image file instead.
        let renames: Vec<(PathBuf, PathBuf)> = images
            .iter()
            .map(|im| (im.dir().to_path_buf(), im.image().to_path_buf()))
            .collect();
        self.mount_layers(&lowers, images)
            .map_err(|e| e.rename_paths(&renames))
    }

    /// [`MountSpec::mount`] once image lowers are mounted: `lowers` are directories.
    fn mount_layers(&self, lowers: &[PathBuf], images: Vec<ImageMount>) -> Result<KernelMount> {
        let mut prepared = self.prepare(lowers, &self.resolved)?;
        let mut msg = Vec::new();
        let mut relative_to = None;
        match prepared.execute(&mut msg, false) {
            Ok(()) => {}
            Err(NEEDS_FORK) => {
                relative_to = prepared.legacy.as_ref().ok().and_then(|l| {
                    l.chdir
                        .as_ref()
                        .map(|c| PathBuf::from(std::ffi::OsStr::from_bytes(c.as_bytes())))
                });
                // mount(2) with paths relative to a common parent: chdir in a child only.
                prepared.api = MountApi::Legacy;
                let (r, w) = error_pipe(&self.target)?;
                let plan = ChildPlan {
                    namespaces: None,
                    mount: prepared,
                    chdir_after: None,
                    err_pipe: w,
                };
                let res = crate::sys::fork_plan(&plan)
                    .map_err(|e| Error::io("fork mount helper", &self.target, e))?;
                drop(plan);
                let msg = read_pipe(r);
                if let Some(errno) = res {
                    return Err(mount_error(&self.target, errno, &msg));
                }
            }
            Err(errno) => return Err(mount_error(&self.target, errno, &msg)),
        }
        let mut guard = KernelMount {
            target: self.target.clone(),
            mount_id: 0,
            effective: None,
            images,
            armed: false,
        };
        guard.mount_id = mount_id_of(&self.target)?;
        guard.armed = true;
        let entry = read_mountinfo()?
            .into_iter()
            .find(|e| e.mount_id == guard.mount_id);
        match entry {
            Some(entry) if entry.fstype == self.fstype => {
                guard.effective = Some(EffectiveOptions {
                    entry,
                    module_parameters: overlay_module_parameters(),
                    relative_to,
                });
            }
            _ => {
                return Err(Error::Mount {
                    path: self.target.clone(),
                    detail: "mounted, but the mount is not visible in /proc/self/mountinfo".into(),
                    errno: None,
                })
            }
        }
        tracing::debug!(target = %self.target.display(), "mounted kernel overlay");
        Ok(guard)
    }
}

/// A mounted kernel overlay; unmounts it (and then any image lowers) when dropped.
///
/// Dropping never panics: failures are logged with `tracing`. If the mount is busy it is
/// detached lazily (`MNT_DETACH`), so the guard never leaves it attached. Use
/// [`KernelMount::unmount`] to see errors, or [`KernelMount::detach`] to keep the mount.
#[derive(Debug)]
pub struct KernelMount {
    target: PathBuf,
    mount_id: u64,
    effective: Option<EffectiveOptions>,
    images: Vec<ImageMount>,
    armed: bool,
}

impl KernelMount {
    /// The mount point.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The kernel's mount id (as in mountinfo and `statx` `STATX_MNT_ID`).
    pub fn mount_id(&self) -> u64 {
        self.mount_id
    }

    /// The options the kernel reports for the mount, read from `/proc/self/mountinfo` right
    /// after mounting.
    pub fn effective_options(&self) -> &EffectiveOptions {
        self.effective
            .as_ref()
            .expect("a KernelMount always has its options")
    }

    /// Image lowers mounted for this overlay (unmounted after it).
    pub fn image_mounts(&self) -> &[ImageMount] {
        &self.images
    }

    /// Unmount now, reporting errors.
    pub fn unmount(mut self) -> Result<()> {
        self.release()
    }

    /// Keep the overlay (and its image lowers) mounted and forget the guard; returns the
    /// mount point. The caller becomes responsible for unmounting (loop devices clear
    /// themselves once their filesystem is unmounted).
    pub fn detach(mut self) -> PathBuf {
        self.armed = false;
        for im in &mut self.images {
            im.keep();
        }
        std::mem::take(&mut self.target)
    }

    fn release(&mut self) -> Result<()> {
        if !self.armed {
            return Ok(());
        }
        self.armed = false;
        let result = self.unmount_overlay();
        // Image mounts go after the overlay that uses them, top layer first.
        let mut first_err = result.err();
        for mut im in self.images.drain(..) {
            if let Err(e) = im.release() {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn unmount_overlay(&self) -> Result<()> {
        match mount_id_of(&self.target) {
            Ok(id) if id == self.mount_id => {}
            _ => {
                // Not at the top of the target any more: unmounted by someone else, or
                // covered by another mount.
                let still = read_mountinfo()?
                    .iter()
                    .any(|e| e.mount_id == self.mount_id);
                if !still {
                    return Ok(());
                }
                return Err(Error::Mount {
                    path: self.target.clone(),
                    detail: "cannot unmount: another mount now covers the overlay".into(),
                    errno: Some(libc::EBUSY),
                });
            }
        }
        match unmount(&self.target, UnmountFlags::NOFOLLOW) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::BUSY) => {
                tracing::warn!(target = %self.target.display(), "overlay busy; detaching lazily");
                unmount(&self.target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH).map_err(|e| {
                    Error::io(
                        "unmount overlay",
                        &self.target,
                        crate::error::from_rustix(e),
                    )
                })
            }
            Err(e) => Err(Error::io(
                "unmount overlay",
                &self.target,
                crate::error::from_rustix(e),
            )),
        }
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("dropping kernel overlay mount: {e}");
        }
    }
}
