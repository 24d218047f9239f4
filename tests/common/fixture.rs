//! The fixed starting stack every differential case begins from.
//!
//! Two lower layers (`lower0` bottom, `lower1` top), an empty upper and workdir. The names
//! come from the same small pool the operations use ([`crate::common::ops::NAMES`]) so that
//! operations hit existing, shadowed, whited-out and opaque names often.
//!
//! | name      | lower0 (bottom)            | lower1 (top)                          | merged view        |
//! |-----------|----------------------------|---------------------------------------|--------------------|
//! | `a`       | file 0644 "lower0 a", xattr user.a | -                             | lower0's file      |
//! | `b`       | file 0644 "lower0 b"       | file 0666 "lower1 b" (shadows)        | lower1's file      |
//! | `c`       | file 0644 "lower0 c"       | whiteout (char 0/0)                   | absent             |
//! | `d`       | dir 0755: `d/a` file, `d/c/` empty dir | -                         | lower0's dir       |
//! | `e`       | -                          | symlink -> `b`                        | symlink            |
//! | `m`       | dir 0755: `m/a` file, `m/b` -> `a`, `m/c` file | dir 0750 (user.color=blue): `m/c` file 0600, `m/d` -> `zz` (dangling), `m/m/` dir | merged dir |
//! | `o`       | dir: `o/a` file, `o/c/`    | opaque dir (trusted.overlay.opaque=y): `o/b` file | only `o/b`  |
//!
//! With hard links ([`FixtureStack::create_for`] with `index=on`, whose point they are),
//! lower0's `m/a` also has the names `d/a` and `d/c/a` (three visible names, one inode,
//! replacing `d/a`'s own file), its `a` also the name `o/a` (hidden under the opaque `o`),
//! and lower1's `b` also the name `m/c` (replacing its own `m/c`).
//!
//! Every object's modification time is [`FIXTURE_MTIME`]. The layers share one filesystem
//! with the upper (a tempdir on /tmp), like a "samefs" kernel overlay.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use super::tree::FIXTURE_MTIME;

/// Paths of one copy of the fixture stack.
#[derive(Debug, Clone)]
pub struct FixtureStack {
    /// Bottom lower layer.
    pub lower0: PathBuf,
    /// Top lower layer.
    pub lower1: PathBuf,
    /// Upper layer (empty at start).
    pub upper: PathBuf,
    /// Workdir (empty at start).
    pub work: PathBuf,
}

fn file(p: &Path, content: &str, mode: u32) {
    fs::write(p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn dir(p: &Path, mode: u32) {
    fs::create_dir(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

/// Give `p` and everything below it [`FIXTURE_MTIME`] (children first, since adding them
/// changed their directory's time).
fn set_fixture_mtime(p: &Path) {
    let md = fs::symlink_metadata(p).unwrap();
    if md.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            set_fixture_mtime(&e.unwrap().path());
        }
    }
    let (sec, nsec) = FIXTURE_MTIME;
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

impl FixtureStack {
    /// The validated engine stack of this fixture (`trusted.` xattrs, as the kernel mount).
    pub fn layer_stack(&self) -> overlay_core::LayerStack {
        overlay_core::LayerStack::builder()
            .lower(&self.lower0)
            .lower(&self.lower1)
            .upper(&self.upper, &self.work)
            .xattr_namespace(overlay_core::XattrNamespace::Trusted)
            .build()
            .unwrap_or_else(|e| panic!("fixture stack: {e}"))
    }

    /// The paths of the fixture built under `base` by [`FixtureStack::create`].
    pub fn at(base: &Path) -> FixtureStack {
        FixtureStack {
            lower0: base.join("lower0"),
            lower1: base.join("lower1"),
            upper: base.join("upper"),
            work: base.join("work"),
        }
    }

    /// Build a fresh copy of the fixture under `base` (which must exist and be empty).
    pub fn create(base: &Path) -> FixtureStack {
        Self::create_for(base, super::features::Features::DEFAULTS)
    }

    /// [`FixtureStack::create`] for a case run with `features`: with `index=on`, the lower
    /// layers have hard links (see the module docs).
    pub fn create_for(base: &Path, features: super::features::Features) -> FixtureStack {
        let s = Self::at(base);
        for p in [&s.lower0, &s.lower1, &s.upper, &s.work] {
            dir(p, 0o755);
        }

        // lower0 (bottom)
        let l = &s.lower0;
        file(&l.join("a"), "lower0 a\n", 0o644);
        xattr(&l.join("a"), "user.a", b"from lower0");
        file(&l.join("b"), "lower0 b\n", 0o644);
        file(&l.join("c"), "lower0 c\n", 0o644);
        dir(&l.join("d"), 0o755);
        file(&l.join("d/a"), "lower0 d/a\n", 0o644);
        dir(&l.join("d/c"), 0o755);
        dir(&l.join("m"), 0o755);
        file(&l.join("m/a"), "lower0 m/a\n", 0o644);
        symlink("a", l.join("m/b")).unwrap();
        file(&l.join("m/c"), "lower0 m/c\n", 0o644);
        dir(&l.join("o"), 0o755);
        file(&l.join("o/a"), "lower0 o/a\n", 0o644);
        dir(&l.join("o/c"), 0o755);

        // lower1 (top)
        let l = &s.lower1;
        file(&l.join("b"), "lower1 b, shadowing lower0\n", 0o666);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            l.join("c"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mknod whiteout 0/0 in lower1");
        symlink("b", l.join("e")).unwrap();
        dir(&l.join("m"), 0o750);
        xattr(&l.join("m"), "user.color", b"blue");
        file(&l.join("m/c"), "lower1 m/c\n", 0o600);
        symlink("zz", l.join("m/d")).unwrap();
        dir(&l.join("m/m"), 0o755);
        dir(&l.join("o"), 0o755);
        xattr(&l.join("o"), "trusted.overlay.opaque", b"y");
        file(&l.join("o/b"), "lower1 o/b\n", 0o644);

        if features.index {
            let link = |l: &Path, from: &str, to: &str| {
                let _ = fs::remove_file(l.join(to));
                fs::hard_link(l.join(from), l.join(to))
                    .unwrap_or_else(|e| panic!("link {from} -> {to} in {}: {e}", l.display()));
            };
            link(&s.lower0, "m/a", "d/a");
            link(&s.lower0, "m/a", "d/c/a");
            link(&s.lower0, "a", "o/a");
            link(&s.lower1, "b", "m/c");
        }

        for layer in [&s.lower0, &s.lower1, &s.upper] {
            set_fixture_mtime(layer);
        }
        s
    }

    /// Lower layers, top first (the kernel's `lowerdir=` order).
    pub fn lowers_top_first(&self) -> [&Path; 2] {
        [&self.lower1, &self.lower0]
    }
}
