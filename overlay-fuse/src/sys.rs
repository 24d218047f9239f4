//! Every `unsafe` block of this crate.

use std::io;

/// Which side of a fork this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The original process; the child has this pid.
    Parent(i32),
    /// The new process.
    Child,
}

/// `fork(2)`. Call it only while the process has a single thread: the child gets a copy of
/// the calling thread only, and locks held by other threads would stay locked forever.
pub fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller (the daemon start-up) forks before creating any thread, so the
    // child's only thread is the one that forked and no lock can be held by a vanished
    // thread. The child goes on running ordinary Rust code, which is sound in that state.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child.as_raw())),
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// Map an EROFS image file read-only for the in-process reader (`ovl-erofs`).
pub fn map_image(file: &std::fs::File) -> io::Result<erofs_rs::backend::MmapImage> {
    // SAFETY: a read-only shared mapping of a file we opened read-only; the reader only
    // borrows byte slices of it while the image object (which owns the mapping) lives, and
    // checks every structure it reads. What the mapping cannot guard against is another
    // process truncating or rewriting the file while it is served (a fault, or bytes that
    // change under a slice): like a loop device or erofsfuse, ovl-erofs requires an image
    // that is not changed while mounted (documented in `crate::erofs`).
    unsafe { erofs_rs::backend::MmapImage::new_from_file(file) }
}
