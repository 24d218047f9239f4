//! What works on this machine: kernel overlay (privileged and in a user namespace), FUSE, and
//! each overlay option, with the reason for everything that does not.
//!
//! [`probe`] runs once per process (cached); [`Probe::run`] probes afresh. Besides reading
//! `/proc` and `/sys`, it does tiny real test mounts in a private temporary directory.

use std::fmt::{self, Write as _};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::format::XattrNamespace;
use crate::mount::child::{ChildPlan, NamespaceSetup};
use crate::mount::kernel::{error_pipe, mount_error, read_pipe};
use crate::mount::options::{OverlayMountOptions, RedirectDir, UuidMode, Xino};
use crate::mount::spec::MountSpec;
use crate::stack::LayerStack;

/// Whether something works, with the reason when it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Works (tested, or certain).
    Yes,
    /// Does not work, and why.
    No(String),
    /// Could not be determined, and why.
    Unknown(String),
}

impl Support {
    /// True for [`Support::Yes`].
    pub fn is_yes(&self) -> bool {
        matches!(self, Support::Yes)
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Support::Yes => None,
            Support::No(r) | Support::Unknown(r) => Some(r),
        }
    }

    fn word(&self) -> &'static str {
        match self {
            Support::Yes => "yes",
            Support::No(_) => "no",
            Support::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            None => f.write_str("yes"),
            Some(r) => write!(f, "{}: {r}", self.word()),
        }
    }
}

/// A named backend or option and whether it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// Name, e.g. `kernel`, `kernel-userns`, `fuse`, `metacopy=on`.
    pub name: &'static str,
    /// Whether it works.
    pub support: Support,
}

/// The result of probing this machine. `Display` gives a human report, [`Probe::to_json`] a
/// JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `uname -r`.
    pub kernel_release: String,
    /// Parsed (major, minor, patch).
    pub kernel_version: (u32, u32, u32),
    /// `overlay` is listed in `/proc/filesystems` (else the module may still autoload).
    pub overlay_in_proc_filesystems: bool,
    /// `/sys/module/overlay/parameters/*` (the kernel's option defaults).
    pub module_parameters: Vec<(String, String)>,
    /// Effective uid.
    pub euid: u32,
    /// CAP_SYS_ADMIN in the effective set.
    pub cap_sys_admin: bool,
    /// This process is in the initial user namespace.
    pub initial_user_namespace: bool,
    /// `fsopen("overlay")` works.
    pub new_mount_api: Support,
    /// `fsconfig` accepts `lowerdir+` (6.8).
    pub lowerdir_plus: Support,
    /// `fsconfig` accepts a layer as an fd (`FSCONFIG_SET_FD`, 6.13).
    pub layer_fds: Support,
    /// Creating a user namespace works.
    pub user_namespaces: Support,
    /// Mode bits of `/dev/fuse` (None when absent).
    pub dev_fuse_mode: Option<u32>,
    /// Path of `fusermount3`, if found.
    pub fusermount3: Option<PathBuf>,
    /// `fusermount3` is setuid root.
    pub fusermount3_setuid_root: bool,
    /// Backends: `kernel`, `kernel-userns`, `fuse`, `fuse-unprivileged`, `fuse-passthrough`,
    /// `fuse-io_uring` (whether the kernel offers FUSE over io_uring, which ovl-fuse uses).
    pub backends: Vec<Feature>,
    /// Overlay options.
    pub options: Vec<Feature>,
}

/// The kernel's switch for FUSE over io_uring (Linux 6.14+): while it reads `Y`, the kernel
/// offers the transport to the FUSE servers that ask for it (ovl-fuse does).
pub const FUSE_URING_SWITCH: &str = "/sys/module/fuse/parameters/enable_uring";

/// The value of [`FUSE_URING_SWITCH`]: `None` where this kernel has no such switch (or the
/// fuse module is not loaded).
pub fn fuse_uring_switch_on() -> Option<bool> {
    std::fs::read_to_string(FUSE_URING_SWITCH)
        .ok()
        .map(|v| v.trim() == "Y")
}

