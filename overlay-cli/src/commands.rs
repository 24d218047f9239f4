//! `ovl mount`, `ovl umount`, `ovl status`, `ovl probe`.

use std::io::Write;
use std::path::{Path, PathBuf};

use overlay::core::{Atime, OverlayMountOptions, RedirectDir, UuidMode, Verity, Xino};
use overlay::{Backend, Namespace, Request, Upper};

use crate::cli::{BackendArg, MountArgs, OwnersArg, ProbeArgs, StatusArgs, UmountArgs, UpperArgs};
use crate::error::CliError;
use crate::mountopts::{check_tmpfs_size, parse_kernel_style};
use crate::state::{MountRecord, Registry};

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Kernel => Backend::Kernel,
            BackendArg::Fuse => Backend::Fuse,
        }
    }
}

fn on_off(key: &str, v: Option<&str>) -> Result<bool, CliError> {
    match v {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(o) => Err(CliError::msg(format!("-o {key}={o}: expected on or off"))),
    }
}

/// Turn `-o` options (other than the layer paths) into kernel overlay options.
pub fn overlay_options(opts: &[(String, Option<String>)]) -> Result<OverlayMountOptions, CliError> {
    let mut o = OverlayMountOptions::default();
    for (k, v) in opts {
        let v = v.as_deref();
        let bad = || CliError::msg(format!("-o {k}={}: unknown value", v.unwrap_or("")));
        match k.as_str() {
            "redirect_dir" => {
                o.redirect_dir = Some(match v {
                    Some("on") => RedirectDir::On,
                    // `off` = create none, follow existing ones (redirect_always_follow=Y).
                    Some("follow") | Some("off") => RedirectDir::Follow,
                    Some("nofollow") => RedirectDir::NoFollow,
                    _ => return Err(bad()),
                })
            }
            "index" => o.index = on_off(k, v)?,
            "metacopy" => o.metacopy = on_off(k, v)?,
            "nfs_export" => o.nfs_export = on_off(k, v)?,
            "xino" => {
                o.xino = match v {
                    Some("on") => Xino::On,
                    Some("off") => Xino::Off,
                    Some("auto") => Xino::Auto,
                    _ => return Err(bad()),
                }
            }
            "uuid" => {
                o.uuid = match v {
                    Some("on") => UuidMode::On,
                    Some("off") => UuidMode::Off,
                    Some("null") => UuidMode::Null,
                    Some("auto") => UuidMode::Auto,
                    _ => return Err(bad()),
                }
            }
            "verity" => {
                o.verity = match v {
                    Some("on") => Verity::On,
                    Some("off") => Verity::Off,
                    Some("require") => Verity::Require,
                    _ => return Err(bad()),
                }
            }
            "volatile" => o.volatile = true,
            "userxattr" => o.userxattr = Some(true),
            "ro" => o.read_only = true,
            "rw" => o.read_only = false,
            "nosuid" => o.nosuid = true,
            "suid" => o.nosuid = false,
            "nodev" => o.nodev = true,
            "dev" => o.nodev = false,
            "noexec" => o.noexec = true,
            "exec" => o.noexec = false,
            "relatime" => o.atime = Atime::Relatime,
            "noatime" => o.atime = Atime::Noatime,
            "strictatime" | "atime" => o.atime = Atime::Strictatime,
            "nodiratime" => o.nodiratime = true,
            "diratime" => o.nodiratime = false,
            // mount(8)'s `defaults`: rw,suid,dev,exec,async. ovl's own defaults stay
            // (nosuid,nodev): `-o defaults` is accepted as mount(8) accepts it.
            "defaults" => {}
            _ => {
                return Err(CliError::msg(format!(
                    "-o {k}: unknown overlay option (known: redirect_dir, index, metacopy, nfs_export, xino, uuid, verity, volatile, userxattr, ro, rw, [no]suid, [no]dev, [no]exec, relatime, noatime, strictatime, [no]diratime)"
                )))
            }
        }
    }
    Ok(o)
}

