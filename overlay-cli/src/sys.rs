//! The CLI's only `unsafe` code: a chroot between fork and exec, and ignoring terminal
//! signals while the command runs.

use std::ffi::CString;
use std::process::Command;

/// Make the spawned command change its root to `root` and its directory to `cwd` (inside the
/// new root) right before exec.
pub fn chroot_before_exec(cmd: &mut Command, root: CString, cwd: CString) {
    use std::os::unix::process::CommandExt;
    let closure = move || -> std::io::Result<()> {
        rustix::process::chroot(root.as_c_str())?;
        if rustix::process::chdir(cwd.as_c_str()).is_err() {
            rustix::process::chdir(c"/")?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec. It only issues the chroot
    // and chdir system calls on CStrings built before the fork: no allocation, no locks, so
    // it is async-signal-safe as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(closure);
    }
}

/// Ignore SIGINT, SIGQUIT and SIGTSTP in this process (the command in the foreground gets
/// them from the terminal; ovl waits for it and cleans up, as a shell does).
pub fn ignore_terminal_signals() {
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTSTP] {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; it
        // cannot violate memory safety. Children spawned afterwards would inherit SIG_IGN, so
        // this is only called after the command is spawned.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}
