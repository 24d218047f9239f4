//! `ovl run`: a command in a private mount namespace over a throwaway (or kept) upper.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use overlay::{Chosen, Namespace, Request, Upper};

use crate::cli::{BackendArg, OwnersArg, RunArgs};
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

/// The `-o` options of `ovl run`: mount flags and overlay options; the layers come from
/// `--lower`/`--upper`.
fn run_options(args: &[String]) -> Result<overlay::core::OverlayMountOptions, CliError> {
    let k = crate::mountopts::parse_kernel_style(args)?;
    if !k.lowers.is_empty() || !k.data.is_empty() || k.upper.is_some() || k.work.is_some() {
        return Err(CliError::msg(
            "ovl run -o takes mount flags and overlay options; give the layers with --lower and --upper",
        ));
    }
    crate::commands::overlay_options(&k.options)
}

/// Whether `ovl run` squashes ownership to root (see `--owners`): asked for, or by default
/// for a caller without privileges over a lower whose top directory belongs to someone else,
/// or that is an image file.
fn squash_owners(owners: OwnersArg, backend: BackendArg, lowers: &[PathBuf]) -> bool {
    match owners {
        OwnersArg::Root => true,
        OwnersArg::Real => false,
        // The kernel backend asked for: it cannot squash, so the real owners.
        OwnersArg::Auto if backend == BackendArg::Kernel => false,
        OwnersArg::Auto => {
            if overlay::core::mount::has_cap_sys_admin_in_initial_namespace() {
                return false;
            }
            // An image's files belong to whoever they belong to inside it (root, mostly):
            // its FUSE program shows them unmapped unless ownership is squashed.
            let me = rustix::process::geteuid().as_raw();
            lowers.iter().any(|l| {
                std::fs::metadata(l)
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) != me || m.is_file())
            })
        }
    }
}

/// The FUSE daemon's log in a private directory of ours, read after the command for the
/// files it could not copy up. Removed on drop.
struct DaemonLog {
    dir: PathBuf,
}

impl DaemonLog {
    fn new(scratch: &Path) -> Result<DaemonLog, CliError> {
        overlay::core::mount::private_dir_in(scratch, "ovl-run-log")
            .map(|dir| DaemonLog { dir })
            .map_err(|e| {
                CliError::msg(format!(
                    "cannot make a directory for the FUSE daemon's log: {e}"
                ))
            })
    }

    fn file(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// One line per file the daemon refused to copy up (see
    /// `overlay_fuse::COPY_UP_REFUSED`): the command only got EACCES.
    fn report_refused_copy_ups(&self, root: &Path) {
        let Ok(text) = std::fs::read(self.file()) else {
            return;
        };
        let mut seen = std::collections::BTreeSet::new();
        for line in String::from_utf8_lossy(&text).lines() {
            let Some((_, rest)) = line.split_once(COPY_UP_REFUSED) else {
                continue;
            };
            let (path, cause) = rest
                .rsplit_once(": ")
                .unwrap_or((rest, "permission denied"));
            let cause = cause.split(" (os error").next().unwrap_or(cause);
            let path = root.join(path.trim_start_matches('/'));
            if seen.insert(path.clone()) {
                let path = path.display();
                crate::say(format_args!(
                    "ovl: {path}: cannot be copied up to be changed: {cause}: you cannot read it outside the namespace (e.g. a 0600 file of root), so it stays read-only here"
                ));
            }
        }
    }
}

impl Drop for DaemonLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.file());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// How `ovl-fuse` starts the log line of a copy-up it was not allowed to do
/// (`overlay_fuse::COPY_UP_REFUSED`).
const COPY_UP_REFUSED: &str = "copy-up refused: ";

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
    // Everything that can be refused is checked before --persist creates anything.
    if let Some(img) = &a.save {
        crate::save::check_new_image(img)?;
    }
    let keep = match &a.keep {
        Some(k) => {
            let k = absolute(k)?;
            check_keep_dir(&k)?;
            Some(k)
        }
        None => None,
    };
    let options = run_options(&a.options)?;
    // --tmp is the default: --tmp-inodes alone caps that default tmpfs.
    let mut upper_args = a.upper.clone();
    if upper_args.tmp_inodes.is_some() && upper_args.upper.is_none() && upper_args.tmp.is_none() {
        upper_args.tmp = Some(String::new());
    }
    let mut lowers = lowers;
    let persistent = crate::persist::upper_for(
        &a.persist,
        a.upper.upper.is_some(),
        a.upper.tmp.as_deref(),
        &mut lowers,
    )?;
    // Held until CMD is done: a reset or another run of the same directory is refused.
    let (persistent, _in_use) = persistent.unzip();
    let upper = match persistent {
        Some(u) => u,
        None => crate::commands::choose_upper(&upper_args, None, false, None, None)?
            .unwrap_or(Upper::Tmpfs { size: None }),
    };
    let upper = match upper {
        Upper::Dir { upper, work } => Upper::Dir {
            upper: absolute(&upper)?,
            work,
        },
        other => other,
    };
    let squash = squash_owners(a.owners, a.backend, &lowers);
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

    // With squashed ownership the daemon's log names the files it could not copy up.
    let log = if squash {
        Some(DaemonLog::new(&scratch)?)
    } else {
        None
    };
    let mut req = Request::new(lowers)
        .upper(upper.clone())
        .options(options)
        .squash_to_root(squash)
        .tmpfs_inodes(a.upper.tmp_inodes)
        .backend(a.backend.into())
        .namespace(Namespace::Private)
        .scratch_dir(&scratch);
    if let Some(l) = &log {
        req = req.fuse_log(l.file());
    }
    let mut mounted = match overlay::mount(&req, &mountpoint) {
        Ok(m) => m,
        Err(e) => {
            cleanup_root_dir(&made_root_dir);
            let e = CliError::from_overlay(e, &mountpoint);
            if squash && a.owners == OwnersArg::Auto {
                // The root-like view was ovl's choice: say how to do without it.
                return Err(CliError::msg(format!(
                    "{e} (files of other users are shown as root's through FUSE; `--owners real` mounts the kernel overlay instead, where they show as nobody's and stay read-only)"
                )));
            }
            return Err(e);
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

    if let Some(l) = &log {
        // Paths in the log are relative to the overlay's root: name them as CMD saw them.
        l.report_refused_copy_ups(target.as_deref().unwrap_or(Path::new("/")));
    }

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
        if let (Some(img), Some(u)) = (&a.save, mounted.upper()) {
            crate::save::save(u, img, crate::cli::ImageFormatArg::Squashfs).map_err(|e| {
                if matches!(upper, Upper::Tmpfs { .. }) {
                    e.rename_prefix(u, Path::new(overlay::TMPFS_UPPER))
                } else {
                    e
                }
            })?;
        }
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
