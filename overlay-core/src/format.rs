//! The overlayfs on-disk format, identical to the kernel's.
//!
//! * A **whiteout** is a character device 0/0 ([`is_whiteout_stat`]). When reading layers we
//!   also accept the AUFS/OCI form `.wh.<name>` ([`AUFS_WHITEOUT_PREFIX`]) and, in lower layers
//!   whose parent directory is marked `overlay.opaque=x`, the kernel's "xwhiteout" (a zero-size
//!   regular file carrying `overlay.whiteout`).
//! * An **opaque directory** carries `overlay.opaque=y` under the stack's [`XattrNamespace`]
//!   (`trusted.` for privileged stacks, `user.` for unprivileged ones). `.wh..wh..opq` is
//!   recognised when reading and never written.
//! * Overlay-private xattrs (`<ns>.overlay.*`) never show through listings; escaped names
//!   (`<ns>.overlay.overlay.X`) show as `<ns>.overlay.X`, as the kernel does for nesting.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Name prefix of AUFS/OCI whiteout files (`.wh.<name>`); recognised when reading only.
pub const AUFS_WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The AUFS/OCI opaque marker file; recognised when reading only, never written.
pub const AUFS_OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Which xattr namespace holds the overlay's private attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XattrNamespace {
    /// `trusted.overlay.*`: privileged stacks (needs CAP_SYS_ADMIN to read or write).
    Trusted,
    /// `user.overlay.*`: unprivileged stacks, the kernel's `userxattr` mount option.
    User,
}

impl XattrNamespace {
    /// The private prefix, `trusted.overlay.` or `user.overlay.`.
    pub fn prefix(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => "trusted.overlay.",
            XattrNamespace::User => "user.overlay.",
        }
    }

    /// Full name of the private attribute `overlay.<suffix>` in this namespace.
    pub fn name(self, suffix: &str) -> String {
        format!("{}{}", self.prefix(), suffix)
    }

    /// The name for this namespace, of two constants (no allocation on lookup paths).
    fn pick(self, trusted: &'static str, user: &'static str) -> &'static str {
        match self {
            XattrNamespace::Trusted => trusted,
            XattrNamespace::User => user,
        }
    }

    /// `overlay.opaque`.
    pub fn opaque(self) -> &'static str {
        self.pick("trusted.overlay.opaque", "user.overlay.opaque")
    }

    /// `overlay.whiteout` (xwhiteout marker, lower layers only).
    pub fn whiteout(self) -> &'static str {
        self.pick("trusted.overlay.whiteout", "user.overlay.whiteout")
    }

    /// `overlay.origin`.
    pub fn origin(self) -> &'static str {
        self.pick("trusted.overlay.origin", "user.overlay.origin")
    }

    /// `overlay.impure`.
    pub fn impure(self) -> &'static str {
        self.pick("trusted.overlay.impure", "user.overlay.impure")
    }

    /// `overlay.metacopy` (a metadata-only copy whose data lives below).
    pub fn metacopy(self) -> &'static str {
        self.pick("trusted.overlay.metacopy", "user.overlay.metacopy")
    }

    /// `overlay.nlink` (the overlay link count of an indexed inode, relative to the upper
    /// or the lower inode's: `U+1`, `L-2`).
    pub fn nlink(self) -> &'static str {
        self.pick("trusted.overlay.nlink", "user.overlay.nlink")
    }

    /// `overlay.upper` (on the index directory: the upper root's file handle).
    pub fn upper(self) -> &'static str {
        self.pick("trusted.overlay.upper", "user.overlay.upper")
    }

    /// `overlay.redirect`.
    pub fn redirect(self) -> &'static str {
        self.pick("trusted.overlay.redirect", "user.overlay.redirect")
    }

    /// How an xattr name stored in a layer appears through the overlay.
    ///
    /// Returns `None` for private attributes (hidden), the unescaped name for escaped
    /// attributes (`<ns>.overlay.overlay.X` shows as `<ns>.overlay.X`), and the name itself
    /// otherwise.
    pub fn visible_name(self, stored: &[u8]) -> Option<Vec<u8>> {
        let prefix = self.prefix().as_bytes();
        match stored.strip_prefix(prefix) {
            None => Some(stored.to_vec()),
            Some(rest) if rest.starts_with(b"overlay.") => {
                let mut v = prefix.to_vec();
                v.extend_from_slice(&rest[b"overlay.".len()..]);
                Some(v)
            }
            Some(_) => None,
        }
    }

    /// How a name the user sets through the overlay is stored in the layer: names under the
    /// private prefix are escaped (`<ns>.overlay.X` is stored as `<ns>.overlay.overlay.X`).
    pub fn stored_name(self, visible: &[u8]) -> Vec<u8> {
        let prefix = self.prefix().as_bytes();
        match visible.strip_prefix(prefix) {
            None => visible.to_vec(),
            Some(rest) => {
                let mut v = prefix.to_vec();
                v.extend_from_slice(b"overlay.");
                v.extend_from_slice(rest);
                v
            }
        }
    }

    /// True for a private overlay attribute of this namespace that must be neither shown
    /// nor copied up.
    pub fn is_private(self, stored: &[u8]) -> bool {
        self.visible_name(stored).is_none()
    }
}

