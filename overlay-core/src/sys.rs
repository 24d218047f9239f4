//! Every `unsafe` block of this crate lives here, each with a `// SAFETY:` comment.
//!
//! The module is split into sections, one per subsystem that needs raw system calls. Add new
//! sections at the end rather than mixing them.

// ============================================================================================
// Section: union engine (engine/): file handles for `overlay.origin`, filesystem UUIDs.
// ============================================================================================

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

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
