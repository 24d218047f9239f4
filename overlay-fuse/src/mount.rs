//! Mounting an [`OverlayFs`]: the fuser session setup shared by the `ovl-fuse` binary and
//! library users ([`spawn_mount`]).

use std::io;
use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL};
use overlay_core::Overlay;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::fs::{FsConfig, FsInspector, OverlayFs};

/// How to mount (kernel-side options and threading).
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// FUSE-side behaviour.
    pub fs: FsConfig,
    /// Source shown in /proc/mounts.
    pub fsname: String,
    /// Let other users (and root) use the mount (`allow_other`). Default: when root.
    pub allow_other: bool,
    /// Let root use the mount as well as the owner (`allow_root`).
    pub allow_root: bool,
    /// Allow device nodes (`dev`). Default: no (`nodev`), as fuse-overlayfs and the kernel
    /// overlay mounted by `ovl`; only root can turn it on.
    pub dev: bool,
    /// Honour set-user/group-ID bits (`suid`). Default: no (`nosuid`); only root can turn
    /// it on.
    pub suid: bool,
    /// Allow execution.
    pub exec: bool,
    /// Mount `noatime` (default: the daemon cannot maintain atime cheaply).
    pub noatime: bool,
    /// Synchronous writes (`sync`).
    pub sync: bool,
    /// Synchronous directory changes (`dirsync`).
    pub dirsync: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Test hook: the io_uring queues fail to start, so the fall-back to `/dev/fuse` reads
    /// can be tested.
    #[doc(hidden)]
    pub io_uring_fail_for_test: bool,
}

impl MountConfig {
    /// Defaults for the calling user, like fuse-overlayfs: root gets `allow_other`; everyone
    /// gets `nodev`, `nosuid`, `default_permissions` and `noatime` (set [`MountConfig::dev`]
    /// and [`MountConfig::suid`] to allow device nodes and set-id bits).
    pub fn for_current_user(fs: FsConfig) -> Self {
        let root = rustix::process::geteuid().is_root();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        MountConfig {
            fs,
            fsname: "ovl-fuse".into(),
            allow_other: root,
            allow_root: false,
            dev: false,
            suid: false,
            exec: true,
            noatime: true,
            sync: false,
            dirsync: false,
            threads: (cpus * 2).clamp(4, 16),
            io_uring_fail_for_test: false,
        }
    }

    fn fuser_config(&self) -> Config {
        self.fuser_config_as("ovl-fuse", true)
    }

    /// The fuser configuration for a mount of type `fuse.SUBTYPE`, with or without the
    /// kernel checking permissions from the attributes reported (`default_permissions`).
    pub(crate) fn fuser_config_as(&self, subtype: &str, default_permissions: bool) -> Config {
        let mut opts = vec![
            MountOption::FSName(self.fsname.clone()),
            // As a kernel option, so the mount's type is `fuse.SUBTYPE` on both paths
            // (fuser's own mount(2) ignores `Subtype`; fusermount3 takes it either way).
            MountOption::CUSTOM(format!("subtype={subtype}")),
        ];
        if default_permissions {
            opts.push(MountOption::DefaultPermissions);
        }
        opts.push(if self.fs.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        });
        let root = rustix::process::geteuid().is_root();
        // fusermount3 refuses dev/suid for users; only ask for them when allowed.
        if self.dev && root {
            opts.push(MountOption::Dev);
        } else {
            opts.push(MountOption::NoDev);
        }
        if self.suid && root {
            opts.push(MountOption::Suid);
        } else {
            opts.push(MountOption::NoSuid);
        }
        opts.push(if self.exec {
            MountOption::Exec
        } else {
            MountOption::NoExec
        });
        if self.noatime {
            opts.push(MountOption::NoAtime);
        }
        if self.sync {
            opts.push(MountOption::Sync);
        }
        if self.dirsync {
            opts.push(MountOption::DirSync);
        }
        let mut cfg = Config::default();
        cfg.mount_options = opts;
        cfg.acl = if self.allow_other {
            SessionACL::All
        } else if self.allow_root {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        cfg.n_threads = Some(self.threads.max(1));
        cfg.io_uring_fail_for_test = self.io_uring_fail_for_test;
        // Each worker reads its own clone of the session fd (less contention), which needs
        // /dev/fuse to be openable; rootless mounts via fusermount3 may not manage that.
        cfg.clone_fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_ok();
        if !cfg.clone_fd {
            info!("/dev/fuse cannot be reopened: workers share one session fd");
        }
        cfg
    }
}

