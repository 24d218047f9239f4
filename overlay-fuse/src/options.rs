//! The `ovl-fuse` command line, a drop-in for fuse-overlayfs's:
//!
//! ```text
//! ovl-fuse [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT
//! ovl-fuse SOURCE MOUNTPOINT -o OPTIONS          (as run by mount(8) for fuse.ovl-fuse)
//! ```
//!
//! `lowerdir=` lists layers top-first, separated by `:` (`\:` is a literal colon, `\\` a
//! backslash); without `upperdir=` the mount is read-only. Generic mount options (`rw`, `ro`,
//! `dev`, `nosuid`, `noatime`, ...) are accepted; fuse-overlayfs options that are not
//! implemented are accepted with a warning; anything else is an error.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fs::FsConfig;
use crate::idmap::IdMapping;

/// Usage text for `--help`.
pub const USAGE: &str = "\
usage: ovl-fuse [-f] [-d] -o lowerdir=LOWER[:LOWER...][,upperdir=UPPER,workdir=WORK][,OPTS] MOUNTPOINT
       ovl-fuse SOURCE MOUNTPOINT -o OPTS

  -f                 stay in the foreground
  -d, --debug        debug logging (implies -f)
  -o OPTS            comma-separated options:
     lowerdir=A:B    lower layers, top-first (`\\:` escapes a colon)
     lowerdir+=A     one more lower layer, below those given so far (repeatable, in
                     separate -o arguments for stacks too long for one argument)
     lowerdir=A::D1::D2, datadir+=D   data-only layers (composefs-style; need
                     metacopy=on): only the data of metacopy files with an absolute
                     overlay.redirect is looked up there; verity= only as off
     upperdir=DIR    writable upper layer (without it the mount is read-only)
     workdir=DIR     work directory on the upper layer's filesystem
     uidmapping=FROM:TO:LEN[:...], gidmapping=...   translate layer ids FROM.. to TO..
     squash_to_root, squash_to_uid=N, squash_to_gid=N
     static_nlink    directories report st_nlink 1
     noacl           no POSIX ACLs
     fsync=0, volatile   no syncs to the upper: fsync is ignored, copy-ups are not fsynced
     timeout=SECS    kernel cache TTL (0 disables caching)
     writeback=0     no writeback cache;  passthrough=0  no FUSE passthrough
     readdirplus=auto|kernel|always   which directory chunks carry attributes: auto
                     (default) the first ones, and all for a process that stats what it
                     lists; kernel: the kernel's choice; always: every chunk
     lower_passthrough=0|1   read-only opens of lower files passed through to the
                     kernel (1) or served by the daemon (0). Default: 1 on a read-only
                     mount, 0 otherwise, because after a copy-up a passed-through
                     descriptor keeps reading the lower file, where the kernel overlay's
                     switches to the upper copy
     io_uring=0      read requests from /dev/fuse even where the kernel offers FUSE over
                     io_uring (it does while /sys/module/fuse/parameters/enable_uring is Y)
     noxattrs=1      no xattr support;    userxattr  use user.overlay.* xattrs
     redirect_dir=on|follow|nofollow|off   as the kernel's: on lets directories that exist
                     in a lower layer be renamed (overlay.redirect); default follow
     metacopy=on|off as the kernel's: chmod, chown, times, xattrs of a lower file copy up its
                     metadata only, the data on the first write (implies redirect_dir=on)
     index=on|off    as the kernel's (default off): hard links to lower files survive
                     copy-up (workdir/index, overlay.origin, overlay.nlink); nfs_export=on
                     is not supported (refused)
     threads=N       FUSE worker threads
     max_inodes=N    inodes kept before cold ones are dropped (default 131072; 0: no limit)
     generic mount options: ro, rw, dev, nodev, suid, nosuid, exec, noexec, noatime,
     allow_other, allow_root, default_permissions, ...
     The mount is nodev,nosuid unless -o dev or -o suid is given (those need root), as
     fuse-overlayfs's is; root's mounts are allow_other.
Logging: RUST_LOG (e.g. RUST_LOG=debug); OVL_FUSE_LOG_FILE=PATH keeps daemon logs.
OVL_FUSE_PID_FILE=PATH: the daemon's pid is written there once the mount is ready.";

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Print usage.
    Help,
    /// Print the version.
    Version,
    /// Mount.
    Mount(Box<MountRequest>),
}