/// The opacity of a directory in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Opacity {
    /// Lower layers are merged.
    #[default]
    Transparent,
    /// `overlay.opaque=y` or `.wh..wh..opq`: lower layers are ignored.
    Opaque,
    /// `overlay.opaque=x`: merging continues, and entries may be xwhiteouts.
    HasXWhiteouts,
}

impl Opacity {
    /// Interpret the value of an `overlay.opaque` xattr (`None` when absent).
    pub fn from_xattr(value: Option<&[u8]>) -> Opacity {
        match value {
            Some(b"y") => Opacity::Opaque,
            Some(b"x") => Opacity::HasXWhiteouts,
            _ => Opacity::Transparent,
        }
    }
}

/// True when `st` describes a kernel whiteout: a character device with device number 0/0.
pub fn is_whiteout_stat(mode: u32, rdev: u64) -> bool {
    (mode & libc::S_IFMT) == libc::S_IFCHR && rdev == 0
}

/// If `name` is an AUFS/OCI whiteout file `.wh.<target>`, return `<target>`.
/// The opaque marker `.wh..wh..opq` (and other `.wh..wh.` metadata) returns `None`.
pub fn aufs_whiteout_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b.starts_with(b".wh..wh.") {
        return None;
    }
    b.strip_prefix(AUFS_WHITEOUT_PREFIX)
        .filter(|t| !t.is_empty())
        .map(OsStr::from_bytes)
}

/// True for names that are format metadata in a lower layer and never shown (`.wh.*`).
pub fn is_aufs_metadata_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(AUFS_WHITEOUT_PREFIX)
}

/// The AUFS whiteout file name for `name` (`.wh.<name>`).
pub fn aufs_whiteout_name(name: &OsStr) -> OsString {
    let mut v = AUFS_WHITEOUT_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from_vec(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn whiteout_is_char_0_0_only() {
        assert!(is_whiteout_stat(libc::S_IFCHR | 0o644, 0));
        assert!(!is_whiteout_stat(
            libc::S_IFCHR | 0o644,
            libc::makedev(1, 3)
        ));
        assert!(!is_whiteout_stat(libc::S_IFREG | 0o644, 0));
        assert!(!is_whiteout_stat(libc::S_IFBLK, 0));
    }

    #[test]
    fn aufs_names() {
        assert_eq!(
            aufs_whiteout_target(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(aufs_whiteout_target(OsStr::new(".wh..wh..opq")), None);
        assert_eq!(aufs_whiteout_target(OsStr::new(".wh.")), None);
        assert_eq!(aufs_whiteout_target(OsStr::new("foo")), None);
        assert_eq!(aufs_whiteout_name(OsStr::new("a")), OsString::from(".wh.a"));
    }

    #[test]
    fn opacity_values() {
        assert_eq!(Opacity::from_xattr(Some(b"y")), Opacity::Opaque);
        assert_eq!(Opacity::from_xattr(Some(b"x")), Opacity::HasXWhiteouts);
        assert_eq!(Opacity::from_xattr(Some(b"n")), Opacity::Transparent);
        assert_eq!(Opacity::from_xattr(None), Opacity::Transparent);
    }

    #[test]
    fn private_xattrs_hidden_and_escaped() {
        let t = XattrNamespace::Trusted;
        assert_eq!(t.visible_name(b"trusted.overlay.opaque"), None);
        assert_eq!(
            t.visible_name(b"trusted.overlay.overlay.opaque").as_deref(),
            Some(&b"trusted.overlay.opaque"[..])
        );
        assert_eq!(
            t.visible_name(b"user.overlay.opaque").as_deref(),
            Some(&b"user.overlay.opaque"[..])
        );
        let u = XattrNamespace::User;
        assert_eq!(u.visible_name(b"user.overlay.origin"), None);
        assert_eq!(
            u.visible_name(b"user.foo").as_deref(),
            Some(&b"user.foo"[..])
        );
    }

    proptest! {
        #[test]
        fn escape_roundtrip(ns in prop_oneof![Just(XattrNamespace::Trusted), Just(XattrNamespace::User)],
                            name in "(user|trusted|security)\\.(overlay\\.)?[a-z.]{1,12}") {
            let stored = ns.stored_name(name.as_bytes());
            prop_assert_eq!(ns.visible_name(&stored), Some(name.as_bytes().to_vec()));
        }

        #[test]
        fn aufs_roundtrip(name in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}") {
            let name = OsString::from(name);
            let wh = aufs_whiteout_name(&name);
            prop_assert!(is_aufs_metadata_name(&wh));
            if !name.as_bytes().starts_with(b".wh.") {
                prop_assert_eq!(aufs_whiteout_target(&wh), Some(name.as_os_str()));
            }
        }
    }
}
