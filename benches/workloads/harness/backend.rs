//! Backends: how to find, mount and unmount each one. Every mount lives in a [`Mounted`]
//! guard that unmounts on drop (also on panic and after Ctrl-C), and every per-run directory
//! in a [`RunDir`] guard that removes it, but never while anything is still mounted below it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::options::{manifest_dir, target_dirs, Options};
use super::stack::Stack;
use super::util::{
    anything_mounted_under, check_interrupt, command, is_root, mount_at, proc_status_kib, run,
    tail, Context, Error, Result, RunAs,
};
use super::workload::Workload;

/// The backends of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    /// The kernel's overlay filesystem (the reference of every ratio).
    Kernel,
    /// fuse-overlayfs, the Debian package, run as root.
    FuseOverlayfs,
    /// Our `ovl-fuse` run as root (FUSE passthrough available).
    OvlRoot,
    /// Our `ovl-fuse` run as an unprivileged user (no passthrough; mounted via fusermount3).
    OvlRootless,
    /// Variant: the kernel overlay with `metacopy=on` (copyup-meta only).
    KernelMetacopy,
    /// Variant: `ovl-fuse` as root with `metacopy=on` (copyup-meta only).
    OvlRootMetacopy,
    /// Variant: `ovl-fuse` as root with `lower_passthrough=1` on the writable mount
    /// (read-big and read-small only).
    OvlRootLowerPassthrough,
}

impl BackendKind {
    /// Every plain backend (default options), in table order.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Kernel,
        BackendKind::FuseOverlayfs,
        BackendKind::OvlRoot,
        BackendKind::OvlRootless,
    ];

    /// The variants: a plain backend with fixed extra options, run only for the workloads
    /// those options are about ([`BackendKind::workloads`]). Full runs add them as columns.
    pub const VARIANTS: [BackendKind; 3] = [
        BackendKind::KernelMetacopy,
        BackendKind::OvlRootMetacopy,
        BackendKind::OvlRootLowerPassthrough,
    ];

    /// Command-line and table name.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Kernel => "kernel",
            BackendKind::FuseOverlayfs => "fuse-overlayfs",
            BackendKind::OvlRoot => "ovl-root",
            BackendKind::OvlRootless => "ovl-rootless",
            BackendKind::KernelMetacopy => "kernel-metacopy",
            BackendKind::OvlRootMetacopy => "ovl-root-metacopy",
            BackendKind::OvlRootLowerPassthrough => "ovl-root-lp",
        }
    }

    /// Parse a name (plain backends and variants).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain(Self::VARIANTS)
            .find(|b| b.name() == name)
    }

    /// True for the FUSE daemons (they have a PID and an RSS).
    pub fn has_daemon(self) -> bool {
        !self.is_kernel()
    }

    /// True for the kernel overlay, with or without extra options.
    pub fn is_kernel(self) -> bool {
        matches!(self, BackendKind::Kernel | BackendKind::KernelMetacopy)
    }

    /// True for `ovl-fuse` run as root, with or without extra options.
    pub fn is_ovl_root(self) -> bool {
        matches!(
            self,
            BackendKind::OvlRoot
                | BackendKind::OvlRootMetacopy
                | BackendKind::OvlRootLowerPassthrough
        )
    }

    /// True for the variants.
    pub fn is_variant(self) -> bool {
        Self::VARIANTS.contains(&self)
    }

    /// The `-o` options that make this backend a variant.
    pub fn fixed_opts(self) -> Option<&'static str> {
        match self {
            BackendKind::KernelMetacopy | BackendKind::OvlRootMetacopy => Some("metacopy=on"),
            BackendKind::OvlRootLowerPassthrough => Some("lower_passthrough=1"),
            _ => None,
        }
    }

    /// The workloads a variant is run for (`None`: every workload).
    pub fn workloads(self) -> Option<&'static [Workload]> {
        match self {
            BackendKind::KernelMetacopy | BackendKind::OvlRootMetacopy => {
                Some(&[Workload::CopyupMeta])
            }
            BackendKind::OvlRootLowerPassthrough => Some(&[Workload::ReadSmall, Workload::ReadBig]),
            _ => None,
        }
    }

    /// Whether this backend is run for `w`.
    pub fn runs(self, w: Workload) -> bool {
        self.workloads().is_none_or(|ws| ws.contains(&w))
    }
}