/// A parsed mount request.
#[derive(Debug, Clone)]
pub struct MountRequest {
    /// Stay in the foreground (`-f`).
    pub foreground: bool,
    /// Debug logging (`-d`, `--debug`, `-o debug`).
    pub debug: bool,
    /// The mount source, if given (used as the fsname).
    pub source: Option<String>,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Lower layers, top-first as given.
    pub lowerdirs: Vec<PathBuf>,
    /// Data-only lower layers (composefs-style), in search order: those after `::` in
    /// `lowerdir=` (`lowerdir=A:B::D1::D2`), then each `datadir+=`. Only the data of
    /// metacopy files with an absolute redirect is looked up there; they need
    /// `metacopy=on`, as the kernel's.
    pub datadirs: Vec<PathBuf>,
    /// Upper layer.
    pub upperdir: Option<PathBuf>,
    /// Workdir.
    pub workdir: Option<PathBuf>,
    /// FUSE-side behaviour.
    pub fs: FsConfig,
    /// Generic mount flags.
    pub flags: MountFlags,
    /// Worker threads (`threads=`).
    pub threads: Option<usize>,
    /// Force the `user.overlay.*` xattr namespace (`userxattr`).
    pub userxattr: bool,
    /// `redirect_dir=` (`on`, `follow`, `nofollow`; the kernel's `off` is `follow`), as
    /// the kernel's: `on` lets lower and merged directories be renamed. `None`: `follow`
    /// (redirects are never followed with `userxattr`).
    pub redirect_dir: Option<overlay_core::mount::RedirectDir>,
    /// `metacopy=on|off`, as the kernel's: metadata changes of lower files copy up their
    /// metadata only. `on` needs `redirect_dir=on`, which it turns on when `redirect_dir`
    /// is not given (as the kernel does).
    pub metacopy: Option<bool>,
    /// `index=on|off`, as the kernel's (default off): hard links to lower files survive
    /// copy-up.
    pub index: bool,
    /// `fsname=`.
    pub fsname: Option<String>,
    /// Warnings to print (unimplemented fuse-overlayfs options).
    pub warnings: Vec<String>,
}

/// Generic mount flags; `None` means the default ([`crate::MountConfig::for_current_user`]:
/// `nodev`, `nosuid`, `exec`, `noatime`, `allow_other` for root).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountFlags {
    /// `ro`.
    pub read_only: bool,
    /// `dev`/`nodev`.
    pub dev: Option<bool>,
    /// `suid`/`nosuid`.
    pub suid: Option<bool>,
    /// `exec`/`noexec`.
    pub exec: Option<bool>,
    /// `atime`-style options given (otherwise `noatime`).
    pub atime: Option<bool>,
    /// `allow_other`.
    pub allow_other: Option<bool>,
    /// `allow_root`.
    pub allow_root: bool,
    /// `sync`.
    pub sync: bool,
    /// `dirsync`.
    pub dirsync: bool,
}

/// Generic options accepted and ignored (mount(8), fstab and libfuse options without
/// meaning here).
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "async",
    "relatime",
    "norelatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "iversion",
    "noiversion",
    "mand",
    "nomand",
    "silent",
    "loud",
    "kernel_cache",
    "auto_cache",
    "noauto_cache",
    "big_writes",
    "large_read",
    "hard_remove",
    "use_ino",
    "readdir_ino",
    "async_read",
    "sync_read",
    "atomic_o_trunc",
    "nonempty",
    "splice_read",
    "splice_write",
    "splice_move",
    "no_splice_read",
    "no_splice_write",
    "no_splice_move",
    "clone_fd",
];

/// Prefixes of `key=value` options accepted and ignored.
const IGNORED_KEYS: &[&str] = &[
    "comment",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "max_read",
    "max_readahead",
    "max_write",
    "max_background",
    "congestion_threshold",
    "blksize",
    "umask",
    "uid",
    "gid",
    "entry_timeout",
    "attr_timeout",
    "negative_timeout",
    "max_idle_threads",
    "subtype",
];