/// Whether the kernel offers FUSE over io_uring to a FUSE server that asks (ovl-fuse does).
fn fuse_io_uring(kv: (u32, u32, u32), kernel_release: &str) -> Support {
    const SWITCH: &str = FUSE_URING_SWITCH;
    if (kv.0, kv.1) < (6, 14) {
        return Support::No(format!(
            "FUSE over io_uring needs Linux 6.14 (this is {kernel_release})"
        ));
    }
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if disabled == 2 {
        return Support::No("io_uring is disabled (kernel.io_uring_disabled=2)".into());
    }
    match fuse_uring_switch_on() {
        Some(true) => Support::Yes,
        Some(false) => Support::No(format!(
            "switched off: `echo Y > {SWITCH}` as root turns it on for mounts made after it"
        )),
        None => Support::No(format!(
            "{SWITCH} is absent (a kernel without CONFIG_FUSE_IO_URING, or the fuse module is not loaded)"
        )),
    }
}

/// The cached probe of this machine (computed on first use).
pub fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(Probe::run)
}

/// The running kernel's version (major, minor, patch); zeros when unparsable.
pub fn kernel_version() -> (u32, u32, u32) {
    static V: OnceLock<(u32, u32, u32)> = OnceLock::new();
    *V.get_or_init(|| parse_kernel_version(&kernel_release()))
}

fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

fn parse_kernel_version(release: &str) -> (u32, u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// CAP_SYS_ADMIN is in this process's effective capability set.
pub fn has_cap_sys_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return rustix::process::geteuid().is_root();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .map(|caps| caps & (1 << 21) != 0)
        .unwrap_or(false)
}

/// This process is in the initial user namespace (its uid map is the identity over all ids).
pub fn in_initial_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(m) => {
            let f: Vec<&str> = m.split_whitespace().collect();
            f == ["0", "0", "4294967295"]
        }
        Err(_) => true,
    }
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A throw-away set of layer directories for a test mount.
struct Scratch {
    root: PathBuf,
    n: usize,
}

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        let root = crate::mount::private_temp_dir("ovl-probe")
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Scratch { root, n: 0 })
    }

    /// Fresh lowers (2), upper, work and mount point.
    fn layers(&mut self) -> std::io::Result<[PathBuf; 5]> {
        self.n += 1;
        let d = self.root.join(self.n.to_string());
        let names = ["l1", "l2", "u", "w", "m"].map(|n| d.join(n));
        for p in &names {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(names[0].join("f"), b"probe")?;
        Ok(names)
    }
}