/// A mounted session (handshake done, not serving yet) and how to unmount it.
#[derive(Debug)]
pub struct MountedSession {
    /// The fuser session: call `run` (or `spawn`).
    pub session: Session<OverlayFs>,
    /// Counters of the filesystem.
    pub inspector: FsInspector,
    /// Unmounts the filesystem (the session then ends).
    pub unmounter: Unmounter,
}

/// Unmounts a [`MountedSession`]; usable from another thread.
#[derive(Debug)]
pub struct Unmounter {
    inner: fuser::SessionUnmounter,
    mountpoint: PathBuf,
}

impl Unmounter {
    /// Unmount (`umount2`, or `fusermount3 -u -z` for user mounts).
    pub fn unmount(&mut self) -> Result<()> {
        self.inner.unmount().map_err(|source| Error::Unmount {
            path: self.mountpoint.clone(),
            source,
        })
    }
}

/// Mount `overlay` at `mountpoint` and complete the FUSE handshake; the returned session is
/// not serving requests yet (call `run` or `spawn`).
///
/// As root this uses `mount(2)`; otherwise fuser falls back to the setuid `fusermount3`.
pub fn mount_session(
    overlay: Overlay,
    mountpoint: &Path,
    config: &MountConfig,
) -> Result<MountedSession> {
    let fs = OverlayFs::new(overlay, config.fs.clone());
    let inspector = fs.inspector();
    let (session, unmounter) = mount_fs(fs, mountpoint, &config.fuser_config())?;
    OverlayFs::set_notifier(&inspector, session.notifier());
    OverlayFs::set_io_uring(&inspector, session.io_uring());
    Ok(MountedSession {
        session,
        inspector,
        unmounter,
    })
}

/// Mount any filesystem of ours with `fuser_config` and complete the handshake.
pub(crate) fn mount_fs<FS: fuser::Filesystem>(
    fs: FS,
    mountpoint: &Path,
    fuser_config: &Config,
) -> Result<(Session<FS>, Unmounter)> {
    let mount_err = |source| Error::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    let mut session = Session::new(fs, mountpoint, fuser_config).map_err(|source| {
        let denied = source.kind() == io::ErrorKind::PermissionDenied;
        if denied && !fuser_config.clone_fd {
            // fusermount3 also opens /dev/fuse with the caller's rights.
            Error::Mount {
                path: mountpoint.to_path_buf(),
                source: io::Error::new(
                    source.kind(),
                    format!(
                        "{source}: /dev/fuse is not readable and writable by this user, which unprivileged FUSE mounts need"
                    ),
                ),
            }
        } else {
            mount_err(source)
        }
    })?;
    let unmounter = Unmounter {
        inner: session.unmount_callable(),
        mountpoint: mountpoint.to_path_buf(),
    };
    Ok((session, unmounter))
}

/// A mount served by background threads of this process; unmounted on drop.
#[derive(Debug)]
pub struct FuseMount {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    inspector: FsInspector,
}

/// Mount `overlay` at `mountpoint` and serve it from background threads.
pub fn spawn_mount(overlay: Overlay, mountpoint: &Path, config: &MountConfig) -> Result<FuseMount> {
    let m = mount_session(overlay, mountpoint, config)?;
    let bg = m.session.spawn().map_err(|source| Error::Session {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    Ok(FuseMount {
        session: Some(bg),
        mountpoint: mountpoint.to_path_buf(),
        inspector: m.inspector,
    })
}

impl FuseMount {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Counters of the running filesystem.
    pub fn inspector(&self) -> &FsInspector {
        &self.inspector
    }

    /// Unmount and wait for the worker threads to finish.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<()> {
        if let Some(bg) = self.session.take() {
            // The background session owns the mount: unmount through it, then join.
            bg.umount_and_join().map_err(|source| Error::Unmount {
                path: self.mountpoint.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            warn!("{e}");
        }
    }
}