/// The upper chosen by `--upper`/`--work`/`--tmp`/`--read-only` or `-o upperdir=,workdir=`.
pub fn choose_upper(
    args: &UpperArgs,
    work: Option<PathBuf>,
    read_only: bool,
    k_upper: Option<PathBuf>,
    k_work: Option<PathBuf>,
) -> Result<Option<Upper>, CliError> {
    if args.upper.is_some() && k_upper.is_some() {
        return Err(CliError::msg(
            "the upper is given twice (--upper and -o upperdir=)",
        ));
    }
    if k_upper.is_some() && (args.tmp.is_some() || read_only) {
        return Err(CliError::msg(
            "-o upperdir= conflicts with --tmp and --read-only",
        ));
    }
    let work = work.or(k_work);
    if let Some(u) = args.upper.clone().or(k_upper) {
        return Ok(Some(Upper::Dir { upper: u, work }));
    }
    if work.is_some() {
        return Err(CliError::msg("a workdir was given without an upper"));
    }
    if args.tmp_inodes.is_some() && args.tmp.is_none() {
        return Err(CliError::msg(
            "--tmp-inodes caps a tmpfs upper: give --tmp as well",
        ));
    }
    if let Some(size) = &args.tmp {
        return Ok(Some(Upper::Tmpfs {
            size: check_tmpfs_size(size)?,
        }));
    }
    if read_only {
        return Ok(Some(Upper::ReadOnly));
    }
    Ok(None)
}

fn canonical(p: &Path) -> Result<PathBuf, CliError> {
    std::fs::canonicalize(p).map_err(|e| CliError::io(p, "cannot resolve", e))
}

/// `ovl mount`.
/// Whether `ovl mount` shows every file as root's (see `ovl mount --owners`): asked for, or
/// by default for a caller without privileges mounting images read-only (the view root gets
/// of them; with an upper the caller could not write into directories shown as root's).
fn mount_squashes_owners(
    owners: OwnersArg,
    backend: BackendArg,
    read_only: bool,
    lowers: &[PathBuf],
) -> bool {
    match owners {
        OwnersArg::Root => true,
        OwnersArg::Real => false,
        OwnersArg::Auto => {
            backend != BackendArg::Kernel
                && read_only
                && !overlay::core::mount::has_cap_sys_admin_in_initial_namespace()
                && lowers
                    .iter()
                    .any(|l| std::fs::metadata(l).is_ok_and(|m| m.is_file()))
        }
    }
}

