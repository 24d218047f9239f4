//! The `ovl-fuse` daemon: validate, fork, mount, report readiness, serve until unmounted.
//!
//! Without `-f` the process forks before creating any thread. The parent waits on a pipe
//! and exits 0 only once the child has mounted and finished the FUSE handshake (so the
//! mount is live when the command returns), or prints the child's error and exits 1. The
//! child serves requests until the filesystem is unmounted (`umount`, `fusermount3 -u`) or
//! it gets SIGINT/SIGTERM/SIGHUP (then it unmounts itself), and exits 0.
//!
//! With `OVL_FUSE_PID_FILE=PATH` the parent writes the daemon's pid there (decimal, one line)
//! once the mount is ready, so whoever started it can tell later whether the daemon still
//! runs. With `-f` the process itself is the daemon and writes its own pid once mounted.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sys::signal::{SigSet, Signal};
use overlay_core::{LayerStack, Overlay, XattrNamespace};
use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::fs::has_initial_cap_sys_admin;
use crate::mount::{mount_session, MountConfig, Unmounter};
use crate::options::MountRequest;
use crate::sys::{fork_single_threaded, Forked};

/// Write one line to stderr. A closed or broken stderr (`ovl-fuse ... 2>&- `, a pipe whose
/// reader went away) is not worth a panic, which `eprintln!` would make of it: the line is
/// dropped.
pub fn say(line: std::fmt::Arguments<'_>) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_fmt(line).and_then(|()| e.write_all(b"\n"));
}

/// Build the validated layer stack of a request.
pub fn layer_stack(req: &MountRequest) -> Result<LayerStack> {
    let ns = if req.userxattr || !has_initial_cap_sys_admin() {
        XattrNamespace::User
    } else {
        XattrNamespace::Trusted
    };
    // FUSE has no limit on lowers (the kernel overlay stops at 500).
    let mut b = LayerStack::builder()
        .lowers(req.lowerdirs.iter().rev().cloned())
        .xattr_namespace(ns);
    for d in &req.datadirs {
        b = b.data_lower(d);
    }
    if let (Some(u), Some(w)) = (&req.upperdir, &req.workdir) {
        if !req.flags.read_only {
            b = b.upper(u, w);
        }
    }
    Ok(b.build()?)
}

/// The mount configuration of a request.
pub fn mount_config(req: &MountRequest) -> MountConfig {
    let mut c = MountConfig::for_current_user(req.fs.clone());
    if let Some(name) = req.fsname.clone().or_else(|| req.source.clone()) {
        c.fsname = name;
    }
    let f = &req.flags;
    if let Some(v) = f.allow_other {
        c.allow_other = v;
    }
    c.allow_root = f.allow_root;
    if let Some(v) = f.dev {
        c.dev = v;
    }
    if let Some(v) = f.suid {
        c.suid = v;
    }
    if let Some(v) = f.exec {
        c.exec = v;
    }
    if let Some(atime) = f.atime {
        c.noatime = !atime;
    }
    c.sync = f.sync;
    c.dirsync = f.dirsync;
    if let Some(n) = req.threads {
        c.threads = n;
    }
    c
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(1)
}

/// Run a mount request to completion; returns the process exit code.
pub fn run(req: MountRequest) -> i32 {
    // Once each, on stderr (which is the log file when ovl starts the daemon).
    for w in &req.warnings {
        say(format_args!("ovl-fuse: warning: {w}"));
    }
    // Modes come from the kernel already masked with the caller's umask.
    rustix::process::umask(rustix::fs::Mode::empty());
    let stack = match layer_stack(&req) {
        Ok(s) => s,
        Err(e) => {
            say(format_args!("ovl-fuse: {e}"));
            return 1;
        }
    };
    if !mountpoint_is_a_directory("ovl-fuse", &req.mountpoint) {
        return 1;
    }
    daemonize("ovl-fuse", req.foreground, |ready| {
        serve(&req, stack, ready)
    })
}

/// True when `mountpoint` is a directory; else says why not (prefixed with `prog`).
pub(crate) fn mountpoint_is_a_directory(prog: &str, mountpoint: &Path) -> bool {
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => true,
        Ok(_) => {
            say(format_args!(
                "{prog}: mountpoint {} is not a directory",
                mountpoint.display()
            ));
            false
        }
        Err(e) => {
            say(format_args!(
                "{prog}: mountpoint {}: {e}",
                mountpoint.display()
            ));
            false
        }
    }
}

/// Run `serve` (which mounts, then serves until unmounted) in the foreground, or forked
/// into the background as described in the module docs; returns the exit code. `prog`
/// starts the messages printed on stderr. `serve` gets the readiness pipe (`None` in the
/// foreground) to hand to [`serve_session`].
pub(crate) fn daemonize(
    prog: &str,
    foreground: bool,
    serve: impl FnOnce(&mut Option<std::fs::File>) -> Result<()>,
) -> i32 {
    if foreground {
        return match serve(&mut None) {
            Ok(()) => 0,
            Err(e) => {
                say(format_args!("{prog}: {e}"));
                1
            }
        };
    }
    if thread_count() != 1 {
        say(format_args!(
            "{prog}: cannot daemonize a multi-threaded process; use -f"
        ));
        return 1;
    }
    let (rd, wr) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            say(format_args!("{prog}: daemonize: pipe: {e}"));
            return 1;
        }
    };
    match fork_single_threaded() {
        Err(e) => {
            say(format_args!("{prog}: daemonize: fork: {e}"));
            1
        }
        Ok(Forked::Parent(child)) => {
            drop(wr);
            let code = wait_ready(prog, rd);
            if code == 0 {
                write_pid_file(prog, child);
            }
            code
        }
        Ok(Forked::Child) => {
            drop(rd);
            let _ = rustix::process::setsid();
            let mut ready = Some(std::fs::File::from(wr));
            match serve(&mut ready) {
                Ok(()) => 0,
                Err(e) => {
                    // Before readiness the parent prints it (once); afterwards the log.
                    match ready.take() {
                        Some(mut w) => {
                            let _ = write!(w, "ERR {e}");
                        }
                        None => error!("{e}"),
                    }
                    1
                }
            }
        }
    }
}

