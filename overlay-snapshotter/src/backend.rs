//! Which mounts this snapshotter may hand out, decided once at start-up in the namespaces
//! it shares with containerd: the kernel overlay when the process may mount it (root, from
//! the facade's [`overlay::probe()`]; inside a user namespace, a real test mount with
//! `userxattr` under the root directory, as containerd's own overlayfs snapshotter does), and
//! FUSE (`/dev/fuse`, `mount.fuse3` and `ovl-fuse` found).

use std::path::{Path, PathBuf};

use overlay_core::mount::has_cap_sys_admin_in_initial_namespace;
use overlay_core::{LayerStack, MountSpec, OverlayMountOptions, XattrNamespace};

use crate::layout::{remove_tree, Layout};

/// The backend asked for on the command line (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    /// The kernel overlay where it can be mounted, else `ovl-fuse`.
    #[default]
    Auto,
    /// The kernel overlay only (chains it refuses fail).
    Kernel,
    /// `ovl-fuse` for every overlay mount.
    Fuse,
}

/// What was found at start-up.
#[derive(Debug, Clone)]
pub struct Backends {
    /// What was asked for.
    pub choice: BackendChoice,
    /// The kernel overlay: `Ok(userxattr)` when it can be mounted here, or why not.
    pub kernel: Result<bool, String>,
    /// FUSE: `Ok` when `ovl-fuse` mounts can be served, or why not.
    pub fuse: Result<(), String>,
    /// The overlay module has an `index` parameter: mount with `index=off`, as containerd
    /// does (a layer is a lower of many overlays).
    pub index_off: bool,
    /// CAP_SYS_ADMIN in the initial user namespace (`trusted.*` overlay xattrs; FUSE mounts
    /// get `dev,suid` like the kernel's).
    pub privileged: bool,
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A real overlay mount with `userxattr` in the current namespaces, under `dir`.
fn test_userxattr_mount(dir: &Path) -> Result<(), String> {
    let scratch = overlay_core::mount::private_dir_in(dir, "probe").map_err(|e| e.to_string())?;
    let r = (|| {
        let names = ["l1", "l2", "u", "w", "m"].map(|n| scratch.join(n));
        for p in &names {
            std::fs::create_dir(p).map_err(|e| format!("create {}: {e}", p.display()))?;
        }
        std::fs::write(names[0].join("f"), b"probe").map_err(|e| e.to_string())?;
        let stack = LayerStack::builder()
            .lower(&names[0])
            .lower(&names[1])
            .upper(&names[2], &names[3])
            .xattr_namespace(XattrNamespace::User)
            .build()
            .map_err(|e| e.to_string())?;
        let opts = OverlayMountOptions {
            userxattr: Some(true),
            ..OverlayMountOptions::default()
        };
        let m = MountSpec::new(&stack, &opts, &names[4])
            .and_then(|s| s.mount())
            .map_err(|e| e.to_string())?;
        let seen = std::fs::read(names[4].join("f")).ok();
        drop(m);
        if seen.as_deref() == Some(b"probe") {
            Ok(())
        } else {
            Err("a test mount succeeded but did not show its lower layer".to_string())
        }
    })();
    let _ = remove_tree(&scratch);
    r
}

impl Backends {
    /// Probe this machine for `choice`, with test mounts under the layout's root.
    pub fn detect(layout: &Layout, choice: BackendChoice) -> Backends {
        let privileged = has_cap_sys_admin_in_initial_namespace();
        let kernel = if choice == BackendChoice::Fuse {
            Err("--backend fuse".to_string())
        } else if privileged {
            match overlay::probe().backend("kernel") {
                Some(s) if s.is_yes() => Ok(false),
                Some(s) => Err(format!("kernel overlay: {s}")),
                None => Err("kernel overlay: not probed".into()),
            }
        } else if overlay_core::mount::probe::has_cap_sys_admin() {
            test_userxattr_mount(layout.root())
                .map(|()| true)
                .map_err(|e| format!("kernel overlay with userxattr in this user namespace: {e}"))
        } else {
            Err(
                "no CAP_SYS_ADMIN here: start the snapshotter in the user and mount namespace of containerd"
                    .to_string(),
            )
        };
        let fuse = if choice == BackendChoice::Kernel {
            Err("--backend kernel".to_string())
        } else {
            let dev = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/fuse")
                .map(drop)
                .map_err(|e| format!("/dev/fuse: {e}"));
            dev.and_then(|()| {
                find_program("mount.fuse3")
                    .map(drop)
                    .ok_or_else(|| "mount.fuse3 not found (package fuse3)".to_string())
            })
            .and_then(|()| {
                find_program("ovl-fuse").map(drop).ok_or_else(|| {
                    "ovl-fuse is not in PATH (mount.fuse3 runs it from there)".to_string()
                })
            })
        };
        let index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        Backends {
            choice,
            kernel,
            fuse,
            index_off,
            privileged,
        }
    }

    /// One line per backend, for the start-up log.
    pub fn describe(&self) -> String {
        let k = match &self.kernel {
            Ok(true) => "kernel overlay: yes, with userxattr".to_string(),
            Ok(false) => "kernel overlay: yes".to_string(),
            Err(e) => format!("kernel overlay: no ({e})"),
        };
        let f = match &self.fuse {
            Ok(()) => "ovl-fuse: yes".to_string(),
            Err(e) => format!("ovl-fuse: no ({e})"),
        };
        format!("{k}; {f}")
    }
}
