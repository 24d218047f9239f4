//! Running a command over a kernel overlay in its own mount namespace, unprivileged through
//! a user namespace.
//!
//! The child created for the command does, between fork and exec: `unshare(CLONE_NEWUSER |
//! CLONE_NEWNS)`, deny `setgroups`, map its uid and gid to root in the new user namespace
//! (`0 <uid> 1`), make every mount private (`mount --make-rprivate /`) so nothing propagates
//! back, mount the overlay at the spec's target (any directory, e.g. `/usr`), change into the
//! command's working directory again (so it is seen through the overlay) and exec. The
//! overlay disappears with the namespace when the last process in it exits.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mount::child::{ChildPlan, NamespaceSetup};
use crate::mount::kernel::{error_pipe, mount_error, read_pipe};
use crate::mount::spec::MountSpec;

/// Start `cmd` in a new user and mount namespace in which `spec` is mounted at its target.
///
/// Works for unprivileged users where the kernel allows user namespaces (overlay is
/// mountable in one since 5.11). The stack must use `user.overlay.*` xattrs (`userxattr`):
/// `trusted.*` xattrs cannot be written from a user namespace. Image lowers are refused.
/// The returned child runs the command; the mount exists only in its namespace.
pub fn spawn_in_user_namespace(spec: &MountSpec, cmd: Command) -> Result<Child> {
    spawn_in_namespace(spec, cmd, true)
}

/// [`spawn_in_user_namespace`], then wait for the command; returns its exit status.
pub fn run_in_user_namespace(spec: &MountSpec, cmd: Command) -> Result<ExitStatus> {
    wait(spec, spawn_in_user_namespace(spec, cmd)?)
}

/// Start `cmd` in a new (private) mount namespace only, in which `spec` is mounted at its
/// target. Needs CAP_SYS_ADMIN; `trusted.*` stacks work here.
pub fn spawn_in_mount_namespace(spec: &MountSpec, cmd: Command) -> Result<Child> {
    spawn_in_namespace(spec, cmd, false)
}

/// [`spawn_in_mount_namespace`], then wait for the command; returns its exit status.
pub fn run_in_mount_namespace(spec: &MountSpec, cmd: Command) -> Result<ExitStatus> {
    wait(spec, spawn_in_mount_namespace(spec, cmd)?)
}

fn wait(spec: &MountSpec, mut child: Child) -> Result<ExitStatus> {
    child
        .wait()
        .map_err(|e| Error::io("wait for command", spec.target(), e))
}

fn spawn_in_namespace(spec: &MountSpec, mut cmd: Command, user: bool) -> Result<Child> {
    let target = spec.target().to_path_buf();
    if let Some(l) = spec.lowers_top_first().iter().find(|l| l.is_image()) {
        return Err(Error::Unsupported {
            op: "mount image lower in a namespace",
            path: l.path.clone(),
            reason: "squashfs/erofs images cannot be loop-mounted inside a user namespace; \
                     mount the image first (as root) or extract it, and use the directory"
                .into(),
        });
    }
    if user && !spec.uses_userxattr() {
        return Err(Error::OptionConflict(format!(
            "a mount in a user namespace cannot write trusted.overlay.* xattrs (opaque \
             directories would fail with EIO); build the stack for {} with \
             XattrNamespace::User (userxattr)",
            target.display()
        )));
    }
    // Options as the kernel will judge them inside the namespace: trusted xattrs are out of
    // reach there (the check uses CAP_SYS_ADMIN in the initial namespace).
    let privileged = !user && crate::mount::has_cap_sys_admin_in_initial_namespace();
    let resolved = spec.options.resolve(&spec.context(privileged))?;
    let md = std::fs::metadata(&target).map_err(|e| Error::Mount {
        path: target.clone(),
        detail: format!("mount point: {e}"),
        errno: e.raw_os_error(),
    })?;
    if !md.is_dir() {
        return Err(Error::Mount {
            path: target,
            detail: "mount point is not a directory".into(),
            errno: Some(libc::ENOTDIR),
        });
    }
    let lowers: Vec<_> = spec.lowers.iter().map(|l| l.path.clone()).collect();
    let mount = spec.prepare(&lowers, &resolved)?;
    let cwd = match cmd.get_current_dir() {
        Some(d) => Some(std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf())),
        None => std::env::current_dir().ok(),
    };
    let chdir_after = cwd.and_then(|d| CString::new(d.as_os_str().as_bytes()).ok());
    let program = std::path::PathBuf::from(cmd.get_program());
    let (r, w) = error_pipe(&target)?;
    let plan = Arc::new(ChildPlan {
        namespaces: Some(NamespaceSetup { user }),
        mount,
        chdir_after,
        err_pipe: w,
    });
    crate::sys::pre_exec_plan(&mut cmd, Arc::clone(&plan));
    let spawned = cmd.spawn();
    // Close every copy of the pipe's write end we hold, so reading sees EOF.
    drop(cmd);
    drop(plan);
    match spawned {
        Ok(child) => Ok(child),
        Err(e) => {
            let msg = read_pipe(r);
            if msg.is_empty() {
                // The failure came from spawning itself (program not found, ...).
                Err(Error::io("start command in namespace", program, e))
            } else {
                Err(mount_error(
                    &target,
                    e.raw_os_error().unwrap_or(libc::EIO),
                    &msg,
                ))
            }
        }
    }
}