/// Write `pid` to `$OVL_FUSE_PID_FILE`, if set. A failure is logged, not fatal: the mount
/// works either way.
fn write_pid_file(prog: &str, pid: i32) {
    if let Some(p) = std::env::var_os("OVL_FUSE_PID_FILE") {
        if let Err(e) = std::fs::write(&p, format!("{pid}\n")) {
            say(format_args!(
                "{prog}: warning: pid file {}: {e}",
                Path::new(&p).display()
            ));
        }
    }
}

/// Parent side: wait for the child's verdict.
fn wait_ready(prog: &str, rd: OwnedFd) -> i32 {
    let mut msg = String::new();
    let mut f = std::fs::File::from(rd);
    let _ = f.read_to_string(&mut msg);
    if msg.starts_with("OK") {
        0
    } else if let Some(err) = msg.strip_prefix("ERR ") {
        say(format_args!("{prog}: {err}"));
        1
    } else {
        say(format_args!(
            "{prog}: the daemon exited before the mount was ready"
        ));
        1
    }
}

/// Mount and serve until unmounted. `ready` (daemon mode) gets "OK" once the mount is live,
/// then stdio is pointed at /dev/null.
fn serve(req: &MountRequest, stack: LayerStack, ready: &mut Option<std::fs::File>) -> Result<()> {
    let signals = block_signals();
    // `fsync=0`/`volatile` mean no syncs to the upper at all, as the kernel's `volatile`:
    // copy-ups are not fsynced before they are renamed into place either.
    let options = overlay_core::OverlayOptions {
        fsync: if req.fs.fsync {
            overlay_core::FsyncMode::Ordered
        } else {
            overlay_core::FsyncMode::Volatile
        },
        // As the kernel: metacopy=on turns redirect_dir on unless it was given.
        redirect_dir: req.redirect_dir.unwrap_or(if req.metacopy == Some(true) {
            overlay_core::mount::RedirectDir::On
        } else {
            overlay_core::mount::RedirectDir::Follow
        }),
        metacopy: req.metacopy.unwrap_or(false),
        index: req.index,
        // With squashed ownership the lower owners are never shown: copies stay ours (an
        // owner unmapped in our user namespace could not be set anyway).
        copy_up_keeps_own_ids: req.fs.ids.squashes(),
        ..overlay_core::OverlayOptions::default()
    };
    let overlay = Overlay::with_options(stack, options)?;
    let config = mount_config(req);
    let mountpoint: &Path = &req.mountpoint;
    let mounted = mount_session(overlay, mountpoint, &config)?;
    serve_session(
        mounted.session,
        mounted.unmounter,
        mountpoint,
        signals,
        ready,
    )
}

/// Block SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread created after),
/// for [`serve_session`]'s signal thread to take. Call it before any thread exists.
pub(crate) fn block_signals() -> SigSet {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        warn!("cannot block signals: {e}");
    }
    signals
}

/// Serve a mounted session until it is unmounted: a thread unmounts on one of `signals`;
/// `ready` (daemon mode) gets "OK" and stdio goes to /dev/null, or (foreground) the pid
/// file is written.
pub(crate) fn serve_session<FS: fuser::Filesystem>(
    session: fuser::Session<FS>,
    mut unmounter: Unmounter,
    mountpoint: &Path,
    signals: SigSet,
    ready: &mut Option<std::fs::File>,
) -> Result<()> {
    info!("mounted on {}", mountpoint.display());
    let mp = mountpoint.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("ovl-signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                info!("{sig:?}: unmounting {}", mp.display());
                if let Err(e) = unmounter.unmount() {
                    error!("unmount {}: {e}", mp.display());
                }
            }
        });
    if let Err(e) = spawned {
        warn!("no signal handling thread: {e}");
    }
    if let Some(mut w) = ready.take() {
        let _ = w.write_all(b"OK");
        drop(w);
        detach_stdio();
    } else {
        // Foreground: this process is the daemon.
        write_pid_file("ovl-fuse", std::process::id() as i32);
    }
    match session.run() {
        Ok(()) => {}
        // The kernel answers reads on a connection torn down by unmount with ENODEV (which
        // fuser treats as a clean end) or, when the teardown raced with an abort of the
        // connection, ECONNABORTED: both mean the mount is gone, which is a normal exit.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            tracing::info!(mountpoint = %mountpoint.display(), "FUSE connection aborted; exiting");
        }
        Err(source) => {
            return Err(Error::Session {
                path: mountpoint.to_path_buf(),
                source,
            })
        }
    }
    info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Point stdin/stdout/stderr at /dev/null (keeping fds 0-2 taken, so no later open lands
/// there).
fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let _ = rustix::stdio::dup2_stdin(&null);
    let _ = rustix::stdio::dup2_stdout(&null);
    let _ = rustix::stdio::dup2_stderr(&null);
}
