//! Shared helpers of the overlay-fuse integration tests: layer directories, mount guards
//! that always unmount (also when a test panics) and wait for the daemon, and tree
//! snapshots for comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use overlay_core::{LayerStack, Overlay};
use overlay_fuse::{spawn_mount, FsConfig, FuseMount, MountConfig};

/// The ovl-fuse binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_ovl-fuse");

/// True when this test can mount (root). Otherwise: under CI=true the test fails, else it is
/// skipped with a message.
pub fn can_mount(test: &str) -> bool {
    if rustix::process::geteuid().is_root() && Path::new("/dev/fuse").exists() {
        return true;
    }
    skip(test, "needs root and /dev/fuse to mount");
    false
}

/// `test` cannot run here because of `why`: under CI=true the test fails, else this prints
/// that it is skipped and the caller returns.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}, and CI=true forbids skipping");
    }
    eprintln!("{test}: SKIPPED ({why})");
}

#[path = "../../../benches/workloads/harness/fuse_uring.rs"]
mod fuse_uring;
pub use fuse_uring::FuseUringSwitch;

/// Turn the kernel's FUSE-over-io_uring switch on while the returned guard lives (put back as
/// it was on drop). `None` where it cannot be turned on: under CI=true the test fails, else
/// it is skipped. Global: other tests' mounts made meanwhile may use io_uring too.
pub fn require_fuse_uring(test: &str) -> Option<FuseUringSwitch> {
    FuseUringSwitch::on()
        .map_err(|state| {
            skip(
                test,
                &format!("FUSE over io_uring cannot be enabled: {state}"),
            )
        })
        .ok()
}

/// How many threads of process `pid` serve io_uring queues (waiting up to 5 s for the first).
pub fn io_uring_threads(pid: i32) -> usize {
    let count = || {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        rd.flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("fuser-uring"))
            })
            .count()
    };
    // The queues start once the daemon has answered the kernel's INIT, which may be a
    // moment after the mount shows up.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = count();
        if n > 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temp dir with lower layers, an upper, a workdir and a mountpoint.
pub struct Layers {
    pub tmp: tempfile::TempDir,
    /// Lower layers, top-first (the `lowerdir=` order).
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Layers {
    pub fn new(n_lowers: usize) -> Layers {
        Self::new_in(&std::env::temp_dir(), n_lowers)
    }

    /// Same, in a temp dir under `dir` (for a test that needs a given filesystem).
    pub fn new_in(dir: &Path, n_lowers: usize) -> Layers {
        let tmp = tempfile::Builder::new()
            .prefix("ovl-fuse-test.")
            .tempdir_in(dir)
            .unwrap();
        let mk = |n: &str| {
            let p = tmp.path().join(n);
            std::fs::create_dir(&p).unwrap();
            p
        };
        let lowers = (0..n_lowers).map(|i| mk(&format!("lower{i}"))).collect();
        Layers {
            lowers,
            upper: mk("upper"),
            work: mk("work"),
            mnt: mk("mnt"),
            tmp,
        }
    }

    /// Top lower layer.
    pub fn lower(&self) -> &Path {
        &self.lowers[0]
    }

    /// `lowerdir=...,upperdir=...,workdir=...`
    pub fn options(&self) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string().replace(':', "\\:"))
            .collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        )
    }

    pub fn stack(&self) -> LayerStack {
        LayerStack::builder()
            .lowers(self.lowers.iter().rev().cloned())
            .upper(&self.upper, &self.work)
            .build()
            .unwrap()
    }
}

/// Write a file, creating parents.
pub fn put(path: impl AsRef<Path>, content: &[u8]) {
    let path = path.as_ref();
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, content).unwrap();
}

/// Mount points currently in this mount namespace (decoded from mountinfo).
pub fn mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .collect()
}

fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(out)
}

pub fn is_mounted(p: &Path) -> bool {
    mount_points().iter().any(|m| m == p)
}