/// A backend that is ready to mount.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Which one.
    pub kind: BackendKind,
    /// The daemon binary (FUSE backends).
    pub program: Option<PathBuf>,
    /// Extra `-o` options.
    pub extra_opts: Option<String>,
    /// Run the daemon and the workloads as this user.
    pub user: Option<RunAs>,
    /// Version string for the report.
    pub version: String,
}

/// Restores the mode of `/dev/fuse` when dropped.
#[derive(Debug)]
pub struct DevFuseGuard {
    mode: u32,
}

impl Drop for DevFuseGuard {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.mode));
    }
}

/// What [`prepare`] found.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Ready backends, in the requested order.
    pub ready: Vec<Backend>,
    /// Requested backends that cannot run, with the reason.
    pub skipped: Vec<(BackendKind, String)>,
    /// Set when /dev/fuse was opened up for the rootless backend.
    pub dev_fuse: Option<DevFuseGuard>,
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

fn apt_install(package: &str, verbose: bool) -> Result<()> {
    if verbose {
        eprintln!("installing {package} with apt-get ...");
    }
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_ok() {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    install().map(|_| ())
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Find or build `ovl-fuse`.
fn find_ovl_fuse(opts: &Options) -> Result<PathBuf> {
    if let Some(path) = &opts.ovl_fuse {
        // Absolute: commands run with `/` as their working directory.
        return match path.canonicalize() {
            Ok(p) if p.is_file() => Ok(p),
            _ => Err(Error::new(format!("{} does not exist", path.display()))),
        };
    }
    let (target, profile) =
        target_dirs().ok_or_else(|| Error::new("cannot locate the cargo target directory"))?;
    if opts.build_ovl_fuse {
        if opts.verbose {
            eprintln!("building ovl-fuse (cargo build --release -p overlay-fuse) ...");
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run(Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "overlay-fuse",
                "--bin",
                "ovl-fuse",
            ])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(manifest_dir()))
        .map_err(|e| Error::new(format!("cannot build ovl-fuse: {e}")))?;
        let bin = target.join("release/ovl-fuse");
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(Error::new(format!(
                "built, but {} is missing",
                bin.display()
            )))
        };
    }
    [profile.join("ovl-fuse"), target.join("release/ovl-fuse")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(format!(
                "no ovl-fuse binary in {} (build it, or pass --ovl-fuse)",
                profile.display()
            ))
        })
}

/// Comma-join the options that are given (`None` when none is).
fn join_opts<const N: usize>(parts: [Option<&str>; N]) -> Option<String> {
    let given: Vec<&str> = parts
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    (!given.is_empty()).then(|| given.join(","))
}

