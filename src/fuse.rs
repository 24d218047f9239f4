//! The FUSE backend: start the `ovl-fuse` daemon (fuse-overlayfs compatible command line)
//! and unmount it again.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use overlay_core::mount::escape_option_value;
use overlay_core::mount::mountinfo::read_mountinfo;

use crate::{Error, PreparedUpper, Request, Result};

/// The path of the running executable, read once: after entering a new mount namespace,
/// `/proc/self/exe` names it relative to its filesystem when that is not the root one (the
/// old namespace's mount is not reachable from the new one), e.g. `/ovl-test-x/ovl` for
/// `/dev/shm/ovl-test-x/ovl`. [`crate::enter_private_namespace`] reads it before entering.
pub(crate) fn own_exe() -> Option<PathBuf> {
    static EXE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| std::env::current_exe().ok()).clone()
}

/// The `ovl-fuse` program: `$OVL_FUSE`, next to the running executable, or in `PATH`.
pub(crate) fn find_program() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("OVL_FUSE") {
        return Ok(PathBuf::from(p));
    }
    find_companion("ovl-fuse").ok_or_else(|| {
        "the ovl-fuse program was not found (set OVL_FUSE, or install it next to ovl or in PATH)"
            .into()
    })
}

/// A program shipped with ovl (`ovl-fuse`, `ovl-erofs`): next to the running executable
/// (tests: one directory up), or in `PATH`.
pub(crate) fn find_companion(name: &str) -> Option<PathBuf> {
    if let Some(exe) = own_exe() {
        // Next to us, or (tests: target/debug/deps/x) one directory up.
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    crate::image::find_in_path(name)
}

fn fuse_mounted_at(target: &Path) -> bool {
    read_mountinfo()
        .map(|v| {
            v.iter()
                .any(|m| m.mount_point == target && m.fstype.starts_with("fuse"))
        })
        .unwrap_or(false)
}

/// A mount served by an `ovl-fuse` daemon; unmounted (the daemon then exits) on drop.
#[derive(Debug)]
pub(crate) struct FuseMount {
    target: PathBuf,
    /// The daemon's pid, as `ovl-fuse` reported it (`OVL_FUSE_PID_FILE`).
    pid: Option<u32>,
    armed: bool,
}

impl FuseMount {
    pub(crate) fn start(
        req: &Request,
        lowers: &[PathBuf],
        upper: &PreparedUpper,
        target: &Path,
    ) -> Result<FuseMount> {
        let fail = |reason: String| Error::Fuse {
            target: target.to_path_buf(),
            reason,
        };
        // A feature ovl-fuse does not have: refused, never silently left out.
        if req.options.nfs_export {
            return Err(fail(
                "ovl-fuse does not support nfs_export=on (persistent NFS file handles of the \
                 mount); use the kernel backend"
                    .into(),
            ));
        }
        if req.options.verity != overlay_core::mount::Verity::Off {
            return Err(fail(format!(
                "ovl-fuse does not check fs-verity digests of metacopy data (verity={}); \
                 use the kernel backend",
                req.options.verity.as_str()
            )));
        }
        // The kernel backend's rule (OverlayMountOptions), for both backends alike.
        if req.options.metacopy && req.options.redirect_dir != Some(overlay_core::RedirectDir::On) {
            return Err(fail(
                "metacopy=on needs redirect_dir=on (a metacopy file carries a redirect to its \
                 data)"
                    .into(),
            ));
        }
        let prog = find_program().map_err(fail)?;
        // fuse-overlayfs's `-o` syntax escapes `\`, `,` and `:` as the kernel's does.
        let escape = |p: &Path| escape_option_value(p.as_os_str().as_bytes());
        let mut lowerdir = Vec::new();
        for l in lowers.iter().rev() {
            let p = std::fs::canonicalize(l)
                .map_err(|e| fail(format!("lower layer {}: {e}", l.display())))?;
            lowerdir.push(escape(&p));
        }
        // One argument holds at most 128 KiB (MAX_ARG_STRLEN): a longer stack (thousands
        // of layers, beyond the kernel overlay's limit) goes one `-o lowerdir+=` each.
        let one_arg = lowerdir.iter().map(|l| l.len() + 1).sum::<usize>() < 64 * 1024;
        let mut layer_args = Vec::new();
        let mut opts = Vec::new();
        if one_arg {
            opts.extend(b"lowerdir=");
            opts.extend(lowerdir.join(&b':'));
        } else {
            for l in &lowerdir {
                let mut a = b"lowerdir+=".to_vec();
                a.extend(l);
                layer_args.push(OsString::from_vec(a));
            }
            // The options below each start with a comma; an empty first one is ignored.
        }
        // Data-only layers (composefs-style), in lookup order, after the lowers.
        for d in &req.data_lowers {
            let p = std::fs::canonicalize(d)
                .map_err(|e| fail(format!("data-only layer {}: {e}", d.display())))?;
            opts.extend(b",datadir+=");
            opts.extend(escape(&p));
        }
        if let Some((u, w)) = &upper.upper {
            opts.extend(b",upperdir=");
            opts.extend(escape(u));
            opts.extend(b",workdir=");
            opts.extend(escape(w));
        }
        if !overlay_core::mount::has_cap_sys_admin_in_initial_namespace() {
            opts.extend(b",userxattr");
        }
        if req.options.read_only {
            opts.extend(b",ro");
        }
        // The kernel's features, as the kernel backend passes them (without a choice the
        // defaults agree: follow, or nofollow with userxattr).
        if let Some(r) = req.options.redirect_dir {
            opts.extend(b",redirect_dir=");
            opts.extend(r.as_str().as_bytes());
        }
        if req.options.metacopy {
            opts.extend(b",metacopy=on");
        }
        if req.options.index {
            opts.extend(b",index=on");
        }
        if req.squash_to_root {
            opts.extend(b",squash_to_root");
        }
        // The same per-mount flags as a kernel overlay of this request (nodev,nosuid unless
        // asked otherwise; ovl-fuse's own default is nodev,nosuid too).
        let o = &req.options;
        opts.extend(if o.nodev { &b",nodev"[..] } else { b",dev" });
        opts.extend(if o.nosuid { &b",nosuid"[..] } else { b",suid" });
        if o.noexec {
            opts.extend(b",noexec");
        }
        // ovl-fuse mounts noatime unless told otherwise; strictatime is passed on (fuser
        // turns it into the kernel's default, relatime: it asks for atime or noatime only).
        if o.atime == overlay_core::Atime::Strictatime {
            opts.extend(b",strictatime");
        }
        let opts = OsString::from_vec(opts);
        // A private directory of ours for the daemon's pid file and, unless the caller
        // chose a log file, its log: never a predictable name in a shared temp dir, where a
        // planted symlink would have a root daemon append to any file.
        let daemon_dir = DaemonDir::new().map_err(|e| {
            fail(format!(
                "cannot make a private directory for the daemon's log and pid: {e}"
            ))
        })?;
        let log = match &req.fuse_log {
            Some(p) => p.clone(),
            None => daemon_dir.log(),
        };
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| fail(format!("log file {}: {e}", log.display())))?;
        let errf = logf
            .try_clone()
            .map_err(|e| fail(format!("log file {}: {e}", log.display())))?;
        tracing::debug!(
            "starting {} -o {} {}",
            prog.display(),
            opts.to_string_lossy(),
            target.display()
        );
        let start_len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        // ovl-fuse writes the daemon's pid into a file of that directory.
        let mut cmd = Command::new(&prog);
        for a in &layer_args {
            cmd.arg("-o").arg(a);
        }
        let status = cmd
            .env("OVL_FUSE_PID_FILE", daemon_dir.pid_file())
            .arg("-o")
            .arg(&opts)
            .arg(target)
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(errf)
            .env("OVL_FUSE_LOG_FILE", &log)
            .status()
            .map_err(|e| fail(format!("cannot run {}: {e}", prog.display())))?;
        let read_log = || {
            let all = std::fs::read(&log).unwrap_or_default();
            let s = String::from_utf8_lossy(&all[(start_len as usize).min(all.len())..])
                .trim()
                .to_string();
            if req.fuse_log.is_none() {
                let _ = std::fs::remove_file(&log);
            }
            s
        };
        if !status.success() {
            // ovl-fuse's own one-line message says what is wrong; without one, its status.
            let msg = read_log();
            let msg = msg.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(fail(match msg.strip_prefix("ovl-fuse: ") {
                Some(m) => m.to_string(),
                None if !msg.is_empty() => msg.to_string(),
                None => format!("ovl-fuse exited with {status}"),
            }));
        }
        // The daemon reports readiness before its parent exits; confirm in mountinfo.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fuse_mounted_at(target) {
            if Instant::now() > deadline {
                let msg = read_log();
                return Err(fail(format!("the FUSE mount did not appear: {msg}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if req.fuse_log.is_none() {
            // The daemon keeps the file open; the name is not needed.
            let _ = std::fs::remove_file(&log);
        }
        let pid = daemon_dir.read_pid();
        if pid.is_none() {
            tracing::debug!("ovl-fuse reported no daemon pid");
        }
        Ok(FuseMount {
            target: target.to_path_buf(),
            pid,
            armed: true,
        })
    }

    /// Unmount; the daemon exits when its mount is gone.
    pub(crate) fn release(&mut self) -> Result<()> {
        if !self.armed {
            return Ok(());
        }
        self.armed = false;
        unmount_fuse(&self.target, false, true)
    }

    /// Leave the mount; returns the daemon's pid, if `ovl-fuse` reported it.
    pub(crate) fn keep(mut self) -> Option<u32> {
        self.armed = false;
        self.pid
    }
}

/// A private directory (mode 0700, random name) for the daemon's pid file and log;
/// removed with what is in it when dropped (the daemon keeps its log open).
struct DaemonDir(PathBuf);

impl DaemonDir {
    fn new() -> overlay_core::Result<DaemonDir> {
        overlay_core::mount::private_dir_in(&std::env::temp_dir(), "ovl-fuse").map(DaemonDir)
    }

    fn pid_file(&self) -> PathBuf {
        self.0.join("pid")
    }

    fn log(&self) -> PathBuf {
        self.0.join("log")
    }

    fn read_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
    }
}

impl Drop for DaemonDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.pid_file());
        let _ = std::fs::remove_file(self.log());
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Unmount a FUSE mount: `umount2` when allowed, else `fusermount3 -u`. A busy mount is
/// detached lazily when `detach_if_busy`, else the EBUSY error is returned.
pub(crate) fn unmount_fuse(target: &Path, lazy: bool, detach_if_busy: bool) -> Result<()> {
    let mut flags = rustix::mount::UnmountFlags::NOFOLLOW;
    if lazy {
        flags |= rustix::mount::UnmountFlags::DETACH;
    }
    match rustix::mount::unmount(target, flags) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::PERM) => {
            let mut c = Command::new("fusermount3");
            c.arg("-u");
            if lazy {
                c.arg("-z");
            }
            if !lazy && detach_if_busy {
                // Its complaint is not news when the lazy retry below succeeds.
                c.stderr(Stdio::null());
            }
            let st = c.arg(target).status().map_err(|e| Error::Fuse {
                target: target.to_path_buf(),
                reason: format!("unmount: not permitted, and fusermount3 cannot run: {e}"),
            })?;
            if st.success() {
                Ok(())
            } else if !lazy && detach_if_busy {
                // Busy, most likely: a FUSE daemon above it (ovl-fuse over an image lower)
                // is still exiting with descriptors open. Detach; it goes when they close.
                tracing::warn!(
                    "{}: fusermount3 -u failed; detaching lazily",
                    target.display()
                );
                unmount_fuse(target, true, false)
            } else {
                Err(Error::Fuse {
                    target: target.to_path_buf(),
                    reason: format!("fusermount3 -u failed: {st}"),
                })
            }
        }
        Err(rustix::io::Errno::BUSY) if !lazy && detach_if_busy => {
            tracing::warn!("{} busy; detaching lazily", target.display());
            unmount_fuse(target, true, false)
        }
        Err(e) => {
            Err(
                overlay_core::Error::io("unmount FUSE overlay", target, std::io::Error::from(e))
                    .into(),
            )
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("{e}");
        }
    }
}