/// Parse the arguments (without the program name).
pub fn parse_args<I, S>(args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut positional: Vec<String> = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut foreground = false;
    let mut debug = false;
    let mut it = args.into_iter().map(Into::into);
    while let Some(a) = it.next() {
        let a = a
            .into_string()
            .map_err(|a| Error::Options(format!("argument {a:?} is not valid UTF-8")))?;
        match a.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-f" => foreground = true,
            "-d" | "--debug" => {
                debug = true;
                foreground = true;
            }
            // libfuse's single-thread flag: we always run multi-threaded.
            "-s" => {}
            "-o" => {
                let v = it
                    .next()
                    .ok_or_else(|| Error::Options("-o needs an argument".into()))?;
                opts.push(
                    v.into_string()
                        .map_err(|v| Error::Options(format!("option {v:?} is not UTF-8")))?,
                );
            }
            "--" => {
                for rest in it.by_ref() {
                    positional.push(rest.into_string().map_err(|a| {
                        Error::Options(format!("argument {a:?} is not valid UTF-8"))
                    })?);
                }
            }
            s if s.starts_with("-o") => opts.push(s[2..].to_string()),
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(Error::Options(format!("unknown flag {s}")))
            }
            _ => positional.push(a),
        }
    }
    let (source, mountpoint) = match positional.len() {
        1 => (None, positional.remove(0)),
        2 => {
            let m = positional.remove(1);
            (Some(positional.remove(0)), m)
        }
        0 => return Err(Error::Options("no mountpoint given".into())),
        _ => {
            return Err(Error::Options(format!(
                "too many arguments: {positional:?} (expected [SOURCE] MOUNTPOINT)"
            )))
        }
    };
    let mut req = MountRequest {
        foreground,
        debug,
        source,
        mountpoint: PathBuf::from(mountpoint),
        lowerdirs: Vec::new(),
        datadirs: Vec::new(),
        upperdir: None,
        workdir: None,
        fs: FsConfig::default(),
        flags: MountFlags::default(),
        threads: None,
        userxattr: false,
        redirect_dir: None,
        metacopy: None,
        index: false,
        fsname: None,
        warnings: Vec::new(),
    };
    let mut squash_root = false;
    let mut squash_uid = None;
    let mut squash_gid = None;
    for group in &opts {
        for opt in split_unescaped(group, ',') {
            apply_option(
                &mut req,
                &opt,
                &mut squash_root,
                &mut squash_uid,
                &mut squash_gid,
            )?;
        }
    }
    if squash_root {
        req.fs.ids.squash_uid = Some(0);
        req.fs.ids.squash_gid = Some(0);
    }
    if let Some(u) = squash_uid {
        req.fs.ids.squash_uid = Some(u);
    }
    if let Some(g) = squash_gid {
        req.fs.ids.squash_gid = Some(g);
    }
    if req.lowerdirs.is_empty() {
        return Err(Error::Options("lowerdir= is required".into()));
    }
    if !req.datadirs.is_empty() && req.metacopy != Some(true) {
        return Err(Error::Options(
            "data-only lower layers (`::` in lowerdir=, datadir+=) need metacopy=on, as the \
             kernel's"
                .into(),
        ));
    }
    match (&req.upperdir, &req.workdir) {
        (Some(_), None) => {
            return Err(Error::Options("upperdir= needs workdir= as well".into()));
        }
        (None, Some(_)) => req
            .warnings
            .push("workdir= without upperdir= is ignored (read-only mount)".into()),
        _ => {}
    }
    if req.upperdir.is_none() || req.flags.read_only {
        req.fs.read_only = true;
        req.flags.read_only = true;
    }
    // No copy-up can happen on a read-only mount: lower files may be passed through there
    // without the difference from the kernel overlay (see FsConfig::lower_passthrough).
    let lower_passthrough_given = opts
        .iter()
        .flat_map(|g| split_unescaped(g, ','))
        .any(|o| o.split('=').next() == Some("lower_passthrough"));
    if !lower_passthrough_given {
        req.fs.lower_passthrough = req.fs.read_only;
    }
    Ok(Command::Mount(Box::new(req)))
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::Options(format!("{key}={v}: expected 0 or 1"))),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| Error::Options(format!("{key}={v}: not a number")))
}

