//! The facade's only `unsafe` code: running code in a forked child before `exec` (used to
//! probe user namespaces without touching the calling process).

use std::io;
use std::process::Command;

/// Run `f` in the child between fork and exec of `cmd`; an error from `f` aborts the spawn and
/// is returned by `Command::spawn`/`status`.
///
/// `f` must only make async-signal-safe calls (plain system calls through rustix on
/// pre-built `CStr`s; no allocation, no locks).
pub(crate) fn before_exec<F>(cmd: &mut Command, f: F)
where
    F: FnMut() -> io::Result<()> + Send + Sync + 'static,
{
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child, where only async-signal-safe operations
    // are allowed; callers pass closures that only issue system calls on data prepared
    // before the fork (documented above), and std reports their errors through its own pipe.
    unsafe {
        cmd.pre_exec(f);
    }
}
