//! `ovl mount`, `ovl umount`, `ovl status`, `ovl probe`.

use std::io::Write;
use std::path::{Path, PathBuf};

use overlay::core::{OverlayMountOptions, RedirectDir, UuidMode, Verity, Xino};
use overlay::{Backend, Namespace, Request, Upper};

use crate::cli::{BackendArg, MountArgs, ProbeArgs, StatusArgs, UmountArgs, UpperArgs};
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
            "defaults" => {}
            _ => {
                return Err(CliError::msg(format!(
                    "-o {k}: unknown overlay option (known: redirect_dir, index, metacopy, nfs_export, xino, uuid, verity, volatile, userxattr, ro, rw, [no]suid, [no]dev, [no]exec)"
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
pub fn mount(a: MountArgs) -> Result<u8, CliError> {
    let k = parse_kernel_style(&a.options)?;
    if !a.lowers.is_empty() && !k.lowers.is_empty() {
        return Err(CliError::msg(
            "give the lowers either with --lower (bottom-first) or with -o lowerdir= (top-first), not both",
        ));
    }
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
    let upper = choose_upper(&a.upper, a.work.clone(), a.read_only, k.upper, k.work)?;
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
    let reg = Registry::open();
    let req = Request::new(lowers)
        .upper(upper)
        .options(options)
        .backend(a.backend.into())
        .namespace(Namespace::Current)
        .scratch_dir(reg.scratch_dir()?);
    let mounted = overlay::mount(&req, &target).map_err(|e| CliError::from_overlay(e, &target))?;
    for r in mounted.reasons() {
        tracing::info!("{r}");
    }
    let kept = mounted.keep();
    let mounts = crate::mountinfo::read()
        .map_err(|e| CliError::io("/proc/self/mountinfo", "cannot read", e))?;
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == target) else {
        return Err(CliError::path(
            &target,
            "mounted, but not found in /proc/self/mountinfo",
        ));
    };
    let rec = MountRecord {
        target: target.clone(),
        backend: kept.backend.to_string(),
        reasons: kept.reasons.clone(),
        lowers: kept.lowers.clone(),
        upper: kept.upper.clone(),
        work: kept.work.clone(),
        managed_work: kept.managed_work,
        tmpfs: kept.tmpfs.clone(),
        fuse_pid: kept.fuse_pid.filter(|p| *p != 0),
        mount_id: m.mount_id,
        fstype: m.fstype.clone(),
        options: a.options.clone(),
        created: crate::state::now(),
    };
    if let Err(e) = reg.save(&rec) {
        // Without a record `ovl umount` still works; say so rather than undo the mount.
        crate::say(format_args!(
            "ovl: warning: {e}; the mount works, but `ovl status` will not list it"
        ));
    }
    Ok(0)
}

/// `ovl umount`.
pub fn umount(a: UmountArgs) -> Result<u8, CliError> {
    let target = canonical(&a.target)?;
    let reg = Registry::open();
    let rec = reg.get(&target);
    let mounts = crate::mountinfo::read()
        .map_err(|e| CliError::io("/proc/self/mountinfo", "cannot read", e))?;
    let live = rec
        .as_ref()
        .is_some_and(|r| crate::state::is_live(r, &mounts));
    if let (Some(r), false) = (&rec, live) {
        // Unmounted behind our back: clean up what is left.
        if let Some(t) = &r.tmpfs {
            let _ = overlay::release_tmpfs(t);
        }
        reg.remove(&target)?;
        if !mounts.iter().any(|m| m.mount_point == target) {
            return Err(CliError::path(
                &target,
                "not mounted (its stale record was removed)",
            ));
        }
    }
    overlay::unmount(&target, a.lazy).map_err(|e| CliError::from_overlay(e, &target))?;
    if let Some(r) = rec.filter(|_| live) {
        if let Some(t) = &r.tmpfs {
            overlay::release_tmpfs(t).map_err(|e| CliError::from_overlay(e, t))?;
        }
        reg.remove(&target)?;
    }
    Ok(0)
}

/// `ovl status`.
pub fn status(a: StatusArgs) -> Result<u8, CliError> {
    let mounts = crate::mountinfo::read()
        .map_err(|e| CliError::io("/proc/self/mountinfo", "cannot read", e))?;
    let recs = Registry::open().live(&mounts);
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    let r = (|| -> std::io::Result<()> {
        if a.json {
            serde_json::to_writer_pretty(&mut w, &recs)?;
            writeln!(w)?;
            return Ok(());
        }
        if recs.is_empty() {
            writeln!(w, "no overlays mounted by ovl")?;
        }
        for r in &recs {
            writeln!(w, "{}", r.target.display())?;
            writeln!(w, "  backend: {} ({})", r.backend, r.fstype)?;
            let lowers: Vec<String> = r.lowers.iter().map(|l| l.display().to_string()).collect();
            writeln!(w, "  lowers (bottom-first): {}", lowers.join(" "))?;
            match (&r.upper, &r.tmpfs) {
                (Some(u), Some(_)) => {
                    writeln!(w, "  upper: {} (tmpfs, discarded at unmount)", u.display())?
                }
                (Some(u), None) => writeln!(w, "  upper: {}", u.display())?,
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
