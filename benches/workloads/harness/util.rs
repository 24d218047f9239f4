//! Process helpers: errors, the interrupt flag, running commands (as another user, timed, in
//! their own process group) and a few `/proc` readers.

use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

/// A harness error: what failed, with enough context to act on it.
#[derive(Debug)]
pub struct Error {
    /// Human-readable description.
    pub message: String,
    /// True when the error is the user's Ctrl-C (or SIGTERM/SIGHUP).
    pub interrupted: bool,
}

impl Error {
    /// A plain error.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            interrupted: false,
        }
    }

    /// The error returned once a signal asked us to stop.
    pub fn interrupted() -> Self {
        Error {
            message: "interrupted by a signal".into(),
            interrupted: true,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Result of the harness.
pub type Result<T> = std::result::Result<T, Error>;

/// Attach context to foreign errors.
pub trait Context<T> {
    /// Prefix the error with `what()`.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::new(format!("{}: {e}", what())))
    }
}

fn interrupt_flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Catch SIGINT, SIGTERM and SIGHUP: they set a flag that the harness polls, so that it can
/// kill the running workload and unmount everything before exiting. Idempotent.
pub fn install_signal_handlers() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            if let Err(e) = signal_hook::flag::register(sig, Arc::clone(interrupt_flag())) {
                eprintln!("warning: cannot catch signal {sig}: {e}");
            }
        }
    });
}

/// True once a signal asked us to stop.
pub fn interrupted() -> bool {
    interrupt_flag().load(Ordering::SeqCst)
}

/// `Err(interrupted)` once a signal asked us to stop.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        Err(Error::interrupted())
    } else {
        Ok(())
    }
}

/// True when running as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A user to run commands and daemons as (the rootless backends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// A command that starts in `/` (so that another user can run it wherever we are), optionally
/// as `user` (supplementary groups are dropped by std when the uid changes).
pub fn command(program: impl AsRef<std::ffi::OsStr>, user: Option<RunAs>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir("/");
    if let Some(user) = user {
        if is_root() {
            cmd.uid(user.uid).gid(user.gid);
            cmd.env("HOME", "/");
        }
    }
    cmd
}

/// Run a command to completion; its stdout on success, an error naming it (with stderr)
/// otherwise.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context(|| format!("cannot run {cmd:?}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::new(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Output of a timed command.
#[derive(Debug, Clone)]
pub struct TimedOutput {
    /// Wall-clock time from spawn to exit.
    pub elapsed: Duration,
    /// Exit status was 0.
    pub success: bool,
    /// Description of the exit status.
    pub status: String,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

/// Run `cmd` in its own process group, timing spawn to exit. The whole group is killed when
/// `timeout` passes or a signal arrives (then the result is an error).
pub fn run_timed(mut cmd: Command, timeout: Duration) -> Result<TimedOutput> {
    check_interrupt()?;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().context(|| format!("cannot run {cmd:?}"))?;
    let pgid = rustix::process::Pid::from_raw(child.id() as i32);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || -> Option<&'static str> {
        loop {
            match done_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let why = if interrupted() {
                        "interrupted"
                    } else if start.elapsed() > timeout {
                        "timed out"
                    } else {
                        continue;
                    };
                    if let Some(pgid) = pgid {
                        let _ = rustix::process::kill_process_group(
                            pgid,
                            rustix::process::Signal::KILL,
                        );
                    }
                    return Some(why);
                }
            }
        }
    });
    let out = child.wait_with_output();
    let elapsed = start.elapsed();
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(None);
    let out = out.context(|| format!("waiting for {cmd:?}"))?;
    match killed {
        Some("interrupted") => return Err(Error::interrupted()),
        Some(why) => {
            return Err(Error::new(format!(
                "{why} after {:.0?} (limit {timeout:?}): {cmd:?}",
                elapsed
            )))
        }
        None => {}
    }
    Ok(TimedOutput {
        elapsed,
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A field (in kB) of `/proc/PID/status`, e.g. `VmHWM` or `VmRSS`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// One mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct MountInfo {
    /// Mount point (unescaped).
    pub mount_point: PathBuf,
    /// Filesystem type (`overlay`, `fuse`, `fuse.fuse-overlayfs`, `ext4`, ...).
    pub fstype: String,
    /// Mount source.
    pub source: String,
    /// Superblock options (`lowerdir=...,redirect_dir=...` for overlay).
    pub options: String,
}

fn unescape_mountinfo(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(code) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// All mounts of our mount namespace.
pub fn mounts() -> Vec<MountInfo> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?.to_string();
            let source = right.next().unwrap_or("").to_string();
            let options = right.next().unwrap_or("").to_string();
            Some(MountInfo {
                mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
                fstype,
                source,
                options,
            })
        })
        .collect()
}

/// The mount at exactly `path`, if any (the last one when stacked).
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

/// True when anything is mounted at or below `path`.
pub fn anything_mounted_under(path: &Path) -> bool {
    mounts().iter().any(|m| m.mount_point.starts_with(path))
}

/// The mount holding `path` (longest mount-point prefix).
pub fn mount_of(path: &Path) -> Option<MountInfo> {
    let path = path.canonicalize().ok()?;
    mounts()
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
}

/// The last `n` lines of a (log) file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Recursively count non-directory entries below `path` (symlinks not followed).
pub fn count_files(path: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            _ => 1,
        })
        .sum()
}
