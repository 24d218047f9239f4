//! `ovl run`: a command in a private mount namespace over a throwaway (or kept) upper.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use overlay::{Chosen, Namespace, Request, Upper};

use crate::cli::RunArgs;
use crate::error::CliError;
use crate::state::Registry;

/// What `ovl run` ends with: the command's status, or ovl's own failure.
pub enum RunOutcome {
    /// The command ran; exit with this code.
    Exited(u8),
}

fn absolute(p: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(p).map_err(|e| CliError::io(p, "cannot resolve", e))
}

/// Bind `/dev`, `/proc`, `/sys` of the host view into the new root.
fn bind_system_dirs(root: &Path) -> Result<(), CliError> {
    for d in ["dev", "proc", "sys"] {
        let src = Path::new("/").join(d);
        let dst = root.join(d);
        if !dst.is_dir() {
            tracing::info!(
                "{} is missing in the new root; not binding it",
                dst.display()
            );
            continue;
        }
        rustix::mount::mount_bind_recursive(&src, &dst).map_err(|e| {
            CliError::io(
                &dst,
                &format!("cannot bind-mount {}", src.display()),
                std::io::Error::from(e),
            )
        })?;
    }
    Ok(())
}

/// Check `--keep DIR` up front: it must not exist or be an empty directory.
fn check_keep_dir(d: &Path) -> Result<(), CliError> {
    match std::fs::read_dir(d) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(CliError::path(
                    d,
                    "not empty; --keep needs a new or empty directory",
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = d.parent().unwrap_or(Path::new("/"));
            if parent.is_dir() {
                Ok(())
            } else {
                Err(CliError::path(parent, "does not exist (needed for --keep)"))
            }
        }
        Err(e) => Err(CliError::io(d, "cannot open", e)),
    }
}

/// `ovl run`.
pub fn run(a: RunArgs) -> Result<RunOutcome, CliError> {
    let target = match &a.target {
        Some(t) => {
            Some(std::fs::canonicalize(t).map_err(|e| CliError::io(t, "cannot resolve", e))?)
        }
        None => None,
    };
    let lowers: Vec<PathBuf> = if !a.lowers.is_empty() {
        a.lowers
            .iter()
            .map(|l| absolute(l))
            .collect::<Result<_, _>>()?
    } else {
        vec![target.clone().unwrap_or_else(|| PathBuf::from("/"))]
    };
    let upper = crate::commands::choose_upper(&a.upper, None, false, None, None)?
        .unwrap_or(Upper::Tmpfs { size: None });
    let upper = match upper {
        Upper::Dir { upper, work } => Upper::Dir {
            upper: absolute(&upper)?,
            work,
        },
        other => other,
    };
    let keep = match &a.keep {
        Some(k) => {
            let k = absolute(k)?;
            check_keep_dir(&k)?;
            Some(k)
        }
        None => None,
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let reg = Registry::open();
    let scratch = reg.scratch_dir()?;

    // The mount point: the target itself, or (for --root) a fresh directory.
    let (mountpoint, made_root_dir) = match &target {
        Some(t) => (t.clone(), None),
        None => {
            let d = scratch.join(format!("ovl-root-{}", std::process::id()));
            std::fs::create_dir(&d).map_err(|e| CliError::io(&d, "cannot create", e))?;
            (d.clone(), Some(d))
        }
    };
    let cleanup_root_dir = |d: &Option<PathBuf>| {
        if let Some(d) = d {
            let _ = std::fs::remove_dir(d);
        }
    };

    let req = Request::new(lowers)
        .upper(upper.clone())
        .backend(a.backend.into())
        .namespace(Namespace::Private)
        .scratch_dir(&scratch);
    let mut mounted = match overlay::mount(&req, &mountpoint) {
        Ok(m) => m,
        Err(e) => {
            cleanup_root_dir(&made_root_dir);
            return Err(CliError::from_overlay(e, &mountpoint));
        }
    };
    // The namespace is private now: the host never sees these mounts, and the scratch
    // directories on the host stay empty.
    for r in mounted.reasons() {
        tracing::info!("{r}");
    }
    if mounted.backend() == Chosen::KernelUserNamespace {
        tracing::debug!("running as root inside a user namespace");
    }
    if target.is_none() {
        bind_system_dirs(&mountpoint)?;
    }

    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    if target.is_some() {
        // Re-enter the working directory so it is seen through the overlay.
        cmd.current_dir(&cwd);
    } else {
        let root = CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|_| CliError::path(&mountpoint, "path contains a NUL byte"))?;
        let dir = CString::new(cwd.as_os_str().as_bytes()).unwrap_or_else(|_| c"/".to_owned());
        crate::sys::chroot_before_exec(&mut cmd, root, dir);
    }
    let status = match cmd.spawn() {
        Ok(mut child) => {
            crate::sys::ignore_terminal_signals();
            child.wait()
        }
        Err(e) => Err(e),
    };
    let code = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => c as u8,
            (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
            _ => 1,
        },
        Err(e) => {
            let (code, what) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, "command not found"),
                std::io::ErrorKind::PermissionDenied => (126, "cannot execute"),
                _ => (126, "cannot start"),
            };
            crate::say(format_args!(
                "ovl: {}: {what}: {}",
                a.command[0].to_string_lossy(),
                crate::error::describe(&e)
            ));
            code
        }
    };

    // Unmount the overlay (and anything bound into it), keep the changes if asked, release
    // the upper.
    let result = (|| -> Result<(), CliError> {
        if target.is_none() {
            for d in ["sys", "proc", "dev"] {
                let _ =
                    rustix::mount::unmount(mountpoint.join(d), rustix::mount::UnmountFlags::DETACH);
            }
        }
        mounted
            .unmount_overlay()
            .map_err(|e| CliError::from_overlay(e, &mountpoint))?;
        if let (Some(k), Some(u)) = (&keep, mounted.upper()) {
            let stats = crate::copy::copy_upper(u, k).map_err(|e| {
                // A tmpfs upper lives in our temporary directory: name it by --tmp.
                if matches!(upper, Upper::Tmpfs { .. }) {
                    e.rename_prefix(u, Path::new(overlay::TMPFS_UPPER))
                } else {
                    e
                }
            })?;
            tracing::info!(
                "kept {} entries ({} bytes) in {}",
                stats.entries,
                stats.bytes,
                k.display()
            );
        }
        mounted
            .unmount()
            .map_err(|e| CliError::from_overlay(e, &mountpoint))
    })();
    cleanup_root_dir(&made_root_dir);
    result?;
    Ok(RunOutcome::Exited(code))
}
