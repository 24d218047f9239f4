//! Every `unsafe` block of this crate lives here, each with a `// SAFETY:` comment.
//!
//! The module is split into sections, one per subsystem that needs raw system calls. Add new
//! sections at the end rather than mixing them.

// ============================================================================================
// Section: kernel mount backend (mount/): loop devices, namespaces, forked children.
// ============================================================================================

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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

// ============================================================================================
// End of section: kernel mount backend.
// ============================================================================================
// Section: union engine (engine/): file handles for `overlay.origin`, filesystem UUIDs.
// ============================================================================================

/// Largest file handle we accept (`MAX_HANDLE_SZ`).
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for `MAX_HANDLE_SZ` bytes of handle.
#[repr(C)]
struct FileHandleBuf {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// `name_to_handle_at(dir, name, ..., 0)`: the file handle (type, bytes) of `name` in `dir`
/// (the final component is not followed).
pub(crate) fn name_to_handle(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(i32, Vec<u8>)> {
    let cname =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut fh = FileHandleBuf {
        handle_bytes: MAX_HANDLE_SZ as libc::c_uint,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `fh` is a valid `struct file_handle` whose `handle_bytes` states the size of the
    // trailing buffer; `cname` is NUL-terminated; `mount_id` is a valid out-pointer. All live
    // for the duration of the call.
    let r = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            cname.as_ptr(),
            (&mut fh as *mut FileHandleBuf).cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (fh.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((fh.handle_type, fh.f_handle[..n].to_vec()))
}

/// `open_by_handle_at(mount_fd, handle, O_PATH)`: open the object a file handle names on the
/// filesystem of `mount_fd`. Needs CAP_DAC_READ_SEARCH.
pub(crate) fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
) -> io::Result<OwnedFd> {
    if handle.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut fh = FileHandleBuf {
        handle_bytes: handle.len() as libc::c_uint,
        handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    fh.f_handle[..handle.len()].copy_from_slice(handle);
    // SAFETY: `fh` is a valid `struct file_handle` with `handle_bytes` bytes of handle data
    // in its trailing buffer, alive for the call.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut fh as *mut FileHandleBuf).cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel as a new, open descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct fsuuid2` of `FS_IOC_GETFSUUID`.
#[repr(C)]
struct FsUuid2 {
    len: u8,
    uuid: [u8; 16],
}

/// `FS_IOC_GETFSUUID` = `_IOR(0x15, 0, struct fsuuid2)`.
const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;

/// The UUID of the filesystem holding `fd` (`sb->s_uuid`), as the kernel puts into file
/// handles of `overlay.origin`. Filesystems without one report zeros.
pub(crate) fn fs_uuid(fd: BorrowedFd<'_>) -> io::Result<[u8; 16]> {
    let mut u = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: FS_IOC_GETFSUUID writes at most `size_of::<FsUuid2>()` bytes into `u`, which is
    // a valid, exclusively borrowed `struct fsuuid2`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFSUUID, &mut u as *mut FsUuid2) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = [0u8; 16];
    let n = (u.len as usize).min(16);
    out[..n].copy_from_slice(&u.uuid[..n]);
    Ok(out)
}

// ---- extended inode attributes (FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR) ----

/// `struct fsxattr` of `<linux/fs.h>` (28 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsXattr {
    /// `fsx_xflags`: `FS_XFLAG_*`.
    pub xflags: u32,
    /// `fsx_extsize`: extent size hint.
    pub extsize: u32,
    /// `fsx_nextents`: extent count (read only).
    pub nextents: u32,
    /// `fsx_projid`: project id.
    pub projid: u32,
    /// `fsx_cowextsize`: copy-on-write extent size hint.
    pub cowextsize: u32,
    /// `fsx_pad`.
    pub pad: [u8; 8],
}

/// `FS_IOC_FSGETXATTR` = `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
/// `FS_IOC_FSSETXATTR` = `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;

/// `FS_IOC_FSGETXATTR` of the file `fd` (neither nix nor rustix wraps it).
pub(crate) fn fs_get_xattr(fd: BorrowedFd<'_>) -> io::Result<FsXattr> {
    let mut x = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr` into `x`, a valid, exclusively
    // borrowed value of that layout.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut x as *mut FsXattr) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(x)
}

/// `FS_IOC_FSSETXATTR` of the file `fd`.
pub(crate) fn fs_set_xattr(fd: BorrowedFd<'_>, x: &FsXattr) -> io::Result<()> {
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` from `x`, a valid value of that
    // layout that outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, x as *const FsXattr) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---- copy-up data: early writeback ----

/// Start writeback of `len` bytes at `offset` of `fd` without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`; neither nix nor rustix wraps it). A copy-up
/// calls it after each chunk, so the disk writes while the next chunk is copied and the
/// final `fsync` finds little left to do.
pub(crate) fn start_writeback(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: sync_file_range takes an fd and plain integers and touches no memory of ours;
    // `fd` is a valid borrowed descriptor for the duration of the call.
    let r = unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---- lower layers: no atime updates ----

/// `struct mount_attr` of `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR__ATIME`: the mask of the atime modes.
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
/// `MOUNT_ATTR_NOATIME`.
const MOUNT_ATTR_NOATIME: u64 = 0x10;

/// Make the (detached) mount that `fd` lives on `noatime`, with `mount_setattr(2)` (neither
/// nix nor rustix wraps it). The kernel overlay never updates the atime of a lower object;
/// reading through a noatime mount of the layer does not either.
pub(crate) fn mount_set_noatime(fd: BorrowedFd<'_>) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NOATIME,
        attr_clr: MOUNT_ATTR_ATIME_MASK,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is a valid NUL-terminated empty string, `attr` is a valid, initialised
    // `struct mount_attr` whose size is passed alongside, and the kernel only reads both.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ============================================================================================
// Section: xattr probes by directory fd and name (engine/lookup.rs).
// ============================================================================================

/// `struct xattr_args` of `<linux/xattr.h>` (Linux 6.13).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// `getxattrat`'s number: since Linux 5.1 new system calls have one number on every
/// architecture Rust targets (libc 0.2.191 does not name it for x86_64 yet).
const SYS_GETXATTRAT: libc::c_long = 464;

/// Cleared at the first ENOSYS or EPERM of `getxattrat` (a kernel older than 6.13, or a
/// seccomp filter that refuses it).
static HAVE_GETXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Take the procfs path from now on, as after an ENOSYS (tests of that path).
#[cfg(test)]
pub(crate) fn forget_getxattrat() {
    HAVE_GETXATTRAT.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// The size of xattr `xname` of `name` in `dir`, the final component not followed, with
/// `getxattrat(2)` (Linux 6.13; neither nix nor rustix wraps it): one lookup of `name` from
/// `dir`, where `lgetxattr` of `/proc/self/fd/N/name` walks procfs first. `None` when the
/// kernel lacks the call (the caller takes the procfs path).
pub(crate) fn getxattrat_size(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    xname: &str,
) -> Option<Result<usize, rustix::io::Errno>> {
    use std::sync::atomic::Ordering;
    if !HAVE_GETXATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    let inval = || Some(Err(rustix::io::Errno::INVAL));
    let Ok(cname) = CString::new(name.as_bytes()) else {
        return inval();
    };
    let Ok(cxname) = CString::new(xname) else {
        return inval();
    };
    // A size query: no value buffer.
    let mut args = XattrArgs {
        value: 0,
        size: 0,
        flags: 0,
    };
    // SAFETY: both strings are NUL-terminated and live across the call; `args` is a valid,
    // initialised `struct xattr_args` whose size is passed alongside, with a null value
    // pointer and size 0, so the kernel writes no value anywhere.
    let r = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            cname.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            cxname.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    if r >= 0 {
        return Some(Ok(r as usize));
    }
    let e = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    // ENOSYS: a kernel before 6.13. EPERM: a seccomp filter that does not know the call
    // (container runtimes' default profiles answer unknown calls so); getxattr itself never
    // answers EPERM. Either way the procfs path from then on.
    if e == libc::ENOSYS || e == libc::EPERM {
        HAVE_GETXATTRAT.store(false, Ordering::Relaxed);
        return None;
    }
    Some(Err(rustix::io::Errno::from_raw_os_error(e)))
}
