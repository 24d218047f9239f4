//! The `ovl-erofs` command line, in the style of squashfuse and erofsfuse:
//! `ovl-erofs [-f] [-d] [-o OPTS] IMAGE MOUNTPOINT`.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Help text.
pub const USAGE: &str = "\
usage: ovl-erofs [-f] [-d] [-o OPTS] IMAGE MOUNTPOINT
Serve the EROFS image IMAGE read-only at MOUNTPOINT through FUSE (no root needed when
/dev/fuse and fusermount3 are usable). Uncompressed and LZ4/LZ4HC-compressed images.
  -f                 stay in the foreground (default: return once the mount is ready
                     and serve from a background process)
  -d                 debug logging (implies -f)
  -o OPTS            comma-separated options:
     allow_other     let other users use the mount (implies default_permissions)
     allow_root      let root use the mount as well as its owner
     default_permissions  the kernel checks access from the image's modes and owners
                     (off by default: who can use the mount can read the image anyway)
     dev, suid       honour device nodes and set-id bits (root only; default nodev,nosuid)
     noexec          no execution
     fsname=NAME     source shown in /proc/mounts (default: the image's path)
     ro              accepted (the mount is always read-only)
  -h, --help         this help
  -V, --version      version
Owners are shown as stored in the image. Unmount with fusermount3 -u MOUNTPOINT (or
umount as root); the server exits then.";

/// What to mount, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErofsRequest {
    /// The image file.
    pub image: PathBuf,
    /// Where to mount it.
    pub mountpoint: PathBuf,
    /// Serve from this process (`-f`).
    pub foreground: bool,
    /// Debug logging (`-d`).
    pub debug: bool,
    /// `allow_other`.
    pub allow_other: bool,
    /// `allow_root`.
    pub allow_root: bool,
    /// `default_permissions`.
    pub default_permissions: bool,
    /// `dev`.
    pub dev: bool,
    /// `suid`.
    pub suid: bool,
    /// Not `noexec`.
    pub exec: bool,
    /// `fsname=`.
    pub fsname: Option<String>,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErofsCommand {
    /// `-h`.
    Help,
    /// `-V`.
    Version,
    /// Mount.
    Mount(Box<ErofsRequest>),
}

/// Parse the arguments (without the program name).
pub fn parse_args<I, S>(args: I) -> Result<ErofsCommand>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut positional: Vec<PathBuf> = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut foreground = false;
    let mut debug = false;
    let mut it = args.into_iter().map(Into::into);
    while let Some(a) = it.next() {
        let Some(s) = a.to_str().map(str::to_owned) else {
            positional.push(a.into());
            continue;
        };
        match s.as_str() {
            "-h" | "--help" => return Ok(ErofsCommand::Help),
            "-V" | "--version" => return Ok(ErofsCommand::Version),
            "-f" => foreground = true,
            "-d" | "--debug" => {
                debug = true;
                foreground = true;
            }
            "-o" => {
                let v = it
                    .next()
                    .ok_or_else(|| Error::Options("-o needs an argument".into()))?;
                let v = v
                    .into_string()
                    .map_err(|_| Error::Options("-o options must be UTF-8".into()))?;
                opts.push(v);
            }
            o if o.starts_with("-o") => opts.push(o[2..].to_string()),
            o if o.starts_with('-') && o.len() > 1 => {
                return Err(Error::Options(format!("unknown argument {o}")))
            }
            _ => positional.push(a.into()),
        }
    }
    let [image, mountpoint] = <[PathBuf; 2]>::try_from(positional).map_err(|p| {
        Error::Options(format!(
            "expected IMAGE and MOUNTPOINT, got {} argument(s)",
            p.len()
        ))
    })?;
    let mut req = ErofsRequest {
        image,
        mountpoint,
        foreground,
        debug,
        allow_other: false,
        allow_root: false,
        default_permissions: false,
        dev: false,
        suid: false,
        exec: true,
        fsname: None,
    };
    for o in opts.iter().flat_map(|o| o.split(',')) {
        match o {
            "" | "ro" | "nodev" | "nosuid" | "exec" | "noatime" | "relatime" | "atime" => {}
            "allow_other" => req.allow_other = true,
            "allow_root" => req.allow_root = true,
            "default_permissions" => req.default_permissions = true,
            "dev" => req.dev = true,
            "suid" => req.suid = true,
            "noexec" => req.exec = false,
            "debug" => {
                req.debug = true;
                req.foreground = true;
            }
            "rw" => return Err(Error::Options("rw: an EROFS image is read-only".into())),
            o => match o.split_once('=') {
                Some(("fsname", v)) => req.fsname = Some(v.to_string()),
                _ => return Err(Error::Options(format!("unknown option {o}"))),
            },
        }
    }
    Ok(ErofsCommand::Mount(Box::new(req)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let ErofsCommand::Mount(r) =
            parse_args(["-f", "img.erofs", "/mnt", "-o", "allow_other,fsname=x,ro"]).unwrap()
        else {
            panic!("not a mount")
        };
        assert_eq!(r.image, PathBuf::from("img.erofs"));
        assert_eq!(r.mountpoint, PathBuf::from("/mnt"));
        assert!(r.foreground && r.allow_other && !r.suid);
        assert_eq!(r.fsname.as_deref(), Some("x"));
        assert_eq!(parse_args(["-h"]).unwrap(), ErofsCommand::Help);
        for bad in [
            &["img"][..],
            &["a", "b", "c"],
            &["a", "b", "-o", "rw"],
            &["a", "b", "-o", "bogus"],
            &["-x", "a", "b"],
            &["a", "b", "-o"],
        ] {
            assert!(parse_args(bad.iter().copied()).is_err(), "{bad:?}");
        }
    }
}