pub fn mount(a: MountArgs) -> Result<u8, CliError> {
    let k = parse_kernel_style(&a.options)?;
    if !a.lowers.is_empty() && !k.lowers.is_empty() {
        return Err(CliError::msg(
            "give the lowers either with --lower (bottom-first) or with -o lowerdir= (top-first), not both",
        ));
    }
    if !a.data_lowers.is_empty() && !k.data.is_empty() {
        return Err(CliError::msg(
            "give the data-only lowers either with --data or after `::` in -o lowerdir=, not both",
        ));
    }
    let data_lowers = if a.data_lowers.is_empty() {
        k.data.clone()
    } else {
        a.data_lowers.clone()
    };
    let lowers = if a.lowers.is_empty() {
        k.lowers.clone()
    } else {
        a.lowers.clone()
    };
    if lowers.is_empty() {
        return Err(CliError::msg(
            "no lower layer: give --lower DIR (repeatable, bottom-first) or -o lowerdir=TOP:...:BOTTOM",
        ));
    }
    let mut options = overlay_options(&k.options)?;
    // Checked before --persist creates anything.
    let target = canonical(&a.target)?;
    let mounts = crate::mountinfo::read()
        .map_err(|e| CliError::io("/proc/self/mountinfo", "cannot read", e))?;
    if let Some(m) = mounts.iter().rev().find(|m| m.mount_point == target) {
        if m.fstype == "overlay" || m.fstype.starts_with("fuse") {
            return Err(CliError::path(
                &target,
                format!(
                    "already has an overlay mounted ({}); unmount it first",
                    m.fstype
                ),
            ));
        }
    }
    let mut lowers = lowers;
    let persistent = crate::persist::upper_for(
        &a.persist,
        a.upper.upper.is_some() || k.upper.is_some() || a.read_only,
        a.upper.tmp.as_deref(),
        &mut lowers,
    )?;
    // Held until the mount is up; then the mount itself says the upper is in use.
    let (persistent, _in_use) = persistent.unzip();
    let upper = match persistent {
        Some(u) => Some(u),
        None => choose_upper(&a.upper, a.work.clone(), a.read_only, k.upper, k.work)?,
    };
    let upper = match upper {
        Some(u) => u,
        None if options.read_only => Upper::ReadOnly,
        None => {
            return Err(CliError::msg(
                "choose an upper: --upper DIR, --tmp[=SIZE] or --read-only",
            ))
        }
    };
    if upper == Upper::ReadOnly {
        options.read_only = true;
    }
    let squash = mount_squashes_owners(a.owners, a.backend, upper == Upper::ReadOnly, &lowers);
    let reg = Registry::open();
    let scratch = reg.scratch_dir()?;
    // Recorded before anything is mounted: if this process dies half-way, `ovl umount` and
    // `ovl status` find what it left by this record (image and tmpfs mount points carry our
    // pid in their names).
    let mut rec = MountRecord {
        target: target.clone(),
        backend: String::new(),
        reasons: Vec::new(),
        lowers: lowers
            .iter()
            .map(|l| std::path::absolute(l).unwrap_or_else(|_| l.clone()))
            .collect(),
        upper: None,
        work: None,
        managed_work: false,
        tmpfs: None,
        fuse_pid: None,
        mount_id: 0,
        fstype: String::new(),
        options: a.options.clone(),
        created: crate::state::now(),
        images: Vec::new(),
        pending: true,
        pid: Some(std::process::id()),
        scratch_dirs: vec![std::env::temp_dir(), scratch.clone()],
    };
    reg.save(&rec)?;
    let req = Request::new(lowers)
        .upper(upper)
        .options(options)
        .squash_to_root(squash)
        .tmpfs_inodes(a.upper.tmp_inodes)
        .data_lowers(data_lowers)
        .backend(a.backend.into())
        .namespace(Namespace::Current)
        .scratch_dir(scratch);
    let mounted = match overlay::mount(&req, &target) {
        Ok(m) => m,
        Err(e) => {
            let _ = reg.remove(&target);
            return Err(CliError::from_overlay(e, &target));
        }
    };
    for r in mounted.reasons() {
        tracing::info!("{r}");
    }
    let kept = mounted.keep();
    if std::env::var_os("OVL_TEST_DIE_AFTER_MOUNT").is_some() {
        // Test hook: die as a crash would, between mounting and recording the mount.
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    let mounts = crate::mountinfo::read()
        .map_err(|e| CliError::io("/proc/self/mountinfo", "cannot read", e))?;
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == target) else {
        return Err(CliError::path(
            &target,
            "mounted, but not found in /proc/self/mountinfo",
        ));
    };
    rec.backend = kept.backend.to_string();
    rec.reasons = kept.reasons.clone();
    rec.lowers = kept.lowers.clone();
    rec.upper = kept.upper.clone();
    rec.work = kept.work.clone();
    rec.managed_work = kept.managed_work;
    rec.tmpfs = kept.tmpfs.clone();
    rec.fuse_pid = kept.fuse_pid;
    rec.mount_id = m.mount_id;
    rec.fstype = m.fstype.clone();
    rec.images = kept.images.clone();
    rec.pending = false;
    if let Err(e) = reg.save(&rec) {
        // The pending record stays: `ovl umount` still undoes everything.
        crate::say(format_args!(
            "ovl: warning: {e}; the mount works, but `ovl status` may not list it"
        ));
    }
    Ok(0)
}

