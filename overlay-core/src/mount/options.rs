//! Overlay mount options, passed explicitly, and the kernel's rules for combining them.
//!
//! The kernel's defaults for `redirect_dir`, `index`, `metacopy`, `nfs_export` and `xino` come
//! from module parameters (`/sys/module/overlay/parameters`) and Kconfig, so they differ
//! between machines. [`OverlayMountOptions`] therefore always passes every option, and checks
//! the combination against the kernel's rules (`ovl_fs_params_verify`) before mounting, so a
//! conflict is explained instead of showing up as a bare `EINVAL` (the kernel writes most of
//! these explanations to dmesg only, not to the fs_context log).

use std::fmt;

use crate::error::{Error, Result};

/// `redirect_dir=`: whether directory renames create redirects and whether they are followed.
///
/// The kernel's `off` is deliberately absent: it means `follow` or `nofollow` depending on the
/// module parameter `redirect_always_follow`, which is exactly the machine dependence we avoid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RedirectDir {
    /// Create and follow redirects: renaming a lower directory works (no `EXDEV`).
    /// Needs trusted xattrs (privileged), conflicts with `userxattr`.
    On,
    /// Follow existing redirects, create none (renaming a lower directory gives `EXDEV`).
    /// The default of the engine ([`crate::OverlayOptions`]), as the kernel's with its
    /// module defaults (`redirect_dir=N`, `redirect_always_follow=Y`).
    #[default]
    Follow,
    /// Neither follow nor create redirects. The only value allowed with `userxattr`.
    NoFollow,
}

impl RedirectDir {
    /// The kernel's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectDir::On => "on",
            RedirectDir::Follow => "follow",
            RedirectDir::NoFollow => "nofollow",
        }
    }
}

/// `xino=`: composite inode numbers across layer filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Xino {
    /// No composite inode numbers.
    Off,
    /// Enable when inode numbers can be made persistent (the sensible default).
    #[default]
    Auto,
    /// Always enable (warns when the high inode bits are in use).
    On,
}

impl Xino {
    /// The kernel's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Xino::Off => "off",
            Xino::Auto => "auto",
            Xino::On => "on",
        }
    }
}

/// `uuid=`: the overlay's own UUID and statfs fsid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UuidMode {
    /// Null UUID, fsid from the upper filesystem.
    Null,
    /// Null UUID, and the layers' UUIDs are ignored in file handles (copied disks).
    Off,
    /// Persistent UUID stored in `overlay.uuid` on the upper root (needs an upper).
    On,
    /// `on` for a new overlay, `null` for one created by an older kernel (kernel default).
    #[default]
    Auto,
}

impl UuidMode {
    /// The kernel's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UuidMode::Null => "null",
            UuidMode::Off => "off",
            UuidMode::On => "on",
            UuidMode::Auto => "auto",
        }
    }
}

/// `verity=`: fs-verity digests of metacopy files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Verity {
    /// No verity checks (not passed to the kernel, so older kernels keep working).
    #[default]
    Off,
    /// Store and check digests where available.
    On,
    /// Refuse metacopy files without a digest.
    Require,
}

impl Verity {
    /// The kernel's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Verity::Off => "off",
            Verity::On => "on",
            Verity::Require => "require",
        }
    }
}

/// Access-time updates of a mount (`relatime`, `noatime`, `strictatime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Atime {
    /// Update atime when it is older than mtime/ctime or a day old (the kernel's default).
    #[default]
    Relatime,
    /// Never update atime (`MOUNT_ATTR_NOATIME`).
    Noatime,
    /// Update atime on every access (`MOUNT_ATTR_STRICTATIME`).
    Strictatime,
}

impl Atime {
    /// The `mount(8)` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Atime::Relatime => "relatime",
            Atime::Noatime => "noatime",
            Atime::Strictatime => "strictatime",
        }
    }
}

