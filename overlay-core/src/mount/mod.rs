//! The kernel mount backend: mount a [`LayerStack`](crate::LayerStack) with the kernel's
//! overlayfs.
//!
//! * [`MountSpec`]: the mount as data (type, source, options, target), printable as the
//!   equivalent `mount -t overlay` command; [`MountSpec::mount`] returns a [`KernelMount`]
//!   guard that unmounts on drop.
//! * [`OverlayMountOptions`]: every overlay option passed explicitly (never the module
//!   defaults), checked against the kernel's conflict rules before mounting.
//! * The new mount API (`fsopen`/`fsconfig`/`fsmount`/`move_mount`) with one `lowerdir+` per
//!   layer, so 500 layers and paths with `:`, `,` or spaces work; layer paths over 255 bytes
//!   go as fds. Without that API, `mount(2)` with an escaped option string (relative paths
//!   from a forked child when it exceeds a page).
//! * [`run_in_user_namespace`]: an unprivileged mount in a new user + mount namespace
//!   (`userxattr`), running a command inside.
//! * Image lowers ([`ImageMount`]): squashfs/EROFS files loop-mounted read-only (root).
//! * [`probe()`]: what works on this machine and why not.
//!
//! ```no_run
//! use overlay_core::{LayerStack, MountSpec, OverlayMountOptions};
//! let stack = LayerStack::builder()
//!     .lower("/srv/base")
//!     .lower("/srv/patch")
//!     .upper("/srv/upper", "/srv/work")
//!     .build()?;
//! let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), "/mnt/merged")?;
//! println!("{spec}"); // mount -t overlay overlay -o 'nosuid,nodev,lowerdir=...' /mnt/merged
//! let mount = spec.mount()?;
//! println!("{:?}", mount.effective_options().get("redirect_dir"));
//! drop(mount); // unmounted
//! # Ok::<(), overlay_core::Error>(())
//! ```

pub(crate) mod child;
pub mod image;
pub mod kernel;
pub mod mountinfo;
pub mod options;
pub mod probe;
pub mod spec;
pub mod userns;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use child::MountApi;
pub use image::ImageMount;
pub use kernel::KernelMount;
pub use mountinfo::{EffectiveOptions, MountInfoEntry};
pub use options::{Atime, OverlayMountOptions, RedirectDir, UuidMode, Verity, Xino};
pub use probe::{probe, Feature, Probe, Support};
pub use spec::{escape_option_value, MountSpec, FSCONFIG_MAX_STRING};
pub use userns::{
    run_in_mount_namespace, run_in_user_namespace, spawn_in_mount_namespace,
    spawn_in_user_namespace,
};

use crate::error::{Error, Result};

/// True when this process has CAP_SYS_ADMIN in the initial user namespace: it may mount,
/// use loop devices and `trusted.*` xattrs.
pub fn has_cap_sys_admin_in_initial_namespace() -> bool {
    probe::has_cap_sys_admin() && probe::in_initial_user_namespace()
}

/// Create a new directory `<tmp>/<prefix>-<pid>-<n>` with mode 0700.
pub(crate) fn private_temp_dir(prefix: &str) -> Result<PathBuf> {
    private_dir_in(&std::env::temp_dir(), prefix)
}

/// Create a new directory `<parent>/<prefix>-<pid>-<n>-<nanos>` with mode 0700, a name no
/// other process or earlier call used (for mount points and scratch space).
pub fn private_dir_in(parent: &Path, prefix: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last = None;
    for _ in 0..64 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = parent.join(format!("{prefix}-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::io("create private temporary directory", p, e)),
        }
    }
    Err(Error::io(
        "create private temporary directory",
        parent,
        last.unwrap_or_else(|| std::io::Error::other("no free name")),
    ))
}