fn apply_option(
    req: &mut MountRequest,
    opt: &str,
    squash_root: &mut bool,
    squash_uid: &mut Option<u32>,
    squash_gid: &mut Option<u32>,
) -> Result<()> {
    if opt.is_empty() {
        return Ok(());
    }
    let (key, value) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    let need = |v: Option<&str>| {
        v.map(str::to_string)
            .ok_or_else(|| Error::Options(format!("{key} needs a value ({key}=...)")))
    };
    match key {
        "lowerdir" => {
            let v = need(value)?;
            // As the kernel's: the layers after the first `::` are data-only.
            let parts = split_unescaped(&v, ':');
            let first_data = parts.iter().position(String::is_empty);
            let (normal, data) = parts.split_at(first_data.unwrap_or(parts.len()));
            // `::D1::D2`: as the kernel's, a `:` to the right of a `::` (a normal layer
            // below a data-only one) is refused.
            let alternating = data
                .iter()
                .enumerate()
                .all(|(i, p)| (i % 2 == 0) == p.is_empty());
            if !alternating || data.len() % 2 == 1 {
                return Err(Error::Options(format!(
                    "lowerdir={v}: after `::` only data-only layers separated by `::` may \
                     follow (a normal lower layer cannot be below a data-only one)"
                )));
            }
            req.lowerdirs = normal.iter().map(PathBuf::from).collect();
            req.datadirs = data
                .iter()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        // The kernel's `datadir+` (Linux 6.8): one data-only layer, after the others.
        "datadir+" => req.datadirs.push(PathBuf::from(unescape(&need(value)?))),
        // fs-verity digests of data-only files are not checked by this backend.
        "verity" if value == Some("off") => {}
        "verity" => {
            return Err(Error::Options(format!(
                "{opt}: fs-verity checks of metacopy data are not implemented by ovl-fuse \
                 (only verity=off); use the kernel backend"
            )))
        }
        // The kernel's `lowerdir+` (Linux 6.8): one layer, appended below the others.
        "lowerdir+" => req.lowerdirs.push(PathBuf::from(unescape(&need(value)?))),
        "upperdir" => req.upperdir = Some(PathBuf::from(unescape(&need(value)?))),
        "workdir" => req.workdir = Some(PathBuf::from(unescape(&need(value)?))),
        "uidmapping" => req.fs.ids.uids = IdMapping::parse(key, &need(value)?)?,
        "gidmapping" => req.fs.ids.gids = IdMapping::parse(key, &need(value)?)?,
        "squash_to_root" => *squash_root = true,
        "squash_to_uid" => *squash_uid = Some(parse_num(key, &need(value)?)?),
        "squash_to_gid" => *squash_gid = Some(parse_num(key, &need(value)?)?),
        "static_nlink" => req.fs.static_nlink = true,
        "noacl" => req.fs.acl = false,
        "acl" => req.fs.acl = true,
        "fsync" | "sync" if value.is_some() => {
            req.fs.fsync = parse_bool(key, &need(value)?)?;
        }
        "volatile" => req.fs.fsync = false,
        "timeout" => {
            let secs: f64 = parse_num(key, &need(value)?)?;
            if !(secs.is_finite() && secs >= 0.0) {
                return Err(Error::Options(format!("timeout={secs}: must be >= 0")));
            }
            req.fs.timeout = Duration::from_secs_f64(secs.min(1e9));
        }
        "writeback" => req.fs.writeback = parse_bool(key, &need(value)?)?,
        "passthrough" => req.fs.passthrough = parse_bool(key, &need(value)?)?,
        "lower_passthrough" => req.fs.lower_passthrough = parse_bool(key, &need(value)?)?,
        "readdirplus" => {
            req.fs.readdirplus = match need(value)?.as_str() {
                "auto" => crate::fs::ReaddirPlus::Adaptive,
                "kernel" => crate::fs::ReaddirPlus::Kernel,
                "always" => crate::fs::ReaddirPlus::Always,
                v => {
                    return Err(Error::Options(format!(
                        "readdirplus={v}: auto, kernel or always"
                    )))
                }
            }
        }
        "io_uring" => req.fs.io_uring = parse_bool(key, &need(value)?)?,
        "noxattrs" => req.fs.xattrs = !parse_bool(key, value.unwrap_or("1"))?,
        "userxattr" => req.userxattr = true,
        "threads" => {
            let n: usize = parse_num(key, &need(value)?)?;
            if n == 0 || n > 256 {
                return Err(Error::Options(format!("threads={n}: must be 1..=256")));
            }
            req.threads = Some(n);
        }
        "max_inodes" => req.fs.max_inodes = parse_num(key, &need(value)?)?,
        "threaded" => {} // fuse-overlayfs C option; always multi-threaded here.
        "debug" => {
            req.debug = true;
            req.foreground = true;
        }
        "fsname" => req.fsname = Some(need(value)?),
        "redirect_dir" => {
            use overlay_core::mount::RedirectDir;
            // The kernel's `off` is `follow` with its default `redirect_always_follow=Y`.
            req.redirect_dir = Some(match need(value)?.as_str() {
                "on" => RedirectDir::On,
                "follow" | "off" => RedirectDir::Follow,
                "nofollow" => RedirectDir::NoFollow,
                v => {
                    return Err(Error::Options(format!(
                        "{key}={v}: expected on, follow, nofollow or off"
                    )))
                }
            });
        }
        "xattr_permissions" => {
            if value != Some("0") {
                req.warnings
                    .push(format!("{opt} is not implemented; ignored"));
            }
        }
        "metacopy" => req.metacopy = Some(parse_bool(key, &need(value)?)?),
        "index" => req.index = parse_bool(key, &need(value)?)?,
        // Not implemented: refused rather than ignored (file handles of the mount that
        // survive a remount need the kernel's export operations).
        "nfs_export" if value.is_none_or(|v| parse_bool(key, v).unwrap_or(true)) => {
            return Err(Error::Options(format!(
                "{opt}: not supported by ovl-fuse (persistent NFS file handles of the \
                 mount); index=on is"
            )));
        }
        "nfs_export" => {}
        "plugins" | "fast_ino" | "xino" | "ino32_t" => {
            req.warnings
                .push(format!("{opt} is not implemented; ignored"));
        }
        "ro" => req.flags.read_only = true,
        "dev" => req.flags.dev = Some(true),
        "nodev" => req.flags.dev = Some(false),
        "suid" => req.flags.suid = Some(true),
        "nosuid" => req.flags.suid = Some(false),
        "exec" => req.flags.exec = Some(true),
        "noexec" => req.flags.exec = Some(false),
        "atime" | "strictatime" => req.flags.atime = Some(true),
        "noatime" => req.flags.atime = Some(false),
        "allow_other" => req.flags.allow_other = Some(true),
        "allow_root" => req.flags.allow_root = true,
        "default_permissions" => {}
        "sync" => req.flags.sync = true,
        "dirsync" => req.flags.dirsync = true,
        k if IGNORED.contains(&k) && value.is_none() => {}
        k if k.starts_with("x-") => {}
        k if IGNORED_KEYS.contains(&k) && value.is_some() => {}
        _ => {
            return Err(Error::Options(format!("unknown option {opt:?}")));
        }
    }
    Ok(())
}

/// Split on `sep` not preceded by a backslash; `\x` stands for `x`.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                // Keep escapes for the inner level (`,` splitting keeps `\:`).
                Some(n) if n == sep => cur.push(n),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    if sep == ':' {
        out.iter().map(|s| unescape(s)).collect()
    } else {
        out
    }
}