/// Decide which requested backends can run; install what is missing when allowed.
pub fn prepare(opts: &Options, stack: &Stack) -> Result<Prepared> {
    let mut prepared = Prepared::default();
    let root = is_root();
    let mut ovl_fuse: Option<std::result::Result<PathBuf, String>> = None;
    for &kind in &opts.backends {
        check_interrupt()?;
        let mut backend = Backend {
            kind,
            program: None,
            extra_opts: None,
            user: None,
            version: String::new(),
        };
        let outcome: std::result::Result<(), String> = (|| {
            match kind {
                BackendKind::Kernel | BackendKind::KernelMetacopy => {
                    backend.extra_opts =
                        join_opts([opts.overlay_opts.as_deref(), kind.fixed_opts()]);
                    if !root {
                        return Err("needs root".into());
                    }
                    let fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
                    if !fs.contains("\toverlay") {
                        let _ = run(Command::new("modprobe").arg("overlay"));
                    }
                    backend.version = format!(
                        "Linux {}",
                        fs::read_to_string("/proc/sys/kernel/osrelease")
                            .unwrap_or_default()
                            .trim()
                    );
                }
                BackendKind::FuseOverlayfs => {
                    if !root {
                        return Err("needs root (it is run as root here)".into());
                    }
                    let program = match which("fuse-overlayfs") {
                        Some(p) => p,
                        None if opts.install_packages => {
                            apt_install("fuse-overlayfs", opts.verbose)
                                .map_err(|e| format!("not installed, apt-get failed: {e}"))?;
                            which("fuse-overlayfs").ok_or("apt-get installed no fuse-overlayfs")?
                        }
                        None => return Err("not installed (and --no-install)".into()),
                    };
                    let out = Command::new(&program).arg("--version").output();
                    backend.version = out
                        .map(|o| first_line(&String::from_utf8_lossy(&o.stdout)))
                        .unwrap_or_default();
                    backend.program = Some(program);
                }
                BackendKind::OvlRoot
                | BackendKind::OvlRootless
                | BackendKind::OvlRootMetacopy
                | BackendKind::OvlRootLowerPassthrough => {
                    let bin = ovl_fuse
                        .get_or_insert_with(|| find_ovl_fuse(opts).map_err(|e| e.to_string()))
                        .clone()?;
                    backend.version = format!("ovl-fuse ({})", bin.display());
                    backend.program = Some(bin);
                    backend.extra_opts = join_opts([
                        opts.overlay_opts.as_deref(),
                        opts.ovl_opts.as_deref(),
                        kind.fixed_opts(),
                    ]);
                    if kind != BackendKind::OvlRootless {
                        if !root {
                            return Err("needs root".into());
                        }
                    } else {
                        prepare_rootless(opts, stack, &mut backend, &mut prepared.dev_fuse)?;
                    }
                }
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => prepared.ready.push(backend),
            Err(why) => prepared.skipped.push((kind, why)),
        }
    }
    Ok(prepared)
}

fn prepare_rootless(
    opts: &Options,
    stack: &Stack,
    backend: &mut Backend,
    dev_fuse: &mut Option<DevFuseGuard>,
) -> std::result::Result<(), String> {
    // The daemon needs fusermount3 (setuid root) to mount.
    if which("fusermount3").is_none() {
        if opts.install_packages && is_root() {
            apt_install("fuse3", opts.verbose)
                .map_err(|e| format!("fusermount3 missing, apt-get fuse3 failed: {e}"))?;
        } else {
            return Err("fusermount3 missing (Debian package fuse3)".into());
        }
    }
    if !is_root() {
        // We are the unprivileged user already.
        return Ok(());
    }
    let user = opts.rootless_user;
    if stack.owner != Some(user) {
        return Err(format!(
            "the stack is not owned by the rootless user {user}"
        ));
    }
    // fuser reopens /dev/fuse in every worker thread (clone_fd), so the user needs access.
    let mode = fs::metadata("/dev/fuse")
        .map_err(|e| format!("/dev/fuse: {e}"))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o006 != 0o006 && dev_fuse.is_none() {
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(mode | 0o666))
            .map_err(|e| format!("cannot open up /dev/fuse: {e}"))?;
        *dev_fuse = Some(DevFuseGuard { mode });
    }
    // The user must reach the stack (e.g. not below a 0700 home directory).
    for dir in stack.lowers.iter().chain([&stack.root]) {
        let probe = command("test", Some(user))
            .arg("-x")
            .arg(dir)
            .arg("-a")
            .arg("-r")
            .arg(dir)
            .status()
            .map_err(|e| format!("cannot run test as {user}: {e}"))?;
        if !probe.success() {
            return Err(format!(
                "user {user} cannot read {}: choose a --work-dir every user can traverse",
                dir.display()
            ));
        }
    }
    backend.user = Some(user);
    Ok(())
}

/// A per-run directory with `upper/`, `work/`, `mnt/`; removed on drop unless something is
/// still mounted below it.
#[derive(Debug)]
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
}

impl RunDir {
    /// Create a fresh run directory, owned by `user` when given.
    pub fn create(parent: &Path, name: &str, user: Option<RunAs>) -> Result<Self> {
        let path = parent.join(name);
        if path.exists() {
            if anything_mounted_under(&path) {
                return Err(Error::new(format!(
                    "{} still has a mount below it; unmount it first",
                    path.display()
                )));
            }
            fs::remove_dir_all(&path).context(|| format!("removing {}", path.display()))?;
        }
        for sub in ["upper", "work", "mnt"] {
            let dir = path.join(sub);
            fs::create_dir_all(&dir).context(|| format!("mkdir {}", dir.display()))?;
            if let Some(user) = user {
                std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
                    .context(|| format!("chown {}", dir.display()))?;
            }
        }
        Ok(RunDir { path })
    }

    /// `upper/`.
    pub fn upper(&self) -> PathBuf {
        self.path.join("upper")
    }

    /// `work/`.
    pub fn work(&self) -> PathBuf {
        self.path.join("work")
    }

    /// `mnt/`.
    pub fn mnt(&self) -> PathBuf {
        self.path.join("mnt")
    }

