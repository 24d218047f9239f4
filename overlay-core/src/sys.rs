//! Every `unsafe` block of this crate lives here, each with a `// SAFETY:` comment.
//!
//! The module is split into sections, one per subsystem that needs raw system calls. Add new
//! sections at the end rather than mixing them.

// ============================================================================================
// Section: kernel mount backend (mount/): loop devices, namespaces, forked children.
// ============================================================================================

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use crate::mount::child::ChildPlan;

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control` (linux/loop.h).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `LOOP_CONFIGURE` on `/dev/loopN` (Linux 5.8).
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// `LOOP_CLR_FD` on `/dev/loopN`.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;

/// `LO_FLAGS_READ_ONLY`.
pub(crate) const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`: the device detaches itself when its last user goes away.
pub(crate) const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Ask `/dev/loop-control` for the number of a free loop device.
pub(crate) fn loop_ctl_get_free(control: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and only returns an int; the fd is valid for
    // the duration of the call (borrowed).
    let r = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u32)
}

/// Attach `backing` to the loop device `loop_dev` in one step (`LOOP_CONFIGURE`).
pub(crate) fn loop_configure(
    loop_dev: BorrowedFd<'_>,
    backing: BorrowedFd<'_>,
    flags: u32,
    file_name: &[u8],
) -> io::Result<()> {
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: flags,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    let n = file_name.len().min(63);
    info.lo_file_name[..n].copy_from_slice(&file_name[..n]);
    let cfg = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: `cfg` is a fully initialised `struct loop_config` that outlives the call; the
    // kernel only reads it. Both fds are valid (borrowed) for the duration of the call.
    let r = unsafe { libc::ioctl(loop_dev.as_raw_fd(), LOOP_CONFIGURE as _, &cfg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detach a loop device (used to undo a configure whose mount then failed).
pub(crate) fn loop_clear(loop_dev: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument; the fd is valid (borrowed).
    let r = unsafe { libc::ioctl(loop_dev.as_raw_fd(), LOOP_CLR_FD as _, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `unshare(CLONE_NEWNS)`, plus `CLONE_NEWUSER` when `user` is true.
pub(crate) fn unshare_mount_namespace(user: bool) -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    let mut flags = UnshareFlags::NEWNS;
    if user {
        flags |= UnshareFlags::NEWUSER;
    }
    // SAFETY: rustix marks unshare unsafe because CLONE_FILES / CLONE_FS can invalidate
    // assumptions other threads make about the shared fd table or cwd. We only pass
    // CLONE_NEWNS and CLONE_NEWUSER, which affect namespaces only, and only call this in a
    // freshly forked single-threaded child.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|e| e.into())
}

/// Run `plan` in the child created by `cmd.spawn()`, between fork and exec.
///
/// [`ChildPlan::run`] is written to be async-signal-safe: it only issues system calls on
/// data prepared before the fork (C strings, open fds, preformatted buffers) and never
/// allocates, locks or touches thread-local state.
pub(crate) fn pre_exec_plan(cmd: &mut Command, plan: Arc<ChildPlan>) {
    // SAFETY: the closure runs in the forked child of a possibly multi-threaded parent, where
    // only async-signal-safe operations are allowed. `ChildPlan::run` upholds that (see its
    // documentation): raw syscalls through rustix on pre-built data, no allocation. Cloning
    // an `Arc` is not needed (we borrow it), and the returned io::Error is built from a raw
    // errno, which does not allocate.
    unsafe {
        cmd.pre_exec(move || plan.run().map_err(io::Error::from_raw_os_error));
    }
}

/// Fork a child that runs `plan` and exits; wait for it. Returns the errno the plan failed
/// with (`Ok(None)` when it succeeded).
pub(crate) fn fork_plan(plan: &ChildPlan) -> io::Result<Option<i32>> {
    // SAFETY: fork() in a possibly multi-threaded process: the child only runs
    // `ChildPlan::run` (async-signal-safe, see `pre_exec_plan`) and then `_exit`, which skips
    // atexit handlers and stdio flushing.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let code = match plan.run() {
            Ok(()) => 0,
            Err(errno) => errno.clamp(1, 255),
        };
        // SAFETY: `_exit` is async-signal-safe and never returns.
        unsafe { libc::_exit(code) };
    }
    let pid = rustix::process::Pid::from_raw(pid).expect("fork returned a positive pid");
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(if code == 0 { None } else { Some(code) });
                }
                if status.signaled() {
                    return Ok(Some(libc::EINTR));
                }
            }
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Keep `fd` open across exec (clear `FD_CLOEXEC`); used only in a forked child.
#[allow(dead_code)]
pub(crate) fn keep_across_exec(fd: impl AsFd) -> io::Result<()> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(Into::into)
}

// ============================================================================================
// End of section: kernel mount backend.
// ============================================================================================
