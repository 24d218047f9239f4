//! The facade's only `unsafe` code: moving the calling process into new namespaces.

use std::io;

/// `unshare(CLONE_NEWNS)`, plus `CLONE_NEWUSER` when `user`, for the calling process.
pub(crate) fn unshare_namespaces(user: bool) -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    let mut flags = UnshareFlags::NEWNS;
    if user {
        flags |= UnshareFlags::NEWUSER;
    }
    // SAFETY: CLONE_NEWNS and CLONE_NEWUSER only change which namespaces the calling process
    // belongs to; they do not unshare file descriptor tables or anything else Rust's
    // invariants depend on (the flags `unshare_unsafe` warns about are CLONE_FILES/CLONE_FS
    // and friends). The caller checks that the process is single-threaded, as the kernel
    // requires for CLONE_NEWUSER.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}