    /// The daemon's log file.
    pub fn log(&self) -> PathBuf {
        self.path.join("daemon.log")
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if anything_mounted_under(&self.path) {
            eprintln!(
                "warning: not removing {}: something is still mounted below it",
                self.path.display()
            );
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A live mount; unmounted (and its daemon reaped) on drop.
#[derive(Debug)]
pub struct Mounted {
    /// Mount point.
    pub mnt: PathBuf,
    daemon: Option<Child>,
    mounted: bool,
}

/// Time to wait for a daemon to make its mount live.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

impl Mounted {
    /// PID of the FUSE daemon.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Peak resident set size of the daemon (`VmHWM`), in KiB.
    pub fn daemon_peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.daemon_pid()?, "VmHWM")
    }

    /// Current resident set size of the daemon (`VmRSS`), in KiB.
    pub fn daemon_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.daemon_pid()?, "VmRSS")
    }

    /// Unmount and reap the daemon; errors if either does not go cleanly.
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        if self.mounted {
            let mut done = false;
            for attempt in 0..20 {
                if mount_at(&self.mnt).is_none() {
                    done = true;
                    break;
                }
                let ok = if is_root() {
                    Command::new("umount")
                        .arg(&self.mnt)
                        .stderr(Stdio::null())
                        .status()
                } else {
                    Command::new("fusermount3")
                        .arg("-u")
                        .arg(&self.mnt)
                        .stderr(Stdio::null())
                        .status()
                };
                if matches!(ok, Ok(s) if s.success()) {
                    done = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
            }
            if !done {
                problems.push(format!(
                    "{} is busy; detached it lazily",
                    self.mnt.display()
                ));
                let _ = if is_root() {
                    Command::new("umount").arg("-l").arg(&self.mnt).status()
                } else {
                    Command::new("fusermount3")
                        .arg("-uz")
                        .arg(&self.mnt)
                        .status()
                };
            }
            self.mounted = false;
        }
        if let Some(mut child) = self.daemon.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            problems.push(format!("daemon exited with {status}"));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        problems.push("daemon did not exit after unmount; killed it".into());
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::new(format!(
                "unmounting {}: {}",
                self.mnt.display(),
                problems.join("; ")
            )))
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("warning: {e}");
        }
    }
}

/// Mount `backend` over `stack` with the upper/work of `run_dir`.
pub fn mount(backend: &Backend, stack: &Stack, run_dir: &RunDir) -> Result<Mounted> {
    let mnt = run_dir.mnt();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        stack.lowerdir(),
        run_dir.upper().display(),
        run_dir.work().display()
    );
    let options = match &backend.extra_opts {
        Some(extra) => format!("{options},{extra}"),
        None => options,
    };
    if backend.kind.is_kernel() {
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&mnt))?;
        return Ok(Mounted {
            mnt,
            daemon: None,
            mounted: true,
        });
    }
    let program = backend
        .program
        .as_ref()
        .ok_or_else(|| Error::new(format!("{}: no program", backend.kind.name())))?;
    let log_path = run_dir.log();
    let log = fs::File::create(&log_path).context(|| format!("create {}", log_path.display()))?;
    let log2 = log.try_clone().context(|| "dup log".into())?;
    let mut cmd = command(program, backend.user);
    // Own process group: a Ctrl-C on the terminal reaches the harness only, which then
    // unmounts cleanly instead of leaving a dead FUSE mount behind.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.arg("-f")
        .arg("-o")
        .arg(&options)
        .arg(&mnt)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let child = cmd
        .spawn()
        .context(|| format!("cannot start {}", program.display()))?;
    let mut mounted = Mounted {
        mnt: mnt.clone(),
        daemon: Some(child),
        mounted: true,
    };
    let start = Instant::now();
    loop {
        if mount_at(&mnt).is_some() {
            return Ok(mounted);
        }
        let exited = mounted
            .daemon
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            // Reaped already: nothing left to unmount or wait for.
            mounted.mounted = false;
            mounted.daemon = None;
            return Err(Error::new(format!(
                "{} exited ({status}) before mounting: {}",
                backend.kind.name(),
                tail(&log_path, 5)
            )));
        }
        if start.elapsed() > MOUNT_TIMEOUT {
            return Err(Error::new(format!(
                "{} did not mount within {MOUNT_TIMEOUT:?}: {}",
                backend.kind.name(),
                tail(&log_path, 5)
            )));
        }
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(5));
    }
}