/// Options of a kernel overlay mount. Every field is passed to the kernel explicitly.
///
/// Defaults: `redirect_dir` chosen per context (see [`OverlayMountOptions::redirect_dir`]),
/// `index=off`, `metacopy=off`, `nfs_export=off`, `xino=auto`, `uuid=auto`, no `verity`, no
/// `volatile`, `userxattr` following the stack's xattr namespace, and a `rw,nosuid,nodev,exec,relatime`
/// mount.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OverlayMountOptions {
    /// `redirect_dir=`. `None` chooses explicitly: `nofollow` with `userxattr` or without
    /// CAP_SYS_ADMIN in the initial user namespace (the kernel refuses anything else there),
    /// `follow` otherwise (existing redirects keep working, none are created).
    pub redirect_dir: Option<RedirectDir>,
    /// `index=`: inode index (hard links survive copy-up, origin verification).
    pub index: bool,
    /// `metacopy=`: metadata-only copy-up. Needs `redirect_dir=on`; unsafe with untrusted layers.
    pub metacopy: bool,
    /// `nfs_export=`: persistent NFS file handles. Needs `index`, conflicts with `metacopy`.
    pub nfs_export: bool,
    /// `xino=`.
    pub xino: Xino,
    /// `uuid=`.
    pub uuid: UuidMode,
    /// `verity=` (passed only when not `Off`). Implies metacopy.
    pub verity: Verity,
    /// `volatile`: no syncs to the upper layer (needs an upper).
    pub volatile: bool,
    /// `userxattr`: `user.overlay.*` instead of `trusted.overlay.*`. `None` follows the
    /// stack's [`crate::XattrNamespace`].
    pub userxattr: Option<bool>,
    /// Mount read-only (`MOUNT_ATTR_RDONLY`); a stack without upper is always read-only.
    pub read_only: bool,
    /// `nosuid` (default true).
    pub nosuid: bool,
    /// `nodev` (default true).
    pub nodev: bool,
    /// `noexec` (default false).
    pub noexec: bool,
    /// Access-time updates (default `relatime`).
    pub atime: Atime,
    /// `nodiratime` (default false).
    pub nodiratime: bool,
}

impl Default for OverlayMountOptions {
    fn default() -> Self {
        OverlayMountOptions {
            redirect_dir: None,
            index: false,
            metacopy: false,
            nfs_export: false,
            xino: Xino::Auto,
            uuid: UuidMode::Auto,
            verity: Verity::Off,
            volatile: false,
            userxattr: None,
            read_only: false,
            nosuid: true,
            nodev: true,
            noexec: false,
            atime: Atime::Relatime,
            nodiratime: false,
        }
    }
}

/// What the option check needs to know about the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MountContext {
    /// The stack has an upper layer.
    pub has_upper: bool,
    /// Number of lower layers.
    pub lowers: usize,
    /// `userxattr` resolved (from the options or the stack's namespace).
    pub userxattr: bool,
    /// The mounter has CAP_SYS_ADMIN in the initial user namespace (trusted xattrs).
    pub privileged: bool,
    /// Kernel version (major, minor), to leave out values an old kernel does not know.
    pub kernel: (u32, u32),
}

/// Options after checking: the exact `key[=value]` list passed to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedOptions {
    /// In order; `None` values are flags.
    pub params: Vec<(&'static str, Option<&'static str>)>,
    /// The redirect mode that was chosen.
    pub redirect_dir: RedirectDir,
}

fn conflict(msg: impl fmt::Display) -> Error {
    Error::OptionConflict(msg.to_string())
}

