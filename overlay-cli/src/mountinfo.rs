//! The mount table, read with overlay-core's parser (`/proc/self/mountinfo`).

pub use overlay_core::mount::mountinfo::MountInfoEntry as MountInfo;

/// The mounts of this process's mount namespace.
pub fn read() -> std::io::Result<Vec<MountInfo>> {
    overlay_core::mount::mountinfo::read_mountinfo().map_err(std::io::Error::other)
}