/// Give the owner access to every directory below `p` (the kernel leaves `work/work` with
/// mode 000, which an unprivileged owner could not remove otherwise).
pub(crate) fn make_removable(p: &std::path::Path) {
    if let Ok(md) = std::fs::symlink_metadata(p) {
        if md.is_dir() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    make_removable(&e.path());
                }
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.root).is_err() {
            make_removable(&self.root);
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Try a real mount with `options`, privileged in this namespace or in a new user namespace.
fn test_mount(scratch: &mut Scratch, options: &OverlayMountOptions, userns: bool) -> Support {
    let layers = match scratch.layers() {
        Ok(l) => l,
        Err(e) => return Support::Unknown(format!("cannot create test directories: {e}")),
    };
    let [l1, l2, u, w, m] = &layers;
    let ns = if userns || options.userxattr == Some(true) {
        XattrNamespace::User
    } else {
        XattrNamespace::Trusted
    };
    let stack = match LayerStack::builder()
        .lower(l1)
        .lower(l2)
        .upper(u, w)
        .xattr_namespace(ns)
        .build()
    {
        Ok(s) => s,
        Err(e) => return Support::Unknown(format!("test layers refused: {e}")),
    };
    let spec = match MountSpec::with_privilege(&stack, options, m, !userns) {
        Ok(s) => s,
        Err(e) => return Support::No(e.to_string()),
    };
    if !userns {
        return match spec.mount() {
            Ok(g) => {
                let ok = std::fs::read(m.join("f"))
                    .map(|d| d == b"probe")
                    .unwrap_or(false);
                drop(g);
                if ok {
                    Support::Yes
                } else {
                    Support::No("mounted, but the lower file is not visible".into())
                }
            }
            Err(e) => Support::No(e.to_string()),
        };
    }
    let lowers: Vec<PathBuf> = spec.lowers.iter().map(|l| l.path.clone()).collect();
    let prepared = match spec.prepare(&lowers, &spec.resolved) {
        Ok(p) => p,
        Err(e) => return Support::Unknown(e.to_string()),
    };
    let (r, w) = match error_pipe(m) {
        Ok(p) => p,
        Err(e) => return Support::Unknown(e.to_string()),
    };
    let plan = ChildPlan {
        namespaces: Some(NamespaceSetup { user: true }),
        mount: prepared,
        chdir_after: None,
        err_pipe: w,
    };
    let res = crate::sys::fork_plan(&plan);
    drop(plan);
    let msg = read_pipe(r);
    match res {
        Ok(None) => Support::Yes,
        Ok(Some(errno)) => Support::No(mount_error(m, errno, &msg).to_string()),
        Err(e) => Support::Unknown(format!("fork: {e}")),
    }
}

impl Probe {
    /// Probe the machine now (no caching; see [`probe`]).
    pub fn run() -> Probe {
        let kernel_release = kernel_release();
        let kv = parse_kernel_version(&kernel_release);
        let euid = rustix::process::geteuid().as_raw();
        let cap_sys_admin = has_cap_sys_admin();
        let initial_user_namespace = in_initial_user_namespace();
        let privileged = cap_sys_admin && initial_user_namespace;
        let overlay_in_proc_filesystems = std::fs::read_to_string("/proc/filesystems")
            .map(|s| {
                s.lines()
                    .any(|l| l.split_whitespace().last() == Some("overlay"))
            })
            .unwrap_or(false);
        let module_parameters = crate::mount::mountinfo::overlay_module_parameters();
        let mut scratch = Scratch::new().ok();

        // New mount API, lowerdir+ and fd layers, tested on an fs_context without mounting.
        let (new_mount_api, lowerdir_plus, layer_fds) = {
            use rustix::mount::{fsconfig_set_fd, fsconfig_set_string, fsopen, FsOpenFlags};
            let by_version = |need: (u32, u32), what: &str| {
                let yes = (kv.0, kv.1) >= need;
                Support::Unknown(format!(
                    "cannot test without CAP_SYS_ADMIN; kernel {}.{} {} {what} (needs {}.{})",
                    kv.0,
                    kv.1,
                    if yes { "should have" } else { "lacks" },
                    need.0,
                    need.1
                ))
            };
            match fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
                Ok(fs) => {
                    let dir = scratch
                        .as_ref()
                        .map(|s| s.root.clone())
                        .unwrap_or_else(std::env::temp_dir);
                    let plus = match fsconfig_set_string(&fs, "lowerdir+", &dir) {
                        Ok(()) => Support::Yes,
                        Err(e) => Support::No(format!(
                            "fsconfig lowerdir+ refused ({e}); needs Linux 6.8, mount(2) with \
                             an escaped lowerdir= list is used instead (one page at most)"
                        )),
                    };
                    let fds = match rustix::fs::open(
                        &dir,
                        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                        rustix::fs::Mode::empty(),
                    ) {
                        Ok(dfd) => match fsconfig_set_fd(&fs, "lowerdir+", &dfd) {
                            Ok(()) => Support::Yes,
                            Err(e) => Support::No(format!(
                                "fsconfig lowerdir+ as an fd refused ({e}); needs Linux 6.13, \
                                 so layer paths over 255 bytes cannot be passed to fsconfig"
                            )),
                        },
                        Err(e) => Support::Unknown(format!("open test dir: {e}")),
                    };
                    (Support::Yes, plus, fds)
                }
                Err(rustix::io::Errno::NOSYS) => {
                    let no = || Support::No("no new mount API".into());
                    (
                        Support::No("fsopen: ENOSYS (needs Linux 5.2)".into()),
                        no(),
                        no(),
                    )
                }
                Err(e) if !privileged => (
                    Support::Unknown(format!("fsopen(\"overlay\"): {e} (not privileged)")),
                    by_version((6, 8), "lowerdir+"),
                    by_version((6, 13), "fd-valued layers"),
                ),
                Err(e) => {
                    let no = || Support::No(format!("fsopen(\"overlay\"): {e}"));
                    (no(), no(), no())
                }
            }
        };

        let userns_sysctls = {
            let mut why = Vec::new();
            if read_trim("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
                why.push("/proc/sys/user/max_user_namespaces is 0".to_string());
            }
            if read_trim("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0")
                && euid != 0
            {
                why.push("kernel.unprivileged_userns_clone is 0".to_string());
            }
            if read_trim("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref()
                == Some("1")
                && euid != 0
            {
                why.push(
                    "kernel.apparmor_restrict_unprivileged_userns is 1 (AppArmor may deny)"
                        .to_string(),
                );
            }
            why
        };

        let mut backends = Vec::new();
        let kernel = if !overlay_in_proc_filesystems && module_parameters.is_empty() {
            Some("overlay is not in /proc/filesystems and the overlay module is not loaded (modprobe overlay)".to_string())
        } else {
            None
        };
        let kernel_priv = match (&kernel, privileged, scratch.as_mut()) {
            (Some(why), _, _) => Support::No(why.clone()),
            (None, false, _) => Support::No(format!(
                "needs CAP_SYS_ADMIN in the initial user namespace (euid {euid}, CAP_SYS_ADMIN {}, initial user namespace {})",
                if cap_sys_admin { "yes" } else { "no" },
                if initial_user_namespace { "yes" } else { "no" }
            )),
            (None, true, Some(s)) => test_mount(s, &OverlayMountOptions::default(), false),
            (None, true, None) => Support::Unknown("cannot create a temporary directory".into()),
        };
        backends.push(Feature {
            name: "kernel",
            support: kernel_priv,
        });
        let kernel_userns = match (&kernel, scratch.as_mut()) {
            (Some(why), _) => Support::No(why.clone()),
            _ if (kv.0, kv.1) < (5, 11) => Support::No(format!(
                "overlay is mountable in a user namespace since Linux 5.11 (this is {kernel_release})"
            )),
            _ if !userns_sysctls.is_empty() => Support::No(userns_sysctls.join("; ")),
            (None, Some(s)) => test_mount(s, &OverlayMountOptions::default(), true),
            (None, None) => Support::Unknown("cannot create a temporary directory".into()),
        };
        let user_namespaces = match &kernel_userns {
            Support::Yes => Support::Yes,
            Support::No(r) if r.contains("unshare") || !userns_sysctls.is_empty() => {
                Support::No(r.clone())
            }
            other if userns_sysctls.is_empty() => Support::Unknown(format!(
                "no sysctl forbids them, but the test mount failed: {}",
                other.reason().unwrap_or("")
            )),
            _ => Support::No(userns_sysctls.join("; ")),
        };
        backends.push(Feature {
            name: "kernel-userns",
            support: kernel_userns,
        });

        let dev_fuse = std::fs::metadata("/dev/fuse").ok();
        let dev_fuse_mode = dev_fuse.as_ref().map(|m| m.permissions().mode() & 0o7777);
        let fusermount3 = find_in_path("fusermount3");
        let fusermount3_setuid_root = fusermount3
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.uid() == 0 && m.permissions().mode() & 0o4000 != 0)
            .unwrap_or(false);
        let fuse = match (
            &dev_fuse,
            rustix::fs::access(
                "/dev/fuse",
                rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
            ),
        ) {
            (None, _) => Support::No(
                "/dev/fuse does not exist (modprobe fuse, or pass the device into the container)"
                    .into(),
            ),
            (Some(_), Ok(())) => Support::Yes,
            (Some(_), Err(e)) => Support::No(format!(
                "/dev/fuse (mode {:04o}) cannot be opened read-write: {e}",
                dev_fuse_mode.unwrap_or(0)
            )),
        };
        backends.push(Feature {
            name: "fuse",
            support: fuse,
        });
        let fuse_unpriv = match dev_fuse_mode {
            None => Support::No("/dev/fuse does not exist".into()),
            Some(mode) if mode & 0o006 == 0o006 => {
                if fusermount3_setuid_root || user_namespaces.is_yes() {
                    Support::Yes
                } else {
                    Support::No("/dev/fuse is world read-write, but there is neither a setuid fusermount3 nor user namespaces to mount with".into())
                }
            }
            Some(mode) => Support::No(format!(
                "/dev/fuse has mode {mode:04o}: unprivileged users cannot open it (needs 0666; fusermount3 opens it with the caller's permissions, so being setuid does not help){}",
                match (&fusermount3, fusermount3_setuid_root) {
                    (None, _) => "; no fusermount3 found".to_string(),
                    (Some(p), false) => format!("; {} is not setuid root", p.display()),
                    (Some(_), true) => String::new(),
                }
            )),
        };
        backends.push(Feature {
            name: "fuse-unprivileged",
            support: fuse_unpriv,
        });
        let passthrough = if (kv.0, kv.1) < (6, 9) {
            Support::No(format!(
                "FUSE passthrough needs Linux 6.9 (this is {kernel_release})"
            ))
        } else if dev_fuse.is_none() {
            Support::No("/dev/fuse does not exist".into())
        } else if !privileged {
            Support::No(
                "FUSE passthrough (backing files) needs CAP_SYS_ADMIN in the initial user namespace"
                    .into(),
            )
        } else {
            Support::Yes
        };
        backends.push(Feature {
            name: "fuse-passthrough",
            support: passthrough,
        });
        backends.push(Feature {
            name: "fuse-io_uring",
            support: fuse_io_uring(kv, &kernel_release),
        });

        // Options: real test mounts where we can mount at all.
        let mut options = Vec::new();
        let can_priv = backends[0].support.is_yes();
        let can_userns = backends[1].support.is_yes();
        let version_gate = |need: (u32, u32)| -> Option<Support> {
            ((kv.0, kv.1) < need).then(|| {
                Support::No(format!(
                    "needs Linux {}.{} (this is {kernel_release})",
                    need.0, need.1
                ))
            })
        };
        let mut check = |name: &'static str,
                         need: (u32, u32),
                         trusted_only: bool,
                         o: OverlayMountOptions| {
            let support = if let Some(s) = version_gate(need) {
                s
            } else if let Some(s) = scratch.as_mut().filter(|_| can_priv) {
                test_mount(s, &o, false)
            } else if trusted_only {
                Support::No("needs trusted.* xattrs: CAP_SYS_ADMIN in the initial user namespace (not available with userxattr)".into())
            } else if let Some(s) = scratch.as_mut().filter(|_| can_userns) {
                let o = OverlayMountOptions {
                    userxattr: Some(true),
                    ..o
                };
                test_mount(s, &o, true)
            } else {
                Support::Unknown("no kernel overlay mount is possible here to test it".into())
            };
            options.push(Feature { name, support });
        };
        let d = OverlayMountOptions::default;
        check(
            "redirect_dir=on",
            (4, 10),
            true,
            OverlayMountOptions {
                redirect_dir: Some(RedirectDir::On),
                ..d()
            },
        );
        check(
            "index=on",
            (4, 13),
            false,
            OverlayMountOptions { index: true, ..d() },
        );
        check(
            "metacopy=on",
            (4, 19),
            true,
            OverlayMountOptions {
                metacopy: true,
                redirect_dir: Some(RedirectDir::On),
                ..d()
            },
        );
        check(
            "nfs_export=on",
            (4, 16),
            false,
            OverlayMountOptions {
                nfs_export: true,
                index: true,
                ..d()
            },
        );
        check(
            "xino=on",
            (4, 17),
            false,
            OverlayMountOptions {
                xino: Xino::On,
                ..d()
            },
        );
        check(
            "uuid=on",
            (6, 6),
            false,
            OverlayMountOptions {
                uuid: UuidMode::On,
                ..d()
            },
        );
        check(
            "volatile",
            (5, 10),
            false,
            OverlayMountOptions {
                volatile: true,
                ..d()
            },
        );
        {
            let support = if let Some(s) = version_gate((5, 11)) {
                s
            } else if let Some(s) = scratch.as_mut().filter(|_| can_priv || can_userns) {
                test_mount(
                    s,
                    &OverlayMountOptions {
                        userxattr: Some(true),
                        ..d()
                    },
                    !can_priv,
                )
            } else {
                Support::Unknown("no kernel overlay mount is possible here to test it".into())
            };
            options.push(Feature {
                name: "userxattr",
                support,
            });
        }
        options.push(Feature {
            name: "lowerdir+",
            support: lowerdir_plus.clone(),
        });
        options.push(Feature {
            name: "layer fds",
            support: layer_fds.clone(),
        });

        Probe {
            kernel_release,
            kernel_version: kv,
            overlay_in_proc_filesystems,
            module_parameters,
            euid,
            cap_sys_admin,
            initial_user_namespace,
            new_mount_api,
            lowerdir_plus,
            layer_fds,
            user_namespaces,
            dev_fuse_mode,
            fusermount3,
            fusermount3_setuid_root,
            backends,
            options,
        }
    }

    /// The named backend's support (`kernel`, `kernel-userns`, `fuse`, `fuse-unprivileged`,
    /// `fuse-passthrough`, `fuse-io_uring`).
    pub fn backend(&self, name: &str) -> Option<&Support> {
        self.backends
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.support)
    }

    /// The named option's support (e.g. `metacopy=on`, `userxattr`).
    pub fn option(&self, name: &str) -> Option<&Support> {
        self.options
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.support)
    }

    /// The probe as a JSON object.
    pub fn to_json(&self) -> String {
        fn s(v: &str) -> String {
            let mut o = String::from("\"");
            for c in v.chars() {
                match c {
                    '"' => o.push_str("\\\""),
                    '\\' => o.push_str("\\\\"),
                    '\n' => o.push_str("\\n"),
                    c if (c as u32) < 0x20 => {
                        let _ = write!(o, "\\u{:04x}", c as u32);
                    }
                    c => o.push(c),
                }
            }
            o.push('"');
            o
        }
        fn sup(x: &Support) -> String {
            match x.reason() {
                None => "{\"status\":\"yes\"}".into(),
                Some(r) => format!("{{\"status\":\"{}\",\"reason\":{}}}", x.word(), s(r)),
            }
        }
        fn feats(v: &[Feature]) -> String {
            let items: Vec<String> = v
                .iter()
                .map(|f| format!("{}:{}", s(f.name), sup(&f.support)))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        let params: Vec<String> = self
            .module_parameters
            .iter()
            .map(|(k, v)| format!("{}:{}", s(k), s(v)))
            .collect();
        format!(
            "{{\"kernel_release\":{},\"kernel_version\":[{},{},{}],\
             \"overlay_in_proc_filesystems\":{},\"module_parameters\":{{{}}},\"euid\":{},\
             \"cap_sys_admin\":{},\"initial_user_namespace\":{},\"new_mount_api\":{},\
             \"lowerdir_plus\":{},\"layer_fds\":{},\"user_namespaces\":{},\
             \"dev_fuse_mode\":{},\"fusermount3\":{},\"fusermount3_setuid_root\":{},\
             \"backends\":{},\"options\":{}}}",
            s(&self.kernel_release),
            self.kernel_version.0,
            self.kernel_version.1,
            self.kernel_version.2,
            self.overlay_in_proc_filesystems,
            params.join(","),
            self.euid,
            self.cap_sys_admin,
            self.initial_user_namespace,
            sup(&self.new_mount_api),
            sup(&self.lowerdir_plus),
            sup(&self.layer_fds),
            sup(&self.user_namespaces),
            self.dev_fuse_mode
                .map(|m| format!("\"{m:04o}\""))
                .unwrap_or_else(|| "null".into()),
            self.fusermount3
                .as_deref()
                .map(|p| s(&p.to_string_lossy()))
                .unwrap_or_else(|| "null".into()),
            self.fusermount3_setuid_root,
            feats(&self.backends),
            feats(&self.options),
        )
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "kernel:           {} ({}.{}.{}), overlay in /proc/filesystems: {}",
            self.kernel_release,
            self.kernel_version.0,
            self.kernel_version.1,
            self.kernel_version.2,
            yn(self.overlay_in_proc_filesystems)
        )?;
        let params: Vec<String> = self
            .module_parameters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(
            f,
            "module params:    {}",
            if params.is_empty() {
                "(overlay module not loaded)".to_string()
            } else {
                params.join(" ")
            }
        )?;
        writeln!(
            f,
            "privileges:       euid {}, CAP_SYS_ADMIN {}, initial user namespace {}",
            self.euid,
            yn(self.cap_sys_admin),
            yn(self.initial_user_namespace)
        )?;
        writeln!(f, "new mount API:    {}", self.new_mount_api)?;
        writeln!(f, "lowerdir+:        {}", self.lowerdir_plus)?;
        writeln!(f, "layer fds:        {}", self.layer_fds)?;
        writeln!(f, "user namespaces:  {}", self.user_namespaces)?;
        writeln!(
            f,
            "/dev/fuse:        {}",
            match self.dev_fuse_mode {
                Some(m) => format!("present, mode {m:04o}"),
                None => "absent".into(),
            }
        )?;
        writeln!(
            f,
            "fusermount3:      {}",
            match &self.fusermount3 {
                Some(p) => format!(
                    "{}{}",
                    p.display(),
                    if self.fusermount3_setuid_root {
                        " (setuid root)"
                    } else {
                        " (not setuid root)"
                    }
                ),
                None => "not found".into(),
            }
        )?;
        writeln!(f, "backends:")?;
        for b in &self.backends {
            writeln!(f, "  {:<18} {}", b.name, b.support)?;
        }
        writeln!(f, "options:")?;
        for o in &self.options {
            writeln!(f, "  {:<18} {}", o.name, o.support)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v657"), (6, 18, 44));
        assert_eq!(parse_kernel_version("5.15.0-91-generic"), (5, 15, 0));
        assert_eq!(parse_kernel_version("6.8"), (6, 8, 0));
    }

    #[test]
    fn fuse_io_uring_follows_the_kernel_switch() {
        let old = fuse_io_uring((6, 13, 0), "6.13.0");
        assert!(
            matches!(&old, Support::No(why) if why.contains("6.14")),
            "{old:?}"
        );
        // On a kernel with the transport, the answer is the switch's value.
        let switch = std::fs::read_to_string(FUSE_URING_SWITCH);
        let now = fuse_io_uring((6, 18, 0), "6.18.0");
        match switch.as_deref().map(str::trim) {
            Ok("Y") => assert!(now.is_yes(), "{now:?}"),
            Ok(_) => assert!(
                matches!(&now, Support::No(why) if why.contains("echo Y")),
                "{now:?}"
            ),
            Err(_) => assert!(
                matches!(&now, Support::No(why) if why.contains("absent")),
                "{now:?}"
            ),
        }
    }
}