/// The mount point `p` names, absolute: canonical where possible; a FUSE mount whose daemon
/// died cannot be resolved itself (ENOTCONN), so then its parent is.
fn mount_point_path(p: &Path) -> Result<PathBuf, CliError> {
    match std::fs::canonicalize(p) {
        Ok(c) => Ok(c),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let abs = std::path::absolute(p).map_err(|e| CliError::io(p, "cannot resolve", e))?;
            match (abs.parent(), abs.file_name()) {
                (Some(d), Some(n)) => Ok(canonical(d)?.join(n)),
                _ => Err(CliError::io(p, "cannot resolve", e)),
            }
        }
        Err(e) => Err(CliError::io(p, "cannot resolve", e)),
    }
}

/// Unmount the overlay on `target`, turning EBUSY into advice.
fn unmount_overlay(target: &Path, lazy: bool) -> Result<(), CliError> {
    overlay::unmount(target, lazy).map_err(|e| {
        let busy = matches!(
            &e,
            overlay::Error::Core(overlay::core::Error::Io { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY)
        );
        if busy {
            let t = target.display();
            CliError::path(
                target,
                format!(
                    "busy: a process still has files or its working directory in it (see which with `fuser -vm {t}`); stop them, or detach it now with `ovl umount --lazy {t}` (it goes away once they are done)"
                ),
            )
        } else {
            CliError::from_overlay(e, target)
        }
    })
}

/// `ovl umount`.
pub fn umount(a: UmountArgs) -> Result<u8, CliError> {
    let target = mount_point_path(&a.target)?;
    let reg = Registry::open();
    let rec = reg.get(&target);
    let mounts = crate::mountinfo::read()
        .map_err(|e| CliError::io("/proc/self/mountinfo", "cannot read", e))?;
    let mounted = crate::state::overlay_at(&target, &mounts);
    let state_dir = crate::state::registry_dir();
    match rec {
        Some(r) if r.pending && !r.is_abandoned() => Err(CliError::path(
            &target,
            format!(
                "ovl (pid {}) is still mounting it; try again once it is done",
                r.pid.unwrap_or(0)
            ),
        )),
        // Ours: the live mount, or what an ovl that died while mounting left.
        Some(r) if crate::state::is_live(&r, &mounts) || (r.is_abandoned() && mounted) => {
            unmount_overlay(&target, a.lazy)?;
            let mounts = crate::mountinfo::read()
                .map_err(|e| CliError::io("/proc/self/mountinfo", "cannot read", e))?;
            crate::state::release_leftovers(&r, &mounts)?;
            reg.remove(&target)
        }
        Some(r) => {
            // Unmounted behind our back: clean up what is left.
            crate::state::release_leftovers(&r, &mounts)?;
            reg.remove(&target)?;
            if mounted {
                umount_foreign(&target, &a, &state_dir)
            } else {
                Err(CliError::path(
                    &target,
                    "not mounted (its stale record was removed, and what it left released)",
                ))
            }
        }
        None if mounted => umount_foreign(&target, &a, &state_dir),
        None => Err(CliError::path(&target, "not mounted")),
    }
    .map(|()| 0)
}

/// An overlay ovl has no record of: unmounted only with `--force`.
fn umount_foreign(target: &Path, a: &UmountArgs, state_dir: &Path) -> Result<(), CliError> {
    if !a.force {
        return Err(CliError::path(
            target,
            format!(
                "this overlay was not mounted by ovl (no record under {}); unmount it anyway with `ovl umount --force {}`",
                state_dir.display(),
                target.display()
            ),
        ));
    }
    unmount_overlay(target, a.lazy)
}

/// What is wrong with a recorded mount, if anything: `(health, explanation)`.
fn health(r: &MountRecord) -> (&'static str, Option<String>) {
    let t = r.target.display();
    if r.is_abandoned() {
        return (
            "interrupted",
            Some(format!(
                "the ovl that mounted it died before finishing; `ovl umount {t}` cleans up"
            )),
        );
    }
    if r.fstype.starts_with("fuse") {
        // The recorded daemon must still be this mount's ovl-fuse (pids are reused).
        if let Some(pid) = r
            .fuse_pid
            .filter(|p| !crate::state::is_fuse_daemon_of(*p, &r.target))
        {
            return (
                "daemon-gone",
                Some(format!(
                    "daemon PID gone: its FUSE daemon (pid {pid}) no longer runs; `ovl umount {t}` removes the mount"
                )),
            );
        }
        if let Some(pid) = r.fuse_pid.filter(|p| crate::state::is_stopped(*p)) {
            return (
                "daemon-stopped",
                Some(format!(
                    "its FUSE daemon (pid {pid}) is stopped, so every access to the mount waits; `kill -CONT {pid}` resumes it, `ovl umount --lazy {t}` detaches the mount"
                )),
            );
        }
        // statfs always reaches the daemon (a stat may be answered from the kernel's cache),
        // and waits for it. With FUSE over io_uring a request handed to a daemon that does
        // not answer cannot be killed: the caller waits uninterruptibly until the daemon
        // resumes. So the statfs runs in a process of its own (this program again, see
        // `statfs_probe_main`) that `ovl status` leaves behind when it does not answer in
        // time, instead of a thread that would keep `ovl status` itself from exiting.
        let (tx, rx) = std::sync::mpsc::channel();
        let target = r.target.clone();
        std::thread::spawn(move || {
            let _ = tx.send(statfs_in_a_child(&target));
        });
        match rx.recv_timeout(STATFS_PATIENCE) {
            Ok(Some(rustix::io::Errno::NOTCONN)) => {
                return (
                    "daemon-gone",
                    Some(format!(
                        "its FUSE daemon is gone, the mount answers \"Transport endpoint is not connected\"; `ovl umount {t}` removes it"
                    )),
                );
            }
            Ok(_) => {}
            Err(_) => {
                return (
                    "daemon-unresponsive",
                    Some(format!(
                        "its FUSE daemon did not answer within {} s; `ovl umount --lazy {t}` detaches the mount",
                        STATFS_PATIENCE.as_secs()
                    )),
                );
            }
        }
    }
    ("ok", None)
}

/// The environment variable that turns `ovl` into the statfs probe of [`health`].
pub const STATFS_PROBE_ENV: &str = "OVL_INTERNAL_STATFS_PROBE";

/// Exit status of the statfs probe when the mount answers ENOTCONN.
const PROBE_NOT_CONNECTED: i32 = 3;

/// `statfs` of `target` in a child process (this program with [`STATFS_PROBE_ENV`] set):
/// `None` when it answered, `Some(errno)` when it failed. Waits for the child; the caller
/// gives up on this thread when it takes too long, and the child is never killed nor
/// waited for then (it may be stuck until the daemon resumes; init reaps it).
fn statfs_in_a_child(target: &std::path::Path) -> Option<rustix::io::Errno> {
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new(exe)
        .env(STATFS_PROBE_ENV, target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    match status.code() {
        Some(0) => None,
        Some(PROBE_NOT_CONNECTED) => Some(rustix::io::Errno::NOTCONN),
        _ => Some(rustix::io::Errno::IO),
    }
}

/// The statfs probe's whole life, when `ovl` was started as one (see [`statfs_in_a_child`]):
/// exit 0 when `statfs` of the path in [`STATFS_PROBE_ENV`] answers, 3 on ENOTCONN, 1 else.
pub fn statfs_probe_main(target: &std::ffi::OsStr) -> ! {
    let code = match rustix::fs::statfs(std::path::Path::new(target)) {
        Ok(_) => 0,
        Err(rustix::io::Errno::NOTCONN) => PROBE_NOT_CONNECTED,
        Err(_) => 1,
    };
    std::process::exit(code)
}

/// How long `ovl status` waits for a FUSE daemon to answer `statfs`.
const STATFS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// `ovl status`.
pub fn status(a: StatusArgs) -> Result<u8, CliError> {
    let mounts = crate::mountinfo::read()
        .map_err(|e| CliError::io("/proc/self/mountinfo", "cannot read", e))?;
    let recs = Registry::open().live(&mounts);
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    let r = (|| -> std::io::Result<()> {
        if a.json {
            let v: Vec<serde_json::Value> = recs
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).expect("records serialize");
                    let (h, why) = health(r);
                    if let serde_json::Value::Object(m) = &mut v {
                        m.insert("health".into(), h.into());
                        if let Some(why) = why {
                            m.insert("problem".into(), why.into());
                        }
                    }
                    v
                })
                .collect();
            serde_json::to_writer_pretty(&mut w, &v)?;
            writeln!(w)?;
            return Ok(());
        }
        if recs.is_empty() {
            writeln!(w, "no overlays mounted by ovl")?;
        }
        for r in &recs {
            writeln!(w, "{}", r.target.display())?;
            if let (_, Some(why)) = health(r) {
                writeln!(w, "  BROKEN: {why}")?;
            }
            if !r.pending {
                writeln!(w, "  backend: {} ({})", r.backend, r.fstype)?;
            }
            let lowers: Vec<String> = r.lowers.iter().map(|l| l.display().to_string()).collect();
            writeln!(w, "  lowers (bottom-first): {}", lowers.join(" "))?;
            match (&r.upper, &r.tmpfs) {
                (Some(u), Some(_)) => {
                    writeln!(w, "  upper: {} (tmpfs, discarded at unmount)", u.display())?
                }
                (Some(u), None) => writeln!(w, "  upper: {}", u.display())?,
                (None, _) if r.pending => {}
                (None, _) => writeln!(w, "  upper: none (read-only)")?,
            }
            if let Some(wk) = &r.work {
                writeln!(
                    w,
                    "  work: {}{}",
                    wk.display(),
                    if r.managed_work { " (managed)" } else { "" }
                )?;
            }
            for im in &r.images {
                writeln!(w, "  image lower mounted on: {}", im.display())?;
            }
        }
        Ok(())
    })();
    crate::output(r)?;
    Ok(0)
}