impl OverlayMountOptions {
    /// Check the options against the kernel's combination rules for a mount described by
    /// `cx`, and produce the explicit parameter list.
    pub(crate) fn resolve(&self, cx: &MountContext) -> Result<ResolvedOptions> {
        let ux = cx.userxattr;
        let redirect = self.redirect_dir.unwrap_or(if ux || !cx.privileged {
            RedirectDir::NoFollow
        } else {
            RedirectDir::Follow
        });
        // Without an upper, the kernel treats `follow` as `on` (nothing is ever created).
        let effective_redirect = if !cx.has_upper && redirect == RedirectDir::Follow {
            RedirectDir::On
        } else {
            redirect
        };
        let verity = self.verity != Verity::Off;

        if !cx.has_upper && cx.lowers < 2 {
            return Err(conflict(
                "a read-only overlay (no upper layer) needs at least 2 lower layers \
                 (kernel: \"at least 2 lowerdir are needed while upperdir nonexistent\")",
            ));
        }
        if !cx.has_upper && self.volatile {
            return Err(conflict(
                "volatile: has no meaning without an upper layer (the kernel ignores it)",
            ));
        }
        if !cx.has_upper && self.index && !self.nfs_export {
            return Err(conflict(
                "index=on: needs an upper layer (the kernel ignores it on a read-only overlay)",
            ));
        }
        if !cx.has_upper && self.uuid == UuidMode::On {
            return Err(conflict(
                "uuid=on: the UUID is stored on the upper layer, which this stack does not have \
                 (the kernel would fall back to uuid=null)",
            ));
        }
        if verity && !self.metacopy {
            return Err(conflict(format_args!(
                "verity={} implies metacopy=on, but metacopy=off was asked for",
                self.verity.as_str()
            )));
        }
        if self.metacopy && effective_redirect != RedirectDir::On {
            return Err(conflict(format_args!(
                "metacopy=on needs redirect_dir=on (a metacopy file carries a redirect to its \
                 data), but redirect_dir={}",
                redirect.as_str()
            )));
        }
        if self.nfs_export {
            if !cx.has_upper && redirect != RedirectDir::NoFollow {
                return Err(conflict(format_args!(
                    "nfs_export=on on a read-only overlay needs redirect_dir=nofollow, but \
                     redirect_dir={} (the kernel would silently turn nfs_export off)",
                    redirect.as_str()
                )));
            }
            if cx.has_upper && !self.index {
                return Err(conflict(
                    "nfs_export=on needs index=on (file handles are resolved through the index)",
                ));
            }
            if self.metacopy {
                return Err(conflict(
                    "nfs_export=on conflicts with metacopy=on (a metacopy file has no stable \
                     file handle)",
                ));
            }
        }
        if ux {
            if redirect != RedirectDir::NoFollow {
                return Err(conflict(format_args!(
                    "userxattr allows only redirect_dir=nofollow, but redirect_dir={} (user.* \
                     redirects could be forged by any user)",
                    redirect.as_str()
                )));
            }
            if self.metacopy {
                return Err(conflict(
                    "userxattr conflicts with metacopy=on (user.* metacopy xattrs could be \
                     forged by any user)",
                ));
            }
            if verity {
                return Err(conflict(format_args!(
                    "userxattr conflicts with verity={}",
                    self.verity.as_str()
                )));
            }
        } else if !cx.privileged {
            let why = "needs trusted.* xattrs, i.e. CAP_SYS_ADMIN in the initial user namespace; \
                       mount with userxattr instead";
            if redirect != RedirectDir::NoFollow {
                return Err(conflict(format_args!(
                    "redirect_dir={} {why}",
                    redirect.as_str()
                )));
            }
            if self.metacopy {
                return Err(conflict(format_args!("metacopy=on {why}")));
            }
            if verity {
                return Err(conflict(format_args!(
                    "verity={} {why}",
                    self.verity.as_str()
                )));
            }
        }

        let onoff = |b: bool| if b { "on" } else { "off" };
        let mut params: Vec<(&'static str, Option<&'static str>)> = vec![
            ("redirect_dir", Some(redirect.as_str())),
            // On a read-only overlay with nfs_export, `index=on` is what the kernel needs to
            // hear (it ignores it, then turns the index on for the export itself).
            (
                "index",
                Some(onoff(self.index || (!cx.has_upper && self.nfs_export))),
            ),
            ("metacopy", Some(onoff(self.metacopy))),
            ("nfs_export", Some(onoff(self.nfs_export))),
            ("xino", Some(self.xino.as_str())),
        ];
        // uuid=null/on/auto exist since 6.6; older kernels know only on/off and default to
        // what `auto` now means, so `auto` is left out there.
        if self.uuid != UuidMode::Auto || cx.kernel >= (6, 6) {
            params.push(("uuid", Some(self.uuid.as_str())));
        }
        if verity {
            params.push(("verity", Some(self.verity.as_str())));
        }
        if self.volatile {
            params.push(("volatile", None));
        }
        if ux {
            params.push(("userxattr", None));
        }
        Ok(ResolvedOptions {
            params,
            redirect_dir: redirect,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(has_upper: bool, userxattr: bool, privileged: bool) -> MountContext {
        MountContext {
            has_upper,
            lowers: 2,
            userxattr,
            privileged,
            kernel: (6, 18),
        }
    }

    fn err(o: &OverlayMountOptions, c: MountContext) -> String {
        match o.resolve(&c) {
            Err(Error::OptionConflict(m)) => m,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_explicit() {
        let r = OverlayMountOptions::default()
            .resolve(&cx(true, false, true))
            .unwrap();
        let keys: Vec<_> = r.params.iter().map(|p| p.0).collect();
        assert_eq!(
            keys,
            [
                "redirect_dir",
                "index",
                "metacopy",
                "nfs_export",
                "xino",
                "uuid"
            ]
        );
        assert_eq!(r.redirect_dir, RedirectDir::Follow);
        let r = OverlayMountOptions::default()
            .resolve(&cx(true, true, false))
            .unwrap();
        assert_eq!(r.redirect_dir, RedirectDir::NoFollow);
        assert!(r.params.contains(&("userxattr", None)));
        let old = MountContext {
            kernel: (6, 1),
            ..cx(true, false, true)
        };
        let r = OverlayMountOptions::default().resolve(&old).unwrap();
        assert!(!r.params.iter().any(|p| p.0 == "uuid"));
    }

    #[test]
    fn kernel_conflict_rules() {
        let o = OverlayMountOptions {
            redirect_dir: Some(RedirectDir::On),
            ..Default::default()
        };
        assert!(err(&o, cx(true, true, false)).contains("userxattr allows only"));
        let o = OverlayMountOptions {
            redirect_dir: Some(RedirectDir::Follow),
            ..Default::default()
        };
        assert!(err(&o, cx(true, true, true)).contains("redirect_dir=follow"));
        assert!(err(&o, cx(true, false, false)).contains("CAP_SYS_ADMIN"));
        let o = OverlayMountOptions {
            metacopy: true,
            ..Default::default()
        };
        assert!(err(&o, cx(true, false, true)).contains("needs redirect_dir=on"));
        // Without upper, follow counts as on.
        o.resolve(&cx(false, false, true)).unwrap();
        let o = OverlayMountOptions {
            metacopy: true,
            redirect_dir: Some(RedirectDir::On),
            ..Default::default()
        };
        o.resolve(&cx(true, false, true)).unwrap();
        assert!(err(&o, cx(true, true, true)).contains("userxattr"));
        let o = OverlayMountOptions {
            nfs_export: true,
            ..Default::default()
        };
        assert!(err(&o, cx(true, false, true)).contains("needs index=on"));
        let o = OverlayMountOptions {
            nfs_export: true,
            index: true,
            metacopy: true,
            redirect_dir: Some(RedirectDir::On),
            ..Default::default()
        };
        assert!(err(&o, cx(true, false, true)).contains("conflicts with metacopy"));
        let o = OverlayMountOptions {
            verity: Verity::On,
            ..Default::default()
        };
        assert!(err(&o, cx(true, false, true)).contains("implies metacopy"));
        let o = OverlayMountOptions {
            volatile: true,
            ..Default::default()
        };
        assert!(err(&o, cx(false, false, true)).contains("volatile"));
        o.resolve(&cx(true, false, true)).unwrap();
        let one = MountContext {
            lowers: 1,
            ..cx(false, false, true)
        };
        assert!(err(&OverlayMountOptions::default(), one).contains("at least 2"));
    }
}
