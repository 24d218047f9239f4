//! Differential test: the kernel overlay against our FUSE mount (`overlay-fuse`, served in
//! this process). Same harness as `differential.rs`: identical fresh fixture stacks, the same
//! generated operation sequence through ordinary system calls on both mount points, and the
//! same outcome for every operation, the same merged tree and the same upper layer on disk.
//! `OVL_DIFF_CASES` sets the number of sequences.

mod common;

use common::fixture::FixtureStack;
use common::kernel::{kernel_backend, MountedBackend};
use common::ops::{Op, RenameMode};
use common::{assert_same, init, require_mounts};
use overlay_core::{LayerStack, Overlay, XattrNamespace};
use overlay_fuse::{spawn_mount, FsConfig, FuseMount, MountConfig};

const MAX_OPS: usize = 24;

/// A fresh fixture with our FUSE mount on it (passthrough or writeback cache per `fs`).
fn fuse_backend(fs: FsConfig) -> MountedBackend<FuseMount> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = FixtureStack::create(tmp.path());
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let stack = LayerStack::builder()
        .lower(&s.lower0)
        .lower(&s.lower1)
        .upper(&s.upper, &s.work)
        .xattr_namespace(XattrNamespace::Trusted)
        .build()
        .unwrap_or_else(|e| panic!("fixture stack: {e}"));
    let ovl = Overlay::new(stack).unwrap_or_else(|e| panic!("Overlay::new: {e}"));
    let mut cfg = MountConfig::for_current_user(fs);
    cfg.threads = 2;
    let m = spawn_mount(ovl, &mnt, &cfg).unwrap_or_else(|e| panic!("FUSE mount: {e}"));
    MountedBackend::new("fuse", mnt, s.upper.clone(), m, tmp)
}

fn run_property(default_cases: u32, fs: FsConfig) {
    common::run_property(default_cases, MAX_OPS, 2048, || {
        (
            Box::new(kernel_backend()),
            Box::new(fuse_backend(fs.clone())),
        )
    });
}

/// Generated sequences, FUSE with passthrough (root) against the kernel.
#[test]
fn fuse_matches_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    run_property(60, FsConfig::default());
}

/// Generated sequences, FUSE with the writeback cache instead of passthrough.
#[test]
fn fuse_writeback_matches_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    run_property(
        30,
        FsConfig {
            passthrough: false,
            ..FsConfig::default()
        },
    );
}

fn p(s: &str) -> String {
    s.to_string()
}

/// Whiteouts, an opaque directory replacing a whiteout, renames with flags, links, through
/// the FUSE mount, with caching on (a stale kernel cache would show here).
#[test]
fn fuse_regression_sequence() {
    init();
    if !require_mounts() {
        return;
    }
    let ops = [
        Op::Stat {
            path: p("m/a"),
            follow: false,
        },
        Op::Unlink { path: p("m/a") },
        Op::Stat {
            path: p("m/a"),
            follow: false,
        },
        Op::Unlink { path: p("m/b") },
        Op::Unlink { path: p("m/c") },
        Op::Unlink { path: p("m/d") },
        Op::Rmdir { path: p("m/m") },
        Op::Rmdir { path: p("m") },
        Op::Mkdir {
            path: p("m"),
            mode: 0o755,
        },
        Op::Create {
            path: p("m/a"),
            mode: 0o644,
            excl: true,
        },
        Op::Rename {
            from: p("a"),
            to: p("b"),
            mode: RenameMode::Plain,
        },
        Op::Rename {
            from: p("d"),
            to: p("x"),
            mode: RenameMode::Plain,
        },
        Op::Link {
            from: p("b"),
            to: p("c"),
        },
        Op::Stat {
            path: p("c"),
            follow: false,
        },
        Op::Rename {
            from: p("e"),
            to: p("c"),
            mode: RenameMode::Exchange,
        },
        Op::Stat {
            path: p("e"),
            follow: false,
        },
        Op::Rename {
            from: p("o/b"),
            to: p("e"),
            mode: RenameMode::NoReplace,
        },
    ];
    assert_same(
        &ops,
        &mut kernel_backend(),
        &mut fuse_backend(FsConfig::default()),
    );
}

/// Hard links share one FUSE inode: replacing one name by a rename must leave the other name
/// usable (found by the generated sequences: `m/a` gave ENOENT/EIO afterwards).
#[test]
fn fuse_rename_over_a_hard_link_keeps_the_other_name() {
    init();
    if !require_mounts() {
        return;
    }
    let ops = [
        Op::Link {
            from: p("m/a"),
            to: p("o/a"),
        },
        Op::Rename {
            from: p("a"),
            to: p("o/a"),
            mode: RenameMode::Plain,
        },
        Op::Stat {
            path: p("m/a"),
            follow: false,
        },
        Op::Append {
            path: p("m/a"),
            data: b"more".to_vec(),
        },
        Op::Unlink { path: p("o/a") },
        Op::Stat {
            path: p("m/a"),
            follow: false,
        },
    ];
    for fs in [
        FsConfig::default(),
        FsConfig {
            passthrough: false,
            ..FsConfig::default()
        },
    ] {
        assert_same(&ops, &mut kernel_backend(), &mut fuse_backend(fs));
    }
}