/// `ovl probe`.
pub fn probe(a: ProbeArgs) -> Result<u8, CliError> {
    let p = overlay::probe();
    let (mount_choice, reasons) = overlay::explain(Namespace::Current);
    let (run_choice, _) = overlay::explain(Namespace::Private);
    let name = |c: Option<overlay::Chosen>| c.map_or("none".to_string(), |c| c.to_string());
    let r = if a.json {
        let mut v: serde_json::Value =
            serde_json::from_str(&p.to_json()).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("auto_mount".into(), name(mount_choice).into());
            m.insert("auto_run".into(), name(run_choice).into());
            m.insert("reasons".into(), reasons.clone().into());
            let images: serde_json::Map<String, serde_json::Value> = overlay::image_programs()
                .into_iter()
                .map(|(name, prog, at)| {
                    (
                        name.to_string(),
                        serde_json::json!({"program": prog, "path": at}),
                    )
                })
                .collect();
            m.insert("image_programs".into(), images.into());
        }
        let stdout = std::io::stdout();
        let mut w = stdout.lock();
        serde_json::to_writer_pretty(&mut w, &v)
            .and_then(|()| writeln!(w).map_err(serde_json::Error::io))
            .map_err(std::io::Error::other)
    } else {
        let stdout = std::io::stdout();
        let mut w = stdout.lock();
        (|| {
            write!(w, "{p}")?;
            writeln!(w)?;
            for r in &reasons {
                writeln!(w, "{r}")?;
            }
            for (name, prog, at) in overlay::image_programs() {
                match at {
                    Some(p) => writeln!(
                        w,
                        "{name} images without root (or for FUSE): yes: {}",
                        p.display()
                    )?,
                    None => writeln!(
                        w,
                        "{name} images without root (or for FUSE): no: {prog} is not installed"
                    )?,
                }
            }
            writeln!(
                w,
                "ovl mount --backend auto would use: {}",
                name(mount_choice)
            )?;
            writeln!(
                w,
                "ovl run --backend auto would use:   {}",
                name(run_choice)
            )
        })()
    };
    crate::output(r)?;
    Ok(0)
}
