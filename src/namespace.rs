//! Moving the calling process into a private mount namespace (and, unprivileged, a user
//! namespace in which the caller is root), so mounts made afterwards are seen only by this
//! process and its children and disappear with them.

use crate::{Error, Result};

/// Which private namespace the process entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateNamespace {
    /// A new mount namespace only (the caller was privileged).
    Mount,
    /// A new user namespace (caller's uid/gid mapped to root) and mount namespace.
    UserAndMount,
}

/// Number of threads of this process (from /proc/self/status).
fn thread_count() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

fn write(path: &str, data: String) -> Result<()> {
    std::fs::write(path, data.as_bytes()).map_err(|e| {
        Error::Namespace(format!(
            "{path}: {e} (the new user namespace could not be set up)"
        ))
    })
}

/// Enter a private mount namespace; unprivileged (`user`), also a new user namespace where
/// the caller's uid and gid map to root. All mounts are made private (`--make-rprivate /`),
/// so nothing propagates back.
///
/// The kernel only allows a single-threaded process to enter a new user namespace: call this
/// early, before any thread is started.
pub fn enter_private_namespace(user: bool) -> Result<PrivateNamespace> {
    if user && thread_count().is_some_and(|n| n > 1) {
        return Err(Error::Namespace(
            "a multi-threaded process cannot enter a new user namespace (unshare(CLONE_NEWUSER) needs a single thread)".into(),
        ));
    }
    // Where our own executable is, while its path still means what it says (the FUSE
    // backend finds ovl-fuse next to it).
    let _ = crate::fuse::own_exe();
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    crate::sys::unshare_namespaces(user).map_err(|e| {
        Error::Namespace(if user {
            format!("unshare(CLONE_NEWUSER|CLONE_NEWNS): {e} (user namespaces may be disabled: see /proc/sys/user/max_user_namespaces, kernel.unprivileged_userns_clone, AppArmor)")
        } else {
            format!("unshare(CLONE_NEWNS): {e}")
        })
    })?;
    if user {
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
        write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    }
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(|e| Error::Namespace(format!("make all mounts private: {e}")))?;
    Ok(if user {
        PrivateNamespace::UserAndMount
    } else {
        PrivateNamespace::Mount
    })
}