/// Wait until `p` is (or is no longer) a mount point.
pub fn wait_mounted(p: &Path, mounted: bool, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if is_mounted(p) == mounted {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    is_mounted(p) == mounted
}

/// Unmount `p` (plain, then lazy as a last resort) if mounted.
pub fn force_unmount(p: &Path) {
    if !is_mounted(p) {
        return;
    }
    if nix::mount::umount2(p, nix::mount::MntFlags::empty()).is_ok() {
        return;
    }
    let _ = Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(p)
        .stderr(Stdio::null())
        .status();
    if is_mounted(p) {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// True while `pid` runs (a zombie counts as gone).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

pub fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !pid_alive(pid)
}

/// Pids of ovl-fuse daemons whose command line mentions `mnt`.
pub fn daemons_for(mnt: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    let needle = mnt.as_os_str().as_bytes();
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_ovl = args.first().is_some_and(|a| a.ends_with(b"ovl-fuse"));
        if is_ovl && args.contains(&needle) && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// An `ovl-fuse` process (foreground or daemonized) serving a mount; dropping it unmounts
/// and waits for the process to exit, killing it if it does not.
pub struct Daemon {
    pub mnt: PathBuf,
    pub child: Option<Child>,
    pub pid: Option<i32>,
    /// Command used to unmount in Drop (default: umount2, then fusermount3).
    pub unmount_cmd: Option<Command>,
}

impl Daemon {
    /// Start `ovl-fuse -f -o OPTS MNT` as a child and wait for the mount.
    pub fn foreground(opts: &str, mnt: &Path) -> Daemon {
        Self::foreground_with(Command::new(BIN), opts, mnt)
    }

    /// Same with a prepared command (e.g. `setpriv ... ovl-fuse`).
    pub fn foreground_with(mut cmd: Command, opts: &str, mnt: &Path) -> Daemon {
        cmd.arg("-f").arg("-o").arg(opts).arg(mnt);
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().expect("spawn ovl-fuse");
        let pid = child.id() as i32;
        let mut d = Daemon {
            mnt: mnt.to_path_buf(),
            child: Some(child),
            pid: Some(pid),
            unmount_cmd: None,
        };
        if !wait_mounted(mnt, true, Duration::from_secs(20)) {
            let status = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "ovl-fuse did not mount {} (exit: {status:?})",
                mnt.display()
            );
        }
        d
    }

    /// Run `ovl-fuse ARGS` (daemonizing) and return once it has returned; the daemon is
    /// found by its command line.
    pub fn daemonized(args: &[&std::ffi::OsStr], mnt: &Path) -> Daemon {
        let out = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ovl-fuse");
        assert!(
            out.status.success(),
            "ovl-fuse failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::adopt(mnt)
    }

    /// Guard an already mounted daemon found by its command line.
    pub fn adopt(mnt: &Path) -> Daemon {
        // The command returned only once the mount was live.
        assert!(is_mounted(mnt), "mount not live when ovl-fuse returned");
        let pids = daemons_for(mnt);
        assert_eq!(pids.len(), 1, "expected one daemon for {}", mnt.display());
        Daemon {
            mnt: mnt.to_path_buf(),
            child: None,
            pid: Some(pids[0]),
            unmount_cmd: None,
        }
    }

    /// Unmount and check that the daemon exits on its own.
    pub fn unmount_and_wait(mut self) {
        self.unmount();
        assert!(
            wait_mounted(&self.mnt, false, Duration::from_secs(10)),
            "still mounted"
        );
        let pid = self.pid.take().unwrap();
        if let Some(mut c) = self.child.take() {
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(st) = c.try_wait().unwrap() {
                    assert!(st.success(), "daemon exit status {st}");
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "daemon {pid} did not exit after unmount"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            assert!(
                wait_pid_gone(pid, Duration::from_secs(10)),
                "daemon {pid} did not exit after unmount"
            );
        }
    }

    pub fn unmount(&mut self) {
        if let Some(mut c) = self.unmount_cmd.take() {
            let _ = c.status();
        }
        force_unmount(&self.mnt);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.unmount();
        let _ = wait_mounted(&self.mnt, false, Duration::from_secs(5));
        if let Some(pid) = self.pid {
            if !wait_pid_gone(pid, Duration::from_secs(5)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        force_unmount(&self.mnt);
    }
}

/// An in-process mount through the library; unmounted (lazily if busy) on drop.
pub struct InProcess {
    pub mount: Option<FuseMount>,
    pub mnt: PathBuf,
}

impl InProcess {
    pub fn new(layers: &Layers, fs: FsConfig) -> InProcess {
        let ovl = Overlay::new(layers.stack()).unwrap();
        let mut cfg = MountConfig::for_current_user(fs);
        cfg.threads = 4;
        let mount = spawn_mount(ovl, &layers.mnt, &cfg).unwrap();
        InProcess {
            mount: Some(mount),
            mnt: layers.mnt.clone(),
        }
    }

    pub fn stats(&self) -> overlay_fuse::FsStats {
        self.mount.as_ref().unwrap().inspector().stats()
    }

    pub fn unmount(mut self) {
        let m = self.mount.take().unwrap();
        m.unmount().unwrap();
        assert!(!is_mounted(&self.mnt));
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            if m.unmount().is_err() {
                force_unmount(&self.mnt);
            }
        }
        force_unmount(&self.mnt);
    }
}

/// A kernel overlay mount; unmounted on drop.
pub struct KernelOverlay {
    pub mnt: PathBuf,
}

impl KernelOverlay {
    pub fn mount(layers: &Layers) -> KernelOverlay {
        nix::mount::mount(
            Some("overlay"),
            &layers.mnt,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(layers.options().as_str()),
        )
        .expect("kernel overlay mount");
        KernelOverlay {
            mnt: layers.mnt.clone(),
        }
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        force_unmount(&self.mnt);
    }
}

/// What a snapshot records of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snap {
    File {
        mode: u32,
        nlink: u64,
        content: Vec<u8>,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Dir {
        mode: u32,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Symlink(PathBuf),
    Other {
        mode: u32,
        rdev: u64,
    },
}

fn user_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(p, &mut names) {
        Ok(n) => n,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let cname = std::ffi::CString::new(name).unwrap();
        let mut val = vec![0u8; 4096];
        if let Ok(len) = rustix::fs::lgetxattr(p, cname.as_c_str(), &mut val) {
            out.push((name.to_vec(), val[..len].to_vec()));
        }
    }
    out.sort();
    out
}

/// The visible tree under `root` (names relative to it).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Snap> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let ft = md.file_type();
            let mode = md.permissions().mode() & 0o7777;
            let snap = if ft.is_dir() {
                stack.push(p.clone());
                Snap::Dir {
                    mode,
                    xattrs: user_xattrs(&p),
                }
            } else if ft.is_file() {
                Snap::File {
                    mode,
                    nlink: md.nlink(),
                    content: std::fs::read(&p).unwrap(),
                    xattrs: user_xattrs(&p),
                }
            } else if ft.is_symlink() {
                Snap::Symlink(std::fs::read_link(&p).unwrap())
            } else {
                Snap::Other {
                    mode: md.mode(),
                    rdev: md.rdev(),
                }
            };
            out.insert(rel, snap);
        }
    }
    out
}

/// Assert two snapshots are equal, naming the first difference.
pub fn assert_same_tree(a: &BTreeMap<PathBuf, Snap>, b: &BTreeMap<PathBuf, Snap>, what: &str) {
    for (k, v) in a {
        match b.get(k) {
            None => panic!("{what}: {} missing on the second side", k.display()),
            Some(w) if w != v => panic!("{what}: {} differs:\n  {v:?}\n  {w:?}", k.display()),
            _ => {}
        }
    }
    for k in b.keys() {
        assert!(
            a.contains_key(k),
            "{what}: {} only on the second side",
            k.display()
        );
    }
}

/// Find the fsx binary: $FSX, then PATH, then ~/.cargo/bin.
pub fn fsx_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FSX") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("fsx"))
        .find(|p| p.is_file())
}
