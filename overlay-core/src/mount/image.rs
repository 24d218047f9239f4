//! Image lowers: a squashfs or EROFS image file loop-mounted read-only into a private
//! temporary directory, for use as an overlay lower layer (live systems).

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, unmount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use crate::error::{from_rustix, Error, Result};
use crate::mount::child::drain_kernel_messages;
use crate::stack::ImageFormat;

/// An image file mounted read-only on an auto-clearing loop device.
///
/// Dropping unmounts it and removes its directory; the loop device detaches itself
/// (`LO_FLAGS_AUTOCLEAR`) once the filesystem is gone.
#[derive(Debug)]
pub struct ImageMount {
    image: PathBuf,
    format: ImageFormat,
    dir: PathBuf,
    loop_device: PathBuf,
    armed: bool,
}

fn unsupported(image: &Path, reason: impl Into<String>) -> Error {
    Error::Unsupported {
        op: "mount image lower",
        path: image.to_path_buf(),
        reason: reason.into(),
    }
}

impl ImageMount {
    /// Loop-mount `image` read-only (`nodev,nosuid`) into a new private temporary directory.
    ///
    /// Needs root (CAP_SYS_ADMIN in the initial user namespace) and the loop driver; fails
    /// with [`Error::Unsupported`] explaining which is missing.
    pub fn mount(image: &Path, format: ImageFormat) -> Result<ImageMount> {
        if !crate::mount::has_cap_sys_admin_in_initial_namespace() {
            return Err(unsupported(
                image,
                format!(
                    "a {} image lower needs a loop device and a {} mount, which need root \
                     (CAP_SYS_ADMIN in the initial user namespace); extract the image into a \
                     directory or mount it beforehand",
                    format.fstype(),
                    format.fstype()
                ),
            ));
        }
        let control = rustix::fs::open(
            "/dev/loop-control",
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            unsupported(
                image,
                format!("/dev/loop-control: {e}: the loop driver is not available"),
            )
        })?;
        let backing = rustix::fs::open(image, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::io("open image lower", image, from_rustix(e)))?;
        let name = image.as_os_str().as_bytes();
        let name = &name[name.len().saturating_sub(63)..];
        let mut attempt = 0;
        let (loop_fd, loop_device) = loop {
            attempt += 1;
            let n = crate::sys::loop_ctl_get_free(control.as_fd())
                .map_err(|e| unsupported(image, format!("no free loop device: {e}")))?;
            let dev = PathBuf::from(format!("/dev/loop{n}"));
            let fd = rustix::fs::open(&dev, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| {
                    unsupported(
                        image,
                        format!("{}: {e} (no loop device node)", dev.display()),
                    )
                })?;
            match crate::sys::loop_configure(
                fd.as_fd(),
                backing.as_fd(),
                crate::sys::LO_FLAGS_READ_ONLY | crate::sys::LO_FLAGS_AUTOCLEAR,
                name,
            ) {
                Ok(()) => break (fd, dev),
                // Another process took the same free device: ask again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 16 => continue,
                Err(e) => {
                    return Err(Error::io(
                        "attach image to loop device (LOOP_CONFIGURE)",
                        image,
                        e,
                    ))
                }
            }
        };
        let dir = match crate::mount::private_temp_dir("ovl-image") {
            Ok(d) => d,
            Err(e) => {
                let _ = crate::sys::loop_clear(loop_fd.as_fd());
                // The directory's name is ours; say what it was for.
                return Err(match e {
                    Error::Io { source, .. } => Error::io(
                        "create a temporary mount directory for image lower",
                        image,
                        source,
                    ),
                    e => e,
                });
            }
        };
        if let Err(e) = mount_block_fs(format.fstype(), &loop_device, &dir) {
            let _ = crate::sys::loop_clear(loop_fd.as_fd());
            let _ = std::fs::remove_dir(&dir);
            return Err(match e {
                MountFailure::Errno(errno, msg) => Error::Mount {
                    path: image.to_path_buf(),
                    detail: if msg.is_empty() {
                        format!(
                            "mount {} image from {}: {}",
                            format.fstype(),
                            loop_device.display(),
                            std::io::Error::from_raw_os_error(errno)
                        )
                    } else {
                        format!(
                            "mount {} image from {}: kernel says \"{msg}\" ({})",
                            format.fstype(),
                            loop_device.display(),
                            std::io::Error::from_raw_os_error(errno)
                        )
                    },
                    errno: Some(errno),
                },
            });
        }
        // The mount holds the device now; closing our fd lets autoclear detach it later.
        drop(loop_fd);
        tracing::debug!(image = %image.display(), dir = %dir.display(), "mounted image lower");
        Ok(ImageMount {
            image: image.to_path_buf(),
            format,
            dir,
            loop_device,
            armed: true,
        })
    }

    /// The directory the image is mounted on (the overlay's lower layer).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The image format.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The loop device (`/dev/loopN`).
    pub fn loop_device(&self) -> &Path {
        &self.loop_device
    }

    /// Keep the mount when dropped.
    pub(crate) fn keep(&mut self) {
        self.armed = false;
    }

    /// Unmount and remove the directory.
    pub(crate) fn release(&mut self) -> Result<()> {
        if !self.armed {
            return Ok(());
        }
        self.armed = false;
        let r = match unmount(&self.dir, UnmountFlags::NOFOLLOW) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::BUSY) => {
                unmount(&self.dir, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
            }
            Err(e) => Err(e),
        };
        // Errors name the image file: the directory is ours, not something the user gave.
        r.map_err(|e| Error::io("unmount image lower", &self.image, from_rustix(e)))?;
        std::fs::remove_dir(&self.dir)
            .map_err(|e| Error::io("remove the mount directory of image lower", &self.image, e))
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("cleaning up image lower: {e}");
        }
    }
}

enum MountFailure {
    Errno(i32, String),
}

/// Mount a read-only block filesystem from `dev` on `dir` (new API, else `mount(2)`).
fn mount_block_fs(fstype: &str, dev: &Path, dir: &Path) -> std::result::Result<(), MountFailure> {
    let attrs = MountAttrFlags::MOUNT_ATTR_RDONLY
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOSUID;
    let fail = |e: rustix::io::Errno, fs: Option<&std::os::fd::OwnedFd>| {
        let mut msg = Vec::new();
        if let Some(fs) = fs {
            drain_kernel_messages(fs, &mut msg);
        }
        MountFailure::Errno(e.raw_os_error(), String::from_utf8_lossy(&msg).into_owned())
    };
    match fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => {
            fsconfig_set_string(&fs, "source", dev).map_err(|e| fail(e, Some(&fs)))?;
            fsconfig_set_flag(&fs, "ro").map_err(|e| fail(e, Some(&fs)))?;
            fsconfig_create(&fs).map_err(|e| fail(e, Some(&fs)))?;
            let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
                .map_err(|e| fail(e, Some(&fs)))?;
            move_mount(
                &mnt,
                "",
                rustix::fs::CWD,
                dir,
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )
            .map_err(|e| fail(e, None))
        }
        Err(rustix::io::Errno::NOSYS) => rustix::mount::mount(
            dev,
            dir,
            fstype,
            MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID,
            None,
        )
        .map_err(|e| fail(e, None)),
        Err(e) => Err(fail(e, None)),
    }
}