/// Resolve the remaining backslash escapes of a path.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(args: &[&str]) -> MountRequest {
        match parse_args(args.iter().copied()).unwrap() {
            Command::Mount(m) => *m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_only_layers_the_kernels_way() {
        let m = mount(&[
            "-o",
            "lowerdir=/a:/b::/d1::/d2,datadir+=/d3,metacopy=on,redirect_dir=on,verity=off",
            "/mnt",
        ]);
        assert_eq!(m.lowerdirs, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(
            m.datadirs,
            [
                PathBuf::from("/d1"),
                PathBuf::from("/d2"),
                PathBuf::from("/d3")
            ]
        );
        // As the kernel's: no single `:` to the right of a `::`.
        for bad in [
            "lowerdir=/a::/d1:/d2",
            "lowerdir=/a::/d1::",
            "lowerdir=/a:::/d",
        ] {
            let o = format!("{bad},metacopy=on");
            let e = parse_args(["-o", o.as_str(), "/mnt"]).unwrap_err();
            assert!(e.to_string().contains("data-only"), "{bad}: {e}");
        }
        // As the kernel's: data-only layers need metacopy=on.
        let e = parse_args(["-o", "lowerdir=/a::/d", "/mnt"]).unwrap_err();
        assert!(e.to_string().contains("metacopy=on"), "{e}");
        // No fs-verity checks: refused, never silently skipped.
        for v in ["verity=on", "verity=require"] {
            let o = format!("lowerdir=/a::/d,metacopy=on,{v}");
            let e = parse_args(["-o", o.as_str(), "/mnt"]).unwrap_err();
            assert!(e.to_string().contains("fs-verity"), "{e}");
        }
    }

    #[test]
    fn fuse_overlayfs_style() {
        let m = mount(&[
            "-o",
            "lowerdir=/a:/b\\:c,upperdir=/u,workdir=/w,fsync=0,squash_to_root",
            "/mnt",
        ]);
        assert_eq!(m.mountpoint, PathBuf::from("/mnt"));
        assert_eq!(
            m.lowerdirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b:c")]
        );
        assert_eq!(m.upperdir, Some(PathBuf::from("/u")));
        assert!(!m.fs.fsync);
        assert_eq!(m.fs.ids.squash_uid, Some(0));
        assert!(!m.foreground && !m.fs.read_only);
        assert!(
            !m.fs.lower_passthrough,
            "a writable mount behaves as the kernel's"
        );
    }

    #[test]
    fn lower_passthrough_defaults_to_the_mount_being_read_only() {
        let rw = "lowerdir=/l,upperdir=/u,workdir=/w";
        assert!(!mount(&["-o", rw, "/m"]).fs.lower_passthrough);
        assert!(
            mount(&["-o", &format!("{rw},ro"), "/m"])
                .fs
                .lower_passthrough
        );
        assert!(mount(&["-o", "lowerdir=/l", "/m"]).fs.lower_passthrough);
        let on = format!("{rw},lower_passthrough=1");
        assert!(mount(&["-o", &on, "/m"]).fs.lower_passthrough);
        assert!(
            !mount(&["-o", "lowerdir=/l,lower_passthrough=0", "/m"])
                .fs
                .lower_passthrough
        );
    }

    #[test]
    fn mount_helper_style_and_generic_options() {
        let m = mount(&[
            "overlay",
            "/mnt",
            "-o",
            "rw,nodev,noatime,lowerdir=/l,x-systemd.automount,context=foo,uidmapping=0:1000:1",
            "-f",
        ]);
        assert_eq!(m.source.as_deref(), Some("overlay"));
        assert!(m.foreground);
        assert!(m.fs.read_only, "no upperdir means read-only");
        assert_eq!(m.flags.dev, Some(false));
        assert_eq!(m.fs.ids.uids.to_view(0), 1000);
    }

    #[test]
    fn errors_and_warnings() {
        assert!(parse_args(["-o", "lowerdir=/l,bogus", "/m"]).is_err());
        assert!(parse_args(["-o", "upperdir=/u,workdir=/w", "/m"]).is_err());
        assert!(parse_args(["-o", "lowerdir=/l,upperdir=/u", "/m"]).is_err());
        assert!(parse_args(["-o", "lowerdir=/l"]).is_err());
        let m = mount(&["-o", "lowerdir=/l,plugins=x.so,xattr_permissions=2", "/m"]);
        assert_eq!(m.warnings.len(), 2);
        assert!(matches!(parse_args(["--help"]).unwrap(), Command::Help));
    }

    #[test]
    fn kernel_feature_options() {
        use overlay_core::mount::RedirectDir;
        let m = mount(&["-o", "lowerdir=/l,redirect_dir=on,metacopy=on", "/m"]);
        assert_eq!(
            (m.redirect_dir, m.metacopy),
            (Some(RedirectDir::On), Some(true))
        );
        assert!(m.warnings.is_empty());
        let m = mount(&["-o", "lowerdir=/l,redirect_dir=off,metacopy=off", "/m"]);
        assert_eq!(
            (m.redirect_dir, m.metacopy),
            (Some(RedirectDir::Follow), Some(false))
        );
        let m = mount(&["-o", "lowerdir=/l,redirect_dir=nofollow", "/m"]);
        assert_eq!(m.redirect_dir, Some(RedirectDir::NoFollow));
        assert!(parse_args(["-o", "lowerdir=/l,redirect_dir=sideways", "/m"]).is_err());
        assert!(parse_args(["-o", "lowerdir=/l,metacopy=maybe", "/m"]).is_err());
        assert!(parse_args(["-o", "lowerdir=/l,nfs_export=on", "/m"]).is_err());
        assert!(parse_args(["-o", "lowerdir=/l,index=maybe", "/m"]).is_err());
        assert!(mount(&["-o", "lowerdir=/l,index=on", "/m"]).index);
        let m = mount(&["-o", "lowerdir=/l,index=off,nfs_export=0", "/m"]);
        assert!(m.warnings.is_empty());
        assert!(!m.index);
    }

    #[test]
    fn squash_uid_overrides_root() {
        let m = mount(&[
            "-olowerdir=/l,squash_to_root,squash_to_uid=5,timeout=0,threads=3,max_inodes=1000",
            "/m",
        ]);
        assert_eq!(m.fs.ids.squash_uid, Some(5));
        assert_eq!(m.fs.ids.squash_gid, Some(0));
        assert!(m.fs.timeout.is_zero());
        assert_eq!(m.threads, Some(3));
        assert_eq!(m.fs.max_inodes, 1000);
    }
}
